/**
 * One open conversation: per-request state built from the /requests snapshot and the
 * session's SSE events (attempts, retries, resets, deliveries), rendered as chat turns.
 * Text only ever reaches the DOM through textContent or the safe Markdown renderer.
 */

import { renderMarkdown } from "./markdown.js";
import { applyToolEvent, awaitingApproval, renderSteps, stepsFromRows } from "./tools.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUS_BY_EVENT = {
  "run.completed": "completed",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
};

/** Stream ids ("ms-seq") compare as numbers, never as text. */
function compareIds(a, b) {
  const [am, as = 0] = a.split("-").map(Number);
  const [bm, bs = 0] = b.split("-").map(Number);
  return am - bm || as - bs;
}

export class Conversation {
  /**
   * Renders into its own `listEl` (so a conversation closed while a send was in flight
   * only touches a detached node) inside the scrolling `scroller`. `onCancel(requestId)`
   * is called when the person presses a Cancel button, `onDecide(requestId, callId, approve)`
   * when they approve or deny a tool call; both return promises.
   */
  constructor(listEl, { scroller, onCancel, onDecide }) {
    this.listEl = listEl;
    this.scroller = scroller;
    this.onCancel = onCancel;
    this.onDecide = onDecide;
    this.requests = new Map();
    this.lastId = "";
    this.dirty = new Set();
    this.frame = 0;
  }

  /**
   * Requests as stored in Postgres, oldest first. The session stream replays from its
   * start and rebuilds each reply it still holds from that attempt's run.started on.
   */
  loadSnapshot(items) {
    for (const item of items) this.applySnapshotItem(item, false);
  }

  /** A message the person just sent, shown before the gateway has answered. */
  addPending(content) {
    const req = this.upsert(`pending-${crypto.randomUUID()}`, { content, status: "sending" });
    this.markDirty(req);
    return req.id;
  }

  /** Give a pending message its real id, or drop it if the stream already showed it. */
  confirmPending(pendingId, requestId) {
    const pending = this.requests.get(pendingId);
    if (!pending) return; // adopted by its request.accepted event already
    this.requests.delete(pendingId);
    if (this.requests.has(requestId)) return pending.view.root.remove();
    pending.id = requestId;
    if (pending.status === "sending") pending.status = "queued";
    this.requests.set(requestId, pending);
    this.markDirty(pending);
  }

  failPending(pendingId, message) {
    const req = this.requests.get(pendingId);
    if (!req) return;
    Object.assign(req, { status: "failed", error: message });
    this.markDirty(req);
  }

  /** Apply one SSE event: {id, event, data} with data already parsed from JSON. */
  applyEvent({ id, event, data: envelope }) {
    if (id && this.lastId && compareIds(id, this.lastId) <= 0) return; // already applied
    if (id) this.lastId = id;
    const data = envelope.data ?? {};
    if (event === "stream.reset") return this.applyReset(data.requests ?? []);
    if (!envelope.request_id) return;
    if (event === "request.accepted") this.adoptPending(envelope.request_id, data.content);
    const req = this.upsert(envelope.request_id, { content: "" }); // request.accepted fills it in
    const attempt = envelope.attempt ?? 1;
    if (attempt < req.attempt) return; // a late event from an earlier attempt
    if (attempt > req.attempt) startAttempt(req, attempt, false);
    applyToRequest(req, event, data);
    this.markDirty(req);
  }

  /** The client missed events: the snapshot replaces those requests, tokens continue it. */
  applyReset(items) {
    for (const item of items) this.applySnapshotItem(item, true);
  }

  /** The stream can announce a request before its POST has answered: reuse that turn. */
  adoptPending(requestId, content) {
    if (this.requests.has(requestId)) return;
    const pending = [...this.requests.values()].find(
      (r) => r.status === "sending" && r.content === content,
    );
    if (!pending) return;
    this.requests.delete(pending.id);
    pending.id = requestId;
    pending.status = "queued";
    this.requests.set(requestId, pending);
  }

  applySnapshotItem(item, live) {
    const req = this.upsert(item.request_id, { content: item.content ?? "" });
    Object.assign(req, {
      content: item.content ?? req.content,
      status: item.status,
      text: item.response ?? "",
      attempt: item.attempt ?? 1,
      error: item.error ?? null,
      steps: stepsFromRows(item.steps ?? []),
      live,
    });
    this.markDirty(req);
  }

  upsert(requestId, { content, status = "queued" }) {
    let req = this.requests.get(requestId);
    if (!req) {
      req = {
        id: requestId, content, status, text: "", attempt: 1, live: false,
        error: null, notice: null, deliveries: [], cancelling: false, steps: new Map(),
      };
      req.view = createTurnView(req, () => this.requestCancel(req));
      req.view.decide = (step, approve) => this.requestDecision(req, step, approve);
      this.requests.set(requestId, req);
      this.listEl.append(req.view.root);
    }
    return req;
  }

  requestCancel(req) {
    req.cancelling = true;
    this.markDirty(req);
    this.onCancel(req.id).catch(() => {
      req.cancelling = false;
      this.markDirty(req);
    });
  }

  requestDecision(req, step, approve) {
    step.deciding = true;
    this.markDirty(req);
    this.onDecide(req.id, step.callId, approve)
      .then(() => {
        step.decided = approve ? "approved" : "denied";
      })
      .catch(() => {})
      .finally(() => {
        step.deciding = false;
        this.markDirty(req);
      });
  }

  markDirty(req) {
    this.dirty.add(req);
    this.frame ||= requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const follow = isNearBottom(this.scroller);
    for (const req of this.dirty) renderTurn(req);
    this.dirty.clear();
    if (follow) this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}

function startAttempt(req, attempt, live) {
  req.attempt = attempt;
  req.text = "";
  req.live = live;
  req.error = null;
}

/** The state change one event makes to its request. */
function applyToRequest(req, event, data) {
  switch (event) {
    case "request.accepted":
      req.content = data.content ?? req.content;
      break;
    case "run.started":
      // Tokens of an attempt follow its run.started, so text built from here is whole.
      startAttempt(req, req.attempt, true);
      req.status = "running";
      req.notice = null;
      break;
    case "run.retrying":
      startAttempt(req, Math.max(req.attempt, data.attempt ?? req.attempt), true);
      req.status = "running";
      req.notice = "The previous try was interrupted; retrying…";
      break;
    case "token":
      // Without the start of this attempt, appending would garble the reply; the
      // complete `message` event sets it instead.
      if (req.live) req.text += data.text ?? "";
      break;
    case "message":
      req.text = data.content ?? req.text;
      break;
    case "run.completed":
    case "run.failed":
    case "run.cancelled":
      req.status = STATUS_BY_EVENT[event];
      req.error = data.error ?? null;
      req.notice = null;
      break;
    case "delivery.succeeded":
    case "delivery.failed":
      req.deliveries.push({ ok: event === "delivery.succeeded", channel: data.channel, detail: data.detail });
      break;
    case "tool.approval_required":
      applyToolEvent(req.steps, event, data);
      req.status = "waiting";
      break;
    case "tool.call":
    case "tool.result":
      applyToolEvent(req.steps, event, data);
      break;
    case "done":
      if (TERMINAL.has(data.status)) req.status = data.status;
      break;
    default:
      break; // future types have no view yet
  }
}

/** The DOM skeleton of one turn: the person's message and the assistant's reply. */
function createTurnView(req, onCancel) {
  const root = el("article", "turn");
  const user = el("div", "msg msg-user");
  const userText = el("p", "msg-text");
  user.append(el("span", "visually-hidden", "You said:"), userText);

  const reply = el("div", "msg msg-assistant");
  const steps = el("ul", "tool-steps");
  steps.setAttribute("aria-label", "Tool steps");
  steps.hidden = true;
  const body = el("div", "reply-body");
  const status = el("p", "reply-status");
  const deliveries = el("ul", "deliveries");
  const cancel = el("button", "btn btn-ghost btn-cancel", "Cancel");
  cancel.type = "button";
  cancel.addEventListener("click", onCancel);
  reply.append(el("span", "visually-hidden", "Assistant:"), steps, body, status, deliveries, cancel);
  root.append(user, reply);
  root.dataset.requestId = req.id;
  return { root, userText, reply, steps, stepViews: new Map(), body, status, deliveries, cancel, renderedText: null };
}

function renderTurn(req) {
  const v = req.view;
  v.root.dataset.requestId = req.id;
  v.root.dataset.status = req.status;
  v.userText.textContent = req.content;
  if (v.renderedText !== req.text) {
    renderMarkdown(req.text, v.body);
    v.renderedText = req.text;
  }
  const pending = !TERMINAL.has(req.status);
  v.reply.setAttribute("aria-busy", String(pending));
  v.reply.classList.toggle("is-typing", pending && req.text === "");
  v.cancel.hidden = !pending || req.id.startsWith("pending-"); // nothing to cancel yet
  v.cancel.disabled = req.cancelling;
  v.cancel.textContent = req.cancelling ? "Cancelling…" : "Cancel";
  renderSteps(req.steps, v.steps, v.stepViews, v.decide);
  renderStatus(req, v.status);
  v.deliveries.replaceChildren(...req.deliveries.map(deliveryItem));
}

function renderStatus(req, node) {
  const [kind, text] = statusLine(req);
  node.className = `reply-status status-${kind}`;
  node.textContent = text;
  node.hidden = text === "";
  if (kind === "failed") node.setAttribute("role", "alert");
  else node.removeAttribute("role");
}

function statusLine(req) {
  switch (req.status) {
    case "sending": return ["info", "Sending…"];
    case "queued": return ["info", "Waiting for an agent…"];
    case "running": return ["info", req.notice ?? (req.text ? "" : "Thinking…")];
    case "waiting":
      return ["info", awaitingApproval(req.steps) ? "Waiting for your approval of a tool call…" : "Continuing…"];
    case "cancelled": return ["cancelled", "Reply cancelled."];
    case "failed": return ["failed", `The reply failed: ${req.error || "unknown error"}`];
    default: return ["info", ""];
  }
}

function deliveryItem({ ok, channel, detail }) {
  const where = channel || "another channel";
  const text = ok ? `Also sent to ${where}` : `Could not send to ${where}`;
  return el("li", ok ? "delivery delivery-ok" : "delivery delivery-failed", detail ? `${text}: ${detail}` : text);
}

function isNearBottom(node) {
  return node.scrollHeight - node.scrollTop - node.clientHeight < 80;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
