// The Sluice console: one page, rendered here from the same /v1 API every client calls.
// Signed in, the browser holds an HttpOnly session cookie (the page never sees the token);
// requests that change state send the session's CSRF token as X-CSRF-Token.
"use strict";

const POLL_MS = 4000;
const PAGES = ["overview", "datasets", "training", "models", "serving"];
const NEXT_PHASE = {
  datasets: {
    title: "Datasets",
    lines: ["Each dataset's items by status and by label, and its preprocessing pipeline",
      "Uploads and bulk imports as they progress", "The labelling queue"],
    api: "GET /v1/datasets, GET /v1/datasets/{name}, GET /v1/imports/{id}",
  },
};

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
  else comingNext(name);
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

function comingNext(name) {
  stopPolling();
  const plan = NEXT_PHASE[name];
  $("page").replaceChildren(
    el("div", { class: "page-head" }, el("h1", {}, plan.title)),
    el("div", { class: "card soon", "data-testid": "coming-next" },
      el("h2", {}, "Coming in the next phase"),
      el("p", { class: "muted" }, "This page is not built yet. It will show:"),
      el("ul", {}, plan.lines.map((line) => el("li", {}, line))),
      el("p", { class: "muted" }, "Until then the API has it: ", el("code", {}, plan.api), " (see ",
        el("a", { href: "/docs" }, "the API reference"), ")."),
    ),
  );
}

// ---------- Overview ----------

async function overview(generation) {
  const [ready, datasets, jobs, listed] = await Promise.all([
    fetch("/readyz", { cache: "no-store" }).then(async (r) => ({ status: r.status, body: await r.json() }))
      .catch((err) => ({ status: 0, body: { error: { message: err.message } } })),
    api("GET", "/v1/datasets"),
    api("GET", "/v1/training-jobs?limit=100"),
    api("GET", "/v1/models"),
  ]);
  show(generation, [ready.body, datasets, jobs, listed], () => [
    head("Overview"),
    healthCard(ready),
    el("div", { class: "grid" }, datasetsCard(datasets), jobsCard(jobs), modelsCard(listed)),
  ]);
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
  const statuses = ["accepted", "processing", "processed", "failed"];
  card.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Dataset"), el("th", { class: "num" }, "Items"),
      statuses.map((s) => el("th", { class: "num" }, s)))),
    el("tbody", {}, datasets.map((d) => el("tr", {},
      el("td", {}, d.name), el("td", { class: "num" }, d.total),
      statuses.map((s) => el("td", { class: "num" }, (d.by_status || {})[s] || 0)))))));
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
        el("td", {}, metricsList(v.metrics), versionDetails(m.name, v.version)),
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

// ---------- charts: inline SVG, drawn here (no library) ----------

/** The SVG namespace as the HTML parser assigns it (this file names no URL: it loads nothing from elsewhere). */
const SVG_NS = new DOMParser().parseFromString("<svg></svg>", "text/html").querySelector("svg").namespaceURI;

/** An SVG element, like `el`: presentation attributes only (the style policy refuses inline styles). */
const svg = (tag, attrs = {}, ...children) => {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

const PALETTE = ["#2456d6", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#f08c00", "#5c940d",
  "#9c36b5", "#1971c2", "#d6336c", "#087f5b"];
/** The i-th series' colour: a fixed palette, then hues spread by the golden angle. */
const colourOf = (i) => (i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.508) % 360)}, 62%, 44%)`);
const swatch = (colour, ring = false) => svg("svg", { class: "swatch", viewBox: "0 0 12 12", width: 12, height: 12 },
  svg("rect", { x: 1, y: 1, width: 10, height: 10, rx: 2, fill: colour, stroke: ring ? "#1d2433" : "none", "stroke-width": 1.5 }));
const r1 = (v) => Math.round(v * 10) / 10;

/** A linear or log10 scale from `domain` onto `range`. */
function scale([d0, d1], [r0, r1], log = false) {
  const f = log ? Math.log10 : (v) => v;
  const a = f(d0);
  const span = f(d1) - a;
  return (v) => (span === 0 ? (r0 + r1) / 2 : r0 + ((f(v) - a) / span) * (r1 - r0));
}

/** Round tick values covering [lo, hi], about `count` of them. */
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw * 0.999);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Powers of ten within [lo, hi] (with 2 and 5 between them when there are few). */
function logTicks(lo, hi) {
  const out = [];
  const few = Math.log10(hi / lo) < 2.5;
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e += 1) {
    for (const m of few ? [1, 2, 5] : [1]) {
      const v = Number((m * 10 ** e).toPrecision(6));
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  return out.length >= 2 ? out : [lo, hi];
}

/** [lo, hi] widened to whole ticks, or around a single value. */
function niceDomain(lo, hi, count = 5) {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) * 0.05 || 0.5;
    return [lo - pad, hi + pad];
  }
  const t = ticks(lo, hi, count);
  const step = t.length > 1 ? t[1] - t[0] : hi - lo;
  return [Math.min(lo, t[0] > lo ? t[0] - step : t[0]), Math.max(hi, t[t.length - 1] < hi ? t[t.length - 1] + step : t[t.length - 1])];
}

/** A compact number: 3 significant digits, exponent form when tiny or huge. */
function compact(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return v === null || v === undefined ? "—" : String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(1).replace("e-", "e−");
  return String(Number(v.toPrecision(3)));
}

/**
 * An x-y chart: grid, axes with ticks and labels, and the marks `draw(sx, sy)` returns.
 * `x` and `y` are domains; `xLog`/`yLog` make an axis log10; `xTicks` may be given (with
 * `xFormat` naming them).
 */
function chart({ width = 960, height = 300, x, y, xLog = false, yLog = false, xTicks, yTicks, xFormat = compact,
  yFormat = compact, xLabel = "", yLabel = "", draw, testid, cls = "", label = "" }) {
  const m = { left: 58, right: 14, top: 10, bottom: 40 };
  const sx = scale(x, [m.left, width - m.right], xLog);
  const sy = scale(y, [height - m.bottom, m.top], yLog);
  const xs = xTicks || (xLog ? logTicks(...x) : ticks(...x, Math.max(2, Math.floor(width / 110))));
  const ys = yTicks || (yLog ? logTicks(...y) : ticks(...y, Math.max(2, Math.floor(height / 60))));
  const bottom = height - m.bottom;
  return svg("svg", { class: `chart ${cls}`, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
    "data-testid": testid, preserveAspectRatio: "xMidYMid meet" },
  svg("g", { class: "grid" },
    ys.map((v) => svg("line", { x1: m.left, x2: width - m.right, y1: r1(sy(v)), y2: r1(sy(v)) })),
    xs.map((v) => svg("line", { x1: r1(sx(v)), x2: r1(sx(v)), y1: m.top, y2: bottom }))),
  svg("g", { class: "axis" },
    svg("line", { x1: m.left, x2: width - m.right, y1: bottom, y2: bottom }),
    svg("line", { x1: m.left, x2: m.left, y1: m.top, y2: bottom }),
    ys.map((v) => svg("text", { x: m.left - 6, y: r1(sy(v)) + 4, "text-anchor": "end" }, yFormat(v))),
    xs.map((v) => svg("text", { x: r1(sx(v)), y: bottom + 16, "text-anchor": "middle" }, xFormat(v))),
    svg("text", { class: "label", x: (m.left + width - m.right) / 2, y: height - 4, "text-anchor": "middle" }, xLabel),
    svg("text", { class: "label", x: 12, y: (m.top + bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.top + bottom) / 2})` }, yLabel)),
  draw(sx, sy));
}

/** `d` of a polyline through `points` ([x, y] pairs, already scaled). */
const pathOf = (points) => points.map(([x, y], i) => `${i ? "L" : "M"}${r1(x)} ${r1(y)}`).join("");

/** A horizontal bar of shares (`parts`: [{value, kind, title}]) `width` wide. */
function shareBar(parts, width = 140, height = 8) {
  const total = parts.reduce((sum, p) => sum + p.value, 0);
  let at = 0;
  return svg("svg", { class: "sharebar", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" },
    svg("rect", { class: "track", x: 0, y: 0, width, height, rx: height / 2 }),
    total === 0 ? null : parts.filter((p) => p.value > 0).map((p) => {
      const w = (p.value / total) * width;
      const rect = svg("rect", { class: `part ${p.kind}`, x: r1(at), y: 0, width: r1(Math.max(w, 1.5)), height },
        svg("title", {}, p.title));
      at += w;
      return rect;
    }));
}

// ---------- Training ----------

const ENDED = ["succeeded", "failed", "cancelled"];
const RUN_STATUSES = ["succeeded", "running", "queued", "failed", "cancelled"];
/** Cancelling a job needs `train` (or `admin`, which implies it): README's scope matrix. */
const canTrain = () => Boolean(state.me && state.me.scopes.some((s) => s === "train" || s === "admin"));
/** Epoch keys that are bookkeeping, not metrics. */
const NOT_METRICS = ["epoch", "epochs", "resumed_from", "worker"];
const METRIC_ORDER = ["val_accuracy", "val_loss", "train_accuracy", "train_loss", "learning_rate", "seconds"];
const isAccuracy = (key) => /accuracy/.test(key);
const metricName = (key) => key.replaceAll("_", " ").replace(/^val /, "validation ");
const metricValue = (key, v) => (typeof v !== "number" ? "—" : isAccuracy(key) ? percent(v) : compact(v));
const lowerIsBetter = (key) => /loss/.test(key);

const duration = (ms) => {
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) return "—";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};
const between = (from, to) => (from ? duration((to ? Date.parse(to) : Date.now()) - Date.parse(from)) : "—");

/** A trial's value of `key`: its metrics (the best epoch once finished), else its latest epoch. */
function trialValue(t, key) {
  if (t.metrics && typeof t.metrics[key] === "number") return t.metrics[key];
  const last = (t.history || [])[(t.history || []).length - 1];
  return last && typeof last[key] === "number" ? last[key] : null;
}

/** Higher is better: validation accuracy, then lower validation loss (the coordinator's ranking). */
const byScore = (a, b) => (trialValue(b, "val_accuracy") ?? -Infinity) - (trialValue(a, "val_accuracy") ?? -Infinity)
  || (trialValue(a, "val_loss") ?? Infinity) - (trialValue(b, "val_loss") ?? Infinity);

/** Everything the job page's cards draw from, computed once per render. */
function jobInfo(job) {
  const trials = job.trials || [];
  const byId = new Map(trials.map((t) => [t.id, t]));
  const colour = new Map(trials.map((t, i) => [t.id, colourOf(i)]));
  const children = new Map();
  for (const t of trials) if (t.parent) children.set(t.parent, [...(children.get(t.parent) || []), t]);
  // The registered best trial once the job has one; until then the leader, ranked like the
  // coordinator ranks: succeeded trials of the highest rung that has any.
  let best = job.best_trial ? byId.get(job.best_trial) : null;
  const final = Boolean(best);
  if (!best) {
    const done = trials.filter((t) => t.status === "succeeded" && trialValue(t, "val_accuracy") !== null);
    const top = Math.max(-1, ...done.map((t) => t.rung));
    best = done.filter((t) => t.rung === top).sort(byScore)[0] || null;
  }
  const keys = new Set();
  for (const t of trials) {
    for (const entry of t.history || []) {
      for (const [key, value] of Object.entries(entry)) if (typeof value === "number" && !NOT_METRICS.includes(key)) keys.add(key);
    }
  }
  const metricKeys = [...METRIC_ORDER.filter((k) => keys.has(k)), ...[...keys].filter((k) => !METRIC_ORDER.includes(k)).sort()];
  // Parameters that differ between trials (epochs differ by rung; the horizon and augmentation are per job).
  const names = new Set(trials.flatMap((t) => Object.keys(t.params || {})));
  const varying = [...names].filter((name) => !["epochs", "horizon", "augment"].includes(name)
    && new Set(trials.map((t) => JSON.stringify((t.params || {})[name]))).size > 1);
  const rungs = [...new Set(trials.map((t) => t.rung))].sort((a, b) => a - b);
  const maxEpoch = Math.max(1, ...trials.map((t) => t.epochs || 0), ...trials.map((t) => t.epoch || 0));
  const strategy = (job.request && job.request.search && job.request.search.strategy) || "";
  return { job, trials, byId, colour, children, best, final, metricKeys, varying, rungs, maxEpoch, strategy };
}

const trialName = (t) => `#${t.ordinal}`;
const paramsText = (t, names) => names.map((n) => `${n.replaceAll("_", " ")} ${compact((t.params || {})[n])}`).join(" · ");

// ----- the job list -----

/** Job summaries (search, best score, progress) by id: an ended job's is fetched once, a live one's every poll. */
const jobSummaries = new Map();
/** How many of the newest jobs the list shows a best score for (each needs the job's own read). */
const SUMMARISED = 20;

function summarise(job) {
  const info = jobInfo(job);
  return { status: job.status, strategy: info.strategy, summary: job.trials_summary || {},
    best: info.best ? { ordinal: info.best.ordinal, score: trialValue(info.best, "val_accuracy"), final: info.final } : null };
}

async function training(generation) {
  const [listed, retrains] = await Promise.all([
    api("GET", "/v1/training-jobs?limit=100"), api("GET", "/v1/retrain-requests?limit=20")]);
  if (!current(generation)) return;
  const jobs = (listed.status === 200 && listed.body.jobs) || [];
  const stale = jobs.slice(0, SUMMARISED).filter((j) => {
    const known = jobSummaries.get(j.id);
    return !known || known.status !== j.status || !ENDED.includes(j.status);
  });
  const views = await Promise.all(stale.map((j) => api("GET", `/v1/training-jobs/${encodeURIComponent(j.id)}`)));
  for (const view of views) if (view.status === 200) jobSummaries.set(view.body.id, summarise(view.body));
  show(generation, [listed, retrains, jobs.map((j) => jobSummaries.get(j.id) || null)], () => [
    head("Training"), jobListCard(listed), retrainCard(retrains)]);
}

function statusBar(summary, width = 110) {
  const parts = RUN_STATUSES.map((s) => ({ value: summary[s] || 0, kind: s, title: `${summary[s] || 0} ${s}` }));
  return shareBar(parts, width);
}

function jobListCard(result) {
  const card = el("div", { class: "card", "data-testid": "job-list" }, el("h2", {}, "Jobs"));
  if (result.status !== 200) return note(card, refusal(result, "training jobs"));
  const jobs = result.body.jobs || [];
  if (!jobs.length) return note(card, "No training job yet: start one with `sluice train`.");
  card.append(el("table", { class: "jobs" },
    el("thead", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Job"), el("th", {}, "Model"), el("th", {}, "Dataset"),
      el("th", {}, "Search"), el("th", {}, "Trials"), el("th", { class: "num" }, "Best val. acc."), el("th", {}, "Registered"),
      el("th", {}, "Created"), el("th", { class: "num" }, "Took"))),
    el("tbody", {}, jobs.map((j) => {
      const known = jobSummaries.get(j.id);
      return el("tr", { "data-testid": `job-${j.id}` },
        el("td", {}, pill(j.status, statusKind(j.status))),
        el("td", {}, el("a", { href: `#/training/${j.id}`, class: "mono", title: j.id }, short(j.id)),
          j.origin === "retrain" ? el("span", { class: "muted small" }, " retrain") : null),
        el("td", {}, j.model), el("td", {}, j.dataset),
        el("td", {}, known ? known.strategy : el("span", { class: "muted" }, "—")),
        el("td", {}, el("div", { class: "trials-cell" }, el("span", { class: "num" }, j.trials),
          known && j.trials ? statusBar(known.summary) : null)),
        el("td", { class: "num" }, known && known.best && known.best.score !== null
          ? el("span", { title: `trial #${known.best.ordinal}${known.best.final ? "" : " (leading so far)"}` },
            known.best.final ? null : el("span", { class: "muted small" }, "so far "), percent(known.best.score))
          : el("span", { class: "muted" }, "—")),
        el("td", {}, j.registered_version ? el("a", { href: `#/models/${encodeURIComponent(j.model)}` }, `v${j.registered_version}`)
          : el("span", { class: "muted" }, "—")),
        el("td", {}, when(j.created_at)),
        el("td", { class: "num" }, between(j.created_at, j.finished_at)));
    }))));
  if (jobs.length > SUMMARISED) {
    card.append(el("p", { class: "muted small" }, `Search and best score are shown for the ${SUMMARISED} newest jobs; open a job for the rest.`));
  }
  return card;
}

const OUTCOME_KIND = { started: "ok", coalesced: "run", skipped: "warn", refused: "bad" };

/** What a retrain request's evidence says, in a line. */
function evidenceLine(reason, evidence) {
  const e = evidence || {};
  if (typeof e.live_accuracy === "number") {
    return `live accuracy ${percent(e.live_accuracy)} on ${e.answers ?? "?"} answers (threshold ${percent(e.threshold)}), v${e.version ?? "?"}`;
  }
  if (e.verdict) {
    const fired = (e.verdict.fired || []).join(", ");
    return `${String(e.verdict.kind || "drift").replaceAll("_", " ")} on v${e.version ?? "?"}${fired ? `: ${fired}` : ""}`;
  }
  return Object.keys(e).length ? JSON.stringify(e) : reason;
}

function retrainCard(result) {
  const card = el("div", { class: "card", "data-testid": "retrain-requests" }, el("h2", {}, "Retrain requests"));
  if (result.status !== 200) return note(card, refusal(result, "retrain requests"));
  const requests = result.body.requests || [];
  if (!requests.length) return note(card, "No retrain request yet: drift or low live accuracy asks for one when inference is set to.");
  card.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Received"), el("th", {}, "Model"), el("th", {}, "Reason"), el("th", {}, "Evidence"),
      el("th", {}, "Outcome"), el("th", {}, "Job"))),
    el("tbody", {}, requests.map((r) => el("tr", {},
      el("td", {}, when(r.received_at)), el("td", {}, r.model), el("td", {}, r.reason.replaceAll("_", " ")),
      el("td", { class: "small" }, evidenceLine(r.reason, r.evidence)),
      el("td", {}, pill(r.outcome, OUTCOME_KIND[r.outcome] || ""), r.detail ? el("div", { class: "muted small" }, r.detail) : null),
      el("td", {}, r.job_id ? el("a", { href: `#/training/${r.job_id}`, class: "mono" }, short(r.job_id)) : "—"))))));
  return card;
}

// ----- one job -----

async function trainingJob(generation, id) {
  const result = await api("GET", `/v1/training-jobs/${encodeURIComponent(id)}`);
  if (!current(generation) || $("confirm-dialog").open) return; // never re-render under an open confirmation
  show(generation, result, () => {
    const back = el("a", { href: "#/training" }, "← All jobs");
    if (result.status !== 200) {
      return [back, head(`Job ${short(id)}`), el("div", { class: "card" }, el("p", { class: "empty" }, refusal(result, "this training job")))];
    }
    const info = jobInfo(result.body);
    const rungs = rungsCard(info);
    return [back,
      head(el("span", {}, `Job ${short(info.job.id)} `, pill(info.job.status, statusKind(info.job.status), { "data-testid": "job-status" })),
        canTrain() && !ENDED.includes(info.job.status)
          ? el("button", { type: "button", class: "danger", "data-testid": "cancel-job", onclick: () => confirmCancel(info.job) }, "Cancel job")
          : null),
      jobSummaryCard(info), curvesCard(info),
      rungs ? el("div", { class: "grid pair" }, scatterCard(info), rungs) : scatterCard(info, true),
      trialsCard(info)];
  });
}

function fact(label, ...value) {
  return el("div", { class: "fact" }, el("span", { class: "key" }, label), el("span", {}, ...value));
}

function searchText(job) {
  const search = (job.request && job.request.search) || {};
  const bits = [search.strategy];
  if (search.max_trials) bits.push(`${search.max_trials} trials at most`);
  if (search.reduction_factor) bits.push(`keeps 1/${search.reduction_factor} per rung`);
  if (search.min_epochs) bits.push(`first rung ${search.min_epochs} epoch${search.min_epochs === 1 ? "" : "s"}`);
  if (search.early_stopping) bits.push(`early stopping: ${search.early_stopping}`);
  return bits.filter(Boolean).join(", ");
}

function jobSummaryCard(info) {
  const { job, best, final } = info;
  const summary = job.trials_summary || {};
  const promotion = job.promotion;
  return el("div", { class: "card", "data-testid": "job-summary" },
    el("div", { class: "facts" },
      fact("Model", el("a", { href: `#/models/${encodeURIComponent(job.model)}` }, job.model), " ",
        el("span", { class: "muted" }, job.architecture)),
      fact("Dataset", job.dataset, " ", el("span", { class: "muted", title: job.snapshot_id },
        `${job.items} items, ${(job.labels || []).length} classes`)),
      fact("Search", searchText(job) || "—"),
      fact("Trials", el("span", { class: "trials-cell" }, statusBar(summary, 90),
        el("span", { "data-testid": "trial-counts" }, RUN_STATUSES.filter((s) => summary[s]).map((s) => `${summary[s]} ${s}`).join(", ") || "none yet"))),
      fact(final ? "Best trial" : "Leading", best
        ? el("span", { "data-testid": "best-trial" }, el("b", {}, trialName(best)), ` ${percent(trialValue(best, "val_accuracy"))} validation accuracy`)
        : el("span", { class: "muted" }, "no trial has finished")),
      fact("Registered", job.registered_version
        ? el("a", { href: `#/models/${encodeURIComponent(job.model)}`, "data-testid": "registered-version" }, `${job.model} v${job.registered_version}`)
        : el("span", { class: "muted" }, ENDED.includes(job.status) ? "nothing" : "when the search ends")),
      promotion ? fact("Promotion", pill(promotion.promoted ? "promoted" : promotion.pending ? "pending live test" : "not promoted",
        promotion.promoted ? "ok" : ""), " ", el("span", { class: "muted" }, `policy ${promotion.policy}`),
      promotion.reason ? el("div", { class: "small muted" }, promotion.reason) : null) : null,
      fact("Requested", job.origin === "retrain" ? pill("retrain", "alias") : "by API", " ", el("span", { class: "muted" }, job.requested_by)),
      fact("Created", when(job.created_at)),
      fact(ENDED.includes(job.status) ? "Took" : "Running for", between(job.started_at || job.created_at, job.finished_at))),
    job.error ? el("p", { class: "error", "data-testid": "job-error" }, job.error) : null);
}

/** A trial's epochs as [epoch, value] points, starting from its parent's last epoch when it continues one. */
function curvePoints(info, t, key) {
  const own = (t.history || []).filter((e) => typeof e[key] === "number").map((e) => [e.epoch, e[key]]);
  const parent = t.parent && info.byId.get(t.parent);
  if (parent && own.length) {
    const before = (parent.history || []).filter((e) => typeof e[key] === "number" && e.epoch < own[0][0]);
    if (before.length) own.unshift([before[before.length - 1].epoch, before[before.length - 1][key]]);
  }
  return own;
}

function curvesCard(info) {
  const card = el("div", { class: "card", "data-testid": "curves" });
  const key = info.metricKeys.includes(state.view.metric) ? state.view.metric : info.metricKeys[0];
  const redraw = () => card.replaceWith(curvesCard(info));
  card.append(el("div", { class: "page-head" }, el("h2", {}, "Learning curves"),
    info.metricKeys.length ? el("label", { class: "inline" }, "Metric ",
      el("select", { "data-testid": "curve-metric", onchange: (event) => { state.view.metric = event.target.value; redraw(); } },
        info.metricKeys.map((k) => el("option", { value: k, selected: k === key }, metricName(k))))) : null));
  const drawn = info.trials.map((t) => ({ t, points: curvePoints(info, t, key) })).filter((s) => s.points.length);
  if (!drawn.length) return note(card, "No epoch has finished yet: each trial's curve appears after its first epoch.");
  const values = drawn.flatMap((s) => s.points.map((p) => p[1]));
  let y = niceDomain(Math.min(...values), Math.max(...values));
  if (isAccuracy(key)) y = [Math.max(0, y[0]), Math.min(1, y[1])];
  const x = [1, Math.max(2, info.maxEpoch)];
  const best = info.best;
  const ordered = [...drawn.filter((s) => s.t !== best), ...drawn.filter((s) => s.t === best)];
  const plot = chart({ width: 960, height: 320, x, y, xLabel: "epoch", yLabel: metricName(key), testid: "curve-chart",
    label: `${metricName(key)} by epoch for ${drawn.length} trials`,
    xTicks: info.maxEpoch <= 20 ? Array.from({ length: Math.max(2, info.maxEpoch) }, (_, i) => i + 1) : undefined,
    yFormat: isAccuracy(key) ? (v) => `${Math.round(v * 1000) / 10}%` : compact,
    cls: `curves${drawn.length > 1 && best ? " has-best" : ""}${drawn.length > 40 ? " many" : ""}`,
    draw: (sx, sy) => svg("g", {}, ordered.map(({ t, points }) => {
      const scaled = points.map(([e, v]) => [sx(e), sy(v)]);
      const last = scaled[scaled.length - 1];
      const tip = `${trialName(t)} · rung ${t.rung} · ${t.status} · ${metricName(key)} ${metricValue(key, points[points.length - 1][1])} at epoch ${points[points.length - 1][0]}${info.varying.length ? ` · ${paramsText(t, info.varying)}` : ""}`;
      return svg("g", { class: `series${t === best ? " best" : ""}${t.status === "running" ? " running" : ""}`, "data-trial": t.ordinal },
        svg("path", { class: "curve", d: pathOf(scaled), stroke: info.colour.get(t.id) }, svg("title", {}, tip)),
        scaled.length === 1 || t === best || t.status === "running"
          ? svg("circle", { class: t.status === "running" ? "dot live" : "dot", cx: r1(last[0]), cy: r1(last[1]), r: t === best ? 4 : 3,
            fill: info.colour.get(t.id) }, svg("title", {}, tip)) : null);
    })) });
  card.append(plot, curveLegend(info, drawn.map((s) => s.t), plot));
  return card;
}

/** The trials, best first; hovering one brings its curve forward. */
function curveLegend(info, trials, plot) {
  const LIMIT = 24;
  const ranked = [...trials].sort(byScore);
  const focus = (ordinal) => {
    plot.classList.toggle("focus", ordinal !== null);
    for (const g of plot.querySelectorAll(".series")) g.classList.toggle("on", g.dataset.trial === String(ordinal));
  };
  return el("div", { class: "legend", "data-testid": "curve-legend" },
    ranked.slice(0, LIMIT).map((t) => el("span", { class: `item${t === info.best ? " best" : ""}`, "data-trial": t.ordinal,
      onmouseenter: () => focus(t.ordinal), onmouseleave: () => focus(null),
      title: info.varying.length ? paramsText(t, info.varying) : "" },
    swatch(info.colour.get(t.id), t === info.best), trialName(t),
    t === info.best ? el("span", { class: "tag" }, info.final ? "best" : "leading") : null,
    el("span", { class: "muted" }, ` ${percent(trialValue(t, "val_accuracy"))}`))),
    ranked.length > LIMIT ? el("span", { class: "muted" }, `and ${ranked.length - LIMIT} more (hover a line to name it)`) : null);
}

const RUNG_COLOURS = ["#94a3b8", "#2456d6", "#e8590c", "#2f9e44", "#7048e8", "#c2255c"];

/** Whether a parameter's values are best read on a log axis: positive and spanning two decades (one for rates). */
const logScaled = (name, lo, hi) => lo > 0 && hi / lo >= (/learning_rate|weight_decay/.test(name) ? 10 : 100);

function scatterCard(info, wide = false) {
  const card = el("div", { class: "card", "data-testid": "scatter" });
  const redraw = () => card.replaceWith(scatterCard(info, wide));
  const names = info.varying.length ? info.varying
    : [...new Set(info.trials.flatMap((t) => Object.keys(t.params || {})))].filter((n) => typeof (info.trials[0].params || {})[n] === "number");
  const param = names.includes(state.view.param) ? state.view.param : names[0];
  const scores = ["val_accuracy", "val_loss"].filter((k) => info.trials.some((t) => trialValue(t, k) !== null));
  const score = scores.includes(state.view.score) ? state.view.score : scores[0];
  card.append(el("div", { class: "page-head wrap" }, el("h2", {}, "Score by parameter"),
    names.length ? el("span", { class: "controls" },
      el("select", { "aria-label": "Parameter", "data-testid": "scatter-param", onchange: (event) => { state.view.param = event.target.value; redraw(); } },
        names.map((n) => el("option", { value: n, selected: n === param }, n.replaceAll("_", " ")))),
      scores.length > 1 ? el("select", { "aria-label": "Score", onchange: (event) => { state.view.score = event.target.value; redraw(); } },
        scores.map((k) => el("option", { value: k, selected: k === score }, metricName(k)))) : null) : null));
  if (!names.length) return note(card, "The trials share every parameter.");
  const points = info.trials.filter((t) => trialValue(t, score) !== null && (t.params || {})[param] !== undefined);
  if (!points.length) return note(card, "No trial has a score yet.");
  const raw = points.map((t) => t.params[param]);
  const numeric = raw.every((v) => typeof v === "number");
  const categories = numeric ? [] : [...new Set(raw.map(String))].sort();
  const lo = numeric ? Math.min(...raw) : 0;
  const hi = numeric ? Math.max(...raw) : categories.length - 1;
  const log = numeric && logScaled(param, lo, hi);
  const x = numeric ? (log ? [lo / 1.4, hi * 1.4] : niceDomain(lo, hi)) : [-0.6, categories.length - 0.4];
  const ys = points.map((t) => trialValue(t, score));
  let y = niceDomain(Math.min(...ys), Math.max(...ys));
  if (isAccuracy(score)) y = [Math.max(0, y[0]), Math.min(1, y[1])];
  const position = (t) => (numeric ? t.params[param] : categories.indexOf(String(t.params[param])) + (((t.ordinal * 7919) % 11) / 11 - 0.5) * 0.5);
  const byRung = info.rungs.length > 1;
  card.append(chart({ width: wide ? 960 : 470, height: wide ? 320 : 300, x, y, xLog: log, xLabel: `${param.replaceAll("_", " ")}${log ? " (log scale)" : ""}`,
    yLabel: metricName(score), testid: "scatter-chart", label: `${metricName(score)} against ${param}`,
    xTicks: numeric ? undefined : categories.map((_, i) => i), xFormat: numeric ? compact : (i) => categories[i] ?? "",
    yFormat: isAccuracy(score) ? (v) => `${Math.round(v * 1000) / 10}%` : compact,
    draw: (sx, sy) => svg("g", {}, points.map((t) => svg("circle", {
      class: `point${t === info.best ? " best" : ""}`, cx: r1(sx(position(t))), cy: r1(sy(trialValue(t, score))), r: t === info.best ? 6 : 4.5,
      fill: byRung ? RUNG_COLOURS[t.rung % RUNG_COLOURS.length] : info.colour.get(t.id),
    }, svg("title", {}, `${trialName(t)} · rung ${t.rung} · ${param} ${compact(t.params[param])} · ${metricName(score)} ${metricValue(score, trialValue(t, score))}`)))) }));
  card.append(el("div", { class: "legend" },
    byRung ? info.rungs.map((r) => el("span", { class: "item" }, swatch(RUNG_COLOURS[r % RUNG_COLOURS.length]), `rung ${r}`)) : null,
    info.best ? el("span", { class: "item" }, swatch("#fff", true), `${trialName(info.best)} ${info.final ? "best" : "leading"}`) : null));
  return card;
}

/** Successive halving's rungs: each trial's score by rung, lines from a trial to the one continuing it. */
function rungsCard(info) {
  if (info.rungs.length < 2 && !["halving", "asha"].includes(info.strategy)) return null;
  const card = el("div", { class: "card", "data-testid": "rungs" }, el("h2", {}, "Rungs"));
  const scored = info.trials.filter((t) => trialValue(t, "val_accuracy") !== null);
  const budget = (r) => Math.max(0, ...info.trials.filter((t) => t.rung === r).map((t) => t.epochs));
  if (scored.length) {
    const ys = scored.map((t) => trialValue(t, "val_accuracy"));
    const y = niceDomain(Math.min(...ys), Math.max(...ys));
    const last = info.rungs[info.rungs.length - 1];
    const jitter = (t) => (((t.ordinal * 7919) % 13) / 13 - 0.5) * 0.36;
    const kind = (t) => (t === info.best ? "best" : info.children.has(t.id) ? "promoted" : t.status === "succeeded" && t.rung < last ? "stopped" : t.status);
    card.append(chart({ width: 470, height: 300, x: [info.rungs[0] - 0.5, last + 0.5], y: [Math.max(0, y[0]), Math.min(1, y[1])],
      xTicks: info.rungs, xFormat: (r) => `rung ${r} · ${budget(r)} ep.`, xLabel: "", yLabel: "validation accuracy", testid: "rung-chart",
      yFormat: (v) => `${Math.round(v * 1000) / 10}%`, label: "validation accuracy by rung",
      draw: (sx, sy) => {
        const at = (t) => [sx(t.rung + jitter(t)), sy(trialValue(t, "val_accuracy"))];
        const links = scored.filter((t) => t.parent && info.byId.has(t.parent) && trialValue(info.byId.get(t.parent), "val_accuracy") !== null)
          .map((t) => svg("path", { class: "link", d: pathOf([at(info.byId.get(t.parent)), at(t)]) }));
        const dots = [...scored].sort((a, b) => (a === info.best) - (b === info.best)).map((t) => {
          const [cx, cy] = at(t);
          return svg("circle", { class: `rung-dot ${kind(t)}`, cx: r1(cx), cy: r1(cy), r: t === info.best ? 6 : 4.5 },
            svg("title", {}, `${trialName(t)} · ${kind(t)} · ${percent(trialValue(t, "val_accuracy"))} after ${t.epoch} epochs`));
        });
        return svg("g", {}, links, dots);
      } }));
    card.append(el("div", { class: "legend" }, [["promoted", "promoted"], ["stopped", "stopped here"], ["running", "running"],
      ["best", info.final ? "best" : "leading"]].map(([k, text]) => el("span", { class: "item" },
      svg("svg", { class: "swatch", viewBox: "0 0 12 12", width: 12, height: 12 }, svg("circle", { class: `rung-dot ${k}`, cx: 6, cy: 6, r: 4.5 })), text))));
  }
  card.append(el("ul", { class: "rung-list" }, info.rungs.map((r) => {
    const on = info.trials.filter((t) => t.rung === r);
    const promoted = on.filter((t) => info.children.has(t.id)).sort(byScore);
    const waiting = on.filter((t) => t.status === "queued" || t.status === "running").length;
    return el("li", { "data-testid": `rung-${r}` }, el("b", {}, `Rung ${r}`), ` · ${budget(r)} epochs · ${on.length} trial${on.length === 1 ? "" : "s"}`,
      waiting ? ` (${waiting} not finished)` : "",
      promoted.length ? el("span", {}, " · promoted: ", promoted.map((t) => `${trialName(t)} → ${info.children.get(t.id).map(trialName).join(", ")}`).join("; "))
        : r === info.rungs[info.rungs.length - 1] ? el("span", { class: "muted" }, " · the last rung") : el("span", { class: "muted" }, " · none promoted yet"));
  })));
  return card;
}

function trialsCard(info) {
  const card = el("div", { class: "card", "data-testid": "trials" });
  const redraw = () => card.replaceWith(trialsCard(info));
  const columns = [
    { key: "ordinal", label: "#", get: (t) => t.ordinal,
      cell: (t) => [swatch(info.colour.get(t.id), t === info.best), " ", t.ordinal] },
    { key: "rung", label: "Rung", num: true, get: (t) => t.rung,
      cell: (t) => [t.rung, t.parent && info.byId.has(t.parent) ? el("span", { class: "muted small", title: "continues this trial" }, ` ← ${trialName(info.byId.get(t.parent))}`) : null] },
    { key: "status", label: "Status", get: (t) => t.status,
      cell: (t) => [pill(t.status, statusKind(t.status)), t === info.best ? pill(info.final ? "best" : "leading", "alias") : null,
        t.error ? el("div", { class: "error small clip", title: t.error }, t.error) : null] },
    ...info.varying.map((name) => ({ key: `param:${name}`, label: name.replaceAll("_", " "), num: true, get: (t) => (t.params || {})[name],
      cell: (t) => compact((t.params || {})[name]) })),
    { key: "epoch", label: "Epoch", num: true, get: (t) => t.epoch, cell: (t) => `${t.epoch}/${t.epochs}` },
    { key: "val_accuracy", label: "Val. acc.", num: true, get: (t) => trialValue(t, "val_accuracy"), cell: (t) => percent(trialValue(t, "val_accuracy")) },
    { key: "val_loss", label: "Val. loss", num: true, get: (t) => trialValue(t, "val_loss"), cell: (t) => compact(trialValue(t, "val_loss")) },
    { key: "worker", label: "Worker", get: (t) => t.worker, cell: (t) => el("span", { class: "mono small" }, t.worker || "—") },
    { key: "duration_ms", label: "Took", num: true, get: (t) => t.duration_ms ?? (t.started_at ? Date.now() - Date.parse(t.started_at) : null),
      cell: (t) => (t.duration_ms !== null && t.duration_ms !== undefined ? duration(t.duration_ms) : t.started_at ? between(t.started_at) : "—") },
  ];
  const sort = columns.some((c) => c.key === state.view.sort.key) ? state.view.sort : { key: "ordinal", dir: 1 };
  const column = columns.find((c) => c.key === sort.key);
  const compare = (a, b) => {
    const [x, y] = [column.get(a), column.get(b)];
    if (x === null || x === undefined) return y === null || y === undefined ? a.ordinal - b.ordinal : 1; // missing last, either way
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * sort.dir || a.ordinal - b.ordinal;
  };
  const rows = [...info.trials].sort(compare);
  const header = (c) => el("th", { class: `sortable${c.num ? " num" : ""}`, "data-sort": c.key, tabindex: 0,
    "aria-sort": c.key === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none",
    onclick: () => {
      // Scores read best first: a first click on one sorts high to low (loss: low to high).
      const first = c.key === "val_accuracy" || c.key.startsWith("param:") ? -1 : 1;
      state.view.sort = { key: c.key, dir: c.key === sort.key ? -sort.dir : first };
      redraw();
    },
    onkeydown: (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); event.target.click(); } },
  }, c.label, c.key === sort.key ? el("span", { class: "arrow" }, sort.dir > 0 ? " ▲" : " ▼") : null);
  card.append(el("h2", {}, `Trials (${info.trials.length})`));
  if (!info.trials.length) return note(card, "No trial planned yet: the job is freezing its dataset into a snapshot.");
  card.append(el("div", { class: "scroll" }, el("table", { class: "trials", "data-testid": "trial-table" },
    el("thead", {}, el("tr", {}, columns.map(header))),
    el("tbody", {}, rows.map((t) => el("tr", { "data-testid": `trial-${t.ordinal}`, class: t === info.best ? "best" : "" },
      columns.map((c) => el("td", { class: c.num ? "num" : "" }, c.cell(t)))))))));
  return card;
}

// ----- cancelling a job -----

function confirmCancel(job) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = `Cancel job ${short(job.id)}?`;
  $("confirm-detail").textContent = `${job.model} on ${job.dataset}: queued trials are skipped and running ones stop after their current epoch. Nothing is registered. This cannot be undone.`;
  $("confirm-ok").textContent = "Cancel the job";
  $("confirm-error").hidden = true;
  $("confirm-ok").disabled = false;
  dialog.dataset.job = job.id;
  dialog.showModal();
}

async function cancelConfirmed(event) {
  event.preventDefault();
  const dialog = $("confirm-dialog");
  const id = dialog.dataset.job;
  $("confirm-ok").disabled = true;
  const result = await api("POST", `/v1/training-jobs/${encodeURIComponent(id)}/cancel`);
  if (result.status !== 200) {
    $("confirm-error").textContent = (result.body && result.body.error && result.body.error.message) || `HTTP ${result.status}`;
    $("confirm-error").hidden = false;
    $("confirm-ok").disabled = false;
    return;
  }
  dialog.close();
  route();
  const notice = $("notice");
  notice.className = "notice";
  notice.textContent = `Job ${short(id)} cancelled: queued trials are skipped, running ones stop after their epoch.`;
  notice.hidden = false;
}

// ---------- Serving ----------

/**
 * What the console remembers between polls while it stays open: the previous `/metrics` sample
 * (rates are differences of two), each model's recent traffic, and the drift checks seen (the
 * API keeps only a version's latest).
 */
const watch = { previous: null, traffic: new Map(), checks: new Map() };
const KEEP = 90; // points per model: six minutes at one poll every 4 s

/** `/metrics` (Prometheus text), parsed: the inference series only. */
function parseMetrics(text) {
  const series = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("sluice_inference_")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    const value = match[3] === "+Inf" ? Infinity : Number(match[3]);
    if (!Number.isNaN(value)) series.push({ name: match[1], labels, value });
  }
  return series;
}

async function metricsSample() {
  try {
    const response = await fetch("/metrics", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) return { status: response.status, body: null };
    const text = await response.text();
    const sample = { at: Date.now() / 1000, series: parseMetrics(text), prior: null };
    let previous = watch.previous;
    if (previous && sample.at - previous.at < 1) {
      previous = previous.prior; // too close for a rate: compare with the sample before
    } else {
      if (previous) previous.prior = null;
      sample.prior = previous;
      watch.previous = sample;
    }
    return { status: 200, sample, previous, serves: text.includes("sluice_inference_") };
  } catch (err) {
    return { status: 0, body: { error: { message: `Sluice did not answer (${err.message}).` } } };
  }
}

/** The `q` quantile of a histogram's observations, from cumulative buckets ([le, count], by le). */
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let [lo, below] = [0, 0];
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lo; // beyond the last bound: say the bound
      return lo + (le - lo) * (count > below ? (rank - below) / (count - below) : 0);
    }
    [lo, below] = [le, count];
  }
  return lo;
}

/** One model's counters in a sample: requests (by alias and version), errors, latency histogram, classes. */
function modelCounters(sample, model) {
  const mine = sample.series.filter((s) => s.labels.model === model);
  const sum = (name) => mine.filter((s) => s.name === name).reduce((total, s) => total + s.value, 0);
  const buckets = new Map();
  for (const s of mine.filter((x) => x.name === "sluice_inference_request_duration_seconds_bucket")) {
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    buckets.set(le, (buckets.get(le) || 0) + s.value);
  }
  const routes = new Map();
  for (const s of mine.filter((x) => x.name === "sluice_inference_requests_total")) {
    const key = `${s.labels.alias || "(version)"}\u0000${s.labels.version}`;
    routes.set(key, (routes.get(key) || 0) + s.value);
  }
  const classes = new Map();
  for (const s of mine.filter((x) => x.name === "sluice_inference_predictions_total")) {
    classes.set(s.labels.class, (classes.get(s.labels.class) || 0) + s.value);
  }
  return { at: sample.at, requests: sum("sluice_inference_requests_total"), errors: sum("sluice_inference_errors_total"),
    count: sum("sluice_inference_request_duration_seconds_count"), seconds: sum("sluice_inference_request_duration_seconds_sum"),
    buckets: [...buckets].sort((a, b) => a[0] - b[0]), routes, classes };
}

/** A model's traffic: totals since the process started, and rates over the last poll when there was one. */
function modelTraffic(metrics, model) {
  if (metrics.status !== 200) return null;
  const now = modelCounters(metrics.sample, model);
  const before = metrics.previous ? modelCounters(metrics.previous, model) : null;
  const traffic = { ...now, rate: null, errorRate: null, mean: null, p50: null, p95: null, window: null };
  if (before && now.requests >= before.requests && now.count >= before.count) {
    const dt = now.at - before.at;
    const count = now.count - before.count;
    traffic.window = dt;
    traffic.rate = (now.requests - before.requests) / dt;
    traffic.errorRate = Math.max(0, now.errors - before.errors) / dt;
    if (count > 0) {
      const earlier = new Map(before.buckets);
      const delta = now.buckets.map(([le, c]) => [le, c - (earlier.get(le) || 0)]);
      traffic.mean = (now.seconds - before.seconds) / count;
      traffic.p50 = quantile(delta, 0.5);
      traffic.p95 = quantile(delta, 0.95);
    }
    traffic.routeRates = new Map([...now.routes].map(([key, c]) => [key, (c - (before.routes.get(key) || 0)) / dt]));
    const history = watch.traffic.get(model) || [];
    if (!history.length || history[history.length - 1].at !== now.at) {
      history.push({ at: now.at, rate: traffic.rate, p95: traffic.p95 });
      watch.traffic.set(model, history.slice(-KEEP));
    }
  }
  return traffic;
}

const perSecond = (v) => (typeof v !== "number" ? "—" : v === 0 ? "0/s" : v < 0.1 ? `${(v * 60).toFixed(1)}/min` : `${v < 10 ? v.toFixed(2) : v.toFixed(0)}/s`);
const latency = (s) => (typeof s !== "number" ? "—" : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`);
const DRIFT_KIND = { ok: "ok", drift: "bad", insufficient_data: "" };
const driftPill = (d, attrs = {}) => pill(String(d.state).replaceAll("_", " "), DRIFT_KIND[d.state] ?? "", attrs);

// ----- all models -----

/**
 * How many models the list asks for drift: reading a version's drift loads it into this
 * inference process (`inference.max_loaded_versions`, 16 by default), so a long list would
 * evict the versions being served. The model's own page always shows it.
 */
const DRIFT_LISTED = 8;

async function serving(generation) {
  const listed = await api("GET", "/v1/models");
  if (!current(generation)) return;
  const names = listed.status === 200 ? (listed.body.models || []).map((m) => m.name) : [];
  const path = (name, what) => `/v1/models/${encodeURIComponent(name)}/${what}`;
  const [metrics, ...answers] = await Promise.all([metricsSample(),
    ...names.flatMap((name, i) => [api("GET", path(name, "routing")), i < DRIFT_LISTED ? api("GET", path(name, "drift")) : null])]);
  const rows = names.map((name, i) => ({ model: listed.body.models[i], routing: answers[2 * i], drift: answers[2 * i + 1],
    traffic: modelTraffic(metrics, name) }));
  show(generation, [listed, rows, metrics.status], () => [head("Serving"), servingListCard(listed, rows, metrics)]);
}

function servingListCard(listed, rows, metrics) {
  const card = el("div", { class: "card", "data-testid": "serving-list" });
  if (listed.status !== 200) return note(card, refusal(listed, "models"));
  if (!rows.length) return note(card, "No model registered yet: nothing is served.");
  card.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Model"), el("th", {}, "Production"), el("th", {}, "Routing"), el("th", {}, "Drift"),
      el("th", { class: "num" }, "Expected acc."), el("th", { class: "num" }, "Live acc."), el("th", { class: "num" }, "Requests"),
      el("th", { class: "num" }, "p95 latency"))),
    el("tbody", {}, rows.map(({ model, routing, drift, traffic }) => {
      const r = routing.status === 200 ? routing.body : null;
      const d = drift && drift.status === 200 ? drift.body : null;
      const production = (model.aliases || {}).production;
      return el("tr", { "data-testid": `serving-${model.name}` },
        el("td", {}, el("a", { href: `#/serving/${encodeURIComponent(model.name)}` }, model.name)),
        el("td", {}, production ? pill(`v${production}`, "alias") : el("span", { class: "muted" }, "none")),
        el("td", {}, r ? [r.canary_alias ? pill(`canary ${r.canary_alias} ${compact(r.canary_percent)} %`, "warn") : null,
          r.shadow_alias ? pill(`shadow ${r.shadow_alias}`, "run") : null,
          !r.canary_alias && !r.shadow_alias ? el("span", { class: "muted" }, "all to production") : null]
          : el("span", { class: "muted small", title: refusal(routing, "routing") }, "—")),
        el("td", {}, d ? [driftPill(d), d.kind && d.kind !== "none" ? el("span", { class: "muted small" }, ` ${d.kind.replaceAll("_", " ")}`) : null]
          : drift ? el("span", { class: "muted small" }, refusal(drift, "drift")) : el("span", { class: "muted small" }, "on its page")),
        el("td", { class: "num" }, d ? percent(d.expected_accuracy) : "—"),
        el("td", { class: "num" }, d && typeof d.live_accuracy === "number"
          ? el("span", { title: `${d.live_accuracy_answers} answers with feedback` }, percent(d.live_accuracy)) : "—"),
        el("td", { class: "num" }, !traffic ? "—" : !traffic.requests ? el("span", { class: "muted" }, "none")
          : traffic.rate !== null ? perSecond(traffic.rate) : `${traffic.requests} total`),
        el("td", { class: "num" }, traffic ? latency(traffic.p95) : "—"));
    }))),
  el("p", { class: "muted small" }, metrics.status === 200
    ? "Requests and latency are this listener's process, from /metrics, over the last poll."
    : `Request rates are unavailable: /metrics answered HTTP ${metrics.status}.`));
  return card;
}

// ----- one model -----

async function servingModel(generation, name) {
  const path = (what) => `/v1/models/${encodeURIComponent(name)}${what}`;
  const [found, routing, drift, capture, metrics] = await Promise.all([api("GET", path("")), api("GET", path("/routing")),
    api("GET", path("/drift")), api("GET", path("/capture")), metricsSample()]);
  if (!current(generation)) return;
  const traffic = modelTraffic(metrics, name);
  if (drift.status === 200) remember(name, drift.body);
  show(generation, [found, routing, drift, capture, traffic && [traffic.requests, traffic.rate, traffic.p95, traffic.errors], metrics.status], () => {
    const back = el("a", { href: "#/serving" }, "← All models");
    if (found.status !== 200) return [back, head(name), el("div", { class: "card" }, el("p", { class: "empty" }, refusal(found, "this model")))];
    return [back, head(name),
      el("div", { class: "grid pair" }, trafficCard(name, traffic, metrics), routingCard(found.body, routing)),
      driftCard(name, drift),
      el("div", { class: "grid pair" }, captureCard(capture), predictionsCard(traffic, metrics))];
  });
}

/** Keeps each drift check seen (by version and time) for the history chart. */
function remember(name, d) {
  if (!d.checked_at) return;
  const key = `${name}\u0000${d.version}`;
  const seen = watch.checks.get(key) || [];
  if (!seen.some((c) => c.checked_at === d.checked_at)) {
    seen.push({ checked_at: d.checked_at, at: Date.parse(d.checked_at) / 1000, expected: d.expected_accuracy, live: d.live_accuracy,
      state: d.state, fired: (d.fired || []).length });
    watch.checks.set(key, seen.slice(-KEEP));
  }
}

const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** A small time chart of `lines` ([{points: [[t, v]], colour, name}]). */
function timeChart({ lines, yFormat, testid, label, width = 470, height = 180, y }) {
  const all = lines.flatMap((l) => l.points);
  const ts = all.map((p) => p[0]);
  const x = [Math.min(...ts), Math.max(Math.max(...ts), Math.min(...ts) + 1)];
  const vs = all.map((p) => p[1]);
  return chart({ width, height, x, y: y || niceDomain(Math.min(0, ...vs), Math.max(...vs)), xFormat: clock, yFormat, testid, label,
    xTicks: ticks(x[0], x[1], 3), cls: "time",
    draw: (sx, sy) => svg("g", {}, lines.map((l) => svg("g", {},
      svg("path", { class: "curve", d: pathOf(l.points.map(([t, v]) => [sx(t), sy(v)])), stroke: l.colour }, svg("title", {}, l.name)),
      l.points.length === 1 ? svg("circle", { class: "dot", cx: r1(sx(l.points[0][0])), cy: r1(sy(l.points[0][1])), r: 3, fill: l.colour }) : null))) });
}

function trafficCard(name, traffic, metrics) {
  const card = el("div", { class: "card", "data-testid": "traffic" }, el("h2", {}, "Requests and latency"));
  if (metrics.status !== 200) return note(card, `/metrics answered HTTP ${metrics.status}: no request counts.`);
  if (!metrics.serves) return note(card, "This listener does not run inference: its /metrics has no predict requests.");
  if (!traffic.requests && !traffic.errors) {
    return note(card, `No predict request for ${name} since this process started.`);
  }
  card.append(el("div", { class: "stats" },
    el("div", {}, el("span", {}, "requests now"), el("b", { class: "stat", "data-testid": "request-rate" }, traffic.rate === null ? "…" : perSecond(traffic.rate))),
    el("div", {}, el("span", {}, "p50 · p95"), el("b", { class: "stat" }, traffic.p50 === null ? "—" : `${latency(traffic.p50)} · ${latency(traffic.p95)}`)),
    el("div", {}, el("span", {}, "errors now"), el("b", { class: `stat${traffic.errorRate ? " bad-text" : ""}` }, traffic.errorRate === null ? "…" : perSecond(traffic.errorRate)))));
  const history = (watch.traffic.get(name) || []).filter((p) => p.rate !== null);
  if (history.length >= 2) {
    card.append(timeChart({ lines: [{ points: history.map((p) => [p.at, p.rate]), colour: "#2456d6", name: "requests per second" }],
      yFormat: (v) => compact(v), testid: "traffic-chart", label: "requests per second", height: 150 }));
  } else {
    card.append(el("p", { class: "muted small" }, "The request rate is the difference of two polls of /metrics: its chart starts with the next poll."));
  }
  const routes = [...traffic.routes].sort((a, b) => b[1] - a[1]);
  card.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Answered by"), el("th", { class: "num" }, "Since start"), el("th", { class: "num" }, "Now"))),
    el("tbody", {}, routes.map(([key, count]) => {
      const [alias, version] = key.split("\u0000");
      return el("tr", {}, el("td", {}, alias === "(version)" ? "a named version" : pill(alias, "alias"), ` v${version}`),
        el("td", { class: "num" }, count), el("td", { class: "num" }, traffic.routeRates ? perSecond(traffic.routeRates.get(key)) : "…"));
    }))),
  el("p", { class: "muted small" }, `${traffic.requests} answered and ${traffic.errors} refused or failed since this process started`,
    traffic.count ? `; mean latency ${latency(traffic.seconds / traffic.count)}` : "", ". This listener's process only."));
  return card;
}

function routingCard(model, routing) {
  const card = el("div", { class: "card", "data-testid": "routing" }, el("h2", {}, "Routing"));
  const aliases = Object.entries(model.aliases || {});
  card.append(el("p", {}, aliases.length ? aliases.map(([a, v]) => pill(`${a} → v${v}`, "alias")) : el("span", { class: "muted" }, "No alias: nothing is served.")));
  if (routing.status !== 200) return note(card, refusal(routing, "routing"));
  const r = routing.body;
  const canary = r.canary_alias ? r.canary_percent : 0;
  card.append(el("p", { class: "muted small" }, "Requests that name no alias or version:"),
    el("div", { class: "split", "data-testid": "canary" }, shareBar([
      { value: 100 - canary, kind: "production", title: `production ${compact(100 - canary)} %` },
      { value: canary, kind: "canary", title: `${r.canary_alias} ${compact(canary)} %` }], 300, 12),
    el("span", {}, r.canary_alias ? `${compact(100 - canary)} % production · ${compact(canary)} % ${r.canary_alias}` : "100 % production (no canary)")),
    el("p", { "data-testid": "shadow" }, el("b", {}, "Shadow: "), r.shadow_alias
      ? [pill(r.shadow_alias, "run"), " scores the same inputs in the background; its answers are recorded, never returned."]
      : el("span", { class: "muted" }, "none")));
  const c = r.shadow_comparison;
  if (c) {
    card.append(el("table", { class: "compare" },
      el("thead", {}, el("tr", {}, el("th", {}), el("th", { class: "num" }, `Primary v${c.versions.primary}`), el("th", { class: "num" }, `Shadow v${c.versions.shadow}`))),
      el("tbody", {},
        el("tr", {}, el("td", {}, "accuracy on feedback"), el("td", { class: "num" }, percent(c.primary_accuracy)), el("td", { class: "num" }, percent(c.shadow_accuracy))),
        el("tr", {}, el("td", {}, "right alone"), el("td", { class: "num" }, c.primary_only_right), el("td", { class: "num" }, c.shadow_only_right)))),
    el("p", { class: "muted small" }, `${c.pairs} inputs both scored, agreeing on ${percent(c.agreement)}; ${c.with_feedback} with feedback. `,
      `One-sided exact McNemar p (shadow better) = ${compact(c.p_value_shadow_better)}.`));
  } else if (r.shadow_alias) {
    card.append(el("p", { class: "empty" }, "No input scored by both yet."));
  }
  return card;
}

function driftCard(name, drift) {
  const card = el("div", { class: "card", "data-testid": "drift" });
  if (drift.status !== 200) {
    card.append(el("h2", {}, "Drift and accuracy"));
    return note(card, refusal(drift, "drift"));
  }
  const d = drift.body;
  card.append(el("div", { class: "page-head" },
    el("h2", {}, "Drift ", driftPill(d, { "data-testid": "drift-state" }), d.kind && d.kind !== "none" ? pill(d.kind.replaceAll("_", " "), "warn") : null),
    el("span", { class: "muted small" }, `v${d.version}${d.alias ? ` (${d.alias})` : ""} · ${d.checks} checks`,
      d.checked_at ? [" · last ", when(d.checked_at)] : "")));
  if (d.state === "insufficient_data" && !(d.statistics || []).length) {
    card.append(el("p", { class: "empty" }, `No check yet: the monitor checks every ${d.window_size} predictions of this version.`));
  } else {
    card.append(el("p", { class: "muted small" },
      `Window: ${d.window} predictions in ${d.requests ?? "?"} requests, ${d.batches ?? "?"} batches; family-wise false alarm ${percent(d.alpha)}. `,
      `Drifted ${d.consecutive_drift_checks} check${d.consecutive_drift_checks === 1 ? "" : "s"} in a row (a retrain needs ${d.sustain_checks}).`));
    card.append(statisticsTable(d));
  }
  card.append(accuracyPanel(name, d));
  return card;
}

/** Each statistic: its value against the reference, and its p-value against the (corrected) level, drawn as a bar. */
function statisticsTable(d) {
  const stats = [...(d.statistics || [])].sort((a, b) => a.p_value - b.p_value);
  const evidence = (p) => Math.min(12, -Math.log10(Math.max(p, 1e-12)));
  const most = Math.max(4, ...stats.map((s) => evidence(s.threshold) * 1.5), ...stats.map((s) => evidence(s.p_value)));
  const bar = (s) => {
    const w = 160;
    const at = (v) => r1((v / most) * w);
    return svg("svg", { class: "pbar", viewBox: `0 0 ${w} 12`, width: w, height: 12, role: "img" },
      svg("rect", { class: "track", x: 0, y: 2, width: w, height: 8, rx: 4 }),
      svg("rect", { class: s.drifted ? "fill bad" : "fill", x: 0, y: 2, width: Math.max(2, at(evidence(s.p_value))), height: 8, rx: 4 }),
      svg("line", { class: "level", x1: at(evidence(s.threshold)), x2: at(evidence(s.threshold)), y1: 0, y2: 12 }),
      svg("title", {}, `p = ${compact(s.p_value)}; drifts below ${compact(s.threshold)} (the marker)`));
  };
  return el("table", { class: "statistics", "data-testid": "drift-statistics" },
    el("thead", {}, el("tr", {}, el("th", {}, "Statistic"), el("th", {}, "Kind"), el("th", { class: "num" }, "Value"), el("th", { class: "num" }, "Expected"),
      el("th", { class: "num" }, "t"), el("th", { class: "num" }, "p"), el("th", {}, "Evidence against the reference"), el("th", {}, ""))),
    el("tbody", {}, stats.map((s) => el("tr", { class: s.drifted ? "drifted" : "" },
      el("td", { class: "mono" }, s.name), el("td", {}, s.kind),
      el("td", { class: "num" }, s.kind === "label" ? percent(s.value) : compact(s.value)),
      el("td", { class: "num" }, s.kind === "label" ? percent(s.expected) : compact(s.expected)),
      el("td", { class: "num" }, compact(s.t)), el("td", { class: "num" }, compact(s.p_value)),
      el("td", {}, bar(s)), el("td", {}, s.drifted ? pill("drifted", "bad") : null)))));
}

/** Expected (label-free) against live (feedback) accuracy, and their history while the page is open. */
function accuracyPanel(name, d) {
  const rows = [
    { name: "Expected (no labels)", value: d.expected_accuracy, interval: d.expected_accuracy_interval, kind: "expected",
      note: d.expected_accuracy_reliable === false ? "unreliable under covariate shift" : "mean calibrated confidence" },
    { name: "Live (feedback)", value: d.live_accuracy, kind: "live", note: `${d.live_accuracy_answers} answers with feedback` },
    { name: "Reference", value: d.reference_accuracy, kind: "reference", note: "on its calibration split" },
  ].filter((r) => typeof r.value === "number");
  const panel = el("div", { class: "accuracy", "data-testid": "accuracy" });
  if (!rows.length) {
    panel.append(el("p", { class: "empty" }, "No accuracy yet: the expected accuracy comes with the first check, the live one with feedback (POST /v1/feedback)."));
    return panel;
  }
  const w = 300;
  const lo = Math.max(0, Math.floor(Math.min(...rows.map((r) => (r.interval ? r.interval[0] : r.value))) * 10) / 10 - 0.1);
  const at = (v) => r1(((v - lo) / (1 - lo)) * w);
  panel.append(el("h3", {}, "Accuracy ", el("span", { class: "muted small" }, `(bars from ${percent(lo)} to 100 %)`)));
  panel.append(el("table", {}, el("tbody", {}, rows.map((r) => el("tr", { "data-testid": `accuracy-${r.kind}` },
    el("td", {}, r.name), el("td", { class: "num" }, el("b", {}, percent(r.value))),
    el("td", {}, svg("svg", { class: "accbar", viewBox: `0 0 ${w} 14`, width: w, height: 14, role: "img" },
      svg("rect", { class: "track", x: 0, y: 3, width: w, height: 8, rx: 4 }),
      svg("rect", { class: `fill ${r.kind}`, x: 0, y: 3, width: Math.max(2, at(r.value)), height: 8, rx: 4 }),
      r.interval ? svg("line", { class: "whisker", x1: at(r.interval[0]), x2: at(r.interval[1]), y1: 7, y2: 7 }) : null,
      svg("title", {}, `${percent(r.value)}${r.interval ? ` (95 % interval ${percent(r.interval[0])} to ${percent(r.interval[1])})` : ""}; axis from ${percent(lo)}`))),
    el("td", { class: "muted small" }, r.note))))));
  const seen = (watch.checks.get(`${name}\u0000${d.version}`) || []);
  const lines = [
    { points: seen.filter((c) => typeof c.expected === "number").map((c) => [c.at, c.expected]), colour: "#2456d6", name: "expected accuracy" },
    { points: seen.filter((c) => typeof c.live === "number").map((c) => [c.at, c.live]), colour: "#2f9e44", name: "live accuracy" },
  ].filter((l) => l.points.length);
  if (seen.length >= 2 && lines.length) {
    panel.append(timeChart({ lines, yFormat: (v) => `${Math.round(v * 100)}%`, testid: "accuracy-chart", label: "accuracy by check",
      y: [Math.max(0, Math.min(...lines.flatMap((l) => l.points.map((p) => p[1]))) - 0.05), 1], width: 960, height: 170 }),
    el("div", { class: "legend" }, lines.map((l) => el("span", { class: "item" }, swatch(l.colour), l.name))));
  }
  panel.append(el("p", { class: "muted small" }, "The API keeps each version's latest check only; ",
    seen.length >= 2 ? `this chart holds the ${seen.length} checks seen since the page opened.` : "a chart of the checks starts once a second one arrives while this page is open."));
  return panel;
}

function captureCard(capture) {
  const card = el("div", { class: "card", "data-testid": "capture" }, el("h2", {}, "Capture"));
  if (capture.status !== 200) return note(card, refusal(capture, "the capture policy"));
  const p = capture.body.capture;
  if (!p) return note(card, `No capture policy: served inputs are not kept. An admin sets one with PUT /v1/models/${capture.body.model}/capture.`);
  card.append(el("p", {}, "Served inputs go to dataset ", el("b", {}, p.dataset), " as unlabelled media, for labelling and the next retrain:"),
    el("div", { class: "facts" },
      fact("At random", percent(p.random_rate)),
      fact("Below confidence", p.below_confidence ? `every prediction under ${percent(p.below_confidence)}` : el("span", { class: "muted" }, "off")),
      fact("During drift", p.during_drift_rate ? `${percent(p.during_drift_rate)} more` : el("span", { class: "muted" }, "off"))));
  return card;
}

function predictionsCard(traffic, metrics) {
  const card = el("div", { class: "card", "data-testid": "predictions" }, el("h2", {}, "Recent predictions"));
  card.append(el("p", { class: "muted", "data-testid": "predictions-unavailable" },
    "Not available yet: no API serves recent predictions or their images. Predictions are recorded for feedback and drift, ",
    "and a capture policy keeps inputs in a dataset, but nothing reads them back here."));
  const classes = traffic ? [...traffic.classes].sort((a, b) => b[1] - a[1]) : [];
  if (metrics.status === 200 && classes.length) {
    const total = classes.reduce((sum, [, c]) => sum + c, 0);
    const most = classes[0][1];
    const w = 200;
    card.append(el("h3", {}, "Predicted classes since this process started"),
      el("table", { "data-testid": "class-mix" }, el("tbody", {}, classes.slice(0, 12).map(([label, count]) => el("tr", {},
        el("td", {}, label), el("td", { class: "num" }, count),
        el("td", {}, svg("svg", { class: "accbar", viewBox: `0 0 ${w} 12`, width: w, height: 12, role: "img" },
          svg("rect", { class: "track", x: 0, y: 2, width: w, height: 8, rx: 4 }),
          svg("rect", { class: "fill expected", x: 0, y: 2, width: Math.max(2, r1((count / most) * w)), height: 8, rx: 4 }))),
        el("td", { class: "num muted" }, percent(count / total)))))));
  }
  return card;
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
  window.addEventListener("hashchange", route);
  const result = await api("GET", "/console/session");
  if (result.status === 200 && result.body.via === "cookie") signedIn(result.body);
  else signedOut("");
});
