// The realm file is the single source of truth; check what the issuer derives from it.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  loadRealm, resolvePlaceholders, redirectUriMatches,
} from '../src/realm.js';

test('derives client, audience, users and effective roles from the realm file', () => {
  const realm = loadRealm(undefined, {});
  assert.equal(realm.name, 'booking');
  assert.equal(realm.client.clientId, 'booking-web');
  assert.equal(realm.audience, 'booking-api');
  assert.deepEqual(realm.client.redirectUris, ['http://localhost:8000/*', 'http://127.0.0.1:8000/*']);
  assert.deepEqual(realm.client.webOrigins, ['http://localhost:8000', 'http://127.0.0.1:8000']);
  const alice = realm.usersByUsername.get('alice');
  assert.equal(alice.password, 'alice');
  assert.equal(alice.name, 'Alice Archer');
  assert.ok(alice.realmRoles.includes('customer'));
  assert.ok(alice.realmRoles.includes('offline_access'), 'composite default role expanded');
  assert.ok(!alice.realmRoles.includes('operator'));
  const olivia = realm.usersByUsername.get('olivia');
  assert.ok(olivia.realmRoles.includes('operator') && olivia.realmRoles.includes('customer'));
  assert.deepEqual(olivia.clientRoles, { 'booking-api': ['schedule-admin'] });
  assert.deepEqual([...realm.usersByUsername.keys()].sort(), ['alice', 'bob', 'olivia']);
});

test('production host placeholder is substituted from the environment like Keycloak does', () => {
  const realm = loadRealm(undefined, { BOOKING_PUBLIC_HOST: 'trains.example.org' });
  assert.ok(realm.client.redirectUris.includes('https://trains.example.org/*'));
  assert.ok(realm.client.webOrigins.includes('https://trains.example.org'));
  assert.ok(realm.client.postLogoutRedirectUris.includes('https://trains.example.org/*'));
  assert.equal(resolvePlaceholders('${X:dflt}/a', {}), 'dflt/a');
  assert.equal(resolvePlaceholders('${X}/a', {}), undefined);
});

test('wildcard redirect matching stays within the registered origin', () => {
  const p = 'http://localhost:8000/*';
  assert.ok(redirectUriMatches(p, 'http://localhost:8000/'));
  assert.ok(redirectUriMatches(p, 'http://localhost:8000/a/b?c=d'));
  assert.ok(!redirectUriMatches(p, 'http://localhost:8000/a#frag'));
  assert.ok(!redirectUriMatches(p, 'http://localhost:80001/'));
  assert.ok(!redirectUriMatches(p, 'http://localhost:8000@evil.example/'));
  assert.ok(!redirectUriMatches(p, 'https://localhost:8000/'));
  assert.ok(redirectUriMatches('http://x/cb', 'http://x/cb'));
  assert.ok(!redirectUriMatches('http://x/cb', 'http://x/cb2'));
});
