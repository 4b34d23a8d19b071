// next-auth v4, as a typical app has it: a Credentials provider against the backend's login,
// and a `jwt` callback that keeps the backend's tokens in the encrypted session cookie.
//
// Gatehouse reads that cookie (it shares NEXTAUTH_SECRET), forwards the access token to the
// backend, refreshes it when it expires and writes the cookie back. So this app never
// refreshes (two refreshers would race over a rotating refresh token), and its `session`
// callback gives the browser the user only, never a token.
import CredentialsProvider from "next-auth/providers/credentials";

// Server-side only (no NEXT_PUBLIC_ prefix): the browser never learns where the backend is.
const backendUrl = () => (process.env.BACKEND_URL ?? "http://127.0.0.1:8001").replace(/\/+$/, "");

export const authOptions = {
  providers: [
    CredentialsProvider({
      name: "the demo backend",
      credentials: {
        username: { label: "Username", type: "text", placeholder: "demo" },
        password: { label: "Password", type: "password" },
      },
      async authorize(credentials) {
        const answer = await fetch(`${backendUrl()}/auth/login`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ username: credentials?.username, password: credentials?.password }),
          cache: "no-store",
        });
        if (!answer.ok) return null;
        const data = await answer.json();
        return {
          id: data.user.id,
          name: data.user.name,
          email: data.user.email,
          accessToken: data.access_token,
          refreshToken: data.refresh_token,
          accessTokenExpires: Date.now() + data.expires_in * 1000,
        };
      },
    }),
  ],
  session: { strategy: "jwt" },
  callbacks: {
    async jwt({ token, user }) {
      if (user) {
        // Signing in: the seed app's fields (accessTokenExpires in milliseconds).
        return {
          ...token,
          accessToken: user.accessToken,
          refreshToken: user.refreshToken,
          accessTokenExpires: user.accessTokenExpires,
        };
      }
      return token; // gatehouse refreshes an expiring token and writes this cookie back
    },
    async session({ session, token }) {
      session.user = { id: token.sub, name: token.name, email: token.email };
      return session; // no token: /api/auth/session is read by the browser
    },
  },
};
