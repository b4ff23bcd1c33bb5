//! The PostgreSQL pool (deadpool) and helpers shared by every service.

use std::time::Duration;

pub use deadpool_postgres::Pool;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url is not a PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("could not build the PostgreSQL pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// A pool for `config`. Connections open lazily; the first query reports an unreachable server.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    pool_for_url(config.url.expose_secret(), config.max_connections)
}

/// A pool for an explicit URL (tests and tools that create databases).
pub fn pool_for_url(url: &str, max_connections: usize) -> Result<Pool, DbError> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
    pg.connect_timeout(Duration::from_secs(5));
    if pg.get_application_name().is_none() {
        pg.application_name("sluice");
    }
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// `SELECT 1` through the pool (readiness, `sluice doctor`).
pub async fn check(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
