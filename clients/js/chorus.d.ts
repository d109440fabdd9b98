// Types of the Chorus JavaScript client (chorus.js).

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One version of a document, as a read shows it. */
export interface DocVersion {
  value: Json | null;
  origin: string;
  hlc: { wall_ms: number; logical: number };
  crdt?: boolean;
}

/** A read: the versions, the context to write against, the value when the policy yields one. */
export interface Doc {
  key: string;
  context: string;
  conflict: boolean;
  value?: Json;
  versions: DocVersion[];
}

/** A CRDT operation (docs/crdts.md), e.g. `{op: "text.insert", path: "/text", pos: 0, text: "hi"}`. */
export interface Operation {
  op: string;
  path: string;
  [member: string]: Json;
}

export interface WriteAck {
  key: string;
  context: string;
  value?: Json;
}

export interface Change {
  seq: string;
  collection: string;
  key: string;
  deleted: boolean;
  context: string;
  crdt?: Json;
  doc?: Json;
}

/** A message of a live subscription (`GET /v1/docs/{c}/{key}/live`). */
export type LiveMessage =
  | { type: "snapshot"; node: string; context: string; doc: Doc | null; sequences: Record<string, string> }
  | { type: "change"; context: string; dot: string; origin: string; changes: { path: string; action: string; value: Json }[] }
  | { type: "ack"; id: Json; context: string; dot: string }
  | { type: "error"; id?: Json; error: string; message: string; status: number };

export class ChorusError extends Error {
  status: number;
  code?: string;
  body?: Json;
  /** A write cut off after it was sent: it may or may not have been taken. */
  uncertain: boolean;
}

export interface Options {
  token?: string;
  fetch?: typeof fetch;
}

export class Chorus {
  constructor(urls: string | string[], options?: Options);
  readonly urls: string[];
  /** The node requests go to now. */
  readonly url: string;
  request(method: string, path: string, init?: { body?: Json | string; context?: string; headers?: Record<string, string>; allow?: number[] }): Promise<{ status: number; body: Json }>;
  get(collection: string, key: string): Promise<Doc | null>;
  put(collection: string, key: string, value: Json, options?: { context?: string }): Promise<WriteAck>;
  delete(collection: string, key: string, options?: { context?: string }): Promise<WriteAck>;
  ops(collection: string, key: string, operations: Operation[], options?: { context?: string }): Promise<WriteAck>;
  list(collection: string, options?: { prefix?: string; after?: string; limit?: number }): Promise<{ keys: string[]; next: string | null }>;
  changes(options?: { since?: string; collection?: string; follow?: boolean; waitMs?: number }): AsyncGenerator<Change>;
  status(): Promise<Json>;
  collections(): Promise<{ collections: Json[] }>;
  setCollection(collection: string, settings: Json): Promise<Json>;
  conflicts(options?: { collection?: string; after?: string; limit?: number }): Promise<{ conflicts: Json[]; next: string | null }>;
  resolve(id: string, resolution: { value: Json } | { pick: string }): Promise<WriteAck>;
  live(collection: string, key: string, onMessage: (message: LiveMessage) => void): LiveDocument;
}

export class LiveDocument {
  /** Resolves once connected. */
  readonly opened: Promise<void>;
  closed: boolean;
  onClose?: () => void;
  /** Sends operations made against `context` (WebSocket only); the id its ack or error carries. */
  send(ops: Operation[], context?: string): number;
  close(): void;
}

export function docPath(collection: string, key: string): string;
