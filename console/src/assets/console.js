// The Sluice console: one page, rendered here from the same /v1 API every client calls.
// Signed in, the browser holds an HttpOnly session cookie (the page never sees the token);
// requests that change state send the session's CSRF token as X-CSRF-Token.
"use strict";

const POLL_MS = 4000;
const PAGES = ["overview", "datasets", "training", "models", "serving"];
const state = { me: null, csrf: null, generation: 0, timer: null, shown: "",
  // What the reader chose on the Training and Serving pages; kept across polls and pages.
  view: { metric: "val_accuracy", param: null, score: "val_accuracy", sort: { key: "ordinal", dir: 1 } } };
const $ = (id) => document.getElementById(id);

/** An element with attributes and children; text is always set as text, never parsed as HTML. */
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

const pill = (text, kind = "", attrs = {}) => el("span", { class: `pill ${kind}`, ...attrs }, text);
const short = (id) => (id ? String(id).slice(0, 8) : "—");
const percent = (x) => (typeof x === "number" ? `${(x * 100).toFixed(1)} %` : "—");
const number = (x) => (typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(4)) : String(x));
const ago = (iso) => {
  if (!iso) return "—";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toISOString().slice(0, 10);
};
const when = (iso) => el("span", { title: iso || "" }, ago(iso));
const statusKind = (status) =>
  ({ processed: "ok", succeeded: "ok", ready: "ok", running: "run", processing: "run", queued: "run", accepted: "run",
    failed: "bad", cancelled: "warn" })[status] || "";

/** Calls the API with the session cookie; adds the CSRF token to anything but GET. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    return { status: 0, body: { error: { code: "offline", message: `Sluice did not answer (${err.message}).` } } };
  }
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: { message: text } }; }
  if (response.status === 401 && state.me && path !== "/console/session") signedOut("Your session ended; sign in again.");
  return { status: response.status, body: parsed };
}

/** Why a read failed, in words, for a card that could not be filled. */
function refusal(result, what) {
  const message = result.body && result.body.error && result.body.error.message;
  if (result.status === 403) return `This token's scopes do not include reading ${what}.`;
  // The framework's own 404 (no such route) means this listener runs other services; any
  // other 404 names what is missing (a model, an alias, a job).
  if (result.status === 404 && (!message || message.startsWith("No such route"))) {
    return `This listener does not serve ${what} (it runs other services).`;
  }
  return message || `Could not read ${what} (HTTP ${result.status}).`;
}

// ---------- sign-in ----------

function signedIn(view) {
  state.me = view;
  state.csrf = view.csrf_token;
  $("who-name").textContent = view.name;
  $("who-scopes").replaceChildren(...view.scopes.map((s) => pill(s, s === "admin" ? "alias" : "")));
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("sign-in-error").hidden = true;
  $("token").value = "";
  route();
}

function signedOut(message) {
  stopPolling();
  state.me = null;
  state.csrf = null;
  $("who").hidden = true;
  $("page").hidden = true;
  $("page").replaceChildren();
  $("notice").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("sign-in-error").hidden = !message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const button = $("sign-in-button");
  button.disabled = true;
  const result = await api("POST", "/console/session", { token: $("token").value });
  button.disabled = false;
  if (result.status === 201) signedIn(result.body);
  else signedOut((result.body && result.body.error && result.body.error.message) || `Sign-in failed (HTTP ${result.status}).`);
}

async function signOut() {
  await api("DELETE", "/console/session");
  signedOut("");
}

// ---------- pages and polling ----------

function stopPolling() {
  state.generation += 1;
  clearTimeout(state.timer);
}

/** Runs `load` now and every POLL_MS while this page stays shown (and the tab visible). */
function poll(load) {
  stopPolling();
  const generation = state.generation;
  const tick = async () => {
    if (generation !== state.generation) return;
    if (!document.hidden) await load(generation);
    if (generation === state.generation) state.timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

const current = (generation) => generation === state.generation && state.me;

function route() {
  if (!state.me) return;
  const [page, ...rest] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const name = PAGES.includes(page) ? page : "overview";
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("current", link.dataset.page === name);
  }
  $("notice").hidden = true;
  $("page").hidden = false;
  $("page").replaceChildren();
  state.shown = "";
  if (name === "overview") poll(overview);
  else if (name === "models" && rest.length) poll((g) => model(g, decodeURIComponent(rest.join("/"))));
  else if (name === "models") poll(models);
  else if (name === "training" && rest.length) poll((g) => trainingJob(g, decodeURIComponent(rest.join("/"))));
  else if (name === "training") poll(training);
  else if (name === "serving" && rest.length) poll((g) => servingModel(g, decodeURIComponent(rest.join("/"))));
  else if (name === "serving") poll(serving);
  else if (name === "datasets" && rest.length) poll((g) => dataset(g, decodeURIComponent(rest.join("/"))));
  else poll(datasets);
}

/** Replaces the page's content, unless nothing changed since the last render (polling). */
function show(generation, key, build) {
  if (!current(generation)) return;
  const stamp = JSON.stringify(key);
  const page = $("page");
  if (stamp !== state.shown || !page.firstChild) {
    state.shown = stamp;
    page.replaceChildren(...build());
  }
  const updated = page.querySelector(".updated");
  if (updated) updated.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
}

function head(title, ...extra) {
  return el("div", { class: "page-head" }, el("h1", {}, title), ...extra, el("span", { class: "updated" }, "Live"));
}

// ---------- Overview ----------

async function overview(generation) {
  const [ready, datasets, jobs, listed, metrics] = await Promise.all([
    fetch("/readyz", { cache: "no-store" }).then(async (r) => ({ status: r.status, body: await r.json() }))
      .catch((err) => ({ status: 0, body: { error: { message: err.message } } })),
    api("GET", "/v1/datasets"),
    api("GET", "/v1/training-jobs?limit=100"),
    api("GET", "/v1/models"),
    pipelineMetrics(),
  ]);
  if (!current(generation)) return;
  const view = pipelineView(metrics, jobs);
  // The pipeline's numbers move every poll: not part of the key, its card is patched in place
  // (kept, the same node, even when the rest of the page is rebuilt).
  const patched = () => {
    const shown = $("page").querySelector("[data-testid=pipeline]");
    if (!shown) return pipelineCard(view);
    morph(shown, pipelineCard(view));
    return shown;
  };
  let built = false;
  show(generation, [ready.body, datasets, jobs, listed], () => {
    built = true;
    return [head("Overview"), healthCard(ready), patched(),
      el("div", { class: "grid" }, datasetsCard(datasets), jobsCard(jobs), modelsCard(listed))];
  });
  if (!built && current(generation)) patched();
}

/** Makes `old` look like `fresh` (same text and attributes), touching only what differs: no flicker, hover kept. */
function morph(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return;
  }
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.data !== fresh.data) old.data = fresh.data;
    return;
  }
  if (old.nodeType !== Node.ELEMENT_NODE) return;
  for (const { name, value } of fresh.attributes) if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  for (const { name } of [...old.attributes]) if (!fresh.hasAttribute(name)) old.removeAttribute(name);
  const [was, now] = [[...old.childNodes], [...fresh.childNodes]];
  if (was.length !== now.length) {
    old.replaceChildren(...now);
    return;
  }
  was.forEach((child, i) => morph(child, now[i]));
}

// ---------- Overview: the pipeline, from this process's /metrics ----------

/** Samples of the pipeline's numbers, one per Overview poll, kept across pages (the last PIPELINE_KEEP). */
const PIPELINE_KEEP = 90; // six minutes at one poll every 4 s
const pipeline = { samples: [] };

/**
 * What the Overview shows, by metric (names and labels as the services export them). `counter`:
 * shown as a rate per second between polls, and the total since the process started. `service`:
 * a prefix every process running that service exports from start-up, so an absent counter there
 * means zero, and an absent prefix means the service does not run on this listener.
 */
const PIPELINE_STATS = [
  { id: "uploads", label: "Uploads", metric: "sluice_ingest_uploads_total", counter: true, service: "sluice_ingest_", runs: "ingest" },
  { id: "processed", label: "Items processed", metric: "sluice_preprocess_processed_total", counter: true,
    service: "sluice_preprocess_", runs: "preprocess" },
  { id: "failed", label: "Items failed", metric: "sluice_preprocess_failed_total", counter: true, service: "sluice_preprocess_",
    runs: "preprocess", kind: "bad" },
  { id: "jobs-running", label: "Jobs running", jobs: true, desc: "training jobs, on every worker" },
  { id: "versions-served", label: "Versions served", metric: "sluice_inference_served_version", count: true,
    service: "sluice_inference_", runs: "inference", zero: "no alias loaded yet (on the first predict)" },
  { id: "outbox-pending", label: "Outbox backlog", metric: "sluice_outbox_pending", service: "sluice_outbox_",
    runs: "the outbox relay", wait: "first count within a second", kind: "warn", desc: "events not yet published to Kafka" },
  { id: "webhooks-pending", label: "Webhooks pending", metric: "sluice_webhooks_pending", service: "sluice_webhooks_",
    runs: "webhook delivery", wait: "first count within seconds", kind: "warn", desc: "deliveries not yet made" },
  { id: "overdue-queued", label: "Overdue, still queued", metric: "sluice_preprocess_overdue_queued", service: "sluice_preprocess_",
    runs: "preprocess", wait: "counted at the first reconcile", kind: "warn", desc: "items past the deadline, event unread" },
];

/** `/metrics` (no token needed), parsed: every Sluice series. */
async function pipelineMetrics() {
  try {
    const response = await fetch("/metrics", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) return { status: response.status, series: [] };
    return { status: 200, series: parseMetrics(await response.text(), "sluice_") };
  } catch (err) {
    return { status: 0, series: [], error: err.message };
  }
}

/** Records this poll's sample and returns what the card shows: per stat, its value, rate, total, note and history. */
function pipelineView(metrics, jobs) {
  const series = metrics.series;
  const named = (name) => series.filter((s) => s.name === name);
  const runs = (prefix) => series.some((s) => s.name.startsWith(prefix));
  const sum = (found) => found.reduce((total, s) => total + s.value, 0);
  const values = {};
  const notes = {};
  for (const stat of PIPELINE_STATS) {
    if (stat.jobs) {
      values[stat.id] = jobs.status === 200 ? (jobs.body.jobs || []).filter((j) => j.status === "running").length : null;
      if (jobs.status !== 200) notes[stat.id] = refusal(jobs, "training jobs");
      continue;
    }
    const found = named(stat.metric);
    if (metrics.status !== 200) {
      values[stat.id] = null;
      notes[stat.id] = metrics.status ? `/metrics answered HTTP ${metrics.status}` : "/metrics did not answer";
    } else if (found.length) {
      values[stat.id] = stat.count ? found.length : sum(found);
    } else if (!runs(stat.service)) {
      values[stat.id] = null;
      notes[stat.id] = `${stat.runs} does not run on this listener`;
    } else if (stat.counter || stat.count) {
      values[stat.id] = 0; // the service runs, and exports the series on its first event
      if (stat.zero) notes[stat.id] = stat.zero;
    } else {
      values[stat.id] = null;
      notes[stat.id] = stat.wait;
    }
  }
  const lag = {};
  const topics = {};
  for (const s of named("sluice_consumer_lag")) {
    const group = s.labels.group || "?";
    lag[group] = (lag[group] || 0) + s.value;
    (topics[group] = topics[group] || new Set()).add(s.labels.topic || "?");
  }
  const at = Date.now() / 1000;
  const samples = pipeline.samples;
  const last = samples[samples.length - 1];
  if (last && at - last.at < 1) samples.pop(); // a re-render right after a poll: replace, too close for a rate
  const previous = samples[samples.length - 1];
  samples.push({ at, values, lag });
  if (samples.length > PIPELINE_KEEP) samples.splice(0, samples.length - PIPELINE_KEEP);
  const rateOf = (a, b, id) => {
    const [v0, v1] = [a.values[id], b.values[id]];
    if (v0 === null || v0 === undefined || v1 === null || v1 === undefined || !(b.at > a.at)) return null;
    return (v1 >= v0 ? v1 - v0 : v1) / (b.at - a.at); // a smaller total: the process restarted
  };
  const stats = PIPELINE_STATS.map((stat) => {
    const value = values[stat.id];
    const history = stat.counter
      ? samples.slice(1).map((s, i) => [s.at, rateOf(samples[i], s, stat.id)])
      : samples.map((s) => [s.at, s.values[stat.id] === undefined ? null : s.values[stat.id]]);
    return { ...stat, value, note: notes[stat.id], history,
      rate: stat.counter && previous ? rateOf(previous, samples[samples.length - 1], stat.id) : null };
  });
  const duplicates = sum(named("sluice_ingest_uploads_total").filter((s) => s.labels.outcome === "duplicate"));
  const served = named("sluice_inference_served_version")
    .map((s) => ({ model: s.labels.model, alias: s.labels.alias, version: s.value }))
    .sort((a, b) => `${a.model}\u0000${a.alias}`.localeCompare(`${b.model}\u0000${b.alias}`));
  const groups = Object.keys(lag).sort().map((group, i) => ({ group, lag: lag[group], topics: [...topics[group]].sort(),
    colour: colourOf(i), history: samples.map((s) => [s.at, s.lag[group] === undefined ? null : s.lag[group]]) }));
  return { status: metrics.status, error: metrics.error, stats, duplicates, served, groups,
    window: [Math.min(samples[0].at, at - 60), at] }; // a minute at least: the first points do not fill the line
}

/** A whole number with thin spaces between thousands. */
const whole = (v) => String(Math.round(v)).replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");

/**
 * A small line of `points` ([t, value or null]) over the time `window`, from 0 to its highest
 * value; a gap where a value is missing or polls stopped (another page was shown).
 */
function sparkline(points, window, { testid, colour, kind = "", label = "" } = {}) {
  const [width, height, pad] = [220, 30, 2.5];
  const known = points.filter(([, v]) => typeof v === "number" && Number.isFinite(v));
  const top = Math.max(...known.map(([, v]) => v), 0);
  const sx = scale(window, [pad, width - pad]);
  const sy = scale([0, top > 0 ? top : 1], [height - pad, pad]);
  const runs = [];
  let run = [];
  let before = null;
  for (const [t, v] of points) {
    const known = typeof v === "number" && Number.isFinite(v);
    if (!known || (before !== null && t - before > 2.5 * (POLL_MS / 1000))) {
      if (run.length) runs.push(run);
      run = [];
    }
    if (known) run.push([sx(t), sy(v)]);
    before = t;
  }
  if (run.length) runs.push(run);
  const end = known[known.length - 1];
  return svg("svg", { class: `spark ${kind}`, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": label, "data-testid": testid },
  svg("title", {}, known.length ? `${label}: highest ${compact(top)} over the last ${Math.round((window[1] - window[0]) / 60)} min` : `${label}: no value yet`),
  svg("line", { class: "base", x1: pad, x2: width - pad, y1: height - pad, y2: height - pad }),
  runs.map((r) => (r.length > 1 ? svg("path", { class: "line", d: pathOf(r), stroke: colour }) : null)),
  end ? svg("circle", { class: "end", cx: r1(sx(end[0])), cy: r1(sy(end[1])), r: 2.2, fill: colour }) : null);
}

function pipelineCard(view) {
  const card = el("div", { class: "card", "data-testid": "pipeline" },
    el("div", { class: "page-head wrap" }, el("h2", {}, "Pipeline"),
      el("span", { class: "muted small" }, "This process's /metrics · rates between polls, totals since it started · lines over the last 6 min")));
  if (view.status !== 200) {
    card.append(el("p", { class: "empty", "data-testid": "pipeline-unavailable" },
      view.status ? `/metrics answered HTTP ${view.status}: no pipeline numbers.` : `/metrics did not answer${view.error ? ` (${view.error})` : ""}.`));
  }
  card.append(el("div", { class: "pstats" }, view.stats.map((stat) => {
    const missing = stat.value === null || stat.value === undefined;
    // perSecond (serving.js): "0/s", "2.40/s", "1.5/min".
    const shown = stat.counter ? (stat.rate === null || missing ? null : perSecond(stat.rate)) : missing ? null : whole(stat.value);
    const sub = missing ? stat.note
      : stat.counter ? [`${whole(stat.value)} since start`, stat.id === "uploads" && view.duplicates ? ` (${whole(view.duplicates)} duplicate)` : "",
        stat.rate === null ? " · rate at the next poll" : ""].join("")
        : stat.note || (stat.id === "versions-served" ? view.served.map((s) => `${s.model} ${s.alias} v${s.version}`).join(", ")
          : stat.desc);
    const value = stat.counter ? `${stat.id}-rate` : stat.jobs ? "pipeline-jobs-running" : stat.id;
    const alarm = !missing && stat.kind && (stat.counter ? stat.rate > 0 : stat.value > 0);
    return el("div", { class: `pstat${missing ? " absent" : ""}${alarm ? ` ${stat.kind}` : ""}`, "data-testid": `stat-${stat.id}` },
      el("span", { class: "label" }, stat.label),
      el("div", { class: "figure" },
        el("b", { "data-testid": value }, shown === null ? "—" : shown)),
      el("span", { class: `sub${missing ? " note" : ""}`, "data-testid": stat.counter ? `${stat.id}-total` : null, title: sub }, sub),
      sparkline(stat.history, view.window, { testid: `spark-${stat.id}`, kind: stat.kind,
        label: stat.counter ? `${stat.label} per second` : stat.label }));
  })));
  card.append(el("div", { class: "lag", "data-testid": "consumer-lag" },
    el("h3", {}, "Consumer lag ", el("span", { class: "muted small" }, "messages not yet committed, per group (reported every 10 s)")),
    view.status !== 200 ? el("p", { class: "empty" }, "— No /metrics to read it from.")
      : !view.groups.length
        ? el("p", { class: "empty" }, "— No consumer in this process has reported its lag yet (preprocess and trainer workers report every 10 s).")
        : el("table", {}, el("tbody", {}, view.groups.map((g) => el("tr", { "data-testid": `lag-${g.group}` },
          el("td", { class: "mono" }, g.group),
          el("td", { class: "muted small" }, g.topics.join(", ")),
          el("td", { class: "num" }, el("b", { "data-testid": `consumer-lag-${g.group}` }, whole(g.lag))),
          el("td", { class: "spark-cell" }, sparkline(g.history, view.window, { colour: g.colour, label: `${g.group} lag` }))))))));
  return card;
}

function healthCard(ready) {
  const checks = (ready.body && ready.body.checks) || {};
  const up = ready.status === 200;
  return el("div", { class: "card", "data-testid": "health" },
    el("h2", {}, "Stack health ", pill(up ? "ready" : "not ready", up ? "ok" : "bad", { "data-testid": "health-status" })),
    Object.keys(checks).length === 0
      ? el("p", { class: "error" }, (ready.body && ready.body.error && ready.body.error.message) || "No answer from /readyz.")
      : el("div", { class: "health" }, Object.entries(checks).map(([dependency, check]) =>
        el("div", { class: "dep", "data-testid": `health-${dependency}` },
          el("strong", {}, dependency, " ", pill(check.ok ? "up" : "down", check.ok ? "ok" : "bad")),
          el("span", { class: "detail" }, check.ok ? check.detail : check.error)))),
  );
}

/** `card` with a muted line of text appended. */
const note = (card, text) => {
  card.append(el("p", { class: "empty" }, text));
  return card;
};

function datasetsCard(result) {
  const card = el("div", { class: "card", "data-testid": "datasets" }, el("h2", {}, "Datasets and uploads"));
  if (result.status !== 200) return note(card, refusal(result, "datasets"));
  const datasets = result.body.datasets || [];
  if (!datasets.length) return note(card, "No datasets yet: upload with `sluice push`.");
  // Short headings: the card is half the page wide.
  const statuses = [["accepted", "queued"], ["processing", "busy"], ["processed", "done"], ["failed", "failed"]];
  card.append(el("table", { class: "compact" },
    el("thead", {}, el("tr", {}, el("th", {}, "Dataset"), el("th", { class: "num" }, "Items"),
      statuses.map(([s, short]) => el("th", { class: "num", title: s }, short)))),
    el("tbody", {}, datasets.map((d) => el("tr", {},
      el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name)), el("td", { class: "num" }, d.total),
      statuses.map(([s]) => el("td", { class: "num" }, (d.by_status || {})[s] || 0)))))));
  return card;
}

function jobsCard(result) {
  const card = el("div", { class: "card", "data-testid": "jobs" }, el("h2", {}, "Training"));
  if (result.status !== 200) return note(card, refusal(result, "training jobs"));
  const jobs = result.body.jobs || [];
  const active = jobs.filter((j) => j.status === "running" || j.status === "queued");
  const count = (status) => jobs.filter((j) => j.status === status).length;
  card.append(el("div", { class: "stats" },
    el("div", {}, el("span", {}, "running"), el("b", { class: "stat", "data-testid": "jobs-running" }, count("running"))),
    el("div", {}, el("span", {}, "queued"), el("b", { class: "stat" }, count("queued"))),
    el("div", {}, el("span", {}, "recent, ended"), el("b", { class: "stat" }, jobs.length - active.length))));
  card.append(active.length
    ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Job"), el("th", {}, "Model"), el("th", {}, "Dataset"),
      el("th", { class: "num" }, "Trials"), el("th", {}, "Started"))),
    el("tbody", {}, active.map((j) => el("tr", {},
      el("td", { class: "mono", title: j.id }, el("a", { href: `#/training/${j.id}` }, short(j.id))),
      el("td", {}, j.model, " ", pill(j.status, statusKind(j.status))), el("td", {}, j.dataset),
      el("td", { class: "num" }, j.trials), el("td", {}, when(j.created_at))))))
    : el("p", { class: "empty" }, "No job is running."));
  return card;
}

function modelsCard(result) {
  const card = el("div", { class: "card", "data-testid": "models" }, el("h2", {}, "Models"));
  if (result.status !== 200) return note(card, refusal(result, "models"));
  const listed = result.body.models || [];
  if (!listed.length) return note(card, "No model registered yet.");
  card.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Model"), el("th", { class: "num" }, "Latest"), el("th", {}, "Production"))),
    el("tbody", {}, listed.map((m) => el("tr", {},
      el("td", {}, el("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name)),
      el("td", { class: "num" }, m.latest_version ? `v${m.latest_version}` : "—"),
      el("td", {}, m.aliases && m.aliases.production ? pill(`v${m.aliases.production}`, "alias") : el("span", { class: "muted" }, "none")))))));
  return card;
}

// ---------- Models ----------

async function models(generation) {
  const result = await api("GET", "/v1/models");
  show(generation, result, () => {
    if (result.status !== 200) return [head("Models"), el("div", { class: "card" }, el("p", { class: "empty" }, refusal(result, "models")))];
    const listed = result.body.models || [];
    return [head("Models"), el("div", { class: "card" }, listed.length === 0
      ? el("p", { class: "empty" }, "No model registered yet: train one with `sluice train`.")
      : el("table", { "data-testid": "model-list" },
        el("thead", {}, el("tr", {}, el("th", {}, "Model"), el("th", { class: "num" }, "Versions"), el("th", {}, "Aliases"),
          el("th", {}, "Updated"))),
        el("tbody", {}, listed.map((m) => el("tr", {},
          el("td", {}, el("a", { href: `#/models/${encodeURIComponent(m.name)}`, "data-testid": `model-${m.name}` }, m.name)),
          el("td", { class: "num" }, m.latest_version || 0),
          el("td", {}, Object.entries(m.aliases || {}).map(([alias, v]) => pill(`${alias} → v${v}`, "alias"))),
          el("td", {}, when(m.updated_at)))))))];
  });
}

async function model(generation, name) {
  const path = `/v1/models/${encodeURIComponent(name)}`;
  const found = await api("GET", path);
  if (!current(generation)) return;
  const aliases = (found.body && found.body.aliases) || {};
  const alias = state.historyAlias && aliases[state.historyAlias] ? state.historyAlias : "production";
  const history = found.status === 200
    ? await api("GET", `${path}/aliases/${encodeURIComponent(alias)}/history`)
    : { status: found.status, body: null };
  if ($("move-dialog").open) return; // never re-render under an open confirmation
  show(generation, [found, history, alias], () => {
    const back = el("a", { href: "#/models" }, "← All models");
    if (found.status !== 200) return [back, head(name), el("div", { class: "card" }, el("p", { class: "empty" }, refusal(found, "this model")))];
    return [back, head(name), aliasCard(found.body), versionsCard(found.body, history), historyCard(found.body, alias, history)];
  });
}

const isAdmin = () => Boolean(state.me && state.me.scopes.includes("admin"));

function aliasCard(m) {
  const entries = Object.entries(m.aliases || {});
  return el("div", { class: "card", "data-testid": "aliases" },
    el("h2", {}, "Aliases"),
    entries.length === 0 ? el("p", { class: "empty" }, "No alias yet: nothing is served for this model.")
      : el("p", {}, entries.map(([alias, v]) => pill(`${alias} → v${v}`, "alias", { "data-testid": `alias-${alias}` }))),
    isAdmin() ? null : el("p", { class: "muted", "data-testid": "needs-admin" },
      "Promoting and rolling back production needs an admin token; this one has: ", state.me.scopes.join(", "), "."));
}

/** The version production pointed at before its last move, if a roll back can return there. */
function rollbackTarget(m, history) {
  const last = history.status === 200 && history.body.alias === "production" && history.body.history[0];
  const production = (m.aliases || {}).production;
  return last && last.from && last.from !== production ? last.from : null;
}

function versionsCard(m, history) {
  const production = (m.aliases || {}).production;
  const target = rollbackTarget(m, history);
  const versions = [...(m.versions || [])].sort((a, b) => b.version - a.version);
  const headline = (metrics) => (metrics || {}).test_accuracy ?? (metrics || {}).val_accuracy ?? (metrics || {}).accuracy;
  return el("div", { class: "card", "data-testid": "versions" },
    el("div", { class: "page-head" }, el("h2", {}, "Versions"),
      isAdmin() && target ? el("button", { type: "button", class: "quiet", "data-testid": "rollback",
        onclick: () => confirmMove(m.name, "production", target, production, "roll back") }, `Roll back production to v${target}`) : null),
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", { class: "num" }, "Accuracy"), el("th", {}, "Metrics"),
        el("th", {}, "Lineage"), el("th", {}, "Registered"), isAdmin() ? el("th", {}, "") : null)),
      el("tbody", {}, versions.map((v) => el("tr", { "data-testid": `version-${v.version}` },
        el("td", {}, el("b", {}, `v${v.version}`), " ", el("span", { class: "muted" }, v.architecture), el("br"),
          (v.aliases || []).map((a) => pill(a, "alias"))),
        el("td", { class: "num" }, percent(headline(v.metrics))),
        el("td", {}, metricsList(v.metrics), testReport(v.metrics && v.metrics.test, v.version), versionDetails(m.name, v.version)),
        el("td", { class: "lineage" }, lineage(v.lineage)),
        el("td", {}, when(v.created_at)),
        isAdmin() ? el("td", {}, v.version === production ? el("span", { class: "muted" }, "in production")
          : el("button", { type: "button", class: "small", "data-action": "promote", "data-version": v.version,
            onclick: () => confirmMove(m.name, "production", v.version, production, "promote") }, "Promote to production"))
          : null)))));
}

function metricsList(metrics) {
  const scalars = Object.entries(metrics || {}).filter(([, value]) => typeof value === "number");
  return el("div", { class: "metrics" }, scalars.length === 0 ? el("span", { class: "muted" }, "none")
    : scalars.map(([key, value]) => el("span", {}, el("span", { class: "key" }, key.replaceAll("_", " ")), " ", number(value))));
}

/** The version's test-split report, when training wrote one: per-class precision, recall and F1,
 * and the confusion matrix (rows: true class, columns: predicted), shaded by share of the row. */
function testReport(report, version) {
  if (!report || !Array.isArray(report.per_class) || !Array.isArray(report.confusion_matrix)) return null;
  const labels = report.per_class.map((c) => c.label);
  const matrix = el("table", { class: "confusion", "data-testid": `confusion-${version}` },
    el("thead", {}, el("tr", {}, el("th", { title: "true class ↓, predicted →" }, "true \\ predicted"),
      labels.map((l) => el("th", { class: "num" }, l)))),
    el("tbody", {}, report.confusion_matrix.map((row, t) => {
      const total = row.reduce((sum, n) => sum + n, 0) || 1;
      return el("tr", {}, el("th", {}, labels[t] ?? `#${t}`), row.map((n, p) => {
        const cell = el("td", { class: `num ${t === p ? "hit" : n ? "miss" : ""}`, title: `${n} of ${total}` }, n);
        cell.style.setProperty("--share", String(n / total));
        return cell;
      }));
    })));
  const classes = el("table", { class: "compact" },
    el("thead", {}, el("tr", {}, el("th", {}, "class"), el("th", { class: "num" }, "precision"), el("th", { class: "num" }, "recall"),
      el("th", { class: "num" }, "F1"), el("th", { class: "num" }, "items"))),
    el("tbody", {}, report.per_class.map((c) => el("tr", {}, el("td", {}, c.label), el("td", { class: "num" }, percent(c.precision)),
      el("td", { class: "num" }, percent(c.recall)), el("td", { class: "num" }, percent(c.f1)), el("td", { class: "num" }, c.support)))));
  return el("details", { class: "test-report" },
    el("summary", {}, `test report: ${report.items} items, macro F1 ${percent(report.macro_f1)}`), classes, matrix);
}

function lineage(l) {
  if (!l) return "—";
  const row = (key, value, title) => el("div", {}, el("span", { class: "key" }, key), el("span", { class: "mono", title: title || value }, value));
  return [row("job", short(l.job_id), l.job_id), row("trial", short(l.trial_id), l.trial_id),
    row("snapshot", short(l.snapshot_id), l.snapshot_id), row("dataset", l.dataset)];
}

/** Every field of one version (hyper-parameters, labels, input spec, artifact), loaded on demand. */
function versionDetails(name, version) {
  const body = el("pre", {}, "Loading…");
  return el("details", {
    ontoggle: async (event) => {
      if (!event.target.open) return;
      const result = await api("GET", `/v1/models/${encodeURIComponent(name)}/versions/${version}`);
      const { reference, ...rest } = result.body || {};
      body.textContent = result.status === 200 ? JSON.stringify(rest, null, 2) : refusal(result, "this version");
    },
  }, el("summary", {}, "all fields"), body);
}

function historyCard(m, alias, history) {
  const names = Object.keys(m.aliases || {});
  if (!names.includes("production")) names.unshift("production");
  const picker = el("select", { "aria-label": "Alias", onchange: (event) => { state.historyAlias = event.target.value; state.shown = ""; route(); } },
    names.map((n) => el("option", { value: n, selected: n === alias }, n)));
  const moves = (history.status === 200 && history.body.history) || [];
  return el("div", { class: "card", "data-testid": "history" },
    el("div", { class: "page-head" }, el("h2", {}, "Audit history of ", picker)),
    history.status !== 200 ? el("p", { class: "empty" }, refusal(history, "the alias history"))
      : moves.length === 0 ? el("p", { class: "empty" }, `${alias} has never moved.`)
        : el("table", {},
          el("thead", {}, el("tr", {}, el("th", {}, "When"), el("th", {}, "Move"), el("th", {}, "By"), el("th", {}, "Reason"))),
          el("tbody", {}, moves.map((move) => el("tr", {},
            el("td", {}, when(move.at)),
            el("td", {}, move.from ? `v${move.from}` : "—", " → ", move.to ? `v${move.to}` : "removed"),
            el("td", { class: "mono" }, move.actor),
            el("td", {}, move.reason || el("span", { class: "muted" }, "—")))))));
}

// ---------- moving an alias ----------

function confirmMove(name, alias, version, from, verb) {
  const dialog = $("move-dialog");
  $("move-title").textContent = `${verb === "promote" ? "Promote" : "Roll back"}: ${alias} → v${version}`;
  $("move-detail").textContent = `${name}: ${alias} points at ${from ? `v${from}` : "nothing"} now; it will point at v${version}. Every process serving ${alias} switches within seconds.`;
  $("move-reason").value = verb === "promote" ? `promoted v${version} from the console` : `rolled back to v${version} from the console`;
  $("move-error").hidden = true;
  $("move-confirm").disabled = false;
  dialog.dataset.target = JSON.stringify({ name, alias, version, from });
  dialog.showModal();
}

async function moveConfirmed(event) {
  event.preventDefault();
  const dialog = $("move-dialog");
  const { name, alias, version, from } = JSON.parse(dialog.dataset.target);
  $("move-confirm").disabled = true;
  const result = await api("PUT", `/v1/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`,
    { version, reason: $("move-reason").value });
  if (result.status !== 200) {
    $("move-error").textContent = (result.body && result.body.error && result.body.error.message) || `HTTP ${result.status}`;
    $("move-error").hidden = false;
    $("move-confirm").disabled = false;
    return;
  }
  dialog.close();
  route();
  const notice = $("notice");
  notice.className = "notice";
  notice.textContent = `${name}: ${alias} moved from ${from ? `v${from}` : "nothing"} to v${version}.`;
  notice.hidden = false;
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("move-form").addEventListener("submit", moveConfirmed);
  $("move-cancel").addEventListener("click", () => $("move-dialog").close());
  $("confirm-form").addEventListener("submit", cancelConfirmed);
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
  $("job-form").addEventListener("submit", startJob);
  $("job-cancel").addEventListener("click", () => $("job-dialog").close());
  window.addEventListener("hashchange", route);
  const result = await api("GET", "/console/session");
  if (result.status === 200 && result.body.via === "cookie") signedIn(result.body);
  else signedOut("");
});
