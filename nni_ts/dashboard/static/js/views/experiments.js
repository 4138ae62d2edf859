// All experiments: running and ended, with status, best value and counts. Live ones follow their events.
import { get, followAll } from '../api.js';
import { h, fmt, fmtTime, fmtDuration, statusBadge } from '../dom.js';

export function experimentsView(main) {
  document.getElementById('nav').replaceChildren(h('a', { href: '#/', class: 'active' }, 'Experiments'));
  const body = h('tbody');
  const table = h('table', null,
    h('thead', null, h('tr', null, ['ID', 'Name', 'Status', 'Platform', 'Best', 'Trials', 'Running', 'Succeeded', 'Failed', 'Started', 'Duration'].map((c) => h('th', null, c)))),
    body);
  main.append(h('h1', null, 'Experiments'), h('div', { class: 'table-wrap' }, table));
  const stops = [];
  const rows = new Map();
  function row(e) {
    const counts = e.counts || {};
    const dur = e.ended ? (e.ended - e.created) / 1000 : (Date.now() - e.created) / 1000;
    const tr = h('tr', { dataset: { experimentId: e.id } },
      h('td', { class: 'mono' }, h('a', { href: `#/experiments/${encodeURIComponent(e.id)}` }, e.id)),
      h('td', null, e.name || ''),
      h('td', null, statusBadge(e.status)),
      h('td', null, e.platform),
      h('td', { class: 'num' }, fmt(e.bestValue)),
      h('td', { class: 'num' }, e.trialCount),
      h('td', { class: 'num' }, counts.RUNNING || 0),
      h('td', { class: 'num' }, counts.SUCCEEDED || 0),
      h('td', { class: 'num' }, counts.FAILED || 0),
      h('td', null, fmtTime(e.created)),
      h('td', null, fmtDuration(dur)));
    const old = rows.get(e.id);
    if (old) old.replaceWith(tr); else body.append(tr);
    rows.set(e.id, tr);
  }
  get('dash/api/experiments').then((list) => {
    if (!list.length) body.append(h('tr', null, h('td', { colspan: 11, class: 'muted' }, 'No experiment yet. Start one with nni-ts create -c config.yml.')));
    list.sort((a, b) => b.created - a.created);
    for (const e of list) row(e);
    // One stream for all running experiments (a browser allows few connections per host).
    stops.push(followAll({ experiment: (x) => { if (x.id && rows.has(x.id)) row(x); } }));
  });
  return { destroy() { stops.forEach((s) => s()); } };
}
