//! API tokens: random bearer tokens stored as SHA-256 hashes, each with a set of scopes.

use std::{fmt, str::FromStr};

use deadpool_postgres::Pool;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::DbError;

/// What a token may do. `Admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Ingest,
    Predict,
    Train,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Predict => "predict",
            Scope::Train => "train",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "predict" => Ok(Scope::Predict),
            "train" => Ok(Scope::Train),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {:?}; expected ingest, predict, train or admin",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// Who made a request, after their token was verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the token holds `scope` (directly or through `admin`).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a token and returns it; only its hash is stored, so this is the one time it is seen.
pub async fn create_token(pool: &Pool, name: &str, scopes: &[Scope]) -> Result<String, DbError> {
    Ok(issue_token(pool, name, scopes).await?.1)
}

/// Creates a token as [`create_token`] does, returning its id (what revoking it names) too.
pub async fn issue_token(pool: &Pool, name: &str, scopes: &[Scope]) -> Result<(Uuid, String), DbError> {
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("slc_{}", hex::encode(secret));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    pool.get()
        .await?
        .execute(
            "INSERT INTO api_tokens (id, name, token_sha256, scopes) VALUES ($1, $2, $3, $4)",
            &[&id, &name, &hash(&token), &scopes],
        )
        .await?;
    Ok((id, token))
}

/// Looks up an unrevoked token; `None` when it is unknown or revoked.
pub async fn verify(pool: &Pool, token: &str) -> Result<Option<Principal>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT id, name, scopes FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL")
        .await?;
    let row = client.query_opt(&statement, &[&hash(token)]).await?;
    Ok(row.map(|row| Principal {
        token_id: row.get("id"),
        name: row.get("name"),
        scopes: row.get::<_, Vec<String>>("scopes").iter().filter_map(|s| s.parse().ok()).collect(),
    }))
}

/// A token as `sluice token list` and `GET /v1/tokens` show it: never the token itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every token, newest first (revoked ones too, with their revocation time).
pub async fn list_tokens(pool: &Pool) -> Result<Vec<TokenInfo>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query("SELECT id, name, scopes, created_at, revoked_at FROM api_tokens ORDER BY created_at DESC, id", &[])
        .await?;
    Ok(rows.iter().map(token_info).collect())
}

/// Revokes a token by id; `None` when no token has this id. Revoking twice keeps the first time.
/// Every process stops accepting it within [`TokenCache::TTL`].
pub async fn revoke_token(pool: &Pool, id: Uuid) -> Result<Option<TokenInfo>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
             RETURNING id, name, scopes, created_at, revoked_at",
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(token_info))
}

fn token_info(row: &tokio_postgres::Row) -> TokenInfo {
    TokenInfo {
        id: row.get("id"),
        name: row.get("name"),
        scopes: row.get("scopes"),
        created_at: row.get("created_at"),
        revoked_at: row.get("revoked_at"),
    }
}

/// Remembers verified tokens, and tokens found unknown, for [`TokenCache::TTL`], so the hot path
/// (uploads, predictions) does not query PostgreSQL on every request and a flood of random
/// tokens costs one query per distinct token per TTL at most. A revoked token stops working in
/// every process within the TTL.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, CachedAnswer>>,
}

/// What a token's hash was found to be (`None`: unknown or revoked), and when.
type CachedAnswer = (Option<Principal>, std::time::Instant);

impl TokenCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(3);
    /// Entries kept at most; expired entries are dropped when full, then everything if needed.
    const MAX_ENTRIES: usize = 10_000;

    /// Forgets every cached answer (after a revocation in this process, so it takes effect here
    /// at once; other processes follow within the TTL).
    pub fn forget_all(&self) {
        self.entries.lock().expect("token cache lock").clear();
    }

    /// [`verify`] through the cache.
    pub async fn verify(&self, pool: &Pool, token: &str) -> Result<Option<Principal>, DbError> {
        let key = hash(token);
        if let Some((principal, at)) = self.entries.lock().expect("token cache lock").get(&key)
            && at.elapsed() < Self::TTL
        {
            return Ok(principal.clone());
        }
        let found = verify(pool, token).await?;
        let mut entries = self.entries.lock().expect("token cache lock");
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (found.clone(), std::time::Instant::now()));
        Ok(found)
    }
}

/// Failed authentications per client address: each address may fail `burst` times, refilled at
/// [`FailureLimiter::PER_SECOND`]; beyond that its requests get 429 before any token is looked
/// at. Successful requests are never limited. A burst of 0 turns the limiter off.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl FailureLimiter {
    pub const PER_SECOND: f64 = 1.0;
    /// Addresses tracked at most; full buckets are forgotten first.
    const MAX_CLIENTS: usize = 100_000;

    pub fn new(burst: u32) -> Self {
        Self { burst: f64::from(burst), buckets: std::sync::Mutex::default() }
    }

    fn tokens_now(&self, tokens: f64, at: std::time::Instant) -> f64 {
        (tokens + at.elapsed().as_secs_f64() * Self::PER_SECOND).min(self.burst)
    }

    /// Seconds until `client` may try again; `None` when it may try now.
    pub fn blocked_for(&self, client: std::net::IpAddr) -> Option<u64> {
        if self.burst == 0.0 {
            return None;
        }
        let buckets = self.buckets.lock().expect("limiter lock");
        let (tokens, at) = buckets.get(&client)?;
        let now = self.tokens_now(*tokens, *at);
        (now < 1.0).then(|| ((1.0 - now) / Self::PER_SECOND).ceil().max(1.0) as u64)
    }

    /// Records one failed authentication from `client`.
    pub fn failed(&self, client: std::net::IpAddr) {
        if self.burst == 0.0 {
            return;
        }
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() >= Self::MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, (tokens, at)| self.tokens_now(*tokens, *at) < self.burst);
            if buckets.len() >= Self::MAX_CLIENTS {
                buckets.clear();
            }
        }
        let entry = buckets.entry(client).or_insert((self.burst, std::time::Instant::now()));
        *entry = (self.tokens_now(entry.0, entry.1) - 1.0, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        let admin = Principal { token_id: Uuid::nil(), name: "a".into(), scopes: vec![Scope::Admin] };
        let ingest = Principal { token_id: Uuid::nil(), name: "i".into(), scopes: vec![Scope::Ingest] };
        assert!(admin.allows(Scope::Train));
        assert!(ingest.allows(Scope::Ingest));
        assert!(!ingest.allows(Scope::Predict));
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn a_client_that_keeps_failing_is_blocked_and_others_are_not() {
        let limiter = FailureLimiter::new(20);
        let (bad, good): (std::net::IpAddr, std::net::IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for _ in 0..20 {
            assert_eq!(limiter.blocked_for(bad), None);
            limiter.failed(bad);
        }
        assert!(limiter.blocked_for(bad).is_some_and(|secs| secs >= 1));
        assert_eq!(limiter.blocked_for(good), None);
        let off = FailureLimiter::new(0);
        (0..100).for_each(|_| off.failed(bad));
        assert_eq!(off.blocked_for(bad), None);
    }
}
