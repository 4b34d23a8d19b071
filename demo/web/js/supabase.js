// The browser's own Supabase session, kept as supabase-js keeps it: signed in with a password
// grant straight to Supabase (not through gatehouse), stored in localStorage under
// sb-<project>-auth-token, refreshed before it expires. Gatehouse gets it per request, as an
// Authorization: Bearer header or as the cookie @supabase/ssr writes.

const REFRESH_MARGIN = 60; // seconds before expiry, as supabase-js refreshes ahead of time
const CHUNK = 3180; // @supabase/ssr's MAX_CHUNK_SIZE

function base64url(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export class SupabaseSession {
  constructor({ supabaseUrl, supabaseAnonKey }) {
    this.url = supabaseUrl.replace(/\/+$/, "");
    this.anonKey = supabaseAnonKey;
    this.storageKey = `sb-${new URL(this.url).hostname.split(".")[0]}-auth-token`;
  }

  get session() {
    try {
      return JSON.parse(localStorage.getItem(this.storageKey));
    } catch {
      return null;
    }
  }

  async grant(type, body) {
    const answer = await fetch(`${this.url}/auth/v1/token?grant_type=${type}`, {
      method: "POST",
      headers: { apikey: this.anonKey, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await answer.json().catch(() => null);
    if (!answer.ok) {
      const message = (data && (data.msg || data.message || data.error_description)) || `HTTP ${answer.status}`;
      throw new Error(message);
    }
    localStorage.setItem(this.storageKey, JSON.stringify(data));
    return data;
  }

  signIn(email, password) {
    return this.grant("password", { email, password });
  }

  async fresh() {
    const session = this.session;
    if (!session) return null;
    if (session.expires_at - Date.now() / 1000 > REFRESH_MARGIN) return session;
    return this.grant("refresh_token", { refresh_token: session.refresh_token });
  }

  // Headers for a gatehouse request: the Bearer token, or none (the cookie is set instead).
  async authorize(transport) {
    const session = await this.fresh();
    this.clearCookie();
    if (!session) return {};
    if (transport === "bearer") return { Authorization: `Bearer ${session.access_token}` };
    this.writeCookie(session);
    return {};
  }

  writeCookie(session) {
    const value = `base64-${base64url(JSON.stringify(session))}`;
    const chunks = [];
    for (let at = 0; at < value.length; at += CHUNK) chunks.push(value.slice(at, at + CHUNK));
    const names = chunks.length === 1 ? [this.storageKey] : chunks.map((_, i) => `${this.storageKey}.${i}`);
    names.forEach((name, i) => {
      document.cookie = `${name}=${chunks[i]}; Path=/; SameSite=Lax; Max-Age=34560000`;
    });
  }

  clearCookie() {
    for (const pair of document.cookie.split("; ")) {
      const name = pair.split("=")[0];
      if (name === this.storageKey || name.startsWith(`${this.storageKey}.`)) {
        document.cookie = `${name}=; Path=/; Max-Age=0`;
      }
    }
  }

  async signOut() {
    const session = this.session;
    localStorage.removeItem(this.storageKey);
    this.clearCookie();
    if (!session) return;
    await fetch(`${this.url}/auth/v1/logout?scope=local`, {
      method: "POST",
      headers: { apikey: this.anonKey, Authorization: `Bearer ${session.access_token}` },
    })
      .then((answer) => answer.text())
      .catch(() => {});
  }
}
