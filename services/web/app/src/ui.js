// Shared UI pieces: toasts (messages that are not tied to a field), the connection banner, the
// account box and the top navigation.

import { h, render } from './dom.js';
import { errorCode, errorMessage } from './errors.js';

const toastsEl = () => document.getElementById('toasts');

/**
 * Shows a message; kind: 'error' | 'info' | 'success'. Errors stay until dismissed (or 12 s).
 * A message with the same `key` (or, without one, the same text) replaces the one shown, so
 * repeats never stack up.
 */
export function toast(message, kind = 'info', { timeoutMs, key, action } = {}) {
  const id = key || `${kind}:${message}`;
  for (const old of toastsEl().querySelectorAll('.toast')) if (old.dataset.key === id) old.remove();
  const el = h(
    'div',
    { class: `toast toast-${kind}`, dataset: { kind, key: id }, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-text' }, message),
    action ? h('button', { class: 'btn btn-small', type: 'button', onclick: () => { el.remove(); action.run(); } }, action.label) : null,
    h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss message', onclick: () => el.remove() }, '×'),
  );
  toastsEl().append(el);
  const ms = timeoutMs ?? (kind === 'error' ? 12000 : 5000);
  setTimeout(() => el.remove(), ms);
  while (toastsEl().children.length > 3) toastsEl().firstChild.remove();
  return el;
}

/** Logs a failure under a name that says what failed (not a minified class name). */
export function logError(what, err) {
  console.error(`[booking] ${what} failed: ${errorCode(err)}: ${err?.message || err}`, err);
}

export function showError(err, what = 'request', action) {
  logError(what, err);
  toast(err?.code?.startsWith('session.') ? err.message : errorMessage(err), 'error', { action });
}

/**
 * Connection banner: fixed to the top of the viewport (so it never scrolls away on a phone),
 * shown while the connection is lost and briefly when it is back.
 */
export function connectionBanner(session) {
  const el = document.getElementById('conn');
  let lostTimer = null;
  session.on('connection', ({ connected, reconnected }) => {
    clearTimeout(lostTimer);
    if (connected) {
      el.className = 'conn conn-ok';
      render(el, reconnected ? 'Connected again — showing live data' : '');
      el.dataset.state = 'connected';
      if (reconnected) lostTimer = setTimeout(() => render(el), 4000);
    } else {
      el.className = 'conn conn-lost';
      el.dataset.state = 'lost';
      // A restart can be over before anyone looks: the count keeps the loss observable.
      el.dataset.lost = String(Number(el.dataset.lost ?? 0) + 1);
      render(el, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Connection lost — reconnecting…');
    }
  });
  // A gateway that stops answering (process frozen, socket open) shows no disconnect: requests
  // that time out say so here too.
  session.on('unanswered', () => {
    if (el.dataset.state === 'lost') return;
    el.className = 'conn conn-lost';
    el.dataset.state = 'slow';
    render(el, 'The booking service is not answering — retrying…');
  });
  session.on('answered', () => {
    if (el.dataset.state !== 'slow') return;
    el.className = 'conn conn-ok';
    el.dataset.state = 'connected';
    render(el);
  });
}

export function accountBox(session) {
  const el = document.getElementById('account');
  const draw = () => {
    if (session.user) {
      render(
        el,
        h('span', { class: 'who', id: 'who' }, session.displayName),
        h('button', { type: 'button', class: 'btn btn-ghost', id: 'sign-out', onclick: () => session.signOut().catch((e) => showError(e, 'sign out')) }, 'Sign out'),
      );
    } else {
      render(el, h('button', { type: 'button', class: 'btn btn-primary', id: 'sign-in', onclick: () => session.signIn().catch((e) => showError(e, 'sign in')) }, 'Sign in'));
    }
  };
  session.on('user', draw);
  draw();
}

/** The top navigation: search, my tickets (signed in), operator console (operators). */
export function navBar(session, navigate) {
  const el = document.getElementById('nav');
  const link = (path, label, id) =>
    h('a', { href: path, id, 'aria-current': window.location.pathname === path ? 'page' : null, onclick: (e) => { e.preventDefault(); navigate(path); } }, label);
  const draw = () => {
    render(el,
      link('/', 'Search', 'nav-search'),
      session.user ? link('/tickets', 'My tickets', 'nav-tickets') : null,
      session.user && session.isOperator ? link('/operator', 'Operator console', 'nav-operator') : null);
  };
  session.on('user', draw);
  session.on('authenticated', draw);
  window.addEventListener('popstate', draw);
  return draw;
}

/** A loading placeholder, and an error state with a retry button. */
export function loading(text = 'Loading…') {
  return h('p', { class: 'muted loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

export function failed(text, err, retry) {
  return h('div', { class: 'load-error', role: 'alert' },
    h('p', {}, text, ' ', h('span', { class: 'muted' }, errorMessage(err))),
    retry ? h('button', { type: 'button', class: 'btn btn-primary', onclick: retry }, 'Try again') : null);
}
