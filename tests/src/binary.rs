//! Running an operations binary (`jarvis`, or an application's) from a test: with none of
//! the test process's configuration variables, so each test says its own, and with its
//! output shown when it fails.

use std::fmt::Display;
use std::path::Path;
use std::process::{Command, Output};

/// The variables by which the operations commands choose their database, keys, search key
/// and logging. A test's command inherits none of them.
pub const CONFIGURATION: [&str; 9] = [
    "DATABASE_URL",
    "KMS_KEY_ID",
    "KMS_DECRYPT_KEY_IDS",
    "ENCRYPTION_SEARCH_SALT",
    "JARVIS_SEARCH_KEY_FILE",
    "JARVIS_LOCAL_KEY_FILE",
    "JARVIS_LOCAL_MASTER_KEY",
    "JARVIS_DATA_KEY_MAX_VALUES",
    "RUST_LOG",
];

/// `program args` run in `dir`, without [`CONFIGURATION`] from the test process, with `vars`.
/// The KMS endpoint and the AWS region and credentials of the test services are inherited.
pub fn command(program: &str, dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).args(args);
    for var in CONFIGURATION {
        command.env_remove(var);
    }
    for (key, value) in vars {
        command.env(key, value);
    }
    command
}

/// Standard output, then standard error.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Standard output.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Panics, naming `what` and showing the output, unless the command succeeded.
#[track_caller]
pub fn assert_success(output: &Output, what: impl Display) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        text(output)
    );
}
