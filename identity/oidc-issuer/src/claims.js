// The custom access-token claims, shaped like Keycloak's so the Rust validator and the services see
// the same token from Keycloak and from this dev issuer.
export function userAccessClaims(user, clientId) {
  const resourceAccess = {};
  for (const [cid, roles] of Object.entries(user.clientRoles)) {
    if (roles.length) resourceAccess[cid] = { roles: [...roles] };
  }
  return {
    typ: 'Bearer',
    azp: clientId,
    preferred_username: user.username,
    name: user.name,
    given_name: user.givenName,
    family_name: user.familyName,
    email: user.email,
    email_verified: user.emailVerified,
    realm_access: { roles: [...user.realmRoles] },
    resource_access: resourceAccess,
  };
}

// Claims served for ID tokens and userinfo, filtered by scope by oidc-provider.
export function userOidcClaims(user) {
  return {
    sub: user.id,
    name: user.name,
    given_name: user.givenName,
    family_name: user.familyName,
    preferred_username: user.username,
    email: user.email,
    email_verified: user.emailVerified,
  };
}
