//! The model of the bookkeeping table `encrypted_backups`, a record of each backup.
//!
//! Its encrypted field (a backup stored in the row) is bound to the row id (`bind = id`): the
//! repository ([`crate::backups`]) knows each row's id before the first write. `Debug` never
//! shows the backup's bytes.

use std::fmt;

use chrono::NaiveDateTime;
use jarvis_crypt::Encrypted;

/// `[redacted]` when a value is present, `None` otherwise: what `Debug` shows of secrets.
struct Redacted<'a, T>(&'a Option<T>);

impl<T> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "[redacted]"
        } else {
            "None"
        })
    }
}

/// A recorded backup: small ones stored in the row itself (encrypted), large ones in a file.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(
    table = crate::schema::encrypted_backups,
    bind = id,
    rotated_at = last_rotated_at,
    created_at = created_at,
    rotation_count = rotation_count
)]
pub struct EncryptedBackup {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub backup_name: String,
    /// Kind (`pg_dump`, `sqlite`, ...).
    pub backup_type: String,
    /// Where the encrypted file is, if not in the row.
    pub storage_path: Option<String>,
    /// The backup itself, when stored in the row.
    #[encrypted]
    pub data: Option<Vec<u8>>,
    /// Size in bytes of the encrypted backup.
    pub size_bytes: Option<i64>,
    /// SHA-256 of the encrypted backup, hex.
    pub checksum: Option<String>,
    /// The master key its data key is wrapped under.
    pub master_key_id: Option<String>,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last update (UTC).
    pub updated_at: NaiveDateTime,
}

impl fmt::Debug for EncryptedBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedBackup")
            .field("id", &self.id)
            .field("backup_name", &self.backup_name)
            .field("backup_type", &self.backup_type)
            .field("storage_path", &self.storage_path)
            .field("data", &Redacted(&self.data))
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}
