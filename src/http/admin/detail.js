// The detail pane of one message: its fields, the mail it becomes as the
// service builds it (headers, MIME parts, the text, the HTML part in a
// sandboxed frame without scripts), every attempt with its SMTP reply, and
// what operators did to it (events, with their request ids).

import { api, problem } from './api.js';
import { $, el, utc } from './dom.js';
import { state } from './state.js';

export function closeDetail() {
  state.detailId = null;
  state.resultStatus = null;
  state.detailHtml = null;
  $('detail').hidden = true;
  $('d-html').srcdoc = '';
  $('d-fields').replaceChildren();
  $('d-headers').tBodies[0].replaceChildren();
  $('d-parts').replaceChildren();
  $('d-text').textContent = '';
  $('d-result').textContent = '';
  for (const tr of $('rows').querySelectorAll('tr.open')) tr.classList.remove('open');
}

function field(dl, name, value) {
  if (value === undefined || value === null || value === '') return;
  dl.append(el('dt', name));
  dl.append(el('dd', typeof value === 'object' ? JSON.stringify(value, null, 2) : value));
}

function headerRows(target, headers) {
  const rows = document.createDocumentFragment();
  for (const h of headers || []) {
    const tr = el('tr');
    tr.dataset.name = String(h.name);
    tr.append(el('th', h.name));
    tr.append(el('td', h.value));
    rows.append(tr);
  }
  target.replaceChildren(rows);
}

function renderMail(m, contact) {
  const mail = m.mail && typeof m.mail === 'object' ? m.mail : null;
  $('d-mail-missing').hidden = mail !== null;
  headerRows($('d-headers').tBodies[0], mail ? mail.headers : []);
  const parts = document.createDocumentFragment();
  (mail && Array.isArray(mail.parts) ? mail.parts : []).forEach((headers, i) => {
    const li = el('li');
    li.append(el('span', 'Part ' + (i + 1), 'muted'));
    const table = el('table', null, 'headers');
    table.append(el('tbody'));
    headerRows(table.tBodies[0], headers);
    li.append(table);
    parts.append(li);
  });
  $('d-parts').replaceChildren(parts);
  // The built text part; the stored text if the mail cannot be built.
  const text = mail ? mail.text : contact ? m.message : m.body;
  $('d-text').textContent = text || '';

  const html = mail ? mail.html || null : contact ? null : m.html || null;
  $('d-html-box').hidden = !html;
  // Setting srcdoc reloads the frame: only when the part changed.
  if (html !== state.detailHtml) {
    state.detailHtml = html;
    $('d-html').srcdoc = html || '';
  }
}

function renderAttempts(m) {
  const attempts = Array.isArray(m.attempts) ? m.attempts : [];
  const body = document.createDocumentFragment();
  const blank = (v) => (v === null || v === undefined ? '' : v);
  for (const a of attempts) {
    const tr = el('tr');
    tr.append(el('td', a.number, 'num'));
    tr.append(el('td', utc(a.started_at), 'when'));
    tr.append(el('td', a.outcome || (a.finished_at ? '' : 'in progress')));
    tr.append(el('td', blank(a.smtp_code), 'num'));
    tr.append(el('td', [a.smtp_reply, a.error].filter(Boolean).join(' · '), 'reply'));
    tr.append(el('td', blank(a.duration_ms), 'num'));
    body.append(tr);
  }
  $('d-attempts').tBodies[0].replaceChildren(body);
  $('d-no-attempts').hidden = attempts.length > 0;
}

function renderEvents(m) {
  const events = Array.isArray(m.events) ? m.events : [];
  $('d-no-events').hidden = events.length > 0;
  const list = document.createDocumentFragment();
  for (const ev of events) {
    const li = el('li');
    li.dataset.what = String(ev.what);
    if (ev.request_id) li.dataset.requestId = String(ev.request_id);
    li.append(el('span', utc(ev.at), 'when'));
    li.append(el('b', ' ' + ev.what));
    const notes = [];
    if (ev.from_status) notes.push('from ' + ev.from_status);
    if (ev.force) notes.push('forced');
    if (ev.bulk) notes.push('bulk');
    if (notes.length) li.append(el('span', ' (' + notes.join(', ') + ')', 'muted'));
    if (ev.request_id) li.append(el('span', ' · request ' + ev.request_id, 'request-id'));
    list.append(li);
  }
  $('d-events').replaceChildren(list);
}

export function renderDetail(m) {
  $('detail').hidden = false;
  const contact = state.kind === 'contact';
  $('d-title').textContent = (contact ? 'Contact message ' : 'Notification ') + m.id;

  const dl = document.createDocumentFragment();
  field(dl, 'Status', m.status);
  field(dl, 'UUID', m.uuid);
  if (contact) {
    field(dl, 'Name', m.name);
    field(dl, 'Email', m.email);
  }
  field(dl, 'Created', utc(m.created_at));
  field(dl, 'Updated', utc(m.updated_at));
  field(dl, 'Next attempt', utc(m.next_attempt_at));
  field(dl, 'Sent', utc(m.sent_at));
  field(dl, 'Retries', m.retry_count);
  field(dl, 'Last error', m.error_message);
  field(dl, 'Metadata', m.metadata);
  $('d-fields').replaceChildren(dl);

  renderMail(m, contact);
  renderAttempts(m);
  renderEvents(m);

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

export async function loadDetail(generation) {
  if (state.detailId === null) return;
  const id = state.detailId;
  const r = await api('/api/' + state.kind + '/' + encodeURIComponent(id) + '/');
  if (generation !== state.generation || id !== state.detailId) return;
  if (r.ok && r.data) renderDetail(r.data);
  else $('d-result').textContent = problem(r);
}
