// The page's replica of one text: chorus-text compiled to WebAssembly
// (crates/chorus-wasm), behind its small C ABI. See crates/chorus-wasm/src/lib.rs
// for what the replica does; this file moves strings and bytes in and out.

let wasm = null;

/** Loads the WebAssembly once; throws with what to do when this build has none. */
export async function loadWasm(url = "/ui/assets/chorus_wasm.wasm") {
  if (wasm) return;
  const bytes = await (await fetch(url)).arrayBuffer();
  if (bytes.byteLength === 0) {
    throw new Error("this chorus was built without WebAssembly: run `rustup target add wasm32-unknown-unknown` and build it again");
  }
  const { instance } = await WebAssembly.instantiate(bytes, {});
  wasm = instance.exports;
}

/** Bytes of the module's memory (its replicas). */
export function memoryBytes() {
  return wasm ? wasm.memory.buffer.byteLength : 0;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Copies `bytes` into the module's memory; calls `f(ptr, len)`; frees them. */
function withBytes(bytes, f) {
  const ptr = wasm.alloc(bytes.length);
  new Uint8Array(wasm.memory.buffer, ptr, bytes.length).set(bytes);
  try {
    return f(ptr, bytes.length);
  } finally {
    wasm.dealloc(ptr, bytes.length);
  }
}

function result(len) {
  return new Uint8Array(wasm.memory.buffer, wasm.result_ptr(), len).slice();
}

export class TextReplica {
  /** A replica of `encoded` (chorus-text's bytes, from a snapshot), or of an empty
   * text when there are none, edited through the node whose id is `node` (hex). */
  constructor(encoded, node) {
    const id = BigInt(`0x${node}`);
    const [high, low] = [Number(id >> 32n), Number(id & 0xffffffffn)];
    this.handle = encoded
      ? withBytes(encoded, (p, n) => wasm.replica_load(p, n, high, low))
      : wasm.replica_new(high, low);
    if (this.handle === 0) throw new Error("the text's state does not decode");
  }

  free() {
    wasm.replica_drop(this.handle);
  }

  /** The text shown. */
  text() {
    const len = wasm.replica_text(this.handle);
    return decoder.decode(result(len));
  }

  /** Characters shown (code points). */
  get length() {
    return wasm.replica_len(this.handle);
  }

  /** Applies the node's operations, as the change feed shows them. */
  apply(ops) {
    const status = withBytes(encodeOps(ops), (p, n) => wasm.replica_apply(this.handle, p, n));
    if (status !== 0) throw new Error("the node's operations do not apply here");
  }

  /** Takes in a whole state (a snapshot after a reconnection). */
  merge(encoded) {
    const status = withBytes(encoded, (p, n) => wasm.replica_merge(this.handle, p, n));
    if (status !== 0) throw new Error("the snapshot does not merge here");
  }

  insert(pos, text) {
    withBytes(encoder.encode(text), (p, n) => wasm.replica_insert(this.handle, pos, p, n));
  }

  delete(pos, len) {
    wasm.replica_delete(this.handle, pos, len);
  }

  /** The next batch of operations to send for the field at `path`, or null. */
  takeBatch(path) {
    const len = withBytes(encoder.encode(path), (p, n) => wasm.replica_take_batch(this.handle, p, n));
    return len > 0 ? JSON.parse(decoder.decode(result(len))) : null;
  }

  /** The batch in flight was taken and the node's version of it applied. */
  settle() {
    wasm.replica_settle(this.handle);
  }

  /** The batch in flight never reached a node: it goes again with the next. */
  unsend() {
    wasm.replica_unsend(this.handle);
  }

  /** An anchor for the cursor at `pos`: the character before it, whatever is
   * inserted or deleted around it later. */
  anchor(pos) {
    return decoder.decode(result(wasm.replica_anchor(this.handle, pos)));
  }

  /** Where the cursor anchored by `anchor` is now. */
  anchored(anchor) {
    return withBytes(encoder.encode(anchor), (p, n) => wasm.replica_anchored(this.handle, p, n));
  }
}

/** Text operations as the feed shows them (`{insert, id, left, right}`, `{delete,
 * id, by}`, ids "NODEHEX:SEQ") in chorus-text's bytes (`encode_ops`). */
export function encodeOps(ops) {
  const out = [];
  const varint = (value) => {
    let v = BigInt(value);
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v > 0n) byte |= 0x80;
      out.push(byte);
    } while (v > 0n);
  };
  const id = (text) => {
    const [node, seq] = text.split(":");
    varint(BigInt(`0x${node}`));
    varint(seq);
  };
  varint(ops.length);
  for (const op of ops) {
    if (op.insert !== undefined) {
      out.push(1);
      id(op.id);
      out.push((op.left ? 1 : 0) | (op.right ? 2 : 0));
      if (op.left) id(op.left);
      if (op.right) id(op.right);
      const bytes = encoder.encode(op.insert);
      varint([...op.insert].length);
      varint(bytes.length);
      out.push(...bytes);
    } else {
      out.push(2);
      id(op.id);
      varint(op.delete);
      id(op.by);
    }
  }
  return new Uint8Array(out);
}

/** base64url (no padding) to bytes. */
export function fromBase64Url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}
