//! What the clinic's tests share: `clinic-ops` with the test process's jarvis variables
//! removed, and its output.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Command, Output};

/// `clinic-ops args` in `dir`, with the local key file `dir/master.key`, `DATABASE_URL` set
/// to `url`, and none of the key variables of the test process.
pub fn ops_command(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clinic-ops"));
    command.current_dir(dir).args(args);
    for var in [
        "KMS_KEY_ID",
        "JARVIS_LOCAL_MASTER_KEY",
        "KMS_DECRYPT_KEY_IDS",
        "ENCRYPTION_SEARCH_SALT",
        "JARVIS_SEARCH_KEY_FILE",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
        .env("DATABASE_URL", url)
        .env("JARVIS_LOCAL_KEY_FILE", dir.join("master.key"));
    command
}

/// Standard output and standard error, for messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn assert_ok(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed: {}", text(output));
}
