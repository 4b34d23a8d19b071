// Calls to gatehouse. Unsafe requests carry X-CSRF: 1, as gatehouse's README asks of front ends:
// a page on another site cannot add that header without a CORS preflight.

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export function headersFor(method, headers = {}) {
  const all = new Headers(headers);
  if (UNSAFE.has(method)) all.set("X-CSRF", "1");
  return all;
}

// fetch() on gatehouse's own origin; `json` is sent as a JSON body. Never throws on a status.
export async function api(path, { method = "GET", json, headers = {}, signal } = {}) {
  const all = headersFor(method, headers);
  let body;
  if (json !== undefined) {
    all.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  return fetch(path, { method, headers: all, body, signal, credentials: "same-origin" });
}

export async function jsonOf(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// What a user should read for a failed call: gatehouse's errors are {"error", "message"}.
export function describe(status, data) {
  const code = data && data.error ? data.error : `HTTP ${status}`;
  if (status === 401 && code === "unauthorized") return "Signed out: sign in first (401 unauthorized).";
  if (status === 401 && code === "session_expired") return "Signed out: the session expired (401 session_expired).";
  // A 401 gatehouse did not write is the backend's: it refused the session's token.
  if (status === 401 && !(data && data.error)) return "Signed out: the backend refused the session (401).";
  const message = data && data.message ? data.message : "The request failed.";
  return `${message} (${status} ${code})`;
}

export function show(element, text, kind = "ok") {
  element.textContent = text;
  element.dataset.kind = kind;
}
