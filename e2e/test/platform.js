// Starts the real platform with ./run.sh on non-default ports in a throwaway data directory,
// and a headless Chromium; helpers for signing in and reading the seat map.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ARTIFACTS = path.join(ROOT, 'e2e-artifacts');
const BASE = Number(process.env.E2E_PORT_BASE || 27000);
export const PORTS = {
  web: BASE,
  gateway: BASE + 80,
  oidc: BASE + 180,
  nats: BASE + 222,
  redis: BASE + 379,
  pg: BASE + 432,
  admin: BASE + 101,
};
export const HOLD_TTL_SECS = Number(process.env.E2E_HOLD_TTL_SECS || 30);
export const WEB = `http://127.0.0.1:${PORTS.web}`;
export const API = `http://127.0.0.1:${PORTS.gateway}/api`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Platform {
  constructor() {
    this.runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'booking-e2e-'));
    fs.chmodSync(this.runDir, 0o755); // PostgreSQL runs as its own user when we are root
    this.output = [];
  }

  /** Starts ./run.sh and waits (bounded) for its ready line. */
  async start(timeoutMs = Number(process.env.E2E_START_TIMEOUT_MS || 600_000)) {
    const env = {
      ...process.env,
      RUN_DIR: this.runDir,
      NATS_PORT: String(PORTS.nats),
      PG_PORT: String(PORTS.pg),
      REDIS_PORT: String(PORTS.redis),
      OIDC_PORT: String(PORTS.oidc),
      GATEWAY_PORT: String(PORTS.gateway),
      WEB_PORT: String(PORTS.web),
      ADMIN_PORT_BASE: String(PORTS.admin),
      BOOKING_HOLD_TTL_SECS: String(HOLD_TTL_SECS),
      BOOKING_SWEEP_INTERVAL_MS: '200',
    };
    const flags = (process.env.E2E_RUN_FLAGS || '').split(/\s+/).filter(Boolean); // e.g. --no-build
    this.proc = spawn(path.join(ROOT, 'run.sh'), flags, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    const log = fs.createWriteStream(path.join(ARTIFACTS, 'platform.log'));
    const ready = new Promise((resolve, reject) => {
      const onLine = (chunk) => {
        const text = chunk.toString();
        log.write(text);
        this.output.push(text);
        if (this.output.length > 400) this.output.shift();
        if (text.includes('PLATFORM_READY')) resolve();
      };
      this.proc.stdout.on('data', onLine);
      this.proc.stderr.on('data', onLine);
      this.exited.then(({ code }) => reject(new Error(`run.sh exited (${code}) before ready:\n${this.tail()}`)));
    });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`platform not ready after ${timeoutMs} ms:\n${this.tail()}`)), timeoutMs);
    });
    try {
      await Promise.race([ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  tail(n = 40) {
    return this.output.join('').split('\n').slice(-n).join('\n');
  }

  pid(name) {
    return Number(fs.readFileSync(path.join(this.runDir, 'pids', `${name}.pid`), 'utf8').split(' ')[0]);
  }

  /** Kills one process of the platform (run.sh restarts it) and waits until a new one runs. */
  async crash(name, timeoutMs = 30_000) {
    const old = this.pid(name);
    process.kill(old, 'SIGKILL');
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(200);
      try {
        const now = this.pid(name);
        if (now !== old) {
          process.kill(now, 0);
          return now;
        }
      } catch {
        // pid file being rewritten
      }
    }
    throw new Error(`${name} was not restarted within ${timeoutMs} ms:\n${this.tail()}`);
  }

  /** SIGTERM to run.sh (it stops everything), bounded; then removes the data directory. */
  async stop(timeoutMs = 90_000) {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill('SIGTERM');
      const r = await Promise.race([this.exited, sleep(timeoutMs).then(() => null)]);
      if (!r) {
        this.proc.kill('SIGKILL');
        throw new Error(`run.sh did not stop within ${timeoutMs} ms`);
      }
    }
    try {
      fs.rmSync(this.runDir, { recursive: true, force: true });
    } catch {
      // PostgreSQL files owned by another user; leave them in the temp dir
    }
  }
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

export async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

/** Tomorrow (UTC) and the first departure from Hamburg to München on it. */
export async function pickDeparture() {
  const d = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const list = await getJson(`${API}/catalog/departures?from=AH&to=MH&date=${d}`);
  if (!list.length) throw new Error(`no departures AH→MH on ${d}`);
  return { date: d, id: list[0].model.id };
}

export async function seatStates(dep) {
  return getJson(`${API}/seats/departure/${dep}`);
}

/** Opens the app in a new context (phone- or desktop-sized) and signs in through the issuer. */
export async function signedInPage(browser, user, { viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('dialog', (d) => d.accept());
  page.on('pageerror', (e) => console.error(`[${user} page error]`, e.message));
  await page.goto(WEB, { timeout: 20_000 });
  await page.click('#sign-in', { timeout: 10_000 });
  await page.waitForSelector('#username', { timeout: 15_000 });
  await page.fill('#username', user);
  await page.fill('#password', user);
  await page.click('#login');
  await page.waitForSelector('#who', { timeout: 15_000 });
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
  return { context, page };
}

export async function openDeparture(page, dep) {
  const url = new URL(WEB);
  url.searchParams.set('from', 'AH');
  url.searchParams.set('to', 'MH');
  url.searchParams.set('date', dep.date);
  url.searchParams.set('dep', String(dep.id));
  await page.goto(url.toString(), { timeout: 20_000 });
  await page.waitForSelector('#seatmap button.seat', { timeout: 15_000 });
}

export const seat = (id) => `#seatmap button[data-seat="${id}"]`;

/** Waits until the seat shows `state` on the page; returns how long it took (ms). */
export async function seatShows(page, id, state, timeoutMs = 5_000) {
  const t0 = Date.now();
  await page.waitForSelector(`${seat(id)}[data-state="${state}"]`, { timeout: timeoutMs });
  return Date.now() - t0;
}

export function ensureArtifacts() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
}
