// Shared UI pieces: toasts (every error is shown here), the connection banner, the account box.

import { h, render } from './dom.js';
import { errorMessage } from './errors.js';

const toastsEl = () => document.getElementById('toasts');

/** Shows a message; kind: 'error' | 'info' | 'success'. Errors stay until dismissed (or 12 s). */
export function toast(message, kind = 'info', { timeoutMs } = {}) {
  const el = h(
    'div',
    { class: `toast toast-${kind}`, dataset: { kind } },
    h('span', { class: 'toast-text' }, message),
    h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss message', onclick: () => el.remove() }, '×'),
  );
  toastsEl().append(el);
  const ms = timeoutMs ?? (kind === 'error' ? 12000 : 5000);
  setTimeout(() => el.remove(), ms);
  while (toastsEl().children.length > 4) toastsEl().firstChild.remove();
  return el;
}

export function showError(err) {
  console.warn(err);
  toast(err?.code?.startsWith('session.') ? err.message : errorMessage(err), 'error');
}

/** Connection banner: shows lost / back. */
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
}

export function accountBox(session) {
  const el = document.getElementById('account');
  const draw = () => {
    if (session.user) {
      render(
        el,
        h('span', { class: 'who', id: 'who' }, session.displayName),
        h('button', { type: 'button', class: 'btn btn-ghost', id: 'sign-out', onclick: () => session.signOut().catch(showError) }, 'Sign out'),
      );
    } else {
      render(el, h('button', { type: 'button', class: 'btn btn-primary', id: 'sign-in', onclick: () => session.signIn().catch(showError) }, 'Sign in'));
    }
  };
  session.on('user', draw);
  draw();
}
