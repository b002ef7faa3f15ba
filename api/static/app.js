/**
 * Entry point of the relaygate chat UI: sign-in (token kept in sessionStorage), the
 * person's session list, and the open conversation fed by its resumable SSE stream.
 */

import { createApi } from "./api.js";
import { Conversation } from "./chat.js";
import { EventStream } from "./sse.js";

const TOKEN_KEY = "relaygate.token";
const SESSION_PAGE = 50;
const HASH_PREFIX = "#session/";

const $ = (id) => document.getElementById(id);

const state = {
  api: null,
  sessions: [],
  nextOffset: null,
  sessionId: null,
  conversation: null,
  stream: null,
  refreshTimer: 0,
  connectionTimer: 0,
};

// ---------------------------------------------------------------- sign-in

async function signIn(token) {
  const api = createApi(token);
  try {
    const me = await api.get("/api/v1/me");
    sessionStorage.setItem(TOKEN_KEY, token);
    state.api = api;
    showApp(me);
  } catch (err) {
    if (err.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(err.status === 401 ? "Invalid or expired token." : err.message, token);
    return;
  }
  await refreshSessions();
  await openFromHash();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  closeConversation();
  state.api = null;
  state.sessions = [];
  $("sessions").replaceChildren();
  showSignIn(message ?? "");
}

function showSignIn(message, token = "") {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("token").value = token;
  $("signin-error").textContent = message;
  $("signin-error").hidden = !message;
  $("token").focus();
}

function showApp(me) {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("whoami").textContent = `${me.user_id} · ${me.tenant_id}`;
  $("whoami").title = `Signed in as ${me.user_id} (${me.kind}) in tenant ${me.tenant_id}`;
  $("input").focus();
}

async function onSignInSubmit(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return showSignIn("Enter a token or API key.");
  $("signin-submit").disabled = true;
  try {
    await signIn(token);
  } finally {
    $("signin-submit").disabled = false;
  }
}

/** Any 401 means the token stopped working: back to the sign-in form. */
function handleError(err) {
  if (err.status === 401) return signOut("Invalid or expired token.");
  showError(err.message);
}

// ---------------------------------------------------------------- sessions list

async function refreshSessions() {
  try {
    const page = await state.api.get(`/api/v1/sessions?limit=${SESSION_PAGE}&offset=0`);
    state.sessions = page.items;
    state.nextOffset = page.next_offset;
    renderSessions();
  } catch (err) {
    handleError(err);
  }
}

async function loadMoreSessions() {
  try {
    const page = await state.api.get(`/api/v1/sessions?limit=${SESSION_PAGE}&offset=${state.nextOffset}`);
    const known = new Set(state.sessions.map((s) => s.session_id));
    state.sessions.push(...page.items.filter((s) => !known.has(s.session_id)));
    state.nextOffset = page.next_offset;
    renderSessions();
  } catch (err) {
    handleError(err);
  }
}

/** Refresh the list soon after activity (titles and order change), at most once a second. */
function scheduleSessionsRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refreshSessions, 1000);
}

function renderSessions() {
  $("sessions").replaceChildren(...state.sessions.map(sessionItem));
  $("sessions-empty").hidden = state.sessions.length > 0;
  $("more-sessions").hidden = state.nextOffset == null;
  const current = state.sessions.find((s) => s.session_id === state.sessionId);
  if (current) $("chat-title").textContent = sessionTitle(current);
}

function sessionItem(session) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "session";
  button.dataset.sessionId = session.session_id;
  if (session.session_id === state.sessionId) button.setAttribute("aria-current", "page");
  const title = document.createElement("span");
  title.className = "session-title";
  title.textContent = sessionTitle(session);
  const when = document.createElement("span");
  when.className = "session-meta";
  when.textContent = describeSession(session);
  button.append(title, when);
  button.addEventListener("click", () => navigateTo(session.session_id));
  const li = document.createElement("li");
  li.append(button);
  return li;
}

function sessionTitle(session) {
  return session.title?.trim() || "New chat";
}

function describeSession(session) {
  const count = session.total_requests ?? 0;
  const when = relativeTime(session.last_request_at ?? session.updated_at ?? session.created_at);
  return `${count} message${count === 1 ? "" : "s"} · ${when}`;
}

function relativeTime(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// ---------------------------------------------------------------- conversation

function sessionFromHash() {
  return location.hash.startsWith(HASH_PREFIX) ? decodeURIComponent(location.hash.slice(HASH_PREFIX.length)) : null;
}

function navigateTo(sessionId) {
  closeSidebar();
  if (sessionId !== state.sessionId) location.hash = HASH_PREFIX + encodeURIComponent(sessionId);
}

function startNewChat() {
  closeSidebar();
  if (sessionFromHash()) history.pushState(null, "", location.pathname + location.search);
  showNewChat();
}

async function openFromHash() {
  const sessionId = sessionFromHash();
  if (sessionId === state.sessionId && state.conversation) return;
  if (sessionId) await openSession(sessionId);
  else showNewChat();
}

function showNewChat() {
  closeConversation();
  $("chat-title").textContent = "New chat";
  renderSessions();
  $("input").focus();
}

async function openSession(sessionId) {
  closeConversation();
  const turns = document.createElement("div");
  $("messages").append(turns);
  const conversation = new Conversation(turns, {
    scroller: $("messages"), onCancel: cancelRequest, onDecide: decideToolCall,
  });
  state.sessionId = sessionId;
  state.conversation = conversation;
  hideError();
  $("chat-title").textContent = "Chat"; // until the session list names it
  renderSessions();
  try {
    const page = await state.api.get(`/api/v1/sessions/${encodeURIComponent(sessionId)}/requests?limit=100`);
    if (state.conversation !== conversation) return null; // another chat was opened meanwhile
    conversation.loadSnapshot(page.items);
  } catch (err) {
    if (state.conversation === conversation) handleError(err);
    return null;
  }
  startStream(conversation, sessionId);
  return conversation;
}

function closeConversation() {
  state.stream?.close();
  state.stream = null;
  state.conversation = null;
  state.sessionId = null;
  $("messages").replaceChildren();
  showConnection("open");
}

function startStream(conversation, sessionId) {
  state.stream = new EventStream({
    url: `/api/v1/sessions/${encodeURIComponent(sessionId)}/stream`,
    headers: state.api.authHeaders,
    onEvent: (event) => onStreamEvent(conversation, event),
    onStatus: showConnection,
    onFatal: (err) => handleError({ status: err.status, message: "The live stream of this chat is not available." }),
  });
}

function onStreamEvent(conversation, { id, event, data }) {
  let envelope;
  try {
    envelope = JSON.parse(data);
  } catch {
    return; // not one of ours (e.g. a proxy's message); nothing to show
  }
  conversation.applyEvent({ id, event, data: envelope });
  if (event === "request.accepted" || event === "done") scheduleSessionsRefresh();
}

async function cancelRequest(requestId) {
  try {
    await state.api.post(`/api/v1/requests/${encodeURIComponent(requestId)}/cancel`);
  } catch (err) {
    handleError(err);
    throw err;
  }
}

async function decideToolCall(requestId, callId, approve) {
  try {
    await state.api.post(
      `/api/v1/requests/${encodeURIComponent(requestId)}/approvals/${encodeURIComponent(callId)}`,
      { approve, reason: approve ? "" : "denied in the web UI" },
    );
  } catch (err) {
    handleError(err);
    throw err;
  }
}

// ---------------------------------------------------------------- composer

async function onSend(event) {
  event.preventDefault();
  const input = $("input");
  const content = input.value.trim();
  if (!content) return;
  input.value = "";
  autosize();
  hideError();
  // Captured now: the person may open another chat before the gateway answers.
  const target = state.sessionId
    ? { sessionId: state.sessionId, conversation: state.conversation }
    : await createSession();
  if (!target) {
    input.value = content;
    return;
  }
  const { sessionId, conversation } = target;
  const pendingId = conversation.addPending(content);
  try {
    const accepted = await state.api.post("/api/v1/requests/web", { content, session_id: sessionId });
    conversation.confirmPending(pendingId, accepted.request_id);
  } catch (err) {
    conversation.failPending(pendingId, err.message);
    handleError(err);
  }
}

/** A new chat gets its session on the first message, so empty chats are never stored. */
async function createSession() {
  let session;
  try {
    session = await state.api.post("/api/v1/sessions", { integration_type: "web" });
  } catch (err) {
    handleError(err);
    return null;
  }
  state.sessions.unshift(session);
  history.replaceState(null, "", HASH_PREFIX + encodeURIComponent(session.session_id));
  const conversation = await openSession(session.session_id);
  return conversation && { sessionId: session.session_id, conversation };
}

function onComposerKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

// ---------------------------------------------------------------- chrome

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

/** The stream's state appears only if it lasts, so routine resumes stay quiet. */
function showConnection(status) {
  clearTimeout(state.connectionTimer);
  if (status === "open") {
    $("connection").textContent = "";
    return;
  }
  const text = status === "connecting" ? "Connecting…" : "Reconnecting…";
  state.connectionTimer = setTimeout(() => {
    $("connection").textContent = text;
  }, 1500);
}

function openSidebar() {
  document.body.classList.add("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "true");
  $("scrim").hidden = false;
  $("new-chat").focus();
}

function closeSidebar() {
  if (!document.body.classList.contains("sidebar-open")) return;
  const hadFocus = $("sidebar").contains(document.activeElement);
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
  $("scrim").hidden = true;
  if (hadFocus) $("toggle-sidebar").focus();
}

function bindUi() {
  $("signin-form").addEventListener("submit", onSignInSubmit);
  $("composer").addEventListener("submit", onSend);
  $("input").addEventListener("keydown", onComposerKey);
  $("input").addEventListener("input", autosize);
  $("new-chat").addEventListener("click", startNewChat);
  $("more-sessions").addEventListener("click", loadMoreSessions);
  $("sign-out").addEventListener("click", () => signOut());
  $("error-close").addEventListener("click", hideError);
  $("toggle-sidebar").addEventListener("click", () =>
    document.body.classList.contains("sidebar-open") ? closeSidebar() : openSidebar(),
  );
  $("scrim").addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeSidebar();
  });
  window.addEventListener("hashchange", () => state.api && openFromHash());
  window.addEventListener("online", () => state.stream?.reconnectNow());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") state.stream?.reconnectNow();
  });
}

function boot() {
  bindUi();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn("");
}

boot();
