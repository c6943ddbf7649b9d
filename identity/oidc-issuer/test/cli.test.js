// The CLI contract: READY line on stdout, flags, key persistence in --data-dir.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../bin/oidc-issuer.js', import.meta.url));

function launch(args) {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const ready = new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      const m = /^OIDC_ISSUER_READY (\S+)$/.exec(line);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
  });
  const stop = () => new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    return child.kill('SIGTERM');
  });
  return { child, ready, stop };
}

test('prints the READY line with the issuer and serves discovery there', async () => {
  const proc = launch(['--port', '0', '--host', '127.0.0.1', '--access-token-ttl', '7']);
  try {
    const issuer = await proc.ready;
    assert.match(issuer, /^http:\/\/127\.0\.0\.1:\d+\/realms\/booking$/);
    const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    assert.equal(meta.issuer, issuer);
  } finally {
    assert.equal(await proc.stop(), 0);
  }
});

test('--issuer overrides the public issuer (proxy deployments)', async () => {
  const proc = launch(['--port', '0', '--issuer', 'https://booking.example.com/realms/booking']);
  try {
    const issuer = await proc.ready;
    assert.equal(issuer, 'https://booking.example.com/realms/booking');
  } finally {
    await proc.stop();
  }
});

test('--data-dir keeps the signing key across restarts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-issuer-'));
  try {
    const kidOf = async () => {
      const proc = launch(['--port', '0', '--data-dir', dir]);
      try {
        const issuer = await proc.ready;
        const jwks = await (await fetch(`${issuer}/protocol/openid-connect/certs`)).json();
        return jwks.keys[0].kid;
      } finally {
        await proc.stop();
      }
    };
    const first = await kidOf();
    assert.equal(await kidOf(), first);
    const saved = JSON.parse(readFileSync(join(dir, 'issuer-keys.json'), 'utf8'));
    assert.equal(saved.keys[0].kid, first);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('invalid flags exit with status 2 and usage', async () => {
  const proc = launch(['--port', 'abc']);
  await assert.rejects(proc.ready, /exited 2: .*--port must be an integer/s);
});

test('behind a proxy, endpoints use the forwarded public origin and the issuer path', async () => {
  const { startIssuer } = await import('../src/server.js');
  const running = await startIssuer({ port: 0, issuer: 'https://booking.example.com/realms/booking', env: {} });
  try {
    const res = await fetch(`http://127.0.0.1:${running.port}/realms/booking/.well-known/openid-configuration`, {
      headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'booking.example.com' },
    });
    const meta = await res.json();
    assert.equal(meta.issuer, 'https://booking.example.com/realms/booking');
    assert.equal(meta.jwks_uri, 'https://booking.example.com/realms/booking/protocol/openid-connect/certs');
  } finally {
    await running.close();
  }
});
