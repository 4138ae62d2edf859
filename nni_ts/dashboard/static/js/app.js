// The dashboard's single page: a hash router over the views. Relative URLs only.
import { getSession } from './api.js';
import { h, clear, toast, put } from './dom.js';
import { experimentsView } from './views/experiments.js';
import { experimentView } from './views/experiment.js';

const main = document.getElementById('main');
let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || '') };
}

async function route() {
  const { parts, query } = parseHash();
  if (current && current.update && current.accepts && current.accepts(parts)) {
    current.update(parts, query);
    return;
  }
  if (current && current.destroy) current.destroy();
  current = null;
  clear(main);
  try {
    if (parts[0] === 'experiments' && parts[1]) current = experimentView(main, parts, query);
    else current = experimentsView(main);
  } catch (err) {
    main.append(h('p', { class: 'error' }, String(err.message || err)));
  }
}

async function start() {
  try {
    const s = await getSession();
    const who = document.getElementById('who');
    put(who, s.login ? `${s.user}${s.admin ? ' (admin)' : ''}` : (s.readonly ? 'read-only' : ''));
    if (s.login) {
      const out = h('button', { class: 'small', onclick: async () => {
        await fetch('logout', { method: 'POST', headers: { 'X-CSRF-Token': s.csrf }, credentials: 'same-origin' });
        location.href = 'login';
      } }, 'Log out');
      who.append(' ', out);
    }
  } catch (err) {
    if (err.status !== 401) toast(String(err.message || err), true);
    return;
  }
  window.addEventListener('hashchange', route);
  route();
}

window.addEventListener('unhandledrejection', (e) => { toast(String((e.reason && e.reason.message) || e.reason), true); });
start();
