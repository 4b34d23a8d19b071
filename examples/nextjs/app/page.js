import { connection } from "next/server";

import Home from "./home";

// The Supabase project URL and anon key are public by Supabase's design (the browser signs in
// to Supabase itself). They are read when the page is served, so one build runs anywhere; the
// defaults are gatehouse's demo Supabase (`make run`).
export default async function Page() {
  await connection();
  const supabaseUrl = process.env.SUPABASE_URL ?? "http://127.0.0.1:8003";
  const supabaseAnonKey = process.env.SUPABASE_ANON_KEY ?? "demo-anon-key";
  return <Home supabaseUrl={supabaseUrl} supabaseAnonKey={supabaseAnonKey} />;
}
