//! The integration tests of `jarvis-cli`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod allow_list;
mod backup;
mod cli;
mod encrypt_existing;
mod faults;
mod generate;
mod kms_policy;
mod local_key;
mod pg_restart;
mod registration;
mod rotate;
mod schema_check;
mod secrets;
