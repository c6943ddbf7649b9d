import './style.css';
import { Session } from './session.js';
import { SearchView } from './search.js';
import { DepartureView } from './departure.js';
import { TicketsView } from './tickets.js';
import { ConfirmationView } from './confirmation.js';
import { OperatorView } from './operator.js';
import { accountBox, connectionBanner, navBar, showError, toast } from './ui.js';

async function loadConfig() {
  const res = await fetch('/config.json', { cache: 'no-store' });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  return res.json();
}

/** Pages: / (search, ?dep= a departure), /tickets, /confirmation?order=, /operator. */
function route() {
  const q = new URLSearchParams(window.location.search);
  const path = window.location.pathname;
  const page = path === '/tickets' ? 'tickets' : path === '/confirmation' ? 'confirmation' : path === '/operator' ? 'operator' : q.get('dep') ? 'departure' : 'search';
  return { page, from: q.get('from'), to: q.get('to'), date: q.get('date'), dep: q.get('dep'), order: q.get('order') };
}

const TITLES = { search: 'Find a train', departure: 'Choose your seats', tickets: 'My tickets', confirmation: 'Your booking', operator: 'Operator console' };

async function main() {
  const config = await loadConfig();
  const session = new Session(config);
  session.on('error', (e) => showError(e, 'session'));
  connectionBanner(session);
  accountBox(session);

  const go = (url) => {
    window.history.pushState(null, '', url);
    show();
  };
  const drawNav = navBar(session, go);
  const departure = new DepartureView(session, {
    onClose: () => {
      const url = new URL(window.location.href);
      url.searchParams.delete('dep');
      go(url);
    },
    onPaid: (order) => go(`/confirmation?order=${encodeURIComponent(order.orderId)}`),
  });
  const search = new SearchView(session, {
    onOpen: (id) => {
      const url = new URL(window.location.href);
      url.searchParams.set('dep', id);
      go(url);
    },
  });
  const tickets = new TicketsView(session, { onShow: (id) => go(`/confirmation?order=${encodeURIComponent(id)}`) });
  const confirmation = new ConfirmationView(session, { onTickets: () => go('/tickets') });
  const operator = new OperatorView(session);
  const searchEls = ['search', 'results'].map((id) => document.getElementById(id));

  let mounted = false;
  async function show() {
    const r = route();
    document.title = `${TITLES[r.page]} · Rail Booking`;
    drawNav();
    if (r.page !== 'departure') departure.close();
    if (r.page !== 'tickets') tickets.close();
    if (r.page !== 'confirmation') confirmation.close();
    if (r.page !== 'operator') operator.close();
    searchEls[0].hidden = r.page !== 'search';
    searchEls[1].hidden = r.page !== 'search' || !(r.from && r.to && r.date);
    if (r.page === 'search') {
      if (!mounted) {
        mounted = true;
        await search.mount({ from: r.from, to: r.to, date: r.date });
      } else if (r.from && r.to && r.date) {
        await search.search({ from: r.from, to: r.to, date: r.date }, false);
      }
    } else if (r.page === 'departure') {
      if (departure.id !== r.dep) await departure.open(r.dep, { from: r.from, to: r.to });
    } else if (r.page === 'tickets') {
      await tickets.open();
    } else if (r.page === 'confirmation') {
      await confirmation.open(r.order);
    } else {
      await operator.open(r.dep);
    }
  }

  let signedIn = false;
  session.on('user', (user) => {
    if (signedIn && !user) toast('You are signed out.', 'info');
    const changed = signedIn !== !!user;
    signedIn = !!user;
    if (changed && document.body.dataset.ready) {
      // Views that depend on who is signed in load again.
      departure.id = null;
      show();
    }
  });
  session.on('connection', ({ connected, reconnected }) => {
    if (connected && reconnected) departure.resync();
  });

  await session.start();
  window.addEventListener('popstate', () => show());
  document.getElementById('boot')?.remove();
  await show();
  document.body.dataset.ready = 'true';
}

main().catch((e) => {
  document.getElementById('boot')?.remove();
  showError({ code: 'client', message: `The app could not start: ${e.message || e}` }, 'start');
  document.body.dataset.ready = 'error';
});
