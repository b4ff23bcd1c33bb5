//! Sluice across several hosts (network namespaces on this machine, `deploy/local/hosts.sh`):
//! the stack on one host, Sluice's services spread over five others as `hosts.sh services`
//! places them, each a `sluice serve` process with its own address. Hosts are cut off the
//! network mid-stream (their link goes down: no polite exit, no closed connections), and what
//! was accepted must come out exactly once in effect.
//!
//! Needs root (CI runs as root); `hosts.sh up` builds the namespaces and starts the stack host's
//! servers, and each test runs on a database, topic prefix, bucket and consumer groups of its own.
//! The scenarios share the hosts, so they run one at a time.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use serde_json::{Value, json};
use sluice_core::{
    auth::{self, Scope},
    config::Config,
    db, s3,
};
use sluice_testkit::{eventually, random_id, with_database};
use tokio::sync::Mutex;

use crate::support::json_of;

/// One scenario at a time: they cut links every other one would see cut.
static HOSTS: Mutex<()> = Mutex::const_new(());

fn hosts_sh(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/hosts.sh");
    let output = std::process::Command::new("bash").arg(script).args(args).output().expect("hosts.sh");
    assert!(
        output.status.success(),
        "hosts.sh {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("text")
}

async fn hosts(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || hosts_sh(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("task")
}

/// A `sluice serve` process on a host.
struct Process {
    host: String,
    service: String,
    url: String,
    child: Child,
}

impl Process {
    /// This process's trainer worker name (`<hostname>-<pid>`): `ip netns exec` execs sluice, so
    /// the child's pid is sluice's.
    fn worker_name(&self) -> String {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "trainer" } else { &host }, self.child.id())
    }
}

/// The hosts with Sluice running on them, on this test's own database, topics and bucket.
struct Cluster {
    env: BTreeMap<String, String>,
    config: Config,
    pool: db::Pool,
    s3: aws_sdk_s3::Client,
    http: reqwest::Client,
    admin: String,
    processes: Vec<Process>,
    logs: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for host in ["a", "b", "c", "d", "e", "stack"] {
            let _ = std::process::Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/hosts.sh"))
                .args(["heal", host])
                .output();
        }
    }
}

impl Cluster {
    async fn start() -> Self {
        hosts(&["up"]).await;
        // Whatever an earlier run left on the hosts (a killed test leaves its processes).
        hosts(&["reset"]).await;
        let id = random_id();
        let mut env: BTreeMap<String, String> = hosts(&["env"])
            .await
            .lines()
            .filter_map(|line| line.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let admin_url = env["SLUICE_DATABASE_URL"].clone();
        let database = format!("sluice_hosts_{id}");
        let admin_pool = db::pool_for_url(&with_database(&admin_url, "postgres"), 1).expect("URL");
        admin_pool
            .get()
            .await
            .expect("the stack host's PostgreSQL")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create database");
        env.insert("SLUICE_DATABASE_URL".into(), with_database(&admin_url, &database));
        env.insert("SLUICE_KAFKA_TOPIC_PREFIX".into(), format!("hosts.{id}."));
        env.insert("SLUICE_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into());
        env.insert("SLUICE_S3_BUCKET".into(), format!("sluice-hosts-{id}"));
        env.insert("SLUICE_DATABASE_MAX_CONNECTIONS".into(), "8".into());
        for (key, group) in [
            ("SLUICE_PREPROCESS_GROUP_ID", "preprocess"),
            ("SLUICE_TRAINER_GROUP_ID", "trainer"),
            ("SLUICE_TRAINER_COORDINATOR_GROUP_ID", "trainer-coordinator"),
            ("SLUICE_TRAINER_RETRAIN_GROUP_ID", "trainer-retrain"),
            ("SLUICE_INFERENCE_BATCH_GROUP_ID", "inference-batch"),
            ("SLUICE_INFERENCE_MONITOR_GROUP_ID", "inference-monitor"),
            ("SLUICE_INGEST_CAPTURE_GROUP_ID", "ingest-captures"),
            ("SLUICE_WEBHOOKS_GROUP_ID", "webhooks"),
        ] {
            env.insert(key.into(), format!("hosts.{id}.{group}"));
        }
        let mut config = Config::load(None).expect("configuration");
        config.kafka.brokers = env["SLUICE_KAFKA_BROKERS"].clone();
        config.kafka.topic_prefix = env["SLUICE_KAFKA_TOPIC_PREFIX"].clone();
        config.s3.endpoint = env["SLUICE_S3_ENDPOINT"].clone();
        config.s3.access_key_id = env["SLUICE_S3_ACCESS_KEY_ID"].clone();
        config.s3.secret_access_key = SecretString::from(env["SLUICE_S3_SECRET_ACCESS_KEY"].clone());
        config.s3.bucket = env["SLUICE_S3_BUCKET"].clone();
        config.s3.force_path_style = true;
        config.database.url = SecretString::from(env["SLUICE_DATABASE_URL"].clone());
        config.database.max_connections = 4;
        let logs = std::env::temp_dir().join(format!("sluice-hosts-{id}"));
        std::fs::create_dir_all(&logs).expect("log folder");
        let mut cluster = Self {
            pool: db::pool(&config.database).expect("pool"),
            s3: s3::client(&config.s3).await,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
            admin: String::new(),
            processes: Vec::new(),
            env,
            config,
            logs,
        };
        // Schema, topics and the bucket, from host a, as a deployment's migrate job would.
        let migrate = cluster.command("a", &["migrate"]).output().expect("sluice migrate");
        assert!(migrate.status.success(), "sluice migrate: {}", String::from_utf8_lossy(&migrate.stderr));
        cluster.admin = auth::create_token(&cluster.pool, "hosts", &[Scope::Admin]).await.expect("token");
        let placement = hosts(&["services"]).await;
        let mut ports: BTreeMap<String, u16> = BTreeMap::new();
        for line in placement.lines() {
            let (service, host) = line.split_once(' ').expect("SERVICE HOST");
            let port = ports.entry(host.to_owned()).or_insert(8080);
            cluster.spawn(host, service, *port).await;
            *port += 1;
        }
        for p in &cluster.processes {
            let url = format!("{}/readyz", p.url);
            eventually(Duration::from_secs(60), &format!("{} on {} ready", p.service, p.host), || async {
                let response = cluster.http.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await;
        }
        eprintln!("hosts: {} processes up; logs in {}", cluster.processes.len(), cluster.logs.display());
        cluster
    }

    /// `sluice ARGS` on `host`, with this test's settings.
    fn command(&self, host: &str, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &format!("slc-{host}"), env!("CARGO_BIN_EXE_sluice")]).args(args);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
            command.env_remove(key);
        }
        command.envs(&self.env).env("RUST_LOG", std::env::var("HOSTS_RUST_LOG").unwrap_or_else(|_| "info".into()));
        // HOSTS_SLUICE_X=v sets SLUICE_X=v on every host (debugging: librdkafka's debug contexts).
        for (key, value) in std::env::vars().filter(|(k, _)| k.starts_with("HOSTS_SLUICE_")) {
            command.env(&key["HOSTS_".len()..], value);
        }
        command
    }

    async fn spawn(&mut self, host: &str, service: &str, port: u16) {
        let address = hosts(&["addr", host]).await.trim().to_owned();
        let log = std::fs::File::create(self.logs.join(format!("{host}-{service}.log"))).expect("log");
        let child = self
            .command(host, &["serve", service])
            .env("SLUICE_HTTP_ADDR", format!("{address}:{port}"))
            .env("SLUICE_STATE_DIR", self.logs.join(format!("{host}-{service}-state")))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("sluice serve");
        self.processes.push(Process {
            host: host.to_owned(),
            service: service.to_owned(),
            url: format!("http://{address}:{port}"),
            child,
        });
    }

    fn process(&self, host: &str, service: &str) -> &Process {
        self.processes.iter().find(|p| p.host == host && p.service == service).expect("placed by hosts.sh services")
    }

    fn url(&self, host: &str, service: &str, path: &str) -> String {
        format!("{}{path}", self.process(host, service).url)
    }

    async fn count(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        self.pool.get().await.expect("db").query_one(sql, params).await.expect("query").get(0)
    }

    /// Objects under `prefix` in this test's bucket.
    async fn objects(&self, prefix: &str) -> usize {
        let mut pages = self.s3.list_objects_v2().bucket(&self.config.s3.bucket).prefix(prefix).into_paginator().send();
        let mut count = 0;
        while let Some(page) = pages.next().await {
            count += page.expect("list").contents().len();
        }
        count
    }

    /// A counter from a process's `/metrics`, summed over its labels.
    async fn counter(&self, host: &str, service: &str, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url(host, service, "/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// `count` distinct labelled PNGs (the generator may repeat an image; the same bytes in a dataset
/// are stored once, so a repeat would not be a new item).
fn distinct_images(count: usize, seed: u64) -> Vec<(Vec<u8>, String)> {
    let mut seen = std::collections::HashSet::new();
    crate::closed_loop::images(count, seed, 0).into_iter().filter(|(png, _)| seen.insert(png.clone())).collect()
}

/// Uploads `images` to `dataset` through ingest on host a, `concurrency` at a time; returns how
/// many were accepted (202).
async fn upload(cluster: &Cluster, dataset: &str, images: Vec<(Vec<u8>, String)>, concurrency: usize) -> usize {
    let images = Arc::new(Mutex::new(images.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = cluster.url("a", "ingest", "/v1/media");
        let (images, http, token, dataset) =
            (images.clone(), cluster.http.clone(), cluster.admin.clone(), dataset.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            loop {
                let Some((png, label)) = images.lock().await.next() else { return accepted };
                let response = http
                    .post(&url)
                    .query(&[("dataset", dataset.as_str()), ("label", label.as_str())])
                    .bearer_auth(&token)
                    .header("content-type", "image/png")
                    .body(png)
                    .send()
                    .await
                    .expect("upload");
                let status = response.status().as_u16();
                assert_eq!(status, 202, "upload: {}", response.text().await.unwrap_or_default());
                accepted += 1;
            }
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.expect("uploader");
    }
    accepted
}

async fn processed(cluster: &Cluster, dataset: &str) -> i64 {
    cluster.count("SELECT count(*) FROM media WHERE dataset = $1 AND status = 'processed'", &[&dataset]).await
}

/// Puts a 32×32 pipeline on `dataset` (through preprocess on host b).
async fn pipeline(cluster: &Cluster, dataset: &str) {
    let response = cluster
        .http
        .put(cluster.url("b", "preprocess", &format!("/v1/datasets/{dataset}/pipeline")))
        .bearer_auth(&cluster.admin)
        .json(&json!({"width": 32, "height": 32}))
        .send()
        .await
        .expect("pipeline");
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap_or_default());
}

/// Every accepted upload of `dataset` came out once in effect: `total` media rows, output rows,
/// raw objects and processed objects, and nothing failed.
async fn each_once(cluster: &Cluster, dataset: &str, total: i64) {
    let rows = cluster
        .count(
            "SELECT count(*) FROM media_outputs o JOIN media m ON m.id = o.media_id WHERE m.dataset = $1",
            &[&dataset],
        )
        .await;
    let media = cluster.count("SELECT count(*) FROM media WHERE dataset = $1", &[&dataset]).await;
    assert_eq!((media, rows), (total, total), "one media row and one output row per accepted upload");
    assert_eq!(cluster.objects(&format!("raw/{dataset}/")).await as i64, total, "one raw object per accepted upload");
    assert_eq!(
        cluster.objects(&format!("processed/{dataset}/")).await as i64,
        total,
        "one processed object per accepted upload"
    );
    let failed =
        cluster.count("SELECT count(*) FROM media WHERE dataset = $1 AND status <> 'processed'", &[&dataset]).await;
    assert_eq!(failed, 0);
}

/// Puts a 32×32 pipeline on `dataset`, uploads `count` distinct images and waits until they are
/// processed; returns how many.
async fn seed(cluster: &Cluster, dataset: &str, count: usize, seed: u64) -> i64 {
    pipeline(cluster, dataset).await;
    let images = distinct_images(count, seed);
    let seeded = images.len() as i64;
    assert_eq!(upload(cluster, dataset, images, 8).await as i64, seeded);
    eventually(Duration::from_secs(120), &format!("{dataset} processed"), || async {
        (processed(cluster, dataset).await == seeded).then_some(())
    })
    .await;
    seeded
}

/// Starts a job through the trainer on `host`; returns its id.
async fn start_job(cluster: &Cluster, host: &str, job: &Value) -> uuid::Uuid {
    let response =
        cluster.http.post(cluster.url(host, "trainer", "/v1/training-jobs")).bearer_auth(&cluster.admin).json(job);
    let (status, created) = json_of(response.send().await.expect("job")).await;
    assert_eq!(status, 202, "{created}");
    uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid")
}

/// The finished search `view` ran each of its `trials` trials once, every one succeeded, and it
/// registered one version of `model`; returns the trials.
async fn search_ended_once<'v>(cluster: &Cluster, view: &'v Value, model: &str, trials: usize) -> &'v [Value] {
    let ran = view["trials"].as_array().expect("trials");
    assert_eq!(ran.len(), trials, "{view:#}");
    assert!(ran.iter().all(|t| t["status"] == "succeeded"), "{view:#}");
    let versions = cluster.count("SELECT count(*) FROM model_versions WHERE model = $1", &[&model]).await;
    assert_eq!(versions, 1, "one version registered");
    ran
}

/// Waits for a job to end; returns its view.
async fn job_ended(cluster: &Cluster, host: &str, job: uuid::Uuid, within: Duration) -> Value {
    eventually(within, "the job to end", || async {
        let response = cluster
            .http
            .get(cluster.url(host, "trainer", &format!("/v1/training-jobs/{job}")))
            .bearer_auth(&cluster.admin);
        let (_, view) = json_of(response.send().await.ok()?).await;
        ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str()?).then_some(view)
    })
    .await
}

/// One predict request of ten images to the inference replica on `host`, answered within 2 s:
/// the version that answered, or why not.
/// How long a request to a reachable replica may take on a busy machine (a replica's first
/// request loads the version).
const SLOW: Duration = Duration::from_secs(30);

/// Predicts `batch` on `host`'s inference replica within `within`.
async fn predict(
    cluster: &Cluster,
    host: &str,
    model: &str,
    batch: &[(Vec<u8>, String)],
    within: Duration,
) -> Result<i64, String> {
    let mut form = reqwest::multipart::Form::new();
    for (i, (png, _)) in batch.iter().enumerate() {
        form = form.part("file", reqwest::multipart::Part::bytes(png.clone()).file_name(format!("{i}.png")));
    }
    let url = cluster.url(host, "inference", &format!("/v1/models/{model}/predict"));
    let response = cluster
        .http
        .post(url)
        .bearer_auth(&cluster.admin)
        .multipart(form)
        .timeout(within)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (status, answer) = json_of(response).await;
    if status != 200 {
        return Err(format!("{status}: {answer}"));
    }
    answer["version"].as_i64().ok_or_else(|| format!("no version: {answer}"))
}

/// Two inference replicas, on hosts d and e, with no load balancer of ours: the client alternates.
/// Both feed one drift window per model version (one verdict, the same on both), both hot-swap to
/// a promoted version within a bound, and while d is cut off a client that retries on the other
/// replica sees no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_replicas_on_two_hosts_share_one_verdict_swap_together_and_cover_for_each_other() {
    let _one = HOSTS.lock().await;
    let cluster = Cluster::start().await;
    seed(&cluster, "pool", 150, 41).await;
    let job = |lr: f64| {
        json!({"model": "twin", "dataset": "pool", "architecture": "cnn", "seed": 1, "promote": "always",
            "search": {"strategy": "grid", "space": {"epochs": 6, "batch_size": 16, "learning_rate": lr}}})
    };
    let first = start_job(&cluster, "b", &job(0.003)).await;
    let view = job_ended(&cluster, "b", first, Duration::from_secs(180)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");

    // The client alternates between the replicas: one drift window (400 predictions) across both.
    let traffic = distinct_images(420, 42);
    let mut served = BTreeMap::new();
    for (i, batch) in traffic.chunks(10).enumerate() {
        let host = if i % 2 == 0 { "d" } else { "e" };
        let version = predict(&cluster, host, "twin", batch, SLOW).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        *served.entry((host, version)).or_insert(0) += 1;
    }
    assert_eq!(served.keys().map(|(_, v)| *v).collect::<Vec<_>>(), [1, 1], "both replicas serve v1: {served:?}");
    let drift = |host: &'static str| {
        let cluster = &cluster;
        async move {
            let response = cluster
                .http
                .get(cluster.url(host, "inference", "/v1/models/twin/drift?version=1"))
                .bearer_auth(&cluster.admin)
                .send()
                .await
                .ok()?;
            Some(json_of(response).await.1)
        }
    };
    let verdict = eventually(Duration::from_secs(60), "a drift check of v1 fed by both replicas", || async {
        let d = drift("d").await?;
        (d["checks"].as_i64()? >= 1).then_some(d)
    })
    .await;
    let from_e = drift("e").await.expect("e's verdict");
    assert_eq!(
        (&verdict["checked_at"], &verdict["checks"], &verdict["state"]),
        (&from_e["checked_at"], &from_e["checks"], &from_e["state"]),
        "one verdict per version, whichever replica is asked"
    );
    let verdicts = cluster.count("SELECT count(*) FROM drift_verdicts WHERE model = 'twin' AND version = 1", &[]).await;
    assert_eq!(verdicts, 1);
    assert_eq!(verdict["window"], 400, "one window of 400 predictions from both replicas: {verdict:#}");

    // A promotion: both replicas answer with v2 within the bound.
    let second = start_job(&cluster, "c", &job(0.002)).await;
    let view = job_ended(&cluster, "c", second, Duration::from_secs(180)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    let promoted = Instant::now();
    let probe = &traffic[..10];
    let swapped = eventually(Duration::from_secs(30), "both replicas serving v2", || async {
        let d = predict(&cluster, "d", "twin", probe, SLOW).await.ok()?;
        let e = predict(&cluster, "e", "twin", probe, SLOW).await.ok()?;
        (d == 2 && e == 2).then_some(promoted.elapsed())
    })
    .await;
    eprintln!("both replicas served v2 {:.2} s after the job ended", swapped.as_secs_f64());
    assert!(swapped < Duration::from_secs(10), "hot swap on both within 10 s, took {swapped:?}");

    // d drops off the network; the client retries each failed request on e once.
    hosts(&["cut", "d"]).await;
    let (mut failed, mut retried) = (0, 0);
    let started = Instant::now();
    for (i, batch) in traffic.chunks(10).take(30).enumerate() {
        let (first, other) = if i % 2 == 0 { ("d", "e") } else { ("e", "d") };
        // A short wait on the first try (the cut host never answers), a patient one on the retry.
        if predict(&cluster, first, "twin", batch, Duration::from_secs(2)).await.is_err() {
            retried += 1;
            if let Err(e) = predict(&cluster, other, "twin", batch, SLOW).await {
                eprintln!("failed on both: {e}");
                failed += 1;
            }
        }
    }
    hosts(&["heal", "d"]).await;
    eprintln!(
        "30 requests with d cut off: {retried} retried on the other replica, {failed} failed, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(failed, 0);
    assert!(retried >= 15, "every request sent to d first was retried on e: {retried}");
    let back = eventually(Duration::from_secs(30), "d answering again", || async {
        predict(&cluster, "d", "twin", probe, SLOW).await.ok()
    })
    .await;
    assert_eq!(back, 2);
}

/// The stack host (Kafka, S3, PostgreSQL) drops off the network for 30 s while uploads keep
/// coming: each is accepted (202) or refused with 503 and `Retry-After` within 30 s (before the S3
/// and PostgreSQL timeouts, a request on a pooled connection waited a minute, or as long as TCP
/// retransmits), and every accepted upload is processed once the stack is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_host_unreachable_for_30_s_loses_nothing_accepted() {
    let _one = HOSTS.lock().await;
    let cluster = Cluster::start().await;
    seed(&cluster, "steady", 20, 51).await;
    let images = distinct_images(400, 52);
    let url = cluster.url("a", "ingest", "/v1/media");
    let started = Instant::now();
    let (mut accepted, mut refused, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    let mut cut = None;
    let mut healed = false;
    for (png, label) in images {
        let elapsed = started.elapsed();
        if cut.is_none() && elapsed > Duration::from_secs(5) {
            hosts(&["cut", "stack"]).await;
            cut = Some(Instant::now());
        }
        if let Some(at) = cut
            && !healed
            && at.elapsed() > Duration::from_secs(30)
        {
            hosts(&["heal", "stack"]).await;
            healed = true;
        }
        if healed && cut.is_some_and(|at| at.elapsed() > Duration::from_secs(40)) {
            break;
        }
        let sent = Instant::now();
        let response = cluster
            .http
            .post(&url)
            .query(&[("dataset", "steady"), ("label", label.as_str())])
            .bearer_auth(&cluster.admin)
            .header("content-type", "image/png")
            .body(png)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("ingest answers even with the stack away");
        slowest = slowest.max(sent.elapsed());
        let status = response.status().as_u16();
        if cut.is_some() && !healed {
            eprintln!("during the cut: {status} after {:.1} s", sent.elapsed().as_secs_f64());
        }
        let retry_after = response.headers().get("retry-after").is_some();
        let (_, body) = json_of(response).await;
        match status {
            202 => accepted.push(body["items"][0]["id"].as_str().expect("id").to_owned()),
            503 => {
                assert!(retry_after, "503 without Retry-After: {body}");
                refused += 1;
            }
            other => panic!("upload answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{} accepted, {refused} refused with 503, slowest answer {slowest:?}", accepted.len());
    assert!(refused > 0, "uploads were refused while the stack host was away");
    // An S3 operation gives up after 2 × s3.attempt_timeout_secs + 5 s (25 s); PostgreSQL
    // connections fail within tcp_user_timeout (10 s).
    assert!(slowest < Duration::from_secs(30), "every answer within 30 s, the slowest took {slowest:?}");
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|id| uuid::Uuid::parse_str(id).expect("uuid")).collect();
    eventually(Duration::from_secs(180), "every accepted upload processed", || async {
        let done =
            cluster.count("SELECT count(*) FROM media WHERE id = ANY($1) AND status = 'processed'", &[&ids]).await;
        (done == ids.len() as i64).then_some(())
    })
    .await;
    let stored = cluster.count("SELECT count(*) FROM media WHERE dataset = 'steady'", &[]).await;
    assert_eq!(stored, 20 + ids.len() as i64, "nothing refused was kept");
}

/// Host c drops off the network while 1,000 uploads flow and a grid search runs: its preprocess
/// partitions and its trial move to host b within the session timeout, every accepted item has
/// one output row and one object, every trial ends once and the job registers one version; when
/// c's link returns it rejoins its groups and takes work again without redoing any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_mid_stream_loses_nothing_and_rejoins_without_duplicating_work() {
    let _one = HOSTS.lock().await;
    let cluster = Cluster::start().await;
    let started = Instant::now();

    // A small labelled dataset to search on, processed first.
    seed(&cluster, "seed", 150, 31).await;
    pipeline(&cluster, "flow").await;

    // A grid of eight trials over the two trainer hosts.
    let job = json!({"model": "spread", "dataset": "seed", "architecture": "cnn", "seed": 1, "promote": "always",
        "search": {"strategy": "grid", "space": {"epochs": 25, "patience": 0, "batch_size": 16,
            "learning_rate": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]}}});
    let job_id = start_job(&cluster, "b", &job).await;

    // 1,000 uploads flow through host a while c is cut off.
    let flow = distinct_images(1000, 32);
    let flowing = flow.len() as i64;
    let uploads = {
        let cluster = &cluster;
        async move { upload(cluster, "flow", flow, 8).await }
    };
    let cut = async {
        let c_worker = cluster.process("c", "trainer").worker_name();
        // Cut c once it holds a trial (or after 40 s: trials land on partitions by key) and
        // once some of the flow went through it.
        let holds_trial = || async {
            cluster
                .count(
                    "SELECT count(*) FROM training_trials WHERE job_id = $1 AND worker = $2 AND status = 'running'",
                    &[&job_id, &c_worker],
                )
                .await
                > 0
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline && !(holds_trial().await && processed(&cluster, "flow").await >= 100) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let c_processed = cluster.counter("c", "preprocess", "sluice_preprocess_processed_total").await;
        let held = holds_trial().await;
        hosts(&["cut", "c"]).await;
        eprintln!(
            "cut c after {:.1} s: it had processed {c_processed} items and held a trial: {held}",
            started.elapsed().as_secs_f64()
        );
        (c_processed, held, Instant::now())
    };
    let (accepted, (c_before, c_held_trial, cut_at)) = tokio::join!(uploads, cut);
    assert_eq!(accepted as i64, flowing);

    // Everything is processed while c is away: its partitions moved to b.
    eventually(Duration::from_secs(240), "the flow processed without host c", || async {
        (processed(&cluster, "flow").await == flowing).then_some(())
    })
    .await;
    eprintln!("all 1,000 processed {:.1} s after the cut", cut_at.elapsed().as_secs_f64());
    let view = job_ended(&cluster, "b", job_id, Duration::from_secs(300)).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    eprintln!("the search ended {:.1} s after the cut", cut_at.elapsed().as_secs_f64());

    // c comes back: it rejoins its group and takes new work, and nothing is done twice in effect.
    // Uploads keep trickling in (20 at a time) until c has processed some of them: its consumer
    // first sees its old session gone, is recreated and rejoins, and the group rebalances.
    hosts(&["heal", "c"]).await;
    let healed = Instant::now();
    let c_url = cluster.url("c", "preprocess", "/readyz");
    eventually(Duration::from_secs(60), "host c ready again", || async {
        cluster.http.get(&c_url).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let after_heal = cluster.counter("c", "preprocess", "sluice_preprocess_processed_total").await;
    let more = distinct_images(2400, 33);
    let mut more = more.chunks(20);
    let mut total = flowing;
    let mut c_after = after_heal;
    while c_after <= after_heal {
        assert!(
            healed.elapsed() < Duration::from_secs(180),
            "host c took no new work within 180 s of its link returning ({after_heal} items before and after)"
        );
        let batch = more.next().expect("enough images").to_vec();
        total += batch.len() as i64;
        assert_eq!(upload(&cluster, "flow", batch, 8).await as i64, 20);
        tokio::time::sleep(Duration::from_secs(1)).await;
        c_after = cluster.counter("c", "preprocess", "sluice_preprocess_processed_total").await;
    }
    let rejoined = healed.elapsed();
    eventually(Duration::from_secs(120), "the new uploads processed", || async {
        (processed(&cluster, "flow").await == total).then_some(())
    })
    .await;
    eprintln!("host c took new work again {:.1} s after its link returned", rejoined.as_secs_f64());
    eprintln!(
        "host c: {c_before} items before the cut, {after_heal} after healing, {c_after} once it took new work; {} uploads after healing",
        total - flowing
    );
    // Give a stale write from c (its in-flight item or trial) time to land, then count effects.
    tokio::time::sleep(Duration::from_secs(5)).await;
    each_once(&cluster, "flow", total).await;

    // Every trial ended once, succeeded; one version registered; c's late result changed nothing.
    let trials = search_ended_once(&cluster, &view, "spread", 8).await;
    let response = cluster
        .http
        .get(cluster.url("b", "trainer", &format!("/v1/training-jobs/{job_id}")))
        .bearer_auth(&cluster.admin);
    let (_, later) = json_of(response.send().await.expect("job")).await;
    let ended = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["trials"]
            .as_array()
            .expect("trials")
            .iter()
            .map(|t| (t["id"].clone(), t["worker"].clone(), t["metrics"].clone()))
            .collect()
    };
    assert_eq!(ended(&later), ended(&view), "a trial result arriving from c after healing changed nothing");
    let c_worker = cluster.process("c", "trainer").worker_name();
    let by_c = trials.iter().filter(|t| t["worker"] == c_worker.as_str()).count();
    eprintln!("c held a trial when cut: {c_held_trial}; trials finished by c: {by_c} of 8");
    eprintln!("scenario took {:.1} s", started.elapsed().as_secs_f64());
}

/// Host c's link made lossy and slow (5 % of packets dropped each way, 20 Mbit/s each way) while
/// 400 uploads flow and a search runs over b and c: c keeps working (slower), nothing is lost or
/// done twice in effect, and every trial ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_link_slows_a_host_but_loses_and_duplicates_nothing() {
    let _one = HOSTS.lock().await;
    let cluster = Cluster::start().await;
    seed(&cluster, "seed", 100, 41).await;
    pipeline(&cluster, "rough").await;
    hosts(&["degrade", "c", "5", "20mbit"]).await;
    let degraded = Instant::now();

    let job = json!({"model": "rough", "dataset": "seed", "architecture": "cnn", "seed": 2, "promote": "always",
        "search": {"strategy": "grid", "space": {"epochs": 10, "patience": 0, "batch_size": 16,
            "learning_rate": [0.001, 0.003, 0.005, 0.007]}}});
    let job_id = start_job(&cluster, "b", &job).await;
    let c_before = cluster.counter("c", "preprocess", "sluice_preprocess_processed_total").await;
    let flow = distinct_images(400, 42);
    let total = flow.len() as i64;
    assert_eq!(upload(&cluster, "rough", flow, 8).await as i64, total);
    eventually(Duration::from_secs(240), "the flow processed over a lossy link", || async {
        (processed(&cluster, "rough").await == total).then_some(())
    })
    .await;
    let all_processed = degraded.elapsed();
    let view = job_ended(&cluster, "b", job_id, Duration::from_secs(300)).await;
    let c_items = cluster.counter("c", "preprocess", "sluice_preprocess_processed_total").await - c_before;
    hosts(&["restore", "c"]).await;
    assert_eq!(view["status"], "succeeded", "{view:#}");
    eprintln!(
        "lossy c: {total} items processed in {:.1} s ({c_items} by c), the search ended after {:.1} s",
        all_processed.as_secs_f64(),
        degraded.elapsed().as_secs_f64()
    );
    assert!(c_items > 0.0, "host c kept taking part over its lossy link");

    each_once(&cluster, "rough", total).await;
    search_ended_once(&cluster, &view, "rough", 4).await;
}
