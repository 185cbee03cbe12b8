// Keeping the page current: one refresh at a time of the list, the open
// message and the actors' strip, every POLL_MS while the tab is visible and
// at once after a change; an answer for what is no longer shown is dropped.

import { AuthError, api, problem } from './api.js';
import { $ } from './dom.js';
import { state, POLL_MS } from './state.js';
import { listPath, renderRows } from './list.js';
import { loadDetail } from './detail.js';
import { renderHealth } from './health.js';
import { onAuthError, showApp } from './access.js';

export async function refresh() {
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

export function failed(e) {
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

export function refreshSoon() {
  state.generation++;
  refresh().then(schedule);
}
