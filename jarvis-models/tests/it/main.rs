//! The integration tests of `jarvis-models`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod encrypt_existing;
mod migrations;
mod rotate;
mod soak;
mod store;
mod vault;
