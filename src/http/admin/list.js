// The list: the filter form as the API's filter (the list's query and the
// bulk actions' body are the same names), the keyset-paged table, and the
// selection of rows.

import { $, el, utc, statusBadge, shorten, localPath } from './dom.js';
import { state, PAGE_SIZE } from './state.js';

function localIso(input) {
  if (!input.value) return null;
  const d = new Date(input.value);
  return isNaN(d.getTime()) ? null : d.toISOString();
}

// The filter the form shows, only the names that hold a value: the API
// refuses a blank one, and a bulk action refuses an empty filter.
export function currentFilter() {
  const f = {};
  const status = $('f-status').value;
  if (status) f.status = status;
  const recipient = $('f-recipient').value.trim();
  if (recipient) f[state.kind === 'contact' ? 'email' : 'to'] = recipient;
  const search = $('f-search').value.trim();
  if (search) f.search = search;
  const after = localIso($('f-after'));
  if (after) f.created_after = after;
  const before = localIso($('f-before'));
  if (before) f.created_before = before;
  return f;
}

export function listPath() {
  if (state.pageUrl) return state.pageUrl;
  const p = new URLSearchParams();
  p.set('page_size', String(PAGE_SIZE));
  // The keyset pager: an empty cursor starts at the newest.
  p.set('cursor', '');
  for (const [name, value] of Object.entries(currentFilter())) p.set(name, value);
  return '/api/' + state.kind + '/?' + p.toString();
}

export function renderRows(page) {
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
  state.count = typeof page.count === 'number' ? page.count + (page.count_capped ? '+' : '') : null;
  $('count').textContent =
    typeof page.count === 'number' ? page.count + (page.count_capped ? '+' : '') + ' in all' : '';
  state.next = localPath(page.next);
  state.previous = localPath(page.previous);
  $('older').disabled = !state.next;
  $('newer').disabled = !state.previous;
  $('select-all').checked = shown.size > 0 && [...shown].every((id) => state.selected.has(id));
  updateSelection();
}

// The selection's count and buttons, and the filter buttons: those stay
// disabled without a filter (the API refuses to change every message).
export function updateSelection() {
  const n = state.selected.size;
  $('selection').textContent = n + ' selected';
  for (const id of ['bulk-retry', 'bulk-force', 'bulk-cancel']) $(id).disabled = n === 0;
  const filtered = Object.keys(currentFilter()).length > 0;
  for (const b of document.querySelectorAll('button.by-filter')) b.disabled = !filtered;
}
