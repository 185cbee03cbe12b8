// Access: the login form when the service wants a token, and what is
// hidden without one. Nothing stays on screen without a valid token.

import { token, setToken } from './api.js';
import { $ } from './dom.js';
import { state } from './state.js';
import { closeDetail } from './detail.js';

export function showLogin(message) {
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

export function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('health').hidden = false;
  $('logout').hidden = !token();
}

export function onAuthError() {
  const had = token();
  setToken(null);
  showLogin(had ? 'That token was refused. Enter a valid API token.' : '');
}
