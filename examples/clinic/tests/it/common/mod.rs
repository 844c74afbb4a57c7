//! What the clinic's tests share: `clinic-ops` with none of the test process's configuration
//! variables, and its output.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

pub use jarvis_tests::binary::{assert_success as assert_ok, text};

/// `clinic-ops args` in `dir`, with the local key file `dir/master.key` and `DATABASE_URL`
/// set to `url` (see `jarvis_tests::binary::command`).
pub fn ops_command(dir: &Path, url: &str, args: &[&str]) -> Command {
    let key_file = dir.join("master.key");
    let key_file = key_file.to_string_lossy();
    jarvis_tests::binary::command(
        env!("CARGO_BIN_EXE_clinic-ops"),
        dir,
        args,
        &[("DATABASE_URL", url), ("JARVIS_LOCAL_KEY_FILE", &key_file)],
    )
}
