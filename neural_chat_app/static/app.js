// The chat page: plain JavaScript, no build step. Talks to the server's OpenAI-compatible API
// (/v1/chat/completions with SSE streaming) and to /api/* for the logged conversations and feedback.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { conversationId: null, history: [], controller: null, logEnabled: true };

function apiKey() { return localStorage.getItem("neuralchat-api-key"); }

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    const key = prompt("This server needs an API key:");
    if (key) { localStorage.setItem("neuralchat-api-key", key); return api(path, options); }
  }
  return response;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return response.status + " " + response.statusText; }
}

function showError(text) { $("error").textContent = text || ""; $("error").hidden = !text; }

function newId() {
  return (crypto.randomUUID ? crypto.randomUUID() : Date.now().toString(16) + Math.random().toString(16).slice(2))
    .replace(/-/g, "");
}

function setConversation(id) {
  state.conversationId = id;
  history.replaceState(null, "", "#c=" + id);
  localStorage.setItem("neuralchat-conversation", id);
  for (const li of $("conversations").children) li.classList.toggle("active", li.dataset.id === id);
}

function renderMessage(message) {
  const box = document.createElement("div");
  box.className = "message " + message.role;
  box.dataset.role = message.role;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = message.content;
  box.appendChild(text);
  const meta = document.createElement("div");
  meta.className = "meta";
  box.appendChild(meta);
  $("messages").appendChild(box);
  if (message.role === "assistant" && message.id) addFeedback(box, message.id, message.feedback);
  $("messages").scrollTop = $("messages").scrollHeight;
  return box;
}

function addFeedback(box, messageId, current) {
  box.dataset.messageId = messageId;
  const meta = box.querySelector(".meta");
  const group = document.createElement("span");
  group.className = "feedback";
  for (const [value, label, title] of [[1, "\u{1F44D}", "Good reply"], [-1, "\u{1F44E}", "Bad reply"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.title = title;
    button.dataset.feedback = value;
    if (current === value) button.classList.add("chosen");
    button.addEventListener("click", async () => {
      const chosen = button.classList.contains("chosen") ? null : value;
      const response = await api(`/api/messages/${messageId}/feedback`,
        { method: "POST", body: JSON.stringify({ feedback: chosen }) });
      if (!response.ok) return showError(await errorText(response));
      for (const b of group.children) b.classList.toggle("chosen", chosen !== null && b === button);
    });
    group.appendChild(button);
  }
  meta.appendChild(group);
}

async function loadModels() {
  const response = await api("/v1/models");
  if (!response.ok) return showError(await errorText(response));
  const select = $("model");
  select.innerHTML = "";
  for (const model of (await response.json()).data) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id + (model.kind ? ` (${model.kind})` : "");
    option.selected = model.loaded;
    select.appendChild(option);
  }
}

async function loadConversations() {
  const response = await api("/api/conversations");
  if (!response.ok) return;
  const body = await response.json();
  state.logEnabled = body.enabled;
  $("log-disabled").hidden = body.enabled;
  const list = $("conversations");
  list.innerHTML = "";
  for (const conversation of body.data) {
    const li = document.createElement("li");
    li.dataset.id = conversation.id;
    li.textContent = conversation.title || "(untitled)";
    li.title = new Date(conversation.updated_at * 1000).toLocaleString();
    li.classList.toggle("active", conversation.id === state.conversationId);
    li.addEventListener("click", () => openConversation(conversation.id));
    list.appendChild(li);
  }
}

async function openConversation(id) {
  if (state.controller) return;
  setConversation(id);
  $("messages").innerHTML = "";
  state.history = [];
  const response = await api("/api/conversations/" + encodeURIComponent(id));
  if (!response.ok) return; // a new conversation has no log yet
  for (const message of (await response.json()).messages) {
    renderMessage(message);
    state.history.push({ role: message.role, content: message.content });
  }
}

function newConversation() {
  if (state.controller) return;
  setConversation(newId());
  state.history = [];
  $("messages").innerHTML = "";
  $("input").focus();
}

function setStreaming(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  document.body.dataset.streaming = on ? "true" : "false";
}

// Read an SSE body and call onEvent with each parsed "data:" JSON payload.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  showError("");
  if (!state.conversationId) setConversation(newId());
  const userMessage = { role: "user", content: text };
  renderMessage(userMessage);
  const box = renderMessage({ role: "assistant", content: "" });
  box.dataset.state = "streaming";
  const textNode = box.querySelector(".text");
  const messages = [...state.history, userMessage];
  state.controller = new AbortController();
  setStreaming(true);
  let reply = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      signal: state.controller.signal,
      body: JSON.stringify({ model: $("model").value || undefined, messages, stream: true,
                             conversation_id: state.conversationId }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event) => {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        textNode.textContent = reply;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if (event.message_id) addFeedback(box, event.message_id, null);
    });
    box.dataset.state = "done";
  } catch (err) {
    box.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    state.history.push(userMessage, { role: "assistant", content: reply });
    state.controller = null;
    setStreaming(false);
    loadConversations();
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newConversation);

(async function start() {
  await loadModels();
  await loadConversations();
  const fromHash = location.hash.startsWith("#c=") ? location.hash.slice(3) : null;
  const id = fromHash || localStorage.getItem("neuralchat-conversation");
  if (id) await openConversation(id); else newConversation();
})();
