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
/** Ports of a platform; each test file uses its own offset so one's leftovers never meet another. */
export function portsAt(base) {
  return {
    web: base,
    gateway: base + 80,
    oidc: base + 180,
    nats: base + 222,
    redis: base + 379,
    pg: base + 432,
    admin: base + 101,
  };
}
export const PORTS = portsAt(BASE);
// Short enough that the expiry test is quick, long enough for a hold → pay step on a busy machine.
export const HOLD_TTL_SECS = Number(process.env.E2E_HOLD_TTL_SECS || 8);
export let WEB = `http://127.0.0.1:${PORTS.web}`;
export let API = `http://127.0.0.1:${PORTS.gateway}/api`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Platform {
  /**
   * @param {{name?: string, offset?: number, env?: Record<string, string>}} opts name: of the log
   *   file in e2e-artifacts; offset: added to E2E_PORT_BASE; env: extra environment for run.sh.
   */
  constructor({ name = 'platform', offset = 0, env = {} } = {}) {
    this.name = name;
    this.ports = portsAt(BASE + offset);
    this.extraEnv = env;
    // The helpers below talk to the platform of this test file (one per process).
    WEB = `http://127.0.0.1:${this.ports.web}`;
    API = `http://127.0.0.1:${this.ports.gateway}/api`;
    this.runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'booking-e2e-'));
    fs.chmodSync(this.runDir, 0o755); // PostgreSQL runs as its own user when we are root
    this.output = [];
  }

  /** Starts ./run.sh and waits (bounded) for its ready line. */
  async start(timeoutMs = Number(process.env.E2E_START_TIMEOUT_MS || 600_000)) {
    const P = this.ports;
    const env = {
      ...process.env,
      RUN_DIR: this.runDir,
      NATS_PORT: String(P.nats),
      PG_PORT: String(P.pg),
      REDIS_PORT: String(P.redis),
      OIDC_PORT: String(P.oidc),
      GATEWAY_PORT: String(P.gateway),
      WEB_PORT: String(P.web),
      ADMIN_PORT_BASE: String(P.admin),
      BOOKING_HOLD_TTL_SECS: String(HOLD_TTL_SECS),
      BOOKING_SWEEP_INTERVAL_MS: '200',
      ...this.extraEnv,
    };
    const flags = (process.env.E2E_RUN_FLAGS || '').split(/\s+/).filter(Boolean); // e.g. --no-build
    this.proc = spawn(path.join(ROOT, 'run.sh'), flags, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    const log = fs.createWriteStream(path.join(ARTIFACTS, `${this.name}.log`));
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
      let timer;
      const r = await Promise.race([this.exited, new Promise((resolve) => { timer = setTimeout(resolve, timeoutMs, null); })]);
      clearTimeout(timer); // a pending timer would keep the test process alive for the full timeout
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
  return signIn(context, user);
}

/** Signs `user` in on a new page of `context`. */
export async function signIn(context, user) {
  // Every message the app shows, kept for assertions and failure reports: window.__toasts.
  await context.addInitScript(() => {
    window.__toasts = [];
    new MutationObserver((records) => {
      for (const r of records) {
        for (const n of r.addedNodes) {
          if (n.nodeType === 1 && n.classList.contains('toast')) {
            window.__toasts.push({ kind: n.dataset.kind, text: n.textContent.replace(/×$/, ''), at: Date.now() });
          }
        }
      }
    }).observe(document, { childList: true, subtree: true });
  });
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

/** The messages the page has shown so far ({kind, text, at}). */
export async function toastLog(page) {
  return page.evaluate(() => window.__toasts || []);
}

/** Until the gateway answers for the seat map again (services reconnected), bounded. */
export async function apiReady(dep, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await seatStates(dep);
      await getJson(`${API}/pricing/departure/${dep}`);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(500);
    }
  }
}

/** The seat states a page shows: {seatId: state}. */
export async function shownStates(page) {
  return page.$$eval('#seatmap button.seat', (bs) => Object.fromEntries(bs.map((b) => [b.dataset.seat, b.dataset.state])));
}

/**
 * Until the page shows every seat as the server has it (the page's own holds as 'mine'), bounded.
 * Polls both sides, so a transition landing between the two reads (a hold expiring) is not a
 * mismatch; a page that stays wrong fails with the differing seats.
 */
export async function pageAgreesWithServer(page, dep, mine = [], timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const states = await seatStates(dep);
    const shown = await shownStates(page);
    const diff = Object.entries(states)
      .map(([id, st]) => [id, st === 'held' && mine.includes(id) ? 'mine' : st, shown[id]])
      .filter(([, want, got]) => want !== got);
    if (!diff.length) return;
    if (Date.now() > deadline) {
      throw new Error(`page differs from the server: ${diff.slice(0, 10).map(([id, want, got]) => `${id} shown ${got}, is ${want}`).join('; ')}`);
    }
    await sleep(250);
  }
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

/** A second tab of the same browser profile (context): shares the sign-in (IndexedDB). */
export async function anotherTab(context) {
  const page = await context.newPage();
  page.on('dialog', (d) => d.accept());
  return page;
}

const AXE = fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '../node_modules/axe-core/axe.min.js'), 'utf8');

/** axe-core's serious and critical violations on the page as shown now (WCAG 2.x A/AA). */
export async function axeViolations(page) {
  // Evaluated through the DevTools protocol: the app's CSP allows no inline script.
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } }));
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** Screenshots of the page at desktop and phone size: `<name>-desktop.png`, `<name>-phone.png`. */
export async function shotsBothSizes(page, name) {
  const was = page.viewportSize();
  for (const [kind, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(size);
    await sleep(150); // layout and the basket bar's observer
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}-${kind}.png`), fullPage: false, timeout: 15_000 });
  }
  await page.setViewportSize(was);
}

/** The access token the app stored for its signed-in user (shared by the tabs: userstore.js). */
export async function accessToken(page) {
  return page.evaluate(() => new Promise((resolve, reject) => {
    const open = indexedDB.open('booking-session');
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      if (!db.objectStoreNames.contains('oidc')) return resolve(null);
      const all = db.transaction('oidc').objectStore('oidc').openCursor();
      all.onerror = () => reject(all.error);
      all.onsuccess = () => {
        const c = all.result;
        if (!c) return resolve(null);
        if (String(c.key).startsWith('user:')) return resolve(JSON.parse(c.value).access_token);
        c.continue();
      };
    };
  }));
}
