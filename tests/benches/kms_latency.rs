//! Latency of the AWS KMS provider's requests against the local KMS-compatible server (moto).
//!
//! Measures, one awaited call at a time, `GenerateDataKey` and `Decrypt` through
//! [`KeyProvider`] on [`AwsKms`], and for comparison `Encryptor::encrypt` of a 64-byte value
//! with a warm data-key cache (no KMS request) and a cold `Encryptor::decrypt` (a new
//! `Encryptor` each time, so each decrypt is one KMS `Decrypt`). Each operation gets
//! [`WARM_UP`] untimed calls, then `JARVIS_BENCH_ITERS` (default 200) timed ones; the table
//! shows median, p90 and mean in milliseconds, and the KMS requests the connection counted
//! during the timed calls, by operation, to show what each call costs in requests.
//!
//! ```sh
//! eval "$(scripts/services env)" && cargo bench -p jarvis-tests --bench kms_latency
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jarvis_crypt::{
    AwsKms, Binding, Encryptor, KeyProvider, KeyPurpose, KmsConnection, KmsOptions, KmsRequests,
};
use jarvis_tests::kms_endpoint;

/// Untimed calls before the timed ones, per operation.
const WARM_UP: usize = 20;

/// Timed calls per operation when `JARVIS_BENCH_ITERS` is not set.
const DEFAULT_ITERS: usize = 200;

/// The variable that sets the number of timed calls per operation.
const ITERS_VAR: &str = "JARVIS_BENCH_ITERS";

/// The value encrypted and decrypted: 64 bytes.
const FIELD: &[u8; 64] = b"ada.lovelace+analytical-engine@difference-engine.example.co.uk!!";

/// Timed calls per operation: `JARVIS_BENCH_ITERS`, or [`DEFAULT_ITERS`].
fn iterations() -> usize {
    match std::env::var(ITERS_VAR) {
        Ok(value) if !value.trim().is_empty() => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{ITERS_VAR} must be a positive integer, not {value:?}"),
        },
        _ => DEFAULT_ITERS,
    }
}

/// A unique environment name per run, so the run has a key (and alias) of its own.
fn unique_env() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{}-{nanos}", std::process::id())
}

/// KMS requests counted between two snapshots, by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Requests {
    generate_data_key: u64,
    decrypt: u64,
    re_encrypt: u64,
    other: u64,
}

impl Requests {
    fn between(before: KmsRequests, after: KmsRequests) -> Self {
        Requests {
            generate_data_key: after.generate_data_key - before.generate_data_key,
            decrypt: after.decrypt - before.decrypt,
            re_encrypt: after.re_encrypt - before.re_encrypt,
            other: after.other - before.other,
        }
    }

    fn total(&self) -> u64 {
        self.generate_data_key + self.decrypt + self.re_encrypt + self.other
    }
}

/// The result of one operation's timed calls.
#[derive(Debug)]
struct Row {
    label: &'static str,
    /// Sorted durations of the timed calls.
    samples: Vec<Duration>,
    /// Requests during the warm-up calls.
    warm_up: Requests,
    /// Requests during the timed calls.
    timed: Requests,
    /// KMS requests each timed call is expected to make.
    expected_per_call: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Row {
    /// The median (the mean of the two middle samples when their number is even).
    fn median(&self) -> f64 {
        let n = self.samples.len();
        if n % 2 == 1 {
            ms(self.samples[n / 2])
        } else {
            (ms(self.samples[n / 2 - 1]) + ms(self.samples[n / 2])) / 2.0
        }
    }

    /// A percentile by the nearest-rank method.
    fn percentile(&self, p: f64) -> f64 {
        let n = self.samples.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        ms(self.samples[rank.clamp(1, n) - 1])
    }

    fn mean(&self) -> f64 {
        self.samples.iter().copied().map(ms).sum::<f64>() / self.samples.len() as f64
    }

    fn per_call(&self) -> f64 {
        self.timed.total() as f64 / self.samples.len() as f64
    }

    fn as_expected(&self) -> bool {
        self.timed.total() == self.expected_per_call * self.samples.len() as u64
    }
}

/// Runs `op` [`WARM_UP`] times untimed, then `iters` times timed, one call at a time.
///
/// Each call first gets a fresh value from `prepare` (untimed); only the awaited `op` is
/// timed, and its output is dropped after the clock stops.
async fn measure<T, R>(
    label: &'static str,
    kms: &AwsKms,
    iters: usize,
    expected_per_call: u64,
    mut prepare: impl FnMut() -> T,
    mut op: impl AsyncFnMut(&T) -> R,
) -> Row {
    let start = kms.connection().requests();
    for _ in 0..WARM_UP {
        let input = prepare();
        black_box(op(&input).await);
    }
    let warmed = kms.connection().requests();
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let input = prepare();
        let t0 = Instant::now();
        let output = op(&input).await;
        samples.push(t0.elapsed());
        black_box(output);
    }
    let end = kms.connection().requests();
    samples.sort_unstable();
    Row {
        label,
        samples,
        warm_up: Requests::between(start, warmed),
        timed: Requests::between(warmed, end),
        expected_per_call,
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<32} {:>5} {:>10} {:>10} {:>10}   {:>7} {:>7} {:>7} {:>8} {:>8}",
        "operation",
        "n",
        "median ms",
        "p90 ms",
        "mean ms",
        "GenDK",
        "Decrypt",
        "other",
        "req/call",
        "expected",
    );
    println!("{}", "-".repeat(120));
    for row in rows {
        let other = row.timed.re_encrypt + row.timed.other;
        println!(
            "{:<32} {:>5} {:>10.4} {:>10.4} {:>10.4}   {:>7} {:>7} {:>7} {:>8.2} {:>8}{}",
            row.label,
            row.samples.len(),
            row.median(),
            row.percentile(90.0),
            row.mean(),
            row.timed.generate_data_key,
            row.timed.decrypt,
            other,
            row.per_call(),
            row.expected_per_call,
            if row.as_expected() { "" } else { "  MISMATCH" },
        );
    }
    println!();
    println!("KMS requests during the {WARM_UP} warm-up calls of each operation:");
    for row in rows {
        let w = row.warm_up;
        println!(
            "  {:<32} GenerateDataKey {:>3}, Decrypt {:>3}, other {:>3}",
            row.label,
            w.generate_data_key,
            w.decrypt,
            w.re_encrypt + w.other,
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let iters = iterations();
    let endpoint = kms_endpoint();
    let connection = KmsConnection::from_env(KmsOptions {
        endpoint_url: Some(endpoint.clone()),
        ..KmsOptions::default()
    })
    .await
    .expect("KMS connection");
    let env = unique_env();
    let arn = connection
        .ensure_key(&env, None)
        .await
        .expect("KMS key set-up")
        .key_arn;
    let kms = AwsKms::new(connection, &arn)
        .await
        .expect("AWS KMS provider");
    let provider: Arc<dyn KeyProvider> = Arc::new(kms.clone());
    let set_up = kms.connection().requests();

    println!("KMS latency against {endpoint}");
    println!("key {arn} (environment {env})");
    println!(
        "{iters} timed calls per operation after {WARM_UP} warm-up calls; tokio current-thread runtime; {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        },
    );
    println!(
        "set-up requests (ensure_key, DescribeKey): {} (all `other`)",
        set_up.total()
    );
    println!();

    let mut rows = Vec::new();

    // GenerateDataKey: one request per call. The last wrapped key feeds the Decrypt rows.
    rows.push(
        measure(
            "KMS GenerateDataKey",
            &kms,
            iters,
            1,
            || (),
            async |()| {
                kms.generate_data_key(KeyPurpose::Field)
                    .await
                    .expect("GenerateDataKey")
            },
        )
        .await,
    );
    let wrapped = kms
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("GenerateDataKey")
        .wrapped;

    // Decrypt of that wrapped key: one request per call (the provider caches nothing).
    rows.push(
        measure(
            "KMS Decrypt (unwrap_data_key)",
            &kms,
            iters,
            1,
            || (),
            async |()| {
                kms.unwrap_data_key(&wrapped, KeyPurpose::Field)
                    .await
                    .expect("Decrypt")
            },
        )
        .await,
    );

    // Encryptor::encrypt with a warm cache: the first warm-up call generates the data key,
    // the timed calls reuse it and make no request.
    let enc = Encryptor::builder(Arc::clone(&provider)).build();
    let binding = Binding::new("t", "c", 1i64);
    rows.push(
        measure(
            "Encryptor::encrypt 64 B (warm)",
            &kms,
            iters,
            0,
            || (),
            async |()| enc.encrypt(&binding, FIELD).await.expect("encrypt"),
        )
        .await,
    );
    let stored = enc.encrypt(&binding, FIELD).await.expect("encrypt");
    assert_eq!(
        enc.decrypt(&binding, &stored).await.expect("decrypt"),
        FIELD,
        "round trip"
    );

    // Encryptor::decrypt with a cold cache: a new Encryptor per call (built untimed), so each
    // decrypt unwraps the data key with one KMS Decrypt.
    rows.push(
        measure(
            "Encryptor::decrypt 64 B (cold)",
            &kms,
            iters,
            1,
            || Encryptor::builder(Arc::clone(&provider)).build(),
            async |cold: &Encryptor| cold.decrypt(&binding, &stored).await.expect("decrypt"),
        )
        .await,
    );

    print_table(&rows);
    let total = kms.connection().requests();
    println!();
    println!(
        "connection totals: GenerateDataKey {}, Decrypt {}, ReEncrypt {}, other {}, all {}",
        total.generate_data_key,
        total.decrypt,
        total.re_encrypt,
        total.other,
        total.total(),
    );
    if rows.iter().any(|row| !row.as_expected()) {
        println!(
            "WARNING: some timed calls did not make the expected number of KMS requests (retries?)"
        );
    }
}
