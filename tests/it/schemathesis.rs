//! schemathesis (installed by `tests/clients/api-tools-env.sh` into a project-local virtual
//! environment) against a running Sluice with an admin token: every operation of `/openapi.json`
//! with generated valid and invalid inputs, and the stateful links (upload → get → relabel, job
//! → show → cancel, …). A server error, an undocumented status, a wrong content type or a body
//! that contradicts its schema fails the test with schemathesis's report.

use sluice_testkit::TestEnv;

use crate::support::RunningApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_undocumented_answer() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // (One worker: CPython 3.11's ast module, which hypothesis uses to describe filters, is not
    // safe across threads and fails with "AST constructor recursion depth mismatch".)
    // Generated requests come fast from one address: the test is about answers, not limits.
    config.http.auth_failure_burst = 100_000;
    let app = RunningApp::spawn(config).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let schemathesis = format!("{}/schemathesis", crate::support::api_tools(root));
    let report = std::env::temp_dir().join(format!("sluice-schemathesis-{}", std::process::id()));
    let app_url = app.base_url.clone();
    let token = app.admin_token.clone();
    let admin = token.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis)
            .arg("run")
            .arg(format!("{app_url}/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            // Stateful links lead from GET /v1/tokens to revoking the run's own token, after which
            // every answer is 401 and nothing is tested. Revocation has its own tests (security.rs).
            .args(["--exclude-operation-id", "tokens_revoke"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            ])
            .args(["--max-examples", "25", "--seed", "7", "--workers", "1", "--max-time", "150"])
            .args(["--request-timeout", "30", "--no-color", "--suppress-health-check", "all"])
            // No example database in the checkout: every run starts from the seed.
            .args(["--generation-database", "none"])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("schemathesis task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "schemathesis found defects:\n{stdout}\n{stderr}");
    // The admin token outlived the run (a generated DELETE /v1/tokens/{id} must not have revoked
    // it), so every operation was judged with a valid token.
    let check = app.http.get(app.url("/v1/tokens")).bearer_auth(&admin).send().await.expect("tokens");
    assert_eq!(check.status(), 200, "the admin token still works after the run");
    // It really ran the operations (a spec it could not read would also end quickly).
    assert!(stdout.contains("passed") || stdout.contains("Passed"), "{stdout}");
}
