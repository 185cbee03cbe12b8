// The operator's actions: resend or cancel the open message, the same on
// each selected row, and on everything the current filter matches through
// the bulk endpoints (after a confirmation that shows the filter sent).

import { api, problem } from './api.js';
import { $, el } from './dom.js';
import { state } from './state.js';
import { currentFilter } from './list.js';
import { failed, refreshSoon } from './refresh.js';

const VERBS = { retry: 'Resend', cancel: 'Cancel' };

function actionPath(id, action, force) {
  return '/api/' + state.kind + '/' + encodeURIComponent(id) + '/' + action + '/' + (force ? '?force=true' : '');
}

export async function act(action, force) {
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

export async function bulkSelected(action, force) {
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

// Shows what a bulk action by filter will send, and waits for Confirm.
export function askByFilter(action, force) {
  const filter = currentFilter();
  const body = Object.assign({}, filter);
  if (force) body.force = true;
  state.pending = { kind: state.kind, action: action, body: body };
  const what = VERBS[action] + (force ? ' (force, sent ones too)' : '') + ' every ' +
    (state.kind === 'contact' ? 'contact message' : 'notification') + ' matching:';
  $('confirm-what').textContent = what;
  $('confirm-filter').textContent = JSON.stringify(body, null, 2);
  $('confirm-path').textContent = 'POST /api/' + state.kind + '/' + action + '/';
  // What the list counts now; the server decides which of them change.
  $('confirm-count').textContent =
    state.count === null ? '' : state.count + ' match now, whatever their status.';
  $('filter-result').textContent = '';
  $('confirm').hidden = false;
  $('confirm-go').focus();
}

export function dismiss() {
  state.pending = null;
  $('confirm').hidden = true;
}

export async function confirmByFilter() {
  const p = state.pending;
  if (!p) return;
  dismiss();
  $('filter-result').textContent = '…';
  let r;
  try {
    r = await api('/api/' + p.kind + '/' + p.action + '/', 'POST', p.body);
  } catch (e) {
    return failed(e);
  }
  const out = $('filter-result');
  out.replaceChildren();
  if (r.ok && r.data) {
    out.dataset.matched = String(r.data.matched);
    out.dataset.changed = String(r.data.changed);
    out.append(el('span', VERBS[p.action] + ': ' + r.data.matched + ' matched, ' + r.data.changed + ' changed'));
  } else {
    delete out.dataset.matched;
    delete out.dataset.changed;
    out.append(el('span', problem(r), 'error'));
  }
  refreshSoon();
}
