//! The repository of the records of encrypted backups (`encrypted_backups`): created, found by name,
//! listed, and the master keys each one needs.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AuditSink, Encrypted, Encryptor, Operation};

use crate::db::Database;
use crate::error::ModelError;
use crate::models::{EncryptedBackup, EncryptedBackupRow};
use crate::repo::{self, Auditor};
use crate::schema::encrypted_backups;
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A new backup record.
#[derive(Clone)]
pub struct NewBackup {
    /// Unique name.
    pub backup_name: String,
    /// Kind.
    pub backup_type: String,
    /// Path of the encrypted file, when not stored in the row.
    pub storage_path: Option<String>,
    /// The backup bytes, when stored in the row (encrypted there).
    pub data: Option<Vec<u8>>,
    /// Size of the encrypted backup.
    pub size_bytes: Option<i64>,
    /// SHA-256 of the encrypted backup, hex.
    pub checksum: Option<String>,
    /// The master key its data key is wrapped under.
    pub master_key_id: Option<String>,
}

impl std::fmt::Debug for NewBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBackup")
            .field("backup_name", &self.backup_name)
            .field("backup_type", &self.backup_type)
            .field("storage_path", &self.storage_path)
            .finish_non_exhaustive()
    }
}

/// The master keys one recorded backup needs, as its row says (read without decrypting
/// anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeys {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub backup_name: String,
    /// Where its file is, when it is not stored in the row.
    pub storage_path: Option<String>,
    /// Whether the backup itself is stored in the row.
    pub in_row: bool,
    /// The master key that wraps the stream's own data key (`master_key_id`).
    pub stream_master_key_id: Option<String>,
    /// The master keys the backup's rows need (`rows_master_key_ids`, the manifest's list),
    /// or `None` when the record does not say (recorded before migration 10, or the column
    /// does not parse).
    pub rows_master_key_ids: Option<Vec<String>>,
}

impl BackupKeys {
    /// Whether the record names the master key `key_id` (a KMS key ARN, or a local key id,
    /// which names all of its versions) as needed, for the stream or for the rows.
    pub fn names(&self, key_id: &str) -> bool {
        self.stream_master_key_id.as_deref() == Some(key_id)
            || self
                .rows_master_key_ids
                .iter()
                .flatten()
                .any(|entry| names_master_key(entry, key_id))
    }
}

/// Whether a manifest's entry (`<id>#v<N>` or a KMS key ARN) is of the master key `key_id`.
fn names_master_key(entry: &str, key_id: &str) -> bool {
    if entry == key_id {
        return true;
    }
    entry.rsplit_once("#v").is_some_and(|(id, version)| {
        id == key_id && !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The master keys of every recorded backup, newest first: its stream's key and the keys
/// its rows need, from the plain columns of `encrypted_backups`.
pub async fn backup_keys(db: &Database) -> Result<Vec<BackupKeys>> {
    type Record = (
        i64,
        String,
        Option<String>,
        bool,
        Option<String>,
        Option<String>,
    );
    let mut conn = db.get().await?;
    let rows: Vec<Record> = with_conn!(&mut conn, |c| encrypted_backups::table
        .order(encrypted_backups::id.desc())
        .select((
            encrypted_backups::id,
            encrypted_backups::backup_name,
            encrypted_backups::storage_path,
            encrypted_backups::encrypted_data.is_not_null(),
            encrypted_backups::master_key_id,
            encrypted_backups::rows_master_key_ids,
        ))
        .load(c)
        .await?);
    Ok(rows
        .into_iter()
        .map(
            |(id, backup_name, storage_path, in_row, stream, rows)| BackupKeys {
                id,
                backup_name,
                storage_path,
                in_row,
                stream_master_key_id: stream,
                rows_master_key_ids: rows.and_then(|text| serde_json::from_str(&text).ok()),
            },
        )
        .collect())
}

/// The repository of the recorded backups (`encrypted_backups`): one database, one
/// encryptor (for backups stored in the row), one audit sink.
#[derive(Debug, Clone)]
pub struct Backups {
    db: Database,
    encryptor: Encryptor,
    audit: Arc<dyn AuditSink>,
}

impl Backups {
    /// The repository over `db`, encrypting with `encryptor`, auditing into `audit`.
    pub fn new(db: Database, encryptor: Encryptor, audit: Arc<dyn AuditSink>) -> Self {
        Backups {
            db,
            encryptor,
            audit,
        }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn auditor(&self) -> Auditor<'_> {
        Auditor {
            sink: self.audit.as_ref(),
            encryptor: &self.encryptor,
        }
    }

    /// Records a backup (its bytes encrypted in the row when given), as one whose rows need
    /// no master key but `master_key_id`: what this method always meant. A backup of rows
    /// under other master keys is recorded with
    /// [`create_with_master_keys`](Self::create_with_master_keys), so that
    /// key usage (and `jarvis retire-key`) counts them.
    pub async fn create(&self, new: NewBackup) -> Result<EncryptedBackup> {
        self.create_with_master_keys(new, Vec::new()).await
    }

    /// Records a backup whose rows need the master keys `rows_master_key_ids` (its
    /// manifest's `master_key_ids`: `<id>#v<N>` or KMS key ARNs), in the same row and
    /// transaction; see [`BackupKeys`].
    pub async fn create_with_master_keys(
        &self,
        new: NewBackup,
        rows_master_key_ids: Vec<String>,
    ) -> Result<EncryptedBackup> {
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let keys = serde_json::Value::from(rows_master_key_ids).to_string();
        let values = <EncryptedBackup as jarvis_crypt::EncryptedTable>::table()
            .fields
            .len();
        let result = repo::write_sealing(&self.db, &self.encryptor, values, move |conn| {
            Box::pin(async move {
                let id = repo::reserve_ids(conn, "encrypted_backups", 1).await?[0];
                let at = Utc::now().naive_utc();
                let model = EncryptedBackup {
                    id,
                    backup_name: new.backup_name,
                    backup_type: new.backup_type,
                    storage_path: new.storage_path,
                    data: new.data,
                    size_bytes: new.size_bytes,
                    checksum: new.checksum,
                    master_key_id: new.master_key_id,
                    created_at: at,
                    updated_at: at,
                };
                let row = model.encrypt_row(&enc).await?;
                with_conn!(conn, |c| diesel::insert_into(encrypted_backups::table)
                    .values((
                        &row,
                        encrypted_backups::rows_master_key_ids.eq(Some(keys.as_str())),
                    ))
                    .execute(c)
                    .await?);
                Ok(model)
            })
        })
        .await;
        self.auditor().audited(
            Operation::Backup,
            "encrypted_backups",
            "encrypted_data",
            started,
            result,
        )
    }

    /// The master keys of every recorded backup, newest first (see [`backup_keys`]).
    pub async fn keys(&self) -> Result<Vec<BackupKeys>> {
        backup_keys(&self.db).await
    }

    /// The recorded backup named `name`, decrypted (its in-row bytes included); the read is
    /// audited.
    pub async fn find_by_name(&self, name: &str) -> Result<Option<EncryptedBackup>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let row: Option<EncryptedBackupRow> =
                with_conn!(&mut conn, |c| encrypted_backups::table
                    .filter(encrypted_backups::backup_name.eq(name))
                    .select(EncryptedBackupRow::as_select())
                    .first(c)
                    .await
                    .optional()?);
            match row {
                Some(row) => Ok(Some(
                    EncryptedBackup::decrypt_row(row, &self.encryptor).await?,
                )),
                None => Ok(None),
            }
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "encrypted_backups",
            "encrypted_data",
            started,
            result,
        )
    }

    /// Every recorded backup, newest first, decrypted.
    pub async fn list(&self) -> Result<Vec<EncryptedBackup>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<EncryptedBackupRow> = with_conn!(&mut conn, |c| encrypted_backups::table
                .order(encrypted_backups::id.desc())
                .select(EncryptedBackupRow::as_select())
                .load(c)
                .await?);
            Ok(EncryptedBackup::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "encrypted_backups",
            "encrypted_data",
            started,
            result,
        )
    }
}
