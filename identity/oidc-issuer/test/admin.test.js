// Test-only admin endpoints (--test-admin): key rotation and direct token minting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createLocalJWKSet, jwtVerify, decodeProtectedHeader } from 'jose';

import { startIssuer } from '../src/server.js';
import { login, exchangeCode } from '../test-support/oidc-client.js';

let running;
let issuer;
before(async () => {
  running = await startIssuer({ port: 0, testAdmin: true, env: {} });
  issuer = running.issuer;
});
after(() => running.close());

const post = async (path, body) => {
  const res = await fetch(`${issuer}/__test/${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}),
  });
  return { status: res.status, body: await res.json() };
};
const jwksNow = async () => (await fetch(`${issuer}/protocol/openid-connect/certs`)).json();

test('minted tokens verify against the published JWKS and honour overrides', async () => {
  const { status, body } = await post('token', {
    username: 'bob', ttl: 120, nbf_offset: 60, aud: ['booking-api', 'other'], iss: 'https://elsewhere/',
  });
  assert.equal(status, 200);
  const { payload } = await jwtVerify(body.access_token, createLocalJWKSet(await jwksNow()), {
    currentDate: new Date((body.claims.nbf + 1) * 1000),
  });
  assert.equal(payload.preferred_username, 'bob');
  assert.equal(payload.exp - payload.iat, 120);
  assert.equal(payload.nbf, payload.iat + 60);
  assert.deepEqual(payload.aud, ['booking-api', 'other']);
  assert.equal(payload.iss, 'https://elsewhere/');
  assert.equal(payload.azp, 'booking-web');
});

test('omit, extra, kid and unpublished_key options', async () => {
  const { body } = await post('token', { omit: ['azp', 'email'], extra: { custom: 1 }, kid: null });
  assert.equal(body.claims.azp, undefined);
  assert.equal(body.claims.email, undefined);
  assert.equal(body.claims.custom, 1);
  assert.equal(decodeProtectedHeader(body.access_token).kid, undefined);
  const unpublished = (await post('token', { unpublished_key: true })).body;
  const kids = (await jwksNow()).keys.map((k) => k.kid);
  assert.ok(!kids.includes(unpublished.kid));
  assert.equal((await post('token', { username: 'mallory' })).status, 400);
});

test('rotation publishes a new current key; tokens from the old key still verify', async () => {
  const before1 = await jwksNow();
  const oldToken = (await post('token', {})).body.access_token;
  const oldKid = decodeProtectedHeader(oldToken).kid;

  const { status, body } = await post('rotate-keys');
  assert.equal(status, 200);
  assert.equal(body.kids.length, before1.keys.length + 1);
  assert.equal(body.kids[0], body.kid);

  const after1 = await jwksNow();
  assert.deepEqual(after1.keys.map((k) => k.kid), body.kids);
  const set = createLocalJWKSet(after1);
  await jwtVerify(oldToken, set);
  const minted = (await post('token', {})).body.access_token;
  assert.equal(decodeProtectedHeader(minted).kid, body.kid);

  // The real provider signs with the new key as well, and the session store survived the swap.
  const tokens = (await exchangeCode(issuer, await login(issuer))).body;
  assert.equal(decodeProtectedHeader(tokens.access_token).kid, body.kid);
  assert.notEqual(body.kid, oldKid);
  await jwtVerify(tokens.access_token, set, { issuer, audience: 'booking-api' });

  const stats = await (await fetch(`${issuer}/__test/stats`)).json();
  assert.ok(stats.jwks_requests >= 2);
  assert.equal(stats.rotations, 1);
});

test('rotation without keep_old retires previous keys', async () => {
  const { body } = await post('rotate-keys', { keep_old: false });
  assert.deepEqual(body.kids, [body.kid]);
});

test('bad admin requests are rejected cleanly', async () => {
  const res = await fetch(`${issuer}/__test/token`, { method: 'POST', body: '[1,2' });
  assert.equal(res.status, 400);
  assert.equal((await fetch(`${issuer}/__test/nope`)).status, 404);
});
