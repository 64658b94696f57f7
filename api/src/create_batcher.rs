//! [`CreateBatcher`]: creates that arrive together share one store call.
//!
//! A create's own work is small; what it costs under load is the fixed price
//! of a store call — a round trip through fred and Tokio in the API, a
//! script invocation and a socket read and write in Redis. So every
//! `POST /api/v1/tasks` hands its task to one batching task, which sends
//! whatever queued up while its previous call was in flight as one
//! `savestream_create_batch` (at most [`MAX_BATCH`]). An idle server still
//! makes one call per create, straight away: nothing waits for company.
//! Under load the fixed price is shared by every create in the batch.
//!
//! Each create still succeeds or fails on its own (the batch applies the
//! library's single `create` to each task in turn, idempotency keys
//! included), and the calls go out in order on one connection, so creates
//! reach Redis in the order they came.

use futures::stream::{FuturesUnordered, StreamExt};
use savestream_shared::store::{Created, NewTask, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// The most creates one store call carries: large enough to share the fixed
/// cost among many, small enough that one call stays well under a millisecond
/// of Redis' time.
pub const MAX_BATCH: usize = 128;

/// How many batch calls may be outstanding at once. More than one keeps
/// Redis busy while the API reads an answer and gathers the next batch;
/// they share one connection, so Redis still runs them in the order sent.
pub const IN_FLIGHT: usize = 2;

/// Hands creates to the batching task; cheap to clone.
#[derive(Clone)]
pub struct CreateBatcher {
    sender: mpsc::Sender<PendingCreate>,
}

/// A create waiting for its batch, and where its answer goes.
struct PendingCreate {
    new_task: NewTask,
    idempotency_key: Option<String>,
    answer: oneshot::Sender<Result<Created, StoreError>>,
}

impl CreateBatcher {
    /// Starts the batching task on the current Tokio runtime. It ends when
    /// every `CreateBatcher` clone is dropped.
    pub fn start(store: Store) -> CreateBatcher {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(send_batches(store, receiver));
        CreateBatcher { sender }
    }

    /// Creates the task as [`Store::create`] does, in the next batch.
    pub async fn create(
        &self,
        new_task: NewTask,
        idempotency_key: Option<String>,
    ) -> Result<Created, StoreError> {
        let (answer, answered) = oneshot::channel();
        let pending = PendingCreate {
            new_task,
            idempotency_key,
            answer,
        };
        self.sender.send(pending).await.map_err(|_| batcher_gone())?;
        answered.await.map_err(|_| batcher_gone())?
    }
}

/// The batching task: every create that is waiting goes into the next
/// call, with at most [`IN_FLIGHT`] calls outstanding.
async fn send_batches(store: Store, mut receiver: mpsc::Receiver<PendingCreate>) {
    let mut in_flight = FuturesUnordered::new();
    // `recv_many` is cancel-safe: when the other branch wins, nothing was
    // taken off the channel.
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            received = receiver.recv_many(&mut batch, MAX_BATCH), if in_flight.len() < IN_FLIGHT => {
                if received == 0 {
                    break;
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
                in_flight.push(send_batch(&store, full));
            }
            Some(()) = in_flight.next() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Sends one batch and answers each of its creates.
async fn send_batch(store: &Store, batch: Vec<PendingCreate>) {
    crate::metrics::create_batch(batch.len());
    let requests = batch
        .iter()
        .map(|pending| (&pending.new_task, pending.idempotency_key.as_deref()));
    match store.create_batch(requests).await {
        Ok(results) => {
            for (pending, result) in batch.into_iter().zip(results) {
                // The request may have gone away (its client hung up);
                // its task is created all the same, as a single call's would be.
                let _ = pending.answer.send(result);
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.answer.send(Err(error.clone()));
            }
        }
    }
}

/// The batching task stopped: it only does when the runtime shuts down.
fn batcher_gone() -> StoreError {
    StoreError::Unavailable(fred::error::Error::new(
        fred::error::ErrorKind::Canceled,
        "the create batcher has stopped (the server is shutting down)",
    ))
}
