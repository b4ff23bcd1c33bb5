//! The `sluice` binary as a user runs it.

use std::{net::TcpListener, process::Command};

use secrecy::ExposeSecret;
use sluice_core::Context;
use sluice_testkit::TestEnv;

use crate::support::sluice_command;

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn sluice() -> Command {
    let mut command = sluice_command();
    command.env("SLUICE_TELEMETRY_LOG_FORMAT", "text");
    command
}

#[test]
fn doctor_on_a_stopped_stack_says_exactly_what_is_missing() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = sluice()
        .arg("doctor")
        .env("SLUICE_KAFKA_BROKERS", format!("127.0.0.1:{}", closed_port()))
        .env("SLUICE_S3_ENDPOINT", format!("http://127.0.0.1:{}", closed_port()))
        .env("SLUICE_DATABASE_URL", format!("postgres://postgres:secret-pw@127.0.0.1:{}/sluice", closed_port()))
        .env("SLUICE_STATE_DIR", state.path())
        .output()
        .expect("run sluice doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "doctor fails when dependencies are down:\n{stdout}");
    for needle in ["FAIL  kafka", "FAIL  s3", "FAIL  postgres", "fix: ", "SLUICE_DATABASE_URL", "token:"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("secret-pw"), "doctor printed a password:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_once_migrate_has_prepared_the_stack() {
    let env = TestEnv::new().await;
    let vars = [
        ("SLUICE_KAFKA_BROKERS", env.config.kafka.brokers.clone()),
        ("SLUICE_KAFKA_TOPIC_PREFIX", env.config.kafka.topic_prefix.clone()),
        ("SLUICE_S3_ENDPOINT", env.config.s3.endpoint.clone()),
        ("SLUICE_S3_BUCKET", env.config.s3.bucket.clone()),
        ("SLUICE_DATABASE_URL", env.config.database.url.expose_secret().to_owned()),
        ("SLUICE_STATE_DIR", env.config.state_dir.display().to_string()),
    ];
    let migrate = sluice().arg("migrate").envs(vars.clone()).output().expect("run sluice migrate");
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    let ctx = Context::new(env.config.clone()).await.expect("context");
    sluice::ensure_admin_token(&ctx).await.expect("admin token");
    let output = sluice().arg("doctor").envs(vars).output().expect("run sluice doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "doctor should pass:\n{stdout}");
    for needle in ["ok    kafka", "ok    s3", "ok    postgres", "ok    schema", "ok    topics", "ok    token"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn config_show_never_prints_secrets() {
    let output = sluice()
        .args(["config", "show"])
        .env("SLUICE_DATABASE_URL", "postgres://u:hunter2@db:5432/x")
        .env("SLUICE_S3_SECRET_ACCESS_KEY", "topsecretvalue")
        .env("SLUICE_S3_ACCESS_KEY_ID", "GKabc")
        .output()
        .expect("run sluice config show");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("access_key_id = \"GKabc\""), "TOML: {stdout}");
    assert!(stdout.contains("[s3]") && stdout.contains("[inference]"), "TOML sections: {stdout}");
    assert!(!stdout.contains("hunter2") && !stdout.contains("topsecretvalue"), "{stdout}");
}

#[test]
fn an_unknown_sluice_variable_is_a_clear_error() {
    let output = sluice().args(["config", "show"]).env("SLUICE_KAFKA_BROKER", "x:1").output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("SLUICE_KAFKA_BROKER"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let env = TestEnv::new().await;
    let mut child = sluice()
        .args(["serve", "ingest"])
        .env("SLUICE_KAFKA_BROKERS", &env.config.kafka.brokers)
        .env("SLUICE_KAFKA_TOPIC_PREFIX", &env.config.kafka.topic_prefix)
        .env("SLUICE_S3_ENDPOINT", &env.config.s3.endpoint)
        .env("SLUICE_S3_BUCKET", &env.config.s3.bucket)
        .env("SLUICE_DATABASE_URL", env.config.database.url.expose_secret())
        .env("SLUICE_STATE_DIR", &env.config.state_dir)
        .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
        .env("SLUICE_TELEMETRY_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a log line within 60 s");
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON logs when stdout is not a terminal");
        if log["message"] == "listening" {
            break log["addr"].as_str().expect("addr").to_owned();
        }
    };
    let health = reqwest::get(format!("http://{addr}/healthz")).await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed().as_secs() < 20, "sluice did not stop within 20 s of SIGTERM");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(status.success(), "a graceful stop exits 0, got {status}");
    let logged: Vec<String> = rx.try_iter().collect();
    assert!(logged.iter().any(|l| l.contains("\"stopped\"")), "{logged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_prints_a_token_with_exactly_the_scopes_asked_for() {
    use sluice_core::auth::{self, Scope};
    let env = TestEnv::new().await;
    let output = sluice_command()
        .args(["token", "create", "--name", "grafana", "--scope", "predict,train"])
        .envs(crate::support::sluice_env(&env))
        .output()
        .expect("run sluice token create");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
    let principal = auth::verify(&env.pool(), &token).await.expect("verify").expect("a valid token");
    assert_eq!(principal.name, "grafana");
    assert!(principal.allows(Scope::Predict) && principal.allows(Scope::Train));
    assert!(!principal.allows(Scope::Admin) && !principal.allows(Scope::Ingest));
    let refused = sluice_command()
        .args(["token", "create", "--name", "x", "--scope", "superuser"])
        .envs(crate::support::sluice_env(&env))
        .output()
        .expect("run sluice token create");
    assert!(!refused.status.success());
}
