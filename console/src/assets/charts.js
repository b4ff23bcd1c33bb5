// The Sluice console: charts, inline SVG drawn here (no library). Served after console.js as one script (console/src/assets.rs).

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
