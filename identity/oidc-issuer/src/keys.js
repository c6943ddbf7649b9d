// Signing keys: generated at start (or loaded from --data-dir), published in JWKS with a `kid`.
// The first key in the set is the current signing key; older ones stay published so tokens signed
// before a rotation keep verifying.
import { generateKeyPair, randomBytes } from 'node:crypto';
import {
  mkdirSync, readFileSync, writeFileSync, renameSync, existsSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { calculateJwkThumbprint } from 'jose';

// Not generateKeyPairSync: on Node 20 a garbage collection during the synchronous job can run
// the job's own destructor, which waits for a mutex the job holds, and the process hangs for
// good before it listens (seen as an issuer that "never reports ready", about 1 start in 50 on a
// busy machine; the native stack is ~KeyGenJob -> uv_mutex_lock under GlobalHandles weak
// callbacks). The asynchronous job keeps itself alive until it is done.
export const generateRsaKeyPair = promisify(generateKeyPair);

export async function generateSigningJwk() {
  const { privateKey } = await generateRsaKeyPair('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  // RFC 7638 thumbprint: a stable, collision-free kid derived from the public key.
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  return {
    ...jwk, kid, use: 'sig', alg: 'RS256',
  };
}

export function publicJwk(jwk) {
  const {
    kty, n, e, kid, use, alg,
  } = jwk;
  return {
    kty, n, e, kid, use, alg,
  };
}

export class KeyStore {
  #file;

  constructor({ keys, cookieKeys, file }) {
    this.keys = keys;
    this.cookieKeys = cookieKeys;
    this.#file = file;
  }

  static async open(dataDir) {
    const file = dataDir ? join(dataDir, 'issuer-keys.json') : undefined;
    if (file && existsSync(file)) {
      const saved = JSON.parse(readFileSync(file, 'utf8'));
      return new KeyStore({ keys: saved.keys, cookieKeys: saved.cookieKeys, file });
    }
    const store = new KeyStore({
      keys: [await generateSigningJwk()],
      cookieKeys: [randomBytes(32).toString('base64url')],
      file,
    });
    if (dataDir) mkdirSync(dataDir, { recursive: true });
    store.#persist();
    return store;
  }

  get current() {
    return this.keys[0];
  }

  get jwks() {
    return { keys: this.keys.map((k) => ({ ...k })) };
  }

  // Adds a new key and makes it current (front of the set, which oidc-provider signs with).
  async rotate({ keepOld = true } = {}) {
    const fresh = await generateSigningJwk();
    this.keys = keepOld ? [fresh, ...this.keys] : [fresh];
    this.#persist();
    return fresh;
  }

  #persist() {
    if (!this.#file) return;
    const tmp = `${this.#file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ keys: this.keys, cookieKeys: this.cookieKeys }, null, 2), { mode: 0o600 });
    renameSync(tmp, this.#file);
  }
}
