// The nextjs peer of gatehouse's benchmark (bench/run.py): the catch-all BFF route the seed app
// would write. Per request: next-auth v4's `getToken` reads and decrypts the session cookie
// (`next-auth.session-token`, JWE dir + A256GCM), the access token goes upstream as
// `Authorization: Bearer`, the browser's other headers pass minus hop-by-hop ones, and both
// bodies stream through `fetch` (request body with duplex "half"; response body handed to
// `Response` as a stream). `req.signal` aborts the upstream fetch when the browser goes away.
import { getToken } from "next-auth/jwt";
import type { NextRequest } from "next/server";

export const dynamic = "force-dynamic";
export const runtime = "nodejs";

const BACKEND = (process.env.BACKEND_URL ?? "http://127.0.0.1:9100").replace(/\/+$/, "");
const SECRET = process.env.NEXTAUTH_SECRET;
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];
const REQUEST_DROP = new Set([...HOP_BY_HOP, "cookie", "authorization", "host", "content-length", "expect"]);
const RESPONSE_DROP = new Set([...HOP_BY_HOP, "set-cookie", "content-encoding"]);

type Context = { params: Promise<{ path: string[] }> };

async function proxy(req: NextRequest, ctx: Context): Promise<Response> {
  const token = await getToken({ req, secret: SECRET });
  const accessToken = token?.access_token ?? token?.accessToken;
  if (typeof accessToken !== "string") {
    return Response.json({ error: "unauthorized" }, { status: 401 });
  }
  const { path } = await ctx.params;
  const url = `${BACKEND}/${path.map(encodeURIComponent).join("/")}${req.nextUrl.search}`;
  const headers = new Headers();
  req.headers.forEach((value, name) => {
    if (!REQUEST_DROP.has(name)) headers.set(name, value);
  });
  headers.set("authorization", `Bearer ${accessToken}`);
  const hasBody = req.method !== "GET" && req.method !== "HEAD" && req.method !== "DELETE";
  let upstream: Response;
  try {
    upstream = await fetch(url, {
      method: req.method,
      headers,
      body: hasBody ? req.body : undefined,
      duplex: "half",
      signal: req.signal,
      redirect: "manual",
      cache: "no-store",
    } as RequestInit & { duplex: "half" });
  } catch {
    return Response.json({ error: "upstream_failed" }, { status: 502 });
  }
  const out = new Headers();
  upstream.headers.forEach((value, name) => {
    if (!RESPONSE_DROP.has(name)) out.set(name, value);
  });
  if (upstream.headers.has("content-encoding")) out.delete("content-length"); // fetch decoded it
  return new Response(upstream.body, { status: upstream.status, headers: out });
}

export { proxy as DELETE, proxy as GET, proxy as PATCH, proxy as POST, proxy as PUT };
