// Drives a resgate-rs gateway with the real resclient over the `ws` package.
// Usage: node script.js <ws-url>
// Prints one JSON object per line: get, listening, change, call; exits 0 on success.
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

const client = new ResClient(() => new WebSocket(url));

(async () => {
  const model = await client.get('example.model');
  out({ step: 'get', model: model.toJSON() });
  await new Promise((resolve) => {
    model.on('change', () => {
      out({ step: 'change', model: model.toJSON() });
      resolve();
    });
    out({ step: 'listening' });
  });
  const result = await client.call('example.model', 'ping', { n: 1 });
  out({ step: 'call', result });
  clearTimeout(timer);
  await client.disconnect();
  process.exit(0);
})().catch((e) => fail('exception', e));
