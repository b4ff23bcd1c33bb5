"""Drives the Sluice console in headless Chromium (Playwright, sync API), as tests/it/console.rs asks.

usage: console_e2e.py BASE_URL ADMIN_TOKEN PREDICT_TOKEN MODEL SCREENSHOT_DIR CHROMIUM [JOB_ID [DRIFT_MODEL [LIVE_DATASET]]]

The model must have versions 1 and 2 with production on v1, registered without artifacts (so
inference cannot load them), no routing and no capture policy; dataset `shapes` must hold three
uploads, labelled circle, square and triangle. Signs in as admin, checks the Overview, the
Datasets list and the dataset's page (processed thumbnails served, raw beside processed, relabels
the circle `disc` in the item's dialog), the Training page (no job but JOB_ID), the Serving
pages, opens the model, promotes v2 and rolls back to v1 by clicking, signs out, signs in with
the predict-only token and checks that no promote button is shown and that datasets and training
are refused. With JOB_ID (a running job of MODEL
whose trials span rungs 0 to 2 and have epoch histories), also checks the job's page and cancels
it through the dialog. With LIVE_DATASET (300 processed, labelled images), starts a 200-epoch job
on it from the New job dialog, watches the learning curve grow on the job's page (at least three
intermediate lengths, never shrinking) and cancels it. Saves a screenshot of each page. Waits for
elements, not for time (the curve is sampled until it has grown or 150 s have passed).
Prints progress, then one JSON line: the result, the predict session's cookie and CSRF token
for the Rust test to replay against the API, and the item relabelled (`{"id", "label"}`).
"""

import json
import os
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

base, admin_token, predict_token, model, shots, chromium = sys.argv[1:7]
job_id = sys.argv[7] if len(sys.argv) > 7 else None
# A served model whose drift verdict is "ok": once the page shows it, the script writes
# SCREENSHOT_DIR/ready-for-drift and the Rust test streams shifted images to it.
drift_model = sys.argv[8] if len(sys.argv) > 8 else None
live_dataset = sys.argv[9] if len(sys.argv) > 9 else None
# What tests/it/console.rs uploads before the run: one 32×32 PNG per label into this dataset.
DATASET = "shapes"
LABELS = ["circle", "square", "triangle"]
RELABEL = "disc"
shots = Path(shots)
expect.set_options(timeout=15_000)


def step(text):
    print(f"- {text}", flush=True)


def shot(page, name):
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def session_cookie(context):
    return next((c for c in context.cookies() if c["name"] == "sluice_session"), None)


def sign_in(page, token):
    page.fill("#token", token)
    page.click("#sign-in-button")


report = {}
with sync_playwright() as playwright:
    # Chromium's sandbox needs a user namespace it is not given when the tests run as root.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text else None)

    step("a wrong token is refused, and no cookie is set")
    page.goto(f"{base}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    sign_in(page, "slc_not-a-token")
    expect(page.locator("#sign-in-error")).to_contain_text("unknown or revoked")
    assert session_cookie(context) is None, context.cookies()
    shot(page, "sign-in")

    step("the admin signs in and sees the Overview with the stack's health")
    sign_in(page, admin_token)
    expect(page.get_by_test_id("who-name")).to_have_text("test-admin")
    expect(page.get_by_test_id("who-scopes")).to_have_text("admin")
    expect(page.get_by_test_id("health-status")).to_have_text("ready")
    for dependency in ["kafka", "s3", "postgres"]:
        expect(page.get_by_test_id(f"health-{dependency}")).to_contain_text("up")
    expect(page.get_by_test_id("datasets")).to_contain_text("shapes")
    expect(page.get_by_test_id("jobs-running")).to_have_text("1" if job_id else "0")
    expect(page.get_by_test_id("models").get_by_role("row", name=re.compile(model))).to_contain_text("v1")
    # The pipeline card reads /metrics: every service runs here, so the outbox relay reports its
    # backlog, ingest counted the three uploads, and preprocess exports its failure counter.
    expect(page.get_by_test_id("pipeline")).to_be_visible()
    expect(page.get_by_test_id("outbox-pending")).to_have_text(re.compile(r"^\d[\d\u202f]*$"))
    expect(page.get_by_test_id("uploads-total")).to_contain_text("since start")
    expect(page.get_by_test_id("failed-total")).to_contain_text("since start")
    expect(page.get_by_test_id("pipeline-jobs-running")).to_have_text("1" if job_id else "0")
    cookie = session_cookie(context)
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert "sluice_session" not in page.evaluate("document.cookie"), "scripts cannot read the session"
    expect(page.locator(".updated")).to_contain_text("updated")
    shot(page, "overview")

    step("Datasets lists shapes with its counts")
    page.click("nav a[data-page=datasets]")
    row = page.get_by_test_id(f"dataset-{DATASET}")
    # Items, labels and unlabelled: the three uploads, one per label.
    for cell, text in [(1, "3"), (3, "3"), (4, "0")]:
        expect(row.locator("td").nth(cell)).to_have_text(text)
    shot(page, "datasets")

    step("the dataset's page shows the processed thumbnails, counts by status and label, the pipeline")
    row.get_by_role("link", name=DATASET).click()
    expect(page.get_by_test_id("count-total")).to_have_text("3")
    # The preprocess service processes the uploads; each tile shows its PNG once it is served.
    page.wait_for_function(f"() => [...document.querySelectorAll('[data-testid=tiles] img')]"
                           f".filter((i) => i.complete && i.naturalWidth > 0).length === {len(LABELS)}", timeout=45_000)
    expect(page.get_by_test_id("count-processed")).to_have_text("3")
    for label in LABELS:
        expect(page.get_by_test_id(f"label-pill-{label}")).to_contain_text("1")
    expect(page.get_by_test_id("labelling-queue")).to_contain_text("Every item has a label")
    expect(page.get_by_test_id("failed-items")).to_contain_text("No item failed")
    expect(page.get_by_test_id("pipeline-spec")).to_have_value(re.compile(r'"width": 64'))

    step("a tile opens raw beside processed; the admin relabels it in the dialog")
    tile = page.locator("[data-testid=tiles] .tile").filter(has=page.get_by_test_id("tile-label").get_by_text(LABELS[0], exact=True))
    relabelled_id = tile.get_attribute("data-id")
    tile.click()
    expect(page.get_by_test_id("media-dialog")).to_be_visible()
    expect(page.get_by_test_id("media-label")).to_have_text(LABELS[0])
    for picture in ["media-raw", "media-processed"]:
        page.wait_for_function("(id) => { const i = document.querySelector(`[data-testid=${id}]`); return i && i.complete && i.naturalWidth > 0; }",
                               arg=picture)
    page.screenshot(path=str(shots / "dataset-item.png"))
    page.fill("[data-testid=label-input]", RELABEL)
    page.click("[data-testid=label-save]")
    expect(page.get_by_test_id("media-label")).to_have_text(RELABEL)
    page.get_by_test_id("media-close").click()
    expect(page.get_by_test_id("media-dialog")).to_be_hidden()
    expect(page.locator(f"[data-testid=tiles] .tile[data-id='{relabelled_id}'] [data-testid=tile-label]")).to_have_text(RELABEL)
    expect(page.get_by_test_id(f"label-pill-{RELABEL}")).to_contain_text("1")
    expect(page.get_by_test_id(f"label-pill-{LABELS[0]}")).to_have_count(0)
    shot(page, "dataset")

    step("Training lists the jobs and the retrain requests")
    page.click("nav a[data-page=training]")
    jobs = page.get_by_test_id("job-list")
    if job_id:
        expect(page.get_by_test_id(f"job-{job_id}")).to_contain_text("running")
        expect(page.get_by_test_id(f"job-{job_id}")).to_contain_text(model)
    else:
        expect(jobs).to_contain_text("No training job yet")
    expect(page.get_by_test_id("retrain-requests")).to_be_visible()
    expect(page.get_by_test_id("retrain-requests")).not_to_contain_text("scopes do not include")
    shot(page, "training")

    if job_id:
        step("a job's page: summary, learning curves, rungs, sortable trials")
        page.get_by_test_id(f"job-{job_id}").get_by_role("link", name=job_id[:8]).click()
        expect(page.get_by_test_id("job-status")).to_have_text("running")
        expect(page.get_by_test_id("curve-chart").locator("path.curve").first).to_be_attached()
        for rung in range(3):
            expect(page.get_by_test_id(f"rung-{rung}")).to_be_visible()
        expect(page.get_by_test_id("rungs")).to_contain_text("promoted")
        expect(page.get_by_test_id("scatter-chart")).to_be_visible()
        page.select_option("[data-testid=curve-metric]", "val_loss")
        expect(page.get_by_test_id("curve-metric")).to_have_value("val_loss")
        page.click("th[data-sort=val_accuracy]")
        expect(page.locator("th[data-sort=val_accuracy]")).to_have_attribute("aria-sort", "descending")
        shot(page, "training-job")

        step("cancel the job through the confirmation dialog")
        page.get_by_test_id("cancel-job").click()
        expect(page.locator("#confirm-dialog")).to_be_visible()
        page.click("#confirm-ok")
        expect(page.locator("#notice")).to_contain_text("cancelled")
        expect(page.get_by_test_id("job-status")).to_have_text("cancelled")
        expect(page.get_by_test_id("cancel-job")).to_have_count(0)

    if live_dataset:
        step("start a job from the New job dialog; a bad space is refused with the API's reason")
        page.click("nav a[data-page=training]")
        page.get_by_test_id("new-job").click()
        expect(page.locator("#job-dialog")).to_be_visible()
        page.select_option("#job-dataset", live_dataset)
        page.fill("#job-model", live_dataset)
        page.select_option("#job-promote", "never")
        page.fill("#job-params", "epochs=0")
        page.click("#job-start")
        expect(page.locator("#job-error")).to_contain_text("epochs")
        page.fill("#job-params", "epochs=200\npatience=0\nbatch_size=16\nlearning_rate=0.003")
        shot(page, "training-new")
        page.click("#job-start")
        page.wait_for_url(re.compile(r"#/training/[0-9a-f-]{36}$"))
        report["live_job"] = page.url.rsplit("/", 1)[1]

        step("watch the job's learning curve grow, epoch by epoch, without reloading")
        series = page.locator("[data-testid=curve-chart] g.series").first
        seen = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len([n for n in seen if 0 < n < 200]) < 3:
            if series.count():
                points = int(series.get_attribute("data-points") or 0)
                if not seen or points != seen[-1]:
                    seen.append(points)
            time.sleep(0.25)
        report["curve_points_seen"] = seen
        assert len([n for n in seen if 0 < n < 200]) >= 3, f"the curve did not grow while watched: {seen}"
        assert seen == sorted(seen), f"the curve shrank: {seen}"
        expect(page.get_by_test_id("job-status")).to_have_text("running")
        expect(page.locator("[data-testid=curve-chart] circle.dot.live")).to_have_count(1)
        shot(page, "training-live")
        page.get_by_test_id("cancel-job").click()
        page.click("#confirm-ok")
        expect(page.get_by_test_id("job-status")).to_have_text("cancelled")

    step("Serving shows each model's routing, drift, capture and traffic")
    page.click("nav a[data-page=serving]")
    row = page.get_by_test_id(f"serving-{model}")
    expect(row).to_contain_text("v1")
    expect(row).to_contain_text("all to production")
    # Its versions were registered without artifacts: inference says it cannot load them.
    expect(row).to_contain_text("cannot be loaded")
    shot(page, "serving")
    row.get_by_role("link", name=model).click()
    expect(page.get_by_test_id("routing")).to_contain_text("production → v1")
    expect(page.get_by_test_id("canary")).to_contain_text("100 % production (no canary)")
    expect(page.get_by_test_id("shadow")).to_contain_text("none")
    expect(page.get_by_test_id("drift")).to_contain_text("cannot be loaded")
    expect(page.get_by_test_id("capture")).to_contain_text("No capture policy")
    expect(page.get_by_test_id("predictions")).to_contain_text("No prediction served yet")
    # Request counts come from this process's /metrics, which every test in it shares: the
    # card is there, whatever another test served.
    expect(page.get_by_test_id("traffic")).to_be_visible()
    expect(page.get_by_test_id("traffic")).not_to_contain_text("does not run inference")
    shot(page, "serving-model")

    if drift_model:
        step(f"stream shifted images to {drift_model} and watch its drift verdict change")
        page.goto(f"{base}/#/serving/{drift_model}")
        expect(page.get_by_test_id("drift-state")).to_have_text("ok")
        expect(page.get_by_test_id("recent-predictions")).to_be_visible()
        shot(page, "serving-drift-before")
        (shots / "ready-for-drift").write_text("the verdict reads ok")
        expect(page.get_by_test_id("drift-state")).to_have_text("drift", timeout=150_000)
        expect(page.get_by_test_id("drift")).to_contain_text("covariate shift")
        # The recorded checks, ok then drift, drawn over time from GET …/drift/history.
        expect(page.get_by_test_id("drift-history-chart")).to_be_visible()
        expect(page.get_by_test_id("drift-verdicts").locator(".pill.ok")).to_have_count(1)
        expect(page.get_by_test_id("drift-verdicts").locator(".pill.bad").first).to_be_visible()
        expect(page.get_by_test_id("accuracy-chart")).to_be_visible()
        shot(page, "serving-drift")

    step("Models lists the model; its page shows versions, metrics, lineage, aliases and history")
    page.click("nav a[data-page=models]")
    expect(page.get_by_test_id(f"model-{model}")).to_be_visible()
    shot(page, "models")
    page.get_by_test_id(f"model-{model}").click()
    production = page.get_by_test_id("alias-production")
    expect(production).to_have_text("production → v1")
    expect(page.get_by_test_id("version-2")).to_contain_text("89.0 %")
    # The test report: per-class metrics and the confusion matrix (true class by row).
    page.get_by_test_id("version-2").locator("details.test-report summary").click()
    matrix = page.get_by_test_id("confusion-2")
    triangle = matrix.locator("tbody tr").nth(2)
    expect(triangle.locator("th")).to_have_text("triangle")
    expect(triangle.locator("td")).to_have_text(["1", "1", "8"])
    expect(page.get_by_test_id("version-2").locator("details.test-report")).to_contain_text("86.0 %")
    expect(page.get_by_test_id("version-1")).to_contain_text("snap-1")
    expect(page.get_by_test_id("history")).to_contain_text("first release")
    expect(page.get_by_test_id("rollback")).to_have_count(0)

    step("promote v2 by clicking")
    page.locator("button[data-action=promote][data-version='2']").click()
    expect(page.locator("#move-dialog")).to_be_visible()
    expect(page.locator("#move-title")).to_have_text("Promote: production → v2")
    page.click("#move-confirm")
    expect(production).to_have_text("production → v2")
    expect(page.locator("#notice")).to_contain_text("moved from v1 to v2")
    expect(page.get_by_test_id("history")).to_contain_text("promoted v2 from the console")
    expect(page.get_by_test_id("version-2")).to_contain_text("in production")
    shot(page, "model")

    step("roll back to v1 by clicking")
    page.get_by_test_id("rollback").click()
    expect(page.locator("#move-title")).to_have_text("Roll back: production → v1")
    page.click("#move-confirm")
    expect(production).to_have_text("production → v1")
    expect(page.get_by_test_id("history")).to_contain_text("rolled back to v1 from the console")

    step("sign out: the cookie is gone and a reload asks to sign in")
    page.click("#sign-out")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert session_cookie(context) is None, context.cookies()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    step("a predict-only token sees models but no promote or roll back button")
    sign_in(page, predict_token)
    expect(page.get_by_test_id("who-scopes")).to_have_text("predict")
    # Signing in lands on the page the address names (the model's, before signing out).
    page.click("nav a[data-page=overview]")
    expect(page.get_by_test_id("datasets")).to_contain_text("scopes do not include")
    page.click("nav a[data-page=datasets]")
    expect(page.get_by_test_id("dataset-list")).to_contain_text("scopes do not include reading datasets")
    page.click("nav a[data-page=training]")
    expect(page.get_by_test_id("job-list")).to_contain_text("scopes do not include reading training jobs")
    expect(page.get_by_test_id("retrain-requests")).to_contain_text("scopes do not include")
    page.click("nav a[data-page=serving]")
    expect(page.get_by_test_id(f"serving-{model}")).to_contain_text("v1")
    page.goto(f"{base}/#/models/{model}")
    expect(page.get_by_test_id("alias-production")).to_have_text("production → v1")
    expect(page.get_by_test_id("needs-admin")).to_be_visible()
    expect(page.get_by_test_id("version-2")).to_be_visible()
    expect(page.locator("button[data-action=promote]")).to_have_count(0)
    expect(page.get_by_test_id("rollback")).to_have_count(0)
    shot(page, "model-predict")
    csrf = page.evaluate("fetch('/console/session').then((r) => r.json()).then((me) => me.csrf_token)")
    predict_cookie = session_cookie(context)["value"]

    step("the API reference page renders under its Content-Security-Policy, and its filter works")
    page.goto(f"{base}/docs")
    expect(page.locator('section.op[data-route="post /v1/feedback"]')).to_be_visible()
    page.fill("#filter", "feedback")
    expect(page.locator('section.op[data-route="get /openapi.json"]')).to_be_hidden()
    expect(page.locator('section.op[data-route="post /v1/feedback"]')).to_be_visible()

    browser.close()
    assert not problems, problems
    print(json.dumps({**report, "checks": "passed", "predict_cookie": predict_cookie, "predict_csrf": csrf,
                      "relabelled": {"id": relabelled_id, "label": RELABEL}}))
