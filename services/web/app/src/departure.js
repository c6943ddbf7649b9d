// One departure: the seat map (a car strip with free seats per car and the direction of travel,
// prices per class, seat features with filters, live states told apart by more than colour, one
// tab stop with arrow keys), the user's holds on it (live from `seats.user.<sub>.holds`, so every
// tab and device shows and can pay or release them) and the checkout: one purchase of all of
// them, one order, one payment.

import { h, render } from './dom.js';
import { money, time, date, countdown, className } from './format.js';
import { errorCode, errorMessage } from './errors.js';
import { failed, loading, logError, showError, toast } from './ui.js';

const STATE_LABEL = { free: 'free', mine: 'held by you', held: 'held by someone else', sold: 'sold' };
const STATE_MARK = { free: '', mine: '✓', held: '–', sold: '×' };
const FEATURES = ['window', 'aisle', 'table'];
// Errors after which the payment attempt is over: the next Pay is a new attempt (new key).
// Anything else (a timeout, a lost connection, a provider fault) leaves the outcome open, and
// Pay again repeats the same attempt under the same key: charged at most once.
const UNKNOWN_OUTCOME = new Set(['client.timeout', 'system.timeout', 'system.disconnected', 'system.connectionError', 'system.internalError']);

export class DepartureView {
  constructor(session, { onClose, onPaid }) {
    this.session = session;
    this.onClose = onClose;
    this.onPaid = onPaid;
    this.el = document.getElementById('departure');
    this.id = null;
    this.busy = new Set(); // seats with a request in flight
    this.releasing = new Set(); // hold IDs being released here (their end is no loss)
    this.paying = false;
    this.buttons = new Map(); // seat id -> button
    this.seatsById = new Map();
    this.listeners = [];
    this.timer = null;
    this.filters = new Set();
    this.known = new Map(); // my holds on this departure as last drawn: holdId -> hold
    // Seats of my holds that ended while the map still shows them held. My holds list spans
    // departures and is published apart from the map, so another instance can publish it a moment
    // before the map event of the hold's end: until that event the seat is still mine, never
    // "held by someone else" (nobody can hold it before the map shows it free).
    this.ending = new Set();
    this.attempt = null; // {sig, key}: the payment attempt in progress
    this.active = null; // the seat with tabindex 0
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

  /** Opens departure `id`; `trip` ({from, to}) picks the stops whose times are shown. */
  async open(id, trip = {}) {
    this.close();
    this.id = id;
    this.trip = trip;
    this.el.hidden = false;
    render(this.el, h('h1', { id: 'departure-h' }, 'Choose your seats'), loading('Loading the seat map…'));
    try {
      const sub = this.session.sub;
      const [dep, layout, map, mine] = await Promise.all([
        this.session.get(`catalog.departure.${id}`),
        this.session.get(`seats.departure.${id}.layout`),
        this.session.get(`seats.departure.${id}`),
        sub && (await this.session.ready()) ? this.session.get(`seats.user.${sub}.holds`) : null,
      ]);
      if (this.id !== id) return;
      Object.assign(this, { dep, layout, map, mine });
      this.seatsById = new Map((layout.seats || []).map((s) => [s.id, s]));
      this.known = new Map(this.#myHolds().map((x) => [x.holdId, x]));
      this.ending.clear();
      this.#listen(map, 'change', (changed) => this.#onSeatsChanged(changed));
      if (mine) this.#listen(mine, 'change', () => this.#onMyHoldsChanged());
      this.#listen(dep.price, 'change', () => this.#drawPrices());
      this.#listen(dep.availability, 'change', () => this.#drawHeader());
      this.#listen(layout, 'change', () => this.#drawAll());
      this.#drawAll();
      this.timer = setInterval(() => this.#drawCountdown(), 1000);
      this.el.querySelector('h1')?.focus?.();
    } catch (e) {
      if (this.id !== id) return;
      render(this.el, h('h1', { id: 'departure-h' }, 'Choose your seats'), failed('This departure could not be loaded.', e, () => this.open(id, trip)));
      logError(`loading departure ${id}`, e);
    }
  }

  /** After a reconnect: the resources are current again. */
  resync() {
    if (!this.map) return;
    this.ending.clear();
    this.#onMyHoldsChanged();
  }

  /** My holds on this departure (any tab, any device), soonest expiry first. */
  #myHolds() {
    const all = this.mine?.holds || [];
    return all.filter((x) => String(x.departureId) === String(this.id));
  }

  #seatState(seatId) {
    const s = this.map?.[seatId];
    if (s === 'held' && (this.ending.has(seatId) || this.#myHolds().some((x) => x.seats.includes(seatId)))) return 'mine';
    return s || 'free';
  }

  #onSeatsChanged(changed) {
    for (const seat of Object.keys(changed || {})) {
      if (this.map[seat] !== 'held') this.ending.delete(seat);
      this.#drawSeat(seat);
    }
    this.#drawCars();
    this.#drawHeader();
  }

  #onMyHoldsChanged() {
    const now = new Map(this.#myHolds().map((x) => [x.holdId, x]));
    for (const [id, hold] of this.known) {
      if (now.has(id)) continue;
      for (const s of hold.seats) if (this.map[s] === 'held') this.#endingSeat(s);
      if (this.releasing.has(id) || this.paying) continue;
      // One message per hold, naming its seats; a repeat replaces it (never a stack).
      const seats = hold.seats.join(', ');
      const plural = hold.seats.length > 1 ? 's' : '';
      if (hold.seats.every((s) => this.map[s] === 'sold')) {
        toast(`Seat${plural} ${seats} bought (in another tab or device).`, 'info', { key: `hold:${id}` });
      } else if (hold.expiresAt <= Date.now() + 1500) {
        toast(`Your hold on seat${plural} ${seats} expired and the seat${plural} ${plural ? 'were' : 'was'} released.`, 'error', { key: `hold:${id}` });
      } else {
        toast(`Your hold on seat${plural} ${seats} was released.`, 'info', { key: `hold:${id}` });
      }
    }
    const touched = new Set([...this.known.values(), ...now.values()].flatMap((x) => x.seats));
    this.known = now;
    for (const s of touched) this.#drawSeat(s);
    this.#drawBasket();
  }

  /** Shows `seat` as mine until the map event of its hold's end, or for a few seconds at most. */
  #endingSeat(seat) {
    this.ending.add(seat);
    const id = this.id;
    setTimeout(() => {
      if (this.id !== id || !this.ending.delete(seat)) return;
      this.#drawSeat(seat);
    }, 5000);
  }

  #drawAll() {
    const dep = this.dep;
    const cars = new Map();
    for (const s of this.layout.seats || []) {
      if (!cars.has(s.car)) cars.set(s.car, []);
      cars.get(s.car).push(s);
    }
    this.cars = [...cars.entries()].sort((a, b) => a[0] - b[0]);
    this.buttons.clear();
    this.header = h('div', { class: 'dep-header' });
    this.prices = h('div', { class: 'prices', id: 'prices' });
    this.strip = h('nav', { class: 'car-strip', 'aria-label': 'Cars' });
    this.basket = h('aside', { class: 'basket', 'aria-labelledby': 'basket-h' });
    this.payForm = null;
    const carEls = this.cars.map(([car, list]) => this.#car(car, list));
    const filter = (f) => h('label', { class: 'filter' },
      h('input', { type: 'checkbox', id: `filter-${f}`, checked: this.filters.has(f), onchange: (e) => { if (e.target.checked) this.filters.add(f); else this.filters.delete(f); this.#drawAllSeats(); } }),
      ` ${f[0].toUpperCase()}${f.slice(1)}`);
    render(
      this.el,
      h('div', { class: 'panel-head' },
        h('h1', { id: 'departure-h', tabindex: '-1' }, `${dep.train}: ${this.#from().station} → ${this.#to().station}`),
        h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => this.onClose() }, '← Back to results')),
      this.header,
      this.prices,
      this.strip,
      h('div', { class: 'map-tools' },
        h('fieldset', { class: 'filters' }, h('legend', {}, 'Show seats by'), FEATURES.map(filter)),
        h('div', { class: 'legend' },
          ['free', 'mine', 'held', 'sold'].map((s) => h('span', { class: 'legend-item' }, h('span', { class: `seat-swatch seat-${s}`, 'aria-hidden': 'true' }, STATE_MARK[s]), STATE_LABEL[s])))),
      h('div', { class: 'dep-body' },
        h('div', { class: 'train', id: 'seatmap', role: 'group', 'aria-label': 'Seat map: arrow keys move between seats, Enter or Space holds or releases', onkeydown: (e) => this.#onKey(e) }, carEls),
        this.basket),
    );
    const first = this.cars[0]?.[1][0]?.id;
    this.#setActive([...this.buttons.keys()].find((s) => this.#seatState(s) === 'free') || first, false);
    this.#drawHeader();
    this.#drawPrices();
    this.#drawCars();
    this.#drawBasket();
    // On narrow screens the basket is a bar stuck to the bottom (style.css): publish its height.
    this.barObserver?.disconnect();
    this.barObserver = new ResizeObserver(() => {
      const bar = window.matchMedia('(max-width: 820px)').matches ? this.basket.offsetHeight : 0;
      document.documentElement.style.setProperty('--basket-h', `${bar}px`);
    });
    this.barObserver.observe(this.basket);
  }

  /** The stops of the trip the user searched (the whole run without one). */
  #from() {
    const stops = this.dep.stops || [];
    return stops.find((s) => s.stationId === this.trip.from) || stops[0] || { station: this.dep.origin, departsAt: this.dep.departsAt };
  }

  #to() {
    const stops = this.dep.stops || [];
    return stops.find((s) => s.stationId === this.trip.to) || stops[stops.length - 1] || { station: this.dep.destination, arrivesAt: this.dep.arrivesAt };
  }

  #car(car, list) {
    const letters = [...new Set(list.map((s) => s.letter))].sort();
    const rows = [...new Set(list.map((s) => s.row))].sort((a, b) => a - b);
    const byPos = new Map(list.map((s) => [`${s.row}${s.letter}`, s]));
    const aisleAfter = letters.length === 3 ? 1 : Math.ceil(letters.length / 2); // ABC → A | BC
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
        const btn = h('button', { type: 'button', class: 'seat', tabindex: '-1', dataset: { seat: seat.id }, onclick: () => { this.#setActive(seat.id, false); this.#toggle(seat.id); } },
          h('span', { class: 'seat-letter' }, l), h('span', { class: 'seat-mark', 'aria-hidden': 'true' }));
        this.buttons.set(seat.id, btn);
        grid.append(btn);
        this.#drawSeat(seat.id);
      });
    }
    return h('section', { class: `car car-class-${cls}`, id: `car-${car}`, 'aria-label': `Car ${car}, ${className(cls)}` },
      h('h2', { class: 'car-title' }, `Car ${car}`, h('span', { class: 'car-class' }, className(cls))), grid);
  }

  #drawAllSeats() {
    for (const s of this.buttons.keys()) this.#drawSeat(s);
  }

  #drawSeat(seatId) {
    const btn = this.buttons.get(seatId);
    if (!btn) return;
    const seat = this.seatsById.get(seatId);
    const state = this.#seatState(seatId);
    const features = seat?.features || [];
    const dim = this.filters.size > 0 && ![...this.filters].every((f) => features.includes(f));
    btn.className = `seat seat-${state}${this.busy.has(seatId) ? ' seat-busy' : ''}${dim ? ' seat-dim' : ''}${features.includes('table') ? ' seat-table' : ''}`;
    btn.dataset.state = state;
    btn.querySelector('.seat-mark').textContent = STATE_MARK[state];
    const actionable = state === 'free' || state === 'mine';
    btn.setAttribute('aria-disabled', String(!actionable));
    btn.setAttribute('aria-pressed', String(state === 'mine'));
    const price = this.#price(seat?.class);
    const label = `Seat ${seat?.letter}, row ${seat?.row}, car ${seat?.car} (${seatId}), ${className(seat?.class)}${features.length ? `, ${features.join(', ')}` : ''}, ${STATE_LABEL[state]}${state === 'free' && price ? `, ${price}` : ''}`;
    btn.setAttribute('aria-label', label);
    btn.title = label;
  }

  #price(cls) {
    const p = this.dep?.price;
    return money(cls === 1 ? p?.firstCents : p?.secondCents, p?.currency);
  }

  #drawHeader() {
    if (!this.header || !this.dep) return;
    const a = this.dep.availability;
    const from = this.#from();
    const to = this.#to();
    render(this.header,
      h('span', { id: 'trip-times' }, `${date(from.departsAt)} · ${from.station} ${time(from.departsAt)} → ${to.station} ${time(to.arrivesAt)}`),
      h('span', { class: 'badge', id: 'availability' }, `${a?.free ?? '–'} free · ${a?.held ?? '–'} held · ${a?.sold ?? '–'} sold`));
  }

  #drawPrices() {
    if (!this.prices) return;
    const classes = [...new Set((this.layout.seats || []).map((s) => s.class))].sort();
    render(this.prices, h('span', { class: 'muted' }, 'Fares, per seat: '),
      classes.map((c) => h('span', { class: `price-tag price-class-${c}`, dataset: { class: c } }, `${className(c)} ${this.#price(c)}`)));
    this.#drawAllSeats();
    this.#drawBasket();
  }

  /** The car strip: free seats per car, the direction of travel; a car button moves there. */
  #drawCars() {
    if (!this.strip || !this.cars) return;
    render(this.strip,
      h('span', { class: 'direction', id: 'direction' }, 'Direction of travel ', h('span', { 'aria-hidden': 'true' }, '←')),
      this.cars.map(([car, list]) => {
        const free = list.filter((s) => this.map[s.id] === 'free').length;
        return h('button', { type: 'button', class: `car-chip car-class-${list[0].class}`, dataset: { car },
          title: `${free} of ${list.length} seats free`, onclick: () => this.#goToCar(car) },
        h('strong', {}, `Car ${car}`), h('span', {}, ` ${className(list[0].class)} `), h('span', { class: 'car-free' }, `${free} free`));
      }));
  }

  #goToCar(car) {
    const list = this.cars.find(([c]) => c === car)?.[1] || [];
    const target = list.find((s) => this.#seatState(s.id) === 'free') || list[0];
    document.getElementById(`car-${car}`)?.scrollIntoView({ block: 'start' });
    if (target) this.#setActive(target.id, true);
  }

  /** Roving tab stop: the seat map is one stop in the tab order, the arrows move inside it. */
  #setActive(seatId, focus) {
    if (!seatId) return;
    if (this.active && this.buttons.get(this.active)) this.buttons.get(this.active).tabIndex = -1;
    this.active = seatId;
    const btn = this.buttons.get(seatId);
    if (!btn) return;
    btn.tabIndex = 0;
    if (focus) btn.focus();
  }

  #onKey(e) {
    const cur = this.seatsById.get(e.target?.dataset?.seat);
    if (!cur) return;
    const inCar = (car) => this.cars.find(([c]) => c === car)?.[1] || [];
    const carIdx = this.cars.findIndex(([c]) => c === cur.car);
    let next = null;
    const same = (s) => s.row === cur.row;
    const list = inCar(cur.car);
    switch (e.key) {
      case 'ArrowRight':
      case 'ArrowLeft': {
        const row = list.filter(same).sort((a, b) => a.letter.localeCompare(b.letter));
        const i = row.indexOf(cur) + (e.key === 'ArrowRight' ? 1 : -1);
        next = row[i];
        break;
      }
      case 'ArrowDown':
      case 'ArrowUp': {
        const down = e.key === 'ArrowDown';
        const col = list.filter((s) => s.letter === cur.letter).sort((a, b) => a.row - b.row);
        next = col[col.indexOf(cur) + (down ? 1 : -1)];
        if (!next) {
          // Past the car's end: the next (or previous) car, nearest column.
          const other = inCar(this.cars[carIdx + (down ? 1 : -1)]?.[0]);
          const rows = [...new Set(other.map((s) => s.row))].sort((a, b) => a - b);
          const row = down ? rows[0] : rows[rows.length - 1];
          const cands = other.filter((s) => s.row === row).sort((a, b) => a.letter.localeCompare(b.letter));
          next = cands.find((s) => s.letter === cur.letter) || cands[cands.length - 1];
        }
        break;
      }
      case 'Home':
        next = list[0];
        break;
      case 'End':
        next = list[list.length - 1];
        break;
      case 'PageDown':
      case 'PageUp':
        next = inCar(this.cars[carIdx + (e.key === 'PageDown' ? 1 : -1)]?.[0])[0];
        break;
      default:
        return;
    }
    e.preventDefault();
    if (next) this.#setActive(next.id, true);
  }

  #drawCountdown() {
    const el = this.basket?.querySelector('#countdown');
    const holds = this.#myHolds();
    if (!el || !holds.length) return;
    const left = Math.min(...holds.map((x) => x.expiresAt)) - Date.now();
    el.textContent = `Held for ${countdown(left)}`;
    el.classList.toggle('countdown-low', left < 60000);
  }

  #drawBasket() {
    if (!this.basket) return;
    if (!this.session.user) {
      render(this.basket, h('h2', { id: 'basket-h' }, 'Your selection'),
        h('p', { class: 'muted' }, 'Sign in to hold seats and buy tickets.'),
        h('button', { type: 'button', class: 'btn btn-primary', onclick: () => this.session.signIn() }, 'Sign in'));
      return;
    }
    const holds = this.#myHolds();
    if (!holds.length) {
      render(this.basket, h('h2', { id: 'basket-h' }, 'Your selection'),
        h('p', { class: 'muted', id: 'basket-empty' }, 'Select a free seat to hold it.'));
      this.payForm = null;
      return;
    }
    const p = this.dep?.price;
    const lines = holds.flatMap((x) => x.seats.map((seatId) => {
      const seat = this.seatsById.get(seatId);
      return { seatId, seat, cents: seat?.class === 1 ? p?.firstCents : p?.secondCents };
    }));
    const total = lines.reduce((t, l) => t + (l.cents || 0), 0);
    const elsewhere = holds.some((x) => x.state === 'purchasing') && !this.paying;
    // Keep the card field (its value, its error, the focus) across redraws.
    if (!this.payForm) this.payForm = this.#payForm();
    this.payForm.querySelector('#pay').disabled = this.paying || elsewhere;
    const summary = h('div', { class: 'basket-summary' },
      h('p', { class: 'countdown', id: 'countdown', role: 'timer', 'aria-live': 'off' }, ''),
      h('ul', { class: 'basket-lines', id: 'basket-lines' },
        lines.map((l) => h('li', { dataset: { seat: l.seatId } }, h('span', {}, `Seat ${l.seatId}`, h('span', { class: 'muted' }, ` · ${className(l.seat?.class)}`)), h('span', {}, money(l.cents, p?.currency))))),
      h('p', { class: 'total' }, h('span', {}, `Total, ${lines.length} seat${lines.length > 1 ? 's' : ''}`), h('strong', { id: 'total' }, money(total, p?.currency))),
      elsewhere ? h('p', { class: 'muted', id: 'paying-elsewhere' }, 'A payment for these seats is running in another tab.') : null);
    const old = this.basket.querySelector('.basket-summary');
    if (old) old.replaceWith(summary);
    else render(this.basket, h('h2', { id: 'basket-h' }, 'Your selection'), summary, this.payForm);
    this.#drawCountdown();
  }

  #payForm() {
    const card = h('input', { id: 'card', name: 'card', inputmode: 'numeric', autocomplete: 'cc-number', required: true, placeholder: '4242 4242 4242 4242', 'aria-describedby': 'card-error card-hint',
      oninput: () => this.#cardError(null) });
    const btn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'pay' }, 'Pay');
    return h('form', {
      class: 'pay-form',
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        await this.#pay(card.value);
      },
    },
    h('label', { class: 'field', for: 'card' }, h('span', {}, 'Card number'), card),
    h('p', { class: 'field-error', id: 'card-error', 'aria-live': 'assertive' }),
    h('p', { class: 'hint', id: 'card-hint' }, 'Test cards: 4242 4242 4242 4242 approves; 4000 0000 0000 0002 is declined.'),
    btn,
    h('button', { type: 'button', class: 'btn btn-ghost', id: 'release-all', onclick: () => this.#releaseAll() }, 'Release seats'));
  }

  /** The error next to the card field (announced by screen readers), or none. */
  #cardError(message) {
    const input = this.payForm?.querySelector('#card');
    const el = this.payForm?.querySelector('#card-error');
    if (!input || !el) return;
    el.textContent = message || '';
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
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
      showError({ code: 'session.notReady', message: 'Not signed in to the booking service yet. Please try again in a moment.' }, 'sign in');
      return;
    }
    if (!this.mine) {
      // Signed in after the page loaded: subscribe to my holds first.
      await this.open(this.id, this.trip);
      return;
    }
    this.busy.add(seatId);
    this.#drawSeat(seatId);
    const what = state === 'mine' ? `release of seat ${seatId}` : `hold of seat ${seatId}`;
    try {
      if (state === 'mine') {
        const hold = this.#myHolds().find((x) => x.seats.includes(seatId));
        if (hold) await this.#release(hold);
      } else {
        await this.session.call(`seats.departure.${this.id}`, 'hold', { seats: [seatId] });
      }
    } catch (e) {
      if (errorCode(e) === 'client.timeout') {
        // The outcome is open: the live map and my holds show it once the service answers.
        showError(e, what, { label: 'Try again', run: () => this.#retry(seatId, state) });
      } else {
        showError(e, what);
      }
    } finally {
      this.busy.delete(seatId);
      this.#drawSeat(seatId);
    }
  }

  /** Retries a tap whose answer never came, unless it has meanwhile taken effect. */
  #retry(seatId, wanted) {
    if (this.#seatState(seatId) === wanted) this.#toggle(seatId);
  }

  async #release(hold) {
    this.releasing.add(hold.holdId);
    try {
      await this.session.call(`seats.departure.${this.id}`, 'release', { holdId: hold.holdId });
    } catch (e) {
      if (errorCode(e) !== 'booking.holdExpired') throw e;
    } finally {
      setTimeout(() => this.releasing.delete(hold.holdId), 2000);
    }
  }

  async #releaseAll() {
    try {
      for (const hold of this.#myHolds()) await this.#release(hold);
    } catch (e) {
      showError(e, 'release');
    }
  }

  async #pay(cardNumber) {
    const card = cardNumber.replace(/\s+/g, '');
    if (!card) {
      this.#cardError('Enter a card number.');
      this.payForm.querySelector('#card').focus();
      return;
    }
    if (!(await this.session.ready())) {
      showError({ code: 'system.accessDenied' }, 'payment');
      return;
    }
    const holds = this.#myHolds().filter((x) => x.state === 'active');
    if (!holds.length) return;
    const holdIds = holds.map((x) => x.holdId).sort();
    // A new attempt when what is paid for or the card changed; the same one (same key) when
    // the last answer never came.
    const sig = `${holdIds.join(',')}|${card}`;
    if (this.attempt?.sig !== sig) this.attempt = { sig, key: crypto.randomUUID() };
    const attempt = this.attempt;
    this.paying = true;
    this.#cardError(null);
    this.#drawBasket();
    try {
      const order = await this.session.call('tickets.orders', 'purchase', {
        departureId: Number(this.id), holdIds, cardNumber: card, idempotencyKey: attempt.key,
      }, 30_000);
      this.attempt = null;
      toast(`Paid — ${order.tickets.length === 1 ? 'your ticket is' : `${order.tickets.length} tickets are`} booked.`, 'success');
      this.onPaid(order);
    } catch (e) {
      if (!UNKNOWN_OUTCOME.has(errorCode(e))) this.attempt = null;
      logError('payment', e);
      const code = errorCode(e);
      if (code === 'booking.paymentDeclined' || code === 'system.invalidParams') {
        this.#cardError(code === 'system.invalidParams' ? 'This card number is not valid. Please check it.' : errorMessage(e));
        this.payForm?.querySelector('#card')?.focus();
      } else {
        this.#cardError(errorMessage(e) + (UNKNOWN_OUTCOME.has(code) ? ' Pay again to retry: you will not be charged twice.' : ''));
      }
    } finally {
      this.paying = false;
      this.#drawBasket();
    }
  }
}
