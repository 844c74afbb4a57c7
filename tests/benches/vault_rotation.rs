//! Master-key rotation and compaction with the key vault, on PostgreSQL through the local KMS
//! server: what `rotate --to-key` and `rotate --compact` cost in KMS calls, data rows written
//! and wall time.
//!
//! 1. `--users` users (default 1,000,000) written through `Store::create_users` with the key
//!    vault and `max_messages = --per-key` (default 100,000: ten data keys), then
//!    `rotate --to-key` to a second KMS key: the KMS `ReEncrypt` requests (one per vault key
//!    plus one per wrapped key of `jarvis_keys`), the data rows written (a checksum of every
//!    stored-form column of `users` before and after: none), the wall time.
//! 2. `--compact-users` users (default 100,000) written inline under the same number of data
//!    keys, then `rotate --compact`: vault rows made and KMS requests, per distinct inline key.
//!
//! ```sh
//! eval "$(scripts/services env)"
//! cargo bench -p jarvis-tests --bench vault_rotation -- [--users 1000000] [--per-key 100000] \
//!     [--compact-users 100000]
//! ```

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AwsKms, CacheLimits, Encryptor, KeyProvider, KmsConnection, KmsOptions, NoAudit, SearchKey,
};
use jarvis_db::jobs::{RotateMode, RotateOptions, rotate};
use jarvis_models::db::Conn;
use jarvis_models::{Database, DbKeyVault, Store};

struct Options {
    users: usize,
    per_key: u64,
    compact_users: usize,
}

fn parse_args() -> Options {
    let mut o = Options {
        users: 1_000_000,
        per_key: 100_000,
        compact_users: 100_000,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.replace(['_', ','], "").parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| panic!("{what} needs a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--users" => o.users = number(args.next(), "--users"),
            "--per-key" => o.per_key = number(args.next(), "--per-key") as u64,
            "--compact-users" => o.compact_users = number(args.next(), "--compact-users"),
            other => panic!("unknown argument {other:?}"),
        }
    }
    o
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Sum {
    #[diesel(sql_type = Text)]
    sum: String,
}

async fn count(db: &Database, sql: &str) -> i64 {
    let mut conn = db.get().await.expect("conn");
    let Conn::Postgres(c) = &mut conn else {
        panic!("PostgreSQL")
    };
    let rows: Vec<Count> = diesel::sql_query(sql).load(&mut **c).await.expect("count");
    rows[0].n
}

/// A checksum of every stored-form column of every user.
async fn checksum(db: &Database) -> String {
    let mut conn = db.get().await.expect("conn");
    let Conn::Postgres(c) = &mut conn else {
        panic!("PostgreSQL")
    };
    let rows: Vec<Sum> = diesel::sql_query(
        "SELECT md5(string_agg(md5(encrypted_email || email_iv || email_auth_tag \
         || email_data_key || email_hash), '' ORDER BY id)) AS sum FROM users",
    )
    .load(&mut **c)
    .await
    .expect("checksum");
    rows[0].sum.clone()
}

async fn kms_key(connection: &KmsConnection, name: &str) -> AwsKms {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let env = format!("{name}-{}-{nanos}", std::process::id());
    let arn = connection
        .ensure_key(&env, None)
        .await
        .expect("KMS key")
        .key_arn;
    AwsKms::new(connection.clone(), &arn)
        .await
        .expect("AWS KMS")
}

async fn seed(store: &Store, users: usize) {
    for start in (0..users).step_by(10_000) {
        let emails: Vec<String> = (start..(start + 10_000).min(users))
            .map(|i| format!("user{i}@example.com"))
            .collect();
        store.create_users(emails).await.expect("users");
    }
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let connection = KmsConnection::from_env(KmsOptions {
        endpoint_url: Some(jarvis_tests::kms_endpoint()),
        ..KmsOptions::default()
    })
    .await
    .expect("KMS connection");
    let old = kms_key(&connection, "vault-bench-old").await;
    let new = kms_key(&connection, "vault-bench-new").await;
    let limits = CacheLimits {
        max_messages: opts.per_key,
        ..CacheLimits::default()
    };

    // 1. rotate --to-key over references.
    let url = jarvis_tests::fresh_postgres_database("vault_bench");
    jarvis_models::db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 8).await.expect("db");
    let search = jarvis_models::keys::stored_search_key(&db, &old)
        .await
        .expect("search key");
    let vault = Arc::new(DbKeyVault::connect(&url).await.expect("vault"));
    let writer = Encryptor::builder(Arc::new(old.clone()))
        .search_key(search)
        .cache_limits(limits)
        .key_vault(vault.clone())
        .build();
    let started = Instant::now();
    seed(
        &Store::new(db.clone(), writer, Arc::new(NoAudit)),
        opts.users,
    )
    .await;
    let seeded = started.elapsed();
    let vault_keys = count(&db, "SELECT COUNT(*) AS n FROM jarvis_data_keys").await;
    let stored_keys = count(&db, "SELECT COUNT(*) AS n FROM jarvis_keys").await;
    let before = checksum(&db).await;
    let rotator = Encryptor::builder(Arc::new(old.clone()))
        .decrypt_with(Arc::new(new.clone()))
        .key_vault(vault.clone())
        .build();
    let to = new.master_key();
    let requests_before = connection.requests();
    let started = Instant::now();
    let report = rotate(
        &db,
        &rotator,
        &jarvis_models::models::seed_tables(),
        &RotateOptions::new(RotateMode::ToKey(to), Arc::new(NoAudit)),
        &|_| {},
    )
    .await
    .expect("rotate --to-key");
    let rotated_in = started.elapsed();
    let requests = connection.requests();
    let after = checksum(&db).await;
    println!();
    println!(
        "rotate --to-key: {} users written under {} vault keys ({} values per key) in {:.1} s",
        opts.users,
        vault_keys,
        opts.per_key,
        seeded.as_secs_f64()
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| KMS ReEncrypt requests | {} (vault keys {vault_keys} + jarvis_keys {stored_keys}) |",
        requests.re_encrypt - requests_before.re_encrypt
    );
    println!(
        "| KMS other requests (GenerateDataKey, Decrypt, set-up) | {} |",
        (requests.generate_data_key + requests.decrypt + requests.other)
            - (requests_before.generate_data_key + requests_before.decrypt + requests_before.other)
    );
    println!(
        "| vault keys re-wrapped | {} |",
        report.vault_keys_rewrapped
    );
    println!(
        "| data rows rotated by the job | {} |",
        report.rows_rotated()
    );
    println!(
        "| stored-form columns of users changed | {} |",
        if before == after {
            "no (checksum equal)"
        } else {
            "YES"
        }
    );
    println!(
        "| wall time of the rotation | {:.2} s |",
        rotated_in.as_secs_f64()
    );

    // 2. rotate --compact over inline values.
    let url = jarvis_tests::fresh_postgres_database("vault_bench_compact");
    jarvis_models::db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 8).await.expect("db");
    let search = jarvis_models::keys::stored_search_key(&db, &old)
        .await
        .expect("search key");
    let inline = Encryptor::builder(Arc::new(old.clone()))
        .search_key(search)
        .cache_limits(CacheLimits {
            max_messages: (opts.compact_users as u64 / 10).max(1),
            ..CacheLimits::default()
        })
        .build();
    seed(
        &Store::new(db.clone(), inline, Arc::new(NoAudit)),
        opts.compact_users,
    )
    .await;
    let distinct = count(&db, "SELECT COUNT(DISTINCT email_data_key) AS n FROM users").await;
    let compactor = Encryptor::builder(Arc::new(old.clone()))
        .search_key(SearchKey::generate())
        .key_vault(Arc::new(DbKeyVault::connect(&url).await.expect("vault")))
        .build();
    let requests_before = connection.requests();
    let started = Instant::now();
    let report = rotate(
        &db,
        &compactor,
        &jarvis_models::models::seed_tables(),
        &RotateOptions {
            batch_size: 1000,
            ..RotateOptions::new(RotateMode::Compact, Arc::new(NoAudit))
        },
        &|_| {},
    )
    .await
    .expect("rotate --compact");
    let compacted_in = started.elapsed();
    let requests = connection.requests();
    let vault_rows = count(&db, "SELECT COUNT(*) AS n FROM jarvis_data_keys").await;
    println!();
    println!(
        "rotate --compact: {} inline users under {distinct} distinct data keys",
        opts.compact_users
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| vault rows made | {vault_rows} |");
    println!(
        "| KMS ReEncrypt requests | {} |",
        requests.re_encrypt - requests_before.re_encrypt
    );
    println!(
        "| KMS Decrypt requests (the batches' verification, cold cache) | {} |",
        requests.decrypt - requests_before.decrypt
    );
    println!(
        "| rows rewritten (references) | {} |",
        report.rows_rotated()
    );
    println!("| wall time | {:.2} s |", compacted_in.as_secs_f64());
}
