//! Support for the cross-crate integration tests: where the real services are.
//!
//! The integration tests of this workspace run against real services, never against mocks,
//! and never skip silently when a service is missing:
//!
//! * a **KMS-compatible server** (moto, pinned in `scripts/services`), whose endpoint is in
//!   `AWS_ENDPOINT_URL_KMS` — see [`kms_endpoint`];
//! * a **PostgreSQL** server (by default the local cluster at `127.0.0.1:5432`, user
//!   `postgres`, trust authentication), whose administrative URL is in
//!   `JARVIS_TEST_DATABASE_URL` — see [`postgres_admin_url`]. Each test that needs a database
//!   creates its own with [`fresh_postgres_database`], so tests sharing the server run in
//!   parallel without seeing each other's rows.
//!
//! Run the suite through `scripts/test`, which starts both services, exports the variables
//! (`AWS_ENDPOINT_URL_KMS`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `JARVIS_TEST_DATABASE_URL`, `DATABASE_URL`) and stops the server it started afterwards. For
//! `cargo nextest run` or `cargo test` by hand, first `source scripts/services` (or
//! `eval "$(scripts/services env)"`) in the shell; `scripts/services stop` stops the
//! long-lived KMS server it leaves running.
//!
//! The functions here panic, with a message saying which service is missing and how to start
//! it, when a service is not available: a test that needs a service fails rather than
//! passing without having run.
//!
//! Databases made by [`fresh_postgres_database`] are left in place when the test ends, so a
//! failed test's rows can be inspected; each carries a comment naming the process that made it,
//! and `scripts/test` drops those whose process has exited before it runs the tests again.

pub mod binary;
pub mod fault_proxy;

use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The administrative PostgreSQL URL used when `JARVIS_TEST_DATABASE_URL` is not set: the local
/// cluster, user `postgres`, trust authentication, maintenance database `postgres`.
pub const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to start the local PostgreSQL cluster, for the panic messages.
const POSTGRES_START_HINT: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`); longer ones are truncated.
const MAX_IDENTIFIER_LEN: usize = 63;

/// The start of the comment put on every database made by [`fresh_postgres_database`];
/// `scripts/services` (`jarvis_services_prune_databases`) matches it, keep the two in step.
const DATABASE_COMMENT_PREFIX: &str = "jarvis-tests fresh database, pid ";

/// The endpoint of the KMS-compatible server the tests use (`AWS_ENDPOINT_URL_KMS`).
///
/// The AWS SDK reads the same variable, so a provider built from the standard configuration
/// chain talks to this server too; the region and the (fake) credentials are in the standard
/// variables as well.
///
/// # Panics
///
/// If `AWS_ENDPOINT_URL_KMS` is unset or empty: the KMS-compatible server is missing, and the
/// message says to run the tests through `scripts/test` (or after `source scripts/services`).
pub fn kms_endpoint() -> String {
    match std::env::var("AWS_ENDPOINT_URL_KMS") {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint,
        _ => panic!(
            "AWS_ENDPOINT_URL_KMS is not set: the KMS-compatible server (moto) these tests \
             need is missing. Run the test suite through `scripts/test`, which starts it, or \
             start it in your shell first with `source scripts/services` (or \
             `eval \"$(scripts/services env)\"`)."
        ),
    }
}

/// The administrative URL of the PostgreSQL server the tests use: `JARVIS_TEST_DATABASE_URL`
/// if set and not empty, else [`DEFAULT_POSTGRES_ADMIN_URL`].
///
/// Tests use it to create their own databases (see [`fresh_postgres_database`]), not to store
/// rows.
pub fn postgres_admin_url() -> String {
    match std::env::var("JARVIS_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => DEFAULT_POSTGRES_ADMIN_URL.to_owned(),
    }
}

/// Creates a new, empty PostgreSQL database with a unique name and returns its URL.
///
/// The name is `prefix` (lower-cased, characters other than ASCII letters, digits and `_`
/// replaced by `_`, shortened if needed), then the process id, a per-process counter and a
/// random suffix, so that tests in parallel processes and in one process never share a
/// database. It is created with `psql` against [`postgres_admin_url`] (the `psql` client must
/// be on `PATH`), and the returned URL is the administrative URL with its database replaced.
///
/// # Panics
///
/// If the database cannot be created, typically because PostgreSQL is not running: the message
/// names the server, gives `psql`'s error and says how to start PostgreSQL.
pub fn fresh_postgres_database(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let admin_url = postgres_admin_url();
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        panic!(
            "JARVIS_TEST_DATABASE_URL must be a postgres:// URL, got `{}`",
            redact_password(&admin_url)
        );
    }
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = database_name(prefix, std::process::id(), counter, random_suffix(counter));

    let create = format!("CREATE DATABASE \"{name}\"");
    let comment = format!(
        "COMMENT ON DATABASE \"{name}\" IS '{DATABASE_COMMENT_PREFIX}{}'",
        std::process::id()
    );
    // Concurrent CREATE DATABASE statements copy the same template; PostgreSQL refuses one while
    // another session is connected to the template, so that error is retried briefly.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let output = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &admin_url])
            .args(["-c", &create, "-c", &comment])
            .env("PGCONNECT_TIMEOUT", "10")
            .output();
        let output = match output {
            Ok(output) => output,
            Err(error) if error.kind() == ErrorKind::NotFound => panic!(
                "cannot create a PostgreSQL test database: the `psql` client is not on PATH \
                 (install postgresql-client), and the tests need a PostgreSQL server at {}",
                redact_password(&admin_url)
            ),
            Err(error) => panic!("cannot run `psql` to create a PostgreSQL test database: {error}"),
        };
        if output.status.success() {
            return with_database(&admin_url, &name);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if attempt < 10 && stderr.contains("is being accessed by other users") {
            std::thread::sleep(Duration::from_millis(100 * attempt));
            continue;
        }
        panic!(
            "could not create the PostgreSQL test database `{name}` on {url} ({status}): {err}\n\
             These tests need a running PostgreSQL server (by default the local cluster at \
             127.0.0.1:5432, user `postgres`, trust authentication; another server can be set \
             with JARVIS_TEST_DATABASE_URL). Start the local one with `{POSTGRES_START_HINT}`, \
             or run the suite through `scripts/test` (or after `source scripts/services`), \
             which starts it.",
            url = redact_password(&admin_url),
            status = output.status,
            err = stderr.trim(),
        );
    }
}

/// A database name from its parts: `<prefix>_<pid>_<counter>_<suffix>`, lower case, only
/// `[a-z0-9_]`, starting with a letter, at most [`MAX_IDENTIFIER_LEN`] bytes.
fn database_name(prefix: &str, pid: u32, counter: u64, suffix: u32) -> String {
    let tail = format!("_{pid}_{counter}_{suffix:08x}");
    let mut head: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if !head.starts_with(|c: char| c.is_ascii_lowercase()) {
        head.insert(0, 't');
    }
    head.truncate(MAX_IDENTIFIER_LEN.saturating_sub(tail.len()).max(1));
    head + &tail
}

/// 32 bits that differ between processes and calls (std's randomly keyed hasher over the time).
fn random_suffix(counter: u64) -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let hash = RandomState::new().hash_one((nanos, counter, std::process::id()));
    // Folding the 64-bit hash to the 32 bits the name keeps.
    (hash ^ (hash >> 32)) as u32
}

/// `url` with its path (the database) replaced by `/<database>`; any query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |slash| authority + slash);
    let mut out = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` with the password, if any, replaced by `***` (for messages).
fn redact_password(url: &str) -> String {
    let authority = url.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let rest = &url[authority..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..authority], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_safe_identifiers() {
        assert_eq!(
            database_name("Cache-Test", 42, 7, 0xab),
            "cache_test_42_7_000000ab"
        );
        assert_eq!(database_name("1st", 1, 0, 0), "t1st_1_0_00000000");
        assert_eq!(database_name("", 1, 0, 0), "t_1_0_00000000");
        let long = database_name(&"x".repeat(100), u32::MAX, u64::MAX, u32::MAX);
        assert!(long.len() <= MAX_IDENTIFIER_LEN, "{long}");
        assert!(long.ends_with(&format!("_{}_{}_ffffffff", u32::MAX, u64::MAX)));
    }

    #[test]
    fn database_replaced_in_urls() {
        assert_eq!(
            with_database(DEFAULT_POSTGRES_ADMIN_URL, "db1"),
            "postgres://postgres@127.0.0.1:5432/db1"
        );
        assert_eq!(with_database("postgres://h", "db1"), "postgres://h/db1");
        assert_eq!(
            with_database("postgresql://u:p@h:1/postgres?sslmode=disable", "db1"),
            "postgresql://u:p@h:1/db1?sslmode=disable"
        );
    }

    #[test]
    fn passwords_redacted() {
        assert_eq!(
            redact_password("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_password(DEFAULT_POSTGRES_ADMIN_URL),
            DEFAULT_POSTGRES_ADMIN_URL
        );
    }
}
