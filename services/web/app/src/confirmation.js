// After a purchase (and from "My tickets"): the order with its booking reference and each ticket
// with a QR code (npm `qrcode`), live (a cancellation shows at once).

import QRCode from 'qrcode';
import { h, render } from './dom.js';
import { money, time, date, className } from './format.js';
import { failed, loading, logError } from './ui.js';

export class ConfirmationView {
  constructor(session, { onTickets }) {
    this.session = session;
    this.onTickets = onTickets;
    this.el = document.getElementById('confirmation');
    this.off = null;
  }

  close() {
    this.off?.();
    this.off = null;
    this.el.hidden = true;
    render(this.el);
  }

  async open(orderId) {
    this.close();
    this.el.hidden = false;
    render(this.el, h('h1', { id: 'confirmation-h' }, 'Your booking'), loading('Loading your booking…'));
    try {
      if (!(await this.session.ready())) throw Object.assign(new Error('not signed in'), { code: 'system.accessDenied' });
      const order = await this.session.get(`tickets.order.${orderId}`);
      if (this.el.hidden) return;
      const redraw = () => this.#draw(order);
      order.on('change', redraw);
      this.off = () => order.off('change', redraw);
      redraw();
      this.el.querySelector('h1')?.focus();
    } catch (e) {
      render(this.el, h('h1', { id: 'confirmation-h' }, 'Your booking'), failed('This booking could not be loaded.', e, () => this.open(orderId)));
      logError(`loading order ${orderId}`, e);
    }
  }

  #draw(o) {
    const d = o.departure;
    const cancelled = o.status === 'cancelled';
    const tickets = o.tickets || [];
    render(
      this.el,
      h('h1', { id: 'confirmation-h', tabindex: '-1' }, cancelled ? 'Booking cancelled' : 'Booking confirmed'),
      h('p', { class: 'reference' }, 'Booking reference ', h('strong', { id: 'booking-ref' }, o.id)),
      d ? h('p', {}, `${d.train} · ${d.origin} → ${d.destination} · ${date(d.departsAt)} ${time(d.departsAt)}–${time(d.arrivesAt)}`) : null,
      h('p', {}, `${tickets.length} ticket${tickets.length === 1 ? '' : 's'} · total ${money(o.totalCents, o.currency)} · `, h('span', { class: `status status-${o.status}` }, o.status)),
      h('ul', { class: 'ticket-list', id: 'ticket-list' }, tickets.map((t) => this.#ticket(o, t))),
      h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => this.onTickets() }, 'All my tickets'),
    );
  }

  #ticket(o, t) {
    const canvas = h('canvas', { class: 'qr', role: 'img', 'aria-label': `QR code of ticket ${t.id}, seat ${t.seat}` });
    QRCode.toCanvas(canvas, `RAILBOOKING:${o.id}:${t.id}:${o.departureId}:${t.seat}`, { width: 132, margin: 1, errorCorrectionLevel: 'M' })
      .catch((e) => logError(`QR code of ticket ${t.id}`, e));
    return h('li', { class: `ticket ticket-${t.status}`, dataset: { ticket: t.id, seat: t.seat } },
      canvas,
      h('div', {},
        h('strong', {}, `Seat ${t.seat}`),
        h('div', { class: 'muted' }, `${className(t.class)} · ${money(t.priceCents, o.currency)}`),
        h('div', { class: 'muted' }, `Ticket ${t.id}`),
        h('span', { class: `status status-${t.status === 'active' ? 'placed' : 'cancelled'}` }, t.status)));
  }
}
