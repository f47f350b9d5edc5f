// The vertebra dashboard: renders each state the server streams (server-sent events).
// No framework: keyed rows are updated in place, so that nothing flickers and a button
// under the pointer stays where it is.  All text goes through textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// Make `container`'s children match `items`, one element per key, in order.
function keyed(container, items, key, create, update) {
  const old = new Map();
  for (const child of Array.from(container.children)) old.set(child.dataset.key, child);
  let at = 0;
  for (const item of items) {
    const k = key(item);
    let node = old.get(k);
    if (node) old.delete(k); else { node = create(item); node.dataset.key = k; }
    update(node, item);
    if (container.children[at] !== node) container.insertBefore(node, container.children[at] || null);
    at++;
  }
  for (const node of old.values()) node.remove();
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

const int = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const fixed = (n, d) => (n === null || n === undefined ? "—" :
  Number(n).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }));
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

function ago(t, now) {
  const s = Math.max(0, Math.round(now - t));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.floor(s / 60)}m ago` : `${Math.floor(s / 3600)}h ago`;
}

function args(d) {
  const parts = d.args.map((a) => JSON.stringify(a));
  for (const [k, v] of Object.entries(d.kwargs)) parts.push(`${k}=${JSON.stringify(v)}`);
  return parts.join(", ");
}

// -- services -------------------------------------------------------------------------

const METHOD_CELLS = ["name", "kind", "calls", "rate", "errors", "in_flight", "p50_ms", "p99_ms"];

function serviceCard() {
  const head = el("div", { class: "head" },
    el("h3", { class: "name" }), el("span", { class: "replicas badge" }),
    el("span", { class: "transport badge dim" }), el("span", { class: "doc" }));
  const facts = el("div", { class: "facts" });
  const table = el("table", { class: "grid methods" },
    el("thead", {}, el("tr", {}, ...["method", "kind", "calls", "calls/s", "errors", "in flight",
      "p50 ms", "p99 ms"].map((h, i) => el("th", i > 1 ? { class: "num" } : {}, h)))),
    el("tbody"));
  return el("article", { class: "service" }, head, facts, table);
}

function methodRow() {
  return el("tr", {}, ...METHOD_CELLS.map((c, i) => el("td", { class: i > 1 ? `${c} num` : c })));
}

function updateMethod(row, m) {
  const text = { name: m.name, kind: m.kind, calls: int(m.calls), rate: fixed(m.rate, 1),
    errors: int(m.errors), in_flight: int(m.in_flight), p50_ms: fixed(m.p50_ms, 2), p99_ms: fixed(m.p99_ms, 2) };
  for (const c of METHOD_CELLS) setText(row.querySelector(`td.${c}`), text[c]);
  row.classList.toggle("failing", (m.errors || 0) > 0);
  row.classList.toggle("busy", (m.in_flight || 0) > 0);
}

function fact(label, value, cls = "") {
  return el("span", { class: `fact ${cls}` }, el("i", {}, label), el("b", {}, value));
}

function updateService(card, s) {
  setText(card.querySelector(".name"), s.name);
  setText(card.querySelector(".replicas"), `${s.replicas} replica${s.replicas === 1 ? "" : "s"}`);
  setText(card.querySelector(".transport"), s.transport || "?");
  setText(card.querySelector(".doc"), s.doc);
  const o = s.outbox, facts = [];
  if (!s.answered) facts.push(fact("stats", "no answer", "warn"));
  else {
    facts.push(fact("replica", s.replica));
    facts.push(fact("outbox queued", int(o.queued || 0), o.queued ? "warn" : ""));
    facts.push(fact("sent", int(o.sent || 0)));
    facts.push(fact("dropped", int(o.dropped || 0), o.dropped ? "bad" : ""));
    facts.push(fact("retries", int(o.retries || 0)));
    if (s.counts.buried) facts.push(fact("buried", int(s.counts.buried), "bad"));
    if (s.counts.retried) facts.push(fact("retried", int(s.counts.retried)));
    if (s.pool.max) facts.push(fact("threads", `${s.pool.threads}/${s.pool.max}`));
  }
  card.querySelector(".facts").replaceChildren(...facts);
  keyed(card.querySelector("tbody"), s.methods, (m) => `${s.name}.${m.name}`, methodRow, updateMethod);
  card.classList.toggle("silent", !s.answered);
}

// -- dead letters ---------------------------------------------------------------------

function deadRow() {
  const button = el("button", { class: "replay", type: "button" }, "Replay");
  button.addEventListener("click", () => replay(button.dataset.service, [button.dataset.id], button));
  const details = el("details", {}, el("summary", { class: "error" }), el("pre", { class: "traceback" }));
  return el("tr", {}, el("td", { class: "target" }), el("td", { class: "args" }),
    el("td", { class: "attempts num" }), el("td", { class: "why" }, details),
    el("td", { class: "id" }), el("td", { class: "action" }, button));
}

function updateDead(row, d) {
  setText(row.querySelector(".target"), `${d.service}.${d.method}`);
  setText(row.querySelector(".args"), args(d));
  setText(row.querySelector(".attempts"), int(d.attempts));
  setText(row.querySelector(".error"), `${d.error.type}: ${d.error.message}`);
  setText(row.querySelector(".traceback"), d.error.traceback || "(no traceback)");
  setText(row.querySelector(".id"), d.id);
  const b = row.querySelector("button");
  b.dataset.service = d.service; b.dataset.id = d.id;
}

function updateReplayAll(dead) {
  const counts = new Map();
  for (const d of dead) counts.set(d.service, (counts.get(d.service) || 0) + 1);
  keyed($("#replay-all"), Array.from(counts), ([s]) => s, () => {
    const b = el("button", { class: "replay-all", type: "button" });
    b.addEventListener("click", () => replay(b.dataset.service, null, b));
    return b;
  }, (b, [s, n]) => { b.dataset.service = s; setText(b, `Replay all ${n} of ${s}`); });
}

async function replay(service, ids, button) {
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "replaying…";
  try {
    const answer = await fetch("api/replay", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ service, ids }) });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || answer.statusText);
    toast(`replayed ${body.replayed} dead letter${body.replayed === 1 ? "" : "s"} of ${service}`);
  } catch (e) {
    toast(`replay failed: ${e.message}`, true);
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

let toastTimer = 0;
function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text; t.className = bad ? "bad" : ""; t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
}

// -- workflows ------------------------------------------------------------------------

function flowRow() {
  return el("tr", {}, el("td", { class: "run" }), el("td", {}, el("span", { class: "state badge" })),
    el("td", { class: "done num" }), el("td", { class: "steps" }), el("td", { class: "outcome" }),
    el("td", { class: "updated" }));
}

function updateFlow(row, w, now) {
  setText(row.querySelector(".run"), w.run);
  const state = row.querySelector(".state");
  setText(state, w.state); state.className = `state badge ${w.state}`;
  setText(row.querySelector(".done"), int(w.done));
  row.querySelector(".steps").replaceChildren(...w.steps.map((s, i) => el("span", {
    class: `step ${w.state === "failed" && i === w.done ? "failed" : i < w.done ? "ok" : ""}` }, s)));
  setText(row.querySelector(".outcome"), w.state === "failed" ? `${w.failed_step}: ${w.error}` :
    w.state === "finished" ? `→ ${w.result}` : w.last_step ? `after ${w.last_step}` : "");
  setText(row.querySelector(".updated"), ago(w.updated, now));
}

// -- the whole page -------------------------------------------------------------------

function render(state) {
  setText($("#url"), state.url);
  setText($("#updated"), `updated ${clock(state.taken)}`);
  const services = state.services, methods = services.flatMap((s) => s.methods);
  const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);
  setText($("#n-services"), int(services.length));
  setText($("#n-replicas"), int(sum(services, (s) => s.replicas)));
  setText($("#n-rate"), fixed(sum(methods, (m) => m.rate), 1));
  setText($("#n-errors"), int(sum(methods, (m) => m.errors)));
  setText($("#n-inflight"), int(sum(methods, (m) => m.in_flight)));
  setText($("#n-queued"), int(sum(services, (s) => s.outbox.queued)));
  setText($("#n-dead"), int(state.dead_letters.length));
  setText($("#n-workflows"), int(state.workflows.filter((w) => w.state === "running").length));
  $("#n-dead").parentElement.classList.toggle("bad", state.dead_letters.length > 0);

  keyed($("#services"), services, (s) => s.name, serviceCard, updateService);
  $("#no-services").hidden = services.length > 0;

  keyed($("#dead-letters tbody"), state.dead_letters, (d) => d.id, deadRow, updateDead);
  updateReplayAll(state.dead_letters);
  $("#no-dead").hidden = state.dead_letters.length > 0;
  $("#dead-letters").hidden = state.dead_letters.length === 0;

  keyed($("#workflows tbody"), state.workflows, (w) => w.run, flowRow, (r, w) => updateFlow(r, w, state.taken));
  $("#no-workflows").hidden = state.workflows.length > 0;
  $("#workflows").hidden = state.workflows.length === 0;
  if (state.workflows_note) setText($("#no-workflows"), state.workflows_note);

  const errors = [...new Set(state.errors)];
  keyed($("#errors"), errors, (e) => e, () => el("li"), (li, e) => setText(li, e));

  const own = state.bus || {}, ob = own.outbox || {};
  setText($("#own-bus"), `this dashboard's bus: ${int(own.pending_calls)} pending call(s), ` +
    `${int(own.late_replies)} late repl${own.late_replies === 1 ? "y" : "ies"}, outbox ` +
    `${int(ob.queued)} queued / ${int(ob.sent)} sent · refreshed every ${state.interval}s`);
  document.body.dataset.version = String(state.version);
}

function connect() {
  const status = $("#status");
  const source = new EventSource("events");
  source.addEventListener("state", (e) => {
    render(JSON.parse(e.data));
    status.textContent = "live"; status.className = "pill live";
  });
  source.addEventListener("error", () => {
    status.textContent = "reconnecting…"; status.className = "pill wait";
  });
}

connect();
