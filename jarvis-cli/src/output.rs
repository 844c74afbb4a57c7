//! Standard output that a closed reader cannot turn into a panic.

use std::io::{self, Write};

/// Exit status of a process whose standard output was closed under it: what a shell reports
/// for a command killed by `SIGPIPE` (128 + 13), as for other Unix tools in a pipeline.
pub(crate) const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes one line of results. When the reader has gone (`jarvis audit | head`), ends the
/// process with [`BROKEN_PIPE_STATUS`] and no message; any other write error ends it with
/// status 2 and says so on standard error. Jobs commit batch by batch, so ending here loses
/// nothing (the same holds for a kill at any point).
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{args}").and_then(|()| stdout.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}
