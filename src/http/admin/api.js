// The API: the operator's token (this tab's session storage), the one
// fetch every call goes through, and how a refusal reads. A 401 throws
// AuthError so that whoever called it shows the login and nothing else.

const TOKEN_KEY = 'email-service.api-token';

export class AuthError extends Error {}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// `body`, if given, is sent as JSON.
export async function api(path, method, body) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = 'Bearer ' + t;
  const init = { method: method || 'GET', headers: headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (resp.status === 401) throw new AuthError('unauthorized');
  return { status: resp.status, ok: resp.ok, data: data };
}

// A refused call as one line: `{"detail"}`, or each field's errors.
export function problem(r) {
  if (r.data && typeof r.data.detail === 'string') return r.status + ': ' + r.data.detail;
  if (r.data && r.data.errors && typeof r.data.errors === 'object') {
    const parts = [];
    for (const [name, messages] of Object.entries(r.data.errors)) {
      const text = Array.isArray(messages) ? messages.join(' ') : String(messages);
      parts.push(name === 'non_field_errors' ? text : name + ': ' + text);
    }
    return r.status + ': ' + parts.join('; ');
  }
  return 'HTTP ' + r.status;
}
