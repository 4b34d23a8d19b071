// Gatehouse beside this app: the browser calls this app's own origin, and Next.js forwards
// /api/proxy/* and /api/chat* to gatehouse. next-auth keeps /api/auth/* for itself.
//
// GATEHOUSE_URL is read when the app is built: `next build` writes the rewrites into
// .next/routes-manifest.json, and `next start` serves what was built.
const gatehouse = (process.env.GATEHOUSE_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "");

/** @type {import("next").NextConfig} */
const nextConfig = {
  async rewrites() {
    return [
      { source: "/api/proxy/:path*", destination: `${gatehouse}/api/proxy/:path*` },
      { source: "/api/chat", destination: `${gatehouse}/api/chat` },
      { source: "/api/chat/:path*", destination: `${gatehouse}/api/chat/:path*` },
    ];
  },
};

export default nextConfig;
