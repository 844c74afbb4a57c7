//! A clinic: an application with its own `#[derive(Encrypted)]` models, none of the seed's
//! tables, its own migrations, and an operations binary of a few lines
//! (`src/bin/clinic-ops.rs`).

use std::fmt;

use diesel_migrations::embed_migrations;
use jarvis_crypt::Encrypted;
use jarvis_db::migrations::MigrationSet;

/// The application's diesel schema.
pub mod schema {
    diesel::table! {
        /// Patients. The SSN, searchable, was a plaintext column (`ssn`) and is in the
        /// migrating state; notes, allergies (JSON) and a photo (bytes) are optional.
        patients (id) {
            /// Row id.
            id -> BigInt,
            /// Display name (plaintext).
            name -> Text,
            /// The SSN in plaintext, from before encryption; NULL once encrypted.
            ssn -> Nullable<Text>,
            /// Ciphertext of the SSN.
            encrypted_ssn -> Nullable<Binary>,
            /// Nonce of `encrypted_ssn`.
            ssn_iv -> Nullable<Binary>,
            /// Tag of `encrypted_ssn`.
            ssn_auth_tag -> Nullable<Binary>,
            /// Wrapped data key of `encrypted_ssn`.
            ssn_data_key -> Nullable<Binary>,
            /// Search hash of the SSN.
            ssn_hash -> Nullable<Binary>,
            /// Ciphertext of the notes.
            encrypted_notes -> Nullable<Binary>,
            /// Nonce of `encrypted_notes`.
            notes_iv -> Nullable<Binary>,
            /// Tag of `encrypted_notes`.
            notes_auth_tag -> Nullable<Binary>,
            /// Wrapped data key of `encrypted_notes`.
            notes_data_key -> Nullable<Binary>,
            /// Ciphertext of the allergies (JSON).
            encrypted_allergies -> Nullable<Binary>,
            /// Nonce of `encrypted_allergies`.
            allergies_iv -> Nullable<Binary>,
            /// Tag of `encrypted_allergies`.
            allergies_auth_tag -> Nullable<Binary>,
            /// Wrapped data key of `encrypted_allergies`.
            allergies_data_key -> Nullable<Binary>,
            /// Ciphertext of the photo.
            encrypted_photo -> Nullable<Binary>,
            /// Nonce of `encrypted_photo`.
            photo_iv -> Nullable<Binary>,
            /// Tag of `encrypted_photo`.
            photo_auth_tag -> Nullable<Binary>,
            /// Wrapped data key of `encrypted_photo`.
            photo_data_key -> Nullable<Binary>,
            /// When the row's values were last encrypted by `rotate` (`rotate --older-than`
            /// reads it); `timestamptz` on PostgreSQL.
            keys_rotated_at -> Nullable<Timestamp>,
        }
    }

    diesel::table! {
        /// Staff, bound by their badge (unique, not the primary key): `verify` says so.
        staff (id) {
            /// Row id.
            id -> BigInt,
            /// The badge number, unique.
            badge -> Text,
            /// Ciphertext of the phone number.
            encrypted_phone -> Binary,
            /// Nonce of `encrypted_phone`.
            phone_iv -> Binary,
            /// Tag of `encrypted_phone`.
            phone_auth_tag -> Binary,
            /// Wrapped data key of `encrypted_phone`.
            phone_data_key -> Binary,
        }
    }

    diesel::table! {
        /// Visits, written before their number is known (`bind = none`); the primary key is
        /// not called `id`.
        visits (visit_no) {
            /// The visit's number (row id).
            visit_no -> BigInt,
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

/// The clinic's migrations (`migrations/{postgres,sqlite}`), which its operations binary's
/// `migrate` applies after the bookkeeping tables. Their versions (`2026-12-03-1000NN`) are
/// the clinic's own: diesel records versions only, so no two sets may share one.
pub const MIGRATIONS: MigrationSet = MigrationSet::new(
    "clinic",
    &embed_migrations!("migrations/postgres"),
    &embed_migrations!("migrations/sqlite"),
);

/// A patient.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(table = crate::schema::patients, bind = id, rotated_at = keys_rotated_at)]
pub struct Patient {
    /// Row id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Social security number, found again by its search hash; rows written before
    /// encryption hold it in the plaintext column `ssn` until `encrypt-existing` runs.
    #[encrypted(search, migrating_from = ssn)]
    pub ssn: String,
    /// Free-text notes.
    #[encrypted]
    pub notes: Option<String>,
    /// Known allergies, stored as encrypted JSON.
    #[encrypted(json)]
    pub allergies: Option<Vec<String>>,
    /// A photo.
    #[encrypted]
    pub photo: Option<Vec<u8>>,
}

/// A member of staff, bound by the badge: weaker than the primary key (a badge re-issued
/// to someone else would take the phone number with it), which `verify` notes.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(table = crate::schema::staff, bind = badge)]
pub struct Staff {
    /// Row id.
    pub id: i64,
    /// The badge number.
    pub badge: String,
    /// Phone number.
    #[encrypted]
    pub phone: String,
}

impl fmt::Debug for Staff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staff")
            .field("id", &self.id)
            .field("badge", &self.badge)
            .finish_non_exhaustive()
    }
}

/// A visit.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(table = crate::schema::visits, bind = none)]
pub struct Visit {
    /// The visit's number (row id).
    pub visit_no: i64,
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
            .field("visit_no", &self.visit_no)
            .field("patient_id", &self.patient_id)
            .finish_non_exhaustive()
    }
}
