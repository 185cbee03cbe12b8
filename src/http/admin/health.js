// The strip of each actor's state, from /healthz.

import { $, el } from './dom.js';

export function renderHealth(h) {
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
