//! Group commit of audit records: concurrent queries hand their records to
//! one writer thread, which appends everything waiting in one transaction
//! and only then tells each query its record is durable.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Result, VeilError};
use crate::store::{AuditEntry, CatalogStore};

/// Most records appended in one transaction.
const MAX_BATCH: usize = 512;

type Waiter = Option<oneshot::Sender<Result<()>>>;

/// Hands audit records to the writer thread.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<(AuditEntry, Waiter)>,
}

impl AuditWriter {
    /// Starts the writer thread for `store`; it ends when every handle is dropped.
    pub fn start(store: Arc<dyn CatalogStore>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<(AuditEntry, Waiter)>();
        std::thread::Builder::new()
            .name("veil-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let result = store.audit_batch(&entries);
                    if let Err(e) = &result {
                        tracing::error!(records = entries.len(), "audit write failed: {e}");
                    }
                    for w in waiters.into_iter().flatten() {
                        let _ = w.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(VeilError::Internal(format!("audit write failed: {e}"))),
                        });
                    }
                }
            })
            .map_err(|e| VeilError::Internal(format!("cannot start the audit writer: {e}")))?;
        Ok(Self { tx })
    }

    /// Appends a record and waits until it is durable.
    pub async fn record(&self, entry: AuditEntry) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, Some(done)))
            .map_err(|_| VeilError::Internal("the audit writer has stopped".into()))?;
        wait.await
            .map_err(|_| VeilError::Internal("the audit writer has stopped".into()))?
    }

    /// Appends a record without waiting (used where nobody is left to
    /// answer, e.g. a client that dropped its stream).
    pub fn record_detached(&self, entry: AuditEntry) {
        if self.tx.send((entry, None)).is_err() {
            tracing::error!("audit writer has stopped; a record was lost");
        }
    }
}
