//! The integration tests of `clinic`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod common;
mod lifecycle;
mod ops;
mod schema;
