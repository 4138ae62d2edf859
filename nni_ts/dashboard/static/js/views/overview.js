// Overview: status, best trial, counts, progress, tuner and platform, config and search space,
// and the best-so-far curve. Built from the experiment page's one request, then live events.
import { h, fmt, fmtDuration, kv, statusBadge, parseDuration, put } from '../dom.js';
import { finalChart } from '../charts.js';

export function overviewView(el, ctx) {
  const cards = h('div', { class: 'grid' });
  const chartBox = h('div', { class: 'chart', id: 'best-chart' });
  const cfgBox = h('div', { class: 'grid' });
  el.append(cards, h('h2', null, 'Final value by trial, with the best so far'), chartBox, cfgBox);
  let chart = null;
  let series = [[], []];
  let pending = false;

  function progressBar(done, total) {
    const pct = total ? Math.min(100, (100 * done) / total) : 0;
    return h('div', { class: 'progress' }, h('div', { style: `width:${pct.toFixed(1)}%` }));
  }

  function render() {
    const o = ctx.info;
    if (!o) return;
    const counts = o.counts || {};
    const best = o.best;
    const maxTrials = o.maxTrialNumber;
    const maxSecs = parseDuration(o.maxExperimentDuration);
    put(cards, 
      h('div', { class: 'card', id: 'card-status' }, h('h2', null, 'Status'), statusBadge(o.status),
        o.message ? h('p', { class: o.status === 'ERROR' ? 'error' : 'muted' }, o.message) : null,
        kv([['Tuner', o.tuner || '—'], ['Assessor', o.assessor || '—'], ['Platform', o.platform], ['Optimize', o.optimizeMode],
          ['Concurrency', o.trialConcurrency]])),
      h('div', { class: 'card', id: 'card-best' }, h('h2', null, 'Best final value'),
        h('div', { class: 'big', id: 'best-value' }, fmt(best ? best.finalValue : null)),
        best ? h('p', null, 'Trial ', h('a', { href: `#/experiments/${encodeURIComponent(ctx.id)}/trials/${encodeURIComponent(best.id)}` }, `#${best.seq} ${best.id}`)) : h('p', { class: 'muted' }, 'No trial has reported a final value yet.'),
        best ? h('pre', { class: 'json' }, JSON.stringify(best.parameters, null, 1)) : null),
      h('div', { class: 'card', id: 'card-counts' }, h('h2', null, 'Trials'),
        kv(['RUNNING', 'WAITING', 'SUCCEEDED', 'FAILED', 'EARLY_STOPPED', 'USER_CANCELED', 'SYS_CANCELED']
          .filter((s) => counts[s] || s === 'RUNNING' || s === 'SUCCEEDED' || s === 'FAILED')
          .map((s) => [s.toLowerCase().replace('_', ' '), counts[s] || 0]))),
      h('div', { class: 'card', id: 'card-progress' }, h('h2', null, 'Progress'),
        h('div', null, `${o.submitted ?? o.trialCount} of ${maxTrials ?? '∞'} trials`), maxTrials ? progressBar(o.submitted ?? o.trialCount, maxTrials) : null,
        h('div', null, `${fmtDuration(o.elapsed)} of ${o.maxExperimentDuration ?? '∞'}`), maxSecs ? progressBar(o.elapsed || 0, maxSecs) : null),
    );
    put(cfgBox, 
      h('div', { class: 'card' }, h('h2', null, 'Search space'), h('pre', { class: 'json', id: 'search-space' }, JSON.stringify(o.searchSpace, null, 1))),
      h('div', { class: 'card' }, h('h2', null, 'Config (secrets hidden)'), h('pre', { class: 'json', id: 'config' }, JSON.stringify(o.config, null, 1))),
    );
  }

  function draw() {
    pending = false;
    if (!series[0].length) { put(chartBox, h('p', { class: 'muted' }, 'No final value yet.')); chart = null; return; }
    if (chart) { chart.setData([series[0], series[1], best(series[1])]); return; }
    put(chartBox, );
    chart = finalChart(chartBox, series[0], series[1], ctx.info.optimizeMode, { height: 280 });
  }
  function best(values) {
    const out = []; let b = null;
    for (const v of values) { if (v != null && (b == null || (ctx.info.optimizeMode === 'minimize' ? v < b : v > b))) b = v; out.push(b); }
    return out;
  }
  function schedule() { if (!pending) { pending = true; setTimeout(draw, 250); } }

  return {
    load() { if (!ctx.info) return; series = ctx.info.series || [[], []]; render(); chart = null; draw(); },
    info() { series = ctx.info.series || [[], []]; render(); schedule(); },
    experiment() { render(); },
    trial(t) {
      if (t.finalValue == null) return;
      const i = series[0].indexOf(t.seq);
      if (i >= 0) { series[1][i] = t.finalValue; } else {
        let j = series[0].length;
        while (j > 0 && series[0][j - 1] > t.seq) j--;
        series[0].splice(j, 0, t.seq); series[1].splice(j, 0, t.finalValue);
      }
      const o = ctx.info;
      if (o && (!o.best || (o.optimizeMode === 'minimize' ? t.finalValue < o.best.finalValue : t.finalValue > o.best.finalValue))) { o.best = t; render(); }
      schedule();
    },
    destroy() { if (chart) chart.destroy(); },
  };
}
