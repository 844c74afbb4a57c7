//! The integration tests of `tests`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod blocking;
mod derive_postgres;
mod kms;
