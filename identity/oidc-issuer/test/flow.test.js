// Full Authorization Code + PKCE flow over HTTP against an in-process issuer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRemoteJWKSet, jwtVerify, decodeJwt, decodeProtectedHeader } from 'jose';

import { startIssuer } from '../src/server.js';
import {
  CookieJar, request, authorizationUrl, followToClient, login, exchangeCode, tokenRequest,
  pkcePair, REDIRECT_URI,
} from '../test-support/oidc-client.js';

let issuer;
let running;
let jwks;

before(async () => {
  running = await startIssuer({ port: 0, accessTokenTtl: 120, env: {} });
  issuer = running.issuer;
  jwks = createRemoteJWKSet(new URL(`${issuer}/protocol/openid-connect/certs`));
});
after(() => running.close());

const now = () => Math.floor(Date.now() / 1000);

test('discovery advertises the issuer, JWKS and S256-only PKCE', async () => {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  assert.equal(res.status, 200);
  const meta = await res.json();
  assert.equal(meta.issuer, issuer);
  assert.equal(meta.jwks_uri, `${issuer}/protocol/openid-connect/certs`);
  assert.deepEqual(meta.code_challenge_methods_supported, ['S256']);
  assert.deepEqual(meta.response_types_supported, ['code']);
  assert.ok(meta.end_session_endpoint);
  assert.ok(!meta.grant_types_supported.includes('password'));
  const keys = await (await fetch(meta.jwks_uri)).json();
  assert.equal(keys.keys.length, 1);
  assert.ok(keys.keys[0].kid);
  assert.equal(keys.keys[0].d, undefined, 'JWKS must not leak private key material');
});

test('authorization code + PKCE yields a JWT access token with the platform claims', async () => {
  const flow = await login(issuer, { username: 'olivia' });
  assert.ok(flow.code, 'code in redirect');
  assert.equal(flow.location.origin + flow.location.pathname, REDIRECT_URI);
  assert.equal(flow.location.searchParams.get('state'), flow.state);
  assert.equal(flow.location.searchParams.get('iss'), issuer);

  const { res, body } = await exchangeCode(issuer, flow);
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.token_type, 'Bearer');
  assert.ok(body.refresh_token, 'refresh token issued to the public client');
  assert.ok(body.id_token);

  const header = decodeProtectedHeader(body.access_token);
  assert.equal(header.alg, 'RS256');
  assert.ok(header.kid);
  const { payload } = await jwtVerify(body.access_token, jwks, {
    issuer, audience: 'booking-api', algorithms: ['RS256'],
  });
  assert.equal(payload.iss, issuer);
  assert.ok([payload.aud].flat().includes('booking-api'));
  assert.equal(payload.azp, 'booking-web');
  assert.equal(payload.sub, '80e2c5ee-9afa-4969-98ba-494f7e4880fd');
  assert.equal(payload.preferred_username, 'olivia');
  assert.equal(payload.name, 'Olivia Ortega');
  assert.equal(payload.email, 'olivia@example.com');
  assert.ok(payload.realm_access.roles.includes('operator'));
  assert.ok(payload.realm_access.roles.includes('customer'));
  assert.deepEqual(payload.resource_access['booking-api'].roles, ['schedule-admin']);
  assert.ok(payload.exp > now() && payload.exp <= now() + 121, 'exp follows --access-token-ttl');
  assert.ok(payload.iat <= now() + 1);

  const idToken = await jwtVerify(body.id_token, jwks, { issuer, audience: 'booking-web' });
  assert.equal(idToken.payload.nonce, flow.nonce);
  assert.ok(payload.sid, 'access token carries the session id');
  assert.equal(payload.sid, idToken.payload.sid);
  assert.equal(idToken.payload.email, 'olivia@example.com');
});

test('refresh token exchange returns a fresh access token and rotates the refresh token', async () => {
  const flow = await login(issuer, { username: 'bob' });
  const first = (await exchangeCode(issuer, flow)).body;
  const { res, body } = await tokenRequest(issuer, {
    grant_type: 'refresh_token', client_id: 'booking-web', refresh_token: first.refresh_token,
  });
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.notEqual(body.access_token, first.access_token);
  assert.ok(body.refresh_token && body.refresh_token !== first.refresh_token, 'rotated');
  const { payload } = await jwtVerify(body.access_token, jwks, { issuer, audience: 'booking-api' });
  assert.equal(payload.preferred_username, 'bob');
  assert.equal(payload.azp, 'booking-web');
  assert.deepEqual(payload.realm_access.roles.includes('customer'), true);
  assert.equal(payload.realm_access.roles.includes('operator'), false);

  // Reusing a rotated refresh token is refused.
  const reuse = await tokenRequest(issuer, {
    grant_type: 'refresh_token', client_id: 'booking-web', refresh_token: first.refresh_token,
  });
  assert.equal(reuse.res.status, 400);
  assert.equal(reuse.body.error, 'invalid_grant');
});

test('the code cannot be redeemed with a wrong verifier, nor twice', async () => {
  const flow = await login(issuer);
  const wrong = await exchangeCode(issuer, { ...flow, verifier: pkcePair().verifier });
  assert.equal(wrong.body.error, 'invalid_grant');
  const flow2 = await login(issuer);
  assert.equal((await exchangeCode(issuer, flow2)).res.status, 200);
  assert.equal((await exchangeCode(issuer, flow2)).body.error, 'invalid_grant');
});

test('PKCE is required and only S256 is accepted', async () => {
  const jar = new CookieJar();
  const base = {
    client_id: 'booking-web', response_type: 'code', redirect_uri: REDIRECT_URI, scope: 'openid', state: 's',
  };
  for (const extra of [{}, { code_challenge: 'a'.repeat(43), code_challenge_method: 'plain' }]) {
    const res = await request(jar, authorizationUrl(issuer, { ...base, ...extra }));
    assert.equal(res.status, 303);
    const loc = new URL(res.headers.get('location'));
    assert.equal(loc.origin + loc.pathname, REDIRECT_URI);
    assert.equal(loc.searchParams.get('error'), 'invalid_request');
  }
});

test('redirect URIs follow the realm: wildcard paths on localhost/127.0.0.1, nothing else', async () => {
  const ok = await login(issuer, { redirectUri: 'http://127.0.0.1:8000/app/deep/path?x=1' });
  assert.ok(ok.code);
  const jar = new CookieJar();
  for (const bad of ['http://localhost:8001/callback', 'https://evil.example/callback', 'http://localhost:8000.evil.example/']) {
    const res = await request(jar, authorizationUrl(issuer, {
      client_id: 'booking-web',
      response_type: 'code',
      redirect_uri: bad,
      scope: 'openid',
      code_challenge: pkcePair().challenge,
      code_challenge_method: 'S256',
    }));
    assert.equal(res.status, 400, bad);
    assert.equal(res.headers.get('location'), null);
  }
});

test('a wrong password re-renders the form with an error and no redirect', async () => {
  const flow = await login(issuer, { username: 'alice', password: 'wrong' });
  assert.ok(flow.failed);
  assert.equal(flow.failed.status, 401);
  const html = await flow.failed.text();
  assert.match(html, /id="error"/);
  assert.match(html, /id="username"/);
  assert.match(html, /id="password"/);
  assert.match(html, /id="login"/);
});

test('the password grant is not available', async () => {
  const { body } = await tokenRequest(issuer, {
    grant_type: 'password', client_id: 'booking-web', username: 'alice', password: 'alice',
  });
  assert.equal(body.error, 'unsupported_grant_type');
});

test('CORS on the token endpoint is limited to the realm web origins', async () => {
  const allowed = await fetch(`${issuer}/protocol/openid-connect/token`, {
    method: 'OPTIONS',
    headers: { origin: 'http://localhost:8000', 'access-control-request-method': 'POST' },
  });
  assert.equal(allowed.headers.get('access-control-allow-origin'), 'http://localhost:8000');
  const { res } = await tokenRequest(issuer, { grant_type: 'refresh_token', client_id: 'booking-web', refresh_token: 'x' }, { origin: 'https://evil.example' });
  assert.equal(res.headers.get('access-control-allow-origin'), null);
});

test('an existing session skips the login form (SSO) and RP-initiated logout ends it', async () => {
  const flow = await login(issuer, { username: 'alice' });
  const tokens = (await exchangeCode(issuer, flow)).body;
  const { jar } = flow;

  // Second authorization request: no form, straight back to the client.
  const again = await login(issuer, { jar, username: 'nobody' });
  assert.ok(again.code, 'SSO session reused');

  const logoutUrl = new URL(`${issuer}/protocol/openid-connect/logout`);
  logoutUrl.searchParams.set('id_token_hint', tokens.id_token);
  logoutUrl.searchParams.set('post_logout_redirect_uri', 'http://localhost:8000/');
  logoutUrl.searchParams.set('state', 'bye');
  const page = await request(jar, logoutUrl);
  assert.equal(page.status, 200);
  const html = await page.text();
  assert.match(html, /id="logout-yes"/);
  const action = /<form[^>]*action="([^"]+)"/.exec(html)[1];
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)[1];
  const confirm = await request(jar, new URL(action, issuer), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ xsrf, logout: 'yes' }),
  });
  const done = await followToClient(jar, issuer, confirm);
  assert.equal(done.location.origin + done.location.pathname, 'http://localhost:8000/');
  assert.equal(done.location.searchParams.get('state'), 'bye');

  // The session is gone: the next authorization request shows the login form again.
  const start = await request(jar, authorizationUrl(issuer, {
    client_id: 'booking-web',
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: 'openid',
    code_challenge: pkcePair().challenge,
    code_challenge_method: 'S256',
  }));
  const step = await followToClient(jar, issuer, start);
  assert.ok(step.res, 'login page shown');
  assert.match(await step.res.text(), /id="login-form"/);
});

test('userinfo is not the audience of API tokens; test admin is off by default', async () => {
  const res = await fetch(`${issuer}/__test/token`, { method: 'POST', body: '{}' });
  assert.equal(res.status, 404);
  const claims = decodeJwt((await exchangeCode(issuer, await login(issuer))).body.access_token);
  assert.equal(claims.aud, 'booking-api');
});
