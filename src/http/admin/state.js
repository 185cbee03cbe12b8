// What the page shows, shared by the modules that render and change it.

export const POLL_MS = 2000;
export const PAGE_SIZE = 50;
export const STATUSES = ['queued', 'sending', 'sent', 'failed', 'cancelled'];

export const state = {
  kind: 'contact',
  // ids of the checked rows of the current kind
  selected: new Set(),
  // the path+query of the page shown, or null for the newest
  pageUrl: null,
  // the list's `count` (a string, `10000+` when capped), or null
  count: null,
  next: null,
  previous: null,
  detailId: null,
  detailHtml: null,
  // the status an action's answer reported, while its note is shown
  resultStatus: null,
  // the bulk action waiting for its confirmation: {action, force, filter}
  pending: null,
  timer: null,
  refreshing: false,
  again: false,
  // bumped whenever what is shown changes, so a late answer is dropped
  generation: 0,
};
