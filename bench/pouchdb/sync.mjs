// The PouchDB side of `chorus-bench devices`: a server database (express-pouchdb on
// leveldb) holding DOCS documents like the Chorus run's, a fresh client database
// (leveldb) replicating from it over loopback HTTP, then CHANGES documents changed on
// the server and a catch-up. Prints one JSON line of figures; bytes are the server's
// response bytes (what the client downloaded).
//
//   node sync.mjs --docs 100000 --changes 10000 --dir /tmp/somewhere

import PouchDB from 'pouchdb';
import express from 'express';
import expressPouchdb from 'express-pouchdb';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const docs = Number(arg('docs', '100000'));
const changes = Number(arg('changes', '10000'));
const dir = arg('dir', '/tmp/chorus-bench-pouchdb');
rmSync(dir, { recursive: true, force: true });
mkdirSync(join(dir, 'server'), { recursive: true });

// The same ~234-byte document as chorus-bench's `document(key, round)`.
const document = (key, round) => ({
  _id: `key-${key}`,
  id: `key-${key}`,
  name: 'benchmark document',
  n: round,
  tags: ['a', 'b'],
  pad: 'x'.repeat(160),
});

const Server = PouchDB.defaults({ prefix: join(dir, 'server') + '/' });
let bytes = 0;
const app = express();
app.use((req, res, next) => {
  const write = res.write.bind(res);
  const end = res.end.bind(res);
  res.write = (chunk, ...rest) => {
    if (chunk) bytes += Buffer.byteLength(chunk);
    return write(chunk, ...rest);
  };
  res.end = (chunk, ...rest) => {
    if (chunk && typeof chunk !== 'function') bytes += Buffer.byteLength(chunk);
    return end(chunk, ...rest);
  };
  next();
});
app.use('/', expressPouchdb(Server, { mode: 'minimumForPouchDB', logPath: join(dir, 'log.txt') }));

const listening = app.listen(0, '127.0.0.1', async () => {
  const url = `http://127.0.0.1:${listening.address().port}/bench`;
  const server = new Server('bench');
  for (let start = 0; start < docs; start += 1000) {
    const batch = [];
    for (let k = start; k < Math.min(start + 1000, docs); k++) batch.push(document(k, 0));
    await server.bulkDocs(batch);
  }
  const client = new PouchDB(join(dir, 'client'));
  bytes = 0;
  let t0 = performance.now();
  const initial = await client.replicate.from(url, { batch_size: 1000 });
  const initialSeconds = (performance.now() - t0) / 1000;
  const initialBytes = bytes;

  for (let start = 0; start < changes; start += 1000) {
    const keys = [];
    for (let k = start; k < Math.min(start + 1000, changes); k++) keys.push(`key-${k}`);
    const current = await server.allDocs({ keys });
    const batch = current.rows.map((row, i) => ({ ...document(start + i, 1), _rev: row.value.rev }));
    await server.bulkDocs(batch);
  }
  bytes = 0;
  t0 = performance.now();
  const catchup = await client.replicate.from(url, { batch_size: 1000 });
  const catchupSeconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({
    initial_docs: initial.docs_written,
    initial_seconds: initialSeconds,
    initial_bytes: initialBytes,
    catchup_docs: catchup.docs_written,
    catchup_seconds: catchupSeconds,
    catchup_bytes: bytes,
  }));
  listening.close();
  process.exit(0);
});
