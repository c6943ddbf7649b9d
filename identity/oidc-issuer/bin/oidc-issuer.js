#!/usr/bin/env node
// Local OpenID Provider for dev and tests, configured from identity/keycloak/realm-booking.json.
import { parseArgs } from 'node:util';
import { startIssuer } from '../src/server.js';

const USAGE = `usage: oidc-issuer [options]
  --port N               listen port, 0 = ephemeral (env OIDC_PORT, default 8180)
  --host ADDR            listen address (env OIDC_HOST, default 127.0.0.1)
  --issuer URL           public issuer URL when behind a proxy (env OIDC_ISSUER,
                         default http://<host>:<port>/realms/<realm>)
  --access-token-ttl S   access token lifetime in seconds (env OIDC_ACCESS_TOKEN_TTL,
                         default: the realm's accessTokenLifespan)
  --realm-file PATH      Keycloak realm export to read (env OIDC_REALM_FILE)
  --data-dir DIR         persist signing and cookie keys here (env OIDC_DATA_DIR)
  --test-admin           enable POST <issuer>/__test/{rotate-keys,token} (env OIDC_TEST_ADMIN=1);
                         NEVER in a shared or production deployment
On success prints one line on stdout: OIDC_ISSUER_READY <issuer-url>`;

function fail(msg) {
  process.stderr.write(`oidc-issuer: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      issuer: { type: 'string' },
      'access-token-ttl': { type: 'string' },
      'realm-file': { type: 'string' },
      'data-dir': { type: 'string' },
      'test-admin': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const env = process.env;
const int = (name, raw, min) => {
  if (raw === undefined) return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) < min) fail(`${name} must be an integer >= ${min}`);
  return Number(raw);
};
const port = int('--port', values.port ?? env.OIDC_PORT, 0) ?? 8180;
if (port > 65535) fail('--port must be <= 65535');
const issuer = values.issuer ?? env.OIDC_ISSUER;
if (issuer) {
  try {
    new URL(issuer); // eslint-disable-line no-new
  } catch {
    fail('--issuer must be an absolute URL');
  }
}

try {
  const running = await startIssuer({
    port,
    host: values.host ?? env.OIDC_HOST ?? '127.0.0.1',
    issuer,
    accessTokenTtl: int('--access-token-ttl', values['access-token-ttl'] ?? env.OIDC_ACCESS_TOKEN_TTL, 1),
    realmFile: values['realm-file'] ?? env.OIDC_REALM_FILE,
    dataDir: values['data-dir'] ?? env.OIDC_DATA_DIR,
    testAdmin: Boolean(values['test-admin']) || env.OIDC_TEST_ADMIN === '1',
  });
  if (running.realm.client.redirectUris.length === 0) process.stderr.write('oidc-issuer: warning: no redirect URIs\n');
  process.stdout.write(`OIDC_ISSUER_READY ${running.issuer}\n`);
  const stop = () => running.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} catch (err) {
  process.stderr.write(`oidc-issuer: ${err.stack ?? err}\n`);
  process.exit(1);
}
