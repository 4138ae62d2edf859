// Compare two or more trials: parameters and results side by side, and their intermediate curves.
import { get, exp } from '../api.js';
import { h, fmt, fmtDuration, statusBadge, put } from '../dom.js';
import { lineChart } from '../charts.js';

export function compareView(el, ctx, query) {
  const ids = (query.get('ids') || '').split(',').filter(Boolean);
  const tableBox = h('div', { class: 'table-wrap', id: 'compare-table' });
  const chartBox = h('div', { class: 'chart', id: 'compare-chart' });
  el.append(h('h2', null, `Comparing ${ids.length} trials`), tableBox, h('h2', null, 'Intermediate results (default)'), chartBox);
  let chart = null;
  return {
    async load() {
      let trials;
      try {
        trials = await Promise.all(ids.map((id) => get(exp(ctx.id, `/trials/${encodeURIComponent(id)}`))));
      } catch (err) { put(tableBox, h('p', { class: 'error' }, err.message)); return; }
      const names = [];
      for (const t of trials) for (const k of Object.keys(t.parameters)) if (!names.includes(k)) names.push(k);
      const row = (label, cell) => h('tr', null, h('th', null, label), trials.map((t) => h('td', null, cell(t))));
      put(tableBox, h('table', null, h('tbody', null,
        row('Trial', (t) => h('a', { href: `#/experiments/${encodeURIComponent(ctx.id)}/trials/${encodeURIComponent(t.id)}` }, `#${t.seq} ${t.id}`)),
        row('Status', (t) => statusBadge(t.status)),
        row('Final', (t) => fmt(t.finalValue)),
        row('Duration', (t) => fmtDuration(t.start ? ((t.end || Date.now()) - t.start) / 1000 : null)),
        names.map((n) => row(n, (t) => fmt(t.parameters[n]))))));
      const curves = trials.map((t) => {
        const per = t.metrics.filter((m) => m.type === 'PERIODICAL');
        const xs = [], ys = [];
        per.forEach((m, i) => { if (typeof m.scalar === 'number') { xs.push(i); ys.push(m.scalar); } });
        return { label: `#${t.seq}`, xs, ys };
      });
      if (curves.some((c) => c.xs.length)) { put(chartBox, ); chart = lineChart(chartBox, curves, { xLabel: 'report #' }); }
      else put(chartBox, h('p', { class: 'muted' }, 'These trials reported no intermediate result.'));
    },
    destroy() { if (chart) chart.destroy(); },
  };
}
