// The operator's inbox: lists, detail, actions and the actors' state, all
// through the JSON API of the service that serves this file.
//
// Contact messages are written by strangers. Every value reaches the page
// through textContent or a DOM property, never as markup; the one HTML part
// a mail has is shown in a sandboxed frame without scripts. The page's
// Content-Security-Policy would stop an inline script anyway; this is the
// first line, not the last.
'use strict';

(function () {
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;
  const TOKEN_KEY = 'email-service.api-token';
  const STATUSES = ['queued', 'sending', 'sent', 'failed', 'cancelled'];

  const state = {
    kind: 'contact',
    // ids of the checked rows of the current kind
    selected: new Set(),
    // the path+query of the page shown, or null for the newest
    pageUrl: null,
    detailId: null,
    detailHtml: null,
    // the status an action's answer reported, while its note is shown
    resultStatus: null,
    timer: null,
    refreshing: false,
    again: false,
    // bumped whenever what is shown changes, so a late answer is dropped
    generation: 0,
  };

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  // ----- the API ----------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path, method) {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const resp = await fetch(path, {
      method: method || 'GET',
      headers: headers,
      cache: 'no-store',
      credentials: 'omit',
    });
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (resp.status === 401) throw new AuthError('unauthorized');
    return { status: resp.status, ok: resp.ok, data: data };
  }

  function problem(r) {
    if (r.data && typeof r.data.detail === 'string') return r.status + ': ' + r.data.detail;
    if (r.data && r.data.errors) return r.status + ': ' + JSON.stringify(r.data.errors);
    return 'HTTP ' + r.status;
  }

  // ----- small DOM helpers ------------------------------------------------

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function utc(s) {
    if (!s) return '';
    const d = new Date(s);
    if (isNaN(d.getTime())) return String(s);
    return d.toISOString().replace('T', ' ').slice(0, 19);
  }

  function statusBadge(status) {
    const known = STATUSES.indexOf(status) >= 0;
    return el('span', status, 'badge ' + (known ? 'status-' + status : 'status-unknown'));
  }

  function shorten(s, n) {
    const text = String(s || '').replace(/\s+/g, ' ');
    return text.length > n ? text.slice(0, n - 1) + '…' : text;
  }

  // A link of the API (absolute, from `next`/`previous`) as a same-origin path.
  function localPath(url) {
    if (!url) return null;
    try {
      const u = new URL(url, location.href);
      return u.pathname + u.search;
    } catch (e) {
      return null;
    }
  }

  // ----- access -----------------------------------------------------------

  function showLogin(message) {
    // Nothing stays on screen without a valid token.
    state.generation++;
    $('app').hidden = true;
    $('health').hidden = true;
    $('logout').hidden = true;
    $('rows').replaceChildren();
    $('health').replaceChildren();
    closeDetail();
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('health').hidden = false;
    $('logout').hidden = !token();
  }

  function onAuthError() {
    const had = token();
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(had ? 'That token was refused. Enter a valid API token.' : '');
  }

  // ----- the list ---------------------------------------------------------

  function localIso(input) {
    if (!input.value) return null;
    const d = new Date(input.value);
    return isNaN(d.getTime()) ? null : d.toISOString();
  }

  function listPath() {
    if (state.pageUrl) return state.pageUrl;
    const p = new URLSearchParams();
    p.set('page_size', String(PAGE_SIZE));
    // The keyset pager: an empty cursor starts at the newest.
    p.set('cursor', '');
    const status = $('f-status').value;
    if (status) p.set('status', status);
    const recipient = $('f-recipient').value.trim();
    if (recipient) p.set(state.kind === 'contact' ? 'email' : 'to', recipient);
    const search = $('f-search').value.trim();
    if (search) p.set('search', search);
    const after = localIso($('f-after'));
    if (after) p.set('created_after', after);
    const before = localIso($('f-before'));
    if (before) p.set('created_before', before);
    return '/api/' + state.kind + '/?' + p.toString();
  }

  function renderRows(page) {
    const rows = document.createDocumentFragment();
    const shown = new Set();
    for (const m of page.results || []) {
      shown.add(String(m.id));
      const tr = el('tr');
      tr.dataset.id = String(m.id);
      tr.dataset.uuid = String(m.uuid);
      tr.dataset.status = String(m.status);
      if (String(m.id) === state.detailId) tr.className = 'open';

      const check = el('td', null, 'check');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.className = 'select';
      box.checked = state.selected.has(String(m.id));
      box.setAttribute('aria-label', 'Select message ' + m.id);
      check.append(box);
      tr.append(check);

      tr.append(el('td', m.id, 'num'));
      const st = el('td');
      st.append(statusBadge(m.status));
      tr.append(st);
      if (state.kind === 'contact') {
        const who = el('td', m.name, 'who');
        who.append(el('span', ' <' + (m.email || '') + '>', 'muted'));
        tr.append(who);
        tr.append(el('td', shorten(m.message, 90), 'what'));
      } else {
        tr.append(el('td', m.to, 'who'));
        tr.append(el('td', shorten(m.subject, 90), 'what'));
      }
      tr.append(el('td', utc(m.created_at), 'when'));
      tr.append(el('td', m.retry_count, 'num'));
      rows.append(tr);
    }
    $('rows').replaceChildren(rows);
    $('empty').hidden = shown.size > 0;
    $('count').textContent = typeof page.count === 'number' ? page.count + ' in all' : '';
    state.next = localPath(page.next);
    state.previous = localPath(page.previous);
    $('older').disabled = !state.next;
    $('newer').disabled = !state.previous;
    $('select-all').checked = shown.size > 0 && [...shown].every((id) => state.selected.has(id));
    updateSelection();
  }

  function updateSelection() {
    const n = state.selected.size;
    $('selection').textContent = n + ' selected';
    for (const id of ['bulk-retry', 'bulk-force', 'bulk-cancel']) $(id).disabled = n === 0;
  }

  // ----- the detail pane --------------------------------------------------

  function closeDetail() {
    state.detailId = null;
    state.resultStatus = null;
    state.detailHtml = null;
    $('detail').hidden = true;
    $('d-html').srcdoc = '';
    $('d-fields').replaceChildren();
    $('d-text').textContent = '';
    $('d-result').textContent = '';
    for (const tr of $('rows').querySelectorAll('tr.open')) tr.classList.remove('open');
  }

  function field(dl, name, value) {
    if (value === undefined || value === null || value === '') return;
    dl.append(el('dt', name));
    dl.append(el('dd', typeof value === 'object' ? JSON.stringify(value, null, 2) : value));
  }

  function renderDetail(m) {
    $('detail').hidden = false;
    const contact = state.kind === 'contact';
    $('d-title').textContent = (contact ? 'Contact message ' : 'Notification ') + m.id;

    const dl = document.createDocumentFragment();
    field(dl, 'Status', m.status);
    field(dl, 'UUID', m.uuid);
    if (contact) {
      field(dl, 'Name', m.name);
      field(dl, 'Reply-To', m.email);
    } else {
      field(dl, 'To', m.to);
      field(dl, 'Subject', m.subject);
    }
    field(dl, 'Created', utc(m.created_at));
    field(dl, 'Updated', utc(m.updated_at));
    field(dl, 'Next attempt', utc(m.next_attempt_at));
    field(dl, 'Sent', utc(m.sent_at));
    field(dl, 'Retries', m.retry_count);
    field(dl, 'Last error', m.error_message);
    field(dl, 'Metadata', m.metadata);
    $('d-fields').replaceChildren(dl);
    $('d-text').textContent = contact ? m.message || '' : m.body || '';

    const html = contact ? null : m.html || null;
    $('d-html-box').hidden = !html;
    // Setting srcdoc reloads the frame: only when the part changed.
    if (html !== state.detailHtml) {
      state.detailHtml = html;
      $('d-html').srcdoc = html || '';
    }

    const attempts = Array.isArray(m.attempts) ? m.attempts : [];
    const body = document.createDocumentFragment();
    for (const a of attempts) {
      const tr = el('tr');
      tr.append(el('td', a.number, 'num'));
      tr.append(el('td', utc(a.started_at), 'when'));
      tr.append(el('td', a.outcome || (a.finished_at ? '' : 'in progress')));
      tr.append(el('td', a.smtp_code === null || a.smtp_code === undefined ? '' : a.smtp_code, 'num'));
      tr.append(el('td', [a.smtp_reply, a.error].filter(Boolean).join(' · '), 'reply'));
      tr.append(el('td', a.duration_ms === null || a.duration_ms === undefined ? '' : a.duration_ms, 'num'));
      body.append(tr);
    }
    $('d-attempts').tBodies[0].replaceChildren(body);
    $('d-no-attempts').hidden = attempts.length > 0;

    const events = Array.isArray(m.events) ? m.events : null;
    $('d-events-box').hidden = !events || events.length === 0;
    const list = document.createDocumentFragment();
    for (const ev of events || []) {
      const parts = [utc(ev.at || ev.created_at || ev.timestamp), ev.what || ev.event || ev.type || ev.action];
      if (ev.request_id) parts.push('request ' + ev.request_id);
      if (ev.detail) parts.push(typeof ev.detail === 'string' ? ev.detail : JSON.stringify(ev.detail));
      list.append(el('li', parts.filter(Boolean).join(' · ')));
    }
    $('d-events').replaceChildren(list);

    // An action's "now queued" goes once the message has moved on.
    if (state.resultStatus && m.status !== state.resultStatus) {
      state.resultStatus = null;
      $('d-result').textContent = '';
    }
    $('d-retry').disabled = !(m.status === 'failed' || m.status === 'cancelled');
    $('d-force').disabled = m.status !== 'sent';
    $('d-cancel').disabled = m.status !== 'queued';
    $('detail').dataset.status = String(m.status);
    for (const tr of $('rows').querySelectorAll('tr')) {
      tr.classList.toggle('open', tr.dataset.id === state.detailId);
    }
  }

  async function loadDetail(generation) {
    if (state.detailId === null) return;
    const id = state.detailId;
    const r = await api('/api/' + state.kind + '/' + encodeURIComponent(id) + '/');
    if (generation !== state.generation || id !== state.detailId) return;
    if (r.ok && r.data) renderDetail(r.data);
    else $('d-result').textContent = problem(r);
  }

  // ----- actions ----------------------------------------------------------

  function actionPath(id, action, force) {
    return '/api/' + state.kind + '/' + encodeURIComponent(id) + '/' + action + '/' + (force ? '?force=true' : '');
  }

  async function act(action, force) {
    const id = state.detailId;
    if (id === null) return;
    $('d-result').textContent = '…';
    try {
      const r = await api(actionPath(id, action, force), 'POST');
      state.resultStatus = r.ok && r.data ? r.data.status : null;
      $('d-result').textContent = r.ok ? 'Done: now ' + (r.data && r.data.status) : problem(r);
    } catch (e) {
      return failed(e);
    }
    refreshSoon();
  }

  async function bulk(action, force) {
    const ids = [...state.selected];
    $('bulk-result').textContent = '…';
    let changed = 0;
    const refused = [];
    try {
      for (const id of ids) {
        const r = await api(actionPath(id, action, force), 'POST');
        if (r.ok) changed++;
        else refused.push('#' + id + ' ' + problem(r));
      }
    } catch (e) {
      return failed(e);
    }
    $('bulk-result').textContent =
      changed + ' of ' + ids.length + ' changed' + (refused.length ? '; refused: ' + refused.join('; ') : '');
    state.selected.clear();
    refreshSoon();
  }

  // ----- refreshing -------------------------------------------------------

  function renderHealth(h) {
    const strip = document.createDocumentFragment();
    strip.append(el('span', h.status || 'unknown', 'chip ' + (h.status === 'healthy' ? 'ok' : 'bad')));
    for (const [name, value] of Object.entries(h.checks || {})) {
      strip.append(el('span', name + ': ' + value, 'chip ' + (value === 'ok' ? 'ok' : 'bad')));
    }
    const actors = h.actors || {};
    for (const [name, report] of Object.entries(actors)) {
      if (Array.isArray(report)) {
        report.forEach((r, i) => strip.append(actorChip(name.replace(/s$/, '') + '-' + i, r)));
      } else {
        strip.append(actorChip(name, report));
      }
    }
    $('health').replaceChildren(strip);
  }

  function actorChip(name, report) {
    if (report === null || typeof report !== 'object') {
      return el('span', name + ': ' + report, 'chip bad');
    }
    const parts = [];
    for (const [k, v] of Object.entries(report)) {
      if (k === 'children' && v && typeof v === 'object') {
        const restarts = Object.values(v).reduce((n, c) => n + ((c && c.restarts) || 0), 0);
        parts.push(Object.keys(v).length + ' children, ' + restarts + ' restarts');
      } else if (v !== null && typeof v !== 'object') {
        // Unset values (no Redis error, nothing being sent) say nothing.
        parts.push(k + '=' + v);
      }
    }
    const chip = el('span', null, 'chip actor');
    chip.append(el('b', name));
    chip.append(document.createTextNode(' ' + parts.join(' ')));
    if (report.state) chip.dataset.state = String(report.state);
    return chip;
  }

  async function refresh() {
    if (state.refreshing) {
      state.again = true;
      return;
    }
    state.refreshing = true;
    state.again = false;
    const generation = state.generation;
    try {
      const list = await api(listPath());
      if (generation !== state.generation) return;
      if (!list.ok || !list.data) {
        $('list-error').textContent = 'Could not load the list: ' + problem(list);
      } else {
        $('list-error').textContent = '';
        showApp();
        renderRows(list.data);
      }
      await loadDetail(generation);
      const health = await api('/healthz');
      if (generation === state.generation && health.data) renderHealth(health.data);
    } catch (e) {
      failed(e);
    } finally {
      state.refreshing = false;
    }
    // What changed while this one ran (a click, a filter) is shown now, not
    // at the next tick.
    if (state.again) await refresh();
  }

  function failed(e) {
    if (e instanceof AuthError) {
      onAuthError();
    } else {
      $('list-error').textContent = 'The service did not answer: ' + e.message;
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      if (!document.hidden && $('login').hidden) await refresh();
      schedule();
    }, POLL_MS);
  }

  function refreshSoon() {
    state.generation++;
    refresh().then(schedule);
  }

  // ----- wiring -----------------------------------------------------------

  function setKind(kind) {
    if (kind === state.kind) return;
    state.kind = kind;
    state.selected.clear();
    state.pageUrl = null;
    closeDetail();
    for (const b of document.querySelectorAll('.tab')) {
      b.setAttribute('aria-pressed', String(b.dataset.kind === kind));
    }
    $('col-who').textContent = kind === 'contact' ? 'From' : 'To';
    $('col-what').textContent = kind === 'contact' ? 'Message' : 'Subject';
    $('f-recipient-label').textContent = kind === 'contact' ? 'Sender email' : 'Recipient';
    $('rows').replaceChildren();
    refreshSoon();
  }

  function init() {
    for (const b of document.querySelectorAll('.tab')) {
      b.addEventListener('click', () => setKind(b.dataset.kind));
    }
    let debounce = null;
    const filtersChanged = () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        state.pageUrl = null;
        refreshSoon();
      }, 250);
    };
    $('filters').addEventListener('input', filtersChanged);
    $('filters').addEventListener('change', filtersChanged);
    $('filters').addEventListener('reset', filtersChanged);
    $('filters').addEventListener('submit', (e) => e.preventDefault());

    $('rows').addEventListener('change', (e) => {
      const box = e.target;
      if (!box.classList || !box.classList.contains('select')) return;
      const id = box.closest('tr').dataset.id;
      if (box.checked) state.selected.add(id);
      else state.selected.delete(id);
      updateSelection();
    });
    $('rows').addEventListener('click', (e) => {
      if (e.target.closest('td.check')) return;
      const tr = e.target.closest('tr');
      if (!tr) return;
      state.detailId = tr.dataset.id;
      state.detailHtml = null;
      $('d-result').textContent = '';
      refreshSoon();
    });
    $('select-all').addEventListener('change', () => {
      const on = $('select-all').checked;
      for (const box of $('rows').querySelectorAll('input.select')) {
        box.checked = on;
        const id = box.closest('tr').dataset.id;
        if (on) state.selected.add(id);
        else state.selected.delete(id);
      }
      updateSelection();
    });
    $('older').addEventListener('click', () => {
      state.pageUrl = state.next;
      refreshSoon();
    });
    $('newer').addEventListener('click', () => {
      state.pageUrl = state.previous;
      refreshSoon();
    });

    $('d-close').addEventListener('click', closeDetail);
    $('d-retry').addEventListener('click', () => act('retry', false));
    $('d-force').addEventListener('click', () => act('retry', true));
    $('d-cancel').addEventListener('click', () => act('cancel', false));
    $('bulk-retry').addEventListener('click', () => bulk('retry', false));
    $('bulk-force').addEventListener('click', () => bulk('retry', true));
    $('bulk-cancel').addEventListener('click', () => bulk('cancel', false));

    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const value = $('token').value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $('token').value = '';
      $('login-error').textContent = 'Checking…';
      refreshSoon();
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('');
    });

    refreshSoon();
  }

  document.addEventListener('DOMContentLoaded', init);
})();
