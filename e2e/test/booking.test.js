// End to end: real browsers (headless Chromium) against the real platform started by ./run.sh:
// two users on one departure, live holds, payment, my tickets, the phone layout and the keyboard,
// hold expiry, and a gateway and a NATS crash in the middle of the session.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  ARTIFACTS, HOLD_TTL_SECS, Platform, apiReady, ensureArtifacts, launchBrowser, openDeparture, pageAgreesWithServer,
  pickDeparture, seat, seatShows, seatStates, signedInPage, toastLog,
} from './platform.js';

let platform;
let browser;
let dep;
let alice;
let bob;
const free = [];

const shot = (page, name, fullPage = true) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage, timeout: 15_000 });

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
  platform = new Platform({ name: 'platform-booking' });
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
  await seatShows(bob.page, s, 'sold', 5_000);
  // The confirmation, then "My tickets" (its own page) with the order, live.
  await alice.page.waitForSelector(`#ticket-list li[data-seat="${s}"]`, { timeout: 10_000 });
  await alice.page.click('#nav-tickets');
  await alice.page.waitForSelector(`#orders li[data-status="placed"] >> text=${s}`, { timeout: 5_000 });
  assert.equal((await seatStates(dep.id))[s], 'sold');
  await openDeparture(alice.page, dep);
  await seatShows(alice.page, s, 'sold', 5_000);
  await shot(alice.page, 'seatmap-alice-after-purchase');
});

test('a declined card keeps the hold and says so', async () => {
  const s = await nextFreeSeat();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'mine');
  await alice.page.fill('#card', '4000 0000 0000 0002');
  await alice.page.click('#pay');
  await alice.page.waitForFunction(() => /declined/i.test(document.querySelector('#card-error')?.textContent), null, { timeout: 15_000 });
  assert.equal(await alice.page.getAttribute(seat(s), 'data-state'), 'mine');
  await dismissToasts(alice.page);
  // Release it again (click the own seat): freed for both, and not reported as an expiry.
  const since = Date.now();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'free');
  await seatShows(bob.page, s, 'free', 2_000);
  assert.deepEqual((await toastLog(alice.page)).filter((t) => t.at >= since), [], 'no message for a release');
});

/** Whether the element is inside the viewport and not covered by anything (so it can be tapped). */
async function inView(page, selector) {
  return page.$eval(selector, (el) => {
    const r = el.getBoundingClientRect();
    const inside = r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth && r.height > 0;
    const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return { inside, uncovered: !!top && (top === el || el.contains(top)), rect: [r.top, r.bottom], vh: window.innerHeight };
  });
}

test('on a phone the selection, price and Pay stay in view next to the seat map, and focused seats clear of them', async () => {
  const { page } = bob;
  const s = await nextFreeSeat();
  // The seat map is long: scroll it to the seat as a person would, tap it.
  await page.click(seat(s));
  await seatShows(page, s, 'mine');
  await page.waitForSelector('#pay', { timeout: 5_000 });
  for (const sel of ['#pay', '#total', '#countdown', seat(s)]) {
    const v = await inView(page, sel);
    assert.ok(v.inside && v.uncovered, `${sel} on the phone: ${JSON.stringify(v)}`);
  }
  // Moving the keyboard focus onto a seat that is behind the bar brings it out from under it.
  const hidden = await page.evaluate(() => {
    const bar = document.querySelector('#departure .basket').getBoundingClientRect();
    const seats = [...document.querySelectorAll('#seatmap button.seat')];
    const i = seats.findIndex((b) => {
      const r = b.getBoundingClientRect();
      return r.top > bar.top && r.bottom < window.innerHeight && b.dataset.seat.match(/[A-Z]$/)[0] !== 'A';
    });
    if (i > 0) seats[i - 1].focus();
    return i > 0 ? seats[i].dataset.seat : null;
  });
  assert.ok(hidden, 'a seat behind the bar');
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.seat), hidden);
  const f = await inView(page, seat(hidden));
  assert.ok(f.inside && f.uncovered, `focused seat ${hidden} clear of the bar: ${JSON.stringify(f)}`);
  // Further down the map, the bar is still there.
  await page.$eval('#seatmap section.car:last-of-type', (el) => el.scrollIntoView({ block: 'end' }));
  const v = await inView(page, '#pay');
  assert.ok(v.inside && v.uncovered, `#pay after scrolling the map: ${JSON.stringify(v)}`);
  await shot(page, 'seatmap-bob-phone-pay-bar', false);
  await page.fill('#card', '4242 4242 4242 4242');
  await page.click('#pay');
  assert.match(await toastText(page, 'success', 15_000), /Paid/);
  await seatShows(alice.page, s, 'sold', 5_000);
  await page.waitForSelector(`#ticket-list li[data-seat="${s}"]`, { timeout: 10_000 });
  await openDeparture(page, dep);
  await seatShows(page, s, 'sold', 5_000);
});

test('keyboard: seats are reached with the arrow keys, show focus, and Enter / Space hold and release', async () => {
  const { page } = alice;
  const since = Date.now();
  const s = await nextFreeSeat();
  // Focus the seat above (or below) it, then an arrow key: the focus lands on the seat.
  const key = await page.$eval(seat(s), (el) => {
    const [, car, row, letter] = el.dataset.seat.match(/^(\d+)-(\d+)([A-Z])$/);
    const up = Number(row) > 1;
    const next = `${car}-${String(Number(row) + (up ? -1 : 1)).padStart(2, '0')}${letter}`;
    document.querySelector(`#seatmap button[data-seat="${next}"]`).focus();
    return up ? 'ArrowDown' : 'ArrowUp';
  });
  await page.keyboard.press(key);
  const focus = await page.evaluate(() => {
    const el = document.activeElement;
    const st = getComputedStyle(el);
    return { seat: el.dataset.seat, visible: el.matches(':focus-visible'), style: st.outlineStyle, width: parseFloat(st.outlineWidth) };
  });
  assert.equal(focus.seat, s);
  assert.ok(focus.visible && focus.style !== 'none' && focus.width >= 2, `visible focus ring: ${JSON.stringify(focus)}`);
  await shot(page, 'seatmap-keyboard-focus', false);
  await page.keyboard.press('Enter');
  await seatShows(page, s, 'mine');
  await seatShows(bob.page, s, 'held', 1_000);
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.seat), s, 'focus stays on the seat');
  await page.keyboard.press('Space');
  await seatShows(page, s, 'free');
  await seatShows(bob.page, s, 'free', 2_000);
  // A seat someone else holds is focusable too, and says why it cannot be taken.
  await bob.page.click(seat(s));
  await seatShows(page, s, 'held', 2_000);
  await page.focus(seat(s));
  await page.keyboard.press('Enter');
  assert.match(await toastText(page, 'info'), /held by someone else/);
  assert.equal(await page.getAttribute(seat(s), 'data-state'), 'held');
  await bob.page.click(seat(s));
  await seatShows(bob.page, s, 'free');
  const errors = (await toastLog(page)).filter((t) => t.kind === 'error' && t.at >= since);
  assert.deepEqual(errors, [], 'no error messages');
});

test('a hold that expires frees the seat live for B, who can then hold it', async () => {
  const s = await nextFreeSeat();
  const clicked = Date.now();
  await alice.page.click(seat(s));
  await seatShows(alice.page, s, 'mine');
  await seatShows(bob.page, s, 'held', 1_000);
  await seatShows(bob.page, s, 'free', (HOLD_TTL_SECS + 15) * 1000);
  const heldMs = Date.now() - clicked; // the hold was made after the click, so it lasted less
  assert.ok(heldMs >= HOLD_TTL_SECS * 1000, `the hold ended ${heldMs} ms after the click, before its ${HOLD_TTL_SECS} s`);
  assert.match(await toastText(alice.page, 'error', 5_000), /expired/);
  await seatShows(alice.page, s, 'free', 2_000);
  await bob.page.click(seat(s));
  await seatShows(bob.page, s, 'mine');
  await seatShows(alice.page, s, 'held', 1_000);
  await dismissToasts(alice.page);
  await bob.page.click(seat(s));
  await seatShows(bob.page, s, 'free');
  await seatShows(alice.page, s, 'free', 2_000);
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
    await apiReady(dep.id);
    // Live again: B holds a seat, A sees it at once.
    await bob.page.click(seat(s1));
    try {
      await seatShows(bob.page, s1, 'mine', 10_000);
    } catch (e) {
      throw new Error(`B could not hold after the ${name} restart: ${await bob.page.textContent('#toasts')}`);
    }
    await seatShows(alice.page, s1, 'held', 2_000);
    // Both pages agree with the server for every seat.
    await pageAgreesWithServer(alice.page, dep.id);
    await pageAgreesWithServer(bob.page, dep.id, [s1]);
    await shot(alice.page, `seatmap-after-${name}-restart`);
    // Leave no hold behind to expire in the middle of a later test.
    await bob.page.click(seat(s1));
    await seatShows(bob.page, s1, 'free');
    await seatShows(alice.page, s1, 'free', 2_000);
  });
}

test('sign out ends the session on the gateway too', async () => {
  const { page } = bob;
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in', { timeout: 15_000 });
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
  assert.equal(await page.$('#who'), null);
});
