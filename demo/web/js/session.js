// Gatehouse's own session: /api/auth/login, /logout and /session. The page only ever learns
// who is signed in; the tokens stay in gatehouse's HttpOnly cookie, out of JavaScript's reach.

import { api, describe, jsonOf, show } from "./http.js";

export function setupSession() {
  const status = document.getElementById("session-status");
  const cookies = document.getElementById("visible-cookies");
  const form = document.getElementById("sign-in-form");

  // document.cookie as this page's JavaScript reads it, each value shortened.
  function renderCookies() {
    const pairs = document.cookie ? document.cookie.split("; ") : [];
    cookies.textContent = pairs.length
      ? pairs
          .map((pair) => {
            const [name, value = ""] = pair.split(/=(.*)/s);
            return value.length > 24 ? `${name}=${value.slice(0, 16)}… (${value.length} characters)` : pair;
          })
          .join("; ")
      : "(none)";
  }

  function render(user) {
    if (user) show(status, `Signed in as ${user.name} (${user.email})`);
    else show(status, "Signed out", "muted");
    document.body.dataset.signedIn = user ? "yes" : "no";
    renderCookies();
  }

  async function refresh() {
    const answer = await api("/api/auth/session");
    const data = await jsonOf(answer); // read either way: an unread body holds the connection
    render(answer.ok ? data.user : null);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const credentials = {
      username: document.getElementById("username").value,
      password: document.getElementById("password").value,
    };
    const answer = await api("/api/auth/login", { method: "POST", json: credentials });
    const data = await jsonOf(answer);
    if (!answer.ok) {
      show(status, answer.status === 401 ? "Those credentials were not accepted." : describe(answer.status, data), "error");
      return;
    }
    render(data.user);
  });

  document.getElementById("sign-out").addEventListener("click", async () => {
    await jsonOf(await api("/api/auth/logout", { method: "POST" }));
    render(null);
  });

  return { refresh, renderCookies };
}
