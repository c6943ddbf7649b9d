// "My tickets", its own page: the signed-in user's orders, live (new purchases appear,
// cancellations update), each with its booking reference and a link to its tickets (QR codes).

import { h, render } from './dom.js';
import { money, time, date } from './format.js';
import { failed, loading, logError, showError, toast } from './ui.js';

export class TicketsView {
  constructor(session, { onShow }) {
    this.session = session;
    this.onShow = onShow;
    this.el = document.getElementById('tickets');
    this.listeners = [];
    this.coll = null;
  }

  #unlisten() {
    for (const off of this.listeners) off();
    this.listeners = [];
  }

  #listen(res, events, fn) {
    res.on(events, fn);
    this.listeners.push(() => res.off(events, fn));
  }

  close() {
    this.#unlisten();
    this.coll = null;
    this.el.hidden = true;
    render(this.el);
  }

  async open() {
    this.#unlisten();
    this.el.hidden = false;
    const sub = this.session.sub;
    if (!sub) {
      render(this.el, h('h1', { id: 'tickets-h' }, 'My tickets'), h('p', { class: 'muted' }, 'Sign in to see your tickets.'),
        h('button', { type: 'button', class: 'btn btn-primary', onclick: () => this.session.signIn() }, 'Sign in'));
      return;
    }
    render(this.el, h('h1', { id: 'tickets-h' }, 'My tickets'), loading('Loading your tickets…'));
    try {
      if (!(await this.session.ready())) throw Object.assign(new Error('not signed in'), { code: 'system.accessDenied' });
      const coll = await this.session.get(`tickets.user.${sub}`);
      if (this.session.sub !== sub || this.el.hidden) return;
      this.coll = coll;
      const redraw = () => this.#draw();
      this.#listen(coll, 'add', (e) => {
        this.#listen(e.item, 'change', redraw);
        redraw();
      });
      this.#listen(coll, 'remove', redraw);
      for (const order of coll) this.#listen(order, 'change', redraw);
      redraw();
    } catch (e) {
      render(this.el, h('h1', { id: 'tickets-h' }, 'My tickets'), failed('Your tickets could not be loaded.', e, () => this.open()));
      logError('loading my tickets', e);
    }
  }

  #draw() {
    const orders = this.coll ? this.coll.toArray() : [];
    render(
      this.el,
      h('h1', { id: 'tickets-h' }, 'My tickets'),
      orders.length === 0
        ? h('p', { class: 'muted', id: 'no-tickets' }, 'No tickets yet.')
        : h('ul', { class: 'orders', id: 'orders' }, orders.map((o) => this.#order(o))),
    );
  }

  #order(o) {
    const d = o.departure;
    const cancelled = o.status === 'cancelled';
    const seats = (o.tickets || []).map((t) => t.seat).join(', ');
    return h(
      'li',
      { class: `order${cancelled ? ' order-cancelled' : ''}`, dataset: { order: o.id, status: o.status } },
      h('div', { class: 'order-main' },
        h('strong', {}, d ? `${d.origin} → ${d.destination}` : `Departure ${o.departureId}`),
        h('span', { class: 'muted' }, d ? ` · ${d.train} · ${date(d.departsAt)} ${time(d.departsAt)}` : ''),
        h('div', { class: 'muted' }, 'Booking reference ', h('code', {}, o.id))),
      h('div', { class: 'order-meta' },
        h('span', { class: 'order-seats' }, `Seat${(o.tickets || []).length === 1 ? '' : 's'} ${seats}`),
        h('span', { class: `status status-${o.status}` }, o.status),
        h('span', {}, money(o.totalCents, o.currency)),
        h('button', { type: 'button', class: 'btn btn-ghost', 'aria-label': `Show tickets for seats ${seats}`, onclick: () => this.onShow(o.id) }, 'Tickets'),
        cancelled
          ? null
          : h('button', { type: 'button', class: 'btn btn-ghost btn-danger', 'aria-label': `Cancel order for seats ${seats}`, onclick: (e) => this.#cancel(o, e.currentTarget) }, 'Cancel')),
    );
  }

  async #cancel(o, btn) {
    if (!window.confirm(`Cancel your tickets (seats ${(o.tickets || []).map((t) => t.seat).join(', ')})? You will be refunded.`)) return;
    btn.disabled = true;
    try {
      await this.session.call(`tickets.order.${o.id}`, 'cancel', {});
      toast('Order cancelled. Your refund is on its way.', 'success');
    } catch (e) {
      btn.disabled = false;
      showError(e, `cancelling order ${o.id}`);
    }
  }
}
