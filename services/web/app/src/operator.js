// The operator console (role `operator`): every order, live, with filters; an order's detail with
// cancel and refund; a departure's live occupancy per car, its holds (any of them released) and
// its sales report. All of it RES resources the services refuse to anyone else.

import { h, render } from './dom.js';
import { money, time, date, className } from './format.js';
import { failed, loading, logError, showError, toast } from './ui.js';

const SHOWN = 100; // rows of the order list drawn at once (the newest that match)

export class OperatorView {
  constructor(session) {
    this.session = session;
    this.el = document.getElementById('operator');
    this.listeners = [];
    this.depListeners = [];
    this.filter = { status: '', departure: '', user: '' };
    this.selected = null;
  }

  #listen(list, res, events, fn) {
    res.on(events, fn);
    list.push(() => res.off(events, fn));
  }

  close() {
    for (const off of [...this.listeners, ...this.depListeners]) off();
    this.listeners = [];
    this.depListeners = [];
    this.el.hidden = true;
    render(this.el);
  }

  async open(depId) {
    this.close();
    this.el.hidden = false;
    render(this.el, h('h1', { id: 'operator-h' }, 'Operator console'), loading('Loading all orders…'));
    if (!this.session.user || !(await this.session.ready()) || !this.session.isOperator) {
      render(this.el, h('h1', { id: 'operator-h' }, 'Operator console'), h('p', { id: 'operator-denied' }, 'This page is for operators. Sign in with an operator account.'));
      return;
    }
    try {
      const orders = await this.session.get('tickets.orders');
      if (this.el.hidden) return;
      this.orders = orders;
      const redraw = () => this.#drawOrders();
      this.#listen(this.listeners, orders, 'add', (e) => {
        this.#listen(this.listeners, e.item, 'change', redraw);
        redraw();
      });
      this.#listen(this.listeners, orders, 'remove', redraw);
      for (const o of orders) this.#listen(this.listeners, o, 'change', redraw);
      this.#layout();
      redraw();
      if (depId) this.#openDeparture(depId);
    } catch (e) {
      render(this.el, h('h1', { id: 'operator-h' }, 'Operator console'), failed('The orders could not be loaded.', e, () => this.open(depId)));
      logError('loading all orders', e);
    }
  }

  #layout() {
    const input = (key, label, attrs = {}) => h('label', { class: 'field' }, h('span', {}, label),
      key === 'status'
        ? h('select', { id: `f-${key}`, onchange: (e) => { this.filter.status = e.target.value; this.#drawOrders(); } },
          h('option', { value: '' }, 'any'), h('option', { value: 'placed' }, 'placed'), h('option', { value: 'cancelled' }, 'cancelled'))
        : h('input', { id: `f-${key}`, ...attrs, oninput: (e) => { this.filter[key] = e.target.value.trim(); this.#drawOrders(); } }));
    this.list = h('div', { id: 'op-orders' });
    this.detail = h('section', { class: 'op-detail', id: 'op-detail', 'aria-labelledby': 'op-detail-h' });
    this.dep = h('section', { class: 'op-departure', id: 'op-departure', 'aria-labelledby': 'op-dep-h' });
    const depInput = h('input', { id: 'op-dep-id', inputmode: 'numeric', placeholder: 'e.g. 2518000' });
    render(this.el,
      h('h1', { id: 'operator-h' }, 'Operator console'),
      h('div', { class: 'op-grid' },
        h('section', { class: 'op-orders', 'aria-labelledby': 'op-orders-h' },
          h('h2', { id: 'op-orders-h' }, 'All orders (live)'),
          h('div', { class: 'search-form op-filters', role: 'search' },
            input('status', 'Status'), input('departure', 'Departure', { inputmode: 'numeric' }), input('user', 'User ID contains')),
          this.list),
        h('div', { class: 'op-side' },
          this.detail,
          h('form', { class: 'search-form', onsubmit: (e) => { e.preventDefault(); this.#openDeparture(depInput.value.trim()); } },
            h('label', { class: 'field' }, h('span', {}, 'Departure'), depInput),
            h('button', { type: 'submit', class: 'btn btn-primary', id: 'op-dep-go' }, 'Show occupancy')),
          this.dep)));
    this.#drawDetail();
  }

  #matches(o) {
    const f = this.filter;
    return (!f.status || o.status === f.status)
      && (!f.departure || String(o.departureId) === f.departure)
      && (!f.user || String(o.userId).includes(f.user));
  }

  #drawOrders() {
    if (!this.list) return;
    const all = this.orders.toArray();
    const rows = all.filter((o) => this.#matches(o));
    render(this.list,
      h('p', { class: 'muted', id: 'op-count' }, `${rows.length} of ${all.length} orders${rows.length > SHOWN ? ` (newest ${SHOWN} shown)` : ''}`),
      h('table', { class: 'op-table' },
        h('thead', {}, h('tr', {}, ['Reference', 'User', 'Departure', 'Seats', 'Total', 'Status'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rows.slice(0, SHOWN).map((o) => h('tr', { dataset: { order: o.id, status: o.status }, class: this.selected === o.id ? 'selected' : '' },
          h('td', {}, h('button', { type: 'button', class: 'link', onclick: () => this.#select(o.id) }, o.id)),
          h('td', {}, o.userId),
          h('td', {}, h('button', { type: 'button', class: 'link', 'aria-label': `Occupancy of departure ${o.departureId}`, onclick: () => this.#openDeparture(String(o.departureId)) }, String(o.departureId))),
          h('td', {}, (o.tickets || []).map((t) => t.seat).join(', ')),
          h('td', {}, money(o.totalCents, o.currency)),
          h('td', {}, h('span', { class: `status status-${o.status}` }, o.status)))))));
    this.#drawDetail();
  }

  #select(id) {
    this.selected = id;
    this.#drawOrders();
    this.detail.querySelector('h2')?.focus();
  }

  #drawDetail() {
    if (!this.detail) return;
    const o = this.selected && this.orders?.toArray().find((x) => x.id === this.selected);
    if (!o) {
      render(this.detail, h('h2', { id: 'op-detail-h', tabindex: '-1' }, 'Order'), h('p', { class: 'muted' }, 'Choose an order to see it here.'));
      return;
    }
    const d = o.departure;
    render(this.detail,
      h('h2', { id: 'op-detail-h', tabindex: '-1' }, `Order ${o.id}`),
      h('dl', { class: 'op-dl' },
        h('dt', {}, 'Customer'), h('dd', {}, o.userId),
        h('dt', {}, 'Train'), h('dd', {}, d ? `${d.train} · ${d.origin} → ${d.destination} · ${date(d.departsAt)} ${time(d.departsAt)}` : String(o.departureId)),
        h('dt', {}, 'Placed'), h('dd', {}, `${date(o.createdAt)} ${time(o.createdAt)}`),
        h('dt', {}, 'Status'), h('dd', { id: 'op-detail-status' }, o.status, o.cancelledAt ? ` (${date(o.cancelledAt)} ${time(o.cancelledAt)}, refunded ${money(o.totalCents, o.currency)})` : ''),
        h('dt', {}, 'Tickets'), h('dd', {}, (o.tickets || []).map((t) => `${t.seat} (${className(t.class)}, ${money(t.priceCents, o.currency)}, ${t.status})`).join('; '))),
      o.status === 'placed'
        ? h('button', { type: 'button', class: 'btn btn-ghost btn-danger', id: 'op-cancel', onclick: (e) => this.#cancel(o, e.currentTarget) }, 'Cancel and refund')
        : null);
  }

  async #cancel(o, btn) {
    if (!window.confirm(`Cancel order ${o.id} of ${o.userId} and refund ${money(o.totalCents, o.currency)}?`)) return;
    btn.disabled = true;
    try {
      await this.session.call(`tickets.order.${o.id}`, 'cancel', {});
      toast(`Order ${o.id} cancelled and refunded.`, 'success');
    } catch (e) {
      btn.disabled = false;
      showError(e, `cancelling order ${o.id}`);
    }
  }

  async #openDeparture(id) {
    if (!/^\d+$/.test(id)) {
      toast('Enter a departure number.', 'info');
      return;
    }
    for (const off of this.depListeners) off();
    this.depListeners = [];
    render(this.dep, h('h2', { id: 'op-dep-h' }, `Departure ${id}`), loading());
    try {
      const [dep, layout, map, holds, report] = await Promise.all([
        this.session.get(`catalog.departure.${id}`),
        this.session.get(`seats.departure.${id}.layout`),
        this.session.get(`seats.departure.${id}`),
        this.session.get(`seats.departure.${id}.holds`),
        this.session.get(`reports.departure.${id}`),
      ]);
      const redraw = () => this.#drawDeparture(id, dep, layout, map, holds, report);
      for (const r of [map, holds, report]) this.#listen(this.depListeners, r, 'change', redraw);
      redraw();
    } catch (e) {
      render(this.dep, h('h2', { id: 'op-dep-h' }, `Departure ${id}`), failed('This departure could not be loaded.', e, () => this.#openDeparture(id)));
      logError(`loading departure ${id} for operators`, e);
    }
  }

  #drawDeparture(id, dep, layout, map, holds, report) {
    const cars = new Map();
    for (const s of layout.seats || []) {
      const c = cars.get(s.car) || { car: s.car, cls: s.class, free: 0, held: 0, sold: 0 };
      c[map[s.id] || 'free'] += 1;
      cars.set(s.car, c);
    }
    const list = holds.holds || [];
    render(this.dep,
      h('h2', { id: 'op-dep-h' }, `Departure ${id}: ${dep.train}, ${date(dep.departsAt)} ${time(dep.departsAt)}`),
      h('table', { class: 'op-table', id: 'op-occupancy' },
        h('caption', {}, 'Occupancy per car (live)'),
        h('thead', {}, h('tr', {}, ['Car', 'Class', 'Free', 'Held', 'Sold'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, [...cars.values()].sort((a, b) => a.car - b.car).map((c) => h('tr', { dataset: { car: c.car } },
          h('th', { scope: 'row' }, `Car ${c.car}`), h('td', {}, className(c.cls)),
          h('td', { class: 'n-free' }, c.free), h('td', { class: 'n-held' }, c.held), h('td', { class: 'n-sold' }, c.sold))))),
      h('p', { id: 'op-report' }, `Sales: ${report.ordersPlaced} orders, ${report.seatsSold} seats, ${money(report.revenueCents)} · cancelled ${report.cancellations} (${money(report.refundsCents)} refunded)`),
      h('h3', {}, `Holds (${list.length})`),
      list.length === 0
        ? h('p', { class: 'muted', id: 'op-no-holds' }, 'No seats are held.')
        : h('ul', { class: 'orders', id: 'op-holds' }, list.map((x) => h('li', { class: 'order', dataset: { hold: x.holdId } },
          h('span', {}, `Seats ${x.seats.join(', ')} · ${x.owner} · ${x.state} · until ${time(new Date(x.expiresAt).toISOString())}`),
          h('button', { type: 'button', class: 'btn btn-ghost btn-danger', disabled: x.state !== 'active', 'aria-label': `Release seats ${x.seats.join(', ')} held by ${x.owner}`,
            onclick: (e) => this.#release(id, x, e.currentTarget) }, 'Release')))));
  }

  async #release(dep, hold, btn) {
    btn.disabled = true;
    try {
      await this.session.call(`seats.departure.${dep}`, 'release', { holdId: hold.holdId });
      toast(`Released seats ${hold.seats.join(', ')}.`, 'success');
    } catch (e) {
      btn.disabled = false;
      showError(e, `releasing hold ${hold.holdId}`);
    }
  }
}
