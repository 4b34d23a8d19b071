// Prints a next-auth v4 session cookie value minted by next-auth's own `encode` (next-auth/jwt),
// for bench/run.py: every peer is sent this one cookie.
//
//     NEXTAUTH_SECRET=... node mint.mjs '{"sub": "bench", "access_token": "..."}' [maxAgeSeconds]
import { encode } from "next-auth/jwt";

const secret = process.env.NEXTAUTH_SECRET;
if (!secret) throw new Error("NEXTAUTH_SECRET is not set");
const token = JSON.parse(process.argv[2] ?? "{}");
const maxAge = Number(process.argv[3] ?? 30 * 24 * 60 * 60);
process.stdout.write(`${await encode({ token, secret, maxAge })}\n`);
