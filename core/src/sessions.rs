//! Console sessions: how a browser signs in without keeping an API token where scripts can read it.
//!
//! Signing in (`POST /console/session`, in `sluice-console`) checks an API token exactly as a
//! bearer token is checked, then stores a session: a random 256-bit secret that the browser keeps
//! in an `HttpOnly; SameSite=Strict` cookie ([`COOKIE`]) and of which PostgreSQL keeps only the
//! SHA-256, tied to the token's id. [`crate::http::Caller`] accepts the cookie on requests that send
//! no `Authorization` header (a bearer token always wins). A session grants exactly its token's
//! scopes and ends when it expires, when it signs out (its row is deleted, so the cookie stops
//! working in every process at once) or when its token is revoked. The token itself never leaves
//! the sign-in request.
//!
//! Cross-site request forgery: browsers attach cookies on their own, so a cookie-authenticated
//! request with a method other than GET or HEAD must also carry [`CSRF_HEADER`] holding
//! [`SessionSecret::csrf_token`], an HMAC-SHA256 of a fixed label keyed by the session secret. A
//! page learns it only from the sign-in answer or `GET /console/session`, which other origins
//! cannot read (no CORS); it needs no storage, any process can check it, and it reveals nothing
//! about the secret. `SameSite=Strict` and the custom header (which forces a CORS preflight that
//! Sluice never grants) are two more layers under it.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{auth::Principal, db::DbError};

/// The session cookie's name over plain HTTP.
pub const COOKIE: &str = "sluice_session";
/// Its name when it is `Secure`: browsers keep a `__Host-` cookie only when this host itself set
/// it, over HTTPS, for the whole site, so another host under the same domain cannot plant a
/// session of its own in front of the user's (a cookie set for the parent domain would be sent
/// first and win).
pub const SECURE_COOKIE: &str = "__Host-sluice_session";

/// The cookie's name, `Secure` or not ([`wants_secure`]).
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}
/// The header a cookie-authenticated request other than GET or HEAD must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// What the CSRF token's HMAC signs; changing it invalidates every CSRF token at once.
const CSRF_LABEL: &[u8] = b"sluice-console-csrf-v1";
const SECRET_BYTES: usize = 32;
/// A [`SECRET_BYTES`] secret in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// A session's secret, as the cookie carries it. Never printed.
#[derive(Clone)]
pub struct SessionSecret(String);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(***)")
    }
}

impl SessionSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A cookie value shaped like a secret (nothing is looked up); `None` otherwise.
    pub fn parse(value: &str) -> Option<Self> {
        (value.len() == SECRET_CHARS && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .then(|| Self(value.to_owned()))
    }

    /// The value that [`CSRF_HEADER`] must hold for this session.
    pub fn csrf_token(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.csrf_mac().finalize().into_bytes())
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(presented.trim())
            .is_ok_and(|bytes| self.csrf_mac().verify_slice(&bytes).is_ok())
    }

    fn csrf_mac(&self) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(CSRF_LABEL);
        mac
    }

    fn sha256(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

/// The session cookie's value among the request's `Cookie` headers: the `__Host-` one when
/// `secure`, so a plain one (which any host of the domain could have set) is never read then.
pub fn cookie(headers: &HeaderMap, secure: bool) -> Option<&str> {
    let wanted = cookie_name(secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The session cookie a request authenticates with: only when it sends no `Authorization`
/// header, so bearer-token clients are never judged by a cookie they happen to carry.
pub fn credential(headers: &HeaderMap, secure: bool) -> Option<&str> {
    if headers.contains_key(header::AUTHORIZATION) { None } else { cookie(headers, secure) }
}

/// Whether `headers` carry the CSRF token of the session of `secret`.
pub fn csrf_presented(secret: &SessionSecret, headers: &HeaderMap) -> bool {
    headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).is_some_and(|token| secret.csrf_matches(token))
}

/// Whether the cookie must be `Secure`: always when `http.secure_cookies` is set, and when a
/// TLS-terminating proxy says the request came over HTTPS (`X-Forwarded-Proto: https`). Sluice
/// itself listens in plain HTTP.
pub fn wants_secure(config: &crate::config::HttpConfig, headers: &HeaderMap) -> bool {
    config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that stores `secret` for `max_age`.
pub fn set_cookie(secret: &SessionSecret, max_age: Duration, secure: bool) -> String {
    let (name, secure) = (cookie_name(secure), if secure { "; Secure" } else { "" });
    format!("{name}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", secret.0, max_age.as_secs())
}

/// The `Set-Cookie` value that makes the browser forget the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let (name, secure) = (cookie_name(secure), if secure { "; Secure" } else { "" });
    format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The `Set-Cookie` value that clears a plain [`COOKIE`] over TLS, where only the `__Host-` one
/// is read.
pub fn clear_plain_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure")
}

/// A live session: who it speaks for and until when.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub expires_at: DateTime<Utc>,
}

/// Stores a session for the token `token_id`, valid for `ttl`, and drops expired ones. `None`
/// when the token was revoked meanwhile (the token cache may be up to 3 s behind).
#[tracing::instrument(level = "debug", skip(pool, secret))]
pub async fn create(
    pool: &deadpool_postgres::Pool,
    secret: &SessionSecret,
    token_id: Uuid,
    ttl: Duration,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let client = pool.get().await?;
    client.execute("DELETE FROM console_sessions WHERE expires_at < now()", &[]).await?;
    let row = client
        .query_opt(
            "INSERT INTO console_sessions (secret_sha256, token_id, expires_at)
             SELECT $1, id, now() + make_interval(secs => $3) FROM api_tokens WHERE id = $2 AND revoked_at IS NULL
             RETURNING expires_at",
            &[&secret.sha256(), &token_id, &ttl.as_secs_f64()],
        )
        .await?;
    // Sign-ins that succeed are not rate limited: keep one token's newest sessions only, so a
    // script signing in over and over cannot grow the table.
    client
        .execute(
            "DELETE FROM console_sessions WHERE token_id = $1 AND secret_sha256 NOT IN
               (SELECT secret_sha256 FROM console_sessions WHERE token_id = $1 ORDER BY expires_at DESC LIMIT $2)",
            &[&token_id, &MAX_SESSIONS_PER_TOKEN],
        )
        .await?;
    Ok(row.map(|row| row.get("expires_at")))
}

/// Console sessions one token keeps at once (one per browser it signed in from); a sign-in past
/// it ends the oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 32;

/// The unexpired session of `secret` whose token is not revoked; `None` otherwise.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find(pool: &deadpool_postgres::Pool, secret: &SessionSecret) -> Result<Option<Session>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT t.id, t.name, t.scopes, s.expires_at
             FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id
             WHERE s.secret_sha256 = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&statement, &[&secret.sha256()]).await?;
    Ok(row.map(|row| Session {
        principal: Principal {
            token_id: row.get("id"),
            name: row.get("name"),
            scopes: row.get::<_, Vec<String>>("scopes").iter().filter_map(|s| s.parse().ok()).collect(),
        },
        expires_at: row.get("expires_at"),
    }))
}

/// Ends the session of `secret` everywhere; `false` when there was none.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn end(pool: &deadpool_postgres::Pool, secret: &SessionSecret) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client.execute("DELETE FROM console_sessions WHERE secret_sha256 = $1", &[&secret.sha256()]).await? > 0)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_csrf_token_belongs_to_one_session_and_only_matches_it() {
        let (one, other) = (SessionSecret::generate(), SessionSecret::generate());
        let token = one.csrf_token();
        assert!(one.csrf_matches(&token));
        assert!(!other.csrf_matches(&token), "another session's token is refused");
        assert!(!one.csrf_matches(""));
        assert!(!one.csrf_matches("not base64 !"));
        assert!(!one.csrf_matches(&token[..token.len() - 2]), "a truncated token is refused");
        assert_ne!(token, one.0, "the CSRF token is not the secret");
        assert!(!token.contains(&one.0[..8]));
    }

    #[test]
    fn secrets_are_random_and_only_well_formed_cookies_parse() {
        let secret = SessionSecret::generate();
        assert_eq!(secret.0.len(), SECRET_CHARS);
        assert_ne!(secret.0, SessionSecret::generate().0);
        assert!(SessionSecret::parse(&secret.0).is_some());
        assert!(SessionSecret::parse("").is_none());
        assert!(SessionSecret::parse(&format!("{}=", &secret.0[1..])).is_none());
        assert!(SessionSecret::parse(&"a".repeat(44)).is_none());
        assert_eq!(format!("{secret:?}"), "SessionSecret(***)", "never printed");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_a_bearer_header_wins() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; sluice_session=abc ; other=1"));
        assert_eq!(cookie(&headers, false), Some("abc"));
        assert_eq!(credential(&headers, false), Some("abc"));
        assert_eq!(cookie(&headers, true), None, "over TLS only the __Host- cookie is read");
        headers.insert(header::COOKIE, HeaderValue::from_static("sluice_session=planted; __Host-sluice_session=mine"));
        assert_eq!(cookie(&headers, true), Some("mine"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer slc_x"));
        assert_eq!(credential(&headers, false), None, "a bearer token is the credential");
        let mut unrelated = HeaderMap::new();
        unrelated.insert(header::COOKIE, HeaderValue::from_static("not_sluice_session=abc"));
        assert_eq!(cookie(&unrelated, false), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_when_asked() {
        let secret = SessionSecret::generate();
        let plain = set_cookie(&secret, Duration::from_secs(60), false);
        assert!(plain.starts_with(&format!("sluice_session={}; ", secret.0)), "{plain}");
        for part in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=60"] {
            assert!(plain.split("; ").any(|p| p == part), "{part} in {plain}");
        }
        assert!(!plain.contains("Secure"), "{plain}");
        let secure = set_cookie(&secret, Duration::from_secs(60), true);
        assert!(secure.starts_with("__Host-sluice_session=") && secure.ends_with("; Secure"), "{secure}");
        assert!(clear_cookie(false).starts_with("sluice_session=;") && clear_cookie(false).contains("Max-Age=0"));
        assert!(clear_cookie(true).starts_with("__Host-sluice_session=;"));

        let mut config = crate::config::Config::default().http;
        let mut headers = HeaderMap::new();
        assert!(!wants_secure(&config, &headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(wants_secure(&config, &headers), "behind a TLS proxy");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!wants_secure(&config, &headers));
        config.secure_cookies = true;
        assert!(wants_secure(&config, &headers), "forced by configuration");
    }
}
