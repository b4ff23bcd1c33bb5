//! The migration runner on real PostgreSQL databases.

use sluice_core::migrate::{self, MigrateError};
use sluice_testkit::TestEnv;

fn set(files: &[(&str, &str)]) -> Vec<migrate::Migration> {
    migrate::parse(files.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))).expect("valid migrations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_migration_to_an_empty_database_and_a_rerun_is_a_no_op() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    let all: Vec<i64> = migrate::embedded().expect("embedded").iter().map(|m| m.version).collect();
    assert_eq!(migrate::pending(&pool).await.expect("pending"), all);

    let first = migrate::run(&pool).await.expect("first run");
    assert_eq!(first.applied, all);
    let client = pool.get().await.expect("connection");
    let tokens: i64 = client.query_one("SELECT count(*) FROM api_tokens", &[]).await.expect("table exists").get(0);
    assert_eq!(tokens, 0);

    let second = migrate::run(&pool).await.expect("second run");
    assert!(second.applied.is_empty(), "re-run applied {:?}", second.applied);
    assert_eq!(second.skipped, all);
    assert!(migrate::pending(&pool).await.expect("pending").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runners_apply_each_migration_exactly_once() {
    let env = TestEnv::new().await;
    // Each migration fails if applied twice (duplicate key, duplicate column), and the sleep
    // holds the lock long enough for the runners to collide.
    let migrations = set(&[
        ("0001_table.sql", "CREATE TABLE t (id INT PRIMARY KEY)"),
        ("0002_row.sql", "SELECT pg_sleep(0.3); INSERT INTO t VALUES (1)"),
        ("0003_column.sql", "ALTER TABLE t ADD COLUMN note TEXT"),
    ]);
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let pool = env.pool();
            let migrations = migrations.clone();
            tokio::spawn(async move { migrate::apply(&pool, &migrations).await })
        })
        .collect();
    let mut applied = Vec::new();
    for runner in runners {
        applied.extend(runner.await.expect("runner task").expect("runner succeeds").applied);
    }
    applied.sort_unstable();
    assert_eq!(applied, [1, 2, 3], "each version applied by exactly one runner");
    let client = env.pool().get().await.expect("connection");
    let rows: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0);
    assert_eq!(rows, 1);
    let recorded: i64 = client.query_one("SELECT count(*) FROM sluice_migrations", &[]).await.expect("count").get(0);
    assert_eq!(recorded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_leaves_nothing_half_applied() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    let migrations = set(&[
        ("0001_ok.sql", "CREATE TABLE a (id INT)"),
        ("0002_broken.sql", "CREATE TABLE b (id INT); SELECT * FROM no_such_table"),
    ]);
    let err = migrate::apply(&pool, &migrations).await.expect_err("second migration fails");
    assert!(matches!(err, MigrateError::Failed { version: 2, .. }), "{err}");
    let client = pool.get().await.expect("connection");
    let b_exists: bool = client.query_one("SELECT to_regclass('b') IS NOT NULL", &[]).await.expect("query").get(0);
    assert!(!b_exists, "the failed migration's first statement was rolled back");
    let versions: Vec<i64> = client
        .query("SELECT version FROM sluice_migrations", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_migration_that_changed_is_refused() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    migrate::apply(&pool, &set(&[("0001_a.sql", "CREATE TABLE a (id INT)")])).await.expect("apply");
    let err = migrate::apply(&pool, &set(&[("0001_a.sql", "CREATE TABLE a (id BIGINT)")]))
        .await
        .expect_err("edited history is refused");
    assert!(matches!(err, MigrateError::Changed { version: 1, .. }), "{err}");
}
