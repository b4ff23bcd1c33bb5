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
            other => Err(format!("unknown scope {other:?}; expected ingest, predict, train or admin")),
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
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("slc_{}", hex::encode(secret));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    pool.get()
        .await?
        .execute(
            "INSERT INTO api_tokens (id, name, token_sha256, scopes) VALUES ($1, $2, $3, $4)",
            &[&Uuid::now_v7(), &name, &hash(&token), &scopes],
        )
        .await?;
    Ok(token)
}

/// Looks up an unrevoked token; `None` when it is unknown or revoked.
pub async fn verify(pool: &Pool, token: &str) -> Result<Option<Principal>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT id, name, scopes FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL")
        .await?;
    let row = client.query_opt(&statement, &[&hash(token)]).await?;
    Ok(row.map(|row| Principal {
        token_id: row.get(0),
        name: row.get(1),
        scopes: row.get::<_, Vec<String>>(2).iter().filter_map(|s| s.parse().ok()).collect(),
    }))
}

/// Remembers verified tokens for [`TokenCache::TTL`], so the hot path (uploads, predictions)
/// does not query PostgreSQL on every request. A revoked token stops working within the TTL.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (Principal, std::time::Instant)>>,
}

impl TokenCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    /// Entries kept at most; the cache is cleared when full (tokens are few in practice).
    const MAX_ENTRIES: usize = 10_000;

    /// [`verify`] through the cache. Unknown tokens are not cached.
    pub async fn verify(&self, pool: &Pool, token: &str) -> Result<Option<Principal>, DbError> {
        let key = hash(token);
        if let Some((principal, at)) = self.entries.lock().expect("token cache lock").get(&key)
            && at.elapsed() < Self::TTL
        {
            return Ok(Some(principal.clone()));
        }
        let found = verify(pool, token).await?;
        if let Some(principal) = &found {
            let mut entries = self.entries.lock().expect("token cache lock");
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (principal.clone(), std::time::Instant::now()));
        }
        Ok(found)
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
}
