// The Sluice console: the Training pages. Served after console.js as one script (console/src/assets.rs).

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
    head("Training", canTrain() ? el("button", { type: "button", "data-testid": "new-job", onclick: openNewJob }, "New job") : null),
    jobListCard(listed), retrainCard(retrains)]);
}

function statusBar(summary, width = 110) {
  const parts = RUN_STATUSES.map((s) => ({ value: summary[s] || 0, kind: s, title: `${summary[s] || 0} ${s}` }));
  return shareBar(parts, width);
}

function jobListCard(result) {
  const card = el("div", { class: "card", "data-testid": "job-list" }, el("h2", {}, "Jobs"));
  if (result.status !== 200) return note(card, refusal(result, "training jobs"));
  const jobs = result.body.jobs || [];
  if (!jobs.length) return note(card, "No training job yet: start one with New job or `sluice train`.");
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
      const [epoch, value] = points[points.length - 1];
      const tip = `${trialName(t)} · rung ${t.rung} · ${t.status} · ${metricName(key)} ${metricValue(key, value)} at epoch ${epoch}`
        + (info.varying.length ? ` · ${paramsText(t, info.varying)}` : "");
      return svg("g", { class: `series${t === best ? " best" : ""}${t.status === "running" ? " running" : ""}`, "data-trial": t.ordinal,
        "data-points": points.length },
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
    }, svg("title", {}, `${trialName(t)} · rung ${t.rung} · ${param} ${compact(t.params[param])} · `
      + `${metricName(score)} ${metricValue(score, trialValue(t, score))}`)))) }));
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
      cell: (t) => [t.rung, t.parent && info.byId.has(t.parent)
        ? el("span", { class: "muted small", title: "continues this trial" }, ` ← ${trialName(info.byId.get(t.parent))}`) : null] },
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
    el("tbody", {}, rows.map((t) => el("tr", { "data-testid": `trial-${t.ordinal}`, "data-epoch": t.epoch, class: t === info.best ? "best" : "" },
      columns.map((c) => el("td", { class: c.num ? "num" : "" }, c.cell(t)))))))));
  return card;
}

// ----- cancelling a job -----

function confirmCancel(job) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = `Cancel job ${short(job.id)}?`;
  $("confirm-detail").textContent = `${job.model} on ${job.dataset}: queued trials are skipped and running ones stop `
    + "after their current epoch. Nothing is registered. This cannot be undone.";
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

// ----- starting a job -----

/** One search-space line, `name=v1,v2`, `name=v` or `name=uniform:low:high`, read as `sluice train --param` reads it. */
function parseParam(line) {
  const at = line.indexOf("=");
  if (at < 1) throw new Error(`"${line}": expected name=values`);
  const name = line.slice(0, at).trim();
  const values = line.slice(at + 1).trim();
  const scalar = (text) => {
    const t = text.trim();
    try { return JSON.parse(t); } catch { return t; }
  };
  for (const kind of ["uniform", "log_uniform", "int_uniform"]) {
    if (values.startsWith(`${kind}:`)) {
      const bounds = values.slice(kind.length + 1).split(":");
      if (bounds.length !== 2) throw new Error(`"${line}": expected ${kind}:low:high`);
      return [name, { [kind]: bounds.map(scalar) }];
    }
  }
  const list = values.split(",").map(scalar);
  return [name, list.length === 1 ? list[0] : list];
}

/** The job request the dialog describes (the API validates it and says what is wrong). */
function jobRequest() {
  const space = {};
  for (const line of $("job-params").value.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))) {
    const [name, value] = parseParam(line);
    space[name] = value;
  }
  const search = { strategy: $("job-strategy").value, space };
  const max = $("job-max-trials").value.trim();
  if (max) search.max_trials = Number(max);
  return { model: $("job-model").value.trim(), dataset: $("job-dataset").value, architecture: $("job-architecture").value,
    promote: $("job-promote").value, search };
}

async function openNewJob() {
  const dialog = $("job-dialog");
  $("job-error").hidden = true;
  $("job-start").disabled = false;
  const listed = await api("GET", "/v1/datasets");
  const names = ((listed.status === 200 && listed.body.datasets) || []).map((d) => d.name);
  const picker = $("job-dataset");
  const chosen = picker.value;
  picker.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(chosen)) picker.value = chosen;
  if (!names.length) {
    $("job-error").textContent = listed.status === 200 ? "No dataset yet: push labelled media first." : refusal(listed, "datasets");
    $("job-error").hidden = false;
  }
  if (!$("job-model").value) $("job-model").value = picker.value || "";
  dialog.showModal();
}

async function startJob(event) {
  event.preventDefault();
  const error = $("job-error");
  let request;
  try {
    request = jobRequest();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    return;
  }
  $("job-start").disabled = true;
  const result = await api("POST", "/v1/training-jobs", request);
  $("job-start").disabled = false;
  if (result.status !== 202) {
    error.textContent = (result.body && result.body.error && result.body.error.message) || `HTTP ${result.status}`;
    error.hidden = false;
    return;
  }
  $("job-dialog").close();
  location.hash = `#/training/${result.body.id}`;
}
