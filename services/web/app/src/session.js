// The user's session: OIDC sign-in (Authorization Code + PKCE via oidc-client-ts, works with
// Keycloak and the local issuer) and the RES connection (resclient over resgate-rs), which is
// authenticated in-band with the access token: after sign-in, after every token refresh, and
// again on every (re)connect of the WebSocket.
//
// Token refresh is done here rather than by oidc-client-ts' automaticSilentRenew, because the
// issuers rotate refresh tokens and treat a reused one as theft (the whole sign-in is revoked):
// so at most one refresh runs at a time, a failed one is retried while it can still succeed, and
// an access token that expires is renewed with the refresh token instead of signing the user out.
// The user is signed out only when the issuer refuses the refresh token.
//
// The sign-in is shared by every tab of the browser (IndexedDB, see userstore.js): one tab's
// refresh is used by the others (a BroadcastChannel), refreshes of all tabs run one at a time (a
// Web Lock) and each first looks whether another tab has just refreshed, and signing out in one
// tab signs out all.

import { ErrorResponse, UserManager, WebStorageStateStore } from 'oidc-client-ts';
import ResClient from 'resclient';
import { Emitter } from './dom.js';
import { SharedUserStore } from './userstore.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** How long a request may go unanswered before the user is told (a frozen gateway). */
export const CALL_TIMEOUT_MS = 10_000;

/** `p`, or a `client.timeout` error after `ms`. */
function timed(p, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`${what}: no answer within ${ms / 1000} s`), { code: 'client.timeout' })), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs `fn` holding the browser-wide token lock (all tabs of this origin), if there is one. */
function withTokenLock(fn) {
  return navigator.locks ? navigator.locks.request('booking-token-refresh', fn) : fn();
}

/** The issuer refused the refresh (invalid_grant: expired, revoked, session ended...). */
function refused(e) {
  return e instanceof ErrorResponse && !['server_error', 'temporarily_unavailable'].includes(e.error);
}

/** The claims of a JWT access token (not verified: the services do that), or null if opaque. */
function tokenClaims(accessToken) {
  try {
    const b64 = accessToken.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b64));
  } catch {
    return null;
  }
}

/** Seconds before expiry at which a token is renewed: a quarter of its lifetime, 1 s to 60 s. */
function renewalLeadSecs(user) {
  const { iat, exp } = tokenClaims(user.access_token) ?? {};
  // An opaque token: the time left is the best guess of its lifetime.
  const lifetime = exp > iat ? exp - iat : (user.expires_in ?? 0);
  return Math.min(60, Math.max(1, lifetime / 4));
}

export class Session extends Emitter {
  #user = null;
  #renewTimer = null;

  /** @param {{gatewayUrl: string, oidc: {issuer: string, clientId: string}}} config */
  constructor(config) {
    super();
    this.authRid = config.authRid || 'identity.session';
    const origin = window.location.origin;
    this.userStore = new SharedUserStore();
    this.oidc = new UserManager({
      authority: config.oidc.issuer,
      client_id: config.oidc.clientId,
      redirect_uri: `${origin}/callback`,
      post_logout_redirect_uri: `${origin}/`,
      response_type: 'code',
      scope: 'openid profile email',
      automaticSilentRenew: false, // see #renew
      userStore: this.userStore,
      stateStore: new WebStorageStateStore({ store: window.sessionStorage }),
    });
    this.authenticated = false; // the RES connection carries the current token
    this.connected = false;
    this.everConnected = false;
    this.renewing = null; // the refresh in flight, if any
    this.authChain = Promise.resolve(); // in-band logins, one at a time, newest token last

    this.client = new ResClient(config.gatewayUrl, { reconnectDelay: 1000, subscribeStaleDelay: 1000 });
    // Runs before stale resources are resubscribed: the new connection has no token yet. The
    // login must be sent synchronously here (resclient counts as connected only during this
    // call), so it bypasses the queue; logins queued for the old connection follow it.
    this.client.setOnConnect(() => this.#login('reconnect'));
    this.client.on('connect', () => {
      const wasReconnect = this.everConnected;
      this.connected = true;
      this.everConnected = true;
      this.emit('connection', { connected: true, reconnected: wasReconnect });
    });
    this.client.on('disconnect', () => {
      this.connected = false;
      this.authenticated = false;
      this.emit('connection', { connected: false });
    });
    this.client.on('error', (err) => console.warn('[booking] connection error', err));
    this.userStore.onChange((key, value) => this.#otherTab(key, value));

    this.oidc.events.addUserLoaded((user) => {
      // Signed in, or token refreshed: re-authenticate in-band with the new access token.
      if (!this.user && !this.signingIn) return; // signed out while a refresh was in flight
      this.user = user;
      this.#authenticate('refresh');
    });
    this.oidc.events.addAccessTokenExpired(() => {
      if (!this.user) return;
      if (this.user.refresh_token) {
        // Timers do not run while a laptop sleeps: renew now; only a refusal signs out.
        this.#renew().catch(() => {});
        return;
      }
      this.emit('error', { code: 'session.expired', message: 'Your session has expired. Please sign in again.' });
      this.#dropUser();
    });
  }

  /** @type {import('oidc-client-ts').User | null} */
  get user() {
    return this.#user;
  }

  /**
   * Every new token schedules its renewal. Not oidc-client-ts' "expiring" event: it fires a
   * fixed minute before expiry, so a token shorter-lived than that is renewed a second after
   * issue, over and over; each refresh rotates the refresh token, and a tab closed or reloaded
   * while one is in flight loses the new one (the issuer then refuses the stored one as reused).
   * Renewing at three quarters of the lifetime keeps those windows rare.
   */
  set user(user) {
    clearTimeout(this.#renewTimer);
    this.#renewTimer = null;
    this.#user = user;
    if (!user?.refresh_token || !user.expires_at) return;
    const delayMs = user.expires_at * 1000 - renewalLeadSecs(user) * 1000 - Date.now();
    // An expired token is renewed by the "expired" event or on resume.
    if (delayMs > 0) {
      this.#renewTimer = setTimeout(() => {
        if (this.user === user) this.#renew().catch(() => {});
      }, delayMs);
    }
  }

  /**
   * Refreshes the tokens with the refresh token, one refresh at a time. Resolves with the new
   * user; rejects when it is refused (the user is then signed out) or the user signed out.
   */
  #renew(giveUpAfterMs = Infinity) {
    if (!this.renewing) {
      this.renewing = this.#renewLoop(Date.now() + giveUpAfterMs).finally(() => {
        this.renewing = null;
      });
    }
    return this.renewing;
  }

  async #renewLoop(giveUpAt) {
    let warned = false;
    for (let attempt = 0; ; attempt++) {
      if (!this.user?.refresh_token) throw new Error('not signed in');
      try {
        return await withTokenLock(() => this.#refreshOrAdopt());
      } catch (e) {
        if (!this.user) throw e; // signed out meanwhile
        if (refused(e)) {
          console.warn('token refresh refused', e);
          this.emit('error', { code: 'session.expired', message: 'Your sign-in has ended. Please sign in again.' });
          this.#dropUser();
          throw e;
        }
        // Issuer unreachable or busy: retry with backoff. Tell the user once the access token
        // (and so the booking connection's sign-in) has run out.
        console.warn('token refresh failed; retrying', e);
        if (Date.now() >= giveUpAt) throw e;
        if (!warned && this.user?.expired) {
          warned = true;
          this.emit('error', { code: 'session.renewFailed', message: 'Could not refresh your sign-in; retrying…' });
        }
        await sleep(Math.min(1000 * 2 ** attempt, 15000));
      }
    }
  }

  /** Inside the cross-tab lock: a token another tab refreshed meanwhile, or a refresh. */
  async #refreshOrAdopt() {
    // Adopted from another tab while this one waited for the lock: not due yet (a second of
    // slack, so that a timer firing a little early still renews).
    const current = this.user;
    if (current?.expires_at && current.expires_at - Date.now() / 1000 > renewalLeadSecs(current) + 1) return current;
    const stored = await this.oidc.getUser();
    if (stored && !stored.expired && this.user && stored.access_token !== this.user.access_token && (stored.expires_at ?? 0) >= (this.user.expires_at ?? 0)) {
      this.user = stored;
      this.#authenticate('refresh');
      return stored;
    }
    return this.oidc.signinSilent();
  }

  /** Another tab signed in, refreshed or signed out (the shared user store changed). */
  async #otherTab(key, value) {
    if (!key?.startsWith('user:')) return; // oidc-client-ts' user key (the store holds nothing else)
    if (!value) {
      if (this.user) {
        this.#dropUser();
        this.emit('error', { code: 'session.signedOutElsewhere', message: 'You signed out in another tab.' });
      }
      return;
    }
    const stored = await this.oidc.getUser();
    if (!stored || stored.expired || stored.access_token === this.user?.access_token) return;
    const first = !this.user;
    this.user = stored;
    if (first) this.emit('user', this.user);
    this.#authenticate('refresh');
  }

  /** Roles from the access token (realm and client roles, as the services see them). */
  get roles() {
    const claims = (this.user && tokenClaims(this.user.access_token)) || {};
    const roles = new Set(claims.realm_access?.roles || []);
    for (const c of Object.values(claims.resource_access || {})) for (const r of c?.roles || []) roles.add(r);
    return roles;
  }

  get isOperator() {
    return this.roles.has('operator');
  }

  /** Completes a sign-in redirect if this is one; loads a stored user. Returns the path to show. */
  async start() {
    let returnTo = null;
    if (window.location.pathname === '/callback') {
      try {
        this.signingIn = true;
        const user = await this.oidc.signinRedirectCallback();
        this.user = user;
        returnTo = user.state?.returnTo || '/';
      } catch (e) {
        this.emit('error', { code: 'session.callback', message: `Sign-in failed: ${e.message || e}` });
        returnTo = '/';
      } finally {
        this.signingIn = false;
      }
      window.history.replaceState(null, '', returnTo);
    } else {
      const user = await this.oidc.getUser();
      if (user && !user.expired) this.user = user;
      else if (user?.refresh_token) await this.#resume(user);
      else if (user) await this.oidc.removeUser();
    }
    this.emit('user', this.user);
    // A gateway that accepts the socket but never answers (frozen) must not keep the page blank:
    // the views load with their own timeouts and error states.
    timed(this.client.connect(), CALL_TIMEOUT_MS, 'connect').catch((e) => {
      // resclient keeps retrying while resources are subscribed; the banner shows the state.
      console.warn('[booking] connect failed', e);
    });
    return returnTo;
  }

  /** A stored sign-in whose access token expired (the tab was away): refresh it, bounded. */
  async #resume(stored) {
    this.user = stored; // lets #renew run; not authenticated in-band until the refresh succeeds
    try {
      await this.#renew(8000);
    } catch (e) {
      if (this.user) {
        this.emit('error', { code: 'session.renewFailed', message: `Could not refresh your sign-in (${e?.message || e}). Please sign in again.` });
        this.#dropUser();
      }
    }
  }

  get sub() {
    return this.user?.profile?.sub || null;
  }

  get displayName() {
    const p = this.user?.profile || {};
    return p.name || p.preferred_username || p.email || 'Signed in';
  }

  signIn() {
    const returnTo = window.location.pathname + window.location.search + window.location.hash;
    return this.oidc.signinRedirect({ state: { returnTo } });
  }

  async signOut() {
    await this.renewing?.catch(() => {}); // a refresh in flight would store the user again
    const user = this.user;
    try {
      if (this.connected) await this.client.authenticate(this.authRid, 'logout', {});
    } catch (e) {
      console.warn('logout on the gateway failed', e);
    }
    this.#dropUser();
    if (user?.id_token) {
      await this.oidc.signoutRedirect({ id_token_hint: user.id_token });
    } else {
      await this.oidc.removeUser();
    }
  }

  #dropUser() {
    this.user = null;
    this.authenticated = false;
    this.oidc.removeUser().catch(() => {});
    this.emit('user', null);
  }

  /** In-band login with the current access token; queued so the newest token is set last. */
  #authenticate(why) {
    const run = this.authChain.then(() => this.#login(why));
    this.authChain = run.catch(() => {});
    return run;
  }

  async #login(why) {
    const user = this.user;
    if (!user?.access_token || user.expired) return;
    try {
      await this.client.authenticate(this.authRid, 'login', { token: user.access_token });
      if (!this.user) return; // signed out meanwhile
      this.authenticated = true;
      this.emit('authenticated', why);
    } catch (e) {
      this.authenticated = false;
      // A dropped connection is reported by the banner; a token that expired in flight is
      // followed by its renewal; everything else is shown.
      if (e?.code === 'system.disconnected' || this.user !== user) return;
      this.emit('error', {
        code: e?.code || 'session.login',
        message: `Could not sign in to the booking service (${e?.message || e?.code || e}).`,
      });
    }
  }

  /** Waits until the RES connection is authenticated (after sign-in), bounded. */
  async ready(timeoutMs = 10000) {
    if (!this.user) return false;
    if (this.authenticated) return true;
    if (this.connected) await this.#authenticate('ready');
    if (this.authenticated) return true;
    return new Promise((resolve) => {
      const off = this.on('authenticated', () => {
        clearTimeout(t);
        off();
        resolve(true);
      });
      const t = setTimeout(() => {
        off();
        resolve(this.authenticated);
      }, timeoutMs);
    });
  }

  /** A resource, or `client.timeout` if the gateway does not answer in time. */
  get(rid, timeoutMs = CALL_TIMEOUT_MS) {
    return this.#track(timed(this.client.get(rid), timeoutMs, `get ${rid}`));
  }

  /**
   * A call, or `client.timeout` if the gateway does not answer in time (its outcome is then
   * unknown: the live resources show it when the gateway answers again).
   */
  call(rid, method, params, timeoutMs = CALL_TIMEOUT_MS) {
    return this.#track(timed(this.client.call(rid, method, params), timeoutMs, `${method} ${rid}`));
  }

  /** Tells the connection banner whether the gateway answers (a frozen one keeps the socket). */
  #track(p) {
    return p.then(
      (v) => {
        this.emit('answered');
        return v;
      },
      (e) => {
        this.emit(e?.code === 'client.timeout' ? 'unanswered' : 'answered');
        throw e;
      },
    );
  }
}
