// One departure: the seat map (cars and seats, live), my holds with a countdown, the live price
// of the selection, and payment.

import { h, render } from './dom.js';
import { money, time, date, countdown, className } from './format.js';
import { errorCode, errorMessage } from './errors.js';
import { showError, toast } from './ui.js';

const STATE_LABEL = { free: 'free', mine: 'held by you', held: 'held by someone else', sold: 'sold' };

export class DepartureView {
  constructor(session, { onClose }) {
    this.session = session;
    this.onClose = onClose;
    this.el = document.getElementById('departure');
    this.id = null;
    this.holds = []; // [{holdId, seats, expiresAt}]
    this.busy = new Set(); // seats with a request in flight
    this.releasing = new Set(); // hold IDs being released by me (their seats freeing is no loss)
    this.buttons = new Map(); // seat id -> button
    this.listeners = [];
    this.timer = null;
    this.paying = false;
  }

  #storeKey() {
    return `holds:${this.session.sub}:${this.id}`;
  }

  #saveHolds() {
    if (this.session.sub) sessionStorage.setItem(this.#storeKey(), JSON.stringify(this.holds));
  }

  #listen(res, events, fn) {
    res.on(events, fn);
    this.listeners.push(() => res.off(events, fn));
  }

  close() {
    this.barObserver?.disconnect();
    document.documentElement.style.removeProperty('--basket-h');
    for (const off of this.listeners) off();
    this.listeners = [];
    clearInterval(this.timer);
    this.id = null;
    this.el.hidden = true;
    render(this.el);
  }

  async open(id) {
    this.close();
    this.id = id;
    this.el.hidden = false;
    render(this.el, h('h2', { id: 'departure-h' }, 'Seat map'), h('p', { class: 'muted' }, 'Loading seat map…'));
    try {
      const [dep, layout, map] = await Promise.all([
        this.session.get(`catalog.departure.${id}`),
        this.session.get(`seats.departure.${id}.layout`),
        this.session.get(`seats.departure.${id}`),
      ]);
      if (this.id !== id) return;
      this.dep = dep;
      this.layout = layout;
      this.map = map;
      this.holds = JSON.parse(sessionStorage.getItem(this.#storeKey()) || '[]').filter((x) => x.expiresAt > Date.now());
      this.#listen(map, 'change', (changed) => this.#onSeatsChanged(changed));
      this.#listen(dep.price, 'change', () => this.#drawBasket());
      this.#listen(dep.availability, 'change', () => this.#drawHeader());
      this.#listen(layout, 'change', () => this.#drawAll());
      this.#drawAll();
      this.timer = setInterval(() => this.#tick(), 1000);
      this.el.querySelector('h2')?.focus?.();
    } catch (e) {
      render(this.el, h('h2', { id: 'departure-h' }, 'Seat map'), h('p', { class: 'muted' }, 'This departure could not be loaded.'));
      showError(e);
    }
  }

  /** After a reconnect: the map is current again; drop holds that ended meanwhile. */
  resync() {
    if (!this.map) return;
    this.#onSeatsChanged(null);
  }

  #seatState(seatId) {
    const s = this.map?.[seatId];
    if (s === 'held' && this.holds.some((x) => x.seats.includes(seatId))) return 'mine';
    return s || 'free';
  }

  #onSeatsChanged(changed) {
    // My held seats that are no longer held: the hold expired (or was bought/released elsewhere).
    const lost = [];
    this.holds = this.holds.filter((hold) => {
      const gone = hold.seats.some((s) => this.map[s] !== 'held');
      // The release's event comes before its reply: that is not an expiry.
      if (gone && !this.paying && !this.releasing.has(hold.holdId)) lost.push(hold);
      return !gone || this.paying;
    });
    if (lost.length) {
      const sold = lost.every((x) => x.seats.every((s) => this.map[s] === 'sold'));
      if (!sold) toast(errorMessage({ code: 'booking.holdExpired' }), 'error');
      this.#saveHolds();
    }
    const ids = changed ? Object.keys(changed) : [...this.buttons.keys()];
    for (const seat of ids) this.#drawSeat(seat);
    for (const hold of lost) for (const s of hold.seats) this.#drawSeat(s);
    this.#drawBasket();
    this.#drawHeader();
  }

  #tick() {
    const now = Date.now();
    const expired = this.holds.filter((x) => x.expiresAt <= now);
    if (expired.length && !this.paying) {
      // The server frees them within its sweep interval; the seat map event follows.
      this.holds = this.holds.filter((x) => x.expiresAt > now);
      this.#saveHolds();
      toast(errorMessage({ code: 'booking.holdExpired' }), 'error');
      for (const hold of expired) for (const s of hold.seats) this.#drawSeat(s);
    }
    this.#drawBasket();
  }

  #drawAll() {
    const dep = this.dep;
    const seats = this.layout.seats || [];
    const cars = new Map();
    for (const s of seats) {
      if (!cars.has(s.car)) cars.set(s.car, []);
      cars.get(s.car).push(s);
    }
    this.buttons.clear();
    this.header = h('div', { class: 'dep-header' });
    this.basket = h('aside', { class: 'basket', 'aria-labelledby': 'basket-h' });
    const carEls = [...cars.entries()].sort((a, b) => a[0] - b[0]).map(([car, list]) => this.#car(car, list));
    render(
      this.el,
      h('div', { class: 'panel-head' },
        h('h2', { id: 'departure-h', tabindex: '-1' }, `${dep.train}: ${dep.origin} → ${dep.destination}`),
        h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => this.onClose() }, '← Back to results')),
      this.header,
      h('div', { class: 'legend', 'aria-hidden': 'true' },
        ['free', 'mine', 'held', 'sold'].map((s) => h('span', { class: 'legend-item' }, h('span', { class: `seat-swatch seat-${s}` }), STATE_LABEL[s]))),
      h('div', { class: 'dep-body' }, h('div', { class: 'train', id: 'seatmap', role: 'group', 'aria-label': 'Seat map' }, carEls), this.basket),
    );
    this.#drawHeader();
    this.#drawBasket();
    // On narrow screens the basket is a bar stuck to the bottom (style.css): publish its height.
    this.barObserver?.disconnect();
    this.barObserver = new ResizeObserver(() => {
      const bar = window.matchMedia('(max-width: 820px)').matches ? this.basket.offsetHeight : 0;
      document.documentElement.style.setProperty('--basket-h', `${bar}px`);
    });
    this.barObserver.observe(this.basket);
  }

  #car(car, list) {
    const letters = [...new Set(list.map((s) => s.letter))].sort();
    const rows = [...new Set(list.map((s) => s.row))].sort((a, b) => a - b);
    const byPos = new Map(list.map((s) => [`${s.row}${s.letter}`, s]));
    const aisleAfter = Math.ceil(letters.length / 2) - (letters.length === 3 ? 1 : 0); // ABC → A | BC
    const cls = list[0].class;
    const grid = h('div', { class: 'car-grid' });
    grid.style.setProperty('--cols', String(letters.length + 2));
    grid.append(h('span', { class: 'row-no' }));
    letters.forEach((l, i) => {
      if (i === aisleAfter) grid.append(h('span', { class: 'aisle' }));
      grid.append(h('span', { class: 'col-letter', 'aria-hidden': 'true' }, l));
    });
    for (const row of rows) {
      grid.append(h('span', { class: 'row-no', 'aria-hidden': 'true' }, row));
      letters.forEach((l, i) => {
        if (i === aisleAfter) grid.append(h('span', { class: 'aisle' }));
        const seat = byPos.get(`${row}${l}`);
        if (!seat) {
          grid.append(h('span'));
          return;
        }
        const btn = h('button', { type: 'button', class: 'seat', dataset: { seat: seat.id }, onclick: () => this.#toggle(seat.id) }, l);
        this.buttons.set(seat.id, btn);
        grid.append(btn);
        this.#drawSeat(seat.id);
      });
    }
    return h('section', { class: `car car-class-${cls}`, 'aria-label': `Car ${car}, ${className(cls)}` },
      h('h3', { class: 'car-title' }, `Car ${car}`, h('span', { class: 'car-class' }, className(cls))), grid);
  }

  #drawSeat(seatId) {
    const btn = this.buttons.get(seatId);
    if (!btn) return;
    const seat = (this.layout.seats || []).find((s) => s.id === seatId);
    const state = this.#seatState(seatId);
    btn.className = `seat seat-${state}${this.busy.has(seatId) ? ' seat-busy' : ''}`;
    btn.dataset.state = state;
    const actionable = state === 'free' || state === 'mine';
    btn.setAttribute('aria-disabled', String(!actionable));
    btn.setAttribute('aria-pressed', String(state === 'mine'));
    btn.setAttribute('aria-label', `Seat ${seatId}, car ${seat?.car}, row ${seat?.row}, ${className(seat?.class)}, ${STATE_LABEL[state]}`);
    btn.title = `${seatId} · ${STATE_LABEL[state]}`;
  }

  #drawHeader() {
    if (!this.header || !this.dep) return;
    const d = this.dep;
    const a = d.availability;
    render(this.header,
      h('span', {}, `${date(d.departsAt)} · ${time(d.departsAt)} → ${time(d.arrivesAt)}`),
      h('span', { class: 'badge', id: 'availability' }, `${a?.free ?? '–'} free · ${a?.held ?? '–'} held · ${a?.sold ?? '–'} sold`));
  }

  #selectionPrice() {
    const p = this.dep?.price;
    let total = 0;
    const lines = [];
    for (const hold of this.holds) {
      for (const seatId of hold.seats) {
        const seat = (this.layout.seats || []).find((s) => s.id === seatId);
        const cents = seat?.class === 1 ? p?.firstCents : p?.secondCents;
        total += cents || 0;
        lines.push({ seatId, seat, cents });
      }
    }
    return { total, lines, currency: p?.currency || 'EUR' };
  }

  #drawBasket() {
    if (!this.basket) return;
    if (!this.session.user) {
      render(this.basket, h('h3', { id: 'basket-h' }, 'Your selection'),
        h('p', { class: 'muted' }, 'Sign in to hold seats and buy tickets.'),
        h('button', { type: 'button', class: 'btn btn-primary', onclick: () => this.session.signIn() }, 'Sign in'));
      return;
    }
    const { total, lines, currency } = this.#selectionPrice();
    if (!lines.length) {
      render(this.basket, h('h3', { id: 'basket-h' }, 'Your selection'),
        h('p', { class: 'muted', id: 'basket-empty' }, 'Select a free seat to hold it.'));
      this.payForm = null;
      return;
    }
    const next = Math.min(...this.holds.map((x) => x.expiresAt));
    const left = next - Date.now();
    // Keep the card field (and focus) across redraws: only the summary is redrawn.
    if (!this.payForm) this.payForm = this.#payForm();
    const summary = h('div', { class: 'basket-summary' },
      h('p', { class: `countdown${left < 60000 ? ' countdown-low' : ''}`, id: 'countdown', role: 'timer' }, `Held for ${countdown(left)}`),
      h('ul', { class: 'basket-lines', id: 'basket-lines' },
        lines.map((l) => h('li', {}, h('span', {}, `Seat ${l.seatId}`, h('span', { class: 'muted' }, ` · ${className(l.seat?.class)}`)), h('span', {}, money(l.cents, currency))))),
      h('p', { class: 'total' }, h('span', {}, 'Total'), h('strong', { id: 'total' }, money(total, currency))));
    if (this.basket.querySelector('.basket-summary')) {
      this.basket.querySelector('.basket-summary').replaceWith(summary);
    } else {
      render(this.basket, h('h3', { id: 'basket-h' }, 'Your selection'), summary, this.payForm);
    }
  }

  #payForm() {
    const card = h('input', { id: 'card', name: 'card', inputmode: 'numeric', autocomplete: 'cc-number', required: true, value: '4242 4242 4242 4242', 'aria-describedby': 'card-hint' });
    const btn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'pay' }, 'Pay');
    return h('form', {
      class: 'pay-form',
      onsubmit: async (e) => {
        e.preventDefault();
        btn.disabled = true;
        try {
          await this.#pay(card.value);
        } finally {
          btn.disabled = false;
        }
      },
    },
    h('label', { class: 'field' }, h('span', {}, 'Card number'), card),
    h('p', { class: 'hint', id: 'card-hint' }, 'Test cards: 4242 4242 4242 4242 approves; 4000 0000 0000 0002 is declined.'),
    btn,
    h('button', { type: 'button', class: 'btn btn-ghost', id: 'release-all', onclick: () => this.#releaseAll() }, 'Release seats'));
  }

  async #toggle(seatId) {
    if (this.busy.has(seatId)) return;
    const state = this.#seatState(seatId);
    if (state === 'held' || state === 'sold') {
      toast(state === 'sold' ? `Seat ${seatId} is already sold.` : `Seat ${seatId} is held by someone else.`, 'info');
      return;
    }
    if (!this.session.user) {
      toast('Please sign in to hold seats.', 'info');
      return;
    }
    if (!(await this.session.ready())) {
      showError({ code: 'session.notReady', message: 'Not signed in to the booking service yet. Please try again in a moment.' });
      return;
    }
    this.busy.add(seatId);
    this.#drawSeat(seatId);
    try {
      if (state === 'mine') {
        const hold = this.holds.find((x) => x.seats.includes(seatId));
        this.releasing.add(hold.holdId);
        try {
          await this.session.call(`seats.departure.${this.id}`, 'release', { holdId: hold.holdId });
        } finally {
          this.releasing.delete(hold.holdId);
        }
        this.holds = this.holds.filter((x) => x !== hold);
      } else {
        const hold = await this.session.call(`seats.departure.${this.id}`, 'hold', { seats: [seatId] });
        this.holds.push({ holdId: hold.holdId, seats: hold.seats, expiresAt: hold.expiresAt });
      }
      this.#saveHolds();
    } catch (e) {
      if (errorCode(e) === 'booking.holdExpired') this.holds = this.holds.filter((x) => !x.seats.includes(seatId));
      showError(e);
    } finally {
      this.busy.delete(seatId);
      this.#drawSeat(seatId);
      this.#drawBasket();
    }
  }

  async #releaseAll() {
    const holds = [...this.holds];
    for (const hold of holds) {
      this.releasing.add(hold.holdId);
      try {
        await this.session.call(`seats.departure.${this.id}`, 'release', { holdId: hold.holdId });
      } catch (e) {
        if (errorCode(e) !== 'booking.holdExpired') showError(e);
      } finally {
        this.releasing.delete(hold.holdId);
      }
      this.holds = this.holds.filter((x) => x !== hold);
      for (const s of hold.seats) this.#drawSeat(s);
    }
    this.#saveHolds();
    this.#drawBasket();
  }

  async #pay(cardNumber) {
    if (!(await this.session.ready())) {
      showError({ code: 'system.accessDenied' });
      return;
    }
    this.paying = true;
    let bought = 0;
    try {
      for (const hold of [...this.holds]) {
        const key = (hold.payKey ||= crypto.randomUUID());
        this.#saveHolds();
        try {
          await this.session.call('tickets.orders', 'purchase', {
            departureId: Number(this.id), holdId: hold.holdId, cardNumber: cardNumber.replace(/\s+/g, ''), idempotencyKey: key,
          });
          bought += hold.seats.length;
          this.holds = this.holds.filter((x) => x !== hold);
        } catch (e) {
          // A declined card: the hold stays, try another card. Anything else ends this hold.
          if (errorCode(e) === 'booking.paymentDeclined') delete hold.payKey;
          else if (errorCode(e) === 'booking.holdExpired') this.holds = this.holds.filter((x) => x !== hold);
          showError(e);
          break;
        }
      }
    } finally {
      this.paying = false;
      this.#saveHolds();
      for (const s of this.buttons.keys()) this.#drawSeat(s);
      this.payForm = null;
      this.basket.replaceChildren();
      this.#drawBasket();
    }
    if (bought) toast(`Paid — ${bought === 1 ? 'your ticket is' : `${bought} tickets are`} in “My tickets”.`, 'success');
  }
}
