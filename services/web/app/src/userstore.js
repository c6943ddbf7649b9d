// The signed-in user's tokens, shared by every tab of the browser.
//
// Not localStorage: Chromium keeps a copy of it in each renderer process and syncs the copies
// asynchronously, so a tab that takes the token-refresh lock right after another tab released it
// may still read the refresh token that tab just spent, and the issuer ends the sign-in when a
// refresh token is used twice. IndexedDB is served by one backend for all tabs: a write whose
// transaction completed before the lock was released is what the next holder reads.
// Other tabs learn of changes on a BroadcastChannel (which, like storage events, does not echo
// to the writer).

// The e2e helper `accessToken` reads the same database and store.
const DB_NAME = 'booking-session';
const STORE = 'oidc';
const CHANNEL = 'booking-session';

function openDb() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

/** An oidc-client-ts `StateStore` in IndexedDB that tells the other tabs of each change. */
export class SharedUserStore {
  #db = openDb();
  #channel = new BroadcastChannel(CHANNEL);

  /** Calls `fn(key, value)` when another tab stores (`value`) or removes (`null`) a key. */
  onChange(fn) {
    this.#channel.addEventListener('message', (e) => fn(e.data.key, e.data.value));
  }

  /** Runs `op` on the store; resolves with its result once the transaction has completed. */
  async #run(mode, op) {
    const db = await this.#db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = op(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async set(key, value) {
    await this.#run('readwrite', (s) => s.put(value, key));
    this.#channel.postMessage({ key, value });
  }

  async get(key) {
    return (await this.#run('readonly', (s) => s.get(key))) ?? null;
  }

  async remove(key) {
    const old = await this.get(key);
    await this.#run('readwrite', (s) => s.delete(key));
    this.#channel.postMessage({ key, value: null });
    return old;
  }

  async getAllKeys() {
    return this.#run('readonly', (s) => s.getAllKeys());
  }
}
