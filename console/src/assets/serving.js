// The Sluice console: the Serving pages. Served after console.js as one script (console/src/assets.rs).

// ---------- Serving ----------

/**
 * What the console remembers between polls while it stays open: the previous `/metrics` sample
 * (rates are differences of two) and each model's recent traffic.
 */
const watch = { previous: null, traffic: new Map() };
const KEEP = 90; // points per model: six minutes at one poll every 4 s

/** `/metrics` (Prometheus text), parsed: the series whose names start with `prefix` (the inference ones unless told). */
function parseMetrics(text, prefix = "sluice_inference_") {
  const series = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix)) continue;
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
  const traffic = { ...now, rate: null, errorRate: null, p50: null, p95: null, routeRates: null };
  if (before && now.requests >= before.requests && now.count >= before.count) {
    const dt = now.at - before.at;
    const count = now.count - before.count;
    traffic.rate = (now.requests - before.requests) / dt;
    traffic.errorRate = Math.max(0, now.errors - before.errors) / dt;
    if (count > 0) {
      const earlier = new Map(before.buckets);
      const delta = now.buckets.map(([le, c]) => [le, c - (earlier.get(le) || 0)]);
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
  const [found, routing, drift, capture, metrics, recent] = await Promise.all([api("GET", path("")), api("GET", path("/routing")),
    api("GET", path("/drift")), api("GET", path("/capture")), metricsSample(), api("GET", path("/predictions?limit=24"))]);
  if (!current(generation)) return;
  const traffic = modelTraffic(metrics, name);
  // The checks of the version the verdict is about (named, so an alias moving between the two reads cannot mix versions).
  const history = drift.status === 200
    ? await api("GET", path(`/drift/history?version=${drift.body.version}&limit=200`)) : null;
  if (!current(generation)) return;
  show(generation, [found, routing, drift, history, capture, recent, traffic && [traffic.requests, traffic.rate, traffic.p95, traffic.errors], metrics.status], () => {
    const back = el("a", { href: "#/serving" }, "← All models");
    if (found.status !== 200) return [back, head(name), el("div", { class: "card" }, el("p", { class: "empty" }, refusal(found, "this model")))];
    return [back, head(name),
      el("div", { class: "grid pair" }, trafficCard(name, traffic, metrics), routingCard(found.body, routing)),
      driftCard(name, drift, checksOf(history)),
      el("div", { class: "grid pair" }, captureCard(capture), predictionsCard(recent, traffic, metrics))];
  });
}

/** A version's recorded checks, oldest first, as the charts draw them. */
function checksOf(history) {
  if (!history || history.status !== 200) return [];
  return [...(history.body.checks || [])].reverse().map((c) => ({ ...c, at: Date.parse(c.checked_at) / 1000 }));
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
    el("div", {}, el("span", {}, "errors now"),
      el("b", { class: `stat${traffic.errorRate ? " bad-text" : ""}` }, traffic.errorRate === null ? "…" : perSecond(traffic.errorRate)))));
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
      el("thead", {}, el("tr", {}, el("th", {}), el("th", { class: "num" }, `Primary v${c.versions.primary}`),
        el("th", { class: "num" }, `Shadow v${c.versions.shadow}`))),
      el("tbody", {},
        el("tr", {}, el("td", {}, "accuracy on feedback"), el("td", { class: "num" }, percent(c.primary_accuracy)),
          el("td", { class: "num" }, percent(c.shadow_accuracy))),
        el("tr", {}, el("td", {}, "right alone"), el("td", { class: "num" }, c.primary_only_right), el("td", { class: "num" }, c.shadow_only_right)))),
    el("p", { class: "muted small" }, `${c.pairs} inputs both scored, agreeing on ${percent(c.agreement)}; ${c.with_feedback} with feedback. `,
      `One-sided exact McNemar p (shadow better) = ${compact(c.p_value_shadow_better)}.`));
  } else if (r.shadow_alias) {
    card.append(el("p", { class: "empty" }, "No input scored by both yet."));
  }
  return card;
}

function driftCard(name, drift, checks) {
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
  if (checks.length >= 2) card.append(evidenceChart(checks));
  card.append(accuracyPanel(d, checks));
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

/** Each statistic's evidence against the reference over the recorded checks, as a multiple of its level: above 1 it drifted. */
function evidenceChart(checks) {
  const ratio = (s) => (s.p_value > 0 && s.threshold > 0 && s.threshold < 1
    ? Math.min(10, Math.log10(s.p_value) / Math.log10(s.threshold)) : 0);
  const names = [...new Set(checks.flatMap((c) => (c.statistics || []).map((s) => s.name)))].sort();
  const lines = names.map((name, i) => ({
    name, colour: colourOf(i),
    points: checks.flatMap((c) => (c.statistics || []).filter((s) => s.name === name).map((s) => [c.at, ratio(s)])),
  })).filter((l) => l.points.length);
  const top = Math.max(1.5, ...lines.flatMap((l) => l.points.map((p) => p[1])));
  const wrap = el("div", { "data-testid": "drift-history" },
    el("h3", {}, "Statistics over time ", el("span", { class: "muted small" }, "(evidence against the reference as a multiple of the level: above 1 it drifted)")));
  wrap.append(timeChart({ lines: [...lines, { name: "level", colour: "#c92a2a", points: [[checks[0].at, 1], [checks[checks.length - 1].at, 1]] }],
    yFormat: compact, testid: "drift-history-chart", label: "drift statistics by check", y: [0, top * 1.05], width: 960, height: 190 }));
  const verdicts = el("div", { class: "legend", "data-testid": "drift-verdicts" },
    el("span", { class: "muted small" }, "Verdicts: "),
    checks.slice(-40).map((c) => pill(c.state === "drift" ? "drift" : c.state === "ok" ? "ok" : "…", c.state === "drift" ? "bad" : c.state === "ok" ? "ok" : "",
      { title: `check ${c.check} · ${c.state}${c.kind !== "none" ? ` (${c.kind.replaceAll("_", " ")})` : ""} · ${new Date(c.at * 1000).toLocaleTimeString()}` })));
  wrap.append(el("div", { class: "legend" }, lines.map((l) => el("span", { class: "item" }, swatch(l.colour), l.name))), verdicts);
  return wrap;
}

/** Expected (label-free) against live (feedback) accuracy, and their history over the recorded checks. */
function accuracyPanel(d, checks) {
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
      svg("title", {}, percent(r.value), r.interval ? ` (95 % interval ${percent(r.interval[0])} to ${percent(r.interval[1])})` : ""))),
    el("td", { class: "muted small" }, r.note))))));
  const lines = [
    { points: checks.filter((c) => typeof c.expected_accuracy === "number").map((c) => [c.at, c.expected_accuracy]), colour: "#2456d6", name: "expected accuracy" },
    { points: checks.filter((c) => typeof c.live_accuracy === "number").map((c) => [c.at, c.live_accuracy]), colour: "#2f9e44", name: "live accuracy" },
  ].filter((l) => l.points.length);
  if (checks.length >= 2 && lines.length) {
    panel.append(timeChart({ lines, yFormat: (v) => `${Math.round(v * 100)}%`, testid: "accuracy-chart", label: "accuracy by check",
      y: [Math.max(0, Math.min(...lines.flatMap((l) => l.points.map((p) => p[1]))) - 0.05), 1], width: 960, height: 170 }),
    el("div", { class: "legend" }, lines.map((l) => el("span", { class: "item" }, swatch(l.colour), l.name))));
    panel.append(el("p", { class: "muted small" }, `Over the version's last ${checks.length} recorded checks (GET …/drift/history).`));
  } else {
    panel.append(el("p", { class: "muted small" }, "A chart of accuracy over time starts with the version's second check."));
  }
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

/** The newest served predictions: the input's image where a capture policy kept it, the answer,
 * its confidence, and the feedback it got. */
function predictionsCard(recent, traffic, metrics) {
  const card = el("div", { class: "card", "data-testid": "predictions" }, el("h2", {}, "Recent predictions"));
  const listed = (recent.status === 200 && recent.body.predictions) || [];
  if (recent.status !== 200) card.append(el("p", { class: "empty" }, refusal(recent, "recent predictions")));
  else if (!listed.length) card.append(el("p", { class: "empty" }, "No prediction served yet."));
  else {
    card.append(el("div", { class: "predictions", "data-testid": "recent-predictions" }, listed.map((p) => {
      const right = p.feedback_label ? p.feedback_label === p.label : null;
      return el("div", { class: "prediction", "data-testid": "prediction", title: p.id },
        p.captured_media_id
          ? el("img", { src: `/v1/media/${encodeURIComponent(p.captured_media_id)}/content`, alt: `input of ${p.id}`, loading: "lazy" })
          : el("div", { class: "no-image", title: "No capture policy kept this input" }, "no image"),
        el("div", {}, el("b", {}, p.label), " ", el("span", { class: "muted" }, percent(p.confidence))),
        el("div", { class: "muted" }, `v${p.version}`, p.alias ? ` · ${p.alias}` : "", " · ", when(p.created_at)),
        right === null ? null : pill(right ? `✓ ${p.feedback_label}` : `✗ ${p.feedback_label}`, right ? "ok" : "bad"));
    })));
    if (!listed.some((p) => p.captured_media_id)) {
      card.append(el("p", { class: "muted" }, "Inputs are kept only under a capture policy (see Capture); these were not."));
    }
  }
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
