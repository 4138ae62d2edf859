// The dashboard's JSON API and live events. Every URL is relative to the page (reverse proxies).

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

let session = null;

export async function getSession() {
  if (!session) session = await get('dash/api/session');
  return session;
}

async function answer(r) {
  if (r.status === 401) {
    location.href = 'login';
    throw new ApiError(401, 'Log in first.');
  }
  const type = r.headers.get('Content-Type') || '';
  const body = type.includes('json') ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, (body && body.error) || `HTTP ${r.status}`);
  return body;
}

export async function get(path) {
  return answer(await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } }));
}

export async function getText(path) {
  const r = await fetch(path, { credentials: 'same-origin' });
  if (!r.ok) throw new ApiError(r.status, `HTTP ${r.status}`);
  return r.text();
}

export async function post(path, body) {
  const s = await getSession();
  return answer(await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf, Accept: 'application/json' },
    body: JSON.stringify(body || {}),
  }));
}

export function exp(id, rest = '') {
  return `dash/api/experiments/${encodeURIComponent(id)}${rest}`;
}

// Follow an experiment's events. handlers: {ready(), trial(t), metric(m), experiment(e)}.
// ready() is called when the stream starts fresh (or after a reset): the view (re)loads its data then,
// so nothing that happens in between is lost; after a dropped connection the browser resumes with
// Last-Event-ID and the server replays what was missed.
export function follow(id, handlers) {
  const dot = document.getElementById('live');
  const es = new EventSource(exp(id, '/events'));
  const on = (name, fn) => es.addEventListener(name, (e) => {
    let data;
    try { data = JSON.parse(e.data); } catch { return; }
    fn(data);
  });
  on('hello', () => handlers.ready && handlers.ready());
  on('reset', () => handlers.ready && handlers.ready());
  on('trial', (t) => handlers.trial && handlers.trial(t));
  on('metric', (m) => handlers.metric && handlers.metric(m));
  on('experiment', (x) => handlers.experiment && handlers.experiment(x));
  es.onopen = () => { if (dot) dot.className = 'live on'; };
  es.onerror = () => { if (dot) dot.className = 'live off'; };
  return () => { es.close(); if (dot) dot.className = 'live'; };
}

// The status of every running experiment, on one stream (the experiments list).
export function followAll(handlers) {
  const es = new EventSource('dash/api/events');
  es.addEventListener('experiment', (e) => {
    let data;
    try { data = JSON.parse(e.data); } catch { return; }
    if (handlers.experiment) handlers.experiment(data);
  });
  return () => es.close();
}
