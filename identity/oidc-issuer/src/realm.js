// Reads the Keycloak realm export (identity/keycloak/realm-booking.json) and derives everything the
// local issuer needs from it, so the realm file stays the single source of truth for client id,
// redirect URIs, web origins, audience, roles and demo users.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const DEFAULT_REALM_FILE = fileURLToPath(
  new URL('../../keycloak/realm-booking.json', import.meta.url),
);

// The first-party browser client and the API audience named by the platform contract.
export const WEB_CLIENT_ID = 'booking-web';

const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}/g;

// Keycloak resolves `${VAR}` / `${VAR:default}` from the environment when importing a realm; do the
// same. A value whose placeholder cannot be resolved is dropped (returns undefined) rather than
// registered literally, so an unset production host never becomes a valid redirect target.
export function resolvePlaceholders(value, env = process.env) {
  let unresolved = false;
  const out = value.replace(PLACEHOLDER, (_m, name, dflt) => {
    if (env[name] !== undefined && env[name] !== '') return env[name];
    if (dflt !== undefined) return dflt;
    unresolved = true;
    return '';
  });
  return unresolved ? undefined : out;
}

function resolveList(values, env) {
  return (values ?? []).map((v) => resolvePlaceholders(v, env)).filter((v) => v !== undefined);
}

// Expands composite realm roles (e.g. default-roles-booking -> offline_access, uma_authorization)
// the way Keycloak computes a user's effective realm roles.
function expandRealmRoles(names, roleDefs) {
  const byName = new Map(roleDefs.map((r) => [r.name, r]));
  const seen = new Set();
  const stack = [...names];
  while (stack.length) {
    const name = stack.pop();
    if (seen.has(name)) continue;
    if (!byName.has(name)) throw new Error(`realm user references unknown realm role "${name}"`);
    seen.add(name);
    stack.push(...(byName.get(name).composites?.realm ?? []));
  }
  return [...seen].sort();
}

function audienceOf(client) {
  const mapper = (client.protocolMappers ?? []).find(
    (m) => m.protocolMapper === 'oidc-audience-mapper' && m.config?.['access.token.claim'] === 'true',
  );
  const aud = mapper?.config?.['included.client.audience'] || mapper?.config?.['included.custom.audience'];
  if (!aud) throw new Error(`client "${client.clientId}" has no access-token audience mapper`);
  return aud;
}

export function loadRealm(file = DEFAULT_REALM_FILE, env = process.env) {
  const rep = JSON.parse(readFileSync(file, 'utf8'));
  return realmFromRepresentation(rep, env);
}

export function realmFromRepresentation(rep, env = process.env) {
  const client = (rep.clients ?? []).find((c) => c.clientId === WEB_CLIENT_ID);
  if (!client) throw new Error(`realm has no "${WEB_CLIENT_ID}" client`);
  if (!client.publicClient || !client.standardFlowEnabled) {
    throw new Error(`"${WEB_CLIENT_ID}" must be a public client with the standard flow enabled`);
  }
  if (client.attributes?.['pkce.code.challenge.method'] !== 'S256') {
    throw new Error(`"${WEB_CLIENT_ID}" must require PKCE S256`);
  }

  const redirectUris = resolveList(client.redirectUris, env);
  const postLogout = client.attributes?.['post.logout.redirect.uris'];
  const postLogoutRedirectUris = postLogout === '+' || postLogout === undefined
    ? redirectUris
    : resolveList(postLogout.split('##'), env);
  // Keycloak's "+" web origin means "the origins of the redirect URIs".
  const webOrigins = new Set();
  for (const o of resolveList(client.webOrigins, env)) {
    if (o === '+') redirectUris.forEach((u) => webOrigins.add(new URL(u).origin));
    else webOrigins.add(o);
  }

  const realmRoles = rep.roles?.realm ?? [];
  const clientRoleDefs = rep.roles?.client ?? {};
  const users = (rep.users ?? []).filter((u) => u.enabled !== false).map((u) => {
    const password = (u.credentials ?? []).find((c) => c.type === 'password')?.value;
    const clientRoles = {};
    for (const [cid, roles] of Object.entries(u.clientRoles ?? {})) {
      const known = new Set((clientRoleDefs[cid] ?? []).map((r) => r.name));
      for (const r of roles) {
        if (!known.has(r)) throw new Error(`user "${u.username}" has unknown client role ${cid}/${r}`);
      }
      clientRoles[cid] = [...roles].sort();
    }
    return {
      id: u.id ?? u.username,
      username: u.username,
      password,
      email: u.email,
      emailVerified: Boolean(u.emailVerified),
      givenName: u.firstName,
      familyName: u.lastName,
      name: [u.firstName, u.lastName].filter(Boolean).join(' ') || undefined,
      realmRoles: expandRealmRoles(u.realmRoles ?? [], realmRoles),
      clientRoles,
    };
  });

  return {
    name: rep.realm,
    accessTokenLifespan: rep.accessTokenLifespan ?? 300,
    ssoSessionIdleTimeout: rep.ssoSessionIdleTimeout ?? 1800,
    ssoSessionMaxLifespan: rep.ssoSessionMaxLifespan ?? 36000,
    client: {
      clientId: client.clientId,
      name: client.name ?? client.clientId,
      redirectUris,
      postLogoutRedirectUris,
      webOrigins: [...webOrigins],
    },
    audience: audienceOf(client),
    users,
    usersById: new Map(users.map((u) => [u.id, u])),
    usersByUsername: new Map(users.map((u) => [u.username, u])),
  };
}

// Keycloak-style redirect URI matching: exact, or a trailing "*" wildcard that matches any suffix
// within the same origin. oidc-provider itself only does exact matching.
export function redirectUriMatches(pattern, value) {
  if (!pattern.endsWith('*')) return pattern === value;
  let target;
  try {
    target = new URL(value);
  } catch {
    return false;
  }
  const prefix = pattern.slice(0, -1);
  if (target.origin !== new URL(prefix).origin) return false;
  // Fragments are forbidden in redirect URIs (RFC 6749 3.1.2).
  return value.startsWith(prefix) && !value.includes('#');
}
