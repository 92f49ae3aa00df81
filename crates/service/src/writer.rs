//! Group commit for launches.
//!
//! A launch decides its placement in memory under the scheduler's lock, hands the records
//! to this writer and waits for their commit before it answers. The writer takes every
//! launch waiting at that moment and commits them in one transaction, each inside its own
//! savepoint, so one bad launch (say, a reused Idempotency-Key) fails alone. Commits are
//! still made before anything is acknowledged; there are just fewer of them.

use neocloud_store::{IdempotencyRecord, Store};
use neocloud_types::{ApiKeyId, Instance, NodeId};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::scheduler;

/// Most launches committed together.
const MAX_BATCH: usize = 256;

/// What one launch writes.
pub(crate) struct LaunchWrite {
    pub(crate) inst: Instance,
    pub(crate) gpus: Vec<(NodeId, Vec<u32>)>,
    pub(crate) held: neocloud_store::Held,
    pub(crate) actor: ApiKeyId,
    /// Scope, key and response of the Idempotency-Key, if one was given.
    pub(crate) idem: Option<(String, String, IdempotencyRecord)>,
    pub(crate) done: oneshot::Sender<Result<()>>,
}

/// Starts the writer; it stops when every sender is gone.
pub(crate) fn spawn(store: Store) -> mpsc::Sender<LaunchWrite> {
    let (tx, mut rx) = mpsc::channel::<LaunchWrite>(4 * MAX_BATCH);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let outcome = write_batch(&store, &batch).await;
            for (i, job) in batch.into_iter().enumerate() {
                let r = match &outcome {
                    Ok(each) => match &each[i] {
                        None => Ok(()),
                        Some(msg) => Err(Error::new(crate::ErrorCode::Conflict, msg.clone())),
                    },
                    // Every launch of the batch fails the way the batch did (a fenced
                    // ex-leader's launches are "unavailable", not internal errors).
                    Err(e) => {
                        let mut err = Error::new(e.code, e.message.clone());
                        err.internal = Some(format!(
                            "committing launches: {}",
                            e.internal.as_deref().unwrap_or(&e.message)
                        ));
                        Err(err)
                    }
                };
                let _ = job.done.send(r);
            }
        }
    });
    tx
}

/// Writes a batch in one transaction; per launch, `None` if it was written or the reason it
/// was not.
async fn write_batch(store: &Store, batch: &[LaunchWrite]) -> Result<Vec<Option<String>>> {
    let mut tx = store.begin_write().await?;
    let mut each = Vec::with_capacity(batch.len());
    for job in batch {
        sqlx_exec(&mut tx, "SAVEPOINT launch").await?;
        let r = async {
            Store::instance_insert(&mut tx, &job.inst).await?;
            Store::instance_hold(&mut tx, &job.inst, &job.gpus, job.held).await?;
            scheduler::event(
                &mut tx,
                Some(job.actor),
                &job.inst,
                "instance.running",
                None,
                None,
            )
            .await?;
            if let Some((scope, key, rec)) = &job.idem {
                Store::idempotency_put(&mut tx, scope, key, rec).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        match r {
            Ok(()) => {
                sqlx_exec(&mut tx, "RELEASE SAVEPOINT launch").await?;
                each.push(None);
            }
            Err(e) => {
                sqlx_exec(&mut tx, "ROLLBACK TO SAVEPOINT launch").await?;
                sqlx_exec(&mut tx, "RELEASE SAVEPOINT launch").await?;
                each.push(Some(e.message));
            }
        }
    }
    tx.commit().await?;
    Ok(each)
}

async fn sqlx_exec(tx: &mut neocloud_store::WriteTx, sql: &str) -> Result<()> {
    Store::raw_execute(tx, sql).await?;
    Ok(())
}
