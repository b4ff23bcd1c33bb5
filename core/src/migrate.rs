//! Versioned, transactional schema migrations over `migrations/NNNN_name.sql`.
//!
//! Each migration runs in its own transaction together with its row in `sluice_migrations`, under
//! a transaction-scoped advisory lock, so several processes starting at once apply each migration
//! exactly once and a failed migration leaves nothing half-applied. A migration whose file changed
//! after it was applied is an error: history is never rewritten silently.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

use crate::db::DbError;

/// Advisory lock key shared by every migration runner ("sluice" in ASCII).
const LOCK_KEY: i64 = 0x736c_7569_6365;

/// The migrations compiled into this binary, sorted by file name.
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// One schema migration.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("migration file {0} must be named NNNN_description.sql")]
    BadName(String),
    #[error("two migrations share version {0}")]
    DuplicateVersion(i64),
    #[error("migration {version} ({name}) changed after it was applied; add a new migration instead")]
    Changed { version: i64, name: String },
    #[error("migration {version} ({name}) failed: {source}")]
    Failed { version: i64, name: String, source: tokio_postgres::Error },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for MigrateError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Db(DbError::Pool(err))
    }
}

/// The migrations embedded in this build.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    parse(EMBEDDED.iter().map(|(name, sql)| (name.to_string(), sql.to_string())))
}

/// Parses `(file name, sql)` pairs into sorted migrations, rejecting bad names and duplicates.
pub fn parse(files: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = Vec::new();
    for (file, sql) in files {
        let stem = file.strip_suffix(".sql").ok_or_else(|| MigrateError::BadName(file.clone()))?;
        let (version, name) = stem.split_once('_').ok_or_else(|| MigrateError::BadName(file.clone()))?;
        let version: i64 = version.parse().map_err(|_| MigrateError::BadName(file.clone()))?;
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        migrations.push(Migration { version, name: name.to_owned(), sql, checksum });
    }
    migrations.sort_by_key(|m| m.version);
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(MigrateError::DuplicateVersion(pair[0].version));
    }
    Ok(migrations)
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Versions this run applied (empty when the schema was current).
    pub applied: Vec<i64>,
    /// Versions found already applied.
    pub skipped: Vec<i64>,
}

/// Applies the embedded migrations.
pub async fn run(pool: &Pool) -> Result<Report, MigrateError> {
    apply(pool, &embedded()?).await
}

/// Versions of the embedded migrations not yet applied (for `sluice doctor`).
pub async fn pending(pool: &Pool) -> Result<Vec<i64>, MigrateError> {
    let client = pool.get().await?;
    let exists: bool =
        client.query_one("SELECT to_regclass('sluice_migrations') IS NOT NULL AS present", &[]).await?.get("present");
    let applied: Vec<i64> = if exists {
        client.query("SELECT version FROM sluice_migrations", &[]).await?.iter().map(|r| r.get("version")).collect()
    } else {
        Vec::new()
    };
    Ok(embedded()?.into_iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect())
}

/// Applies `migrations` in order; each in its own transaction under the advisory lock.
pub async fn apply(pool: &Pool, migrations: &[Migration]) -> Result<Report, MigrateError> {
    let mut client = pool.get().await?;
    let mut report = Report::default();
    for migration in migrations {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS sluice_migrations (
                version     BIGINT PRIMARY KEY,
                name        TEXT NOT NULL,
                checksum    TEXT NOT NULL,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let existing =
            tx.query_opt("SELECT checksum FROM sluice_migrations WHERE version = $1", &[&migration.version]).await?;
        match existing {
            Some(row) => {
                let checksum: String = row.get("checksum");
                if checksum != migration.checksum {
                    return Err(MigrateError::Changed { version: migration.version, name: migration.name.clone() });
                }
                tx.commit().await?;
                report.skipped.push(migration.version);
            }
            None => {
                tx.batch_execute(&migration.sql).await.map_err(|source| MigrateError::Failed {
                    version: migration.version,
                    name: migration.name.clone(),
                    source,
                })?;
                tx.execute(
                    "INSERT INTO sluice_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&migration.version, &migration.name, &migration.checksum],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version = migration.version, name = %migration.name, "applied migration");
                report.applied.push(migration.version);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_rejects_bad_files() {
        let parsed =
            parse([("0002_b.sql".to_owned(), "SELECT 2".to_owned()), ("0001_a.sql".to_owned(), "SELECT 1".to_owned())])
                .expect("valid");
        assert_eq!(parsed.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(parsed[0].name, "a");
        assert!(matches!(parse([("x.sql".into(), String::new())]), Err(MigrateError::BadName(_))));
        assert!(matches!(
            parse([("0001_a.sql".into(), String::new()), ("0001_b.sql".into(), String::new())]),
            Err(MigrateError::DuplicateVersion(1))
        ));
    }

    #[test]
    fn embedded_migrations_are_well_formed() {
        assert!(!embedded().expect("embedded migrations parse").is_empty());
    }
}
