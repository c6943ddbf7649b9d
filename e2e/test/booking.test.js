// End to end: real browsers (headless Chromium) against the real platform started by ./run.sh:
// two users on one departure, live holds, payment, my tickets, hold expiry, and a gateway and a
// NATS crash in the middle of the session.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  ARTIFACTS, HOLD_TTL_SECS, Platform, ensureArtifacts, launchBrowser, openDeparture, pickDeparture, seat,
  seatShows, seatStates, signedInPage, getJson, API,
} from './platform.js';

let platform;
let browser;
let dep;
let alice;
let bob;
const free = [];

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true, timeout: 15_000 });

/** Next free 2nd-class seat (per the server) not used by an earlier step. */
async function nextFreeSeat() {
  const states = await seatStates(dep.id);
  const id = Object.keys(states).sort().find((s) => s.startsWith('2-') && states[s] === 'free' && !free.includes(s));
  assert.ok(id, 'a free seat');
  free.push(id);
  return id;
}

async function toastText(page, kind, timeoutMs = 5_000) {
  const el = await page.waitForSelector(`.toast[data-kind="${kind}"]`, { timeout: timeoutMs });
  return el.textContent();
}

async function dismissToasts(page) {
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
}

before(async () => {
  ensureArtifacts();
  platform = new Platform();
  await platform.start();
  browser = await launchBrowser();
  dep = await pickDeparture();
  alice = await signedInPage(browser, 'alice');
  bob = await signedInPage(browser, 'bob', { viewport: { width: 390, height: 844 } }); // phone-sized
});

after(async () => {
  await browser?.close().catch(() => {});
  await platform?.stop();
});

test('search shows departures with live availability and price', async () => {
  const { page } = alice;
  await page.selectOption('#from', 'AH');
  await page.selectOption('#to', 'MH');
  await page.fill('#date', dep.date);
  await page.click('#search-btn');
  await page.waitForSelector(`button[data-dep="${dep.id}"]`, { timeout: 10_000 });
  const text = await page.textContent('#results');
  assert.match(text, /seats free/);
  assert.match(text, /from .*€|from €/);
  await shot(page, 'search-results');
  await page.click(`button[data-dep="${dep.id}"]`);
  await page.waitForSelector('#seatmap button.seat', { timeout: 15_000 });
  await openDeparture(bob.page, dep);
});

beforeEach(async () => {
  for (const who of [alice, bob]) if (who) await dismissToasts(who.page);
});

/** Until the gateway answers for the seat map again (services reconnected), bounded. */
async function apiReady(timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await seatStates(dep.id);
      await getJson(`${API}/pricing/departure/${dep.id}`);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

test('A holds a seat; B sees it taken within a second and cannot hold it; A pays; both see it sold; ticket appears live', async () => {
  const s = await nextFreeSeat();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'mine');
  const seenMs = await seatShows(bob.page, s, 'held', 1_000);
  assert.ok(seenMs <= 1_000, `B saw the hold after ${seenMs} ms`);
  assert.equal(await bob.page.getAttribute(seat(s), 'aria-disabled'), 'true');
  // B tries anyway (aria-disabled, so forced like a real tap): refused with a message.
  await bob.page.click(seat(s), { force: true });
  assert.match(await toastText(bob.page, 'info'), /held by someone else/);
  assert.equal(await bob.page.getAttribute(seat(s), 'data-state'), 'held');
  // The countdown and price of A's selection.
  assert.match(await alice.page.textContent('#countdown'), /Held for \d+:\d\d/);
  assert.match(await alice.page.textContent('#total'), /€/);
  await shot(alice.page, 'seatmap-alice-holding');
  await shot(bob.page, 'seatmap-bob-phone-sees-held');

  await alice.page.fill('#card', '4242 4242 4242 4242');
  await alice.page.click('#pay');
  assert.match(await toastText(alice.page, 'success', 15_000), /Paid/);
  await seatShows(alice.page, s, 'sold', 5_000);
  await seatShows(bob.page, s, 'sold', 5_000);
  // "My tickets" updates without reload.
  await alice.page.waitForSelector(`#orders li[data-status="placed"] >> text=${s}`, { timeout: 5_000 });
  assert.equal((await seatStates(dep.id))[s], 'sold');
  await shot(alice.page, 'seatmap-alice-after-purchase');
});

test('a declined card keeps the hold and says so', async () => {
  const s = await nextFreeSeat();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'mine');
  await alice.page.fill('#card', '4000 0000 0000 0002');
  await alice.page.click('#pay');
  assert.match(await toastText(alice.page, 'error', 15_000), /declined/i);
  assert.equal(await alice.page.getAttribute(seat(s), 'data-state'), 'mine');
  await dismissToasts(alice.page);
  // Release it again (click the own seat).
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'free');
  await seatShows(bob.page, s, 'free', 2_000);
});

test('a hold that expires frees the seat live for B, who can then hold it', async () => {
  const s = await nextFreeSeat();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'mine');
  await seatShows(bob.page, s, 'held', 1_000);
  await seatShows(bob.page, s, 'free', (HOLD_TTL_SECS + 15) * 1000);
  assert.match(await toastText(alice.page, 'error', 5_000), /expired/);
  await seatShows(alice.page, s, 'free', 2_000);
  await bob.page.click(seat(s));
  await seatShows(bob.page, s, 'mine');
  await seatShows(alice.page, s, 'held', 1_000);
  await dismissToasts(alice.page);
});

for (const name of ['gateway', 'nats']) {
  test(`a ${name} crash: the page says so, reconnects and shows current state, live again`, async () => {
    const s1 = await nextFreeSeat();
    const lostBefore = await alice.page.$eval('#conn', (el) => Number(el.dataset.lost ?? 0));
    await platform.crash(name);
    // The banner reports the lost connection (for NATS only if the gateway drops clients). The
    // restart may already be over, so the test looks at the banner's loss count, not its state.
    if (name === 'gateway') {
      await alice.page.waitForFunction(
        (before) => Number(document.getElementById('conn').dataset.lost ?? 0) > before,
        lostBefore,
        { timeout: 10_000 },
      );
      await shot(alice.page, 'connection-lost');
    }
    await alice.page.waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
    await bob.page.waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
    await apiReady();
    // Live again: B holds a seat, A sees it at once.
    await bob.page.click(seat(s1));
    try {
      await seatShows(bob.page, s1, 'mine', 10_000);
    } catch (e) {
      throw new Error(`B could not hold after the ${name} restart: ${await bob.page.textContent('#toasts')}`);
    }
    await seatShows(alice.page, s1, 'held', 2_000);
    // Both pages agree with the server for every seat.
    const states = await seatStates(dep.id);
    for (const { page, who } of [{ page: alice.page, who: 'alice' }, { page: bob.page, who: 'bob' }]) {
      const shown = await page.$$eval('#seatmap button.seat', (bs) => Object.fromEntries(bs.map((b) => [b.dataset.seat, b.dataset.state])));
      for (const [id, st] of Object.entries(states)) {
        const expected = st === 'held' && shown[id] === 'mine' ? 'mine' : st;
        assert.equal(shown[id], expected, `${who}: seat ${id} after the ${name} restart`);
      }
    }
    await shot(alice.page, `seatmap-after-${name}-restart`);
  });
}

test('sign out ends the session on the gateway too', async () => {
  const { page } = bob;
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in', { timeout: 15_000 });
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
  assert.equal(await page.$('#who'), null);
});
