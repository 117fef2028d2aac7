// TMS dashboard. Reads the API with the token kept in sessionStorage (never
// in a URL), refreshes every 5 s by updating the rows it already has (no
// flicker, scroll kept), and writes every string from the API with
// textContent: nothing the API returns is ever parsed as HTML.
"use strict";

const API = "/api/enhanced-orchestration";
const TOKEN_KEY = "tms-token";
const REFRESH_MS = 5000;
const UTIL_SAMPLES = 720; // an hour at one sample per 5 s

const $ = (id) => document.getElementById(id);
const state = { charts: {}, util: [[], [], []], timer: null, busy: false };

// ---------- the API ----------

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(API + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  if (resp.status === 401) throw new Unauthorized("the token was refused");
  const body = await resp.json().catch(() => null);
  if (!resp.ok && !options.allowError) {
    const why = body && (body.detail || body.title);
    throw new Error(why || `${resp.status} ${resp.statusText}`);
  }
  return body;
}

// ---------- formatting ----------

function ago(ms) {
  if (ms == null || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

// Durations under a second in milliseconds: a warm fleet's queue waits are.
const duration = (ms) =>
  ms == null ? "–" : ms < 1000 ? `${Math.max(0, Math.round(ms))}ms` : ago(ms);
const percent = (x) => (x == null ? "–" : `${Math.round(x * 100)}%`);
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");

// ---------- DOM helpers (textContent only) ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

// Updates a table body to `items` in order, reusing the row of each key:
// rows are created once, then only their changed text is touched.
function syncRows(tbody, items, key, create, update) {
  const existing = new Map();
  for (const row of tbody.children) existing.set(row.dataset.key, row);
  let before = tbody.firstElementChild;
  for (const item of items) {
    const k = String(key(item));
    let row = existing.get(k);
    if (row) existing.delete(k);
    else {
      row = create(item);
      row.dataset.key = k;
    }
    update(row, item);
    if (row !== before) tbody.insertBefore(row, before);
    else before = before.nextElementSibling;
  }
  for (const row of existing.values()) row.remove();
}

function cells(row, count) {
  while (row.cells.length < count) row.insertCell();
  return row.cells;
}

function statusCell(td, status) {
  let span = td.firstElementChild;
  if (!span) {
    span = el("span", { class: "status" });
    td.append(span);
  }
  span.dataset.status = status;
  setText(span, status.replace("_", " "));
}

function actionButton(td, action, label) {
  let b = td.querySelector("button");
  if (!b) {
    b = el("button", { type: "button" });
    td.append(b);
  }
  if (!action) {
    b.hidden = true;
    return;
  }
  b.hidden = false;
  b.dataset.action = action;
  setText(b, label);
}

// ---------- sections ----------

function renderHealth(health, rules) {
  const pill = $("system-status");
  const status = health ? health.status : "down";
  pill.dataset.state = status;
  setText(pill, health ? `system ${status} · store ${health.store}` : "unreachable");
  const q = (health && health.queue) || {};
  const r = (health && health.runners) || {};
  setText($("t-queued"), q.queued_shards ?? "–");
  setText($("t-running"), q.in_flight_shards ?? "–");
  setText($("t-oldest"), q.oldest_queued_age_ms == null ? "–" : ago(q.oldest_queued_age_ms));
  setText($("t-active"), r.active ?? "–");
  setText($("t-unhealthy"), r.unhealthy ?? "–");
  const alerts = $("alerts");
  const lines = [];
  if (!health) lines.push("TMS cannot be reached.");
  else if (health.store !== "ok") lines.push(`The store is ${health.store}: nothing can be scheduled.`);
  else if (health.status !== "ok") lines.push("Work is waiting and no runner is active.");
  if (r.unhealthy) {
    // Named, so the operator knows which machines to look at; the line
    // clears when they heartbeat again or are removed.
    const names = (state.runners || []).filter((x) => x.status === "unhealthy").map((x) => x.name);
    const who = names.length ? `: ${names.join(", ")}` : "";
    const one = r.unhealthy === 1;
    lines.push(
      `${r.unhealthy} runner${one ? " is" : "s are"} unhealthy${who} — ${one ? "its" : "their"} work was sent elsewhere.`,
    );
  }
  for (const rule of rules || []) {
    if (!rule.state.firing) continue;
    const value = rule.state.value == null ? "no data" : Math.round(rule.state.value * 100) / 100;
    lines.push(
      `Alert: ${rule.name} — ${rule.metric.replaceAll("_", " ")} is ${value}, above ${rule.threshold}` +
        ` since ${clock(rule.state.since)}`,
    );
  }
  syncRows(
    alerts,
    lines.map((text) => ({ text })),
    (a) => a.text,
    () => el("p"),
    (p, a) => setText(p, a.text),
  );
}

function renderQueue(queued, now) {
  // Scheduling order: priority first, then age (the scheduler's aging only
  // lifts old work further).
  queued.sort((a, b) => b.priority - a.priority || a.created_at - b.created_at);
  syncRows(
    $("queue").tBodies[0],
    queued,
    (e) => e.id,
    () => el("tr"),
    (row, e) => {
      const c = cells(row, 6);
      setText(c[0], queued.indexOf(e) + 1);
      c[1].className = "name";
      setText(c[1], e.suite);
      setText(c[2], e.priority);
      setText(c[3], ago(now - e.created_at));
      setText(c[4], `${e.progress.shards_total - e.progress.shards_done} of ${e.progress.shards_total}`);
      const labels = (e.requirements.labels || []).join(", ");
      setText(c[5], labels || "any runner");
    },
  );
  $("queue-empty").hidden = queued.length > 0;
}

function renderExecutions(items, shardsOf, now) {
  syncRows(
    $("executions").tBodies[0],
    items,
    (e) => e.id,
    () => el("tr"),
    (row, e) => {
      const c = cells(row, 7);
      c[0].className = "name";
      if (!c[0].firstChild) c[0].append(el("span", { class: "suite" }), el("span", { class: "id" }));
      setText(c[0].children[0], e.suite);
      setText(c[0].children[1], e.id);
      statusCell(c[1], e.status);
      renderShards(c[2], e, shardsOf.get(e.id));
      const t = e.totals;
      setText(c[3], `${t.passed} passed · ${t.failed} failed${t.flaky ? ` · ${t.flaky} flaky` : ""}`);
      setText(c[4], clock(e.started_at || e.created_at));
      const end = e.finished_at || now;
      setText(c[5], e.started_at ? duration(end - e.started_at) : "–");
      const live = e.status === "queued" || e.status === "running";
      const retry = e.status === "failed" || e.status === "errored" || e.status === "timed_out";
      actionButton(c[6], live ? "cancel" : retry ? "retry" : null, live ? "Cancel" : "Retry");
      c[6].dataset.id = e.id;
      c[6].dataset.name = e.suite;
    },
  );
  $("executions-empty").hidden = items.length > 0;
}

function renderShards(td, e, shards) {
  let bar = td.firstElementChild;
  if (!bar) {
    bar = el("div", { class: "shards" });
    td.append(bar, el("span", { class: "muted" }));
  }
  const statuses = shards
    ? shards.map((s) => s.status)
    : Array.from({ length: e.progress.shards_total }, (_, i) =>
        i < e.progress.shards_done ? (e.status === "passed" ? "passed" : "done") : "queued",
      );
  while (bar.children.length > statuses.length) bar.lastElementChild.remove();
  statuses.forEach((s, i) => {
    let cell = bar.children[i];
    if (!cell) bar.append((cell = el("i")));
    cell.dataset.status = s;
    cell.title = `shard ${i}: ${s}`;
  });
  setText(td.children[1], `${e.progress.shards_done}/${e.progress.shards_total}`);
}

function renderRunners(all, now) {
  // Removed runners are history, not fleet.
  const runners = all.filter((r) => r.status !== "deregistered");
  runners.sort((a, b) => a.name.localeCompare(b.name));
  syncRows(
    $("runners").tBodies[0],
    runners,
    (r) => r.id,
    () => el("tr"),
    (row, r) => {
      const c = cells(row, 7);
      c[0].className = "name";
      if (!c[0].firstChild) c[0].append(el("span"), el("span", { class: "id" }));
      setText(c[0].children[0], r.name);
      setText(c[0].children[1], r.id);
      setText(c[1], r.type);
      statusCell(c[2], r.status);
      setText(c[3], r.dispatch ? "push" : `${ago(now - r.last_heartbeat)} ago`);
      let meter = c[4].firstElementChild;
      if (!meter) {
        meter = el("span", { class: "meter" }, el("b"));
        c[4].append(meter, el("span"));
      }
      const used = r.allocated.slots, cap = r.capacity.slots || 1;
      meter.firstElementChild.style.width = `${Math.min(100, (100 * used) / cap)}%`;
      setText(c[4].children[1], `${used}/${r.capacity.slots}`);
      setText(c[5], [...r.labels].join(", "));
      // An unhealthy runner is usually gone: removing it is what to offer.
      const action =
        r.status === "active" ? "pause" : r.status === "paused" ? "resume" : r.status === "unhealthy" ? "remove" : null;
      actionButton(c[6], action, { pause: "Pause", resume: "Resume", remove: "Remove" }[action]);
      c[6].dataset.id = r.id;
      c[6].dataset.name = r.name;
    },
  );
  $("runners-empty").hidden = runners.length > 0;
}

function renderSuites(metrics) {
  const suites = metrics ? metrics.suites : [];
  syncRows(
    $("suites").tBodies[0],
    suites,
    (s) => s.suite,
    () => el("tr"),
    (row, s) => {
      const c = cells(row, 7);
      c[0].className = "name";
      setText(c[0], s.suite);
      setText(c[1], s.finished);
      setText(c[2], s.throughput_per_hour.toFixed(1));
      setText(c[3], percent(s.pass_rate));
      setText(c[4], `${duration(s.p50_wait_ms)} / ${duration(s.p95_wait_ms)}`);
      setText(c[5], `${duration(s.p50_run_ms)} / ${duration(s.p95_run_ms)}`);
      setText(c[6], s.tests_flaky);
    },
  );
  $("suites-empty").hidden = suites.length > 0;
  if (metrics) {
    setText($("t-throughput"), metrics.total.throughput_per_hour.toFixed(1));
    setText($("t-passrate"), percent(metrics.total.pass_rate));
  }
}

// ---------- charts ----------

function chartSize(node) {
  return { width: Math.max(280, node.clientWidth - 4), height: 200 };
}

function makeChart(id, series, data, scales) {
  const node = $(id);
  if (typeof uPlot !== "function") return null; // the page still works without charts
  const axis = { stroke: "#8b98a8", grid: { stroke: "#253040" }, ticks: { stroke: "#253040" } };
  return new uPlot(
    { ...chartSize(node), series: [{}, ...series], axes: [axis, axis], legend: { live: false }, scales },
    data,
    node,
  );
}

function renderCharts(runners, metrics) {
  const now = Date.now() / 1000;
  // Capacity is what live runners offer.
  const active = runners.filter((r) => r.status === "active" || r.status === "paused");
  const used = active.reduce((n, r) => n + r.allocated.slots, 0);
  const cap = active.reduce((n, r) => n + r.capacity.slots, 0);
  setText($("t-util"), cap ? `${used}/${cap}` : "–");
  const [t, u, c] = state.util;
  t.push(now);
  u.push(used);
  c.push(cap);
  if (t.length > UTIL_SAMPLES) state.util.forEach((s) => s.shift());
  if (!state.charts.util) {
    state.charts.util = makeChart(
      "chart-util",
      [
        { label: "in use", stroke: "#58a6ff", fill: "rgba(88,166,255,.15)" },
        { label: "capacity", stroke: "#6e7681", dash: [4, 4] },
      ],
      state.util,
    );
  } else state.charts.util.setData(state.util);

  const hours = metrics ? metrics.hours : [];
  const utilization = [
    hours.map((h) => h.hour / 1000),
    hours.map((h) => (h.slot_utilization == null ? null : Math.round(h.slot_utilization * 1000) / 10)),
  ];
  if (!state.charts.hourly) {
    state.charts.hourly = makeChart(
      "chart-util-hourly",
      [{ label: "utilization %", stroke: "#d29922", fill: "rgba(210,153,34,.15)", spanGaps: false }],
      utilization,
      { y: { range: [0, 100] } },
    );
  } else state.charts.hourly.setData(utilization);

  const data = [
    hours.map((h) => h.hour / 1000),
    hours.map((h) => h.passed),
    hours.map((h) => h.failed + h.errored + h.timed_out),
  ];
  if (!state.charts.throughput) {
    state.charts.throughput = makeChart(
      "chart-throughput",
      [
        { label: "passed", stroke: "#3fb950", fill: "rgba(63,185,80,.15)" },
        { label: "not passed", stroke: "#f85149" },
      ],
      data,
    );
  } else state.charts.throughput.setData(data);
}

window.addEventListener("resize", () => {
  const charts = {
    "chart-util": state.charts.util,
    "chart-util-hourly": state.charts.hourly,
    "chart-throughput": state.charts.throughput,
  };
  for (const [id, chart] of Object.entries(charts)) {
    if (chart) chart.setSize(chartSize($(id)));
  }
});

// ---------- refresh ----------

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const health = await fetch(`${API}/system/health`, { cache: "no-store" })
      .then((r) => r.json())
      .catch(() => null);
    const [recent, queued, runners, metrics, rules] = await Promise.all([
      api("/executions?limit=30"),
      api("/executions?status=queued&limit=200"),
      api("/runners?limit=500"),
      api("/metrics?since=24h").catch(() => null),
      api("/alert-rules").catch(() => null),
    ]);
    state.runners = runners.items;
    renderHealth(health, rules && rules.items);
    // The status of the executions in progress: their per-shard bars, and
    // their progress and totals, which the list keeps only as of the last
    // change of verdict (the status derives them from the shards now).
    const live = recent.items.filter((e) => e.status === "running" || e.status === "queued").slice(0, 10);
    const shardsOf = new Map();
    const statusOf = new Map();
    await Promise.all(
      live.map((e) =>
        api(`/executions/${encodeURIComponent(e.id)}/status`)
          .then((s) => {
            shardsOf.set(e.id, s.shards);
            statusOf.set(e.id, s);
          })
          .catch(() => {}),
      ),
    );
    const items = recent.items.map((e) => {
      const s = statusOf.get(e.id);
      return s ? { ...e, status: s.status, progress: s.progress, totals: s.totals } : e;
    });
    const now = Date.now();
    renderQueue(queued.items, now);
    renderExecutions(items, shardsOf, now);
    renderRunners(runners.items, now);
    renderSuites(metrics);
    renderCharts(runners.items, metrics);
    setText($("updated"), new Date(now).toLocaleTimeString());
  } catch (e) {
    if (e instanceof Unauthorized) signOut("That token was refused. Sign in again.");
    else setText($("updated"), `failed: ${e.message}`);
  } finally {
    state.busy = false;
  }
}

// ---------- controls ----------

function confirmAction(text) {
  const dialog = $("confirm");
  setText($("confirm-text"), text);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

const ACTIONS = {
  cancel: { what: (n) => `Cancel the execution of ${n}? Its running shards stop.`, path: (id) => `/executions/${id}/cancel` },
  retry: { what: (n) => `Retry the failed work of ${n}?`, path: (id) => `/executions/${id}/retry` },
  pause: { what: (n) => `Pause runner ${n}? It keeps its running shards but gets no new work.`, path: (id) => `/runners/${id}/pause` },
  resume: { what: (n) => `Resume runner ${n}?`, path: (id) => `/runners/${id}/resume` },
  remove: {
    what: (n) => `Remove runner ${n}? Its token stops working; whatever it held goes to other runners.`,
    path: (id) => `/runners/${id}/deregister`,
  },
};

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = ACTIONS[button.dataset.action];
  const td = button.parentElement;
  if (!action || !(await confirmAction(action.what(td.dataset.name)))) return;
  button.disabled = true;
  try {
    await api(action.path(encodeURIComponent(td.dataset.id)), { method: "POST", body: {} });
  } catch (e) {
    setText($("updated"), `${button.dataset.action} failed: ${e.message}`);
  } finally {
    button.disabled = false;
  }
  refresh();
});

// ---------- sign in ----------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.timer);
  state.timer = null;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  setText($("login-error"), message || "");
  $("token").value = "";
  $("token").focus();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  refresh();
  if (!state.timer) state.timer = setInterval(refresh, REFRESH_MS);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("/executions?limit=1");
    start();
  } catch (e) {
    signOut(e instanceof Unauthorized ? "That token was refused." : `Cannot reach TMS: ${e.message}`);
  }
});

$("sign-out").addEventListener("click", () => signOut());

if (sessionStorage.getItem(TOKEN_KEY)) start();
else signOut();
