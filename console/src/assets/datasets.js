// The Sluice console: the Datasets pages. Served after console.js as one script (console/src/assets.rs).

// ---------- Datasets ----------

const MEDIA_STATUSES = ["processed", "processing", "accepted", "failed"];
/** Items per page of the dataset's grid (the API's default; it allows 1 to 200). */
const PAGE_SIZE = 60;
/** Unlabelled items read per poll: the current one and the strip of those up next. */
const QUEUE_READ = 24;
const FAILED_SHOWN = 20;
/** The label filter's value for "no label": labels cannot hold control characters, so none is this. */
const UNLABELLED = "\u0000unlabelled";
/** Labelling, relabelling and the pipeline need `ingest` (or `admin`): README's scope matrix. */
const canIngest = () => Boolean(state.me && state.me.scopes.some((s) => s === "ingest" || s === "admin"));
const datasetPath = (name) => `/v1/datasets/${encodeURIComponent(name)}`;
/** An item's processed output `n` (a PNG of the current pipeline spec); same origin, so the session cookie reads it. */
const outputUrl = (id, n = 0) => `/v1/media/${encodeURIComponent(id)}/content?output=${n}`;
const rawUrl = (id) => `/v1/media/${encodeURIComponent(id)}/content?variant=raw`;
const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");
const byteSize = (n) => (typeof n !== "number" ? "—" : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB`
  : `${(n / 1048576).toFixed(1)} MiB`);
/** A dataset's labels in a stable order (numbers by value), so the keys 1–9 keep their meaning. */
const labelsOf = (d) => Object.keys((d && d.by_label) || {}).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
const inFlight = (byStatus) => (byStatus.accepted || 0) + (byStatus.processing || 0);
const mediaStatusBar = (byStatus, width = 160, height = 8) =>
  shareBar(MEDIA_STATUSES.map((s) => ({ value: byStatus[s] || 0, kind: s, title: `${count(byStatus[s] || 0)} ${s}` })), width, height);
const errorOf = (result) => (result.body && result.body.error && result.body.error.message) || `HTTP ${result.status}`;
/** Replaces `node`'s children, leaving out the absent ones (`el` does the same for its children). */
const fill = (node, ...children) =>
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
/** Whether keys typed at `node` are text, not commands. */
const typing = (node) => Boolean(node && (node.isContentEditable || (node.matches && node.matches("input, textarea, select"))));

// ----- the list -----

async function datasets(generation) {
  closeMediaDialog();
  const result = await api("GET", "/v1/datasets");
  show(generation, result, () => [head("Datasets"), datasetListCard(result)]);
}

function datasetListCard(result) {
  const card = el("div", { class: "card", "data-testid": "dataset-list" });
  if (result.status !== 200) return note(card, refusal(result, "datasets"));
  const list = result.body.datasets || [];
  if (!list.length) return note(card, "No dataset yet: upload a labelled folder with `sluice push DIR --dataset NAME`.");
  card.append(el("table", { class: "datasets" },
    el("thead", {}, el("tr", {}, el("th", {}, "Dataset"), el("th", { class: "num" }, "Items"), el("th", {}, "Status"),
      el("th", { class: "num" }, "Labels"), el("th", { class: "num" }, "Unlabelled"), el("th", {}, "Created"))),
    el("tbody", {}, list.map((d) => {
      const by = d.by_status || {};
      const labels = labelsOf(d);
      return el("tr", { "data-testid": `dataset-${d.name}` },
        el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name)),
        el("td", { class: "num" }, count(d.total)),
        el("td", {}, el("div", { class: "status-cell" }, mediaStatusBar(by),
          el("span", { class: "small muted" }, statusWords(by)))),
        el("td", { class: "num", title: labels.join(", ") }, count(labels.length)),
        el("td", { class: "num" }, count(d.unlabelled || 0)),
        el("td", {}, when(d.created_at)));
    }))));
  return card;
}

/** "9,850 processed · 12 in flight · 138 failed": only the parts that are not zero. */
function statusWords(by) {
  const words = [];
  if (by.processed) words.push(`${count(by.processed)} processed`);
  if (inFlight(by)) words.push(`${count(inFlight(by))} in flight`);
  if (by.failed) words.push(`${count(by.failed)} failed`);
  return words.join(" · ") || "no item yet";
}

// ----- one dataset -----

/**
 * The dataset page's state, kept across polls and rebuilt on each visit: the cards (built once,
 * each refreshed in place when its data changed), the items loaded so far (every page the reader
 * asked for), the filter, the labelling queue's skips, and the item open in the dialog.
 */
let dsView = null;

function newDatasetView(generation, name) {
  return { generation, name, built: false, cards: null, stamps: {}, summary: null, labels: [],
    filter: { status: "", label: "" }, filterSeq: 0, items: [], more: false, loading: false, tiles: new Map(),
    specText: null, specHash: null, queue: null, current: null, skipped: [], done: new Set(), open: null, openStamp: null };
}

async function dataset(generation, name) {
  if (!dsView || dsView.generation !== generation) {
    closeMediaDialog();
    dsView = newDatasetView(generation, name);
  }
  const v = dsView;
  const path = datasetPath(name);
  const seq = v.filterSeq;
  const [summary, page, queue, failed, pipeline, open] = await Promise.all([
    api("GET", path),
    api("GET", mediaQuery(v, null)),
    api("GET", `${path}/labelling-queue?limit=${QUEUE_READ}`),
    api("GET", `${path}/media?status=failed&limit=${FAILED_SHOWN}`),
    api("GET", `${path}/pipeline`),
    v.open ? api("GET", `/v1/media/${encodeURIComponent(v.open)}`) : null,
  ]);
  if (!current(generation) || dsView !== v) return;
  if (!v.built) {
    if (summary.status !== 200) {
      $("page").replaceChildren(el("a", { href: "#/datasets" }, "← All datasets"), head(name),
        el("div", { class: "card" }, el("p", { class: "empty" }, refusal(summary, "this dataset"))));
      return;
    }
    buildDatasetPage(v);
  }
  if (summary.status === 200) refreshSummary(v, summary.body);
  if (seq === v.filterSeq) refreshGallery(v, page);
  refreshQueue(v, queue);
  refreshFailed(v, failed);
  refreshPipeline(v, pipeline);
  if (open && open.status === 200 && v.open === open.body.id) refreshMediaView(v, open.body);
  const ok = [summary, page, queue, failed].every((r) => r.status === 200);
  v.updated.classList.toggle("stale", !ok);
  v.updated.textContent = ok ? `Live · updated ${new Date().toLocaleTimeString()}`
    : `Could not refresh everything: ${errorOf([summary, page, queue, failed].find((r) => r.status !== 200))}`;
}

/** Replaces `card`'s content with `build()` only when `data` changed since the last time. */
function refreshCard(v, key, data, build) {
  const stamp = JSON.stringify(data);
  if (v.stamps[key] === stamp) return;
  v.stamps[key] = stamp;
  fill(v.cards[key], build());
}

function buildDatasetPage(v) {
  v.built = true;
  const updated = el("span", { class: "updated" }, "Live");
  v.updated = updated;
  v.cards = {
    summary: el("div", { class: "card", "data-testid": "dataset-summary" }),
    queue: el("div", { class: "card", "data-testid": "labelling-queue" }),
    gallery: el("div", { class: "card", "data-testid": "gallery" }),
    failed: el("div", { class: "card", "data-testid": "failed-items" }),
    pipeline: el("div", { class: "card", "data-testid": "pipeline" }),
  };
  buildGallery(v);
  buildPipeline(v);
  $("page").replaceChildren(
    el("a", { href: "#/datasets" }, "← All datasets"),
    el("div", { class: "page-head" }, el("h1", {}, v.name), updated),
    v.cards.summary, v.cards.queue, v.cards.gallery,
    el("div", { class: "grid pair" }, v.cards.failed, v.cards.pipeline));
}

// ----- summary -----

function refreshSummary(v, d) {
  v.summary = d;
  v.labels = labelsOf(d);
  refreshCard(v, "summary", [d, v.filter], () => {
    const by = d.by_status || {};
    const stat = (label, value, testid, kind = "") => el("div", {}, el("span", {}, label),
      el("b", { class: `stat ${kind}`, "data-testid": testid }, count(value)));
    const labelPill = (text, n, filter) => el("button", {
      type: "button", class: `pill label-pill${v.filter.label === filter ? " on" : ""}`, "data-testid": `label-pill-${text}`,
      title: `Show only ${text === "unlabelled" ? "unlabelled items" : `items labelled ${text}`}`,
      onclick: () => setFilter(v, { label: v.filter.label === filter ? "" : filter }),
    }, text, " ", el("span", { class: "n" }, count(n)));
    return [
      el("div", { class: "stats" },
        stat("items", d.total, "count-total"), stat("processed", by.processed || 0, "count-processed"),
        stat("in flight", inFlight(by), "count-in-flight"), stat("failed", by.failed || 0, "count-failed", by.failed ? "bad-text" : ""),
        stat("labels", v.labels.length, "count-labels"), stat("unlabelled", d.unlabelled || 0, "count-unlabelled")),
      el("div", { class: "status-line" }, mediaStatusBar(by, 360, 10),
        el("span", { class: "legend" }, MEDIA_STATUSES.map((s) => el("span", { class: "item" },
          el("i", { class: `key ${s}` }), `${s} ${count(by[s] || 0)}`)))),
      el("div", { class: "label-pills", "data-testid": "label-pills" },
        v.labels.length === 0 && !d.unlabelled ? el("span", { class: "empty" }, "No item yet.") : null,
        v.labels.map((l) => labelPill(l, d.by_label[l], l)),
        d.unlabelled ? labelPill("unlabelled", d.unlabelled, UNLABELLED) : null),
    ];
  });
}

// ----- the grid of items -----

/** The list route for the current filter: the first page, or the one after `before`. */
function mediaQuery(v, before) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (v.filter.status) params.set("status", v.filter.status);
  if (v.filter.label === UNLABELLED) params.set("unlabelled", "true");
  else if (v.filter.label) params.set("label", v.filter.label);
  if (before) params.set("before", before);
  return `${datasetPath(v.name)}/media?${params}`;
}

function buildGallery(v) {
  v.statusSelect = el("select", { "aria-label": "Status", "data-testid": "filter-status",
    onchange: (event) => setFilter(v, { status: event.target.value }) },
  el("option", { value: "" }, "every status"), MEDIA_STATUSES.map((s) => el("option", { value: s }, s)));
  v.labelSelect = el("select", { "aria-label": "Label", "data-testid": "filter-label",
    onchange: (event) => setFilter(v, { label: event.target.value }) });
  v.shown = el("span", { class: "small muted", "data-testid": "gallery-count" });
  v.grid = el("div", { class: "tiles", "data-testid": "tiles" });
  v.emptyNote = el("p", { class: "empty", hidden: true }, "No item matches.");
  v.moreButton = el("button", { type: "button", class: "quiet", "data-testid": "load-more", hidden: true,
    onclick: () => loadMore(v) }, "Load more");
  v.galleryError = el("p", { class: "error", hidden: true });
  v.cards.gallery.append(
    el("div", { class: "page-head wrap" }, el("h2", {}, "Items"),
      el("div", { class: "controls" }, el("label", { class: "inline" }, "Status ", v.statusSelect),
        el("label", { class: "inline" }, "Label ", v.labelSelect)), v.shown),
    v.grid, v.emptyNote, v.galleryError, el("div", { class: "more" }, v.moreButton));
  fillLabelSelect(v);
}

function fillLabelSelect(v) {
  const options = [["", "every label"], ...v.labels.map((l) => [l, l]), [UNLABELLED, "unlabelled"]];
  const stamp = JSON.stringify(options);
  if (v.labelSelect.dataset.stamp === stamp) return;
  v.labelSelect.dataset.stamp = stamp;
  v.labelSelect.replaceChildren(...options.map(([value, text]) => el("option", { value }, text)));
  v.labelSelect.value = v.filter.label;
}

function setFilter(v, change) {
  Object.assign(v.filter, change);
  v.filterSeq += 1;
  v.statusSelect.value = v.filter.status;
  v.labelSelect.value = v.filter.label;
  v.items = [];
  v.more = false;
  v.grid.replaceChildren();
  v.shown.textContent = "Loading…";
  if (v.summary) refreshSummary(v, v.summary);
  const seq = v.filterSeq;
  api("GET", mediaQuery(v, null)).then((page) => {
    if (dsView === v && seq === v.filterSeq) refreshGallery(v, page);
  });
}

/** Sorts newest first, as the API orders items: by creation time, then id. */
const newestFirst = (a, b) => Date.parse(b.created_at) - Date.parse(a.created_at) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);

/**
 * Folds a fresh first page into the items loaded so far: the first page's window is replaced
 * (new items appear, changed ones change, ones that left the filter go), older pages the reader
 * loaded stay as they are.
 */
function refreshGallery(v, page) {
  fillLabelSelect(v);
  v.galleryError.hidden = page.status === 200;
  if (page.status !== 200) {
    v.galleryError.textContent = refusal(page, "this dataset's items");
    if (!v.items.length) v.shown.textContent = "";
    return;
  }
  const fresh = page.body.items || [];
  if (!page.body.next_before) {
    v.items = fresh;
    v.more = false;
  } else {
    const last = fresh[fresh.length - 1];
    const older = v.items.filter((i) => newestFirst(i, last) > 0);
    v.more = older.length ? v.more : true;
    v.items = fresh.concat(older);
  }
  renderTiles(v);
}

async function loadMore(v) {
  if (v.loading || !v.items.length) return;
  v.loading = true;
  v.moreButton.disabled = true;
  v.moreButton.textContent = "Loading…";
  const seq = v.filterSeq;
  const page = await api("GET", mediaQuery(v, v.items[v.items.length - 1].id));
  v.loading = false;
  v.moreButton.disabled = false;
  v.moreButton.textContent = "Load more";
  if (dsView !== v || seq !== v.filterSeq) return;
  if (page.status !== 200) {
    v.galleryError.hidden = false;
    v.galleryError.textContent = refusal(page, "more items");
    return;
  }
  const known = new Set(v.items.map((i) => i.id));
  v.items = v.items.concat((page.body.items || []).filter((i) => !known.has(i.id)));
  v.more = Boolean(page.body.next_before);
  renderTiles(v);
}

/** How many items the filter matches, when the dataset's counts say. */
function filterTotal(v) {
  const d = v.summary;
  if (!d) return null;
  const { status, label } = v.filter;
  if (status && label) return null;
  if (status) return (d.by_status || {})[status] || 0;
  if (label === UNLABELLED) return d.unlabelled || 0;
  if (label) return (d.by_label || {})[label] || 0;
  return d.total;
}

const tileStamp = (i) => `${i.status}|${i.label}|${i.outputs}|${i.error}|${i.kind}`;

/** Draws the loaded items, reusing each tile whose item did not change (no image is fetched twice). */
function renderTiles(v) {
  const nodes = v.items.map((item) => {
    const stamp = tileStamp(item);
    let known = v.tiles.get(item.id);
    if (!known || known.stamp !== stamp) {
      known = { stamp, node: tile(v, item) };
      v.tiles.set(item.id, known);
    }
    return known.node;
  });
  if (v.tiles.size > nodes.length) {
    const keep = new Set(v.items.map((i) => i.id));
    for (const id of v.tiles.keys()) if (!keep.has(id)) v.tiles.delete(id);
  }
  reconcile(v.grid, nodes);
  const total = filterTotal(v);
  v.shown.textContent = total === null ? `${count(v.items.length)} shown` : `${count(v.items.length)} of ${count(total)} shown`;
  v.emptyNote.hidden = v.items.length > 0;
  v.moreButton.hidden = !v.more;
}

/** Makes `parent`'s children exactly `nodes`, moving only what is out of place. */
function reconcile(parent, nodes) {
  let at = parent.firstChild;
  for (const node of nodes) {
    if (node === at) at = at.nextSibling;
    else parent.insertBefore(node, at);
  }
  while (at) {
    const next = at.nextSibling;
    at.remove();
    at = next;
  }
}

function tile(v, item) {
  const shown = item.status === "processed" && item.outputs > 0;
  const label = item.label ?? "unlabelled";
  return el("button", { type: "button", class: `tile ${item.status}`, "data-id": item.id, "data-testid": `tile-${item.id}`,
    title: `${label} · ${item.status}${item.error ? `: ${item.error}` : ""} · ${item.kind} · ${short(item.id)}`,
    onclick: () => openMedia(v, item.id) },
  shown ? el("img", { src: outputUrl(item.id), loading: "lazy", decoding: "async", alt: label, width: 112, height: 112 })
    : el("span", { class: "placeholder" },
      item.status === "failed" ? [el("b", {}, "failed"), el("span", { class: "reason", "data-testid": "tile-reason" }, item.error || "no reason given")]
        : item.status === "processed" ? el("span", {}, "no output under the current spec")
          : [pill(item.status, statusKind(item.status)), el("span", { class: "small" }, `${item.kind}, waiting for preprocess`)]),
  item.kind === "video" ? el("span", { class: "badge" }, `video · ${item.outputs} frame${item.outputs === 1 ? "" : "s"}`) : null,
  el("span", { class: "caption" },
    el("span", { class: `name${item.label ? "" : " none"}`, "data-testid": "tile-label" }, label),
    el("span", { class: `dot ${item.status}`, title: item.status, "data-testid": "tile-status" }, item.status)));
}

/** Shows the item's new label on its tile at once (the next poll confirms it). */
function relabelled(v, id, label) {
  const item = v.items.find((i) => i.id === id);
  if (!item) return;
  item.label = label;
  renderTiles(v);
}

// ----- the item dialog: raw beside processed, metadata, relabelling -----

function mediaDialog() {
  let dialog = $("media-dialog");
  if (dialog) return dialog;
  dialog = el("dialog", { id: "media-dialog", class: "media", "data-testid": "media-dialog",
    onclose: () => { if (dsView) { dsView.open = null; dsView.openStamp = null; } },
    onkeydown: (event) => {
      if (typing(event.target) || event.target.matches("video") || !dsView || !dsView.open) return;
      if (event.key === "ArrowLeft") stepMedia(dsView, -1);
      else if (event.key === "ArrowRight") stepMedia(dsView, 1);
    } },
  el("div", { class: "media-head" }, el("h2", { id: "media-title" }, "Item"),
    el("div", { class: "controls" },
      el("button", { type: "button", class: "quiet small", id: "media-newer", title: "Newer item (←)", onclick: () => stepMedia(dsView, -1) }, "← Newer"),
      el("button", { type: "button", class: "quiet small", id: "media-older", title: "Older item (→)", onclick: () => stepMedia(dsView, 1) }, "Older →"),
      el("button", { type: "button", class: "quiet small", "data-testid": "media-close", onclick: () => dialog.close() }, "Close"))),
  el("div", { id: "media-view" }), el("div", { id: "media-editor" }));
  document.body.append(dialog);
  return dialog;
}

function closeMediaDialog() {
  const dialog = $("media-dialog");
  if (dialog && dialog.open) dialog.close();
}
window.addEventListener("hashchange", closeMediaDialog);

async function openMedia(v, id) {
  const dialog = mediaDialog();
  v.open = id;
  v.openStamp = null;
  if (!dialog.open) { // stepping to the next item keeps the last one drawn until this one arrives
    $("media-title").textContent = `Item ${short(id)}`;
    $("media-view").replaceChildren(el("p", { class: "muted" }, "Loading…"));
    $("media-editor").replaceChildren();
  }
  const index = v.items.findIndex((i) => i.id === id);
  $("media-newer").disabled = index <= 0;
  $("media-older").disabled = index < 0 || index >= v.items.length - 1;
  if (!dialog.open) dialog.showModal();
  const result = await api("GET", `/v1/media/${encodeURIComponent(id)}`);
  if (dsView !== v || v.open !== id) return;
  if (result.status !== 200) {
    $("media-view").replaceChildren(el("p", { class: "error" }, refusal(result, "this item")));
    return;
  }
  refreshMediaView(v, result.body);
  $("media-editor").replaceChildren(labelEditor(v, result.body));
}

function stepMedia(v, by) {
  if (!v || !v.open) return;
  const index = v.items.findIndex((i) => i.id === v.open);
  const next = v.items[index + by];
  if (index >= 0 && next) openMedia(v, next.id);
}

/** The item's pictures and facts; redrawn on a poll only when the item changed (the editor is left alone). */
function refreshMediaView(v, m) {
  const stamp = JSON.stringify(m);
  if (v.openStamp === stamp) return;
  v.openStamp = stamp;
  $("media-title").replaceChildren(`Item ${short(m.id)} `, el("span", { class: "muted small" }, m.kind), " ",
    pill(m.status, statusKind(m.status), { "data-testid": "media-status" }));
  const outputs = m.outputs || [];
  // A type this browser cannot show (TIFF, some video codecs), or a page policy without
  // `media-src`, leaves a link to the bytes instead of a broken picture.
  const unshown = (event) => event.target.replaceWith(el("p", { class: "empty", "data-testid": "media-raw-unshown" },
    `This browser cannot show the ${m.content_type} upload here: `, el("a", { href: rawUrl(m.id), download: "" }, "download it"), "."));
  const raw = m.kind === "video"
    ? el("video", { controls: true, preload: "metadata", src: rawUrl(m.id), "data-testid": "media-raw", onerror: unshown })
    : el("img", { src: rawUrl(m.id), alt: "the upload", "data-testid": "media-raw", onerror: unshown,
      class: m.width && m.width <= 128 && m.height <= 128 ? "pixels" : null }); // enlarged: show its pixels
  const processed = outputs.length === 0
    ? el("p", { class: m.status === "failed" ? "error" : "empty" },
      m.status === "failed" ? `Preprocessing failed: ${m.error || "no reason given"}` : m.status === "processed"
        ? "No output under the current pipeline spec (reprocess the dataset)." : `Not processed yet (${m.status}).`)
    : m.kind === "video"
      ? el("div", { class: "frames", "data-testid": "media-frames" }, outputs.map((o, n) => el("figure", {},
        el("img", { src: outputUrl(m.id, n), alt: `frame ${n}`, loading: "lazy", width: o.width, height: o.height }),
        el("figcaption", {}, typeof o.timestamp_ms === "number" ? `${(o.timestamp_ms / 1000).toFixed(1)} s` : `#${n}`))))
      : el("img", { class: "pixels", src: outputUrl(m.id, 0), alt: "the processed output", "data-testid": "media-processed",
        width: outputs[0].width, height: outputs[0].height });
  const size = outputs[0] ? `${outputs[0].width}×${outputs[0].height}` : "";
  const fact = (key, ...value) => el("div", { class: "fact" }, el("span", { class: "key" }, key), el("span", {}, ...value));
  const metadata = Object.keys(m.metadata || {}).length ? m.metadata : null;
  fill($("media-view"),
    el("div", { class: `compare${m.kind === "video" ? " video" : ""}` },
      el("figure", { class: "raw" }, raw,
        el("figcaption", {}, "Raw upload", m.width ? ` · ${m.width}×${m.height}` : "", ` · ${byteSize((m.raw || {}).bytes)}`)),
      el("figure", { class: "processed" }, processed,
        el("figcaption", {}, m.kind === "video" ? `Processed: ${outputs.length} frame${outputs.length === 1 ? "" : "s"}${size ? ` of ${size}` : ""}`
          : `Processed${size ? ` · ${size}` : ""}`))),
    m.status === "failed" ? el("p", { class: "error", "data-testid": "media-error" }, m.error || "Failed, no reason given.") : null,
    el("div", { class: "facts" },
      fact("label", el("b", { "data-testid": "media-label" }, m.label ?? "unlabelled")),
      fact("id", el("span", { class: "mono" }, m.id)),
      fact("type", m.content_type, " · ", byteSize((m.raw || {}).bytes)),
      fact("source", m.source || "upload"),
      fact("uploaded", when(m.created_at)),
      fact("processed", m.processed_at ? when(m.processed_at) : "—"),
      fact("sha-256", el("span", { class: "mono", title: (m.raw || {}).sha256 || "" }, short((m.raw || {}).sha256)))),
    metadata ? el("details", {}, el("summary", {}, "metadata"), el("pre", {}, JSON.stringify(metadata, null, 2))) : null);
}

function labelEditor(v, m) {
  if (!canIngest()) {
    return el("p", { class: "muted", "data-testid": "relabel-needs-ingest" },
      "Relabelling needs an ingest or admin token; this one has: ", state.me.scopes.join(", "), ".");
  }
  const input = el("input", { type: "text", value: m.label ?? "", list: "media-labels", maxlength: 128, autocomplete: "off",
    spellcheck: "false", "aria-label": "Label", "data-testid": "label-input", placeholder: "a label" });
  const message = el("p", { class: "error", role: "alert", hidden: true, "data-testid": "label-error" });
  const send = async (label) => {
    message.hidden = true;
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    const result = await api("PATCH", `/v1/media/${encodeURIComponent(m.id)}`, { label });
    for (const b of form.querySelectorAll("button")) b.disabled = false;
    if (result.status !== 200) {
      message.textContent = errorOf(result);
      message.hidden = false;
      return;
    }
    relabelled(v, m.id, result.body.label);
    if (dsView === v && v.open === m.id) {
      refreshMediaView(v, result.body);
      input.value = result.body.label ?? "";
      message.className = "ok-text";
      message.textContent = result.body.label === null ? "Label cleared." : `Labelled ${result.body.label}.`;
      message.hidden = false;
    }
  };
  const form = el("form", { class: "relabel", onsubmit: (event) => {
    event.preventDefault();
    message.className = "error";
    const label = input.value;
    if (!label.trim()) { message.textContent = "Type a label, or use Clear label."; message.hidden = false; return; }
    send(label.trim());
  } },
  el("label", { for: "media-label-input" }, "Label"),
  el("div", { class: "row" }, Object.assign(input, { id: "media-label-input" }),
    el("button", { type: "submit", "data-testid": "label-save" }, "Save label"),
    el("button", { type: "button", class: "quiet", "data-testid": "label-clear", onclick: () => { message.className = "error"; send(null); } }, "Clear label")),
  el("datalist", { id: "media-labels" }, v.labels.map((l) => el("option", { value: l }))),
  v.labels.length ? el("div", { class: "quick" }, v.labels.slice(0, 16).map((l) => el("button", {
    type: "button", class: "pill label-pill", onclick: () => { input.value = l; message.className = "error"; send(l); } }, l))) : null,
  message);
  return form;
}

// ----- the labelling queue -----

/** The queue's items in the order they are offered: not yet skipped first, skipped ones after. */
function queueOrder(v) {
  const items = ((v.queue && v.queue.items) || []).filter((i) => !v.done.has(i.id));
  const skipped = items.filter((i) => v.skipped.includes(i.id)).sort((a, b) => v.skipped.indexOf(a.id) - v.skipped.indexOf(b.id));
  return items.filter((i) => !v.skipped.includes(i.id)).concat(skipped);
}

function refreshQueue(v, result) {
  if (result) {
    v.queueResult = result;
    if (result.status === 200) {
      v.queue = result.body;
      const listed = new Set(result.body.items.map((i) => i.id));
      v.done = new Set([...v.done].filter((id) => listed.has(id))); // labelled ones leave the queue
    }
  }
  const card = v.cards.queue;
  // Never redraw under the reader's typing: the new label they are writing stays.
  if (card.contains(document.activeElement) && typing(document.activeElement) && document.activeElement.value) return;
  const order = queueOrder(v);
  if (!order.some((i) => i.id === v.current)) v.current = order.length ? order[0].id : null;
  const focused = document.activeElement && card.contains(document.activeElement)
    ? document.activeElement.dataset.queueId || document.activeElement.dataset.action || "" : "";
  refreshCard(v, "queue", [v.queueResult, v.labels, v.current, [...v.done], v.skipped, canIngest()], () => queueCard(v, order));
  // Keep the keyboard where it was across the redraw.
  if (focused) {
    const again = card.querySelector(`[data-queue-id="${CSS.escape(focused)}"], [data-action="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function queueCard(v, order) {
  const result = v.queueResult;
  const title = el("div", { class: "page-head wrap" }, el("h2", {}, "Labelling queue ",
    result.status === 200 ? pill(`${count(result.body.unlabelled)} unlabelled`, result.body.unlabelled ? "warn" : "ok", { "data-testid": "queue-count" }) : null));
  if (result.status !== 200) return [title, el("p", { class: "empty" }, refusal(result, "the labelling queue"))];
  if (!order.length) return [title, el("p", { class: "empty", "data-testid": "queue-empty" }, "Every item has a label.")];
  const item = order.find((i) => i.id === v.current) || order[0];
  const writer = canIngest();
  const captured = item.capture;
  const input = el("input", { type: "text", maxlength: 128, autocomplete: "off", spellcheck: "false", placeholder: "new label",
    "aria-label": "New label", "data-testid": "queue-new-label", "data-action": "new-label" });
  const current = el("div", { class: "queue-current", "data-testid": "queue-current", "data-queue-id": item.id },
    el("button", { type: "button", class: "thumb big", title: "Open the item", "data-action": "open-current",
      onclick: () => openMedia(v, item.id) }, queueThumb(item, 128)),
    el("div", { class: "queue-body" },
      el("div", { class: "small muted" },
        captured ? ["Captured from ", el("b", {}, `${captured.model} v${captured.version}`), ", which predicted ",
          el("b", {}, captured.predicted ?? "—"), typeof captured.confidence === "number" ? ` at ${percent(captured.confidence)}` : "",
          captured.why ? ` (${String(captured.why).replaceAll("_", " ")})` : ""]
          : [item.source ? `From ${item.source}` : "Uploaded without a label", " · ", item.kind, " · ", ago(item.created_at)]),
      writer ? [
        el("div", { class: "label-keys", "data-testid": "queue-labels" },
          v.labels.map((l, n) => el("button", { type: "button", class: "quiet label-key", "data-action": `label-${n}`,
            "data-testid": `queue-label-${l}`, onclick: () => labelQueued(v, item.id, l) },
          n < 9 ? el("kbd", {}, String(n + 1)) : null, l)),
          el("button", { type: "button", class: "quiet label-key skip", "data-action": "skip", "data-testid": "queue-skip",
            onclick: () => skipQueued(v, item.id) }, el("kbd", {}, "s"), "Skip")),
        el("form", { class: "row new-label", onsubmit: (event) => {
          event.preventDefault();
          const label = input.value.trim();
          if (label) { input.value = ""; input.blur(); labelQueued(v, item.id, label); }
        } }, input, el("button", { type: "submit", class: "quiet" }, "Label")),
        v.queueError ? el("p", { class: "error", role: "alert" }, v.queueError) : null,
      ] : el("p", { class: "muted" }, "Labelling needs an ingest or admin token; this one has: ", state.me.scopes.join(", "), ".")));
  const next = order.filter((i) => i.id !== item.id).slice(0, 14);
  return [title, current,
    next.length ? el("div", { class: "queue-next" }, el("span", { class: "small muted" }, "Up next"),
      el("div", { class: "strip" }, next.map((i) => el("button", { type: "button", class: `thumb${v.skipped.includes(i.id) ? " skipped" : ""}`,
        "data-queue-id": i.id, title: i.capture ? `predicted ${i.capture.predicted} at ${percent(i.capture.confidence)}` : "unlabelled",
        onclick: () => { v.current = i.id; refreshQueue(v, null); } }, queueThumb(i, 48))))) : null,
    writer ? el("p", { class: "hint", "data-testid": "queue-hint" }, "Keys: ", el("kbd", {}, "1"), "–", el("kbd", {}, "9"),
      " give the current item the numbered label, ", el("kbd", {}, "s"), " skips it; click an item up next to label it instead. ",
      "Keys typed in a text box are text, not commands.") : null];
}

function queueThumb(item, size) {
  return item.status === "processed"
    ? el("img", { src: outputUrl(item.id), alt: "unlabelled item", loading: "lazy", width: size, height: size })
    : el("span", { class: "placeholder" }, item.status);
}

async function labelQueued(v, id, label) {
  v.queueError = null;
  v.done.add(id);
  v.skipped = v.skipped.filter((s) => s !== id);
  if (v.current === id) v.current = null;
  refreshQueue(v, null);
  const result = await api("PATCH", `/v1/media/${encodeURIComponent(id)}`, { label });
  if (dsView !== v) return;
  if (result.status !== 200) {
    v.done.delete(id);
    v.current = id;
    v.queueError = `Could not label ${short(id)} ${label}: ${errorOf(result)}`;
  } else {
    relabelled(v, id, label);
  }
  refreshQueue(v, null);
}

function skipQueued(v, id) {
  v.skipped = v.skipped.filter((s) => s !== id).concat(id);
  v.current = null;
  refreshQueue(v, null);
}

/** 1–9 and s act on the labelling queue, unless typed into a field or under a dialog. */
document.addEventListener("keydown", (event) => {
  const v = dsView;
  if (!v || !v.built || !v.cards.queue.isConnected || !canIngest()) return;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || typing(event.target)) return;
  if (document.querySelector("dialog[open]")) return;
  const active = document.activeElement;
  const focused = active && v.cards.queue.contains(active) && active.dataset.queueId;
  const id = focused || v.current;
  if (!id) return;
  if (/^[1-9]$/.test(event.key)) {
    const label = v.labels[Number(event.key) - 1];
    if (!label) return;
    event.preventDefault();
    labelQueued(v, id, label);
  } else if (event.key === "s" || event.key === "S") {
    event.preventDefault();
    skipQueued(v, id);
  }
});

// ----- failed items -----

function refreshFailed(v, result) {
  const total = v.summary ? (v.summary.by_status || {}).failed || 0 : null;
  refreshCard(v, "failed", [result, total], () => {
    const title = el("h2", {}, "Failed items ", total ? pill(count(total), "bad", { "data-testid": "failed-count" }) : null);
    if (result.status !== 200) return [title, el("p", { class: "empty" }, refusal(result, "failed items"))];
    const items = result.body.items || [];
    if (!items.length) return [title, el("p", { class: "empty" }, "No item failed.")];
    return [title,
      el("table", { class: "failed" },
        el("thead", {}, el("tr", {}, el("th", {}, "Item"), el("th", {}, "Label"), el("th", {}, "Reason"), el("th", {}, "Uploaded"))),
        el("tbody", {}, items.map((i) => el("tr", { "data-testid": `failed-${i.id}` },
          el("td", {}, el("button", { type: "button", class: "link mono", title: i.id, onclick: () => openMedia(v, i.id) }, short(i.id)),
            el("br"), el("span", { class: "small muted" }, i.kind)),
          el("td", {}, i.label ?? el("span", { class: "muted" }, "—")),
          el("td", { class: "reason" }, i.error || el("span", { class: "muted" }, "no reason given")),
          el("td", { class: "small" }, when(i.created_at)))))),
      total > items.length ? el("p", { class: "small muted" }, `The ${items.length} newest of ${count(total)}. `,
        el("button", { type: "button", class: "link", onclick: () => { setFilter(v, { status: "failed" }); v.cards.gallery.scrollIntoView(); } },
          "Show all failed items in the grid")) : null];
  });
}

// ----- the pipeline spec -----

function buildPipeline(v) {
  const writer = canIngest();
  v.specArea = el("textarea", { rows: 13, spellcheck: "false", autocomplete: "off", "aria-label": "Pipeline spec (JSON)",
    "data-testid": "pipeline-spec", readonly: !writer, oninput: () => pipelineDirty(v) });
  v.specHashText = el("span", { class: "mono small muted", "data-testid": "pipeline-hash" });
  v.specMessage = el("p", { role: "status", hidden: true, "data-testid": "pipeline-message" });
  v.specNote = el("p", { class: "small warn-text", hidden: true });
  const save = el("button", { type: "button", "data-testid": "pipeline-save", onclick: () => savePipeline(v) }, "Save");
  const revert = el("button", { type: "button", class: "quiet", "data-testid": "pipeline-revert",
    onclick: () => { v.specArea.value = v.specText || ""; pipelineDirty(v); say(v, null); } }, "Revert");
  const reprocess = el("button", { type: "button", class: "quiet", "data-testid": "pipeline-reprocess",
    onclick: () => { v.confirmRow.hidden = false; confirmYes.focus(); } }, "Reprocess…");
  const confirmYes = el("button", { type: "button", class: "danger", "data-testid": "pipeline-reprocess-confirm",
    onclick: () => reprocessDataset(v) }, "Queue them");
  v.confirmText = el("span", {});
  v.confirmRow = el("div", { class: "confirm-row", hidden: true }, v.confirmText, confirmYes,
    el("button", { type: "button", class: "quiet", onclick: () => { v.confirmRow.hidden = true; } }, "Keep them"));
  v.specButtons = { save, revert };
  fill(v.cards.pipeline,
    el("div", { class: "page-head wrap" }, el("h2", {}, "Pipeline"), v.specHashText),
    el("p", { class: "small muted" }, "What preprocess makes of every item. Fields left out keep their default: ",
      el("code", {}, "width"), ", ", el("code", {}, "height"), " (1–4096 px), ", el("code", {}, "fit"), " (cover, contain, fill), ",
      el("code", {}, "color"), " (rgb, gray), ", el("code", {}, "format"), " (png), ", el("code", {}, "video"), " {",
      el("code", {}, "fps"), " (≤ 60), ", el("code", {}, "max_frames"), " (1–1000), ", el("code", {}, "keyframes"), "}."),
    v.specArea, v.specNote, v.specMessage,
    writer ? el("div", { class: "actions start" }, save, revert, reprocess) : el("p", { class: "muted" },
      "Changing the pipeline needs an ingest or admin token; this one has: ", state.me.scopes.join(", "), "."),
    writer ? v.confirmRow : null);
  pipelineDirty(v);
}

const isDirty = (v) => v.specText !== null && v.specArea.value !== v.specText;

function pipelineDirty(v) {
  if (!v.specButtons) return;
  const dirty = isDirty(v);
  v.specButtons.save.disabled = !dirty;
  v.specButtons.revert.disabled = !dirty;
  v.specArea.classList.toggle("dirty", dirty);
}

function say(v, text, kind = "ok-text") {
  v.specMessage.hidden = !text;
  v.specMessage.className = kind;
  v.specMessage.textContent = text || "";
}

/** Shows the server's spec, unless the reader is editing it: then only says that it changed. */
function refreshPipeline(v, result, force = false) {
  if (result.status !== 200) {
    if (v.specText === null) {
      v.specArea.value = "";
      v.specArea.readOnly = true;
      v.specArea.placeholder = refusal(result, "the pipeline spec");
    }
    return;
  }
  const text = JSON.stringify(result.body.spec, null, 2);
  v.specHashText.textContent = `spec ${result.body.spec_hash}`;
  v.specHashText.title = "The spec's hash: processed outputs are stored under it.";
  const editing = document.activeElement === v.specArea || isDirty(v);
  if (force || !editing) {
    v.specArea.value = text;
    v.specNote.hidden = true;
  } else if (text !== v.specText) {
    v.specNote.textContent = "The spec was changed elsewhere while you edit it; Revert shows the new one.";
    v.specNote.hidden = false;
  }
  if (text !== v.specText) v.specText = text;
  if (v.specArea.value === text) v.specNote.hidden = true;
  pipelineDirty(v);
  const total = v.summary ? v.summary.total : null;
  v.confirmText.textContent = `Preprocess ${total === null ? "every item" : `all ${count(total)} items`} again under spec ${result.body.spec_hash}?`;
}

async function savePipeline(v) {
  let spec;
  try {
    spec = JSON.parse(v.specArea.value);
  } catch (err) {
    say(v, `Not JSON: ${err.message}`, "error");
    return;
  }
  if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
    say(v, "The spec is a JSON object, such as {\"width\": 96, \"height\": 96}.", "error");
    return;
  }
  v.specButtons.save.disabled = true;
  const result = await api("PUT", `${datasetPath(v.name)}/pipeline`, spec);
  if (dsView !== v) return;
  if (result.status !== 200) {
    pipelineDirty(v);
    say(v, `Not saved: ${errorOf(result)}`, "error");
    return;
  }
  refreshPipeline(v, result, true);
  say(v, `Saved: spec ${result.body.spec_hash}. New uploads use it; Reprocess redoes the items already processed.`);
}

async function reprocessDataset(v) {
  v.confirmRow.hidden = true;
  const result = await api("POST", `${datasetPath(v.name)}/reprocess`);
  if (dsView !== v) return;
  if (result.status !== 202) say(v, `Not reprocessed: ${errorOf(result)}`, "error");
  else say(v, `${count(result.body.enqueued)} items queued for preprocessing again.`);
}
