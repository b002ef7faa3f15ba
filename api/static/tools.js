/**
 * The tool steps of one reply: what each tool.* event changes, and their view (one collapsible
 * step per call, with its arguments and result, and Approve/Deny on a call that waits for a person).
 * Text only reaches the DOM through textContent.
 */

const STATE_LABEL = {
  running: "running…",
  awaiting: "waits for your approval",
  ok: "done",
  error: "failed",
};

/**
 * Apply a tool.call, tool.approval_required or tool.result event to `steps` (a Map by call_id).
 * A retried attempt re-emits finished steps marked replayed: they update the same step, never add one.
 */
export function applyToolEvent(steps, event, data) {
  if (!data.call_id) return;
  let step = steps.get(data.call_id);
  if (!step) {
    step = { callId: data.call_id, tool: data.tool ?? "tool", arguments: data.arguments ?? {}, state: "running",
             output: null, error: null, deciding: false, decided: null };
    steps.set(data.call_id, step);
  }
  step.tool = data.tool ?? step.tool;
  if (event === "tool.call") {
    step.arguments = data.arguments ?? step.arguments;
    if (step.state !== "ok" && step.state !== "error") step.state = "running";
  } else if (event === "tool.approval_required") {
    step.arguments = data.arguments ?? step.arguments;
    step.state = "awaiting";
  } else if (event === "tool.result") {
    step.state = data.ok ? "ok" : "error";
    step.output = data.output ?? null;
    step.error = data.error ?? null;
  }
}

/**
 * Steps as the API stores them (a session's history, a stream.reset), for a reply whose tool events
 * this page never saw. A decided call shows as the live one does until its result comes.
 */
export function stepsFromRows(rows) {
  const steps = new Map();
  for (const row of rows) {
    const decided = row.status === "approved" || row.status === "denied" ? row.status : null;
    steps.set(row.call_id, {
      callId: row.call_id, tool: row.tool ?? "tool", arguments: row.arguments ?? {},
      state: decided || row.status === "awaiting" ? "awaiting" : row.status,
      output: row.output ?? null, error: row.error ?? null, deciding: false, decided,
    });
  }
  return steps;
}

/** Whether any step waits for a person's decision. */
export function awaitingApproval(steps) {
  return [...steps.values()].some((s) => s.state === "awaiting" && !s.decided);
}

/**
 * Render `steps` into `listEl`, reusing each step's nodes so an opened step stays open.
 * `onDecide(step, approve)` is called when the person presses Approve or Deny.
 */
export function renderSteps(steps, listEl, views, onDecide) {
  for (const step of steps.values()) {
    let view = views.get(step.callId);
    if (!view) {
      view = createStepView(step, onDecide);
      views.set(step.callId, view);
      listEl.append(view.root);
    }
    renderStep(step, view);
  }
  listEl.hidden = steps.size === 0;
}

function createStepView(step, onDecide) {
  const root = el("li", "tool-step");
  root.dataset.callId = step.callId;
  const details = el("details", "tool-details");
  const summary = el("summary", "tool-summary");
  const name = el("span", "tool-name");
  const state = el("span", "tool-state");
  summary.append(name, state);
  const args = el("pre", "tool-args");
  const resultLabel = el("p", "tool-label");
  const result = el("pre", "tool-result");
  details.append(summary, el("p", "tool-label", "Arguments"), args, resultLabel, result);

  const approval = el("div", "tool-approval");
  const question = el("span", "tool-question");
  const approve = el("button", "btn btn-primary btn-small tool-approve", "Approve");
  const deny = el("button", "btn btn-ghost btn-small tool-deny", "Deny");
  approve.type = deny.type = "button";
  approve.addEventListener("click", () => onDecide(step, true));
  deny.addEventListener("click", () => onDecide(step, false));
  approval.append(question, approve, deny);
  root.append(details, approval);
  return { root, details, name, state, args, resultLabel, result, approval, question, approve, deny };
}

function renderStep(step, v) {
  v.root.dataset.state = step.state;
  v.name.textContent = step.tool;
  v.state.textContent = step.decided && step.state === "awaiting" ? decidedLabel(step.decided) : STATE_LABEL[step.state];
  v.args.textContent = JSON.stringify(step.arguments, null, 2);
  const finished = step.state === "ok" || step.state === "error";
  v.resultLabel.hidden = v.result.hidden = !finished;
  v.resultLabel.textContent = step.state === "error" ? "Error" : "Result";
  v.result.textContent = step.state === "error" ? step.error ?? "" : step.output ?? "";
  v.approval.hidden = step.state !== "awaiting" || Boolean(step.decided);
  if (!v.approval.hidden && !v.shownForApproval) v.details.open = true; // the person decides on the arguments
  v.shownForApproval ||= !v.approval.hidden;
  v.question.textContent = `Allow ${step.tool} to run with these arguments?`;
  v.approve.disabled = v.deny.disabled = step.deciding;
}

function decidedLabel(decided) {
  return decided === "approved" ? "approved; continuing…" : "denied; continuing…";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
