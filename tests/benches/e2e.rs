//! End-to-end cost of column encryption against storing plaintext, on PostgreSQL and SQLite.
//!
//! For each backend, key provider and audit sink asked for, the bench makes a fresh database
//! (migrated with the jarvis migrations), plus a plaintext table
//! `bench_plain_users (id, email TEXT NOT NULL, created_at, updated_at)` with an index on
//! `email`, and measures, encrypted (through `jarvis_models::Store`) against plaintext
//! (through diesel on the same connection pool):
//!
//! 1. **insert**: N users in batches (`Store::create_users`, one transaction per batch; the
//!    plaintext side one multi-row `INSERT` per batch, which is what diesel does for a `Vec`);
//! 2. **select + decrypt**: every row, in keyset pages of the batch size
//!    (`Store::scan_users(after_id, limit)` against `WHERE id > $1 ORDER BY id LIMIT $2`),
//!    through a *fresh* `Encryptor` (cold data-key cache), so the phase pays the unwraps a
//!    newly started reader pays;
//! 3. **lookups**: 10,000 lookups of random existing emails, one at a time
//!    (`Store::find_user_by_email`, through the search hash, against `WHERE email = $1` on the
//!    indexed plaintext column).
//!
//! The two sides run interleaved, block by block (one batch, one page, 1,000 lookups), so a
//! change of load on the machine affects both alike. The select and the lookups run
//! `--passes` times (default 3; every select pass through a fresh reader) and each side
//! reports its median pass. The select's pages are also read as stored rows without
//! decrypting them, with and without the wrapped-key and hash columns, to show where its time
//! goes (the breakdown table). With the database audit sink
//! (`DbAudit`, what the application uses; the default) the audit rows are written off the
//! request path as in production, and each pass ends with `DbAudit::flush`, inside its
//! timing, so the rows it caused are all paid for by it.
//!
//! It also reports the key-provider calls of each phase (the encryptor's cache counters and,
//! for AWS KMS, the requests counted at the client), the bytes per row of the stored form
//! against the plaintext column, and the cost of the cryptography alone (`encrypt_row` /
//! `decrypt_rows` of the same N users without a database).
//!
//! `--scale` runs PostgreSQL at N = 10,000 and 100,000 (and 1,000,000 with
//! `--n-max 1000000`), each N and side in a child process of its own (this binary,
//! re-executed), to report rows/s and the peak resident memory (VmHWM) of each.
//!
//! ```sh
//! eval "$(scripts/services env)"
//! cargo bench -p jarvis-tests --bench e2e -- [--n 100000] [--backend postgres|sqlite|both] \
//!     [--provider kms|local|both] [--audit db|none|both] [--batch 1000] [--lookups 10000] \
//!     [--passes 3] [--keys vault|inline] [--pool 4] [--scale [--n-max 1000000]]
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use diesel::sql_types::BigInt;
use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, QueryableByName, Selectable};
use diesel::{SelectableHelper, sql_query};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use jarvis_crypt::{
    AuditSink, AwsKms, Encrypted, Encryptor, KeyProvider, KmsConnection, KmsOptions,
    LocalKeyProvider, NoAudit, SearchKey,
};
use jarvis_models::db::Conn;
use jarvis_models::models::UserRow;
use jarvis_models::{Database, DbAudit, Store, User};

diesel::table! {
    bench_plain_users (id) {
        id -> BigInt,
        email -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

#[derive(Insertable)]
#[diesel(table_name = bench_plain_users)]
struct NewPlainUser {
    email: String,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = bench_plain_users)]
#[allow(dead_code)] // read through black_box
struct PlainUser {
    id: i64,
    email: String,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// Connections of the application's pool, unless `--pool` says.
const POOL_SIZE: usize = 4;
const LOOKUP_BLOCK: usize = 1000;

// ---- options ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Kms,
    Local,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Kms => "kms",
            Provider::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audit {
    Db,
    None,
}

impl Audit {
    fn name(self) -> &'static str {
        match self {
            Audit::Db => "DbAudit",
            Audit::None => "NoAudit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Plain,
    Encrypted,
}

#[derive(Debug, Clone)]
struct Options {
    n: usize,
    batch: usize,
    lookups: usize,
    backends: Vec<Backend>,
    providers: Vec<Provider>,
    audits: Vec<Audit>,
    scale: bool,
    n_max: usize,
    /// Passes of the select and lookup phases; each side reports its median pass.
    passes: usize,
    /// Internal: run one side of one scale point and print a `SCALE_RESULT` line.
    child: Option<Side>,
    /// Data keys in the key vault (20-byte references; the seed's default), or inline.
    vault: bool,
    /// Connections of the application's pool (the key vault has a pool of its own).
    pool: usize,
}

const USAGE: &str = "usage: e2e [--n N] [--backend postgres|sqlite|both] \
    [--provider kms|local|both] [--audit db|none|both] [--batch B] [--lookups L] \
    [--passes P] [--keys vault|inline] [--pool C] [--scale [--n-max N]]";

fn parse_args() -> Options {
    let mut o = Options {
        n: 100_000,
        batch: 1000,
        lookups: 10_000,
        passes: 3,
        backends: vec![Backend::Postgres, Backend::Sqlite],
        providers: vec![Provider::Kms],
        audits: vec![Audit::Db],
        scale: false,
        n_max: 100_000,
        child: None,
        vault: true,
        pool: POOL_SIZE,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.replace(['_', ','], "").parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| panic!("{what} needs a positive number\n{USAGE}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--n" => o.n = number(args.next(), "--n"),
            "--batch" => o.batch = number(args.next(), "--batch"),
            "--lookups" => o.lookups = number(args.next(), "--lookups"),
            "--n-max" => o.n_max = number(args.next(), "--n-max"),
            "--passes" => o.passes = number(args.next(), "--passes").max(1),
            "--pool" => o.pool = number(args.next(), "--pool"),
            "--scale" => o.scale = true,
            "--backend" => {
                o.backends = match args.next().as_deref() {
                    Some("postgres") => vec![Backend::Postgres],
                    Some("sqlite") => vec![Backend::Sqlite],
                    Some("both") => vec![Backend::Postgres, Backend::Sqlite],
                    _ => panic!("--backend postgres|sqlite|both\n{USAGE}"),
                }
            }
            "--provider" => {
                o.providers = match args.next().as_deref() {
                    Some("kms") => vec![Provider::Kms],
                    Some("local") => vec![Provider::Local],
                    Some("both") => vec![Provider::Kms, Provider::Local],
                    _ => panic!("--provider kms|local|both\n{USAGE}"),
                }
            }
            "--audit" => {
                o.audits = match args.next().as_deref() {
                    Some("db") => vec![Audit::Db],
                    Some("none") => vec![Audit::None],
                    Some("both") => vec![Audit::Db, Audit::None],
                    _ => panic!("--audit db|none|both\n{USAGE}"),
                }
            }
            "--keys" => {
                o.vault = match args.next().as_deref() {
                    Some("vault") => true,
                    Some("inline") => false,
                    _ => panic!("--keys vault|inline\n{USAGE}"),
                }
            }
            "--child-scale" => {
                o.child = Some(match args.next().as_deref() {
                    Some("plain") => Side::Plain,
                    Some("encrypted") => Side::Encrypted,
                    _ => panic!("--child-scale plain|encrypted"),
                })
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    o
}

// ---- data ---------------------------------------------------------------------------------

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The i-th email: unique, about 28 bytes, in random order (so both indexes get random
/// inserts, as real emails do).
fn email(i: usize) -> String {
    let r = splitmix64(i as u64);
    format!("{:08x}.user{i}@example.com", r as u32)
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

// ---- set-up -------------------------------------------------------------------------------

struct Env {
    backend: Backend,
    db: Database,
    _dir: Option<tempfile::TempDir>,
    provider: Arc<dyn KeyProvider>,
    kms: Option<AwsKms>,
    search_key: Vec<u8>,
    /// The key vault of the database, when data keys go there.
    vault: Option<Arc<jarvis_models::DbKeyVault>>,
}

async fn set_up(backend: Backend, provider: Provider, vault: bool, pool: usize) -> Env {
    let (url, dir) = match backend {
        Backend::Postgres => (jarvis_tests::fresh_postgres_database("e2e_bench"), None),
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("bench.sqlite");
            (path.to_str().expect("utf-8 path").to_owned(), Some(dir))
        }
    };
    jarvis_models::db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, pool).await.expect("connect");
    let mut conn = db.get().await.expect("connection");
    match &mut conn {
        Conn::Postgres(c) => c
            .batch_execute(
                "CREATE TABLE bench_plain_users (
                    id BIGSERIAL PRIMARY KEY,
                    email TEXT NOT NULL,
                    created_at TIMESTAMP NOT NULL,
                    updated_at TIMESTAMP NOT NULL);
                 CREATE INDEX idx_bench_plain_users_email ON bench_plain_users (email);",
            )
            .await
            .expect("plaintext table"),
        Conn::Sqlite(c) => c
            .batch_execute(
                "CREATE TABLE bench_plain_users (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    email TEXT NOT NULL,
                    created_at TIMESTAMP NOT NULL,
                    updated_at TIMESTAMP NOT NULL);
                 CREATE INDEX idx_bench_plain_users_email ON bench_plain_users (email);",
            )
            .await
            .expect("plaintext table"),
    }
    drop(conn);
    let (provider, kms): (Arc<dyn KeyProvider>, _) = match provider {
        Provider::Local => (Arc::new(LocalKeyProvider::generate()), None),
        Provider::Kms => {
            let connection = KmsConnection::from_env(KmsOptions {
                endpoint_url: Some(jarvis_tests::kms_endpoint()),
                ..KmsOptions::default()
            })
            .await
            .expect("KMS connection");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let env = format!("e2e-{}-{nanos}", std::process::id());
            let arn = connection
                .ensure_key(&env, None)
                .await
                .expect("KMS key set-up")
                .key_arn;
            let kms = AwsKms::new(connection, &arn).await.expect("AWS KMS");
            (Arc::new(kms.clone()), Some(kms))
        }
    };
    let vault = match vault {
        true => Some(Arc::new(
            jarvis_models::DbKeyVault::connect(&url)
                .await
                .expect("key vault"),
        )),
        false => None,
    };
    Env {
        backend,
        db,
        _dir: dir,
        provider,
        kms,
        search_key: SearchKey::generate().expose_secret().to_vec(),
        vault,
    }
}

impl Env {
    /// A new encryptor (cold cache) over the provider and the one search key.
    fn encryptor(&self) -> Encryptor {
        let builder = Encryptor::builder(Arc::clone(&self.provider))
            .search_key(SearchKey::new(self.search_key.clone()).expect("search key"));
        match &self.vault {
            Some(vault) => builder.key_vault(vault.clone()).build(),
            None => builder.build(),
        }
    }

    fn store(&self, audit: &Sink) -> Store {
        let sink: Arc<dyn AuditSink> = match audit {
            Sink::Db(a) => Arc::new(a.clone()),
            Sink::None => Arc::new(NoAudit),
        };
        Store::new(self.db.clone(), self.encryptor(), sink)
    }

    fn kms_requests(&self) -> Kms {
        self.kms.as_ref().map_or(Kms::default(), |k| {
            let r = k.connection().requests();
            Kms {
                generate: r.generate_data_key,
                decrypt: r.decrypt,
                other: r.re_encrypt + r.other,
            }
        })
    }
}

enum Sink {
    Db(DbAudit),
    None,
}

impl Sink {
    async fn flush(&self) {
        if let Sink::Db(a) = self {
            a.flush().await;
        }
    }
}

// ---- counters -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Kms {
    generate: u64,
    decrypt: u64,
    other: u64,
}

impl Kms {
    fn since(self, before: Kms) -> Kms {
        Kms {
            generate: self.generate - before.generate,
            decrypt: self.decrypt - before.decrypt,
            other: self.other - before.other,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    generate: u64,
    unwrap: u64,
    kms: Kms,
}

fn calls(enc: &Encryptor, env: &Env) -> Calls {
    let s = enc.stats();
    Calls {
        generate: s.generate_calls,
        unwrap: s.unwrap_calls,
        kms: env.kms_requests(),
    }
}

impl Calls {
    fn since(self, before: Calls) -> Calls {
        Calls {
            generate: self.generate - before.generate,
            unwrap: self.unwrap - before.unwrap,
            kms: self.kms.since(before.kms),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    name: &'static str,
    unit: &'static str,
    ops: usize,
    encrypted: Duration,
    plain: Duration,
    calls: Calls,
    /// The select only: the same pages read as stored rows without decrypting them.
    breakdown: Option<Breakdown>,
    /// Over the passes: the fastest and slowest pass of each side (encrypted, plaintext).
    spread: Option<Spread>,
}

/// The fastest and the slowest pass of each side.
#[derive(Debug, Clone, Copy)]
struct Spread {
    passes: usize,
    encrypted: (Duration, Duration),
    plain: (Duration, Duration),
}

/// Where the select's time goes: the stored rows read and decoded but not decrypted, with
/// and without the wrapped-key and search-hash columns.
#[derive(Debug, Clone, Copy)]
struct Breakdown {
    /// `id`, ciphertext, IV, tag and the two timestamps.
    lean: Duration,
    /// Every column of `UserRow` (what `scan_users` reads).
    stored: Duration,
}

impl Phase {
    fn ratio(&self) -> f64 {
        self.encrypted.as_secs_f64() / self.plain.as_secs_f64()
    }

    /// The median pass of each side (and of each breakdown read); the provider calls of the
    /// first pass (every pass starts with a cold cache, so they are alike).
    fn median(passes: Vec<Phase>) -> Phase {
        fn mid(mut v: Vec<Duration>) -> Duration {
            v.sort();
            v[v.len() / 2]
        }
        let first = passes[0];
        let breakdown = first.breakdown.map(|_| Breakdown {
            lean: mid(passes
                .iter()
                .filter_map(|p| p.breakdown.map(|b| b.lean))
                .collect()),
            stored: mid(passes
                .iter()
                .filter_map(|p| p.breakdown.map(|b| b.stored))
                .collect()),
        });
        let range = |v: Vec<Duration>| {
            let min = v.iter().min().copied().unwrap_or_default();
            let max = v.iter().max().copied().unwrap_or_default();
            (min, max)
        };
        Phase {
            encrypted: mid(passes.iter().map(|p| p.encrypted).collect()),
            plain: mid(passes.iter().map(|p| p.plain).collect()),
            breakdown,
            spread: Some(Spread {
                passes: passes.len(),
                encrypted: range(passes.iter().map(|p| p.encrypted).collect()),
                plain: range(passes.iter().map(|p| p.plain).collect()),
            }),
            ..first
        }
    }
}

fn rate(ops: usize, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64()
}

// ---- the phases ---------------------------------------------------------------------------

async fn insert_plain(db: &Database, emails: Vec<String>) {
    let at = now();
    let rows: Vec<NewPlainUser> = emails
        .into_iter()
        .map(|email| NewPlainUser {
            email,
            created_at: at,
            updated_at: at,
        })
        .collect();
    let mut conn = db.get().await.expect("connection");
    match &mut conn {
        Conn::Postgres(c) => {
            diesel::insert_into(bench_plain_users::table)
                .values(&rows)
                .execute(&mut **c)
                .await
                .expect("plaintext insert");
        }
        // diesel-async has no multi-row insert on SQLite; diesel's own (one statement for
        // the batch) runs on the connection's blocking thread.
        Conn::Sqlite(c) => {
            c.spawn_blocking(move |c| {
                for chunk in rows.chunks(1000) {
                    diesel::RunQueryDsl::execute(
                        diesel::insert_into(bench_plain_users::table).values(chunk),
                        c,
                    )?;
                }
                Ok(())
            })
            .await
            .expect("plaintext insert");
        }
    }
}

async fn scan_plain(db: &Database, after: i64, limit: i64) -> Vec<PlainUser> {
    let mut conn = db.get().await.expect("connection");
    jarvis_models::with_conn!(&mut conn, |c| bench_plain_users::table
        .filter(bench_plain_users::id.gt(after))
        .order(bench_plain_users::id)
        .limit(limit)
        .select(PlainUser::as_select())
        .load(c)
        .await
        .expect("plaintext select"))
}

/// The stored rows of a page, decoded (lengths checked) but not decrypted.
async fn scan_stored(db: &Database, after: i64, limit: i64) -> Vec<UserRow> {
    use jarvis_models::schema::users;
    let mut conn = db.get().await.expect("connection");
    jarvis_models::with_conn!(&mut conn, |c| users::table
        .filter(users::id.gt(after))
        .order(users::id)
        .limit(limit)
        .select(UserRow::as_select())
        .load(c)
        .await
        .expect("stored-row select"))
}

/// `id`, ciphertext, IV, tag and timestamps of a page: the stored rows without the wrapped
/// data key and the search hash.
type Lean = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    NaiveDateTime,
    NaiveDateTime,
);

async fn scan_lean(db: &Database, after: i64, limit: i64) -> Vec<Lean> {
    use jarvis_models::schema::users;
    let mut conn = db.get().await.expect("connection");
    jarvis_models::with_conn!(&mut conn, |c| users::table
        .filter(users::id.gt(after))
        .order(users::id)
        .limit(limit)
        .select((
            users::id,
            users::encrypted_email,
            users::email_iv,
            users::email_auth_tag,
            users::created_at,
            users::updated_at
        ))
        .load(c)
        .await
        .expect("lean select"))
}

async fn find_plain(db: &Database, email: &str) -> Option<PlainUser> {
    let mut conn = db.get().await.expect("connection");
    let found: Vec<PlainUser> = jarvis_models::with_conn!(&mut conn, |c| bench_plain_users::table
        .filter(bench_plain_users::email.eq(email))
        .select(PlainUser::as_select())
        .load(c)
        .await
        .expect("plaintext lookup"));
    found.into_iter().next()
}

async fn phase_insert(
    env: &Env,
    store: &Store,
    sink: &Sink,
    emails: &[String],
    batch: usize,
    side: Option<Side>,
) -> Phase {
    let before = calls(store.encryptor(), env);
    let (mut encrypted, mut plain) = (Duration::ZERO, Duration::ZERO);
    for chunk in emails.chunks(batch) {
        if side != Some(Side::Encrypted) {
            let rows = chunk.to_vec();
            let t = Instant::now();
            insert_plain(&env.db, rows).await;
            plain += t.elapsed();
        }
        if side != Some(Side::Plain) {
            let rows = chunk.to_vec();
            let t = Instant::now();
            let users = store.create_users(rows).await.expect("create_users");
            encrypted += t.elapsed();
            assert_eq!(users.len(), chunk.len());
        }
    }
    // The audit rows of the pass, written by DbAudit off the request path meanwhile: the
    // rest is flushed inside the timing, so the pass pays all of it.
    let t = Instant::now();
    sink.flush().await;
    encrypted += t.elapsed();
    Phase {
        name: "insert",
        unit: "rows/s",
        ops: emails.len(),
        encrypted,
        plain,
        calls: calls(store.encryptor(), env).since(before),
        breakdown: None,
        spread: None,
    }
}

async fn phase_select(
    env: &Env,
    reader: &Store,
    sink: &Sink,
    emails: &[String],
    page: usize,
    side: Option<Side>,
) -> Phase {
    let before = calls(reader.encryptor(), env);
    let (mut encrypted, mut plain) = (Duration::ZERO, Duration::ZERO);
    let (mut after_plain, mut after_enc) = (0i64, 0i64);
    let (mut seen_plain, mut seen_enc) = (0usize, 0usize);
    // The breakdown reads run in the main benchmark only, not in the scale children.
    let mut breakdown = side.is_none().then_some(Breakdown {
        lean: Duration::ZERO,
        stored: Duration::ZERO,
    });
    let (mut after_lean, mut after_stored) = (0i64, 0i64);
    let limit = page as i64;
    loop {
        let mut done = true;
        if side != Some(Side::Encrypted) {
            let t = Instant::now();
            let rows = scan_plain(&env.db, after_plain, limit).await;
            plain += t.elapsed();
            if let Some(last) = rows.last() {
                after_plain = last.id;
                for (k, row) in rows.iter().enumerate() {
                    debug_assert_eq!(row.email, emails[seen_plain + k]);
                }
                seen_plain += rows.len();
                done = false;
            }
            black_box(rows);
        }
        if side != Some(Side::Plain) {
            let t = Instant::now();
            let users = reader
                .scan_users(after_enc, limit)
                .await
                .expect("scan_users");
            encrypted += t.elapsed();
            if let Some(last) = users.last() {
                after_enc = last.id;
                // The users were inserted in order: the k-th row has the k-th email.
                let first = &users[0];
                assert_eq!(first.email, emails[seen_enc], "decrypted email");
                seen_enc += users.len();
                done = false;
            }
            black_box(users);
        }
        if let Some(b) = breakdown.as_mut() {
            let t = Instant::now();
            let rows = scan_lean(&env.db, after_lean, limit).await;
            b.lean += t.elapsed();
            if let Some(last) = rows.last() {
                after_lean = last.0;
            }
            black_box(rows);
            let t = Instant::now();
            let rows = scan_stored(&env.db, after_stored, limit).await;
            b.stored += t.elapsed();
            if let Some(last) = rows.last() {
                after_stored = last.id;
            }
            black_box(rows);
        }
        if done {
            break;
        }
    }
    if side != Some(Side::Encrypted) {
        assert_eq!(seen_plain, emails.len(), "plaintext rows read");
    }
    if side != Some(Side::Plain) {
        assert_eq!(seen_enc, emails.len(), "encrypted rows read");
    }
    let t = Instant::now();
    sink.flush().await;
    encrypted += t.elapsed();
    Phase {
        name: "select+decrypt",
        unit: "rows/s",
        ops: emails.len(),
        encrypted,
        plain,
        calls: calls(reader.encryptor(), env).since(before),
        breakdown,
        spread: None,
    }
}

async fn phase_lookup(
    env: &Env,
    reader: &Store,
    sink: &Sink,
    emails: &[String],
    lookups: usize,
) -> Phase {
    let targets: Vec<&str> = (0..lookups)
        .map(|i| emails[(splitmix64(0xABCD + i as u64) % emails.len() as u64) as usize].as_str())
        .collect();
    let before = calls(reader.encryptor(), env);
    let (mut encrypted, mut plain) = (Duration::ZERO, Duration::ZERO);
    for block in targets.chunks(LOOKUP_BLOCK) {
        let t = Instant::now();
        for &email in block {
            let found = find_plain(&env.db, email).await.expect("plaintext row");
            debug_assert_eq!(found.email, email);
            black_box(found);
        }
        plain += t.elapsed();
        let t = Instant::now();
        for &email in block {
            let found = reader
                .find_user_by_email(email)
                .await
                .expect("find_user_by_email")
                .expect("user found");
            debug_assert_eq!(found.email, email);
            black_box(found);
        }
        encrypted += t.elapsed();
    }
    let t = Instant::now();
    sink.flush().await;
    encrypted += t.elapsed();
    Phase {
        name: "lookup by email",
        unit: "lookups/s",
        ops: lookups,
        encrypted,
        plain,
        calls: calls(reader.encryptor(), env).since(before),
        breakdown: None,
        spread: None,
    }
}

/// The cryptography alone: `encrypt_row` and `decrypt_rows` of the N users, no database.
async fn crypto_only(env: &Env, emails: &[String], batch: usize) -> (Duration, Duration, Duration) {
    let enc = env.encryptor();
    let at = now();
    let users: Vec<User> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| User {
            id: i as i64 + 1,
            email: e.clone(),
            created_at: at,
            updated_at: at,
        })
        .collect();
    // The first encrypt fetches the data key: not counted.
    users[0].encrypt_row(&enc).await.expect("encrypt_row");
    let t = Instant::now();
    let mut rows: Vec<UserRow> = Vec::with_capacity(users.len());
    for user in &users {
        rows.push(user.encrypt_row(&enc).await.expect("encrypt_row"));
    }
    let encrypt = t.elapsed();
    // One lookup's cryptography: the search hash of the value, and one row decrypted.
    let lookups = rows.len().min(10_000);
    let t = Instant::now();
    for (row, email) in rows.iter().zip(emails).take(lookups) {
        black_box(User::email_search(&enc, email).expect("search hash"));
        black_box(
            User::decrypt_rows(vec![row.clone()], &enc)
                .await
                .expect("decrypt_rows"),
        );
    }
    let lookup = t.elapsed() / lookups.max(1) as u32;
    let mut decrypt = Duration::ZERO;
    let mut rows = rows.into_iter();
    loop {
        let page: Vec<UserRow> = rows.by_ref().take(batch).collect();
        if page.is_empty() {
            break;
        }
        let t = Instant::now();
        let out = User::decrypt_rows(page, &enc).await.expect("decrypt_rows");
        decrypt += t.elapsed();
        black_box(out);
    }
    (encrypt, decrypt, lookup)
}

// ---- bytes per row ------------------------------------------------------------------------

#[derive(QueryableByName, Debug, Default, Clone, Copy)]
struct Sizes {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    ciphertext: i64,
    #[diesel(sql_type = BigInt)]
    iv: i64,
    #[diesel(sql_type = BigInt)]
    tag: i64,
    #[diesel(sql_type = BigInt)]
    data_key: i64,
    #[diesel(sql_type = BigInt)]
    hash: i64,
    #[diesel(sql_type = BigInt)]
    plain_rows: i64,
    #[diesel(sql_type = BigInt)]
    plain: i64,
    /// Table + indexes + TOAST (PostgreSQL only; 0 on SQLite).
    #[diesel(sql_type = BigInt)]
    users_total: i64,
    #[diesel(sql_type = BigInt)]
    plain_total: i64,
}

async fn sizes(env: &Env) -> Sizes {
    let mut conn = env.db.get().await.expect("connection");
    let (len, text, totals) = match env.backend {
        Backend::Postgres => (
            "octet_length",
            "octet_length(email)",
            "pg_total_relation_size('users')::BIGINT AS users_total,
             pg_total_relation_size('bench_plain_users')::BIGINT AS plain_total",
        ),
        Backend::Sqlite => (
            "length",
            "length(CAST(email AS BLOB))",
            "0 AS users_total, 0 AS plain_total",
        ),
    };
    let sql = format!(
        "SELECT
           (SELECT COUNT(*) FROM users) AS rows,
           (SELECT COALESCE(SUM({len}(encrypted_email)), 0) FROM users) AS ciphertext,
           (SELECT COALESCE(SUM({len}(email_iv)), 0) FROM users) AS iv,
           (SELECT COALESCE(SUM({len}(email_auth_tag)), 0) FROM users) AS tag,
           (SELECT COALESCE(SUM({len}(email_data_key)), 0) FROM users) AS data_key,
           (SELECT COALESCE(SUM({len}(email_hash)), 0) FROM users) AS hash,
           (SELECT COUNT(*) FROM bench_plain_users) AS plain_rows,
           (SELECT COALESCE(SUM({text}), 0) FROM bench_plain_users) AS plain,
           {totals}"
    );
    let sql = match env.backend {
        // SUM of integers is NUMERIC on PostgreSQL: cast every column to BIGINT.
        Backend::Postgres => format!(
            "SELECT rows::BIGINT AS rows, ciphertext::BIGINT AS ciphertext, iv::BIGINT AS iv,
                    tag::BIGINT AS tag, data_key::BIGINT AS data_key, hash::BIGINT AS hash,
                    plain_rows::BIGINT AS plain_rows, plain::BIGINT AS plain,
                    users_total, plain_total FROM ({sql}) AS s"
        ),
        Backend::Sqlite => sql,
    };
    let mut out: Vec<Sizes> = jarvis_models::with_conn!(&mut conn, |c| sql_query(sql.as_str())
        .load(c)
        .await
        .expect("sizes"));
    out.pop().unwrap_or_default()
}

// ---- one configuration --------------------------------------------------------------------

struct Report {
    backend: Backend,
    provider: Provider,
    audit: Audit,
    phases: Vec<Phase>,
    sizes: Sizes,
    crypto: (Duration, Duration, Duration),
    audit_written: Option<(u64, u64)>,
}

async fn run(
    opts: &Options,
    backend: Backend,
    provider: Provider,
    audit: Audit,
    emails: &[String],
) -> Report {
    eprintln!(
        "[e2e] {} / {} / {}: N = {}, batch {}, {} lookups",
        backend.name(),
        provider.name(),
        audit.name(),
        emails.len(),
        opts.batch,
        opts.lookups
    );
    let env = set_up(backend, provider, opts.vault, opts.pool).await;
    let sink = match audit {
        Audit::Db => Sink::Db(DbAudit::start(env.db.clone())),
        Audit::None => Sink::None,
    };
    let writer = env.store(&sink);
    let insert = phase_insert(&env, &writer, &sink, emails, opts.batch, None).await;
    eprintln!("[e2e]   insert done");
    let mut selects = Vec::new();
    let mut reader = None;
    for _ in 0..opts.passes {
        // A reader started after the writes: a cold data-key cache, in every pass.
        let fresh = env.store(&sink);
        selects.push(phase_select(&env, &fresh, &sink, emails, opts.batch, None).await);
        reader = Some(fresh);
    }
    let reader = reader.expect("at least one pass");
    let select = Phase::median(selects);
    eprintln!("[e2e]   select done ({} passes)", opts.passes);
    let mut lookups = Vec::new();
    for _ in 0..opts.passes {
        lookups.push(phase_lookup(&env, &reader, &sink, emails, opts.lookups).await);
    }
    let lookup = Phase::median(lookups);
    eprintln!("[e2e]   lookups done ({} passes)", opts.passes);
    let sizes = sizes(&env).await;
    let crypto = crypto_only(&env, emails, opts.batch).await;
    let audit_written = match &sink {
        Sink::Db(a) => {
            a.shutdown().await;
            Some((a.written(), a.dropped()))
        }
        Sink::None => None,
    };
    Report {
        backend,
        provider,
        audit,
        phases: vec![insert, select, lookup],
        sizes,
        crypto,
        audit_written,
    }
}

// ---- output -------------------------------------------------------------------------------

fn print_reports(opts: &Options, reports: &[Report]) {
    println!();
    println!(
        "N = {}, batch/page size {}, {} lookups; select and lookups: median of {} passes; pool of {} connections; tokio multi-thread runtime; data keys {}; {} build",
        opts.n,
        opts.batch,
        opts.lookups,
        opts.passes,
        opts.pool,
        if opts.vault {
            "in the key vault (20-byte references)"
        } else {
            "inline (wrapped key in every value)"
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        }
    );
    println!();
    println!(
        "| phase | backend | provider | audit | encrypted | plaintext | ratio (enc/plain time) |"
    );
    println!("|---|---|---|---|---:|---:|---:|");
    for r in reports {
        for p in &r.phases {
            println!(
                "| {} | {} | {} | {} | {:.0} {} | {:.0} {} | {:.2}x |",
                p.name,
                r.backend.name(),
                r.provider.name(),
                r.audit.name(),
                rate(p.ops, p.encrypted),
                p.unit,
                rate(p.ops, p.plain),
                p.unit,
                p.ratio()
            );
        }
    }
    println!();
    println!("Every pass (rows/s or lookups/s: slowest / median / fastest pass):");
    println!();
    println!(
        "| phase | backend | provider | audit | passes | encrypted | plaintext | ratio at the median |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|");
    for r in reports {
        for p in &r.phases {
            let Some(spread) = p.spread else { continue };
            println!(
                "| {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2}x |",
                p.name,
                r.backend.name(),
                r.provider.name(),
                r.audit.name(),
                spread.passes,
                rate(p.ops, spread.encrypted.1),
                rate(p.ops, p.encrypted),
                rate(p.ops, spread.encrypted.0),
                rate(p.ops, spread.plain.1),
                rate(p.ops, p.plain),
                rate(p.ops, spread.plain.0),
                p.ratio()
            );
        }
    }
    println!();
    println!(
        "KMS requests per phase (encryptor cache counters; requests counted at the KMS client):"
    );
    println!();
    println!(
        "| backend | provider | audit | phase | provider generate calls | provider unwrap calls | KMS GenerateDataKey | KMS Decrypt | KMS other |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|");
    for r in reports {
        for p in &r.phases {
            let kms = |v: u64| {
                if r.provider == Provider::Kms {
                    v.to_string()
                } else {
                    "-".into()
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.backend.name(),
                r.provider.name(),
                r.audit.name(),
                p.name,
                p.calls.generate,
                p.calls.unwrap,
                kms(p.calls.kms.generate),
                kms(p.calls.kms.decrypt),
                kms(p.calls.kms.other),
            );
        }
    }
    println!();
    println!("Bytes per row (sums of octet_length/length over the table, divided by its rows):");
    println!();
    println!(
        "| backend | provider | ciphertext | iv | tag | data_key | hash | encrypted total | plaintext email | ratio | table+indexes per row, encrypted / plaintext |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports.iter().filter(|r| r.audit == reports[0].audit) {
        let s = r.sizes;
        let per = |v: i64, rows: i64| v as f64 / rows.max(1) as f64;
        let total = s.ciphertext + s.iv + s.tag + s.data_key + s.hash;
        let totals = if s.users_total > 0 {
            format!(
                "{:.0} / {:.0} B",
                per(s.users_total, s.rows),
                per(s.plain_total, s.plain_rows)
            )
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {} |",
            r.backend.name(),
            r.provider.name(),
            per(s.ciphertext, s.rows),
            per(s.iv, s.rows),
            per(s.tag, s.rows),
            per(s.data_key, s.rows),
            per(s.hash, s.rows),
            per(total, s.rows),
            per(s.plain, s.plain_rows),
            per(total, s.rows) / per(s.plain, s.plain_rows),
            totals,
        );
    }
    println!();
    println!(
        "Where the select time goes (the same pages, interleaved with the select; rows/s, and time against the plaintext select):"
    );
    println!();
    println!(
        "| backend | provider | audit | plaintext select | stored rows without data key and hash | stored rows (every column), not decrypted | select+decrypt |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in reports {
        for p in &r.phases {
            let Some(b) = p.breakdown else { continue };
            let cell = |d: Duration| {
                format!(
                    "{:.0} ({:.2}x)",
                    rate(p.ops, d),
                    d.as_secs_f64() / p.plain.as_secs_f64()
                )
            };
            println!(
                "| {} | {} | {} | {:.0} | {} | {} | {} |",
                r.backend.name(),
                r.provider.name(),
                r.audit.name(),
                rate(p.ops, p.plain),
                cell(b.lean),
                cell(b.stored),
                cell(p.encrypted),
            );
        }
    }
    println!();
    println!(
        "Cryptography alone (same N users, no database; encrypt_row per row, decrypt_rows in pages):"
    );
    println!();
    println!(
        "| backend | provider | audit | encrypt_row µs/row | decrypt_rows µs/row | lookup: search hash + decrypt_rows of 1 row, µs |"
    );
    println!("|---|---|---|---:|---:|---:|");
    for r in reports {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            r.backend.name(),
            r.provider.name(),
            r.audit.name(),
            r.crypto.0.as_secs_f64() * 1e6 / opts.n as f64,
            r.crypto.1.as_secs_f64() * 1e6 / opts.n as f64,
            r.crypto.2.as_secs_f64() * 1e6,
        );
    }
    let audited: Vec<_> = reports
        .iter()
        .filter_map(|r| r.audit_written.map(|w| (r, w)))
        .collect();
    if !audited.is_empty() {
        println!();
        for (r, (written, dropped)) in audited {
            println!(
                "DbAudit {} / {}: {written} audit rows written, {dropped} dropped",
                r.backend.name(),
                r.provider.name()
            );
        }
    }
}

// ---- scale --------------------------------------------------------------------------------

/// Peak resident set of this process (VmHWM), in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// One side of one scale point, in this (child) process: insert and select N rows on
/// PostgreSQL; prints `SCALE_RESULT <insert s> <select s> <VmHWM KiB>`.
async fn scale_child(opts: &Options, side: Side) {
    let emails: Vec<String> = (0..opts.n).map(email).collect();
    let env = set_up(Backend::Postgres, opts.providers[0], opts.vault, opts.pool).await;
    let sink = match opts.audits[0] {
        Audit::Db => Sink::Db(DbAudit::start(env.db.clone())),
        Audit::None => Sink::None,
    };
    let writer = env.store(&sink);
    let insert = phase_insert(&env, &writer, &sink, &emails, opts.batch, Some(side)).await;
    let reader = env.store(&sink);
    let select = phase_select(&env, &reader, &sink, &emails, opts.batch, Some(side)).await;
    if let Sink::Db(a) = &sink {
        a.shutdown().await;
    }
    let pick = |p: &Phase| match side {
        Side::Plain => p.plain,
        Side::Encrypted => p.encrypted,
    };
    println!(
        "SCALE_RESULT {} {} {}",
        pick(&insert).as_secs_f64(),
        pick(&select).as_secs_f64(),
        vm_hwm_kib()
    );
}

fn scale(opts: &Options) {
    let exe = std::env::current_exe().expect("current exe");
    let ns: Vec<usize> = [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= opts.n_max.max(10_000))
        .collect();
    println!();
    println!(
        "Scale, PostgreSQL, provider {}, {}, batch/page {}: each row one child process",
        opts.providers[0].name(),
        opts.audits[0].name(),
        opts.batch
    );
    println!();
    println!(
        "| N | side | insert rows/s | select(+decrypt) rows/s | peak RSS (VmHWM) MiB | insert ratio | select ratio |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in ns {
        let mut results = Vec::new();
        for label in ["plain", "encrypted"] {
            eprintln!("[e2e] scale N = {n}, {label}");
            let output = std::process::Command::new(&exe)
                .args(["--child-scale", label, "--n", &n.to_string()])
                .args(["--batch", &opts.batch.to_string()])
                .args(["--pool", &opts.pool.to_string()])
                .args(["--provider", opts.providers[0].name()])
                .args(["--keys", if opts.vault { "vault" } else { "inline" }])
                .args([
                    "--audit",
                    match opts.audits[0] {
                        Audit::Db => "db",
                        Audit::None => "none",
                    },
                ])
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run child");
            assert!(output.status.success(), "scale child failed");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("SCALE_RESULT "))
                .expect("SCALE_RESULT line");
            let v: Vec<f64> = line
                .split_whitespace()
                .map(|x| x.parse().expect("number"))
                .collect();
            results.push((label, v[0], v[1], v[2]));
        }
        let (plain_insert, plain_select) = (results[0].1, results[0].2);
        for (label, insert, select, hwm) in &results {
            let (ri, rs) = if *label == "encrypted" {
                (
                    format!("{:.2}x", insert / plain_insert),
                    format!("{:.2}x", select / plain_select),
                )
            } else {
                ("".into(), "".into())
            };
            println!(
                "| {n} | {label} | {:.0} | {:.0} | {:.1} | {ri} | {rs} |",
                n as f64 / insert,
                n as f64 / select,
                hwm / 1024.0,
            );
        }
    }
}

// ---- main ---------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let opts = parse_args();
    if let Some(side) = opts.child {
        scale_child(&opts, side).await;
        return;
    }
    if opts.scale {
        // The children run their own runtimes; this one only waits.
        tokio::task::block_in_place(|| scale(&opts));
        return;
    }
    let emails: Vec<String> = (0..opts.n).map(email).collect();
    let mut reports = Vec::new();
    for &backend in &opts.backends {
        for &provider in &opts.providers {
            for &audit in &opts.audits {
                reports.push(run(&opts, backend, provider, audit, &emails).await);
            }
        }
    }
    print_reports(&opts, &reports);
}
