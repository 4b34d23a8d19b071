// Calls to the backend through /api/proxy: a GET, a JSON POST, an upload with progress, and a
// completion streamed through EventSource.

import { api, describe, headersFor, jsonOf, show } from "./http.js";

async function callMe() {
  const out = document.getElementById("me-result");
  show(out, "…", "muted");
  const answer = await api("/api/proxy/me");
  const data = await jsonOf(answer);
  if (answer.ok) show(out, `The backend sees ${data.user.name} (${data.user.id}, ${data.user.email})`);
  else show(out, describe(answer.status, data), "error");
}

async function postItem(event) {
  event.preventDefault();
  const out = document.getElementById("post-result");
  const title = document.getElementById("item-title").value;
  const answer = await api("/api/proxy/items", { method: "POST", json: { title } });
  const data = await jsonOf(answer);
  if (answer.ok) show(out, `Created item ${data.id}: ${JSON.stringify(data.data)}`);
  else show(out, describe(answer.status, data), "error");
}

// XMLHttpRequest, not fetch: only it reports upload progress.
function upload(event) {
  event.preventDefault();
  const file = document.getElementById("upload-file").files[0];
  const out = document.getElementById("upload-result");
  const bar = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  if (!file) return show(out, "Choose a file first.", "error");
  const setProgress = (value) => {
    bar.value = value;
    percent.textContent = `${value} %`;
  };
  setProgress(0);
  show(out, "Uploading…", "muted");
  const request = new XMLHttpRequest();
  request.open("POST", "/api/proxy/upload");
  headersFor("POST").forEach((value, name) => request.setRequestHeader(name, value));
  request.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) setProgress(Math.floor((100 * e.loaded) / e.total));
  });
  request.addEventListener("load", () => {
    let data = null;
    try {
      data = JSON.parse(request.responseText);
    } catch {}
    if (request.status === 200) {
      setProgress(100);
      const [received] = data.files;
      show(out, `The backend received ${received.filename}: ${received.size} bytes, SHA-256 ${received.sha256}`);
    } else {
      show(out, describe(request.status, data), "error");
    }
  });
  request.addEventListener("error", () => show(out, "The upload failed (network error).", "error"));
  const form = new FormData();
  form.append("file", file);
  request.send(form);
}

function complete(event) {
  event.preventDefault();
  const output = document.getElementById("completion-output");
  const status = document.getElementById("completion-status");
  const prompt = document.getElementById("completion-prompt").value;
  output.textContent = "";
  show(status, "Streaming…", "muted");
  let finished = false;
  const source = new EventSource(`/api/proxy/completion?prompt=${encodeURIComponent(prompt)}`);
  source.addEventListener("delta", (e) => {
    output.append(JSON.parse(e.data).text); // shown as it arrives, token by token
  });
  source.addEventListener("done", () => {
    finished = true;
    source.close();
    show(status, "Done.");
  });
  source.addEventListener("error", async () => {
    source.close(); // EventSource would reconnect: not for a completion
    if (finished) return;
    // EventSource hides the status; the session tells a refusal from a broken stream.
    const session = await api("/api/auth/session");
    await jsonOf(session);
    if (session.status === 401) show(status, "Signed out: sign in first (401 unauthorized).", "error");
    else show(status, "The stream failed.", "error");
  });
}

export function setupCalls() {
  document.getElementById("call-me").addEventListener("click", callMe);
  document.getElementById("post-form").addEventListener("submit", postItem);
  document.getElementById("upload-form").addEventListener("submit", upload);
  document.getElementById("completion-form").addEventListener("submit", complete);
}
