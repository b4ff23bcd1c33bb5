//! The PostgreSQL pool (deadpool) and helpers shared by every service.

use std::time::Duration;

pub use deadpool_postgres::Pool;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

/// Why the database could not be used: the one error type every store function returns.
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
    /// An event refused by the outbox before anything was written (over the Kafka message
    /// limit): a defect of the writer, never worth retrying.
    #[error("outbox: {0}")]
    Outbox(String),
}

impl From<crate::outbox::RelayError> for DbError {
    fn from(err: crate::outbox::RelayError) -> Self {
        match err {
            crate::outbox::RelayError::Db(err) => err,
            other => Self::Outbox(other.to_string()),
        }
    }
}

/// A pool for `config`. Connections open lazily; the first query reports an unreachable server.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    build(config.url.expose_secret(), config.max_connections, config.server_keepalives)
}

/// A pool for an explicit URL (tests and tools that create databases).
pub fn pool_for_url(url: &str, max_connections: usize) -> Result<Pool, DbError> {
    build(url, max_connections, true)
}

/// The session settings that make the server notice a client that vanished (its host dropped off
/// the network mid-transaction): without them its backend sits `idle in transaction` for hours,
/// holding row locks every other worker's update of the same rows waits on. The server probes a
/// silent client after 5 s (three probes 2 s apart) and drops it when 10 s of what it sent go
/// unacknowledged; the transaction rolls back and its locks are released.
const SERVER_KEEPALIVES: &str =
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";

/// One connection of its own, set up like the pool's (for `LISTEN`, which a pooled connection
/// handed back and forth cannot hold): the client and the connection, which the caller drives.
pub async fn connect(
    config: &DatabaseConfig,
) -> Result<
    (tokio_postgres::Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
    DbError,
> {
    let pg = pg_config(config.url.expose_secret(), config.server_keepalives)?;
    Ok(pg.connect(NoTls).await?)
}

fn build(url: &str, max_connections: usize, server_keepalives: bool) -> Result<Pool, DbError> {
    let pg = pg_config(url, server_keepalives)?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

fn pg_config(url: &str, server_keepalives: bool) -> Result<tokio_postgres::Config, DbError> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
    if server_keepalives {
        let options = match pg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {SERVER_KEEPALIVES}"),
            _ => SERVER_KEEPALIVES.to_owned(),
        };
        pg.options(&options);
    }
    pg.connect_timeout(Duration::from_secs(5));
    // A server that drops off the network (no FIN, no RST) fails a pooled connection in seconds,
    // not when TCP gives up: an unacknowledged write after 10 s, a silent peer after 5 s idle and
    // three 2-s probes.
    pg.tcp_user_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    if pg.get_application_name().is_none() {
        pg.application_name("sluice");
    }
    Ok(pg)
}

/// `SELECT 1` through the pool (readiness, `sluice doctor`).
pub async fn check(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

impl DbError {
    /// The server refused the statement (a constraint, a type, a bug of ours), as opposed to being
    /// unreachable: retrying the same statement will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Query(e) if e.code().is_some()) || matches!(self, Self::Outbox(_))
    }

    /// The server refused the statement's data (SQLSTATE class 22: a NUL in a text, a number out
    /// of range, an invalid value): the same input is refused every time, so the work that
    /// carries it can never succeed. Other refusals (serialisation failures, deadlocks, too many
    /// connections, a server shutting down) pass with time.
    pub fn is_data_refusal(&self) -> bool {
        matches!(self, Self::Query(e) if e.code().is_some_and(|code| code.code().starts_with("22")))
    }

    /// The HTTP answer: 500 when the server refused the statement, 503 (retry) when it could not
    /// be reached. Both are logged with the whole cause chain.
    pub fn to_api(&self) -> crate::http::ApiError {
        if self.is_refusal() {
            crate::http::ApiError::internal(self)
        } else {
            crate::http::ApiError::unavailable_because(
                self,
                "The database is unreachable; nothing was changed. Retry shortly.",
            )
        }
    }
}

/// A stored text that is not one of a status enum's values (a row written by a newer release).
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

#[doc(hidden)]
pub mod __private {
    pub use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, private::BytesMut};
}

/// A closed set of values stored as `TEXT` (statuses, kinds): the enum, `as_str`, `FromStr`,
/// `Display`, serde as its text, and `ToSql`/`FromSql` so rows and parameters use the enum, never
/// a bare string.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::db::UnknownValue;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::db::UnknownValue { kind: stringify!($name), value: other.to_owned() }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }

        impl<'a> $crate::db::__private::FromSql<'a> for $name {
            fn from_sql(
                ty: &$crate::db::__private::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn ::std::error::Error + Sync + Send>> {
                let text = <&str as $crate::db::__private::FromSql>::from_sql(ty, raw)?;
                Ok(text.parse()?)
            }
            fn accepts(ty: &$crate::db::__private::Type) -> bool {
                <&str as $crate::db::__private::FromSql>::accepts(ty)
            }
        }

        impl $crate::db::__private::ToSql for $name {
            fn to_sql(
                &self,
                ty: &$crate::db::__private::Type,
                out: &mut $crate::db::__private::BytesMut,
            ) -> Result<$crate::db::__private::IsNull, Box<dyn ::std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }
            fn accepts(ty: &$crate::db::__private::Type) -> bool {
                <&str as $crate::db::__private::ToSql>::accepts(ty)
            }
            fn to_sql_checked(
                &self,
                ty: &$crate::db::__private::Type,
                out: &mut $crate::db::__private::BytesMut,
            ) -> Result<$crate::db::__private::IsNull, Box<dyn ::std::error::Error + Sync + Send>> {
                self.as_str().to_sql_checked(ty, out)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::{FromSql, ToSql, Type};

    crate::text_enum! {
        /// A test status.
        enum Colour { Red = "red", DarkBlue = "dark_blue" }
    }

    #[test]
    fn a_text_enum_round_trips_through_text_serde_and_the_wire_format() {
        for &colour in Colour::ALL {
            assert_eq!(colour.as_str().parse::<Colour>().expect("test value"), colour);
            let json = serde_json::to_string(&colour).expect("test value");
            assert_eq!(serde_json::from_str::<Colour>(&json).expect("test value"), colour);
            let mut out = tokio_postgres::types::private::BytesMut::new();
            colour.to_sql_checked(&Type::TEXT, &mut out).expect("test value");
            assert_eq!(Colour::from_sql(&Type::TEXT, &out).expect("test value"), colour);
        }
        assert!("green".parse::<Colour>().is_err());
        assert!(Colour::from_sql(&Type::TEXT, b"green").is_err());
        assert!(serde_json::from_str::<Colour>("\"green\"").is_err());
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
    }
}
