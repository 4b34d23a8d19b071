// The nextjs peer of gatehouse's benchmark (bench/run.py). Nothing but defaults, except that
// the response is not compressed (gatehouse and the other peers relay bodies as they came).
/** @type {import('next').NextConfig} */
const nextConfig = {
  compress: false,
  poweredByHeader: false,
};

export default nextConfig;
