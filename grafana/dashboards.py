#!/usr/bin/env python3
"""Writes Sluice's Grafana dashboards (grafana/dashboards/*.json) from the definitions below.

    python3 grafana/dashboards.py          # regenerate the JSON files
    python3 grafana/dashboards.py --check  # exit 1 if a JSON file differs from what this writes,
                                           # or a dashboard breaks the rules below

Edit the definitions here, not the JSON. Every panel queries the data source chosen in the
`DS_PROMETHEUS` variable, and only metrics Sluice exports (grafana/queries.py --check-names checks
them against the Rust source). Template variables: $job, $service, $instance (and $model on the
Models and Inference dashboards), all multi-value with "All" = `.*`, so they are only ever used
with `=~`.
"""

import copy
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Label matchers every panel starts from; $model is added where the dashboard has it.
SEL = 'job=~"$job", service=~"$service", instance=~"$instance"'
MSEL = SEL + ', model=~"$model"'
RI = "$__rate_interval"


# ---------- variables ----------

def datasource_var():
    return {
        "name": "DS_PROMETHEUS",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": "DS_PROMETHEUS"},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }


def variables(with_model):
    out = [
        datasource_var(),
        query_var("job", "Job", "label_values(sluice_build_info, job)"),
        query_var("service", "Service", 'label_values(sluice_build_info{job=~"$job"}, service)'),
        query_var("instance", "Instance", 'label_values(sluice_build_info{job=~"$job", service=~"$service"}, instance)'),
    ]
    if with_model:
        out.append(query_var("model", "Model", 'label_values(sluice_inference_served_version{job=~"$job"}, model)'))
    return out


# ---------- panels ----------

def target(expr, legend="", ref="A", fmt=None, instant=False):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto", "range": not instant,
         "instant": instant}
    if fmt:
        t["format"] = fmt
    return t


def targets(queries, **kw):
    refs = "ABCDEFGHIJ"
    return [target(q[0], q[1] if len(q) > 1 else "", ref=refs[i], **kw) for i, q in enumerate(queries)]


def timeseries(title, queries, unit="short", desc="", stack=False, w=12, h=8, decimals=None, min0=True):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "_size": (w, h),
    }


def stat(title, queries, unit="short", desc="", w=6, h=4, decimals=None, thresholds=None, text_mode="auto"):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": text_mode,
                    "orientation": "auto"},
        "_size": (w, h),
    }


def heatmap(title, bucket_metric, sel, unit="s", desc="", w=12, h=8):
    expr = f"sum by (le) (increase({bucket_metric}{{{sel}}}[{RI}]))"
    return {
        "type": "heatmap", "title": title, "description": desc, "datasource": DS,
        "targets": [target(expr, "{{le}}", fmt="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {"calculate": False, "yAxis": {"unit": unit, "axisPlacement": "left"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "tooltip": {"show": True, "yHistogram": False}, "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"}, "filterValues": {"le": 1e-9}},
        "_size": (w, h),
    }


def state_timeline(title, queries, desc="", w=24, h=6, mappings=None):
    return {
        "type": "state-timeline", "title": title, "description": desc, "datasource": DS,
        "targets": targets(queries),
        "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": [
                                         {"color": "green", "value": None}, {"color": "red", "value": 1}]}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "_size": (w, h),
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def quantiles(metric, sel, by="", qs=(0.5, 0.95, 0.99), legend_prefix=""):
    """histogram_quantile queries over a Prometheus histogram's _bucket series."""
    group = f"{by}, le" if by else "le"
    out = []
    for q in qs:
        legend = f"{legend_prefix}p{int(q * 100)}"
        if by:
            legend = " ".join("{{" + b.strip() + "}}" for b in by.split(",")) + " " + legend
        out.append((f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))", legend))
    return out


# ---------- dashboards ----------

def overview():
    return "overview", "Sluice / Overview", False, [
        row("Processes"),
        stat("Targets up", [(f'sum(up{{{SEL}}})', "up")], desc="Sluice processes Prometheus scrapes successfully.",
             w=4),
        stat("Targets", [(f'count(up{{{SEL}}})', "targets")], desc="Sluice processes Prometheus knows about.", w=4),
        stat("Version", [(f"count by (version) (sluice_build_info{{{SEL}}})", "{{version}}")],
             desc="Processes per Sluice version (a rolling upgrade shows two).", w=4, text_mode="value_and_name"),
        stat("Dependencies reachable", [(f"min by (dependency) (sluice_dependency_up{{{SEL}}})", "{{dependency}}")],
             desc="1 when every process's last readiness check reached the dependency.", w=12,
             thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}], text_mode="value_and_name"),
        timeseries("Processes up", [(f"up{{{SEL}}}", "{{service}} {{instance}}")], w=12, h=6, min0=True),
        timeseries("HTTP requests by service", [
            (f"sum by (service) (rate(sluice_http_requests_total{{{SEL}}}[{RI}]))", "{{service}}")], unit="reqps",
            w=12, h=6),
        row("Traffic"),
        timeseries("Throughput through the loop", [
            (f"sum(rate(sluice_ingest_uploads_total{{{SEL}}}[{RI}]))", "files ingested/s"),
            (f"sum(rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}]))", "items preprocessed/s"),
            (f"sum(rate(sluice_trainer_trials_total{{{SEL}}}[{RI}]))", "trials finished/s"),
            (f"sum(rate(sluice_inference_predictions_total{{{SEL}}}[{RI}]))", "predictions/s"),
        ], unit="ops", desc="Each stage of ingest → preprocess → train → serve.", w=12),
        timeseries("HTTP 5xx ratio by service", [(
            f'(sum by (service) (rate(sluice_http_requests_total{{{SEL}, status=~"5.."}}[{RI}]))'
            f" or 0 * sum by (service) (rate(sluice_http_requests_total{{{SEL}}}[{RI}])))"
            f" / sum by (service) (rate(sluice_http_requests_total{{{SEL}}}[{RI}]))", "{{service}}")],
            unit="percentunit", w=12),
        row("Backlogs"),
        timeseries("Consumer lag by group", [(
            f"sum by (group, topic) (max by (group, topic, partition) (sluice_consumer_lag{{{SEL}}}))",
            "{{group}} ({{topic}})")], desc="Messages not yet committed, per consumer group.", w=8),
        timeseries("Outbox pending", [(f"max(sluice_outbox_pending{{{SEL}}})", "pending")],
                   desc="Committed events not yet published to Kafka.", w=8),
        timeseries("Model versions served", [(
            f"max by (model, alias) (sluice_inference_served_version{{{SEL}}})", "{{model}} {{alias}}")],
            decimals=0, desc="The version each served alias points at.", w=8),
    ]


def ingest():
    media = f'{SEL}, route=~"/v1/media.*|/v1/datasets.*|/v1/imports.*"'
    return "ingest", "Sluice / Ingest", False, [
        row("Uploads"),
        timeseries("Files accepted by kind and outcome", [(
            f"sum by (kind, outcome) (rate(sluice_ingest_uploads_total{{{SEL}}}[{RI}]))", "{{kind}} {{outcome}}")],
            unit="ops", stack=True, desc="accepted = stored; duplicate = same bytes already in the dataset."),
        timeseries("Bytes stored", [(f"sum(rate(sluice_ingest_received_bytes_total{{{SEL}}}[{RI}]))", "bytes/s")],
                   unit="Bps"),
        timeseries("Upload request latency", quantiles("sluice_ingest_upload_duration_seconds", SEL), unit="s",
                   desc="From the first byte to the answer, per accepted request."),
        heatmap("Upload latency distribution", "sluice_ingest_upload_duration_seconds_bucket", SEL),
        row("Rejections"),
        timeseries("Rejections by reason", [(
            f"sum by (reason) (rate(sluice_ingest_rejected_total{{{SEL}}}[{RI}]))", "{{reason}}")], unit="reqps",
            stack=True, desc="Upload requests refused; storage_unavailable and database_unavailable are ours, the "
                             "rest are client mistakes."),
        timeseries("Rejected share of upload requests", [(
            f"clamp_max((sum(rate(sluice_ingest_rejected_total{{{SEL}}}[{RI}]))"
            f' or 0 * sum(rate(sluice_http_requests_total{{{SEL}, route="/v1/media", method="POST"}}[{RI}])))'
            f' / sum(rate(sluice_http_requests_total{{{SEL}, route="/v1/media", method="POST"}}[{RI}])), 1)',
            "rejected")], unit="percentunit"),
        row("HTTP"),
        timeseries("Requests by route and status", [(
            f"sum by (method, route, status) (rate(sluice_http_requests_total{{{media}}}[{RI}]))",
            "{{method}} {{route}} {{status}}")], unit="reqps"),
        timeseries("p99 latency by route", [(
            f"histogram_quantile(0.99, sum by (method, route, le) "
            f"(rate(sluice_http_request_duration_seconds_bucket{{{media}}}[{RI}])))", "{{method}} {{route}}")],
            unit="s"),
        row("Outbox and sweeper"),
        timeseries("Outbox", [
            (f"max(sluice_outbox_pending{{{SEL}}})", "pending"),
            (f"sum(rate(sluice_outbox_published_total{{{SEL}}}[{RI}]))", "published/s"),
        ], desc="Events committed with their rows, and their publication to Kafka.", w=8),
        timeseries("Outbox publish delay", quantiles("sluice_outbox_publish_delay_seconds", SEL, qs=(0.5, 0.99)),
                   unit="s", desc="From an event's commit to Kafka's acknowledgement.", w=8),
        stat("Orphans removed (range)", [(
            f"sum(increase(sluice_ingest_orphans_removed_total{{{SEL}}}[$__range]))", "removed")], decimals=0,
            desc="Raw objects and multipart uploads left by failed transactions, swept.", w=8, h=8),
    ]


def pipeline():
    return "pipeline", "Sluice / Pipeline", False, [
        row("Consumer lag"),
        timeseries("Lag by group and topic", [(
            f"sum by (group, topic) (max by (group, topic, partition) (sluice_consumer_lag{{{SEL}}}))",
            "{{group}} ({{topic}})")], desc="Messages not yet committed (exported every 10 s by each consumer)."),
        timeseries("Lag by partition", [(
            f"max by (group, partition) (sluice_consumer_lag{{{SEL}}})", "{{group}} p{{partition}}")],
            desc="A single partition far behind the others points at one slow or stuck worker."),
        row("Throughput"),
        timeseries("Items processed by kind", [(
            f"sum by (kind) (rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}]))", "{{kind}}")], unit="ops",
            stack=True, w=8),
        timeseries("Items processed by worker", [(
            f"sum by (instance) (rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}]))", "{{instance}}")],
            unit="ops", desc="How the consumer group shares the work.", w=8),
        timeseries("Video frames extracted", [(
            f"sum(rate(sluice_preprocess_frames_extracted_total{{{SEL}}}[{RI}]))", "frames/s")], unit="ops", w=8),
        row("Failures"),
        timeseries("Failures by reason", [(
            f"sum by (kind, reason) (rate(sluice_preprocess_failed_total{{{SEL}}}[{RI}]))", "{{kind}} {{reason}}")],
            unit="ops", stack=True, desc="Items that can never succeed: recorded as failed and sent to media.dlq.",
            w=8),
        timeseries("Retries and re-enqueued items", [
            (f"sum(rate(sluice_preprocess_retries_total{{{SEL}}}[{RI}]))", "retries/s"),
            (f"sum(rate(sluice_preprocess_reenqueued_total{{{SEL}}}[{RI}]))", "re-enqueued/s"),
        ], unit="ops", desc="Retries: S3 or PostgreSQL away, the offset waits. Re-enqueued: the reconciler found "
                            "items stuck before processing.", w=8),
        timeseries("Failed share of finished items", [(
            f"(sum(rate(sluice_preprocess_failed_total{{{SEL}}}[{RI}]))"
            f" or 0 * sum(rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}])))"
            f" / ((sum(rate(sluice_preprocess_failed_total{{{SEL}}}[{RI}]))"
            f" or 0 * sum(rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}])))"
            f" + sum(rate(sluice_preprocess_processed_total{{{SEL}}}[{RI}])))", "failed")],
            unit="percentunit", w=8),
        row("Durations"),
        timeseries("Item duration by kind",
                   quantiles("sluice_preprocess_item_duration_seconds", SEL, by="kind", qs=(0.5, 0.99)), unit="s",
                   desc="One item end to end: fetch, decode, resize, encode, store."),
        timeseries("Stage duration (p99)", [
            (f"histogram_quantile(0.99, sum by (stage, le) "
             f"(rate(sluice_preprocess_stage_duration_seconds_bucket{{{SEL}}}[{RI}])))", "{{stage}}"),
            (f"histogram_quantile(0.99, sum by (stage, le) "
             f"(rate(sluice_image_stage_duration_seconds_bucket{{{SEL}}}[{RI}])))", "image {{stage}}"),
        ], unit="s", desc="fetch and store: S3 and PostgreSQL; image decode, resize and encode are shared with "
                          "inference, which decodes and resizes every request."),
        heatmap("Item duration distribution", "sluice_preprocess_item_duration_seconds_bucket", SEL, w=24),
    ]


def training():
    return "training", "Sluice / Training", False, [
        row("Jobs"),
        stat("Jobs started (range)", [(
            f"sum(increase(sluice_trainer_jobs_started_total{{{SEL}}}[$__range]))", "started")], decimals=0, w=6),
        stat("Jobs finished by status (range)", [(
            f"sum by (status) (increase(sluice_trainer_jobs_finished_total{{{SEL}}}[$__range]))", "{{status}}")],
            decimals=0, text_mode="value_and_name", w=12),
        stat("Jobs started by retraining (range)", [(
            f"sum(increase(sluice_trainer_retrain_jobs_total{{{SEL}}}[$__range]))", "retrain")], decimals=0, w=6,
            desc="Jobs started from retrain.requests (drift or low live accuracy)."),
        row("Trials"),
        timeseries("Trials finished by outcome", [(
            f"sum by (outcome) (rate(sluice_trainer_trials_total{{{SEL}}}[{RI}]))", "{{outcome}}")], unit="ops",
            stack=True),
        timeseries("Trials finished by worker", [(
            f"sum by (instance) (rate(sluice_trainer_trials_total{{{SEL}}}[{RI}]))", "{{instance}}")], unit="ops",
            desc="How the trainer consumer group shares the trials."),
        timeseries("Trials resumed from a checkpoint", [(
            f"sum(rate(sluice_trainer_trials_resumed_total{{{SEL}}}[{RI}]))", "resumed/s")], unit="ops", w=8,
            desc="A worker took over a trial another worker had started (killed, or its partitions moved)."),
        timeseries("Snapshot loads by source", [(
            f"sum by (source) (rate(sluice_trainer_snapshot_loads_total{{{SEL}}}[{RI}]))", "{{source}}")],
            unit="ops", w=8, desc="memory: the worker's cache; s3: downloaded."),
        timeseries("Training jobs", [
            (f"sum(rate(sluice_trainer_jobs_started_total{{{SEL}}}[{RI}]))", "started/s"),
            (f"sum by (status) (rate(sluice_trainer_jobs_finished_total{{{SEL}}}[{RI}]))", "{{status}}/s"),
        ], unit="ops", w=8),
        row("Durations"),
        timeseries("Trial duration", quantiles("sluice_trainer_trial_duration_seconds", SEL, qs=(0.5, 0.9, 0.99)),
                   unit="s", desc="From taking a trial to publishing its result."),
        timeseries("Epoch duration", quantiles("sluice_trainer_epoch_duration_seconds", SEL, qs=(0.5, 0.9, 0.99)),
                   unit="s", desc="Train and validate one epoch."),
        timeseries("Epochs per second by worker", [(
            f"sum by (instance) (rate(sluice_trainer_epoch_duration_seconds_count{{{SEL}}}[{RI}]))", "{{instance}}")],
            unit="ops"),
        heatmap("Trial duration distribution", "sluice_trainer_trial_duration_seconds_bucket", SEL),
    ]


def models():
    return "models", "Sluice / Models", True, [
        row("Versions and aliases"),
        stat("Served version by alias", [(
            f"max by (model, alias) (sluice_inference_served_version{{{MSEL}}})", "{{model}} {{alias}}")],
            decimals=0, text_mode="value_and_name", w=12, h=5,
            desc="The version each alias points at, as the inference service serves it."),
        stat("Alias moves (range)", [(
            f"sum by (kind) (increase(sluice_registry_alias_moves_total{{{SEL}}}[$__range]))", "{{kind}}")],
            decimals=0, text_mode="value_and_name", w=6, h=5,
            desc="Promotions and rollbacks recorded by the registry (production or other aliases)."),
        stat("Retrain requests (range)", [(
            f"sum by (model, reason) (increase(sluice_inference_retrain_requests_total{{{MSEL}}}[$__range]))",
            "{{model}} {{reason}}")], decimals=0, text_mode="value_and_name", w=6, h=5),
        timeseries("Served version over time", [(
            f"max by (model, alias) (sluice_inference_served_version{{{MSEL}}})", "{{model}} {{alias}}")],
            decimals=0, desc="Steps are hot swaps: an alias moved and the new version took over.", w=12),
        timeseries("Model loads by outcome", [(
            f"sum by (model, version, outcome) (rate(sluice_inference_model_loads_total{{{MSEL}}}[{RI}]))",
            "{{model}} v{{version}} {{outcome}}")], unit="ops", w=12),
        row("Accuracy"),
        timeseries("Live accuracy (from feedback)", [(
            f"max by (model, version) (sluice_inference_live_accuracy{{{MSEL}}})", "{{model}} v{{version}}")],
            unit="percentunit", desc="Share of predictions whose feedback label matched the top class."),
        timeseries("Expected accuracy (label-free estimate)", [(
            f"max by (model, version) (sluice_inference_expected_accuracy{{{MSEL}}})", "{{model}} v{{version}}")],
            unit="percentunit", desc="Mean calibrated top-1 confidence of recent predictions."),
        row("Drift"),
        state_timeline("Drift detected", [(
            f"max by (model, version) (sluice_inference_drift_detected{{{MSEL}}})", "{{model}} v{{version}}")],
            mappings=[{"type": "value", "options": {"0": {"text": "stable", "color": "green"},
                                                    "1": {"text": "drift", "color": "red"}}}]),
        timeseries("Drift statistics", [(
            f"max by (model, version, statistic) (sluice_inference_drift_score{{{MSEL}}})",
            "{{model}} v{{version}} {{statistic}}")],
            desc="|t| of each test of the last drift window: class:<label> (class mix), and the confidence, "
                 "brightness and sharpness residuals (inputs). Levels: GET /v1/models/{name}/drift.", min0=False),
        timeseries("Predicted class share", [(
            f"sum by (model, class) (rate(sluice_inference_predictions_total{{{MSEL}}}[{RI}]))"
            f" / on (model) group_left sum by (model) (rate(sluice_inference_predictions_total{{{MSEL}}}[{RI}]))",
            "{{model}} {{class}}")], unit="percentunit", stack=True),
        timeseries("Top-1 confidence", quantiles("sluice_inference_confidence", MSEL, by="model, version",
                                                 qs=(0.1, 0.5)), unit="percentunit",
                   desc="Low quantiles of the top-1 confidence; a drop often comes before accuracy drops."),
        timeseries("Retrain requests", [
            (f"sum by (model, reason) (rate(sluice_inference_retrain_requests_total{{{MSEL}}}[{RI}]))",
             "{{model}} {{reason}}"),
            (f"sum(rate(sluice_trainer_retrain_jobs_total{{{SEL}}}[{RI}]))", "jobs started"),
        ], unit="ops", desc="Requests published by inference and the jobs the trainer started from them."),
    ]


def inference():
    return "inference", "Sluice / Inference", True, [
        row("Requests"),
        timeseries("Requests by model and status", [(
            f"sum by (model, status) (rate(sluice_inference_requests_total{{{MSEL}}}[{RI}]))", "{{model}} {{status}}")],
            unit="reqps", stack=True),
        timeseries("Requests by alias and version", [(
            f"sum by (model, alias, version) (rate(sluice_inference_requests_total{{{MSEL}}}[{RI}]))",
            "{{model}} {{alias}} v{{version}}")], unit="reqps",
            desc="Canary and shadow traffic show as a second version."),
        timeseries("Predictions by version", [(
            f"sum by (model, version) (rate(sluice_inference_predictions_total{{{MSEL}}}[{RI}]))",
            "{{model}} v{{version}}")], unit="ops", desc="One per image (a request can carry several)."),
        timeseries("Errors by reason", [(
            f"sum by (model, reason) (rate(sluice_inference_errors_total{{{MSEL}}}[{RI}]))", "{{model}} {{reason}}")],
            unit="ops", stack=True),
        timeseries("Error share of requests", [(
            f"(sum by (model) (rate(sluice_inference_errors_total{{{MSEL}}}[{RI}]))"
            f" or 0 * sum by (model) (rate(sluice_inference_requests_total{{{MSEL}}}[{RI}])))"
            f" / ((sum by (model) (rate(sluice_inference_errors_total{{{MSEL}}}[{RI}]))"
            f" or 0 * sum by (model) (rate(sluice_inference_requests_total{{{MSEL}}}[{RI}])))"
            f" + sum by (model) (rate(sluice_inference_requests_total{{{MSEL}}}[{RI}])))", "{{model}}")],
            unit="percentunit", desc="Refused or failed requests among all answered.", w=24, h=6),
        row("Latency"),
        timeseries("End-to-end latency", quantiles("sluice_inference_request_duration_seconds", MSEL, by="model"),
                   unit="s", desc="From the request's arrival to its answer, batching wait included."),
        timeseries("Model-only latency per batch",
                   quantiles("sluice_inference_model_duration_seconds", MSEL, by="model, version", qs=(0.5, 0.99)),
                   unit="s", desc="One batch through the network."),
        heatmap("End-to-end latency distribution", "sluice_inference_request_duration_seconds_bucket", MSEL),
        timeseries("p99 of POST …/predict (HTTP layer)", [(
            f"histogram_quantile(0.99, sum by (le) (rate(sluice_http_request_duration_seconds_bucket{{{SEL}, "
            f'route="/v1/models/{{name}}/predict"}}[{RI}])))', "p99")], unit="s"),
        row("Batching"),
        timeseries("Mean batch size", [(
            f"sum by (model, version) (rate(sluice_inference_batch_size_sum{{{MSEL}}}[{RI}]))"
            f" / sum by (model, version) (rate(sluice_inference_batch_size_count{{{MSEL}}}[{RI}]))",
            "{{model}} v{{version}}")], decimals=1,
            desc="Images per model call: micro-batching merges concurrent requests."),
        timeseries("Batch size quantiles", quantiles("sluice_inference_batch_size", MSEL, by="model",
                                                     qs=(0.5, 0.99)), decimals=1),
        timeseries("Batches per second", [(
            f"sum by (model, version) (rate(sluice_inference_batch_size_count{{{MSEL}}}[{RI}]))",
            "{{model}} v{{version}}")], unit="ops"),
        heatmap("Batch size distribution", "sluice_inference_batch_size_bucket", MSEL, unit="short"),
    ]


DASHBOARDS = [overview, ingest, pipeline, training, models, inference]


def layout(panels):
    """Places panels left to right, wrapping at 24 columns; rows start a new line."""
    x = y = line_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > 24:
            y += line_h
            x, line_h = 0, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            y += h
            x, line_h = 0, 0
        out.append(p)
    return out


def build(fn):
    slug, title, with_model, panels = fn()
    return slug, {
        "uid": f"sluice-{slug}",
        "title": title,
        "tags": ["sluice"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [{"title": "Sluice", "type": "dashboards", "tags": ["sluice"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": variables(with_model)},
        "panels": layout(panels),
    }


def lint(dashboard):
    """What every Sluice dashboard must satisfy; returns the problems found."""
    problems = []
    title = dashboard["title"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    if "DS_PROMETHEUS" not in names or dashboard["templating"]["list"][0]["type"] != "datasource":
        problems.append(f"{title}: the first variable must be the DS_PROMETHEUS data source")
    ids, cells = set(), set()
    for p in dashboard["panels"]:
        where = f"{title} / {p['title']}"
        if p["id"] in ids:
            problems.append(f"{where}: duplicate panel id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{where}: overlaps another panel at column {x}, row {y}")
                    break
                cells.add((x, y))
        if p["type"] == "row":
            continue
        if p.get("datasource") != DS:
            problems.append(f"{where}: panel data source must be ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            problems.append(f"{where}: no query")
        for t in p.get("targets", []):
            if t.get("datasource") != DS or not t.get("expr"):
                problems.append(f"{where}: every target needs an expr and the ${{DS_PROMETHEUS}} data source")
            for var in ("$job", "$service", "$instance"):
                if var not in t.get("expr", ""):
                    problems.append(f"{where}: query does not filter on {var}: {t.get('expr')}")
    for v in dashboard["templating"]["list"][1:]:
        if v.get("datasource") != DS:
            problems.append(f"{title}: variable {v['name']} must query ${{DS_PROMETHEUS}}")
    return problems


def provisioned_uid():
    text = (OUT.parent / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    return "DS_PROMETHEUS" if "uid: DS_PROMETHEUS" in text else None


def render(dashboard):
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    OUT.mkdir(exist_ok=True)
    stale, problems, uids = [], [], set()
    if provisioned_uid() != "DS_PROMETHEUS":
        problems.append("grafana/provisioning/datasources/prometheus.yaml must provision uid DS_PROMETHEUS")
    for fn in DASHBOARDS:
        slug, dashboard = build(fn)
        problems.extend(lint(copy.deepcopy(dashboard)))
        if dashboard["uid"] in uids:
            problems.append(f"duplicate dashboard uid {dashboard['uid']}")
        uids.add(dashboard["uid"])
        path = OUT / f"{slug}.json"
        text = render(dashboard)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    for problem in problems:
        print(f"dashboards.py: {problem}", file=sys.stderr)
    if stale:
        print("dashboards out of date (run python3 grafana/dashboards.py): " + ", ".join(stale), file=sys.stderr)
    if stale or problems:
        sys.exit(1)
    if not check:
        print(f"wrote {len(DASHBOARDS)} dashboards to {OUT}")


if __name__ == "__main__":
    main()
