//! The diesel audit sink: events written to `encryption_audit_log` in batches, off the
//! request path.
//!
//! [`DbAudit::record`] never waits: it puts the event on a bounded channel
//! ([`DbAudit::CAPACITY`] events) that a background task drains, inserting up to
//! [`DbAudit::BATCH`] rows per statement. When the channel is full the event is dropped,
//! counted ([`DbAudit::dropped`]) and logged at `warn`: auditing never stalls or fails the
//! operation it records. A batch that cannot be written is logged and counted as dropped too.
//! [`DbAudit::shutdown`] closes the channel and waits until every queued event is written.
//!
//! Rows carry the event's operation, table, column, record ids (one in `record_id`; all of a
//! bulk operation, with their count, in `context`), key id, status, error kind and duration:
//! no field of an event can hold plaintext or key material.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::Insertable;
use jarvis_crypt::{AuditEvent, AuditSink};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::Database;
use crate::error::ModelError;
use crate::schema::encryption_audit_log;

/// What the writer task receives: events, and requests to report once all before are written.
#[derive(Debug)]
enum Message {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
    Shutdown,
}

/// The audit sink writing to `encryption_audit_log`.
#[derive(Debug, Clone)]
pub struct DbAudit {
    sender: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Insertable)]
#[diesel(table_name = encryption_audit_log)]
struct NewAuditRow {
    operation_type: String,
    table_name: String,
    record_id: Option<String>,
    column_name: Option<String>,
    key_id: Option<String>,
    status: String,
    error_kind: Option<String>,
    duration_ms: Option<f64>,
    context: Option<serde_json::Value>,
    created_at: chrono::NaiveDateTime,
}

impl NewAuditRow {
    fn from_event(event: AuditEvent) -> Self {
        let record_id = match event.record_ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let context = (event.record_ids.len() > 1).then(|| {
            serde_json::json!({
                "count": event.record_ids.len(),
                "record_ids": event.record_ids,
            })
        });
        NewAuditRow {
            operation_type: event.operation.as_str().to_owned(),
            table_name: event.table.clone().unwrap_or_default(),
            record_id,
            column_name: event.column.clone(),
            key_id: event.key_id.clone(),
            status: event.status().to_owned(),
            error_kind: event.error.map(str::to_owned),
            duration_ms: Some(event.duration.as_secs_f64() * 1000.0),
            context,
            created_at: chrono::Utc::now().naive_utc(),
        }
    }
}

impl DbAudit {
    /// Events the channel holds before new ones are dropped.
    pub const CAPACITY: usize = 4096;
    /// Rows per insert.
    pub const BATCH: usize = 256;

    /// Starts the writer task on the current tokio runtime.
    pub fn start(db: Database) -> Self {
        Self::with_capacity(db, Self::CAPACITY)
    }

    /// Starts the writer task with a channel of `capacity` events.
    pub fn with_capacity(db: Database, capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(writer(
            db,
            receiver,
            Arc::clone(&dropped),
            Arc::clone(&written),
        ));
        DbAudit {
            sender,
            dropped,
            written,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Events dropped so far (channel full, or a batch the database refused).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits until every event recorded before this call is written (or dropped). The sink
    /// keeps working.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Closes the sink, for every clone, and waits until every event queued before is
    /// written. Events recorded afterwards are dropped and counted.
    pub async fn shutdown(&self) {
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            let _ = self.sender.send(Message::Shutdown).await;
            let _ = task.await;
        }
    }
}

impl AuditSink for DbAudit {
    fn record(&self, event: AuditEvent) {
        if let Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) =
            self.sender.try_send(Message::Event(event))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("audit channel full or closed: an audit event was dropped");
        }
    }
}

async fn writer(
    db: Database,
    mut receiver: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
) {
    let mut messages = Vec::with_capacity(DbAudit::BATCH);
    while receiver.recv_many(&mut messages, DbAudit::BATCH).await > 0 {
        let mut rows = Vec::with_capacity(messages.len());
        let mut flushes = Vec::new();
        let mut shutdown = false;
        for message in messages.drain(..) {
            match message {
                Message::Event(event) if !shutdown => rows.push(NewAuditRow::from_event(event)),
                Message::Event(_) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                Message::Flush(done) => flushes.push(done),
                Message::Shutdown => shutdown = true,
            }
        }
        if !rows.is_empty() {
            let count = rows.len() as u64;
            match insert(&db, rows).await {
                Ok(()) => written.fetch_add(count, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, count, "audit rows could not be written");
                    dropped.fetch_add(count, Ordering::Relaxed)
                }
            };
        }
        for done in flushes {
            let _ = done.send(());
        }
        if shutdown {
            break;
        }
    }
}

async fn insert(db: &Database, rows: Vec<NewAuditRow>) -> Result<(), ModelError> {
    let mut conn = db.get().await?;
    crate::insert_all!(&mut conn, encryption_audit_log::table, rows);
    Ok(())
}

/// One line of the audit summary: the operations on a table of one kind since a time.
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
#[non_exhaustive]
pub struct SummaryLine {
    /// The table.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub table_name: String,
    /// The operation (`encrypt`, `decrypt`, `rotate`, ...).
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub operation_type: String,
    /// Audit rows of the group.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub operation_count: i64,
    /// Rows of the group with status `error`.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub error_count: i64,
    /// The average duration in milliseconds (`None` when no row has one).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub avg_duration_ms: Option<f64>,
}

/// The audit log since `since` (UTC), per table and operation, ordered by both: what
/// `jarvis audit` prints (the view `encryption_audit_summary` is the same for a fixed 24 hours).
pub async fn summary(
    db: &Database,
    since: chrono::NaiveDateTime,
) -> Result<Vec<SummaryLine>, ModelError> {
    use diesel_async::RunQueryDsl;
    let mut conn = db.get().await?;
    let sql = |placeholder: &str| {
        format!(
            "SELECT table_name, operation_type, COUNT(*) AS operation_count, \
                    SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS error_count, \
                    AVG(duration_ms) AS avg_duration_ms \
             FROM encryption_audit_log WHERE created_at > {placeholder} \
             GROUP BY table_name, operation_type ORDER BY table_name, operation_type"
        )
    };
    let lines = match &mut conn {
        crate::db::Conn::Postgres(c) => {
            diesel::sql_query(sql("$1"))
                .bind::<diesel::sql_types::Timestamp, _>(since)
                .load(&mut **c)
                .await?
        }
        crate::db::Conn::Sqlite(c) => {
            diesel::sql_query(sql("?"))
                .bind::<diesel::sql_types::Timestamp, _>(since)
                .load(&mut **c)
                .await?
        }
    };
    Ok(lines)
}
