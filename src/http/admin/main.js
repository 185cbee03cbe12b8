// The operator's inbox: wires the page's controls to the modules that own
// them (api.js: token and calls; list.js: filters and table; detail.js:
// the open message; actions.js: resend, cancel, bulk; health.js: the
// actors' strip; refresh.js: keeping it all current; access.js: login).

import { setToken } from './api.js';
import { $ } from './dom.js';
import { state } from './state.js';
import { updateSelection } from './list.js';
import { closeDetail } from './detail.js';
import { act, askByFilter, bulkSelected, confirmByFilter, dismiss } from './actions.js';
import { refreshSoon } from './refresh.js';
import { showLogin } from './access.js';

function setKind(kind) {
  if (kind === state.kind) return;
  state.kind = kind;
  state.selected.clear();
  state.pageUrl = null;
  closeDetail();
  dismiss();
  for (const b of document.querySelectorAll('.tab')) {
    b.setAttribute('aria-pressed', String(b.dataset.kind === kind));
  }
  $('col-who').textContent = kind === 'contact' ? 'From' : 'To';
  $('col-what').textContent = kind === 'contact' ? 'Message' : 'Subject';
  $('f-recipient-label').textContent = kind === 'contact' ? 'Sender email' : 'Recipient';
  $('rows').replaceChildren();
  refreshSoon();
}

function wireFilters() {
  let debounce = null;
  const filtersChanged = () => {
    // A confirmation shows the filter it will send: a changed one voids it.
    dismiss();
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.pageUrl = null;
      updateSelection();
      refreshSoon();
    }, 250);
  };
  $('filters').addEventListener('input', filtersChanged);
  $('filters').addEventListener('change', filtersChanged);
  $('filters').addEventListener('reset', filtersChanged);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
}

function wireTable() {
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
}

function wireActions() {
  $('d-close').addEventListener('click', closeDetail);
  $('d-retry').addEventListener('click', () => act('retry', false));
  $('d-force').addEventListener('click', () => act('retry', true));
  $('d-cancel').addEventListener('click', () => act('cancel', false));
  $('bulk-retry').addEventListener('click', () => bulkSelected('retry', false));
  $('bulk-force').addEventListener('click', () => bulkSelected('retry', true));
  $('bulk-cancel').addEventListener('click', () => bulkSelected('cancel', false));
  $('filter-retry').addEventListener('click', () => askByFilter('retry', false));
  $('filter-force').addEventListener('click', () => askByFilter('retry', true));
  $('filter-cancel').addEventListener('click', () => askByFilter('cancel', false));
  $('confirm-go').addEventListener('click', confirmByFilter);
  $('confirm-back').addEventListener('click', dismiss);
}

function wireAccess() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    setToken(value);
    $('token').value = '';
    $('login-error').textContent = 'Checking…';
    refreshSoon();
  });
  $('logout').addEventListener('click', () => {
    setToken(null);
    showLogin('');
  });
}

function init() {
  for (const b of document.querySelectorAll('.tab')) {
    b.addEventListener('click', () => setKind(b.dataset.kind));
  }
  wireFilters();
  wireTable();
  wireActions();
  wireAccess();
  updateSelection();
  refreshSoon();
}

// Module scripts run after the document is parsed.
init();
