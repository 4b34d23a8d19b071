// The chat: /api/chat streams Dify's answer, read event by event from fetch()'s body; Stop
// aborts that request, and gatehouse then tells Dify to stop the task. The conversation list,
// renaming and deleting use the rest of /api/chat.

import { api, describe, jsonOf, show } from "./http.js";
import { events } from "./sse.js";

// `onAuthorized` runs after each request's session is attached (the cookie may have changed).
export function setupChat(supabase, onAuthorized) {
  const list = document.getElementById("conversations");
  const messages = document.getElementById("messages");
  const status = document.getElementById("chat-status");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const stop = document.getElementById("chat-stop");
  const transport = document.getElementById("supabase-transport");
  let conversationId = "";
  let running = null; // the AbortController of the answer being streamed

  async function call(path, options = {}) {
    const headers = await supabase.authorize(transport.value);
    onAuthorized();
    return api(path, { ...options, headers: { ...headers, ...(options.headers || {}) } });
  }

  function turn(role, text) {
    const element = document.createElement("div");
    element.className = `turn ${role}`;
    element.textContent = text;
    messages.append(element);
    scrollDown();
    return element;
  }

  function scrollDown() {
    messages.scrollTop = messages.scrollHeight;
  }

  async function loadConversations() {
    if (!supabase.session) {
      list.replaceChildren();
      return;
    }
    const answer = await call("/api/chat/conversations?limit=50");
    const data = await jsonOf(answer);
    if (!answer.ok) return show(status, describe(answer.status, data), "error");
    list.replaceChildren(...data.data.map(conversationItem));
  }

  function conversationItem(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    if (conversation.id === conversationId) item.classList.add("current");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.name || "(unnamed)";
    open.addEventListener("click", () => openConversation(conversation.id));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "rename";
    rename.textContent = "Rename";
    rename.addEventListener("click", () => startRename(item, conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    item.append(open, rename, remove);
    return item;
  }

  function startRename(item, conversation) {
    const form = document.createElement("form");
    form.className = "rename-form";
    const name = document.createElement("input");
    name.value = conversation.name;
    name.setAttribute("aria-label", "New name");
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Save";
    form.append(name, save);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const answer = await call(`/api/chat/conversations/${conversation.id}/name`, {
        method: "POST",
        json: { name: name.value },
      });
      const data = await jsonOf(answer);
      if (!answer.ok) show(status, describe(answer.status, data), "error");
      await loadConversations();
    });
    item.replaceChildren(form);
    name.focus();
  }

  async function deleteConversation(id) {
    const answer = await call(`/api/chat/conversations/${id}`, { method: "DELETE" });
    const data = await jsonOf(answer);
    if (!answer.ok) return show(status, describe(answer.status, data), "error");
    if (id === conversationId) newConversation();
    await loadConversations();
  }

  async function openConversation(id) {
    conversationId = id;
    messages.replaceChildren();
    const answer = await call(`/api/chat/messages?conversation_id=${encodeURIComponent(id)}&limit=50`);
    const data = await jsonOf(answer);
    if (!answer.ok) return show(status, describe(answer.status, data), "error");
    for (const message of data.data) {
      turn("user", message.query);
      turn("assistant", message.answer);
    }
    show(status, "");
    await loadConversations();
  }

  function newConversation() {
    conversationId = "";
    messages.replaceChildren();
    show(status, "");
    for (const item of list.children) item.classList.remove("current");
  }

  // An answer that failed says why, in the conversation, where the user is looking.
  function failed(element, text) {
    element.classList.add("failed");
    const note = document.createElement("span");
    note.className = "error-note";
    note.textContent = text;
    element.append(note);
    scrollDown();
  }

  function setRunning(controller) {
    running = controller;
    send.disabled = Boolean(controller);
    stop.disabled = !controller;
  }

  async function sendMessage(event) {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || running) return;
    if (!supabase.session) return show(status, "Sign in to Supabase to chat.", "error");
    turn("user", message);
    const answerElement = turn("assistant", "");
    const controller = new AbortController();
    setRunning(controller);
    show(status, "Streaming…", "muted");
    try {
      const answer = await call("/api/chat", {
        method: "POST",
        json: conversationId ? { message, conversationId } : { message },
        signal: controller.signal,
      });
      if (!answer.ok) {
        const data = await jsonOf(answer);
        const retry = answer.headers.get("Retry-After");
        const text = `${describe(answer.status, data)}${retry ? ` Retry after ${retry} s.` : ""}`;
        failed(answerElement, text);
        return show(status, text, "error");
      }
      let ended = false;
      for await (const { data } of events(answer.body)) {
        if (!data) continue; // Dify's "event: ping"
        const payload = JSON.parse(data);
        if (payload.conversation_id) conversationId = payload.conversation_id;
        if (payload.task_id) answerElement.dataset.taskId = payload.task_id;
        if (payload.event === "message" || payload.event === "agent_message") {
          answerElement.append(payload.answer); // token by token, as it arrives
          scrollDown();
        } else if (payload.event === "message_end") {
          ended = true;
        } else if (payload.event === "error") {
          ended = true;
          const text = `Dify: ${payload.message} (${payload.status} ${payload.code})`;
          failed(answerElement, text);
          show(status, text, "error");
        }
      }
      if (!answerElement.classList.contains("failed")) {
        show(status, ended ? "Done." : "The answer was cut short.", ended ? "ok" : "error");
      }
    } catch (error) {
      if (error.name === "AbortError") {
        answerElement.classList.add("stopped");
        show(status, "Stopped.", "muted");
      } else {
        show(status, `The chat failed: ${error.message}`, "error");
      }
    } finally {
      setRunning(null);
      await loadConversations();
    }
  }

  document.getElementById("chat-form").addEventListener("submit", sendMessage);
  stop.addEventListener("click", () => running && running.abort());
  document.getElementById("new-conversation").addEventListener("click", newConversation);
  document.getElementById("reload-conversations").addEventListener("click", loadConversations);
  transport.addEventListener("change", async () => {
    await supabase.authorize(transport.value);
    onAuthorized();
  });

  return { loadConversations, reset: () => (newConversation(), list.replaceChildren()) };
}
