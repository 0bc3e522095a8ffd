// The chat page: plain JavaScript, no build step. Talks to the server's OpenAI-compatible API
// (/v1/chat/completions with SSE streaming) and to /api/* for the logged conversations and feedback.
// The last reply can be regenerated and any reply edited; the log keeps the replaced reply as superseded (the
// preference data of the improve loop), and the page flips between a turn's replies ("< 2/3 >").
// Replies are Markdown: marked (to HTML), highlight.js (code blocks) and DOMPurify (sanitizing), vendored in
// static/vendor/. A reply is untrusted text (a retrieved document can steer the model): every piece of HTML made
// from it goes through DOMPurify, and everything else the page shows (user messages, sources) is set as text.
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

// ---- Markdown replies

const markdown = new marked.Marked({
  gfm: true,
  renderer: {
    code({ text, lang }) {
      const language = ((lang || "").match(/^[\w+#.-]+/) || [""])[0]; // the first word of the fence's info string
      const known = language && hljs.getLanguage(language);
      const result = known ? hljs.highlight(text, { language, ignoreIllegals: true }) : hljs.highlightAuto(text);
      const name = known ? language : result.language || "plaintext";
      return `<pre><code class="hljs language-${name}">${result.value}</code></pre>\n`;
    },
    // An image would be fetched from whatever URL the model wrote (a way to leak the conversation): a link instead.
    image({ href, text }) {
      return href ? `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>` : escapeHtml(text);
    },
  },
});

// What Markdown makes, and no more: no images, media, forms, frames, styles or event handlers.
const SANITIZE = {
  ALLOWED_TAGS: ["a", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2",
    "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul"],
  ALLOWED_ATTR: ["href", "title", "class", "align", "start"],
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ENTITIES[c]);

function renderMarkdown(node, text) {
  node.innerHTML = DOMPurify.sanitize(markdown.parse(text), SANITIZE);
}

// While a reply streams, re-render the text so far at most once per animation frame; finish() renders the end now.
function streamingView(node) {
  let text = "", frame = 0;
  const draw = () => {
    frame = 0;
    renderMarkdown(node, text);
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  return {
    update(full) { text = full; if (!frame) frame = requestAnimationFrame(draw); },
    finish(full) { text = full; if (frame) cancelAnimationFrame(frame); draw(); },
  };
}

// ---- Messages

function renderMessage(message) {
  const box = document.createElement("div");
  box.className = "message " + message.role;
  box.dataset.role = message.role;
  const text = document.createElement("div");
  text.className = "text";
  if (message.role === "assistant") renderMarkdown(text, message.content);
  else text.textContent = message.content;
  box.appendChild(text);
  // a logged reply's reasoning (a thinking model's), kept in its metadata
  if (message.metadata && message.metadata.reasoning) showReasoning(box, message.metadata.reasoning, false);
  const meta = document.createElement("div");
  meta.className = "meta";
  box.appendChild(meta);
  $("messages").appendChild(box);
  if (message.role === "assistant" && message.id) {
    addFeedback(box, message.id, message.feedback);
    addReplyTools(box, message);
  }
  $("messages").scrollTop = $("messages").scrollHeight;
  return box;
}

// The retrieval plugin's sources, under the reply: name and location, the passage in a <details>. Text only.
function renderSources(box, sources) {
  if (!Array.isArray(sources) || !sources.length) return;
  const wrap = document.createElement("div");
  wrap.className = "sources";
  const heading = document.createElement("span");
  heading.textContent = "Sources";
  const list = document.createElement("ol");
  for (const source of sources) {
    const path = String(source.source || "");
    const summary = document.createElement("summary");
    summary.textContent = path.split(/[\\/]/).pop() + (source.location ? " \u2014 " + source.location : "");
    summary.title = path + (typeof source.score === "number" ? ` (score ${source.score})` : "");
    const passage = document.createElement("p");
    passage.textContent = String(source.text || "");
    const details = document.createElement("details");
    details.append(summary, passage);
    const item = document.createElement("li");
    item.appendChild(details);
    list.appendChild(item);
  }
  wrap.append(heading, list);
  box.insertBefore(wrap, box.querySelector(".meta"));
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

// Regenerate (the last reply), edit (any reply), and flip between the replies of a turn that has several.
function addReplyTools(box, message) {
  if (!state.logEnabled) return; // without the log there is no reply to replace
  const tools = document.createElement("span");
  tools.className = "reply-tools";
  const tool = (className, label, title, onClick) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.textContent = label;
    button.title = title;
    button.addEventListener("click", onClick);
    tools.appendChild(button);
    return button;
  };
  const alternatives = message.alternatives || [];
  if (alternatives.length > 1) {
    const at = alternatives.indexOf(message.id);
    const flip = (to) => async () => {
      const response = await api(`/api/messages/${alternatives[to]}/keep`, { method: "POST" });
      if (!response.ok) return showError(await errorText(response));
      await openConversation(state.conversationId);
    };
    tool("previous", "\u2039", "Previous reply", flip(at - 1)).disabled = at <= 0;
    const position = document.createElement("span");
    position.className = "position";
    position.textContent = `${at + 1}/${alternatives.length}`;
    tools.appendChild(position);
    tool("next", "\u203A", "Next reply", flip(at + 1)).disabled = at >= alternatives.length - 1;
  }
  tool("regenerate", "\u21BB Regenerate", "Generate this reply again (the log keeps both)", () => {
    if (state.controller) return;
    box.remove();
    state.history.pop(); // the reply being replaced: the model sees the conversation before it
    send(null, message.id);
  });
  tool("edit", "\u270E Edit", "Write the reply you wanted (logged as the kept reply)", () => editReply(box, message));
  box.querySelector(".meta").appendChild(tools);
}

function editReply(box, message) {
  if (box.querySelector(".edit-box")) return;
  const text = box.querySelector(".text");
  const form = document.createElement("div");
  form.className = "edit-box";
  const area = document.createElement("textarea");
  area.rows = 4;
  area.value = message.content;
  const save = document.createElement("button");
  save.type = "button";
  save.className = "save";
  save.textContent = "Save";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => { form.remove(); text.hidden = false; });
  save.addEventListener("click", async () => {
    const content = area.value.trim();
    if (!content) return;
    const response = await api(`/api/messages/${message.id}/edit`,
      { method: "POST", body: JSON.stringify({ content }) });
    if (!response.ok) return showError(await errorText(response));
    await openConversation(state.conversationId);
  });
  form.append(area, save, cancel);
  text.hidden = true;
  box.insertBefore(form, text);
  area.focus();
}

// ---- Settings of a conversation: system prompt and sampling, kept in localStorage by conversation id

const SETTINGS = { system: "system-prompt", temperature: "temperature", top_p: "top-p", max_tokens: "max-tokens" };
const LAST_SETTINGS = "neuralchat-settings-last";
const settingsKey = (id) => "neuralchat-settings:" + id;

function storedSettings(key) {
  try { return JSON.parse(localStorage.getItem(key)); } catch { return null; }
}

function showSettings(values) {
  for (const [name, id] of Object.entries(SETTINGS)) $(id).value = (values && values[name]) ?? "";
}

function saveSettings() {
  if (!state.conversationId) return;
  const values = {};
  for (const [name, id] of Object.entries(SETTINGS)) values[name] = $(id).value;
  localStorage.setItem(settingsKey(state.conversationId), JSON.stringify(values));
  localStorage.setItem(LAST_SETTINGS, JSON.stringify(values)); // where a new conversation starts from
}

// The request's part of the settings: the system prompt as the first message, sampling values that are set.
function requestSettings() {
  const system = $("system-prompt").value;
  const body = { system: system.trim() ? [{ role: "system", content: system }] : [] };
  for (const [name, parse] of [["temperature", parseFloat], ["top_p", parseFloat], ["max_tokens", parseInt]]) {
    const value = parse($(SETTINGS[name]).value);
    if (Number.isFinite(value)) body[name] = value;
  }
  return body;
}

async function loadModels() {
  const response = await api("/v1/models");
  if (!response.ok) return showError(await errorText(response));
  const select = $("model");
  select.innerHTML = "";
  for (const model of (await response.json()).data) {
    if (model.kind === "embedding") continue;  // /v1/embeddings' model: it does not chat
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
  const saved = storedSettings(settingsKey(id));
  showSettings(saved || storedSettings(LAST_SETTINGS));
  const response = await api("/api/conversations/" + encodeURIComponent(id));
  if (!response.ok) return; // a new conversation has no log yet
  const messages = (await response.json()).messages;
  if (state.conversationId !== id) return; // another conversation was opened meanwhile
  // The system prompt belongs to the settings panel, not the history: each request sends the panel's.
  // A logged conversation this browser has no settings for keeps the system prompt it was logged with.
  if (!saved && messages.length && messages[0].role === "system") $("system-prompt").value = messages[0].content;
  $("messages").innerHTML = "";
  state.history = [];
  for (const message of messages) {
    if (message.role === "system") continue;
    renderMessage(message);
    state.history.push({ role: message.role, content: message.content });
  }
}

function newConversation() {
  if (state.controller) return;
  setConversation(newId());
  showSettings(storedSettings(LAST_SETTINGS));
  state.history = [];
  $("messages").innerHTML = "";
  $("input").focus();
}

function setStreaming(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  document.body.dataset.streaming = on ? "true" : "false";
}

// A thinking model's reasoning, folded under "Thinking" above its answer: open while it streams. Plain text, as
// the model wrote it (no Markdown: it is a draft).
function showReasoning(box, text, open) {
  let details = box.querySelector(".reasoning");
  if (!details) {
    details = document.createElement("details");
    details.className = "reasoning";
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    details.append(summary, document.createElement("div"));
    box.querySelector(".text").before(details);
  }
  details.open = open;
  details.lastChild.textContent = text;
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

// Send `text` as the user's next message; or, with `regenerate` (the id of the last reply, already taken off the
// page and the history), ask for that reply again.
async function send(text, regenerate = null) {
  showError("");
  if (!state.conversationId) setConversation(newId());
  const userMessage = regenerate ? null : { role: "user", content: text };
  if (userMessage) renderMessage(userMessage);
  const box = renderMessage({ role: "assistant", content: "" });
  box.dataset.state = "streaming";
  const view = streamingView(box.querySelector(".text"));
  saveSettings();
  const { system, ...sampling } = requestSettings();
  const messages = [...system, ...state.history, ...(userMessage ? [userMessage] : [])];
  state.controller = new AbortController();
  setStreaming(true);
  let reply = "";
  let reasoning = "";  // a thinking model's reasoning: shown apart, never part of the reply or the history
  let outcome = "done";
  let messageId = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      signal: state.controller.signal,
      body: JSON.stringify({ model: $("model").value || undefined, messages, stream: true, ...sampling,
                             conversation_id: state.conversationId, regenerate: regenerate || undefined }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event) => {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && choice.delta.reasoning_content) {
        reasoning += choice.delta.reasoning_content;
        showReasoning(box, reasoning, true);
      }
      if (choice && choice.delta && choice.delta.content) {
        if (reasoning && !reply) showReasoning(box, reasoning, false);  // the answer has begun: fold it
        reply += choice.delta.content;
        view.update(reply);
      }
      if (event.sources) renderSources(box, event.sources);
      if (event.message_id) messageId = event.message_id;
    });
  } catch (err) {
    outcome = err.name === "AbortError" ? "stopped" : "error";
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    view.finish(reply);
    if (messageId) {
      addFeedback(box, messageId, null);
      addReplyTools(box, { id: messageId, content: reply, alternatives: [] });
    }
    if (userMessage) state.history.push(userMessage);
    state.history.push({ role: "assistant", content: reply });
    state.controller = null;
    setStreaming(false);
    box.dataset.state = outcome;
    loadConversations();
  }
  // A regenerated turn has several replies now: show them as the log keeps them (with the "< n/m >" flip).
  if (regenerate && messageId && outcome === "done") await openConversation(state.conversationId);
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
for (const id of Object.values(SETTINGS)) $(id).addEventListener("input", saveSettings);

(async function start() {
  await loadModels();
  await loadConversations();
  const fromHash = location.hash.startsWith("#c=") ? location.hash.slice(3) : null;
  const id = fromHash || localStorage.getItem("neuralchat-conversation");
  if (id) await openConversation(id); else newConversation();
})();
