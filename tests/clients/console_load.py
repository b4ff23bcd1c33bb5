"""Measures how fast the console's pages load with a large dataset and a large training job.

usage: console_load.py BASE_URL ADMIN_TOKEN DATABASE_URL CHROMIUM [ITEMS] [TRIALS]
(run by `./dev console-load` against `sluice up`; not part of the test suite: speed is measured,
never asserted)

Seeds, once per run, a dataset `load-<n>` of ITEMS media items (default 10,000: one real upload,
processed by the running preprocess service, then copied row by row in PostgreSQL so every item
has a real thumbnail; 1 in 50 marked failed) and a finished successive-halving job with TRIALS
trials (default 200) of 10 epochs each. Then signs in with headless Chromium and times, for each
page, the navigation until the page's content is drawn (thumbnails decoded, every trial row
drawn), five times, and prints the median and the worst.
"""

import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
import struct
import zlib

from playwright.sync_api import sync_playwright

base, token, database, chromium = sys.argv[1:5]
items = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
trials = int(sys.argv[6]) if len(sys.argv) > 6 else 200
dataset = f"load-{uuid.uuid4().hex[:6]}"


def psql(sql):
    out = subprocess.run(["psql", database, "-qtAX", "-v", "ON_ERROR_STOP=1"], input=sql,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"psql failed: {out.stderr}")
    return out.stdout.strip()


def api(method, path, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def png(width, height, seed):
    raw = b"".join(b"\x00" + b"".join(bytes(((x * 9 + seed * 40) % 256, (y * 7) % 256, (x * y + seed) % 256))
                                      for x in range(width)) for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def columns(table):
    return psql(f"SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns "
                f"WHERE table_schema = current_schema() AND table_name = '{table}'").split(",")


def copy_sql(table, overrides, source):
    cols = columns(table)
    select = ", ".join(overrides.get(c, f"s.{c}") for c in cols)
    return f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM {source}"


def seed_dataset():
    print(f"seeding {dataset}: {items} items", flush=True)
    seed = api("POST", f"/v1/media?dataset={dataset}&label=cat", png(64, 48, 1), "image/png")["items"][0]["id"]
    for _ in range(120):
        if api("GET", f"/v1/media/{seed}")["status"] in ("processed", "failed"):
            break
        time.sleep(0.5)
    psql(copy_sql("media", {
        "id": "c.id", "label": "(ARRAY['cat','dog','bird','fish'])[1 + c.g % 4]",
        "status": "CASE WHEN c.g % 50 = 0 THEN 'failed' ELSE s.status END",
        "error": "CASE WHEN c.g % 50 = 0 THEN 'decoding failed: the JPEG data ends early (copied for the load test)' END",
        "sha256": "encode(sha256(c.id::text::bytea), 'hex')",
        # Every copy points at the seed's bytes under its own (unique) key name; only the
        # processed outputs, which are shared, are ever fetched by the pages.
        "raw_key": "s.raw_key || '#' || c.g",
        "created_at": "s.created_at - make_interval(secs => c.g)",
    }, f"media s, (SELECT g, gen_random_uuid() AS id FROM generate_series(1, {items - 1}) g) c WHERE s.id = '{seed}'"))
    psql(copy_sql("media_outputs", {"media_id": "m.id"},
                  f"media_outputs s, media m WHERE s.media_id = '{seed}' AND m.dataset = '{dataset}' "
                  f"AND m.id <> '{seed}' AND m.status = 'processed'"))


def seed_job():
    print(f"seeding a job with {trials} trials", flush=True)
    job = uuid.uuid4()
    request = {"model": "load", "dataset": dataset, "architecture": "mlp",
               "search": {"strategy": "halving", "max_trials": trials, "reduction_factor": 3, "min_epochs": 3}}
    psql(f"INSERT INTO training_jobs (id, model, dataset, architecture, request, status, snapshot_id, snapshot_key, "
         f"labels, items, requested_by, started_at, finished_at) VALUES ('{job}', 'load', '{dataset}', 'mlp', "
         f"'{json.dumps(request)}', 'succeeded', 'snap-load', 'snapshots/snap-load', '[\"bird\",\"cat\",\"dog\",\"fish\"]', "
         f"{items}, 'load-test', now() - interval '1 hour', now())")
    values = []
    for ordinal in range(trials):
        lr = 10 ** (-4 + 3 * ((ordinal * 37) % trials) / trials)
        quality = 0.95 - 0.08 * (abs(lr - 0.003) / 0.003) ** 0.3
        history = [{"epoch": e, "epochs": 10, "train_loss": 1.2 - quality * (1 - 0.6 * 2.718 ** (-e / 2)),
                    "train_accuracy": quality * (1 - 0.6 * 2.718 ** (-e / 2)) + 0.02,
                    "val_loss": 1.3 - quality * (1 - 0.6 * 2.718 ** (-e / 2)),
                    "val_accuracy": quality * (1 - 0.6 * 2.718 ** (-e / 2)), "learning_rate": lr, "seconds": 2.0,
                    "worker": "load-worker", "resumed_from": 0} for e in range(1, 11)]
        metrics = {"val_accuracy": history[-1]["val_accuracy"], "val_loss": history[-1]["val_loss"], "epochs": 10}
        params = {"learning_rate": lr, "batch_size": 32, "epochs": 10, "optimizer": "adamw", "hidden": 64}
        values.append(f"('{uuid.uuid4()}', '{job}', {ordinal}, 0, NULL, '{json.dumps(params)}', 'succeeded', "
                      f"'load-worker', 10, 10, '{json.dumps(metrics)}', '{json.dumps(history)}', 20000, now(), now())")
    psql("INSERT INTO training_trials (id, job_id, ordinal, rung, parent, params, status, worker, epoch, epochs, "
         "metrics, history, duration_ms, started_at, finished_at) VALUES " + ", ".join(values))
    return job


def timed(page, url, ready, runs=5):
    times = []
    for _ in range(runs):
        page.goto("about:blank")
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(ready, timeout=60_000)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


seed_dataset()
job = seed_job()
THUMBS = "[...document.querySelectorAll('#page img')].filter((i) => i.complete && i.naturalWidth > 0).length >= 12"
ROWS = f"document.querySelectorAll('#page tbody tr').length >= {trials}"
pages = [
    ("Overview", "#/overview", "document.querySelector('[data-testid=datasets] table') !== null"),
    ("Datasets", "#/datasets", f"document.querySelector('#page').textContent.includes('{dataset}')"),
    (f"Dataset ({items} items)", f"#/datasets/{dataset}", THUMBS),
    ("Training", "#/training", "document.querySelectorAll('#page tbody tr').length > 0"),
    (f"Training job ({trials} trials)", f"#/training/{job}", ROWS),
    ("Models", "#/models", "document.querySelector('#page .card') !== null"),
    ("Serving", "#/serving", "document.querySelector('#page .card') !== null"),
]
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
    # The readiness checks are evaluated by Playwright, which the console's CSP (no eval) would
    # block; bypassing it changes nothing the pages themselves do.
    page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page.goto(f"{base}/")
    page.fill("#token", token)
    page.click("#sign-in-button")
    page.wait_for_selector("[data-testid=who-name]")
    print(f"{'page':32} {'median ms':>10} {'worst ms':>10}")
    for name, fragment, ready in pages:
        median, worst = timed(page, f"{base}/{fragment}", ready)
        print(f"{name:32} {median:10.0f} {worst:10.0f}", flush=True)
    browser.close()
