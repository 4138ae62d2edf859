// Trials: a table sorted, filtered and paged on the server (the state lives in the URL), with
// parallel coordinates above it whose brushing adds filters to the table.
import { get, post, exp } from '../api.js';
import { h, fmt, fmtDuration, statusBadge, toast, put } from '../dom.js';
import { parallel } from '../charts.js';

const STATUSES = ['WAITING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'EARLY_STOPPED', 'USER_CANCELED', 'SYS_CANCELED', 'UNKNOWN'];
const OPS = [['eq', '='], ['ne', '≠'], ['lt', '<'], ['gt', '>'], ['between', 'between'], ['in', 'in']];
const PAGE = 50;

export function trialsView(el, ctx, query) {
  const base = `#/experiments/${encodeURIComponent(ctx.id)}/trials`;
  let q = new URLSearchParams(query);
  let page = null;
  let paramNames = [];
  let metricKeys = [];
  const selected = new Set();
  const pcpBox = h('div', { class: 'chart', id: 'pcp' });
  const pcpNote = h('div', { class: 'legend-note' }, 'Parallel coordinates: drag along an axis to brush; click an axis to clear it. Brushes filter the table.');
  const toolbar = h('div', { class: 'toolbar' });
  const chips = h('div', { class: 'chips', id: 'filters' });
  const tableBox = h('div', { class: 'table-wrap' });
  const pager = h('div', { class: 'pager' });
  el.append(h('h2', null, 'Parameters and final value'), pcpBox, pcpNote, toolbar, chips, tableBox, pager);
  let refetchTimer = null;
  let pcpData = null;

  function filters() { return q.getAll('f'); }
  function go(next) { location.hash = `${base}?${next.toString()}`; }

  function renderToolbar() {
    const statusSel = h('select', { id: 'status-filter', onchange: () => {
      const next = new URLSearchParams(q);
      const keep = filters().filter((f) => !f.startsWith('status:'));
      next.delete('f'); keep.forEach((f) => next.append('f', f));
      if (statusSel.value) next.append('f', `status:in:${statusSel.value}`);
      next.set('offset', '0'); go(next);
    } }, h('option', { value: '' }, 'All statuses'), STATUSES.map((s) => h('option', { value: s }, s)));
    const cur = filters().find((f) => f.startsWith('status:in:'));
    statusSel.value = cur && !cur.slice(10).includes(',') ? cur.slice(10) : '';
    const fields = [['final', 'final value'], ['seq', 'trial #'], ['duration', 'duration (ms)'], ['metrics', '# metrics'],
      ...paramNames.map((p) => [`param.${p}`, p]), ...metricKeys.map((k) => [`metric.${k}`, `metric ${k}`])];
    const fieldSel = h('select', { id: 'filter-field' }, fields.map(([v, l]) => h('option', { value: v }, l)));
    const opSel = h('select', { id: 'filter-op' }, OPS.map(([v, l]) => h('option', { value: v }, l)));
    const val = h('input', { id: 'filter-value', placeholder: 'value (a,b for between / in)', size: 22 });
    const add = h('button', { id: 'filter-add', onclick: () => {
      if (!val.value.trim()) return;
      const next = new URLSearchParams(q);
      next.append('f', `${fieldSel.value}:${opSel.value}:${val.value.trim()}`);
      next.set('offset', '0'); go(next);
    } }, 'Add filter');
    const cmp = h('button', { id: 'compare', disabled: selected.size < 2, onclick: () => {
      location.hash = `#/experiments/${encodeURIComponent(ctx.id)}/compare?ids=${Array.from(selected).map(encodeURIComponent).join(',')}`;
    } }, `Compare (${selected.size})`);
    put(toolbar, statusSel, fieldSel, opSel, val, add, h('span', { class: 'spacer' }), cmp);
    put(chips, ...filters().map((f) => h('span', { class: 'chip' }, f, h('button', { title: 'remove', onclick: () => {
      const next = new URLSearchParams(q);
      const rest = filters(); rest.splice(rest.indexOf(f), 1);
      next.delete('f'); rest.forEach((x) => next.append('f', x)); next.set('offset', '0'); go(next);
    } }, '×'))));
  }

  function sortHeader(label, field) {
    const sorted = (q.get('sort') || 'seq') === field;
    const desc = q.get('order') === 'desc';
    return h('th', { class: `sortable${sorted ? ' sorted' : ''}${sorted && desc ? ' desc' : ''}`, onclick: () => {
      const next = new URLSearchParams(q);
      next.set('sort', field); next.set('order', sorted && !desc ? 'desc' : 'asc'); next.set('offset', '0'); go(next);
    } }, label);
  }

  function rowOf(t) {
    const live = ctx.live && !ctx.readonly && (t.status === 'RUNNING' || t.status === 'WAITING');
    const box = h('input', { type: 'checkbox', onchange: (e) => { if (e.target.checked) selected.add(t.id); else selected.delete(t.id); renderToolbar(); } });
    box.checked = selected.has(t.id);
    const dur = t.start ? ((t.end || Date.now()) - t.start) / 1000 : null;
    return h('tr', { dataset: { trialId: t.id } },
      h('td', null, box),
      h('td', { class: 'num' }, t.seq),
      h('td', { class: 'mono' }, h('a', { href: `#/experiments/${encodeURIComponent(ctx.id)}/trials/${encodeURIComponent(t.id)}` }, t.id)),
      h('td', { class: 'status-cell' }, statusBadge(t.status)),
      h('td', { class: 'num final-cell' }, fmt(t.finalValue)),
      paramNames.map((p) => h('td', { class: 'param-cell' }, fmt(t.parameters[p]))),
      h('td', { class: 'num metric-count' }, t.metricCount),
      h('td', { class: 'num' }, fmtDuration(dur)),
      h('td', null, live ? h('button', { class: 'danger kill', onclick: () => kill(t) }, 'Kill') : null));
  }

  async function kill(t) {
    if (!confirm(`Cancel trial ${t.id}?`)) return;
    try { await post(exp(ctx.id, `/trials/${encodeURIComponent(t.id)}/kill`)); toast(`Trial ${t.id} cancelled.`); } catch (err) { toast(err.message, true); }
  }

  function renderTable() {
    const names = new Set(paramNames);
    for (const t of page.trials) for (const k of Object.keys(t.parameters)) if (!names.has(k)) { names.add(k); paramNames.push(k); }
    const keys = new Set(metricKeys);
    for (const t of page.trials) if (t.final && typeof t.final === 'object') for (const k of Object.keys(t.final)) if (!keys.has(k)) { keys.add(k); metricKeys.push(k); }
    const tbody = h('tbody', null, page.trials.map(rowOf));
    const table = h('table', { id: 'trials-table' },
      h('thead', null, h('tr', null, h('th', null, ''), sortHeader('#', 'seq'), h('th', null, 'Trial'), sortHeader('Status', 'status'),
        sortHeader('Final', 'final'), paramNames.map((p) => sortHeader(p, `param.${p}`)), sortHeader('Metrics', 'metrics'),
        sortHeader('Duration', 'duration'), h('th', null, ''))),
      tbody);
    put(tableBox, table);
    if (!page.trials.length) tbody.append(h('tr', null, h('td', { colspan: 8 + paramNames.length, class: 'muted' }, 'No trial matches.')));
    const from = page.total ? page.offset + 1 : 0;
    const to = page.offset + page.trials.length;
    put(pager, 
      h('button', { disabled: page.offset === 0, onclick: () => { const n = new URLSearchParams(q); n.set('offset', String(Math.max(0, page.offset - PAGE))); go(n); } }, '‹ Previous'),
      h('span', { id: 'page-info' }, `${from}–${to} of ${page.total}`),
      h('button', { disabled: to >= page.total, onclick: () => { const n = new URLSearchParams(q); n.set('offset', String(page.offset + PAGE)); go(n); } }, 'Next ›'));
    renderToolbar();
  }

  async function fetchPage() {
    const params = new URLSearchParams();
    for (const f of filters()) params.append('f', f);
    params.set('sort', q.get('sort') || 'seq'); params.set('order', q.get('order') || 'asc');
    params.set('offset', q.get('offset') || '0'); params.set('limit', String(PAGE));
    try {
      page = await get(exp(ctx.id, `/trials?${params}`));
      renderTable();
    } catch (err) {
      put(tableBox, h('p', { class: 'error' }, err.message));
    }
  }

  let pcpBrushes = {};

  async function loadPcp() {
    try {
      pcpData = await get(exp(ctx.id, '/charts'));
      for (const p of pcpData.paramNames) if (!paramNames.includes(p)) paramNames.push(p);
      drawPcp();
    } catch (err) { put(pcpBox, h('p', { class: 'error' }, err.message)); }
  }
  function drawPcp() {
    if (!pcpData) return;
    const withFinal = pcpData.final.filter((v) => v != null).length;
    if (!withFinal) { put(pcpBox, h('p', { class: 'muted' }, 'No trial has a final value yet.')); return; }
    const dims = pcpData.paramNames.map((p, k) => ({ name: p, field: `param.${p}`, values: pcpData.params[k] }));
    dims.push({ name: 'final value', field: 'final', values: pcpData.final });
    parallel(pcpBox, dims, pcpData.final, {
      brushes: pcpBrushes,
      onBrush: (fs, b) => {
        pcpBrushes = { ...b };
        const next = new URLSearchParams(q);
        const fields = new Set(dims.map((d) => d.field));
        const keep = filters().filter((f) => !fields.has(f.split(':')[0]) || !/:(between|in):/.test(f));
        next.delete('f'); keep.forEach((f) => next.append('f', f));
        for (const f of fs) next.append('f', `${f.field}:${f.op}:${f.value}`);
        next.set('offset', '0'); go(next);
      },
    });
  }
  let pcpTimer = null;
  function schedulePcp() { if (!pcpTimer) pcpTimer = setTimeout(() => { pcpTimer = null; drawPcp(); }, 1000); }

  return {
    load() { fetchPage(); loadPcp(); },
    query(next) { q = new URLSearchParams(next); fetchPage(); },
    trial(t) {
      if (pcpData) {
        const i = pcpData.id.indexOf(t.id);
        const at = i >= 0 ? i : pcpData.id.length;
        if (i < 0) { pcpData.id.push(t.id); pcpData.seq.push(t.seq); pcpData.params.forEach((col) => col.push(null)); pcpData.final.push(null); }
        pcpData.final[at] = t.finalValue;
        pcpData.paramNames.forEach((p, k) => { pcpData.params[k][at] = t.parameters[p] ?? null; });
        for (const p of Object.keys(t.parameters)) if (!pcpData.paramNames.includes(p)) { pcpData.paramNames.push(p); pcpData.params.push(pcpData.id.map((x, j) => (j === at ? t.parameters[p] : null))); }
        if (t.finalValue != null) schedulePcp();
      }
      if (!page) return;
      const i = page.trials.findIndex((x) => x.id === t.id);
      if (i >= 0) {
        page.trials[i] = t;
        const old = tableBox.querySelector(`tr[data-trial-id="${CSS.escape(t.id)}"]`);
        if (old) old.replaceWith(rowOf(t));
      } else if (!refetchTimer) {
        refetchTimer = setTimeout(() => { refetchTimer = null; fetchPage(); }, 150);
      }
    },
    destroy() { clearTimeout(refetchTimer); clearTimeout(pcpTimer); },
  };
}
