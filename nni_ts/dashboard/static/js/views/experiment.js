// One experiment: a header with its actions, then a sub-view (overview, trials, charts, a trial, compare).
// One event stream per experiment page feeds whichever sub-view is open.
import { get, post, follow, exp, getSession } from '../api.js';
import { h, clear, statusBadge, toast, put } from '../dom.js';
import { overviewView } from './overview.js';
import { trialsView } from './trials.js';
import { chartsView } from './charts.js';
import { trialView } from './trial.js';
import { compareView } from './compare.js';

export function experimentView(main, parts, query) {
  const id = parts[1];
  const ctx = { id, info: null, session: null, live: false, readonly: true };
  const head = h('div', { class: 'exp-head' });
  const body = h('div');
  main.append(head, body);
  let sub = null;
  let ready = false;
  let subKey = null;

  const nav = document.getElementById('nav');
  function renderNav(active) {
    const link = (key, label, href) => h('a', { href, class: key === active ? 'active' : null }, label);
    const base = `#/experiments/${encodeURIComponent(id)}`;
    put(nav, link('list', 'Experiments', '#/'), link('overview', 'Overview', base),
      link('trials', 'Trials', `${base}/trials`), link('charts', 'Charts', `${base}/charts`));
  }

  function renderHead() {
    const info = ctx.info || {};
    const canAct = ctx.live && !ctx.readonly;
    const buttons = h('span', { class: 'toolbar' },
      h('button', { class: 'danger', id: 'btn-stop', disabled: !canAct, onclick: stopExperiment }, 'Stop'),
      h('button', { id: 'btn-extend', disabled: !canAct, onclick: () => openDialog('extend') }, 'Extend…'),
      h('button', { id: 'btn-update', disabled: !canAct, onclick: () => openDialog('update') }, 'Update…'),
      h('a', { class: 'button', href: exp(id, '/export?format=csv'), download: `${id}-trials.csv` }, 'CSV'),
      h('a', { class: 'button', href: exp(id, '/export?format=json'), download: `${id}-trials.json` }, 'JSON'));
    put(head, h('div', { class: 'toolbar' },
      h('h1', null, info.name || 'Experiment', ' ', h('span', { class: 'muted mono' }, id)),
      statusBadge(info.status || '…'), h('span', { class: 'spacer' }), buttons));
    if (info.message) head.append(h('p', { class: info.status === 'ERROR' ? 'error' : 'muted' }, info.message));
  }

  async function stopExperiment() {
    if (!confirm(`Stop experiment ${id}? Its running trials are cancelled.`)) return;
    try {
      await post(exp(id, '/stop'));
      toast('Stopping the experiment…');
    } catch (err) { toast(err.message, true); }
  }

  function openDialog(kind) {
    const info = ctx.info || {};
    const cfg = info.config || {};
    const fields = kind === 'extend'
      ? [['maxTrialNumber', 'Max trial number', cfg.maxTrialNumber], ['maxExperimentDuration', 'Max duration', cfg.maxExperimentDuration]]
      : [['trialConcurrency', 'Concurrency', cfg.trialConcurrency], ['maxTrialNumber', 'Max trial number', cfg.maxTrialNumber],
        ['maxExperimentDuration', 'Max duration (e.g. 2h)', cfg.maxExperimentDuration]];
    const inputs = {};
    const form = h('form', { method: 'dialog' }, h('h2', null, kind === 'extend' ? 'Extend the experiment' : 'Update the running experiment'));
    for (const [key, label, value] of fields) {
      inputs[key] = h('input', { name: key, value: value == null ? '' : String(value) });
      form.append(h('div', { class: 'form-row' }, h('label', { for: key }, label), inputs[key]));
    }
    if (kind === 'update') {
      inputs.searchSpace = h('textarea', { name: 'searchSpace' });
      inputs.searchSpace.value = JSON.stringify(cfg.searchSpace || {}, null, 1);
      form.append(h('label', null, 'Search space (JSON)'), inputs.searchSpace);
    }
    const err = h('p', { class: 'error' });
    const dlg = h('dialog', { id: `dlg-${kind}` }, form);
    form.append(err, h('div', { class: 'toolbar' },
      h('button', { type: 'submit', class: 'primary', value: 'ok' }, kind === 'extend' ? 'Extend' : 'Apply'),
      h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const bodyOut = {};
      for (const [key, input] of Object.entries(inputs)) {
        const raw = input.value.trim();
        if (key === 'searchSpace') {
          if (raw && raw !== JSON.stringify(cfg.searchSpace || {}, null, 1)) {
            try { bodyOut.searchSpace = JSON.parse(raw); } catch (x) { err.textContent = `The search space is not valid JSON: ${x.message}`; return; }
          }
          continue;
        }
        const old = cfg[key] == null ? '' : String(cfg[key]);
        if (raw === '' || raw === old) continue;
        bodyOut[key] = /^\d+$/.test(raw) && key !== 'maxExperimentDuration' ? Number(raw) : (/^\d+$/.test(raw) ? Number(raw) : raw);
      }
      if (!Object.keys(bodyOut).length) { err.textContent = 'Nothing changed.'; return; }
      try {
        await post(exp(id, kind === 'extend' ? '/extend' : '/update'), bodyOut);
        dlg.close(); dlg.remove();
        toast(kind === 'extend' ? 'Experiment extended.' : 'Experiment updated.');
        refreshInfo();
      } catch (x) { err.textContent = x.message; }
    });
    document.body.append(dlg);
    dlg.showModal();
  }

  async function refreshInfo() {
    try {
      ctx.info = await get(exp(id));
      ctx.live = !!ctx.info.live;
      renderHead();
      if (sub && sub.info) sub.info(ctx.info);
      return true;
    } catch (err) {
      put(head, h('p', { class: 'error' }, err.message));
      clear(body);
      stop();
      return false;
    }
  }

  function choose(parts2, query2) {
    let key = 'overview';
    if (parts2[2] === 'trials' && parts2[3]) key = `trial:${parts2[3]}`;
    else if (parts2[2] === 'trials') key = 'trials';
    else if (parts2[2] === 'charts') key = 'charts';
    else if (parts2[2] === 'compare') key = 'compare';
    if (sub && key === subKey && sub.query) { sub.query(query2); return; }
    if (sub && sub.destroy) sub.destroy();
    clear(body);
    subKey = key;
    renderNav(key.startsWith('trial:') ? 'trials' : key);
    if (key === 'overview') sub = overviewView(body, ctx);
    else if (key === 'trials') sub = trialsView(body, ctx, query2);
    else if (key === 'charts') sub = chartsView(body, ctx);
    else if (key === 'compare') sub = compareView(body, ctx, query2);
    else sub = trialView(body, ctx, parts2[3]);
    if (ready) sub.load();
  }

  let first = refreshInfo();
  const stop = follow(id, {
    ready: () => {
      const loaded = first || refreshInfo();
      first = null;
      loaded.then((ok) => { if (ok) { ready = true; if (sub) sub.load(); } });
    },
    trial: (t) => sub && sub.trial && sub.trial(t),
    metric: (m) => sub && sub.metric && sub.metric(m),
    experiment: (x) => {
      if (!ctx.info) return;
      Object.assign(ctx.info, x);
      if (x.status && x.status !== 'RUNNING') ctx.live = false;
      renderHead();
      if (sub && sub.experiment) sub.experiment(x);
    },
  });
  getSession().then((s) => { ctx.session = s; ctx.readonly = s.readonly; renderHead(); });
  renderHead();
  choose(parts, query);

  return {
    accepts: (p) => p[0] === 'experiments' && p[1] === id,
    update: (p, q) => choose(p, q),
    destroy() { stop(); if (sub && sub.destroy) sub.destroy(); },
  };
}
