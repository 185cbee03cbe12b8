// Small DOM helpers. Contact messages are written by strangers: every value
// reaches the page through textContent (el) or a DOM property, never as
// markup. The page's Content-Security-Policy would stop an inline script
// anyway; this is the first line, not the last.

import { STATUSES } from './state.js';

export const $ = (id) => document.getElementById(id);

export function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

export function utc(s) {
  if (!s) return '';
  const d = new Date(s);
  if (isNaN(d.getTime())) return String(s);
  return d.toISOString().replace('T', ' ').slice(0, 19);
}

export function statusBadge(status) {
  const known = STATUSES.indexOf(status) >= 0;
  return el('span', status, 'badge ' + (known ? 'status-' + status : 'status-unknown'));
}

export function shorten(s, n) {
  const text = String(s || '').replace(/\s+/g, ' ');
  return text.length > n ? text.slice(0, n - 1) + '…' : text;
}

// A link of the API (absolute, from `next`/`previous`) as a same-origin path.
export function localPath(url) {
  if (!url) return null;
  try {
    const u = new URL(url, location.href);
    return u.pathname + u.search;
  } catch (e) {
    return null;
  }
}
