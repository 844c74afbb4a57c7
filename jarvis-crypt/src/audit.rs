//! Audit events: what was encrypted, decrypted, rotated, re-wrapped or backed up, where, under
//! which master key, how it ended and how long it took.
//!
//! An event names places (table, column, record ids) and keys (master key ids), never values:
//! it has no field that could hold plaintext, key material or a search hash. Record
//! operations emit one event each; bulk operations (listings, migration batches) one event per
//! batch with the record ids and their count. Sinks decide where events go; the diesel sink of
//! `jarvis-db` writes them to `encryption_audit_log` in batches, off the request path.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
#[cfg(doc)]
use crate::error::ErrorKind;

/// What an audited operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Values encrypted and written.
    Encrypt,
    /// Values read and decrypted.
    Decrypt,
    /// Values re-encrypted under fresh data keys.
    Rotate,
    /// Data keys re-wrapped under another master key.
    Rewrap,
    /// Search hashes recomputed under another root search key (or normalizer).
    Rehash,
    /// Plaintext columns migrated to their encrypted form.
    Migrate,
    /// Rows checked by decrypting them.
    Verify,
    /// An encrypted backup written.
    Backup,
    /// An encrypted backup restored.
    Restore,
}

impl Operation {
    /// The name stored in `operation_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::Rotate => "rotate",
            Operation::Rewrap => "rewrap",
            Operation::Rehash => "rehash",
            Operation::Migrate => "migrate",
            Operation::Verify => "verify",
            Operation::Backup => "backup",
            Operation::Restore => "restore",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audited operation.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// What was done.
    pub operation: Operation,
    /// The table, if the operation concerns one.
    pub table: Option<String>,
    /// The ciphertext column, if one.
    pub column: Option<String>,
    /// The records concerned (one for a record operation, all of a batch for a bulk one).
    pub record_ids: Vec<String>,
    /// The master key in use (an id, never key material).
    pub key_id: Option<String>,
    /// `None` on success, else the kind of the failure ([`ErrorKind::as_str`], or a kind of
    /// the caller's own such as `database`).
    pub error: Option<&'static str>,
    /// How long the operation took.
    pub duration: Duration,
}

impl AuditEvent {
    /// A successful event for `operation` on `table`, timed from `started`.
    pub fn new(operation: Operation, table: impl Into<Option<String>>, started: Instant) -> Self {
        AuditEvent {
            operation,
            table: table.into(),
            column: None,
            record_ids: Vec::new(),
            key_id: None,
            error: None,
            duration: started.elapsed(),
        }
    }

    /// The event of an operation that failed with an error of kind `kind`.
    pub fn failed(mut self, kind: &'static str) -> Self {
        self.error = Some(kind);
        self
    }

    /// The event ending as `result` says.
    pub fn outcome<T>(self, result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => self,
            Err(e) => self.failed(e.kind().as_str()),
        }
    }

    /// The event with its column.
    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }

    /// The event with its records.
    pub fn records<I: IntoIterator<Item = S>, S: ToString>(mut self, ids: I) -> Self {
        self.record_ids = ids.into_iter().map(|id| id.to_string()).collect();
        self
    }

    /// The event with its master key id.
    pub fn key(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// `success` or `error`, as stored in `status`.
    pub fn status(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else {
            "success"
        }
    }
}

/// Where audit events go. Recording must not block the caller for long: sinks that write to
/// a database queue events and write them elsewhere.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event.
    fn record(&self, event: AuditEvent);
}

/// A sink that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _event: AuditEvent) {}
}

/// A sink that keeps events in memory: for tests and reports.
#[derive(Debug, Clone, Default)]
pub struct MemoryAudit(Arc<Mutex<Vec<AuditEvent>>>);

impl MemoryAudit {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, event: AuditEvent) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
}
