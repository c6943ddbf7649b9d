// HTTP front: mounts the provider under the issuer's path (/realms/<realm>, like Keycloak), swaps in
// a fresh provider instance when signing keys rotate, and serves the test-only admin endpoints.
import { createServer } from 'node:http';
import { randomUUID, createPublicKey } from 'node:crypto';
import { importJWK, SignJWT } from 'jose';

import { loadRealm, DEFAULT_REALM_FILE } from './realm.js';
import { KeyStore, generateRsaKeyPair, publicJwk } from './keys.js';
import { createProvider, ROUTES, resourceIndicator } from './provider.js';
import { userAccessClaims } from './claims.js';

const MAX_JSON_BYTES = 64 * 1024;

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_JSON_BYTES) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) return {};
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not an object');
    return value;
  } catch {
    throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
  }
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

const epoch = () => Math.floor(Date.now() / 1000);

export async function startIssuer({
  port = 0,
  host = '127.0.0.1',
  issuer: issuerOverride,
  accessTokenTtl,
  realmFile = DEFAULT_REALM_FILE,
  dataDir,
  testAdmin = false,
  env = process.env,
} = {}) {
  const realm = loadRealm(realmFile, env);
  const keyStore = await KeyStore.open(dataDir);
  const ttl = accessTokenTtl ?? realm.accessTokenLifespan;
  const stats = { jwks_requests: 0, discovery_requests: 0, rotations: 0 };
  let provider;
  let handler;
  let issuer;
  let mountPath;

  const build = () => {
    provider = createProvider({
      issuer, realm, keyStore, accessTokenTtl: ttl, mountPath,
    });
    handler = provider.callback();
  };

  async function mintToken(body) {
    const username = body.username ?? 'alice';
    const user = realm.usersByUsername.get(username);
    if (!user) throw Object.assign(new Error(`unknown user ${username}`), { status: 400 });
    const now = epoch();
    const payload = {
      jti: randomUUID(),
      sub: user.id,
      iat: now,
      exp: now + (body.ttl ?? ttl),
      scope: 'openid profile email',
      client_id: realm.client.clientId,
      iss: issuer,
      aud: realm.audience,
      ...userAccessClaims(user, realm.client.clientId),
    };
    for (const claim of ['iss', 'aud', 'azp', 'exp', 'iat', 'nbf', 'sub']) {
      if (Object.hasOwn(body, claim)) payload[claim] = body[claim];
    }
    if (Object.hasOwn(body, 'nbf_offset')) payload.nbf = now + body.nbf_offset;
    Object.assign(payload, body.extra ?? {});
    for (const claim of body.omit ?? []) delete payload[claim];
    for (const [k, v] of Object.entries(payload)) if (v === null || v === undefined) delete payload[k];

    let jwk = keyStore.current;
    if (body.unpublished_key) {
      // A well-formed key the JWKS never publishes: tokens signed with it must be refused.
      const { privateKey } = await generateRsaKeyPair('rsa', { modulusLength: 2048 });
      jwk = { ...privateKey.export({ format: 'jwk' }), kid: `unpublished-${randomUUID()}`, alg: 'RS256' };
    }
    const header = { alg: 'RS256', typ: 'at+jwt', kid: jwk.kid };
    if (Object.hasOwn(body, 'kid')) {
      if (body.kid === null) delete header.kid; else header.kid = body.kid;
    }
    const key = await importJWK(jwk, 'RS256');
    const token = await new SignJWT(payload).setProtectedHeader(header).sign(key);
    return { access_token: token, token_type: 'Bearer', kid: header.kid, claims: payload };
  }

  async function admin(req, res, path) {
    if (req.method === 'POST' && path === '/rotate-keys') {
      const body = await readJson(req);
      const fresh = await keyStore.rotate({ keepOld: body.keep_old !== false });
      build();
      stats.rotations += 1;
      return sendJson(res, 200, { kid: fresh.kid, kids: keyStore.keys.map((k) => k.kid) });
    }
    if (req.method === 'POST' && path === '/token') {
      return sendJson(res, 200, await mintToken(await readJson(req)));
    }
    if (req.method === 'GET' && path === '/stats') return sendJson(res, 200, stats);
    if (req.method === 'GET' && path === '/keys') {
      // Public keys as JWK and PEM: tests use them to forge HMAC tokens keyed with public material.
      return sendJson(res, 200, {
        keys: keyStore.keys.map((k) => ({
          ...publicJwk(k),
          pem: createPublicKey({ key: publicJwk(k), format: 'jwk' }).export({ type: 'spki', format: 'pem' }),
        })),
      });
    }
    return sendJson(res, 404, { error: 'not_found' });
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://internal');
    const { pathname } = url;
    if (!handler) return sendJson(res, 503, { error: 'starting' });
    if (pathname === '/health') return sendJson(res, 200, { status: 'ok', issuer });
    if (pathname === mountPath || pathname.startsWith(`${mountPath}/`)) {
      const inner = pathname.slice(mountPath.length) || '/';
      if (testAdmin && inner.startsWith('/__test/')) {
        return admin(req, res, inner.slice('/__test'.length)).catch((err) => {
          sendJson(res, err.status ?? 500, { error: err.message });
        });
      }
      if (inner === ROUTES.jwks) stats.jwks_requests += 1;
      if (inner === '/.well-known/openid-configuration') stats.discovery_requests += 1;
      // Mounted like express does it: the provider derives its mount path from originalUrl.
      req.originalUrl = req.url;
      req.url = inner + url.search;
      return handler(req, res);
    }
    return sendJson(res, 404, { error: 'not_found' });
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port: boundPort } = server.address();
  const publicHost = host === '0.0.0.0' || host === '::' ? 'localhost' : host;
  const hostPart = publicHost.includes(':') ? `[${publicHost}]` : publicHost;
  issuer = (issuerOverride ?? `http://${hostPart}:${boundPort}/realms/${realm.name}`).replace(/\/+$/, '');
  mountPath = new URL(issuer).pathname.replace(/\/+$/, '');
  build();

  return {
    issuer,
    port: boundPort,
    url: `http://${hostPart}:${boundPort}${mountPath}`,
    realm,
    resource: resourceIndicator(realm.audience),
    get provider() { return provider; },
    stats,
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
