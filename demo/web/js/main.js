// Wires the page together. The only configuration the page gets from gatehouse is the demo
// Supabase's URL and anon key (public by Supabase's design, like NEXT_PUBLIC_SUPABASE_*).

import { setupCalls } from "./calls.js";
import { setupChat } from "./chat.js";
import { show } from "./http.js";
import { setupSession } from "./session.js";
import { SupabaseSession } from "./supabase.js";

async function start() {
  const config = await (await fetch("/demo/config.json")).json();
  const supabase = new SupabaseSession(config);
  const supabaseStatus = document.getElementById("supabase-status");
  const session = setupSession();
  setupCalls();
  const chat = setupChat(supabase, () => session.renderCookies());

  function renderSupabase() {
    const current = supabase.session;
    if (current) show(supabaseStatus, `Signed in to Supabase as ${current.user.email}`);
    else show(supabaseStatus, "Not signed in to Supabase.", "muted");
    session.renderCookies();
  }

  document.getElementById("supabase-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await supabase.signIn(
        document.getElementById("supabase-email").value,
        document.getElementById("supabase-password").value,
      );
      renderSupabase();
      await chat.loadConversations();
    } catch (error) {
      show(supabaseStatus, `Supabase refused the sign-in: ${error.message}`, "error");
    }
  });
  document.getElementById("supabase-sign-out").addEventListener("click", async () => {
    await supabase.signOut();
    chat.reset();
    renderSupabase();
  });

  renderSupabase();
  await Promise.all([session.refresh(), chat.loadConversations()]);
  document.body.dataset.ready = "yes";
}

start();
