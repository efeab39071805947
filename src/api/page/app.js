// The Lazarus web page: plain JavaScript over the JSON API. The token lives in this tab's
// sessionStorage and travels only in the Authorization header, so no cookie exists for a
// foreign page to ride (no CSRF), and every action is checked by role on the server.
'use strict';

const TOKEN_KEY = 'lazarus.token';
const ROLES = { viewer: 0, operator: 1, admin: 2 };
const FINAL = ['succeeded', 'cancelled', 'rolled_back'];
const WORDS = {
  running: 'Running',
  halted: 'Halted: waiting for resume or rollback',
  waiting_approval: 'Waiting for approval',
  succeeded: 'Succeeded',
  failed: 'Failed',
  rolling_back: 'Rolling back',
  rolled_back: 'Rolled back',
  cancelled: 'Cancelled',
  interrupted: 'Interrupted: nobody drives it; resume continues it',
  pending: 'Not started',
  completed: 'Completed',
  skipped: 'Skipped',
  compensated: 'Undone',
};

let me = null;
let stopFollowing = null;

const $ = (id) => document.getElementById(id);
const can = (role) => me && ROLES[me.role] >= ROLES[role];
const words = (s) => WORDS[s] || String(s || '').replace(/_/g, ' ');

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

// replaceChildren with the absent parts left out (it would print them as "null").
function fill(el, ...nodes) {
  el.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function show(...nodes) {
  $('flash').hidden = true;
  fill($('main'), ...nodes);
}

function flash(message, bad) {
  const el = $('flash');
  el.textContent = message;
  el.className = bad ? 'bad' : '';
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, bad ? 15000 : 5000);
}

function headers(extra) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return Object.assign(token ? { Authorization: 'Bearer ' + token } : {}, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const text = await res.text();
  let data;
  try { data = JSON.parse(text); } catch (_) { data = { error: text }; }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
  }
  if (!res.ok) {
    const err = new Error(data.error || ('HTTP ' + res.status));
    err.status = res.status;
    throw err;
  }
  return data;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return '';
  if (seconds < 90) return Math.round(seconds) + ' s';
  if (seconds < 5400) return Math.round(seconds / 60) + ' min';
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + ' h';
  return (seconds / 86400).toFixed(1) + ' days';
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes, i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function statusCell(status) {
  return h('span', { class: 'status s-' + status, 'data-status': status }, words(status));
}

// An in-page dialog: fields to fill, and optionally a word to type to confirm.
function ask({ title, text, fields, confirmWord, danger, action }) {
  return new Promise((resolve) => {
    const inputs = {};
    const ok = h('button', { class: danger ? 'danger' : 'primary', type: 'submit', id: 'dialog-ok' }, action || 'OK');
    const form = h('form', { class: 'card', id: 'dialog' },
      h('h2', {}, title),
      text ? h('p', {}, text) : null,
      (fields || []).map((f) => {
        inputs[f.name] = h('input', { type: 'text', name: f.name, id: 'dialog-' + f.name, required: f.required });
        return [h('label', { for: 'dialog-' + f.name }, f.label), inputs[f.name]];
      }),
      confirmWord ? [
        h('label', { for: 'dialog-confirm' }, 'Type ' + confirmWord + ' to confirm'),
        (inputs.__confirm = h('input', { type: 'text', id: 'dialog-confirm', autocomplete: 'off' })),
      ] : null,
      h('div', { class: 'actions' }, ok,
        h('button', { type: 'button', id: 'dialog-cancel', onclick: () => { form.remove(); resolve(null); } }, 'Back')));
    // Esc closes the dialog as Back does.
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); form.remove(); resolve(null); }
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (confirmWord && inputs.__confirm.value.trim() !== confirmWord) {
        flash('Type ' + confirmWord + ' exactly to confirm.', true);
        return;
      }
      const values = {};
      for (const f of fields || []) {
        values[f.name] = inputs[f.name].value.trim();
        if (f.required && !values[f.name]) { flash(f.label + ' is required.', true); return; }
      }
      form.remove();
      resolve(values);
    });
    $('main').prepend(form);
    (Object.values(inputs)[0] || ok).focus();
  });
}

// ---- login ----

function loginPage(message) {
  $('nav').hidden = true;
  fill($('who'), );
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', placeholder: 'lzr_…' });
  show(h('form', {
    class: 'card', id: 'login', onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        await start();
      } catch (err) {
        loginPage(err.message);
      }
    },
  },
  h('h1', {}, 'Sign in'),
  message ? h('div', { class: 'error' }, message) : null,
  h('label', { for: 'token' }, 'API token'),
  input,
  h('p', { class: 'hint' }, 'Make one on the server with: lazarus token create --name YOUR-NAME --role viewer|operator|admin. It is kept in this tab only.'),
  h('div', { class: 'actions' }, h('button', { class: 'primary', type: 'submit', id: 'login-submit' }, 'Sign in'))));
  input.focus();
}

async function start() {
  me = await api('GET', '/api/whoami');
  $('nav').hidden = false;
  fill($('who'), 
    h('span', { id: 'identity' }, me.identity + ' (' + me.role + ')'),
    h('button', { id: 'logout', onclick: () => { sessionStorage.removeItem(TOKEN_KEY); me = null; loginPage(); } }, 'Sign out'));
  route();
}

// ---- runs ----

async function runsPage() {
  const filter = h('select', { id: 'status-filter', onchange: () => load() },
    h('option', { value: '' }, 'every status'),
    ['running', 'waiting_approval', 'halted', 'failed', 'succeeded', 'cancelled', 'rolled_back']
      .map((s) => h('option', { value: s }, words(s))));
  const body = h('tbody', { id: 'runs' });
  show(h('h1', {}, 'Runs'),
    h('div', { class: 'actions' }, h('label', { for: 'status-filter' }, 'Show'), filter),
    h('table', {}, h('thead', {}, h('tr', {}, ['Run', 'Workflow', 'Status', 'Target', 'Started', 'Took', 'By', 'Reason'].map((t) => h('th', {}, t)))), body));
  async function load() {
    const q = filter.value ? '&status=' + encodeURIComponent(filter.value) : '';
    const page = await api('GET', '/api/runs?limit=100' + q);
    fill(body, ...page.runs.map((r) => h('tr', { 'data-run': r.id },
      h('td', {}, h('a', { href: '#run/' + encodeURIComponent(r.id) }, r.id)),
      h('td', {}, r.workflow),
      h('td', {}, statusCell(r.active && r.status === 'running' ? 'running' : r.status)),
      h('td', {}, r.target || ''),
      h('td', {}, r.started_at),
      h('td', { class: 'num' }, age(r.duration_seconds)),
      h('td', {}, r.operator),
      h('td', {}, r.reason))));
    if (!page.runs.length) body.append(h('tr', {}, h('td', { colspan: 8 }, 'No runs yet. Start a recovery from Recover, or `lazarus run` on the server.')));
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), 3000);
  stopFollowing = () => clearInterval(timer);
}

// A step's output in a line: its short scalar fields, as NAME: VALUE.
function summary(output) {
  if (output === null || output === undefined) return '';
  if (typeof output !== 'object') return String(output);
  if (output.skipped && output.reason) return output.reason;
  const parts = [];
  for (const [k, v] of Object.entries(output)) {
    if (v === null || typeof v === 'object') continue;
    let text = typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v);
    if (k === 'size' || k.endsWith('_bytes')) text = size(v);
    if (text.length > 60) continue;
    parts.push(k + ': ' + text);
    if (parts.length >= 5) break;
  }
  return parts.join(', ');
}

async function follow(run, onEvent, isFinal) {
  const controller = new AbortController();
  let last = 0;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        const res = await fetch('/api/runs/' + encodeURIComponent(run) + '/events',
          { headers: headers({ 'Last-Event-ID': String(last) }), signal: controller.signal });
        if (!res.ok) throw new Error('HTTP ' + res.status);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let i;
          while ((i = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, i);
            buffer = buffer.slice(i + 2);
            const ev = { event: 'message', data: '' };
            for (const line of block.split('\n')) {
              if (line.startsWith('id:')) last = Number(line.slice(3).trim()) || last;
              else if (line.startsWith('event:')) ev.event = line.slice(6).trim();
              else if (line.startsWith('data:')) ev.data += line.slice(5).trim();
            }
            if (!ev.data) continue;
            try { ev.data = JSON.parse(ev.data); } catch (_) { /* text */ }
            onEvent(ev);
          }
        }
      } catch (_) {
        if (controller.signal.aborted) return;
      }
      if (isFinal()) return;
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => controller.abort();
}

async function runPage(id) {
  let report = null;
  const progress = h('div', { id: 'progress' });
  const top = h('div', { id: 'run-top' });
  const steps = h('tbody', { id: 'steps' });
  show(h('h1', {}, 'Run ', h('span', { id: 'run-id' }, id)), top, progress,
    h('h2', {}, 'Steps'),
    h('table', {}, h('thead', {}, h('tr', {}, ['Step', 'Status', 'Attempts', 'Took', 'Output', 'Error'].map((t) => h('th', {}, t)))), steps));

  function buttons() {
    const s = report.status;
    const out = [];
    const act = (label, role, cls, fn) => {
      if (!can(role)) return;
      out.push(h('button', { class: cls || '', id: 'action-' + label.toLowerCase().replace(/ /g, '-'), onclick: fn }, label));
    };
    const post = async (path, body, done) => {
      try {
        const r = await api('POST', '/api/runs/' + encodeURIComponent(id) + path, body || {});
        flash(r.message || done);
        await refresh();
      } catch (err) { flash(err.message, true); }
    };
    if (s === 'running' && report.active) {
      act('Halt', 'operator', '', async () => {
        if (await ask({ title: 'Halt ' + id + '?', text: 'It stops at the next step boundary; Resume continues it.', action: 'Halt' })) post('/halt', { now: false });
      });
      act('Halt now', 'operator', 'danger', async () => {
        if (await ask({ title: 'Halt ' + id + ' now?', text: 'The running step is interrupted and runs again on resume.', action: 'Halt now', danger: true })) post('/halt', { now: true });
      });
    }
    if (s === 'waiting_approval') {
      act('Approve', 'operator', 'primary', async () => {
        const waiting = report.steps.find((st) => st.status === 'waiting_approval');
        const v = await ask({ title: 'Approve ' + id + '?', text: waiting && waiting.approval_prompt ? waiting.approval_prompt : 'The run continues with the next step.', fields: [{ name: 'comment', label: 'Comment (kept with the approval)' }], action: 'Approve' });
        if (v) post('/approve', { comment: v.comment || null });
      });
    }
    if (['halted', 'failed', 'interrupted'].includes(s) || (s === 'running' && !report.active) || (s === 'waiting_approval' && !report.active)) {
      act('Resume', 'operator', 'primary', async () => {
        if (await ask({ title: 'Resume ' + id + '?', text: 'It continues from its last completed step.', action: 'Resume' })) post('/resume');
      });
    }
    if (!['rolled_back', 'cancelled', 'rolling_back'].includes(s)) {
      act('Roll back', 'admin', 'danger', async () => {
        const v = await ask({ title: 'Roll back ' + id + '?', text: 'The compensations of its completed steps run, newest first.', fields: [{ name: 'reason', label: 'Reason', required: true }], confirmWord: id, danger: true, action: 'Roll back' });
        if (v) post('/rollback', { reason: v.reason });
      });
    }
    if (!FINAL.includes(s) && s !== 'failed') {
      act('Cancel', 'admin', 'danger', async () => {
        if (await ask({ title: 'Cancel ' + id + '?', text: 'It stops for good, without compensation; what it made is cleaned up.', confirmWord: id, danger: true, action: 'Cancel the run' })) post('/cancel');
      });
    }
    return out;
  }

  function render() {
    const s = report.status;
    fill(top, 
      h('p', {}, h('b', {}, report.workflow), ' — ', statusCell(report.active || s !== 'running' ? s : 'interrupted'),
        report.active || FINAL.includes(s) || s === 'failed' ? '' : ' (no process drives it now)'),
      h('p', { class: 'hint' }, 'Started ' + report.started_at + ' by ' + report.operator + ': ' + report.reason),
      Object.keys(report.results || {}).length ? h('p', { id: 'results' }, 'Results: ' + summary(report.results)) : null,
      report.error ? h('div', { class: 'error', id: 'run-error' }, report.error) : null,
      report.next_action ? h('div', { class: 'next', id: 'next-action' }, 'What to do next: ' + report.next_action) : null,
      h('div', { class: 'actions', id: 'actions' }, buttons()));
    fill(steps, ...report.steps.map((st) => h('tr', { 'data-step': st.id },
      h('td', {}, st.id, h('div', { class: 'hint' }, st.activity || '')),
      h('td', {}, statusCell(st.status)),
      h('td', { class: 'num' }, st.attempts === undefined ? '' : String(st.attempts)),
      h('td', { class: 'num' }, age(st.duration_seconds)),
      h('td', {}, summary(st.output)),
      h('td', {}, st.error || ''))));
    if (!report.steps.some((st) => st.status === 'running')) fill(progress, );
  }

  async function refresh() {
    report = await api('GET', '/api/runs/' + encodeURIComponent(id));
    render();
  }

  await refresh();
  let pending = null;
  const stop = await follow(id, (ev) => {
    if (ev.event === 'progress') {
      const p = ev.data;
      const bar = p.total ? h('progress', { max: p.total, value: p.done }) : h('progress', {});
      const rate = p.rate_per_second ? ' — ' + size(p.rate_per_second) + '/s' : '';
      const eta = p.eta_seconds ? ', about ' + age(p.eta_seconds) + ' left' : '';
      const amount = p.unit === 'bytes' ? size(p.done) + (p.total ? ' of ' + size(p.total) : '') : p.done + (p.total ? ' of ' + p.total : '') + ' ' + p.unit;
      fill(progress, h('div', { class: 'card' }, h('b', {}, p.step), ': ', amount, rate, eta, bar, p.message ? h('div', { class: 'hint' }, p.message) : null));
    } else {
      clearTimeout(pending);
      pending = setTimeout(() => refresh().catch(() => {}), 100);
    }
  }, () => report && FINAL.includes(report.status));
  const poll = setInterval(() => refresh().catch(() => {}), 5000);
  stopFollowing = () => { stop(); clearInterval(poll); };
}

// ---- recover ----

async function recoverPage() {
  if (!can('admin')) {
    show(h('h1', {}, 'Recover'), h('div', { class: 'next' }, 'Starting a recovery needs the admin role; you are ' + me.role + '. Ask an admin, or use a token with the admin role.'));
    return;
  }
  const db = h('input', { type: 'text', id: 'rec-database', autocomplete: 'off' });
  const source = h('select', { id: 'rec-source' },
    h('option', { value: 'latest' }, 'the latest VERIFIED backup'),
    h('option', { value: 'backup' }, 'a backup I pick'),
    h('option', { value: 'time' }, 'a point in time (PITR)'));
  const backup = h('select', { id: 'rec-backup' });
  const to = h('input', { type: 'text', id: 'rec-to', placeholder: '2026-11-24T02:14:00Z, lsn:0/3000060, xid:1234, name:before_migration or immediate' });
  const planOut = h('div', { id: 'rec-plan' });
  const cutover = h('select', { id: 'rec-cutover' }, h('option', { value: 'pgbouncer' }, 'pgbouncer (repoint it to the restored database)'), h('option', { value: 'none' }, 'none (leave it for inspection)'));
  const extra = h('textarea', { id: 'rec-params', rows: 3, placeholder: 'pgbouncer_ini=/etc/pgbouncer/pgbouncer.ini' });
  const inPlace = h('input', { type: 'checkbox', id: 'rec-in-place' });
  const reason = h('input', { type: 'text', id: 'rec-reason' });
  const confirmName = h('input', { type: 'text', id: 'rec-confirm', autocomplete: 'off' });
  const startButton = h('button', { class: 'danger', type: 'submit', id: 'rec-start' }, 'Start the recovery');
  let planned = null;
  const pick = h('div', { id: 'rec-pick' });
  const time = h('div', { id: 'rec-time' });

  async function loadBackups() {
    if (!db.value.trim()) return;
    try {
      const list = await api('GET', '/api/backups?database=' + encodeURIComponent(db.value.trim()));
      fill(backup, ...list.backups.map((b) => h('option', { value: b.id },
        b.id + ' — ' + b.status + ' — ' + age(b.age_seconds) + ' old — ' + size(b.size) + (b.drill_rto_seconds ? ' — drill RTO ' + age(b.drill_rto_seconds) : ''))));
      if (!list.backups.length) backup.append(h('option', { value: '' }, 'no backups of ' + db.value.trim()));
    } catch (err) { flash(err.message, true); }
  }
  async function preview() {
    planned = null;
    try {
      const plan = await api('POST', '/api/pitr/plan', { to: to.value.trim() });
      planned = to.value.trim();
      fill(planOut, h('div', { class: 'card', id: 'plan-ok' },
        h('b', {}, 'Plan'), ': base backup ' + plan.backup.id + ', ' + plan.segments + ' WAL segments on timeline ' + plan.timeline + ', stops at ' + (plan.target_time || plan.target) + '.',
        h('div', { class: 'hint' }, 'Covered window: ' + (plan.window.from || '?') + ' to ' + (plan.window.to || '?') + '. Changes after the target are lost.' + (plan.stores_checked ? '' : ' The stores are checked when the run starts.'))));
    } catch (err) {
      fill(planOut, h('div', { class: 'error', id: 'plan-error' }, err.message));
    }
  }
  function sync() {
    pick.hidden = source.value !== 'backup';
    time.hidden = source.value !== 'time';
    inPlace.disabled = source.value === 'time';
  }
  db.addEventListener('change', loadBackups);
  source.addEventListener('change', () => { sync(); if (source.value === 'backup') loadBackups(); });
  to.addEventListener('input', () => { planned = null; fill(planOut, ); });
  pick.append(h('label', { for: 'rec-backup' }, 'Backup'), backup);
  time.append(h('label', { for: 'rec-to' }, 'Recover to'), to,
    h('div', { class: 'actions' }, h('button', { type: 'button', id: 'rec-preview', onclick: preview }, 'Preview the plan')), planOut);

  const form = h('form', { class: 'card', id: 'recover' },
    h('label', { for: 'rec-database' }, 'Database'), db,
    h('label', { for: 'rec-source' }, 'Restore from'), source, pick, time,
    h('label', { for: 'rec-cutover' }, 'Cut traffic over'), cutover,
    h('label', { for: 'rec-params' }, 'More parameters (NAME=VALUE per line; `lazarus workflows` lists them)'), extra,
    h('label', {}, inPlace, ' Restore over the live database instead of beside it (DESTRUCTIVE)'),
    h('label', { for: 'rec-reason' }, 'Reason (kept with the run and in the audit trail)'), reason,
    h('label', { for: 'rec-confirm' }, 'Type the database name to confirm'), confirmName,
    h('div', { class: 'actions' }, startButton));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const database = db.value.trim();
    if (!database) { flash('Name the database to recover.', true); return; }
    if (!reason.value.trim()) { flash('A reason is required.', true); return; }
    if (confirmName.value.trim() !== database) { flash('Type the database name (' + database + ') exactly to confirm.', true); return; }
    const params = { database, cutover: cutover.value };
    for (const line of extra.value.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) params[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    let workflow = 'disaster-recovery';
    if (source.value === 'backup') {
      if (!backup.value) { flash('Pick a backup.', true); return; }
      params.backup_id = backup.value;
    }
    if (source.value === 'time') {
      if (!planned || planned !== to.value.trim()) { flash('Preview the plan first: nothing starts before it is shown.', true); return; }
      workflow = 'pitr';
      params.to = planned;
    }
    if (inPlace.checked) {
      const again = await ask({ title: 'Restore over the live database ' + database + '?', text: 'Its current contents are replaced. There is no restore beside it to cut back to.', confirmWord: 'overwrite ' + database, danger: true, action: 'Overwrite' });
      if (!again) return;
      params.in_place = 'true';
      params.confirm = database;
    }
    startButton.disabled = true;
    try {
      const r = await api('POST', '/api/runs', { workflow, params, reason: reason.value.trim() });
      location.hash = '#run/' + encodeURIComponent(r.run);
    } catch (err) {
      flash(err.message, true);
      startButton.disabled = false;
    }
  });
  show(h('h1', {}, 'Recover a database'), h('p', { class: 'hint' }, 'The backup is restored beside the live database, checked, and only then is traffic cut over. Nothing starts until you confirm.'), form);
  sync();
}

// ---- backups, WAL ----

async function backupsPage() {
  const list = await api('GET', '/api/backups');
  show(h('h1', {}, 'Backups'),
    h('table', { id: 'backups' },
      h('thead', {}, h('tr', {}, ['Backup', 'Database', 'State', 'Age', 'Size', 'Drill RTO', 'Copies'].map((t) => h('th', {}, t)))),
      h('tbody', {}, list.backups.length ? list.backups.map((b) => h('tr', { 'data-backup': b.id },
        h('td', {}, b.id), h('td', {}, b.database), h('td', {}, statusCell(b.status)),
        h('td', { class: 'num' }, age(b.age_seconds)), h('td', { class: 'num' }, size(b.size)),
        h('td', { class: 'num' }, b.drill_rto_seconds ? age(b.drill_rto_seconds) : 'no drill yet'),
        h('td', {}, (b.copies || []).join(', ') + ((b.missing_copies || []).length ? ' (missing: ' + b.missing_copies.join(', ') + ')' : ''))))
        : h('tr', {}, h('td', { colspan: 7 }, 'No backups in the catalog. `lazarus backup --database NAME` makes one.')))));
}

async function walPage() {
  const nodes = [h('h1', {}, 'WAL archive and RPO')];
  try {
    const s = await api('GET', '/api/wal/status');
    nodes.push(h('div', { class: 'card', id: 'wal-status' },
      h('p', {}, h('span', { class: 'status ' + (s.ok ? 's-ok' : 's-bad') }, s.ok ? 'Within the RPO target' : 'RPO target EXCEEDED'),
        s.lag_seconds !== undefined && s.lag_seconds !== null ? ': last archived commit ' + age(s.lag_seconds) + ' ago, target ' + age(s.rpo_seconds) : ''),
      s.message ? h('p', {}, s.message) : null,
      s.warning ? h('div', { class: 'next' }, s.warning) : null));
  } catch (err) {
    nodes.push(h('div', { class: 'error' }, err.message));
  }
  try {
    const c = await api('GET', '/api/wal/check?local=true');
    nodes.push(h('h2', {}, 'Archive check (index)'), h('pre', { id: 'wal-check' }, JSON.stringify(c, null, 1)));
  } catch (err) {
    nodes.push(h('div', { class: 'error' }, err.message));
  }
  show(...nodes);
}

// ---- routing ----

async function route() {
  if (stopFollowing) { stopFollowing(); stopFollowing = null; }
  if (!me) { loginPage(); return; }
  const hash = location.hash.replace(/^#/, '') || 'runs';
  const [page, arg] = hash.split('/');
  try {
    if (page === 'run' && arg) await runPage(decodeURIComponent(arg));
    else if (page === 'recover') await recoverPage();
    else if (page === 'backups') await backupsPage();
    else if (page === 'wal') await walPage();
    else await runsPage();
  } catch (err) {
    if (err.status === 401) loginPage(err.message);
    else show(h('div', { class: 'error' }, err.message));
  }
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  if (sessionStorage.getItem(TOKEN_KEY)) start().catch((err) => loginPage(err.message));
  else loginPage();
});
