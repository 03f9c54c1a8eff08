//! Issue 14: a franchisee's own PostgreSQL database as the purchase source.
//!
//! The node connects with its own read-only role (tokio-postgres: async on the node's
//! tokio runtime, no libpq to install on the franchisee's machine, TLS by rustls as
//! everywhere else in fedcrm, and streaming through portals so no result is held
//! whole). Every read runs in a `READ ONLY`, `REPEATABLE READ` transaction with the
//! configured statement timeout and time zone, over one normalising query built from
//! `[data.columns]` and the source's column types:
//!
//! - the customer key as trimmed text; the day as the timestamp's date **in the
//!   node's `time_zone`** (a `timestamptz` is converted first; a `timestamp` without
//!   zone is taken as that zone's wall clock; a `date` as is);
//! - the amount as an exact `numeric`, in cents;
//! - a row whose key is empty, whose timestamp is NULL or not a finite date, or whose
//!   amount is NULL, not finite or has more than two decimals is a bad row, named by
//!   its row key (`row_key`, else the table's primary key, else the customer key).
//!
//! Per-customer RFM values and CLV summaries are computed in the database (`GROUP BY`
//! over the reference window); the churn model and private set intersection read the
//! rows streamed in customer order. Before it starts, the node refuses a role that can write to any
//! table it reads, and names the grant to revoke.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use fedcrm_analysis::rfm::CustomerRfm;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use time::Date;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::{Contact, DataConfig, DataError, LoadReport, Purchase};
use crate::features::History;

/// Each customer's RFM values at `$2` (the reference date), over the normalised rows
/// `w` ([`Plan::with`]): computed in the database, one row per customer.
const RFM: &str = "SELECT k, $2::date - max(day), count(DISTINCT day), greatest(sum(cents), 0)::bigint \
     FROM w WHERE day <= $2::date GROUP BY k ORDER BY k COLLATE \"C\"";

/// Trim a text expression as Rust's `str::trim` does (Unicode White_Space, so the
/// ideographic space U+3000 and NBSP too), as the CSV reader and consent lists trim.
fn trim_sql(expr: &str) -> String {
    // Every White_Space character, as U& escapes (the server's encoding is UTF-8).
    const WS: &str = "U&' \\0009\\000A\\000B\\000C\\000D\\0085\\00A0\\1680\\2000\\2001\\2002\\2003\\2004\\2005\\2006\\2007\\2008\\2009\\200A\\2028\\2029\\202F\\205F\\3000'";
    format!("btrim({expr}, {WS})")
}

/// A query from node.toml as a subquery: without a trailing `;`, and closed on a line
/// of its own so a trailing `-- comment` ends before it.
fn subquery(q: &str) -> String {
    format!("(\n{})", statement(q))
}

/// A query from node.toml as one statement: no trailing `;`, ending on a new line.
fn statement(q: &str) -> String {
    format!("{}\n", q.trim().trim_end_matches(';').trim_end())
}

/// Rows fetched from a portal at a time: what bounds the node's memory while it reads.
const BATCH: i32 = 10_000;

/// Skipped rows kept as examples for `node check`.
const EXAMPLES: i64 = 10;

/// `[data] sslmode`: TLS to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP or a Unix socket: for a database on the node's own machine or network.
    Disable,
    /// TLS, the server's certificate checked against `sslrootcert` and its name
    /// against the URL's host (the default; libpq's `verify-full`).
    #[default]
    VerifyFull,
}

/// The `[data]` settings of `format = "postgres"` ([`DataConfig::postgres`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://USER@HOST:PORT/DB` (a password in it is refused).
    pub url: String,
    /// A file (mode 0600) holding the role's password.
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding the role's password.
    pub password_env: Option<String>,
    /// `verify-full` (default) or `disable`.
    pub sslmode: SslMode,
    /// The CA certificate (PEM) the database server's certificate must chain to.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// The purchase table (`sales` or `pos.sales`), read with `[data.columns]`.
    pub table: Option<String>,
    /// Or a query returning the columns `[data.columns]` names.
    pub query: Option<String>,
    /// Columns naming a row in messages about bad rows (default: the table's primary
    /// key, else the customer key).
    pub row_key: Vec<String>,
    /// Customers who withdrew consent: a table whose `[data.columns] customer_key`
    /// column holds their keys, or a query returning the keys as its first column.
    pub consent_table: Option<String>,
    pub consent_query: Option<String>,
    /// The zone purchase times are converted to before their date is taken (an IANA
    /// name the server knows; default `Asia/Shanghai`).
    pub time_zone: String,
    /// The longest one read of the database may take, all its queries together
    /// (seconds; default 600).
    pub query_timeout_seconds: u64,
    /// The longest a connection attempt may take (seconds; default 10).
    pub connect_timeout_seconds: u64,
}

impl PgSettings {
    /// Settings that parse but cannot be right.
    pub fn validate(&self) -> Result<(), String> {
        let cfg: tokio_postgres::Config = self.url.parse().map_err(|e| {
            format!(
                "data.url = {:?} is not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DB",
                self.redacted()
            )
        })?;
        if cfg.get_password().is_some() {
            return Err(
                "data.url holds a password; remove it and put the password in a file named by data.password_file (mode 0600) or in the variable named by data.password_env"
                    .into(),
            );
        }
        if cfg.get_user().is_none() {
            return Err(
                "data.url names no user; write postgres://USER@HOST:PORT/DB with the node's read-only role".into()
            );
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err("set one of data.password_file and data.password_env, not both".into());
        }
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => return Err("set one of data.table and data.query, not both".into()),
            (None, None) => {
                return Err("format = \"postgres\" needs data.table (with [data.columns]) or data.query".into());
            }
            _ => {}
        }
        if self.consent_table.is_some() && self.consent_query.is_some() {
            return Err("set one of data.consent_table and data.consent_query, not both".into());
        }
        if self.sslmode == SslMode::VerifyFull && self.sslrootcert.is_none() {
            return Err("data.sslmode = \"verify-full\" (the default) needs data.sslrootcert, the CA certificate of the database server; for a database on this machine set data.sslmode = \"disable\"".into());
        }
        if self.query_timeout_seconds == 0 || self.connect_timeout_seconds == 0 {
            return Err("data.query_timeout_seconds and data.connect_timeout_seconds must be at least 1".into());
        }
        Ok(())
    }

    /// The URL as messages show it (`postgres://USER@HOST:PORT/DB`, never a password).
    pub fn redacted(&self) -> String {
        match self.url.split_once("://").and_then(|(s, rest)| rest.rsplit_once('@').map(|(who, at)| (s, who, at))) {
            Some((scheme, who, at)) => format!("{scheme}://{}@{at}", who.split(':').next().unwrap_or("")),
            None => self.url.clone(),
        }
    }

    fn password(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.password_file {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("cannot read data.password_file {}: {e}", path.display()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(format!(
                        "data.password_file {} can be read by other users (mode {:o}); run chmod 600 on it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read data.password_file {}: {e}", path.display()))?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("data.password_env names {var}, which is not set in the node's environment"));
        }
        Ok(None)
    }
}

/// Quote an identifier, or each part of a dotted name (`pos.sales` → `"pos"."sales"`);
/// a part already in double quotes is kept as written, an unquoted one is folded to
/// lower case as SQL folds it.
pub fn quote_name(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name.trim();
    while !rest.is_empty() {
        if !out.is_empty() {
            out.push('.');
        }
        if let Some(inner) = rest.strip_prefix('"') {
            // A quoted part runs to the next lone quote.
            let mut end = 0;
            let b = inner.as_bytes();
            while end < b.len() {
                if b[end] == b'"' {
                    if b.get(end + 1) == Some(&b'"') {
                        end += 2;
                        continue;
                    }
                    break;
                }
                end += 1;
            }
            out.push('"');
            out.push_str(&inner[..end.min(inner.len())]);
            out.push('"');
            rest = inner.get(end + 1..).unwrap_or("").trim_start_matches('.');
        } else {
            let (part, tail) = rest.split_once('.').unwrap_or((rest, ""));
            // Unquoted, SQL folds a name to lower case (`Sales` is `sales`).
            out.push_str(&quote_ident(&part.trim().to_lowercase()));
            rest = tail;
        }
    }
    out
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An identifier as PostgreSQL's `format('%I')` writes it: bare when it is lower-case
/// letters, digits and underscores (not starting with a digit), quoted otherwise.
fn ident_as_written(s: &str) -> String {
    let bare = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare { s.to_string() } else { quote_ident(s) }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How the source's columns are read: the SQL of the normalised rows, and what
/// `node check` shows.
#[derive(Debug, Clone)]
struct Plan {
    /// `WITH r AS (...), v AS (...), w AS (...)`: one row per source row, with `bad`
    /// (NULL or why) and the normalised columns (`r`, `v`), and the usable rows of
    /// customers who did not withdraw (`w`); `$1` is the withdrawn keys (`text[]`). Each
    /// is `NOT MATERIALIZED` (never written out whole) and `r`, `v` end in `OFFSET 0`, so
    /// every expression is computed once per row rather than once per use.
    with: String,
    /// Tables the node reads (schema-qualified), checked for write privileges.
    relations: Vec<String>,
}

/// A database source, connected on demand; the connection is dropped on any error and
/// opened again at the next read.
pub struct Database {
    settings: PgSettings,
    data: DataConfig,
    pg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: tokio::sync::Mutex<Option<Client>>,
    plan: tokio::sync::OnceCell<Plan>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("url", &self.settings.redacted()).finish_non_exhaustive()
    }
}

/// What `node check` shows of a database source.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReport {
    /// `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    pub server_version: String,
    pub time_zone: String,
    /// The query every read is built on (the normalised rows, `w`), and the RFM
    /// values computed from them at a reference date (`$2`).
    pub query: String,
    /// The tables read, each checked for write privileges.
    pub relations: Vec<String>,
}

/// Counts over the source, as a load report sees them.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub report: LoadReport,
    /// Usable rows of customers who withdrew consent.
    pub withdrawn_rows: u64,
    pub customers: u64,
    pub first: Option<Date>,
    pub last: Option<Date>,
    pub channels: Vec<(String, u64)>,
}

fn db_err(settings: &PgSettings, why: impl std::fmt::Display) -> DataError {
    DataError::Database { url: settings.redacted(), why: why.to_string() }
}

/// A database error in words: the server's message and hint when it sent one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED {
            s.push_str("; the query ran longer than data.query_timeout_seconds allows");
        }
        if let Some(h) = db.hint() {
            let _ = write!(s, "; hint: {h}");
        }
        return s;
    }
    if e.is_closed() {
        return format!("the connection to the database was lost ({e})");
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

impl Database {
    /// A source for `data` (format `postgres`); no connection yet.
    pub fn new(data: &DataConfig) -> Result<Self, DataError> {
        let settings = data.postgres().map_err(DataError::Setting)?;
        let mut pg: tokio_postgres::Config = settings.url.parse().map_err(|e| db_err(&settings, e))?;
        if let Some(p) = settings.password().map_err(DataError::Setting)? {
            pg.password(p);
        }
        pg.application_name("fedcrm-node");
        pg.connect_timeout(Duration::from_secs(settings.connect_timeout_seconds));
        // A connection lost without a word (a crashed host, a NAT that forgot it) is
        // noticed within a minute, not after the system's two hours.
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30)).keepalives_interval(Duration::from_secs(10));
        pg.tcp_user_timeout(Duration::from_secs(60));
        let tls = match settings.sslmode {
            SslMode::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            SslMode::VerifyFull => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                // Unwrap safety: `validate` requires it for verify-full.
                let path = settings.sslrootcert.clone().unwrap_or_default();
                let pem = std::fs::read(&path)
                    .map_err(|e| DataError::Setting(format!("cannot read data.sslrootcert {}: {e}", path.display())))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: rustls_pki_types::CertificateDer<'static> = cert.map_err(|e| {
                        DataError::Setting(format!("data.sslrootcert {}: not a PEM certificate: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        DataError::Setting(format!(
                            "data.sslrootcert {}: cannot use this certificate: {e}",
                            path.display()
                        ))
                    })?;
                }
                let config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| DataError::Setting(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(config))
            }
        };
        Ok(Self {
            settings,
            data: data.clone(),
            pg,
            tls,
            client: tokio::sync::Mutex::new(None),
            plan: tokio::sync::OnceCell::new(),
        })
    }

    /// The settings this source was made from.
    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    fn err(&self, why: impl std::fmt::Display) -> DataError {
        db_err(&self.settings, why)
    }

    /// Connect within `connect_timeout_seconds`, all of it: the socket, TLS, start-up,
    /// authentication and the session's settings.
    async fn connect(&self) -> Result<Client, DataError> {
        let limit = Duration::from_secs(self.settings.connect_timeout_seconds);
        tokio::time::timeout(limit, self.connect_now()).await.unwrap_or_else(|_| {
            Err(self.err(format!(
                "no connection within data.connect_timeout_seconds = {}; is the database up and reachable from this machine?",
                self.settings.connect_timeout_seconds
            )))
        })
    }

    async fn connect_now(&self) -> Result<Client, DataError> {
        let client = match &self.tls {
            None => {
                let (client, conn) = self.pg.connect(NoTls).await.map_err(|e| self.err(describe(&e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("database connection ended: {}", describe(&e));
                    }
                });
                client
            }
            Some(tls) => {
                let (client, conn) = self.pg.connect(tls.clone()).await.map_err(|e| self.err(describe(&e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("database connection ended: {}", describe(&e));
                    }
                });
                client
            }
        };
        // Every transaction of this session is read-only unless it says otherwise, and
        // the node's never do.
        client.batch_execute("SET default_transaction_read_only = on").await.map_err(|e| self.err(describe(&e)))?;
        Ok(client)
    }

    /// Run `f` in a read-only, repeatable-read transaction with the timeout and time
    /// zone set, on the held connection (opened if there is none). On any error the
    /// connection is dropped, so the next call opens a fresh one.
    async fn read<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>, &Plan) -> Result<T, DataError>,
    ) -> Result<T, DataError> {
        let mut held = self.client.lock().await;
        // A connection that went away while idle (the server restarted, a firewall
        // forgot it) is found here and replaced, not reported as this read's failure.
        let quick = Duration::from_secs(self.settings.connect_timeout_seconds);
        if let Some(c) = held.as_ref()
            && (c.is_closed() || !matches!(tokio::time::timeout(quick, c.batch_execute("SELECT 1")).await, Ok(Ok(()))))
        {
            *held = None;
        }
        if held.is_none() {
            *held = Some(self.connect().await?);
        }
        // Unwrap safety: set just above.
        let client = held.as_mut().unwrap();
        let limit = Duration::from_secs(self.settings.query_timeout_seconds);
        let out = tokio::time::timeout(limit, async {
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(|e| self.err(describe(&e)))?;
            // The node's SQL is written with standard strings (U& escapes among them).
            tx.batch_execute(&format!(
                "SET LOCAL standard_conforming_strings = on; SET LOCAL statement_timeout = '{}s'",
                self.settings.query_timeout_seconds
            ))
                .await
                .map_err(|e| self.err(describe(&e)))?;
            tx.batch_execute(&format!("SET LOCAL TIME ZONE {}", quote_literal(&self.settings.time_zone)))
                .await
                .map_err(|e| {
                    self.err(format!(
                        "data.time_zone = {:?} is not a time zone this server knows; use an IANA name such as \"Asia/Shanghai\" ({})",
                        self.settings.time_zone,
                        describe(&e)
                    ))
                })?;
            let plan = self.plan.get_or_try_init(|| self.plan(&tx)).await?;
            let out = f(&tx, plan).await?;
            tx.commit().await.map_err(|e| self.err(describe(&e)))?;
            Ok(out)
        })
        .await
        .unwrap_or_else(|_| {
            Err(self.err(format!(
                "the read did not finish within data.query_timeout_seconds = {}; the database is too slow or unreachable",
                self.settings.query_timeout_seconds
            )))
        });
        if out.is_err() {
            *held = None;
        }
        out
    }

    /// Build the normalising query from the source's columns and their types.
    async fn plan(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<Plan, DataError> {
        let s = &self.settings;
        let encoding: String =
            tx.query_one("SHOW server_encoding", &[]).await.map_err(|e| self.err(describe(&e)))?.get(0);
        if encoding != "UTF8" {
            return Err(self.err(format!(
                "the database's encoding is {encoding}; the node reads UTF8 databases (convert it, or read through a UTF8 database)"
            )));
        }
        // A table is read by the schema-qualified name found now, not through the
        // search path at every read (a table of the same name elsewhere cannot shadow it).
        let table = match &s.table {
            Some(t) => Some(
                tx.query_opt(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                    &[&quote_name(t)],
                )
                .await
                .map_err(|e| self.err(format!("table {t}: {}", describe(&e))))?
                .ok_or_else(|| self.err(format!("data.table {t} does not exist, or the role cannot see it")))?
                .get::<_, String>(0),
            ),
            None => None,
        };
        let from = match (&table, &s.query) {
            (Some(t), _) => t.clone(),
            (_, Some(q)) => subquery(q),
            _ => unreachable!("validated: a table or a query"),
        };
        let probe = tx
            .prepare(&format!("SELECT * FROM {from} AS s LIMIT 0"))
            .await
            .map_err(|e| self.err(format!("cannot read the source: {}", describe(&e))))?;
        let found: Vec<(String, Type)> =
            probe.columns().iter().map(|c| (c.name().to_string(), c.type_().clone())).collect();
        let cols = &self.data.columns;
        let what = match (&s.table, &s.query) {
            (Some(t), _) => format!("table {t}"),
            _ => "data.query".to_string(),
        };
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        let col = |key: &str, name: &str| -> Result<Option<(String, Type)>, DataError> {
            let name = name.trim();
            if name.is_empty() {
                return Ok(None);
            }
            found
                .iter()
                .find(|(n, _)| n == name)
                .or_else(|| found.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
                .map(|(n, t)| Some((quote_ident(n), t.clone())))
                .ok_or_else(|| {
                    self.err(format!(
                        "{what} has no column {name:?} (data.columns.{key}); it has {names:?}. Name the column in node.toml, e.g. [data.columns] {key} = \"{}\"",
                        names.first().copied().unwrap_or("...")
                    ))
                })
        };
        let required = |key: &str, name: &str| -> Result<(String, Type), DataError> {
            col(key, name)?.ok_or_else(|| DataError::Setting(cols.validate().err().unwrap_or_default()))
        };
        let present = |configured: &Option<String>, default: &str| match configured {
            Some(n) => Some(n.clone()),
            None => found.iter().any(|(n, _)| n.eq_ignore_ascii_case(default)).then(|| default.to_string()),
        };
        let (ck, _) = required("customer_key", &cols.customer_key)?;
        let (ts, ts_type) = required("timestamp", &cols.timestamp)?;
        let (am, am_type) = required("amount", &cols.amount)?;
        let day = match ts_type {
            Type::TIMESTAMPTZ => format!("(s.{ts} AT TIME ZONE {})::date", quote_literal(&s.time_zone)),
            Type::TIMESTAMP => format!("s.{ts}::date"),
            Type::DATE => format!("s.{ts}"),
            other => {
                return Err(self.err(format!(
                    "column {ts} (data.columns.timestamp) is of type {other}; it must be timestamptz, timestamp or date. \
                     For text, use data.query with a cast, e.g. SELECT ..., {ts}::timestamptz AS {ts} FROM ..."
                )));
            }
        };
        let numeric = [Type::INT2, Type::INT4, Type::INT8, Type::NUMERIC, Type::FLOAT4, Type::FLOAT8, Type::MONEY];
        if !numeric.contains(&am_type) {
            return Err(self.err(format!(
                "column {am} (data.columns.amount) is of type {am_type}; it must be numeric, an integer or a float (the amount in the currency's main unit). \
                 For text, use data.query with a cast, e.g. SELECT ..., {am}::numeric AS {am} FROM ..."
            )));
        }
        let text = |key: &str, name: &str| -> Result<String, DataError> {
            Ok(match col(key, name)? {
                Some((c, _)) => format!("NULLIF({}, '')", trim_sql(&format!("CAST(s.{c} AS text)"))),
                None => "NULL::text".into(),
            })
        };
        let date = |key: &str, configured: &Option<String>, default: &str| -> Result<String, DataError> {
            let Some(name) = present(configured, default) else { return Ok("NULL::date".into()) };
            Ok(match col(key, &name)? {
                None => "NULL::date".into(),
                Some((c, Type::DATE)) => format!("s.{c}"),
                Some((c, Type::TIMESTAMP | Type::TIMESTAMPTZ)) => format!("s.{c}::date"),
                Some((c, t)) => {
                    return Err(self.err(format!(
                        "column {c} (data.columns.{key}) is of type {t}; it must be a date (use data.query with a cast)"
                    )));
                }
            })
        };
        let qty_name = present(&cols.quantity, "quantity").unwrap_or_else(|| "quantity".into());
        let quantity = match present(&cols.quantity, "quantity") {
            None => "1::bigint".to_string(),
            Some(name) => match col("quantity", &name)? {
                None => "1::bigint".to_string(),
                Some((c, Type::INT2 | Type::INT4 | Type::INT8)) => format!("CAST(s.{c} AS bigint)"),
                Some((c, t)) => {
                    return Err(
                        self.err(format!("column {c} (data.columns.quantity) is of type {t}; it must be an integer"))
                    );
                }
            },
        };
        let phone = text("phone", &cols.phone)?;
        let channel = text("channel", &cols.channel)?;
        let category = text("category", &cols.category)?;
        let email = match present(&cols.email, super::rows::EMAIL) {
            Some(n) => text("email", &n)?,
            None => "NULL::text".into(),
        };
        let birthday = date("birthday", &cols.birthday, super::BIRTHDAY)?;
        let anniversary = date("anniversary", &cols.anniversary, super::ANNIVERSARY)?;
        // The row key: configured, else the table's primary key, else the customer key.
        let mut key_cols: Vec<String> = Vec::new();
        for k in &s.row_key {
            key_cols.push(col("row_key", k)?.map(|(c, _)| c).unwrap_or_default());
        }
        let mut relations = Vec::new();
        if let Some(t) = &s.table {
            let row = tx
                .query_opt(
                    "SELECT format('%I.%I', n.nspname, c.relname), \
                       coalesce((SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                    &[&quote_name(t)],
                )
                .await
                .map_err(|e| self.err(format!("table {t}: {}", describe(&e))))?
                .ok_or_else(|| self.err(format!("data.table {t} does not exist")))?;
            relations.push(row.get::<_, String>(0));
            // A view's base tables (EXPLAIN names them), and a partitioned table's parts.
            relations.extend(self.relations_of(tx, &format!("SELECT * FROM {}", quote_name(t))).await?);
            if key_cols.is_empty() {
                key_cols = row.get::<_, Vec<String>>(1).iter().map(|c| quote_ident(c)).collect();
            }
        } else if let Some(q) = &s.query {
            relations.extend(self.relations_of(tx, q).await?);
        }
        if key_cols.is_empty() {
            key_cols.push(ck.clone());
        }
        let row_key = key_cols
            .iter()
            .map(|c| format!("{} || '=' || coalesce(CAST(s.{c} AS text), 'NULL')", quote_literal(c.trim_matches('"'))))
            .collect::<Vec<_>>()
            .join(" || ' ' || ");
        let ck_name = cols.customer_key.trim();
        let ts_name = cols.timestamp.trim();
        let am_name = cols.amount.trim();
        let with = format!(
            "WITH r AS NOT MATERIALIZED (SELECT {key} AS k, {day} AS day, CAST(s.{am} AS numeric) AS a, {quantity} AS q, \
               {phone} AS phone, {email} AS email, {channel} AS channel, {category} AS category, \
               {birthday} AS birthday, {anniversary} AS anniversary, {row_key} AS row_key FROM {from} AS s OFFSET 0), \
             v AS NOT MATERIALIZED (SELECT r.*, CASE \
               WHEN k IS NULL OR k = '' THEN {e_key} \
               WHEN day IS NULL THEN {e_ts_null} \
               WHEN day NOT BETWEEN date '0001-01-01' AND date '9999-12-31' THEN {e_ts_range} \
               WHEN a IS NULL THEN {e_am_null} \
               WHEN a = 'NaN'::numeric OR abs(a) >= 1e15 THEN {e_am_range} \
               WHEN trunc(a, 2) <> a THEN {e_am_scale} \
               WHEN q IS NULL OR q < 0 OR q > 4294967295 THEN {e_qty} \
               WHEN birthday NOT BETWEEN date '0001-01-01' AND date '9999-12-31' \
                 THEN 'birthday is not a date between the years 1 and 9999' \
               WHEN anniversary NOT BETWEEN date '0001-01-01' AND date '9999-12-31' \
                 THEN 'anniversary is not a date between the years 1 and 9999' \
               END AS bad FROM r OFFSET 0), \
             w AS NOT MATERIALIZED (SELECT v.*, CASE WHEN bad IS NULL THEN CAST(a * 100 AS bigint) END AS cents FROM v \
               WHERE bad IS NULL AND NOT (k = ANY($1::text[])))",
            key = trim_sql(&format!("CAST(s.{ck} AS text)")),
            e_key = quote_literal(&format!("{ck_name} (customer_key) is empty")),
            e_ts_null = quote_literal(&format!("{ts_name} (timestamp) is NULL")),
            e_ts_range = quote_literal(&format!("{ts_name} (timestamp) is not a date between the years 1 and 9999")),
            e_am_null = quote_literal(&format!("{am_name} (amount) is NULL")),
            e_am_range = quote_literal(&format!("{am_name} (amount) is not a finite amount below 10^15")),
            e_qty = quote_literal(&format!("{qty_name} (quantity) is NULL or not between 0 and 4294967295")),
            e_am_scale = quote_literal(&format!("{am_name} (amount) has more than two decimals")),
        );
        if let Some(t) = &s.consent_table {
            let row = tx
                .query_opt(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                    &[&quote_name(t)],
                )
                .await
                .map_err(|e| self.err(format!("data.consent_table {t}: {}", describe(&e))))?;
            match row {
                Some(r) => relations.push(r.get(0)),
                None => return Err(self.err(format!("data.consent_table {t} does not exist"))),
            }
        } else if let Some(q) = &s.consent_query {
            relations.extend(self.relations_of(tx, q).await?);
        }
        relations.sort();
        relations.dedup();
        Ok(Plan { with, relations })
    }

    /// The tables a query reads, from its plan (views resolved to their tables).
    async fn relations_of(&self, tx: &tokio_postgres::Transaction<'_>, query: &str) -> Result<Vec<String>, DataError> {
        // The extended protocol: one statement only, so nothing in node.toml can end the
        // read-only transaction.
        let plan: serde_json::Value = tx
            .query_one(&format!("EXPLAIN (VERBOSE, FORMAT JSON) {}", statement(query)), &[])
            .await
            .map_err(|e| self.err(format!("cannot plan the query: {}", describe(&e))))?
            .get(0);
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let (Some(serde_json::Value::String(r)), Some(serde_json::Value::String(s))) =
                        (m.get("Relation Name"), m.get("Schema"))
                    {
                        out.push(format!("{}.{}", ident_as_written(s), ident_as_written(r)));
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&plan, &mut out);
        Ok(out)
    }

    /// Refuse a role that can change what it reads: a superuser or a role that may
    /// create roles, the owner of a table read, or one holding INSERT, UPDATE, DELETE,
    /// TRUNCATE or TRIGGER on one — itself, through PUBLIC, or through any role it is a
    /// member of (inheriting or not: `SET ROLE` reaches them all). The tables read are
    /// those named, their base tables when they are views, and every partition and
    /// inheritance parent or child of them. `Err` names the grant to revoke.
    pub async fn check_read_only(&self) -> Result<(), DataError> {
        let problems = self.read(async |tx, plan| self.write_problems(tx, plan).await).await?;
        self.refuse_writers(problems)
    }

    fn refuse_writers(&self, problems: Vec<String>) -> Result<(), DataError> {
        if problems.is_empty() {
            return Ok(());
        }
        Err(self.err(format!(
            "the node reads only with a role that cannot write, so it does not start: {}",
            problems.join("; ")
        )))
    }

    async fn write_problems(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
    ) -> Result<Vec<String>, DataError> {
        let q = async |sql: &str, params: &[&(dyn ToSql + Sync)]| {
            tx.query(sql, params).await.map_err(|e| self.err(describe(&e)))
        };
        let me = q("SELECT format('%I', current_user)", &[]).await?;
        let role: String = me[0].get(0);
        let mut problems = Vec::new();
        if plan.relations.is_empty() {
            problems.push(
                "the node cannot tell which tables data.query reads (through a function?), so it cannot check that its role cannot write them; name data.table, or query the tables themselves"
                    .to_string(),
            );
        }
        // Every role this one may act as.
        let powers = q(
            "SELECT format('%I', rolname), rolsuper, rolcreaterole FROM pg_roles \
             WHERE pg_has_role(current_user, oid, 'MEMBER') AND (rolsuper OR rolcreaterole) ORDER BY 1",
            &[],
        )
        .await?;
        for r in &powers {
            let (name, sup): (String, bool) = (r.get(0), r.get(1));
            let through = if name == role { String::new() } else { format!(" through its membership in {name}") };
            let what =
                if sup { "is a superuser" } else { "may create roles (CREATEROLE) and so grant itself any role" };
            problems.push(format!(
                "the role {role}{through} {what}; connect as a role of its own that only has SELECT (README: Connecting a POS database)"
            ));
        }
        let tables = q(
            "WITH RECURSIVE base AS (SELECT unnest($1::text[])::regclass::oid AS rel), \
               up AS (SELECT rel FROM base UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.rel), \
               down AS (SELECT rel FROM base UNION SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.rel) \
             SELECT DISTINCT c.oid, format('%I.%I', n.nspname, c.relname), format('%I', pg_get_userbyid(c.relowner)), \
               pg_has_role(current_user, c.relowner, 'MEMBER') \
             FROM (SELECT rel FROM up UNION SELECT rel FROM down) x JOIN pg_class c ON c.oid = x.rel \
             JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 2",
            &[&plan.relations],
        )
        .await?;
        for t in &tables {
            let (oid, rel, owner, owns): (tokio_postgres::types::Oid, String, String, bool) =
                (t.get(0), t.get(1), t.get(2), t.get(3));
            if owns {
                problems.push(format!(
                    "the role {role} owns {rel} (or may act as its owner {owner}) and so can write to it; connect as a role that only has SELECT"
                ));
                continue;
            }
            let grants = q(
                "SELECT format('%I', r.rolname), has_any_column_privilege(r.oid, $1::oid, 'INSERT'), \
                   has_any_column_privilege(r.oid, $1::oid, 'UPDATE'), has_table_privilege(r.oid, $1::oid, 'DELETE'), \
                   has_table_privilege(r.oid, $1::oid, 'TRUNCATE'), has_table_privilege(r.oid, $1::oid, 'TRIGGER') \
                 FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER') ORDER BY r.rolname = current_user DESC, 1",
                &[&oid],
            )
            .await?;
            let mut held: Vec<(String, Vec<&str>)> = Vec::new();
            for g in &grants {
                let holder: String = g.get(0);
                let granted: Vec<&str> = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"]
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| g.get::<_, bool>(i + 1))
                    .map(|(_, p)| p)
                    .collect();
                if !granted.is_empty() {
                    held.push((holder, granted));
                }
            }
            // This role's own line is left out when a role it belongs to holds the same
            // (inherited, revoking them there is the fix).
            let by_others: std::collections::HashSet<&str> =
                held.iter().filter(|(h, _)| *h != role).flat_map(|(_, g)| g.iter().copied()).collect();
            for (holder, granted) in &held {
                if *holder == role && granted.iter().all(|p| by_others.contains(p)) {
                    continue;
                }
                let list = granted.join(", ");
                problems.push(if *holder == role {
                    format!(
                        "the role {role} has {list} on {rel}; run REVOKE {list} ON {rel} FROM {role}; \
                         (if PUBLIC holds it, REVOKE {list} ON {rel} FROM PUBLIC; \\dp {rel} in psql shows the grants)"
                    )
                } else {
                    format!(
                        "the role {role} is a member of {holder}, which has {list} on {rel}; run REVOKE {holder} FROM {role}; \
                         or REVOKE {list} ON {rel} FROM {holder};"
                    )
                });
            }
        }
        Ok(problems)
    }

    /// The server's version, the time zone and the query, for `node check`.
    pub async fn describe_source(&self) -> Result<DatabaseReport, DataError> {
        self.read(async |tx, plan| {
            let version: String =
                tx.query_one("SHOW server_version", &[]).await.map_err(|e| self.err(describe(&e)))?.get(0);
            Ok(DatabaseReport {
                url: self.settings.redacted(),
                server_version: version,
                time_zone: self.settings.time_zone.clone(),
                query: format!("{}\n{RFM}", plan.with)
                    .replace(" v AS NOT MATERIALIZED (", "\nv AS NOT MATERIALIZED (")
                    .replace(" w AS NOT MATERIALIZED (", "\nw AS NOT MATERIALIZED (")
                    .replace(" WHEN ", "\n  WHEN ")
                    .replace(" END AS bad", "\n  END AS bad")
                    .replace(" FROM w WHERE day", "\n  FROM w WHERE day"),
                relations: plan.relations.clone(),
            })
        })
        .await
    }

    /// The withdrawn customers' keys: the consent file's, the consent table's or
    /// query's, and those a badly written line of the file names, matched against the
    /// customers in the source (exactly as the file formats are).
    async fn withdrawals(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
    ) -> Result<super::Withdrawals, DataError> {
        let mut w = match &self.data.consent_withdrawals {
            Some(p) => super::Withdrawals::read(p, self.data.encoding)?,
            None => super::Withdrawals::none(),
        };
        let s = &self.settings;
        let listed = match (&s.consent_table, &s.consent_query) {
            (Some(t), _) => Some(format!(
                "SELECT {} FROM {}",
                trim_sql(&format!("CAST({} AS text)", quote_ident(self.data.columns.customer_key.trim()))),
                quote_name(t)
            )),
            (_, Some(_)) => Some(String::new()),
            _ => None,
        };
        if let Some(sql) = listed {
            let sql = if s.consent_query.is_some() {
                // The first column of the query, whatever its name.
                let stmt = tx
                    .prepare(&format!("SELECT * FROM ({}) AS c LIMIT 0", s.consent_query.as_deref().unwrap_or("")))
                    .await
                    .map_err(|e| self.err(format!("data.consent_query: {}", describe(&e))))?;
                let first = stmt.columns().first().map(|c| c.name().to_string()).ok_or_else(|| {
                    self.err("data.consent_query returns no column; it must return the withdrawn customers' keys")
                })?;
                format!(
                    "SELECT {} FROM {} AS c",
                    trim_sql(&format!("CAST(c.{} AS text)", quote_ident(&first))),
                    subquery(s.consent_query.as_deref().unwrap_or(""))
                )
            } else {
                sql
            };
            let rows =
                tx.query(&sql, &[]).await.map_err(|e| self.err(format!("consent withdrawals: {}", describe(&e))))?;
            w.add_keys(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)));
            if w.report.path.is_empty() {
                w.report.path = match (&s.consent_table, &s.consent_query) {
                    (Some(t), _) => format!("table {t}"),
                    _ => "data.consent_query".into(),
                };
            }
        }
        let candidates: Vec<String> = w.candidates();
        if candidates.is_empty() {
            return Ok(w);
        }
        let stmt = format!("{} SELECT DISTINCT k FROM v WHERE bad IS NULL AND k = ANY($2::text[])", plan.with);
        let none: Vec<String> = Vec::new();
        let rows = tx.query(&stmt, &[&none, &candidates]).await.map_err(|e| self.err(describe(&e)))?;
        let found: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        w.matched_against(|k| found.contains(k));
        Ok(w)
    }

    /// The row counts, bad rows and customers of the source (what `node check` and every
    /// read's admission see).
    async fn counts(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
        withdrawn: &[String],
    ) -> Result<Counts, DataError> {
        // One pass over the rows (a CTE read twice would be written out whole first).
        let sql = format!(
            "{} SELECT count(*), count(*) FILTER (WHERE bad IS NOT NULL), \
               count(*) FILTER (WHERE bad IS NULL AND k = ANY($1::text[])), \
               count(DISTINCT k) FILTER (WHERE bad IS NULL AND NOT (k = ANY($1::text[]))), \
               min(day) FILTER (WHERE bad IS NULL AND NOT (k = ANY($1::text[]))), \
               max(day) FILTER (WHERE bad IS NULL AND NOT (k = ANY($1::text[]))) FROM v",
            plan.with
        );
        let row = tx.query_one(&sql, &[&withdrawn]).await.map_err(|e| self.err(describe(&e)))?;
        let n = row.get::<_, i64>(0) as u64;
        let bad = row.get::<_, i64>(1) as u64;
        let mut counts = Counts {
            report: LoadReport { rows: n - bad, skipped: bad, ..Default::default() },
            withdrawn_rows: row.get::<_, i64>(2) as u64,
            customers: row.get::<_, i64>(3) as u64,
            first: row.get(4),
            last: row.get(5),
            channels: Vec::new(),
        };
        self.bad_examples(tx, plan, withdrawn, &mut counts).await?;
        Ok(counts)
    }

    /// The rows read and the bad ones (what admitting a read needs), in one pass.
    async fn admission(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
        withdrawn: &[String],
    ) -> Result<Counts, DataError> {
        let sql = format!("{} SELECT count(*), count(*) FILTER (WHERE bad IS NOT NULL) FROM v", plan.with);
        let row = tx.query_one(&sql, &[&withdrawn]).await.map_err(|e| self.err(describe(&e)))?;
        let (n, bad) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        let mut counts =
            Counts { report: LoadReport { rows: n - bad, skipped: bad, ..Default::default() }, ..Default::default() };
        self.bad_examples(tx, plan, withdrawn, &mut counts).await?;
        Ok(counts)
    }

    async fn bad_examples(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
        withdrawn: &[String],
        counts: &mut Counts,
    ) -> Result<(), DataError> {
        let bad = counts.report.skipped;
        if bad > 0 {
            let sql = format!(
                "{} SELECT row_key, bad FROM v WHERE bad IS NOT NULL ORDER BY row_key COLLATE \"C\" LIMIT {EXAMPLES}",
                plan.with
            );
            let rows = tx.query(&sql, &[&withdrawn]).await.map_err(|e| self.err(describe(&e)))?;
            counts.report.skipped_keys =
                rows.iter().map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1))).collect();
        }
        Ok(())
    }

    /// Counts, refused as a file load is: the first bad row under `on_bad_row = "fail"`,
    /// more than `max_skipped_fraction` under `"skip"`.
    fn admit(&self, counts: &Counts) -> Result<(), DataError> {
        let r = &counts.report;
        if r.skipped == 0 {
            return Ok(());
        }
        let (key, why) = r.skipped_keys.first().cloned().unwrap_or_default();
        if self.data.on_bad_row == super::OnBadRow::Fail {
            return Err(self.err(format!(
                "{} bad rows; the first is row {key}: {why} (fix the rows, or set data.on_bad_row = \"skip\" to skip such rows)",
                r.skipped
            )));
        }
        if r.skipped as f64 > self.data.max_skipped_fraction * r.read() as f64 {
            return Err(self.err(format!(
                "{} of {} rows could not be read ({:.1} %), more than data.max_skipped_fraction = {} allows; the first is row {key}: {why}",
                r.skipped,
                r.read(),
                100.0 * r.skipped as f64 / r.read().max(1) as f64,
                self.data.max_skipped_fraction
            )));
        }
        Ok(())
    }

    /// What `node check` reports: counts, channels and the consent report, unrefused
    /// (the refusal, if any, is `Err` of [`Database::admitted`]).
    pub async fn check_counts(&self) -> Result<(Counts, super::ConsentReport), DataError> {
        self.read(async |tx, plan| {
            let w = self.withdrawals(tx, plan).await?;
            let keys = w.keys();
            let mut counts = self.counts(tx, plan, &keys).await?;
            let sql =
                format!("{} SELECT coalesce(channel, '(none)'), count(*) FROM w GROUP BY 1 ORDER BY coalesce(channel, '(none)') COLLATE \"C\"", plan.with);
            let rows = tx.query(&sql, &[&keys]).await.map_err(|e| self.err(describe(&e)))?;
            counts.channels = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect();
            Ok((counts, w.report))
        })
        .await
    }

    /// The withdrawn keys of a read, once the role is checked again (a grant added while
    /// the node runs is caught at the next read) and the rows are admitted.
    async fn admitted_keys(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        plan: &Plan,
    ) -> Result<super::Withdrawals, DataError> {
        self.refuse_writers(self.write_problems(tx, plan).await?)?;
        let w = self.withdrawals(tx, plan).await?;
        self.admit(&self.admission(tx, plan, &w.keys()).await?)?;
        Ok(w)
    }

    /// Whether a read would be admitted (`node run` refuses to start otherwise).
    pub fn admitted(&self, counts: &Counts) -> Result<(), DataError> {
        self.admit(counts)
    }

    /// Each customer's RFM values at `reference`, computed in the database, in
    /// customer-key order; the rows are admitted first.
    pub async fn rfm(&self, reference: Date) -> Result<Vec<(String, CustomerRfm)>, DataError> {
        self.read(async |tx, plan| {
            let keys = self.admitted_keys(tx, plan).await?.keys();
            let sql = format!("{} {RFM}", plan.with);
            let mut out = Vec::new();
            self.stream(tx, &sql, &[&keys, &reference], |r| {
                out.push((
                    r.get::<_, String>(0),
                    CustomerRfm {
                        recency_days: r.get::<_, i32>(1) as u64,
                        frequency: r.get::<_, i64>(2) as u64,
                        monetary_cents: r.get::<_, i64>(3) as u64,
                    },
                ));
            })
            .await?;
            Ok(out)
        })
        .await
    }

    /// Every customer's history, in customer-key order, purchases by day (streamed).
    pub async fn histories(&self) -> Result<Vec<History>, DataError> {
        self.read(async |tx, plan| {
            let keys = self.admitted_keys(tx, plan).await?.keys();
            let sql = format!(
                "{} SELECT k, day, cents, q, category, birthday, anniversary FROM w ORDER BY k COLLATE \"C\", day, row_key COLLATE \"C\"",
                plan.with
            );
            let mut out: Vec<History> = Vec::new();
            self.stream(tx, &sql, &[&keys], |r| {
                let k: String = r.get(0);
                if out.last().is_none_or(|h| h.customer != k) {
                    out.push(History { customer: k, txns: Vec::new(), birthday: None, anniversary: None });
                }
                // Unwrap safety: pushed just above.
                let h = out.last_mut().unwrap();
                h.txns.push(fedcrm_model::features::Txn {
                    day: r.get(1),
                    cents: r.get(2),
                    quantity: r.get::<_, i64>(3) as u32,
                    category: crate::features::category(r.get::<_, Option<&str>>(4)),
                });
                if let Some(d) = r.get::<_, Option<Date>>(5) {
                    h.birthday = Some(d);
                }
                if let Some(d) = r.get::<_, Option<Date>>(6) {
                    h.anniversary = Some(d);
                }
            })
            .await?;
            Ok(out)
        })
        .await
    }

    /// Issue 13's CLV summaries at `cal`, computed in the database: same-day purchases
    /// merged (`GROUP BY` customer and day), then per customer the first day and, up to
    /// the calibration end, the repeat transactions' count, last day and value — the
    /// node holds one summary per customer, never the rows. In customer-key byte order,
    /// as the files' histories give them (the model's sums depend on the order).
    pub async fn clv(
        &self,
        cal: &fedcrm_model::clv::summary::Calibration,
    ) -> Result<crate::analyses::ClvData, DataError> {
        self.read(async |tx, plan| {
            let keys = self.admitted_keys(tx, plan).await?.keys();
            let sql = format!(
                "{}, d AS (SELECT k, day, sum(cents)::bigint AS c FROM w GROUP BY k, day), \
                   f AS (SELECT k, min(day) AS first FROM d GROUP BY k) \
                 SELECT f.first, count(*) FILTER (WHERE d.day > f.first AND d.day <= $2::date), \
                   max(d.day) FILTER (WHERE d.day > f.first AND d.day <= $2::date), \
                   coalesce(sum(d.c) FILTER (WHERE d.day > f.first AND d.day <= $2::date), 0)::bigint \
                 FROM f JOIN d ON d.k = f.k GROUP BY f.k, f.first ORDER BY f.k COLLATE \"C\"",
                plan.with
            );
            let mut out = crate::analyses::ClvData::default();
            self.stream(tx, &sql, &[&keys, &cal.end], |r| {
                let first: Date = r.get(0);
                let x = u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX);
                if first <= cal.end {
                    out.firsts.push(first);
                }
                if let Some(s) = cal.summary_of(first, x, r.get(2), r.get(3)) {
                    out.summaries.push(s);
                }
            })
            .await?;
            Ok(out)
        })
        .await
    }

    /// Every usable row as a dataset (private set intersection and scoring read rows),
    /// streamed in customer-key order.
    pub async fn dataset(&self) -> Result<super::Dataset, DataError> {
        self.read(async |tx, plan| {
            self.refuse_writers(self.write_problems(tx, plan).await?)?;
            let w = self.withdrawals(tx, plan).await?;
            let keys = w.keys();
            let counts = self.counts(tx, plan, &keys).await?;
            self.admit(&counts)?;
            let sql = format!(
                "{} SELECT k, day, cents, q, channel, category, phone, email, birthday, anniversary FROM w ORDER BY k COLLATE \"C\", day, row_key COLLATE \"C\"",
                plan.with
            );
            let mut purchases = Vec::new();
            self.stream(tx, &sql, &[&keys], |r| {
                purchases.push(Purchase {
                    customer: r.get(0),
                    day: r.get(1),
                    amount_cents: r.get(2),
                    quantity: r.get::<_, i64>(3) as u32,
                    channel: r.get(4),
                    category: r.get(5),
                    phone: r.get::<_, Option<String>>(6).map(Contact::new),
                    email: r.get::<_, Option<String>>(7).map(Contact::new),
                    birthday: r.get(8),
                    anniversary: r.get(9),
                });
            })
            .await?;
            Ok(super::Dataset {
                customers: counts.customers,
                withdrawn_rows: counts.withdrawn_rows,
                withdrawn_customers: w.report.matched + w.report.junk_matched,
                consent: w.report,
                purchases,
                report: counts.report,
            })
        })
        .await
    }

    /// For `node check`: per customer at most the two rows
    /// [`crate::identifiers::customer_identifiers`] chooses from — the latest with a
    /// usable identifier to match `on`, and the latest with any — read in customer
    /// order, so the node holds one customer's rows at a time, never the table.
    pub async fn contacts(&self, on: crate::identifiers::MatchOn) -> Result<Vec<Purchase>, DataError> {
        use crate::identifiers::MatchOn;
        let column = match on {
            MatchOn::Phone => "phone",
            MatchOn::Email => "email",
            MatchOn::CustomerKey => "k",
        };
        self.read(async |tx, plan| {
            let keys = self.withdrawals(tx, plan).await?.keys();
            // No ORDER BY (a sort of every row): the latest of each kind is kept per
            // customer as the rows come, by (day, row key) as the histories order them.
            let sql = format!("{} SELECT k, day, row_key, {column} FROM w", plan.with);
            // The values are personal data: held as `Contact`s, zeroized when dropped.
            type Latest = Option<(Date, String, Contact)>;
            let mut by: std::collections::HashMap<String, (Latest, Latest)> = std::collections::HashMap::new();
            let later = |held: &Latest, day: Date, key: &str| {
                held.as_ref().is_none_or(|(d, k, _)| (day, key.as_bytes()) >= (*d, k.as_bytes()))
            };
            self.stream(tx, &sql, &[&keys], |r| {
                let (k, day, key): (String, Date, Option<String>) = (r.get(0), r.get(1), r.get(2));
                let e = by.entry(k).or_default();
                // A customer without any value is counted too (as having none).
                let Some(value) = r.get::<_, Option<String>>(3).map(Contact::new) else { return };
                let key = key.unwrap_or_default();
                if later(&e.1, day, &key) {
                    e.1 = Some((day, key.clone(), value.clone()));
                }
                if later(&e.0, day, &key) && crate::identifiers::normalise(on, value.expose()).is_ok() {
                    e.0 = Some((day, key, value));
                }
            })
            .await?;
            let row = |customer: &str, day: Date, value: Option<Contact>| Purchase {
                customer: customer.to_string(),
                day,
                amount_cents: 0,
                quantity: 0,
                channel: None,
                category: None,
                phone: value.clone().filter(|_| on == MatchOn::Phone),
                email: value.filter(|_| on == MatchOn::Email),
                birthday: None,
                anniversary: None,
            };
            let mut out = Vec::with_capacity(by.len() * 2);
            for (k, (usable, any)) in by {
                if any.is_none() {
                    // A customer with no value at all (counted as having none).
                    out.push(row(&k, Date::MIN, None));
                }
                for (day, _, value) in [usable, any].into_iter().flatten() {
                    out.push(row(&k, day, Some(value)));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Run `sql` through a portal, `BATCH` rows at a time, handing each row to `each`.
    async fn stream(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        mut each: impl FnMut(&tokio_postgres::Row),
    ) -> Result<(), DataError> {
        let stmt = tx.prepare(sql).await.map_err(|e| self.err(describe(&e)))?;
        let portal = tx.bind(&stmt, params).await.map_err(|e| self.err(describe(&e)))?;
        loop {
            let mut rows =
                std::pin::pin!(tx.query_portal_raw(&portal, BATCH).await.map_err(|e| self.err(describe(&e)))?);
            let mut n = 0;
            while let Some(r) = rows.try_next().await.map_err(|e| self.err(describe(&e)))? {
                each(&r);
                n += 1;
            }
            if n < BATCH as usize {
                return Ok(());
            }
        }
    }
}
