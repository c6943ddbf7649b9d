// Drives a resgate-rs gateway with the real resclient over the `ws` package.
// Usage: node script.js <ws-url> [big]
// Prints one JSON object per line: get (with the WebSocket extensions agreed), listening, change,
// call; exits 0 on success. With `big`, the call's params carry 4,000 bytes of padding, which `ws`
// sends compressed when permessage-deflate is agreed (it compresses messages over 1 KiB).
'use strict';

const ResClient = require('resclient').default;
const WebSocket = require('ws');

const url = process.argv[2];
if (!url) {
  console.error('usage: node script.js <ws-url>');
  process.exit(64);
}
const out = (o) => console.log(JSON.stringify(o));
const fail = (what, e) => {
  out({ error: what, detail: e && (e.code ? { code: e.code, message: e.message } : String(e)) });
  process.exit(1);
};
const timer = setTimeout(() => fail('timeout'), 15000);

const big = process.argv[3] === 'big';
let socket;
// One message per event-loop turn, as in a browser (why: see dropin.js).
const client = new ResClient(() => (socket = new WebSocket(url, { allowSynchronousEvents: false })));

(async () => {
  const model = await client.get('example.model');
  out({ step: 'get', model: model.toJSON(), extensions: socket.extensions });
  await new Promise((resolve) => {
    model.on('change', () => {
      out({ step: 'change', model: model.toJSON() });
      resolve();
    });
    out({ step: 'listening' });
  });
  const params = big ? { n: 1, pad: 'x'.repeat(4000) } : { n: 1 };
  const result = await client.call('example.model', 'ping', params);
  out({ step: 'call', result });
  clearTimeout(timer);
  await client.disconnect();
  process.exit(0);
})().catch((e) => fail('exception', e));
