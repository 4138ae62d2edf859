// Charts of every trial: final values with the best so far, all intermediate curves (early-stopped
// ones marked), and the timeline with the number of trials running over time.
import { get, exp } from '../api.js';
import { h, put } from '../dom.js';
import { finalChart, manyCurves, timelineBars, concurrencyChart } from '../charts.js';

export function chartsView(el, ctx) {
  const tabs = h('div', { class: 'tabs' });
  const box = h('div');
  el.append(tabs, box);
  let tab = 'final';
  let data = null;
  let inter = null;
  let uplots = [];
  let timer = null;

  function setTab(name) {
    tab = name;
    put(tabs, ...[['final', 'Final values'], ['intermediate', 'Intermediate curves'], ['timeline', 'Timeline']]
      .map(([k, l]) => h('button', { class: k === tab ? 'active' : null, id: `tab-${k}`, onclick: () => setTab(k) }, l)));
    draw();
  }

  function clearCharts() { uplots.forEach((u) => u.destroy()); uplots = []; put(box, ); }

  async function draw() {
    timer = null;
    if (!data) return;
    clearCharts();
    const chart = h('div', { class: 'chart', id: `chart-${tab}` });
    box.append(chart);
    if (tab === 'final') {
      const xs = [], ys = [];
      data.seq.forEach((s, i) => { if (data.final[i] != null) { xs.push(s); ys.push(data.final[i]); } });
      if (!xs.length) { chart.append(h('p', { class: 'muted' }, 'No final value yet.')); return; }
      uplots.push(finalChart(chart, xs, ys, ctx.info ? ctx.info.optimizeMode : 'maximize', {
        height: 360,
        onPick: (i) => { const at = data.seq.indexOf(xs[i]); if (at >= 0) location.hash = `#/experiments/${encodeURIComponent(ctx.id)}/trials/${encodeURIComponent(data.id[at])}`; },
      }));
      box.append(h('div', { class: 'legend-note' }, 'Click a point to open its trial. Drag to zoom, double-click to reset.'));
    } else if (tab === 'intermediate') {
      if (!inter) {
        chart.append(h('p', { class: 'muted' }, 'Loading…'));
        inter = await get(exp(ctx.id, '/intermediate'));
        put(chart, );
      }
      const status = new Map(data.id.map((id, i) => [id, data.status[i]]));
      const curves = inter.trials.map((id, i) => ({ id, values: inter.values[i], status: status.get(id) }));
      const best = ctx.info && ctx.info.best ? ctx.info.best.id : null;
      manyCurves(chart, curves, { height: 380, best, stride: inter.stride });
      const early = curves.filter((c) => c.status === 'EARLY_STOPPED').length;
      const every = inter.stride > 1 ? ` Every ${inter.stride}th report of each trial is drawn (a trial's page has them all).` : '';
      box.append(h('div', { class: 'legend-note' }, `${curves.length} trials; ${early} early-stopped (orange); the best trial in bold.${every}`));
    } else {
      const trials = data.id.map((id, i) => ({ id, start: data.start[i], end: data.end[i], status: data.status[i] }));
      timelineBars(chart, trials, { height: 280 });
      const conc = h('div', { class: 'chart', id: 'chart-concurrency' });
      box.append(h('h2', null, 'Trials running over time'), conc);
      uplots.push(concurrencyChart(conc, data.start, data.end));
    }
  }
  function schedule() { if (!timer) timer = setTimeout(draw, 1000); }

  setTab('final');
  return {
    async load() {
      try { data = await get(exp(ctx.id, '/charts')); inter = null; } catch (err) { put(box, h('p', { class: 'error' }, err.message)); return; }
      draw();
    },
    trial(t) {
      if (!data) return;
      let i = data.id.indexOf(t.id);
      if (i < 0) { i = data.id.length; data.id.push(t.id); data.seq.push(t.seq); data.final.push(null); data.status.push(null); data.start.push(null); data.end.push(null); }
      data.final[i] = t.finalValue; data.status[i] = t.status; data.start[i] = t.start; data.end[i] = t.end;
      schedule();
    },
    metric(m) {
      if (!inter || m.type !== 'PERIODICAL' || m.seq % inter.stride !== 0) return;
      let i = inter.trials.indexOf(m.trialId);
      if (i < 0) { i = inter.trials.length; inter.trials.push(m.trialId); inter.values.push([]); }
      inter.values[i].push(m.scalar);
      if (tab === 'intermediate') schedule();
    },
    destroy() { clearTimeout(timer); clearCharts(); },
  };
}
