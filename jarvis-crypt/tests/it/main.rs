//! The integration tests of `jarvis-crypt`, in one test binary: each file below was a
//! binary of its own, and every binary links the whole dependency tree (about 100 MB each).

mod cache;
mod envelope;
mod hostile;
mod load;
mod local_provider;
mod located;
mod no_secrets_in_debug;
mod secret_hygiene;
mod stream;
mod vault;
mod wycheproof;
