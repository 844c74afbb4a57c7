//! The clinic's operations binary: every `jarvis` command over its models.

use clinic::{Patient, Visit};

fn main() -> std::process::ExitCode {
    jarvis_cli::Jarvis::new()
        .model::<Patient>()
        .model::<Visit>()
        .main()
}
