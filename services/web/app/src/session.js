// The user's session: OIDC sign-in (Authorization Code + PKCE via oidc-client-ts, works with
// Keycloak and the local issuer) and the RES connection (resclient over resgate-rs), which is
// authenticated in-band with the access token: after sign-in, after every token refresh, and
// again on every (re)connect of the WebSocket.

import { UserManager, WebStorageStateStore } from 'oidc-client-ts';
import ResClient from 'resclient';
import { Emitter } from './dom.js';


export class Session extends Emitter {
  /** @param {{gatewayUrl: string, oidc: {issuer: string, clientId: string}}} config */
  constructor(config) {
    super();
    this.authRid = config.authRid || 'identity.session';
    const origin = window.location.origin;
    this.oidc = new UserManager({
      authority: config.oidc.issuer,
      client_id: config.oidc.clientId,
      redirect_uri: `${origin}/callback`,
      post_logout_redirect_uri: `${origin}/`,
      response_type: 'code',
      scope: 'openid profile email',
      automaticSilentRenew: true,
      userStore: new WebStorageStateStore({ store: window.sessionStorage }),
      stateStore: new WebStorageStateStore({ store: window.sessionStorage }),
    });
    /** @type {import('oidc-client-ts').User | null} */
    this.user = null;
    this.authenticated = false; // the RES connection carries the current token
    this.connected = false;
    this.everConnected = false;

    this.client = new ResClient(config.gatewayUrl, { reconnectDelay: 1000, subscribeStaleDelay: 1000 });
    // Runs before stale resources are resubscribed: the new connection has no token yet.
    this.client.setOnConnect(() => this.#authenticate('reconnect'));
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
    this.client.on('error', (err) => console.warn('resclient error', err));

    this.oidc.events.addUserLoaded((user) => {
      // Token refreshed (silent renew with the refresh token): re-authenticate in-band.
      this.user = user;
      this.#authenticate('refresh');
    });
    this.oidc.events.addAccessTokenExpired(() => {
      if (!this.user) return;
      this.emit('error', { code: 'session.expired', message: 'Your session has expired. Please sign in again.' });
      this.#dropUser();
    });
    this.oidc.events.addSilentRenewError((err) => {
      console.warn('silent renew failed', err);
      this.emit('error', { code: 'session.renewFailed', message: 'Could not refresh your sign-in. Please sign in again.' });
    });
    this.oidc.events.addUserSignedOut(() => this.#dropUser());
  }

  /** Completes a sign-in redirect if this is one; loads a stored user. Returns the path to show. */
  async start() {
    let returnTo = null;
    if (window.location.pathname === '/callback') {
      try {
        const user = await this.oidc.signinRedirectCallback();
        this.user = user;
        returnTo = user.state?.returnTo || '/';
      } catch (e) {
        this.emit('error', { code: 'session.callback', message: `Sign-in failed: ${e.message || e}` });
        returnTo = '/';
      }
      window.history.replaceState(null, '', returnTo);
    } else {
      const user = await this.oidc.getUser();
      if (user && !user.expired) this.user = user;
      else if (user) await this.oidc.removeUser();
    }
    this.emit('user', this.user);
    try {
      await this.client.connect();
    } catch (e) {
      // resclient keeps retrying while resources are subscribed; the banner shows the state.
      console.warn('connect failed', e);
    }
    return returnTo;
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

  async #authenticate(why) {
    if (!this.user?.access_token) return;
    try {
      await this.client.authenticate(this.authRid, 'login', { token: this.user.access_token });
      this.authenticated = true;
      this.emit('authenticated', why);
    } catch (e) {
      this.authenticated = false;
      // A dropped connection is reported by the banner; everything else is shown.
      if (e?.code !== 'system.disconnected') {
        this.emit('error', {
          code: e?.code || 'session.login',
          message: `Could not sign in to the booking service (${e?.message || e?.code || e}).`,
        });
      }
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

  get(rid) {
    return this.client.get(rid);
  }

  call(rid, method, params) {
    return this.client.call(rid, method, params);
  }
}
