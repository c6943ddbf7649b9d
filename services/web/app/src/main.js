import './style.css';
import { Session } from './session.js';
import { SearchView } from './search.js';
import { DepartureView } from './departure.js';
import { TicketsView } from './tickets.js';
import { accountBox, connectionBanner, showError, toast } from './ui.js';

async function loadConfig() {
  const res = await fetch('/config.json', { cache: 'no-store' });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  return res.json();
}

function route() {
  const q = new URLSearchParams(window.location.search);
  return { from: q.get('from'), to: q.get('to'), date: q.get('date'), dep: q.get('dep') };
}

async function main() {
  const config = await loadConfig();
  const session = new Session(config);
  session.on('error', showError);
  connectionBanner(session);
  accountBox(session);

  const departure = new DepartureView(session, {
    onClose: () => {
      const url = new URL(window.location.href);
      url.searchParams.delete('dep');
      window.history.pushState(null, '', url);
      departure.close();
      document.getElementById('results').hidden = false;
    },
  });
  const openDeparture = (id, push = true) => {
    if (push) {
      const url = new URL(window.location.href);
      url.searchParams.set('dep', id);
      window.history.pushState(null, '', url);
    }
    document.getElementById('results').hidden = true;
    departure.open(String(id));
  };
  const search = new SearchView(session, { onOpen: openDeparture });
  const tickets = new TicketsView(session);

  let signedIn = false;
  session.on('user', (user) => {
    if (signedIn && !user) toast('You are signed out.', 'info');
    signedIn = !!user;
    tickets.load();
    if (departure.id) departure.open(departure.id);
  });
  session.on('connection', ({ connected, reconnected }) => {
    if (connected && reconnected) departure.resync();
  });

  await session.start();
  const r = route();
  await search.mount({ from: r.from, to: r.to, date: r.date });
  if (r.dep) openDeparture(r.dep, false);
  tickets.load();

  window.addEventListener('popstate', () => {
    const p = route();
    if (p.dep) openDeparture(p.dep, false);
    else {
      departure.close();
      if (p.from && p.to && p.date) search.search({ from: p.from, to: p.to, date: p.date }, false);
    }
  });
  document.body.dataset.ready = 'true';
}

main().catch((e) => {
  showError({ code: 'client', message: `The app could not start: ${e.message || e}` });
  document.body.dataset.ready = 'error';
});
