//! The recorded backups (`encrypted_backups`, a bookkeeping table) through the store: each
//! method is [`jarvis_db::Backups`]'s over the store's database, encryptor and audit sink.

use super::*;
use jarvis_db::backups::{BackupKeys, NewBackup};

impl Store {
    /// Records a backup (its bytes encrypted in the row when given), as one whose rows need
    /// no master key but `master_key_id`; see [`jarvis_db::Backups::create`].
    pub async fn create_backup(&self, new: NewBackup) -> Result<EncryptedBackup> {
        self.backups().create(new).await
    }

    /// Records a backup whose rows need the master keys `rows_master_key_ids`; see
    /// [`jarvis_db::Backups::create_with_master_keys`].
    pub async fn create_backup_with_master_keys(
        &self,
        new: NewBackup,
        rows_master_key_ids: Vec<String>,
    ) -> Result<EncryptedBackup> {
        self.backups()
            .create_with_master_keys(new, rows_master_key_ids)
            .await
    }

    /// The master keys of every recorded backup, newest first (see [`BackupKeys`]).
    pub async fn backup_keys(&self) -> Result<Vec<BackupKeys>> {
        self.backups().keys().await
    }

    /// The recorded backup named `name`, decrypted (its in-row bytes included); the read is
    /// audited.
    pub async fn find_backup_by_name(&self, name: &str) -> Result<Option<EncryptedBackup>> {
        self.backups().find_by_name(name).await
    }

    /// Every recorded backup, newest first, decrypted.
    pub async fn list_backups(&self) -> Result<Vec<EncryptedBackup>> {
        self.backups().list().await
    }
}
