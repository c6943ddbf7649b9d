// oidc-provider configuration for the booking realm.
import { timingSafeEqual, createHash } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

import { userAccessClaims, userOidcClaims } from './claims.js';
import { redirectUriMatches } from './realm.js';
import {
  loginPage, logoutPage, loggedOutPage, errorPage,
} from './pages.js';

// Keycloak's endpoint paths relative to the realm URL, so clients written against Keycloak
// (keycloak-js builds these paths itself) work unchanged against this issuer.
export const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo',
  end_session: '/protocol/openid-connect/logout',
  revocation: '/protocol/openid-connect/revoke',
  introspection: '/protocol/openid-connect/token/introspect',
};

// RFC 8707 resource indicators must be absolute URIs; the token's `aud` is the plain client id
// Keycloak would put there.
export const resourceIndicator = (audience) => `urn:${audience}`;

const MAX_FORM_BYTES = 16 * 1024;

async function readForm(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Compares digests so the comparison time does not depend on where the strings differ.
function sameSecret(a, b) {
  const h = (s) => createHash('sha256').update(String(s)).digest();
  return typeof a === 'string' && typeof b === 'string' && timingSafeEqual(h(a), h(b));
}

export function createProvider({
  issuer, realm, keyStore, accessTokenTtl, mountPath,
}) {
  const { client, audience } = realm;
  const indicator = resourceIndicator(audience);
  const firstParty = new Set([client.clientId]);

  const findUser = (login) => realm.usersByUsername.get(login)
    ?? realm.users.find((u) => u.email && u.email.toLowerCase() === login.toLowerCase());

  // Consent is skipped for first-party clients: the grant is completed with everything requested,
  // as Keycloak does for clients with consentRequired=false.
  async function completeGrant(ctx, grant) {
    const { oidc } = ctx;
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
    for (const [ind, rs] of Object.entries(oidc.resourceServers)) {
      grant.addResourceScope(ind, rs.scope);
    }
    await grant.save();
    return grant;
  }

  const configuration = {
    clients: [{
      client_id: client.clientId,
      client_name: client.name,
      application_type: 'web',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: client.redirectUris,
      post_logout_redirect_uris: client.postLogoutRedirectUris,
    }],
    jwks: keyStore.jwks,
    cookies: { keys: keyStore.cookieKeys },
    scopes: ['openid', 'offline_access', 'profile', 'email'],
    // Authorization Code only: no implicit or hybrid response types.
    responseTypes: ['code'],
    claims: {
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      email: ['email', 'email_verified'],
    },
    routes: ROUTES,
    // PKCE for every authorization request; oidc-provider 9 only implements S256.
    pkce: { required: () => true },
    clientBasedCORS: (_ctx, origin, c) => c.clientId === client.clientId && client.webOrigins.includes(origin),
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.type = 'html';
          ctx.body = logoutPage({
            form,
            host: ctx.host,
            autoSubmit: Boolean(ctx.oidc.params.id_token_hint),
          });
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = loggedOutPage({ clientName: ctx.oidc.client?.clientName });
        },
      },
      resourceIndicators: {
        enabled: true,
        // Clients (keycloak-js included) never send `resource`; default every request to the API.
        defaultResource: async () => indicator,
        useGrantedResource: async () => true,
        async getResourceServerInfo(_ctx, requested) {
          if (requested !== indicator) throw new errors.InvalidTarget();
          return {
            scope: '',
            audience,
            accessTokenTTL: accessTokenTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    formats: {
      customizers: {
        async jwt(_ctx, token, jwt) {
          const user = realm.usersById.get(token.accountId);
          if (!user) return;
          Object.assign(jwt.payload, userAccessClaims(user, token.clientId));
          if (token.sid) jwt.payload.sid = token.sid;
        },
      },
    },
    // Keycloak hands refresh tokens to public clients without offline_access.
    issueRefreshToken: async (_ctx, c) => c.grantTypeAllowed('refresh_token'),
    async loadExistingGrant(ctx) {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
      if (!firstParty.has(oidc.client.clientId)) return grant;
      if (!grant || grant.accountId !== oidc.account.accountId) {
        grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.account.accountId });
      }
      return completeGrant(ctx, grant);
    },
    async findAccount(_ctx, sub) {
      const user = realm.usersById.get(sub);
      if (!user) return undefined;
      return { accountId: user.id, claims: async () => userOidcClaims(user) };
    },
    interactions: { url: async (_ctx, interaction) => `${mountPath}/interaction/${interaction.uid}` },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = errorPage(out);
    },
    ttl: {
      AccessToken: accessTokenTtl,
      IdToken: accessTokenTtl,
      AuthorizationCode: 60,
      Interaction: realm.ssoSessionIdleTimeout,
      RefreshToken: realm.ssoSessionIdleTimeout,
      Session: realm.ssoSessionMaxLifespan,
      Grant: realm.ssoSessionMaxLifespan,
    },
  };

  const provider = new Provider(issuer, configuration);
  // Redirects come from a TLS-terminating proxy in production (X-Forwarded-Proto/Host).
  provider.proxy = true;

  // Keycloak-style wildcard redirect URIs ("http://localhost:8000/*").
  const allowed = (patterns, value) => patterns.some((p) => redirectUriMatches(p, value));
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    return allowed(this.redirectUris, value);
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = function postLogoutAllowed(value) {
    return allowed(this.postLogoutRedirectUris ?? [], value);
  };
  // Keycloak puts the session id (`sid`) in every ID and access token; services use it to end
  // all connections of a login session. oidc-provider only does so for clients with
  // front/back-channel logout, so opt in for all.
  provider.Client.prototype.includeSid = () => true;

  // Login interaction: a plain username/password form, checked against the realm's demo users.
  provider.use(async (ctx, next) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/login|\/abort)?$/.exec(ctx.path);
    if (!m) return next();
    ctx.set('cache-control', 'no-store');
    const [, uid, action] = m;
    try {
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
      const loginAction = `${mountPath}/interaction/${uid}/login`;

      if (action === '/abort') {
        return provider.interactionFinished(ctx.req, ctx.res, {
          error: 'access_denied', error_description: 'End-User aborted interaction',
        }, { mergeWithLastSubmission: false });
      }

      if (details.prompt.name === 'consent') {
        // Reached only when a client asks for prompt=consent; first-party consent is implicit.
        const c = await provider.Client.find(details.params.client_id);
        if (!c || !firstParty.has(c.clientId)) {
          return provider.interactionFinished(ctx.req, ctx.res, {
            error: 'consent_required', error_description: 'third-party consent is not supported',
          }, { mergeWithLastSubmission: true });
        }
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: details.session.accountId, clientId: c.clientId });
        const d = details.prompt.details;
        if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
        if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
        for (const [ind, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
          grant.addResourceScope(ind, scopes.join(' '));
        }
        const grantId = await grant.save();
        return provider.interactionFinished(ctx.req, ctx.res, {
          consent: details.grantId ? {} : { grantId },
        }, { mergeWithLastSubmission: true });
      }

      if (details.prompt.name !== 'login') throw new errors.InvalidRequest(`unsupported prompt ${details.prompt.name}`);

      if (ctx.method === 'GET' && !action) {
        ctx.type = 'html';
        ctx.body = loginPage({
          action: loginAction,
          realmName: realm.name,
          clientName: client.name,
          username: details.params.login_hint ?? '',
        });
        return undefined;
      }
      if (ctx.method === 'POST' && action === '/login') {
        const form = await readForm(ctx.req);
        const username = (form.get('username') ?? '').trim();
        const user = findUser(username);
        // Always compare, even for unknown users, so timing does not reveal which usernames exist.
        const ok = sameSecret(form.get('password') ?? '', user?.password ?? '\u0000no-user') && Boolean(user);
        if (!ok) {
          ctx.status = 401;
          ctx.type = 'html';
          ctx.body = loginPage({
            action: loginAction,
            realmName: realm.name,
            clientName: client.name,
            username,
            error: 'Invalid username or password.',
          });
          return undefined;
        }
        return provider.interactionFinished(ctx.req, ctx.res, {
          login: { accountId: user.id, amr: ['pwd'] },
        }, { mergeWithLastSubmission: false });
      }
      ctx.status = 405;
      return undefined;
    } catch (err) {
      if (err instanceof errors.OIDCProviderError) {
        ctx.status = err.status;
        ctx.type = 'html';
        ctx.body = errorPage({ error: err.message, error_description: err.error_description });
        return undefined;
      }
      throw err;
    }
  });

  // A refused grant is the user's sign-in ending (a reused refresh token revokes the whole
  // grant): say why, as Keycloak logs REFRESH_TOKEN_ERROR events.
  provider.on('grant.error', (ctx, err) => {
    const grantType = ctx.oidc?.params?.grant_type;
    console.warn(JSON.stringify({ level: 'WARN', message: 'grant refused', grant_type: grantType, error: err.error, detail: err.error_detail ?? err.message }));
  });
  return provider;
}
