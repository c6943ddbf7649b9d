// Search form and the list of matching departures (live availability and price).

import { h, render } from './dom.js';
import { money, time, duration, todayIso, date } from './format.js';
import { failed, loading, logError, showError } from './ui.js';

export class SearchView {
  constructor(session, { onOpen }) {
    this.session = session;
    this.onOpen = onOpen;
    this.form = document.getElementById('search');
    this.results = document.getElementById('results');
    this.current = null; // subscribed departures collection
    this.listeners = [];
  }

  async mount(initial) {
    render(this.form, h('h1', { id: 'search-h' }, 'Find a train'), loading('Loading stations…'));
    let stations = [];
    try {
      const coll = await this.session.get('catalog.stations');
      stations = coll.toArray();
    } catch (e) {
      logError('loading stations', e);
      render(this.form, h('h1', { id: 'search-h' }, 'Find a train'), failed('The stations could not be loaded.', e, () => this.mount(initial)));
      return;
    }
    const options = (sel) =>
      stations.map((s) => h('option', { value: s.id, selected: s.id === sel }, s.name));
    const from = h('select', { id: 'from', name: 'from', required: true }, h('option', { value: '' }, 'Choose…'), options(initial.from || 'AH'));
    const to = h('select', { id: 'to', name: 'to', required: true }, h('option', { value: '' }, 'Choose…'), options(initial.to || 'MH'));
    const day = h('input', { id: 'date', name: 'date', type: 'date', required: true, value: initial.date || todayIso(), min: todayIso() });
    const swap = h('button', { type: 'button', class: 'btn btn-ghost swap', 'aria-label': 'Swap origin and destination', onclick: () => ([from.value, to.value] = [to.value, from.value]) }, '⇄');
    render(
      this.form,
      h('h1', { id: 'search-h' }, 'Find a train'),
      h(
        'form',
        {
          class: 'search-form',
          onsubmit: (e) => {
            e.preventDefault();
            this.search({ from: from.value, to: to.value, date: day.value }, true);
          },
        },
        h('label', { class: 'field' }, h('span', {}, 'From'), from),
        swap,
        h('label', { class: 'field' }, h('span', {}, 'To'), to),
        h('label', { class: 'field' }, h('span', {}, 'Date'), day),
        h('button', { type: 'submit', class: 'btn btn-primary', id: 'search-btn' }, 'Search'),
      ),
    );
    if (initial.from && initial.to && initial.date) await this.search(initial, false);
  }

  #unlisten() {
    for (const off of this.listeners) off();
    this.listeners = [];
  }

  #listen(res, events, fn) {
    res.on(events, fn);
    this.listeners.push(() => res.off(events, fn));
  }

  async search(q, push) {
    if (q.from === q.to) {
      showError({ code: 'client', message: 'Origin and destination must differ.' });
      return;
    }
    if (push) {
      const url = new URL(window.location.href);
      url.search = new URLSearchParams(q).toString();
      window.history.pushState(null, '', url);
    }
    this.results.hidden = false;
    render(this.results, h('h2', { id: 'results-h' }, 'Departures'), loading('Searching…'));
    this.#unlisten();
    const rid = `catalog.departures?${new URLSearchParams(q).toString()}`;
    try {
      const coll = await this.session.get(rid);
      this.current = coll;
      const redraw = () => this.#draw(coll, q);
      this.#listen(coll, 'add remove', redraw);
      for (const dep of coll) {
        this.#listen(dep.availability, 'change', redraw);
        this.#listen(dep.price, 'change', redraw);
      }
      redraw();
    } catch (e) {
      render(this.results, h('h2', { id: 'results-h' }, 'Departures'), failed('The search failed.', e, () => this.search(q, false)));
      logError('search', e);
    }
  }

  #draw(coll, q) {
    const items = coll.toArray();
    render(
      this.results,
      h('h2', { id: 'results-h' }, `Departures · ${date(q.date + 'T12:00:00')}`),
      items.length === 0
        ? h('p', { class: 'muted' }, 'No trains on this day. Try another date.')
        : h(
            'ul',
            { class: 'dep-list' },
            items.map((d) => {
              const a = d.availability;
              const p = d.price;
              const from = d.stops?.find((s) => s.stationId === q.from);
              const to = d.stops?.find((s) => s.stationId === q.to);
              const dep = from?.departsAt || d.departsAt;
              const arr = to?.arrivesAt || d.arrivesAt;
              return h(
                'li',
                { class: 'dep' },
                h('div', { class: 'dep-times' }, h('strong', {}, time(dep)), ' → ', h('strong', {}, time(arr)), h('span', { class: 'muted' }, ` · ${duration(dep, arr)}`)),
                h('div', { class: 'dep-train' }, `${d.train}`, h('span', { class: 'muted' }, ` · ${d.origin} → ${d.destination}`)),
                h('div', { class: 'dep-meta' },
                  h('span', { class: 'badge' }, `${a?.free ?? '–'} of ${a?.total ?? '–'} seats free`),
                  h('span', { class: 'price' }, `from ${money(p?.secondCents, p?.currency)}`)),
                h('button', { type: 'button', class: 'btn btn-primary', dataset: { dep: d.id }, 'aria-label': `Choose seats on ${d.train} at ${time(dep)}`, onclick: () => this.onOpen(d.id) }, 'Choose seats'),
              );
            }),
          ),
    );
  }
}
