//! The clinic's operations binary: every `jarvis` command over its models, and its own
//! migrations applied by `migrate` beside the bookkeeping tables.

use clinic::{MIGRATIONS, Patient, Staff, Visit};

fn main() -> std::process::ExitCode {
    jarvis_cli::Jarvis::new()
        .model::<Patient>()
        .model::<Visit>()
        .model::<Staff>()
        .migrations(MIGRATIONS)
        .main()
}
