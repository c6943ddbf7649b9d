// The real resclient against the go-res example services of the drop-in tier (23_dropin_gores).
// Usage: node dropin.js <ws-url> <scenario>
// Prints one JSON object per line; exits 0 on success, 1 with {"error":..} on failure.
'use strict';

const ResClient = require('resclient').default;
const WebSocket = require('ws');

const [url, scenario] = process.argv.slice(2);
// Written synchronously: process.exit() would cut off what console.log still buffers for a pipe.
const out = (o) => require('fs').writeSync(1, JSON.stringify(o) + '\n');
const fail = (what, e) => {
  out({ error: what, detail: e && (e.code ? { code: e.code, message: e.message } : String(e && e.stack || e)) });
  process.exit(1);
};
const timer = setTimeout(() => fail('timeout'), 20000);
// One message per event-loop turn, as a browser's WebSocket delivers them (each message is a
// task, promise callbacks run between them). ws' default hands a whole TCP read's messages over in
// one go, and resclient caches a call's resource response in a promise callback: an event right
// behind that response, read together with it, would reach resclient before the resource is
// cached ("Cannot read properties of undefined (reading 'addIndirect')"), against Resgate as well.
const client = new ResClient(() => new WebSocket(url, { allowSynchronousEvents: false }));
const rids = (col) => col.toArray().map((m) => m.getResourceId());
// Resolves on the next `event` of `item`.
const next = (item, event) => new Promise((resolve) => {
  const h = (data) => {
    item.off(event, h);
    resolve(data);
  };
  item.on(event, h);
});

const scenarios = {
  // 01: get the model.
  async hello() {
    const m = await client.get('example.model');
    out({ model: m.toJSON() });
  },
  // 02: `await model.set(..)` resolves after the change event was applied (event before response).
  async edittext() {
    const m = await client.get('text.shared');
    m.on('change', () => {});
    out({ model: m.toJSON() });
    for (let i = 0; i < 50; i++) {
      const v = `resclient ${i}`;
      await m.set({ message: v });
      out({ i, set: v, seen: m.message });
    }
  },
  // 03: new resolves to the created book, already in the collection; delete removes it.
  async books() {
    const books = await client.get('library.books');
    books.on('add', () => {});
    out({ books: rids(books) });
    const book = await client.call('library.books', 'new', { title: 'Dune', author: 'Frank Herbert' });
    out({ created: book.getResourceId(), model: book.toJSON(), books: rids(books) });
    await books.call('delete', { id: book.id });
    out({ books: rids(books) });
  },
  // 05: both spellings of one query resolve to the full collection.
  async spellings() {
    const a = await client.get('search.customers?country=France&name=al');
    const b = await client.get('search.customers?name=AL&country=France');
    out({ a: a ? rids(a) : null, b: b ? rids(b) : null });
  },
  // 05: the unqueried collection follows a new customer (query event).
  async search() {
    const all = await client.get('search.customers');
    const fr = await client.get('search.customers?name=AL&country=France');
    out({ all: rids(all), fr: rids(fr) });
    const added = Promise.all([next(all, 'add'), next(fr, 'add')]);
    const c = await client.call('search.customers', 'newCustomer', { name: 'Alby Aaron', email: '', country: 'France' });
    out({ created: c.getResourceId() });
    // Wait for the query events (they follow the response: go-res' index task).
    await added;
    out({ all: rids(all), fr: rids(fr) });
  },
};

(async () => {
  const f = scenarios[scenario];
  if (!f) {
    fail('unknown scenario ' + scenario);
  }
  await f();
  clearTimeout(timer);
  await client.disconnect();
  process.exit(0);
})().catch((e) => fail('exception', e));
