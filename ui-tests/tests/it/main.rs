//! The integration tests of `ui-tests`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod derive_options;
mod derive_sqlite;
mod ui;
