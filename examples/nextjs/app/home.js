"use client";

import { signIn, signOut, useSession } from "next-auth/react";
import { useRef, useState } from "react";

// Unsafe requests carry X-CSRF: 1, as gatehouse's README asks of front ends.
const UNSAFE = { "Content-Type": "application/json", "X-CSRF": "1" };

async function show(answer) {
  const text = await answer.text();
  return `${answer.status} ${text}`;
}

export default function Home({ supabaseUrl, supabaseAnonKey }) {
  const { data: session, status } = useSession();
  const [backendUser, setBackendUser] = useState("");
  const [posted, setPosted] = useState("");
  const [supabase, setSupabase] = useState(null); // the browser's own Supabase session
  const [answer, setAnswer] = useState("");
  const [completion, setCompletion] = useState("");
  const [completionState, setCompletionState] = useState("idle");
  const [chatState, setChatState] = useState("idle");
  const abort = useRef(null);

  if (status === "loading") return <p>Loading…</p>;
  if (status !== "authenticated") {
    return (
      <main>
        <h1>gatehouse beside Next.js</h1>
        <p id="signed-out">Not signed in.</p>
        <button id="sign-in" onClick={() => signIn()}>Sign in</button>
      </main>
    );
  }

  async function callMe() {
    const res = await fetch("/api/proxy/me");
    if (!res.ok) return setBackendUser(await show(res));
    const { user } = await res.json();
    setBackendUser(`${user.name} (${user.id})`);
  }

  async function postItem() {
    const res = await fetch("/api/proxy/items", {
      method: "POST",
      headers: UNSAFE,
      body: JSON.stringify({ title: "from Next.js" }),
    });
    setPosted(await show(res));
  }

  // Server-Sent Events through the rewrite, with the next-auth cookie: EventSource.
  function complete() {
    setCompletion("");
    setCompletionState("streaming");
    const source = new EventSource("/api/proxy/completion?prompt=Next.js");
    source.addEventListener("delta", (e) => setCompletion((text) => text + JSON.parse(e.data).text));
    source.addEventListener("done", () => {
      source.close();
      setCompletionState("done");
    });
    source.addEventListener("error", () => {
      source.close();
      setCompletionState((state) => (state === "done" ? state : "failed"));
    });
  }

  async function supabaseSignIn() {
    const res = await fetch(`${supabaseUrl}/auth/v1/token?grant_type=password`, {
      method: "POST",
      headers: { apikey: supabaseAnonKey, "Content-Type": "application/json" },
      body: JSON.stringify({ email: "demo@example.com", password: "demo" }),
    });
    const data = await res.json();
    if (res.ok) setSupabase(data);
    else setChatState(`Supabase refused the sign-in: ${data.msg ?? data.message ?? res.status}`);
  }

  async function chat() {
    abort.current = new AbortController();
    setAnswer("");
    setChatState("streaming");
    try {
      const res = await fetch("/api/chat", {
        method: "POST",
        headers: { ...UNSAFE, Authorization: `Bearer ${supabase.access_token}` },
        body: JSON.stringify({ message: "hello from Next.js" }),
        signal: abort.current.signal,
      });
      if (!res.ok) return setChatState(await show(res));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value;
        const events = buffered.split("\n\n");
        buffered = events.pop();
        for (const event of events) {
          const data = event.split("\n").find((line) => line.startsWith("data: "));
          if (!data) continue;
          const payload = JSON.parse(data.slice(6));
          if (payload.event === "message") setAnswer((text) => text + payload.answer);
        }
      }
      setChatState("done");
    } catch (error) {
      setChatState(error.name === "AbortError" ? "stopped" : `failed: ${error.message}`);
    }
  }

  return (
    <main>
      <h1>gatehouse beside Next.js</h1>
      <p>
        Signed in with next-auth as <strong id="nextauth-user">{session.user.name}</strong>{" "}
        <button id="sign-out" onClick={() => signOut()}>Sign out</button>
      </p>
      <h2>The backend, through gatehouse</h2>
      <button id="call-me" onClick={callMe}>GET /api/proxy/me</button>
      <p>The backend sees: <span id="backend-user">{backendUser}</span></p>
      <button id="post-item" onClick={postItem}>POST /api/proxy/items</button>
      <pre id="posted">{posted}</pre>
      <button id="complete" onClick={complete}>Stream a completion (EventSource)</button>
      <p id="completion-state">{completionState}</p>
      <p id="completion">{completion}</p>
      <h2>Chat, through gatehouse to Dify</h2>
      {supabase ? (
        <p id="supabase-user">Supabase: {supabase.user.email}</p>
      ) : (
        <button id="supabase-sign-in" onClick={supabaseSignIn}>Sign in to Supabase</button>
      )}
      <button id="chat-send" disabled={!supabase || chatState === "streaming"} onClick={chat}>Send “hello”</button>{" "}
      <button id="chat-stop" disabled={chatState !== "streaming"} onClick={() => abort.current?.abort()}>Stop</button>
      <p id="chat-state">{chatState}</p>
      <p id="chat-answer">{answer}</p>
    </main>
  );
}
