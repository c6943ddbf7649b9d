// Test helpers: a tiny cookie jar and an HTTP-only Authorization Code + PKCE client.
import { createHash, randomBytes } from 'node:crypto';

export const REDIRECT_URI = 'http://localhost:8000/callback';

export function pkcePair() {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

export class CookieJar {
  #cookies = new Map();

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => {
        const [k, v] = a.trim().split('=');
        return (k.toLowerCase() === 'expires' && Date.parse(v) <= Date.now())
          || (k.toLowerCase() === 'max-age' && Number(v) <= 0);
      });
      if (expired || value === '') this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header() {
    return [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

// fetch without following redirects, carrying cookies.
export async function request(jar, url, init = {}) {
  const res = await fetch(url, {
    ...init,
    redirect: 'manual',
    headers: { ...(init.headers ?? {}), cookie: jar.header() },
  });
  jar.store(res);
  return res;
}

export function authorizationUrl(issuer, params) {
  const url = new URL(`${issuer}/protocol/openid-connect/auth`);
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
  return url;
}

// Follows redirects on the issuer until one leaves it (to the client's redirect URI).
export async function followToClient(jar, issuer, res) {
  let current = res;
  for (let i = 0; i < 10; i += 1) {
    if (![302, 303].includes(current.status)) return { res: current };
    const location = new URL(current.headers.get('location'), issuer);
    if (!location.href.startsWith(issuer)) return { location };
    current = await request(jar, location);
  }
  throw new Error('too many redirects');
}

export function formAction(html) {
  const m = /<form[^>]*id="login-form"[^>]*action="([^"]+)"/.exec(html);
  if (!m) throw new Error(`no login form in page:\n${html}`);
  return m[1].replace(/&amp;/g, '&');
}

// Runs the browser part of the code flow over plain HTTP: authorization request, login form,
// redirect back with the code.
export async function login(issuer, {
  username = 'alice', password = username, jar = new CookieJar(), redirectUri = REDIRECT_URI,
  scope = 'openid profile email',
} = {}) {
  const { verifier, challenge } = pkcePair();
  const state = randomBytes(8).toString('hex');
  const nonce = randomBytes(8).toString('hex');
  const start = await request(jar, authorizationUrl(issuer, {
    client_id: 'booking-web',
    response_type: 'code',
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }));
  let step = await followToClient(jar, issuer, start);
  if (step.res) {
    const page = await step.res.text();
    const action = new URL(formAction(page), issuer);
    const posted = await request(jar, action, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ username, password }),
    });
    step = await followToClient(jar, issuer, posted);
    if (step.res) return { failed: step.res, jar };
  }
  const { location } = step;
  return {
    jar, verifier, state, nonce, location, code: location.searchParams.get('code'), redirectUri,
  };
}

export async function tokenRequest(issuer, params, headers = {}) {
  const res = await fetch(`${issuer}/protocol/openid-connect/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
  return { res, body: await res.json() };
}

export async function exchangeCode(issuer, { code, verifier, redirectUri = REDIRECT_URI }) {
  return tokenRequest(issuer, {
    grant_type: 'authorization_code',
    client_id: 'booking-web',
    code,
    code_verifier: verifier,
    redirect_uri: redirectUri,
  });
}
