//! A clinic: an application with its own `#[derive(Encrypted)]` models, none of the seed's
//! tables, and an operations binary of three lines (`src/bin/clinic-ops.rs`).

use std::fmt;

use jarvis_crypt::Encrypted;

/// The application's diesel schema.
pub mod schema {
    diesel::table! {
        /// Patients; `ssn` is searchable, `notes` optional.
        patients (id) {
            /// Row id.
            id -> BigInt,
            /// Display name (plaintext).
            name -> Text,
            /// Ciphertext of the SSN.
            encrypted_ssn -> Binary,
            /// Nonce of `encrypted_ssn`.
            ssn_iv -> Binary,
            /// Tag of `encrypted_ssn`.
            ssn_auth_tag -> Binary,
            /// Wrapped data key of `encrypted_ssn`.
            ssn_data_key -> Binary,
            /// Search hash of the SSN.
            ssn_hash -> Binary,
            /// Ciphertext of the notes.
            encrypted_notes -> Nullable<Binary>,
            /// Nonce of `encrypted_notes`.
            notes_iv -> Nullable<Binary>,
            /// Tag of `encrypted_notes`.
            notes_auth_tag -> Nullable<Binary>,
            /// Wrapped data key of `encrypted_notes`.
            notes_data_key -> Nullable<Binary>,
        }
    }

    diesel::table! {
        /// Visits, written before their id is known (`bind = none`).
        visits (id) {
            /// Row id.
            id -> BigInt,
            /// The patient.
            patient_id -> BigInt,
            /// Ciphertext of the summary.
            encrypted_summary -> Binary,
            /// Nonce of `encrypted_summary`.
            summary_iv -> Binary,
            /// Tag of `encrypted_summary`.
            summary_auth_tag -> Binary,
            /// Wrapped data key of `encrypted_summary`.
            summary_data_key -> Binary,
        }
    }
}

/// The tables, for SQLite.
pub const SQLITE_SCHEMA: &str = "
CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    encrypted_ssn BLOB NOT NULL, ssn_iv BLOB NOT NULL, ssn_auth_tag BLOB NOT NULL,
    ssn_data_key BLOB NOT NULL, ssn_hash BLOB NOT NULL,
    encrypted_notes BLOB, notes_iv BLOB, notes_auth_tag BLOB, notes_data_key BLOB
);
CREATE INDEX patients_ssn_hash ON patients (ssn_hash);
CREATE TABLE visits (
    id INTEGER PRIMARY KEY,
    patient_id BIGINT NOT NULL REFERENCES patients (id),
    encrypted_summary BLOB NOT NULL, summary_iv BLOB NOT NULL, summary_auth_tag BLOB NOT NULL,
    summary_data_key BLOB NOT NULL
);
";

/// The tables, for PostgreSQL.
pub const POSTGRES_SCHEMA: &str = "
CREATE TABLE patients (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    encrypted_ssn BYTEA NOT NULL, ssn_iv BYTEA NOT NULL, ssn_auth_tag BYTEA NOT NULL,
    ssn_data_key BYTEA NOT NULL, ssn_hash BYTEA NOT NULL,
    encrypted_notes BYTEA, notes_iv BYTEA, notes_auth_tag BYTEA, notes_data_key BYTEA,
    admitted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    profile JSONB
);
CREATE INDEX patients_ssn_hash ON patients (ssn_hash);
CREATE TABLE visits (
    id BIGSERIAL PRIMARY KEY,
    patient_id BIGINT NOT NULL REFERENCES patients (id),
    encrypted_summary BYTEA NOT NULL, summary_iv BYTEA NOT NULL, summary_auth_tag BYTEA NOT NULL,
    summary_data_key BYTEA NOT NULL
);
";

/// A patient.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(table = crate::schema::patients, bind = id)]
pub struct Patient {
    /// Row id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Social security number, found again by its search hash.
    #[encrypted(search)]
    pub ssn: String,
    /// Free-text notes.
    #[encrypted]
    pub notes: Option<String>,
}

/// A visit.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(table = crate::schema::visits, bind = none)]
pub struct Visit {
    /// Row id.
    pub id: i64,
    /// The patient.
    pub patient_id: i64,
    /// What happened.
    #[encrypted]
    pub summary: String,
}

// The encrypted fields never reach a `Debug` string.
impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patient")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Visit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visit")
            .field("id", &self.id)
            .field("patient_id", &self.patient_id)
            .finish_non_exhaustive()
    }
}
