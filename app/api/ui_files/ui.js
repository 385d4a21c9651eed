// Chainline's execution pages: the list (/ui) and one execution (/ui/executions/ID).
// Plain JavaScript, no build step: it calls the same /v1 API as the SDK with the
// session cookie, and follows an open execution through its SSE stream.
"use strict";

const API = "/v1/workflows";
const STATUSES = ["RUNNING", "RETRYING_AFTER_ERROR", "COMPLETED", "FAILED", "CANCELED",
  "TERMINATED", "TIMED_OUT", "CONTINUED_AS_NEW"];
const OPEN = new Set(["RUNNING", "RETRYING_AFTER_ERROR"]);
// The events that close a run (an update's completion does not).
const CLOSINGS = new Set(["COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT",
  "CONTINUED_AS_NEW"].map((s) => `WORKFLOW_EXECUTION_${s}`));
const app = document.getElementById("app");

// --- small helpers -------------------------------------------------------------------

// An element with attributes and children; text is always set as text, never as HTML.
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { "X-Chainline-UI": "1", "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new ApiError("signed out");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(describeError(response.status, data), response.status);
  return data;
}

function describeError(status, data) {
  const detail = data && data.detail;
  if (typeof detail === "string") return `${status}: ${detail}`;
  if (Array.isArray(detail)) return `${status}: ${detail.map((d) => d.msg).join("; ")}`;
  return `HTTP ${status}`;
}

function statusBadge(status) {
  return h("span", { class: `status ${status || ""}`, "data-status": status || "" }, status || "?");
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function duration(start, end) {
  if (!start) return "";
  const to = end ? new Date(end) : new Date();
  return formatSeconds((to - new Date(start)) / 1000) + (end ? "" : " so far");
}

function json(value) {
  return h("pre", {}, value === undefined ? "" : JSON.stringify(value, null, 2));
}

function payloadValue(payload) {
  return payload && typeof payload === "object" && "value" in payload ? payload.value : payload;
}

// --- the list of executions ------------------------------------------------------------

async function showList() {
  const params = new URLSearchParams(location.search);
  const form = h("form", { class: "filters", id: "filters" },
    h("label", {}, "Status",
      h("select", { name: "status" }, h("option", { value: "" }, "any"),
        STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)))),
    h("label", {}, "Workflow",
      h("input", { name: "workflow", value: params.get("workflow") || "", placeholder: "name" })),
    h("label", {}, "Started after",
      h("input", { type: "datetime-local", name: "after", value: params.get("after") || "" })),
    h("label", {}, "Started before",
      h("input", { type: "datetime-local", name: "before", value: params.get("before") || "" })),
    h("button", { type: "submit", class: "action primary" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) chosen.set(name, value);
    history.pushState(null, "", "/ui" + (chosen.toString() ? "?" + chosen : ""));
    route();
  });
  const body = h("tbody", {});
  const more = h("button", { class: "action", type: "button", hidden: true }, "Older");
  const problem = h("p", { class: "error", hidden: true });
  app.replaceChildren(h("h1", {}, "Executions"), form, problem,
    h("table", { id: "executions" },
      h("thead", {}, h("tr", {}, ["Execution", "Workflow", "Status", "Started", "Ended",
        "Duration"].map((t) => h("th", {}, t)))),
      body),
    h("div", { class: "actions" }, more));

  const query = new URLSearchParams({ page_size: "50" });
  if (params.get("status")) query.set("status", params.get("status"));
  if (params.get("workflow")) query.set("workflow_identifier", params.get("workflow"));
  if (params.get("after")) query.set("start_time_after", new Date(params.get("after")).toISOString());
  if (params.get("before")) query.set("start_time_before", new Date(params.get("before")).toISOString());

  // The API lists runs, newest first: an execution reset shows once, as its newest run.
  const shown = new Set();
  async function load(token) {
    const page = new URLSearchParams(query);
    if (token) page.set("next_page_token", token);
    more.disabled = true;
    try {
      const found = await api("GET", `${API}/runs?${page}`);
      problem.hidden = true;
      for (const run of found.executions) {
        if (shown.has(run.execution_id)) continue;
        shown.add(run.execution_id);
        body.append(runRow(run));
      }
      if (!token && found.executions.length === 0) {
        body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No executions match.")));
      }
      more.hidden = !found.next_page_token;
      more.disabled = false;
      more.onclick = () => load(found.next_page_token);
    } catch (error) {
      problem.textContent = error.message;
      problem.hidden = false;
    }
  }
  await load(null);
}

function runRow(run) {
  return h("tr", { "data-execution-id": run.execution_id },
    h("td", { class: "mono" },
      h("a", { href: `/ui/executions/${encodeURIComponent(run.execution_id)}` }, run.execution_id)),
    h("td", {}, run.workflow_name),
    h("td", {}, statusBadge(run.status)),
    h("td", {}, formatTime(run.start_time)),
    h("td", {}, formatTime(run.end_time)),
    h("td", {}, duration(run.start_time, run.end_time)));
}

// --- one execution ---------------------------------------------------------------------

// What a history event says, in one line, and which kind of thing it is about.
function describeEvent(event) {
  const a = event.attributes || {};
  const type = event.event_type;
  const attempt = a.attempt ? ` (attempt ${a.attempt})` : "";
  const failure = a.failure ? `: ${a.failure.type || "error"}: ${a.failure.message || ""}` : "";
  if (type.startsWith("ACTIVITY_TASK_")) {
    let detail = `${a.activity_name || "activity"} #${a.seq}${attempt}${failure}`;
    if (type === "ACTIVITY_TASK_RETRYING" && a.next_attempt_in_seconds !== undefined) {
      detail += `, next attempt in ${formatSeconds(a.next_attempt_in_seconds)}`;
    }
    return { kind: failure ? "failure" : "activity", detail };
  }
  if (type.startsWith("TIMER_")) {
    const detail = type === "TIMER_STARTED" ? `timer #${a.seq} for ${formatSeconds(a.seconds)}`
      : type === "TIMER_FIRED" && a.late_seconds !== undefined
        ? `timer #${a.seq} fired ${formatSeconds(a.late_seconds)} late` : `timer #${a.seq}`;
    return { kind: "timer", detail };
  }
  if (type === "WORKFLOW_EXECUTION_SIGNALED") return { kind: "signal", detail: `signal ${a.signal_name}` };
  if (type.startsWith("WORKFLOW_EXECUTION_UPDATE_")) {
    return { kind: "signal", detail: `update ${a.update_name || a.update_id || ""}${failure}` };
  }
  if (type.startsWith("CHILD_WORKFLOW_")) {
    return { kind: failure ? "failure" : "child",
      detail: `${a.workflow_name || "child"} ${a.execution_id || ""}${failure}` };
  }
  if (type.startsWith("CUSTOM_TASK_")) return { kind: "activity", detail: `${a.custom_task_type || a.type || "task"} ${a.custom_task_id || ""}` };
  if (type === "WORKFLOW_STATUS_CHANGED") {
    return { kind: "workflow", detail: `${a.from_status} → ${a.to_status}${a.reason ? ": " + a.reason : ""}` };
  }
  if (type === "WORKFLOW_EXECUTION_RESET") return { kind: "workflow", detail: a.reason || "reset" };
  return { kind: failure || type.endsWith("_FAILED") ? "failure" : "workflow", detail: failure.slice(2) };
}

// Each activity of the history: its name, state, attempts and last attempt's time.
function activitiesOf(events) {
  const bySeq = new Map();
  for (const event of events) {
    const a = event.attributes || {};
    if (!event.event_type.startsWith("ACTIVITY_TASK_") || a.seq === undefined) continue;
    const row = bySeq.get(a.seq) || { seq: a.seq, name: a.activity_name, state: "SCHEDULED", attempts: 0 };
    if (a.activity_name) row.name = a.activity_name;
    const at = event.event_timestamp / 1e6;
    switch (event.event_type) {
      case "ACTIVITY_TASK_STARTED": row.state = "RUNNING"; row.attempts = Math.max(row.attempts, a.attempt || 1); row.startedAt = at; row.took = null; break;
      case "ACTIVITY_TASK_COMPLETED": row.state = "COMPLETED"; row.took = row.startedAt ? (at - row.startedAt) / 1000 : null; row.outcome = payloadValue(a.result); break;
      case "ACTIVITY_TASK_RETRYING": row.state = "RETRYING"; row.took = row.startedAt ? (at - row.startedAt) / 1000 : null; row.outcome = a.failure; break;
      case "ACTIVITY_TASK_FAILED": row.state = "FAILED"; row.took = row.startedAt ? (at - row.startedAt) / 1000 : null; row.outcome = a.failure; break;
      case "ACTIVITY_TASK_CANCEL_REQUESTED": row.state = "CANCELING"; break;
      default: break;
    }
    bySeq.set(a.seq, row);
  }
  return [...bySeq.values()].sort((x, y) => x.seq - y.seq);
}

const live = { source: null, executionId: null, refreshTimer: null, generation: 0, backoff: 500 };

function stopLive() {
  if (live.source) live.source.close();
  clearTimeout(live.refreshTimer);
  live.source = null;
  live.executionId = null;
}

async function showExecution(executionId) {
  if (live.executionId !== executionId) stopLive();
  live.executionId = executionId;
  const view = {
    header: h("div", { class: "panel", id: "execution" }),
    message: h("div", { id: "message" }),
    activities: h("tbody", {}),
    timeline: h("ol", { class: "timeline", id: "timeline" }),
    runs: h("tbody", {}),
    liveMark: h("span", { class: "live", id: "live" }, "not live"),
  };
  app.replaceChildren(view.header, view.message,
    h("h2", {}, "Activities"),
    h("table", { id: "activities" }, h("thead", {}, h("tr", {},
      ["#", "Activity", "State", "Attempts", "Last attempt", "Result or failure"].map((t) => h("th", {}, t)))),
    view.activities),
    h("h2", {}, "Timeline", view.liveMark), view.timeline,
    h("h2", {}, "Runs"),
    h("table", { id: "runs" }, h("thead", {}, h("tr", {},
      ["Run", "Status", "Started", "Ended", "Note"].map((t) => h("th", {}, t)))), view.runs));
  await refresh(executionId, view);
}

async function refresh(executionId, view) {
  // Answers can come back out of order: only the newest refresh draws.
  const generation = ++live.generation;
  let execution, history;
  try {
    [execution, history] = await Promise.all([
      api("GET", `${API}/executions/${encodeURIComponent(executionId)}`),
      api("GET", `${API}/executions/${encodeURIComponent(executionId)}/history`),
    ]);
  } catch (error) {
    if (generation !== live.generation || live.executionId !== executionId) return;
    if (error.status >= 400 && error.status < 500) {
      view.header.replaceChildren(h("h1", {}, executionId), h("p", { class: "error" }, error.message));
      return; // no such execution: asking again will not change that
    }
    notify(view, `${error.message}; trying again`, true);
    refreshSoon(executionId, view, retryDelay());
    return;
  }
  // The page moved on meanwhile, or a newer refresh is under way.
  if (live.executionId !== executionId || generation !== live.generation) return;
  live.backoff = 500;
  const events = history.events;
  view.currentRun = execution.run_id;
  renderHeader(execution, events, view);
  renderActivities(events, view);
  renderTimeline(events, view);
  renderRuns(executionId, view);
  follow(execution, view);
}

function renderHeader(execution, events, view) {
  const started = events.find((e) => e.event_type === "WORKFLOW_EXECUTION_STARTED");
  const closing = [...events].reverse().find((e) => CLOSINGS.has(e.event_type));
  const open = OPEN.has(execution.status);
  const resetPoints = events.filter((e) => e.event_type === "WORKFLOW_TASK_COMPLETED");
  const point = h("select", { id: "reset-point", "aria-label": "reset point" },
    resetPoints.map((e) => h("option", { value: e.event_id },
      `event ${e.event_id} · ${new Date(e.event_timestamp / 1e6).toLocaleTimeString()}`)));
  const reason = h("input", { id: "reason", placeholder: "reason (optional)", size: 28 });
  const act = (label, id, run, { danger = false, enabled = true } = {}) => h("button", {
    class: `action${danger ? " danger" : ""}`, id, type: "button", disabled: !enabled,
    onclick: async (event) => {
      event.target.disabled = true;
      try {
        await run();
        notify(view, `${label}: done.`);
      } catch (error) {
        notify(view, `${label} failed: ${error.message}`, true);
      }
      refreshSoon(execution.execution_id, view, 0);
    },
  }, label);
  const path = `${API}/executions/${encodeURIComponent(execution.execution_id)}`;
  const withReason = () => (reason.value ? { reason: reason.value } : {});
  view.header.replaceChildren(
    h("h1", {}, execution.execution_id, " ", statusBadge(execution.status)),
    h("dl", { class: "summary" },
      [["Workflow", execution.workflow_name], ["Run", execution.run_id],
        ["Started", formatTime(execution.start_time)], ["Ended", formatTime(execution.end_time)],
        ["Duration", duration(execution.start_time, execution.end_time)],
        ["Parent", execution.parent_execution_id], ["Root", execution.root_execution_id]]
        .filter(([, v]) => v).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {},
          k === "Parent" || (k === "Root" && v !== execution.execution_id)
            ? h("a", { href: `/ui/executions/${encodeURIComponent(v)}` }, v) : v)))),
    h("div", { class: "columns" },
      h("div", {}, h("h2", {}, "Input"), h("div", { class: "panel", id: "input" },
        json(started ? payloadValue(started.attributes.input) : null))),
      h("div", {}, h("h2", {}, closing && closing.attributes.failure ? "Failure" : "Result"),
        h("div", { class: "panel", id: "result" }, closing
          ? json(closing.attributes.failure ?? payloadValue(closing.attributes.result) ?? null)
          : h("span", { class: "muted" }, "not yet")))),
    h("div", { class: "actions" },
      act("Cancel", "cancel", () => api("POST", `${path}/cancel`), { enabled: open }),
      act("Terminate", "terminate", () => api("POST", `${path}/terminate`, withReason()),
        { danger: true, enabled: open }),
      h("span", { class: "muted" }, "Reset to"), point, reason,
      act("Reset", "reset", () => api("POST", `${path}/reset`, {
        event_id: Number(point.value), exclude_signals: false, exclude_updates: false, ...withReason(),
      }), { danger: true, enabled: resetPoints.length > 0 })));
}

function notify(view, text, failed = false) {
  view.message.replaceChildren(h("p", { class: failed ? "notice error" : "notice" }, text));
}

function renderActivities(events, view) {
  const rows = activitiesOf(events);
  view.activities.replaceChildren(...(rows.length ? rows.map((row) => h("tr", { "data-seq": row.seq },
    h("td", {}, row.seq), h("td", {}, row.name), h("td", {}, statusBadge(row.state)),
    h("td", {}, row.attempts), h("td", {}, formatSeconds(row.took)),
    h("td", {}, row.outcome === undefined ? "" : json(row.outcome))))
    : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No activities yet."))]));
}

function renderTimeline(events, view) {
  const start = events.length ? events[0].event_timestamp : 0;
  view.timeline.replaceChildren(...events.map((event) => {
    const { kind, detail } = describeEvent(event);
    return h("li", { class: `kind-${kind}`, "data-event-type": event.event_type },
      h("span", { class: "muted mono" }, event.event_id),
      h("span", { class: "muted mono" }, "+" + formatSeconds((event.event_timestamp - start) / 1e9)),
      h("span", { class: "mono" }, event.event_type),
      h("span", {}, detail));
  }));
}

async function renderRuns(executionId, view) {
  try {
    const query = new URLSearchParams({ search: executionId, page_size: "100" });
    const found = await api("GET", `${API}/runs?${query}`);
    const runs = found.executions.filter((r) => r.execution_id === executionId);
    view.runs.replaceChildren(...runs.map((run) => h("tr", { "data-run-id": run.run_id },
      h("td", { class: "mono" }, run.run_id), h("td", {}, statusBadge(run.status)),
      h("td", {}, formatTime(run.start_time)), h("td", {}, formatTime(run.end_time)),
      h("td", {}, run.run_id === view.currentRun ? "current" : ""))));
  } catch (error) {
    view.runs.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "error" }, error.message)));
  }
}

function retryDelay() {
  live.backoff = Math.min(live.backoff * 2, 10000);
  return live.backoff;
}

function refreshSoon(executionId, view, delay = 150) {
  clearTimeout(live.refreshTimer);
  live.refreshTimer = setTimeout(() => refresh(executionId, view), delay);
}

// Follows an open execution through its stream; each event refreshes the page (a
// burst of events, once). A closed execution's stream is closed.
function follow(execution, view) {
  if (!OPEN.has(execution.status)) {
    if (live.source) live.source.close();
    live.source = null;
    view.liveMark.className = "live";
    view.liveMark.textContent = "closed";
    return;
  }
  if (live.source) return;
  const path = `${API}/executions/${encodeURIComponent(execution.execution_id)}/stream`;
  const source = new EventSource(path, { withCredentials: true });
  live.source = source;
  source.addEventListener("open", () => {
    view.liveMark.className = "live on";
    view.liveMark.textContent = "live";
  });
  source.addEventListener("workflow.event", () => refreshSoon(execution.execution_id, view));
  source.addEventListener("error", () => {
    view.liveMark.className = "live";
    view.liveMark.textContent = "reconnecting";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (an error status): the browser gives up on it; a new one follows the
      // next refresh, after a pause.
      live.source = null;
      refreshSoon(execution.execution_id, view, retryDelay());
    } else {
      refreshSoon(execution.execution_id, view, 500);
    }
  });
}

// --- routing ---------------------------------------------------------------------------

function route() {
  const match = location.pathname.match(/^\/ui\/executions\/([^/]+)$/);
  if (match) return showExecution(decodeURIComponent(match[1]));
  stopLive();
  return showList();
}

window.addEventListener("popstate", route);
route();
