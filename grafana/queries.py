#!/usr/bin/env python3
"""Every PromQL expression Sluice ships, one JSON object per line, for tests and reviews.

    python3 grafana/queries.py                # print every expression as JSON lines
    python3 grafana/queries.py --check-names  # also fail if one names a metric Sluice does not emit
    python3 grafana/queries.py --evaluate http://127.0.0.1:9090   # run each against a Prometheus

Sources: every target of every panel and every query variable in grafana/dashboards/*.json, and
every rule in deploy/prometheus/rules/*.yml. Each line is

    {"expr": "...", "raw": "...", "source": "grafana/dashboards/ingest.json",
     "title": "Rejections by reason", "kind": "panel" | "variable" | "record" | "alert",
     "metrics": ["sluice_ingest_rejected_total"], "probes": ["..."]}

- `raw` is the expression as written; `expr` is it with Grafana's variables substituted so that
  Prometheus's HTTP API accepts it: $__rate_interval -> 1m, $__interval -> 15s, $__range -> 1h
  (override with --rate-interval, --interval, --range), and every dashboard variable ($job,
  $service, $instance, $model, in the $x, ${x} and [[x]] forms) -> `.*`. The dashboards only use
  their variables in regex matchers (`label=~"$x"`), which this script checks, so `.*` means "All".
- A variable's `label_values(METRIC{...}, label)` becomes `group by (label) (METRIC{...})`.
- `probes` are the expressions that should return at least one sample once demo data went through
  the stack: `[expr]` for panels, variables and recording rules. An alert expression returns data
  only while it fires, so its probes are the queries it compares (each operand of and/or/unless,
  with the comparison against a number removed): `sluice:outbox_pending:max > 1000` probes
  `sluice:outbox_pending:max`. A probe can legitimately be NaN (histogram_quantile over a window
  with no observations, 0/0): it still returned a sample.
- `metrics` names the series each expression reads (recording-rule outputs included).

With --evaluate URL, every `expr` is sent to URL's /api/v1/query (it must parse and evaluate) and
every probe must return at least one sample; each failure is printed with its source and title,
and the exit status is 1 if there was any. --allow-empty NAME (repeatable) accepts no data from
the expressions that read metric NAME (for series that only appear after a rare event).

Needs PyYAML for the rule files. Exits 1 when a file cannot be read, a variable is used outside a
regex matcher, or (with --check-names) a metric is neither emitted by the Rust code
(`counter!`/`gauge!`/`histogram!` with a literal "sluice_…" name), nor recorded by a rule, nor one
of Prometheus's own series.
"""

import argparse
import json
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

BUILTIN_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "atan2", "inf", "nan"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


class Problem(Exception):
    pass


# ---------- PromQL scanning ----------

def scan(expr):
    """Yields (position, char, depth) for characters outside string literals; depth counts (, {, [."""
    depth = 0
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            end = i + 1
            while end < len(expr) and expr[end] != c:
                end += 2 if expr[end] == "\\" and c != "`" else 1
            i = end + 1
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        yield i, c, depth
        i += 1


def metric_names(expr):
    """Series names an expression reads: identifiers outside matchers, ranges, label lists and calls."""
    names = set()
    brace = bracket = 0
    skip_next_group = False
    paren_stack = []
    positions = {i for i, _, _ in scan(expr)}
    i = 0
    while i < len(expr):
        if i not in positions:  # inside a string literal
            i += 1
            continue
        c = expr[i]
        if c == "{":
            brace += 1
        elif c == "}":
            brace -= 1
        elif c == "[":
            bracket += 1
        elif c == "]":
            bracket -= 1
        elif c == "(":
            paren_stack.append(skip_next_group)
            skip_next_group = False
        elif c == ")":
            if paren_stack:
                paren_stack.pop()
        if brace or bracket or c in "{}[]()" or (paren_stack and paren_stack[-1]):
            i += 1
            continue
        m = IDENT.match(expr, i)
        if not m or (i > 0 and (expr[i - 1].isalnum() or expr[i - 1] in "_.:")):
            i += 1
            continue
        word = m.group(0)
        rest = expr[m.end():].lstrip()
        lower = word.lower()
        if lower in LABEL_LIST_KEYWORDS:
            skip_next_group = rest.startswith("(")
        elif lower in KEYWORDS or lower in AGGREGATIONS or rest.startswith("("):
            pass
        else:
            names.add(word)
        i = m.end()
    return sorted(names)


def split_top(expr, words):
    """Splits at the given binary keywords (and/or/unless) where they occur at depth 0."""
    parts, start = [], 0
    zero = [i for i, _, d in scan(expr) if d == 0]
    zero_set = set(zero)
    for i in zero:
        for w in words:
            end = i + len(w)
            if (expr[i:end].lower() == w and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_"))
                    and (end >= len(expr) or not (expr[end].isalnum() or expr[end] == "_"))
                    and all(k in zero_set for k in range(i, end))):
                parts.append(expr[start:i])
                start = end
    parts.append(expr[start:])
    return parts


MODIFIER = re.compile(r"^\s*(?:(?:on|ignoring|group_left|group_right)\s*(?:\([^)]*\))?\s*|bool\s+)+", re.I)
NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+|Inf|NaN)\s*$", re.I)


def probes_of_alert(expr):
    """The queries an alert compares: each and/or/unless operand, split at its comparison."""
    out = []
    for operand in split_top(expr, ("and", "or", "unless")):
        operand = MODIFIER.sub("", operand)
        cut = None
        ops = ("==", "!=", ">=", "<=", ">", "<")
        for i, c, d in scan(operand):
            if d == 0 and c in "=!<>":
                two = operand[i:i + 2]
                if two in ops:
                    cut = (i, i + 2)
                    break
                if c in "<>":
                    cut = (i, i + 1)
                    break
        sides = [operand] if cut is None else [operand[:cut[0]], MODIFIER.sub("", operand[cut[1]:])]
        for side in sides:
            side = " ".join(side.split())
            if side and not NUMBER.match(side):
                out.append(side)
    return out


# ---------- substitution ----------

def substitute(raw, args, where):
    # Built-in interval variables first, then the dashboard's own.
    text = raw
    for name, value in (("__rate_interval", args.rate_interval), ("__interval", args.interval),
                        ("__range", args.range)):
        text = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", value, text)
    # Each remaining variable must sit in a regex matcher: label=~"...$x...".
    for m in VAR.finditer(text):
        name = m.group(1) or m.group(2) or m.group(3)
        before = text[:m.start()]
        quote = before.rfind('"')
        if quote < 1 or not before[:quote].rstrip().endswith("=~"):
            raise Problem(f"{where}: variable ${name} is used outside a regex matcher (label=~\"${name}\")")
    return VAR.sub(".*", text)


def label_values_to_promql(query):
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
    if not m:
        raise Problem(f"unsupported variable query {query!r} (only label_values(metric, label))")
    return f"group by ({m.group(2)}) ({m.group(1)})"


# ---------- sources ----------

def dashboard_queries(path, args):
    rel = path.relative_to(ROOT).as_posix()
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Problem(f"{rel}: {e}") from e
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        raw = label_values_to_promql(query)
        yield {"raw": raw, "source": rel, "title": f"variable ${var['name']}", "kind": "variable",
               "expr": substitute(raw, args, f"{rel} variable {var['name']}")}

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for t in panel.get("targets", []):
            raw = t.get("expr")
            if not raw:
                continue
            where = f"{rel} panel {panel.get('title')!r} target {t.get('refId')}"
            yield {"raw": raw, "source": rel, "title": panel.get("title", ""), "kind": "panel",
                   "expr": substitute(raw, args, where)}


def rule_queries(path):
    import yaml  # PyYAML: apt python3-yaml or pip install pyyaml

    rel = path.relative_to(ROOT).as_posix()
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise Problem(f"{rel}: {e}") from e
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            raw = " ".join(str(rule["expr"]).split())
            if "record" in rule:
                yield {"raw": raw, "source": rel, "title": rule["record"], "kind": "record", "expr": raw}
            else:
                yield {"raw": raw, "source": rel, "title": rule["alert"], "kind": "alert", "expr": raw}


def collect(args):
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        out.extend(dashboard_queries(path, args))
    for path in sorted(RULES.glob("*.yml")):
        out.extend(rule_queries(path))
    if not out:
        raise Problem(f"no expressions found under {DASHBOARDS} and {RULES}")
    for q in out:
        q["expr"] = " ".join(q["expr"].split()) if q["kind"] != "panel" else q["expr"]
        q["metrics"] = metric_names(q["expr"])
        q["probes"] = probes_of_alert(q["expr"]) if q["kind"] == "alert" else [q["expr"]]
    return out


def emitted_metrics():
    """Metric names the Rust code emits, with histograms expanded to their series."""
    pattern = re.compile(r"\b(counter|gauge|histogram)!\(\s*\"(sluice_[a-z0-9_]+)\"")
    names = set()
    crates = [ROOT] + sorted(p for p in ROOT.iterdir() if (p / "Cargo.toml").is_file())
    for path in (path for crate in crates for path in (crate / "src").glob("**/*.rs")):
        for kind, name in pattern.findall(path.read_text(errors="replace")):
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def prometheus_query(base, expr, timeout=10):
    """(samples, error) for an instant query through Prometheus's HTTP API."""
    data = urllib.parse.urlencode({"query": expr}).encode()
    request = urllib.request.Request(base.rstrip("/") + "/api/v1/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, f"cannot query {base}: {e}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    result = body["data"]["result"]
    return (result if body["data"]["resultType"] in ("vector", "matrix") else [result]), None


def evaluate(queries, base, allow_empty):
    failures = 0
    for q in queries:
        where = f"{q['source']} [{q['kind']}] {q['title']}"
        _, error = prometheus_query(base, q["expr"])
        if error:
            failures += 1
            print(f"FAIL {where}: {error}\n     {q['expr']}", file=sys.stderr)
            continue
        if allow_empty & set(q["metrics"]):
            continue
        for probe in q["probes"]:
            samples, error = prometheus_query(base, probe)
            if error or not samples:
                failures += 1
                print(f"FAIL {where}: {error or 'no data'}\n     {probe}", file=sys.stderr)
    print(f"{len(queries) - failures} passed, {failures} failed", file=sys.stderr)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-names", action="store_true",
                        help="fail if an expression reads a metric the Rust code does not emit")
    parser.add_argument("--rate-interval", default="1m", help="value for $__rate_interval (default 1m)")
    parser.add_argument("--interval", default="15s", help="value for $__interval (default 15s)")
    parser.add_argument("--range", default="1h", help="value for $__range (default 1h)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but problems")
    parser.add_argument("--evaluate", metavar="URL", help="run every expression against this Prometheus")
    parser.add_argument("--allow-empty", metavar="METRIC", action="append", default=[],
                        help="with --evaluate: accept no data from expressions reading METRIC")
    args = parser.parse_args()
    try:
        queries = collect(args)
    except Problem as e:
        print(f"queries.py: {e}", file=sys.stderr)
        return 1
    if not args.quiet and not args.evaluate:
        for q in queries:
            print(json.dumps({k: q[k] for k in ("expr", "raw", "source", "title", "kind", "metrics", "probes")}))
    if args.check_names:
        known = emitted_metrics() | BUILTIN_SERIES | {q["title"] for q in queries if q["kind"] == "record"}
        unknown = {}
        for q in queries:
            for name in q["metrics"]:
                if name not in known:
                    unknown.setdefault(name, []).append(f"{q['source']}: {q['title']}")
        if unknown:
            for name, where in sorted(unknown.items()):
                print(f"queries.py: {name} is not emitted by Sluice (counter!/gauge!/histogram! in */src), "
                      f"used by {'; '.join(sorted(set(where)))}", file=sys.stderr)
            return 1
    if args.evaluate and evaluate(queries, args.evaluate, set(args.allow_empty)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
