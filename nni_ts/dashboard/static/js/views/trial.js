// One trial: its parameters, its intermediate curve (every key of a dict metric), its metric
// records and its log, tailed live while it runs.
import { get, getText, post, exp } from '../api.js';
import { h, fmt, fmtTime, fmtDuration, kv, statusBadge, toast, put } from '../dom.js';

import { lineChart } from '../charts.js';

export function trialView(el, ctx, trialId) {
  const info = h('div', { class: 'grid' });
  const chartBox = h('div', { class: 'chart', id: 'trial-chart' });
  const recordsBox = h('div', { class: 'table-wrap', id: 'records' });
  const fileSel = h('select', { id: 'log-file', onchange: () => loadLog() }, ['stdout', 'stderr', 'trial.log'].map((f) => h('option', { value: f }, f)));
  const logBox = h('pre', { class: 'log', id: 'log' });
  el.append(info, h('h2', null, 'Intermediate results'), chartBox, h('h2', null, 'Metric records'), recordsBox,
    h('div', { class: 'toolbar' }, h('h2', null, 'Log'), fileSel), logBox);
  let trial = null;
  let chart = null;
  let logTimer = null;
  let drawTimer = null;

  function renderInfo() {
    const t = trial;
    const canKill = ctx.live && !ctx.readonly && (t.status === 'RUNNING' || t.status === 'WAITING');
    put(info, 
      h('div', { class: 'card' }, h('h2', null, `Trial #${t.seq} `, h('span', { class: 'mono muted' }, t.id)),
        statusBadge(t.status), t.message ? h('p', { class: 'muted' }, t.message) : null,
        kv([['Final', fmt(t.finalValue)], ['Started', fmtTime(t.start)], ['Ended', fmtTime(t.end)],
          ['Duration', fmtDuration(t.start ? ((t.end || Date.now()) - t.start) / 1000 : null)], ['Exit code', fmt(t.exitCode)],
          ['Attempt', t.attempt], ['Records', t.metricCount]]),
        h('div', { class: 'toolbar' },
          canKill ? h('button', { class: 'danger', id: 'kill-trial', onclick: kill }, 'Kill trial') : null,
          ctx.live && !ctx.readonly ? h('button', { id: 'rerun', onclick: rerun }, 'Re-run with edited parameters…') : null)),
      h('div', { class: 'card' }, h('h2', null, 'Parameters'), h('pre', { class: 'json', id: 'params' }, JSON.stringify(t.parameters, null, 1))),
      t.final != null ? h('div', { class: 'card' }, h('h2', null, 'Final result'), h('pre', { class: 'json', id: 'final' }, JSON.stringify(t.final, null, 1))) : null);
  }

  function rerun() {
    const area = h('textarea', { name: 'parameters' });
    area.value = JSON.stringify(trial.parameters, null, 1);
    const err = h('p', { class: 'error' });
    const form = h('form', { method: 'dialog' }, h('h2', null, `Re-run trial #${trial.seq} with these parameters`), area, err);
    const dlg = h('dialog', { id: 'dlg-rerun' }, form);
    form.append(h('div', { class: 'toolbar' },
      h('button', { type: 'submit', class: 'primary' }, 'Run'),
      h('button', { type: 'button', onclick: () => { dlg.close(); dlg.remove(); } }, 'Cancel')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      let params;
      try { params = JSON.parse(area.value); } catch (x) { err.textContent = `Not valid JSON: ${x.message}`; return; }
      try {
        await post(exp(ctx.id, '/trials'), { parameters: params });
        dlg.close(); dlg.remove();
        toast('A trial with these parameters is queued.');
      } catch (x) { err.textContent = x.message; }
    });
    document.body.append(dlg);
    dlg.showModal();
  }

  async function kill() {
    if (!confirm(`Cancel trial ${trialId}?`)) return;
    try { await post(exp(ctx.id, `/trials/${encodeURIComponent(trialId)}/kill`)); toast('Trial cancelled.'); } catch (err) { toast(err.message, true); }
  }

  function curves() {
    const periodical = trial.metrics.filter((m) => m.type === 'PERIODICAL');
    const keys = [];
    const seen = new Set();
    for (const m of periodical) {
      if (m.value && typeof m.value === 'object' && !Array.isArray(m.value)) {
        for (const [k, v] of Object.entries(m.value)) if (typeof v === 'number' && !seen.has(k)) { seen.add(k); keys.push(k); }
      } else if (typeof m.value === 'number' && !seen.has('default')) { seen.add('default'); keys.push('default'); }
    }
    return keys.map((k) => {
      const xs = [], ys = [];
      periodical.forEach((m, i) => {
        const v = m.value && typeof m.value === 'object' ? m.value[k] : (k === 'default' ? m.value : null);
        if (typeof v === 'number') { xs.push(i); ys.push(v); }
      });
      return { label: k, xs, ys };
    });
  }

  function draw() {
    drawTimer = null;
    const cs = curves();
    if (chart) { chart.destroy(); chart = null; }
    if (!cs.length) { put(chartBox, h('p', { class: 'muted' }, 'No intermediate result yet.')); return; }
    put(chartBox, );
    chart = lineChart(chartBox, cs, { xLabel: 'report #' });
  }

  function renderRecords() {
    const rows = trial.metrics.slice(-300).map((m) => h('tr', { dataset: { seq: String(m.seq) } },
      h('td', { class: 'num' }, m.seq), h('td', null, m.type), h('td', { class: 'num' }, fmt(m.scalar)),
      h('td', { class: 'mono' }, JSON.stringify(m.value)), h('td', null, fmtTime(m.time))));
    put(recordsBox, h('table', null, h('thead', null, h('tr', null, ['seq', 'type', 'scalar', 'value (all keys)', 'time'].map((c) => h('th', null, c)))), h('tbody', null, rows)));
    if (trial.metrics.length > 300) recordsBox.append(h('p', { class: 'muted small' }, `The last 300 of ${trial.metrics.length} records; export for all.`));
  }

  async function loadLog() {
    try {
      logBox.textContent = await getText(exp(ctx.id, `/trials/${encodeURIComponent(trialId)}/log?file=${encodeURIComponent(fileSel.value)}&tail=65536`));
      logBox.scrollTop = logBox.scrollHeight;
    } catch (err) { logBox.textContent = `(${err.message})`; }
  }

  function tailLoop() {
    clearTimeout(logTimer);
    if (trial && (trial.status === 'RUNNING' || trial.status === 'WAITING')) logTimer = setTimeout(() => { loadLog().then(tailLoop); }, 2000);
  }

  return {
    async load() {
      try {
        trial = await get(exp(ctx.id, `/trials/${encodeURIComponent(trialId)}`));
      } catch (err) { put(info, h('p', { class: 'error' }, err.message)); return; }
      renderInfo(); draw(); renderRecords(); loadLog().then(tailLoop);
    },
    trial(t) {
      if (!trial || t.id !== trialId) return;
      const wasRunning = trial.status === 'RUNNING';
      Object.assign(trial, t, { metrics: trial.metrics });
      renderInfo();
      if (wasRunning && t.status !== 'RUNNING') loadLog();
    },
    metric(m) {
      if (!trial || m.trialId !== trialId || trial.metrics.some((x) => x.seq === m.seq)) return;
      trial.metrics.push(m);
      trial.metrics.sort((a, b) => a.seq - b.seq);
      renderRecords();
      if (!drawTimer) drawTimer = setTimeout(draw, 200);
    },
    destroy() { clearTimeout(logTimer); clearTimeout(drawTimer); if (chart) chart.destroy(); },
  };
}
