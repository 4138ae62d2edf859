// Charts. uPlot (vendored, global `uPlot`) draws the x/y charts with few series; a canvas of our own
// draws what has thousands of series: every trial's intermediate curve, parallel coordinates with
// brushing, and the timeline bars. See docs/dashboard.md for why.

import { fmt, put } from './dom.js';

export function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

function widthOf(el) {
  return Math.max(320, Math.floor(el.clientWidth || el.parentElement.clientWidth || 800) - 18);
}

function axisStyle() {
  const grid = { stroke: css('--chart-grid'), width: 1 };
  return { stroke: css('--muted'), grid, ticks: grid };
}

// ---------------------------------------------------------------- uPlot charts

// Final value against trial number, with the best-so-far line.
export function finalChart(el, seqs, values, mode, { height = 300, onPick } = {}) {
  const best = [];
  let b = null;
  for (const v of values) {
    if (v != null && (b == null || (mode === 'minimize' ? v < b : v > b))) b = v;
    best.push(b);
  }
  const opts = {
    width: widthOf(el), height,
    scales: { x: { time: false } },
    axes: [{ ...axisStyle(), label: 'trial #' }, { ...axisStyle(), label: 'final value' }],
    series: [
      { label: 'trial #' },
      { label: 'final', stroke: css('--accent'), width: 0,
        points: { show: true, size: 5, width: 0, fill: css('--accent') }, paths: () => null },
      { label: 'best so far', stroke: css('--best'), width: 2, points: { show: false }, paths: uPlot.paths.stepped({ align: 1 }) },
    ],
    cursor: { drag: { x: true, y: false } },
    legend: { show: true },
  };
  const chart = new uPlot(opts, [seqs, values, best], el);
  if (onPick) {
    chart.over.addEventListener('click', () => {
      const i = chart.cursor.idx;
      if (i != null) onPick(i);
    });
  }
  return chart;
}

// A few curves on a shared x axis (a trial's intermediate keys; compared trials).
export function lineChart(el, curves, { height = 280, xLabel = 'step', yLabel = 'value' } = {}) {
  const xs = new Set();
  for (const c of curves) for (const x of c.xs) xs.add(x);
  const xsSorted = Array.from(xs).sort((a, b) => a - b);
  const pos = new Map(xsSorted.map((x, i) => [x, i]));
  const data = [xsSorted];
  for (const c of curves) {
    const ys = new Array(xsSorted.length).fill(null);
    c.xs.forEach((x, i) => { ys[pos.get(x)] = c.ys[i]; });
    data.push(ys);
  }
  const palette = [css('--accent'), css('--best'), css('--ok'), css('--bad'), '#8e6bd8', '#19a2a8', '#c2527a', '#6b7f2a'];
  const opts = {
    width: widthOf(el), height,
    scales: { x: { time: false } },
    axes: [{ ...axisStyle(), label: xLabel }, { ...axisStyle(), label: yLabel }],
    series: [{ label: xLabel }, ...curves.map((c, i) => ({
      label: c.label, stroke: palette[i % palette.length], width: 2, spanGaps: true,
      points: { show: xsSorted.length < 60 },
    }))],
  };
  return new uPlot(opts, data, el);
}

// Trials running at each moment (a step line), under the timeline bars.
export function concurrencyChart(el, starts, ends, { height = 160 } = {}) {
  const evs = [];
  starts.forEach((s, i) => { if (s) { evs.push([s, 1]); evs.push([ends[i] || Date.now(), -1]); } });
  evs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const xs = [], ys = [];
  let n = 0;
  for (const [t, d] of evs) { n += d; xs.push(t / 1000); ys.push(n); }
  const opts = {
    width: widthOf(el), height,
    axes: [axisStyle(), { ...axisStyle(), label: 'running' }],
    series: [{}, { label: 'running trials', stroke: css('--accent'), width: 1.5,
      fill: css('--chart-grid'), paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }],
  };
  return new uPlot(opts, [xs, ys], el);
}

// ---------------------------------------------------------------- canvas charts

function canvas(el, height) {
  const w = widthOf(el);
  const dpr = window.devicePixelRatio || 1;
  const c = document.createElement('canvas');
  c.width = Math.round(w * dpr); c.height = Math.round(height * dpr);
  c.style.width = `${w}px`; c.style.height = `${height}px`;
  el.append(c);
  const ctx = c.getContext('2d');
  ctx.scale(dpr, dpr);
  return { c, ctx, w, h: height };
}

function range(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) if (v != null && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo - 0.5, hi + 0.5];
  const pad = (hi - lo) * 0.04;
  return [lo - pad, hi + pad];
}

function yTicks(ctx, x, top, h, lo, hi, color) {
  ctx.fillStyle = color; ctx.font = '11px system-ui, sans-serif'; ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * (1 - i / 4);
    ctx.fillText(fmt(Number(v.toPrecision(3))), x - 4, top + (h * i) / 4);
  }
}

// Every trial's intermediate curve. curves: [{id, values:[...], status}], best: the best trial's id.
export function manyCurves(el, curves, { height = 320, best = null, stride = 1 } = {}) {
  put(el, );
  const { c, ctx, w, h } = canvas(el, height);
  const L = 56, R = 10, T = 10, B = 24;
  let maxLen = 1;
  let lo = Infinity, hi = -Infinity;
  for (const cv of curves) {
    if (cv.values.length > maxLen) maxLen = cv.values.length;
    for (const v of cv.values) if (v != null) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  if (lo === Infinity) { lo = 0; hi = 1; }
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const pw = w - L - R, ph = h - T - B;
  const X = (i) => L + (maxLen > 1 ? (i / (maxLen - 1)) * pw : pw / 2);  // i: index of a sent point
  const Y = (v) => T + (1 - (v - lo) / (hi - lo)) * ph;
  ctx.strokeStyle = css('--chart-grid'); ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { ctx.beginPath(); ctx.moveTo(L, T + (ph * i) / 4); ctx.lineTo(L + pw, T + (ph * i) / 4); ctx.stroke(); }
  yTicks(ctx, L, T, ph, lo, hi, css('--muted'));
  ctx.textAlign = 'center'; ctx.textBaseline = 'top';
  ctx.fillText('step', L + pw / 2, h - B + 6);
  ctx.fillText(String((maxLen - 1) * stride), L + pw, h - B + 6);
  ctx.fillText('0', L, h - B + 6);
  const groups = [
    { match: (cv) => cv.status !== 'EARLY_STOPPED', color: css('--accent'), alpha: curves.length > 500 ? 0.12 : 0.35 },
    { match: (cv) => cv.status === 'EARLY_STOPPED', color: css('--warn'), alpha: curves.length > 500 ? 0.25 : 0.6 },
  ];
  for (const g of groups) {
    ctx.globalAlpha = g.alpha; ctx.strokeStyle = g.color; ctx.lineWidth = 1;
    ctx.beginPath();
    for (const cv of curves) {
      if (!g.match(cv) || cv.id === best) continue;
      let pen = false;
      const vs = cv.values;
      for (let i = 0; i < vs.length; i++) {
        const v = vs[i];
        if (v == null) { pen = false; continue; }
        if (pen) ctx.lineTo(X(i), Y(v)); else { ctx.moveTo(X(i), Y(v)); pen = true; }
      }
    }
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  const bc = curves.find((cv) => cv.id === best);
  if (bc) {
    ctx.strokeStyle = css('--best'); ctx.lineWidth = 2.5; ctx.beginPath();
    bc.values.forEach((v, i) => { if (v != null) (i ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))); });
    ctx.stroke();
  }
  return c;
}

// Parallel coordinates with brushing. dims: [{name, field, values:[...]}] (numbers or strings);
// colorBy: the values that color the lines; onBrush(filters) gets [{field, op, value}] on mouse-up.
export function parallel(el, dims, colorBy, { height = 340, brushes = {}, onBrush } = {}) {
  put(el, );
  const { c, ctx, w, h } = canvas(el, height);
  const T = 34, B = 26, L = 40, R = 60;
  const n = colorBy.length;
  const axes = dims.map((d, k) => {
    const numeric = d.values.every((v) => v == null || typeof v === 'number');
    let cats = null, lo = 0, hi = 1;
    if (numeric) [lo, hi] = range(d.values);
    else {
      cats = Array.from(new Set(d.values.filter((v) => v != null).map((v) => (typeof v === 'object' ? JSON.stringify(v) : String(v))))).sort();
      lo = -0.5; hi = Math.max(cats.length - 0.5, 0.5);
    }
    const index = cats ? new Map(cats.map((v, i) => [v, i])) : null;
    const x = L + (dims.length > 1 ? (k / (dims.length - 1)) * (w - L - R) : (w - L - R) / 2);
    const pos = (v) => {
      if (v == null) return null;
      const t = cats ? index.get(typeof v === 'object' ? JSON.stringify(v) : String(v)) : v;
      return T + (1 - (t - lo) / (hi - lo)) * (h - T - B);
    };
    return { ...d, x, cats, lo, hi, pos };
  });
  const ys = axes.map((a) => a.values.map(a.pos));
  const [clo, chi] = range(colorBy);
  const state = { brushes: { ...brushes }, drag: null };
  const inBrush = (i) => {
    for (let k = 0; k < axes.length; k++) {
      const b = state.brushes[axes[k].field];
      if (!b) continue;
      const y = ys[k][i];
      if (y == null || y < Math.min(b[0], b[1]) || y > Math.max(b[0], b[1])) return false;
    }
    return true;
  };
  const buckets = 6;
  const colors = [];
  for (let i = 0; i < buckets; i++) colors.push(`hsl(${220 - (i * 190) / (buckets - 1)}, 70%, 52%)`);
  function draw() {
    ctx.clearRect(0, 0, w, h);
    const paths = colors.map(() => []);
    const faded = [];
    for (let i = 0; i < n; i++) {
      if (colorBy[i] == null) continue;
      if (!inBrush(i)) { faded.push(i); continue; }
      const t = (colorBy[i] - clo) / (chi - clo || 1);
      paths[Math.min(buckets - 1, Math.max(0, Math.floor(t * buckets)))].push(i);
    }
    const stroke = (list, color, alpha) => {
      if (!list.length) return;
      ctx.globalAlpha = alpha; ctx.strokeStyle = color; ctx.lineWidth = 1; ctx.beginPath();
      for (const i of list) {
        let pen = false;
        for (let k = 0; k < axes.length; k++) {
          const y = ys[k][i];
          if (y == null) { pen = false; continue; }
          if (pen) ctx.lineTo(axes[k].x, y); else { ctx.moveTo(axes[k].x, y); pen = true; }
        }
      }
      ctx.stroke();
    };
    const alpha = n > 2000 ? 0.18 : n > 300 ? 0.35 : 0.7;
    stroke(faded, css('--muted'), 0.06);
    paths.forEach((list, b) => stroke(list, colors[b], alpha));
    ctx.globalAlpha = 1;
    ctx.font = '11px system-ui, sans-serif';
    for (const a of axes) {
      ctx.strokeStyle = css('--fg'); ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(a.x, T); ctx.lineTo(a.x, h - B); ctx.stroke();
      ctx.fillStyle = css('--fg'); ctx.textAlign = 'center'; ctx.textBaseline = 'bottom';
      ctx.fillText(a.name.length > 22 ? `${a.name.slice(0, 21)}…` : a.name, a.x, T - 14);
      ctx.fillStyle = css('--muted'); ctx.textBaseline = 'middle'; ctx.textAlign = 'left';
      if (a.cats) {
        const step = Math.max(1, Math.ceil(a.cats.length / 12));
        a.cats.forEach((cat, i) => { if (i % step === 0) ctx.fillText(cat.length > 14 ? `${cat.slice(0, 13)}…` : cat, a.x + 4, a.pos(cat)); });
      } else {
        ctx.fillText(fmt(Number(a.hi.toPrecision(3))), a.x + 4, T + 4);
        ctx.fillText(fmt(Number(a.lo.toPrecision(3))), a.x + 4, h - B - 4);
      }
      const b = state.brushes[a.field];
      if (b) {
        ctx.fillStyle = css('--accent'); ctx.globalAlpha = 0.25;
        ctx.fillRect(a.x - 7, Math.min(b[0], b[1]), 14, Math.abs(b[1] - b[0]));
        ctx.globalAlpha = 1;
      }
    }
  }
  draw();
  const axisAt = (x) => axes.findIndex((a) => Math.abs(a.x - x) < 14);
  const local = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  c.style.cursor = 'crosshair';
  c.addEventListener('mousedown', (e) => {
    const [x, y] = local(e);
    const k = axisAt(x);
    if (k < 0) return;
    state.drag = { k, y0: y, moved: false };
    e.preventDefault();
  });
  c.addEventListener('mousemove', (e) => {
    if (!state.drag) return;
    const [, y] = local(e);
    const { k, y0 } = state.drag;
    if (Math.abs(y - y0) > 3) state.drag.moved = true;
    if (state.drag.moved) { state.brushes[axes[k].field] = [y0, Math.max(T, Math.min(h - B, y))]; draw(); }
  });
  window.addEventListener('mouseup', () => {
    if (!state.drag) return;
    const { k, moved } = state.drag;
    state.drag = null;
    if (!moved) delete state.brushes[axes[k].field];
    draw();
    if (onBrush) onBrush(filtersOf(axes, state.brushes, T, h - B), state.brushes);
  });
  return { redraw: draw, brushes: state.brushes };
}

function filtersOf(axes, brushes, top, bottom) {
  const out = [];
  for (const a of axes) {
    const b = brushes[a.field];
    if (!b) continue;
    const yTop = Math.min(b[0], b[1]), yBot = Math.max(b[0], b[1]);
    const val = (y) => a.lo + (1 - (y - top) / (bottom - top)) * (a.hi - a.lo);
    if (a.cats) {
      const inside = a.cats.filter((cat) => { const y = a.pos(cat); return y >= yTop && y <= yBot; });
      out.push({ field: a.field, op: 'in', value: inside.join(',') });
    } else {
      out.push({ field: a.field, op: 'between', value: `${Number(val(yBot).toPrecision(6))},${Number(val(yTop).toPrecision(6))}` });
    }
  }
  return out;
}

// Trials as bars on a time axis (one row per trial, by start time).
export function timelineBars(el, trials, { height = 260 } = {}) {
  put(el, );
  const { c, ctx, w, h } = canvas(el, height);
  const L = 56, R = 10, T = 8, B = 22;
  const rows = trials.filter((t) => t.start).sort((a, b) => a.start - b.start);
  if (!rows.length) { ctx.fillStyle = css('--muted'); ctx.fillText('No trial has started yet.', L, T + 20); return c; }
  const now = Date.now();
  const t0 = rows[0].start;
  let t1 = t0 + 1;
  for (const t of rows) t1 = Math.max(t1, t.end || now);
  const pw = w - L - R, ph = h - T - B;
  const X = (t) => L + ((t - t0) / (t1 - t0)) * pw;
  const rowH = ph / rows.length;
  const colorOf = { SUCCEEDED: css('--ok'), FAILED: css('--bad'), RUNNING: css('--run'), EARLY_STOPPED: css('--warn') };
  const byColor = new Map();
  rows.forEach((t, i) => {
    const col = colorOf[t.status] || css('--muted');
    if (!byColor.has(col)) byColor.set(col, []);
    byColor.get(col).push([X(t.start), T + i * rowH, Math.max(1, X(t.end || now) - X(t.start)), Math.max(1, rowH - (rowH > 3 ? 1 : 0))]);
  });
  for (const [col, rects] of byColor) { ctx.fillStyle = col; for (const r of rects) ctx.fillRect(r[0], r[1], r[2], r[3]); }
  ctx.fillStyle = css('--muted'); ctx.font = '11px system-ui, sans-serif'; ctx.textBaseline = 'top';
  ctx.textAlign = 'left'; ctx.fillText('0 s', L, h - B + 6);
  ctx.textAlign = 'right'; ctx.fillText(`${Math.round((t1 - t0) / 1000)} s`, L + pw, h - B + 6);
  ctx.textAlign = 'right'; ctx.textBaseline = 'middle'; ctx.fillText(`${rows.length} trials`, L - 4, T + ph / 2);
  return c;
}
