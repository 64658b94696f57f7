//! Fast cancellation: a subscriber on the cancel channel that stops a
//! running attempt the moment its task is canceled.
//!
//! The `canceled` event is the truth and this is only the fast path: an
//! attempt that misses the message (the subscription was reconnecting)
//! learns it from the answer to its next progress write, a quarter of a
//! second later. A task canceled while queued never starts at all, because
//! the cancel removes its work item.
//!
//! So no attempt removes what an earlier one left of such a task (a partial
//! file it was to resume, after a retry or a release; a reservation it
//! could not record). Every worker that hears the cancel of a task it is
//! not running removes what it finds of it in its own storages
//! ([`Leftovers`]). Partial files are found by their task, so any worker
//! may, and a canceled task has no more use for them. A worker that is down
//! when the message is sent never hears it; so each worker, when it starts,
//! also looks over its storages for partial files of tasks that have ended
//! ([`Leftovers::sweep`]).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use savestream_shared::config::RedisConfig;
use savestream_shared::store::{Store, StoreError};
use savestream_shared::task::{TaskId, TaskStatus};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::running::RunningTasks;
use crate::storage::{StorageDir, Storages};

/// Connects a subscriber to `channel`; it re-subscribes by itself after a reconnect.
pub async fn subscribe(redis: &RedisConfig, channel: &str) -> Result<SubscriberClient, fred::error::Error> {
    let subscriber = Builder::from_config(Config::from_url(&redis.url)?)
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(3);
        })
        .with_performance_config(|performance| {
            // fred's default of 32 messages overflows when a user cancels a
            // batch import; what overflows anyway is swept (see `listen`).
            performance.broadcast_channel_capacity = 1024;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_subscriber_client()?;
    subscriber.init().await?;
    // The handle is not kept: the task ends when the client quits.
    let _resubscriber = subscriber.manage_subscriptions();
    subscriber.subscribe(channel).await?;
    Ok(subscriber)
}

/// What a canceled task that no attempt here runs left in this worker's storages.
#[derive(Clone)]
pub struct Leftovers {
    pub store: Store,
    pub storages: Storages,
}

impl Leftovers {
    /// Removes the partial files of `task_id` from this worker's storage,
    /// once the store confirms that the task was canceled.
    pub async fn remove(&self, task_id: &TaskId) {
        let task = match self.store.get(task_id).await {
            Ok(Some(record)) => record.task,
            Ok(None) => return,
            Err(error) => {
                debug!(%error, task_id = %task_id, "cannot read a canceled task: its partial files stay");
                return;
            }
        };
        if task.status != TaskStatus::Canceled {
            return;
        }
        // A storage this worker lacks, or a directory that never parsed,
        // holds nothing of the task here.
        let (Some(storage), Ok(dir)) = (self.storages.get(&task.storage), StorageDir::parse(&task.dir))
        else {
            return;
        };
        if let Err(error) = storage.discard(task_id, &dir).await {
            warn!(%error, task_id = %task_id, "cannot remove the partial files of a canceled task");
        }
    }

    /// Removes the partial files in this worker's storages whose tasks have
    /// ended (canceled, or failed or completed by an attempt that died
    /// before cleaning up), and answers how many tasks' it removed. Partial
    /// files of queued and running tasks stay: an attempt resumes them. So
    /// do those of tasks the store does not know — expired after their
    /// retention, or another deployment's sharing the directory — which are
    /// reported for a person to look at rather than removed unasked.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for storage in self.storages.iter() {
            let owners = match storage.partial_owners().await {
                Ok(owners) => owners,
                Err(error) => {
                    warn!(%error, "cannot look for leftover partial files: they stay until their tasks are canceled again");
                    continue;
                }
            };
            for (task_id, dir) in owners {
                let Some(record) = self.store.get(&task_id).await? else {
                    info!(
                        task_id = %task_id,
                        storage = storage.name(),
                        dir = %dir,
                        "partial files of a task the store does not know (expired, or another deployment's): left in place; delete them by hand if they are not another deployment's"
                    );
                    continue;
                };
                if !record.task.status.is_terminal() {
                    continue;
                }
                match storage.discard(&task_id, &dir).await {
                    Ok(()) => {
                        info!(task_id = %task_id, status = %record.task.status, "removed the partial files of an ended task");
                        removed += 1;
                    }
                    Err(error) => {
                        warn!(%error, task_id = %task_id, "cannot remove the partial files of an ended task")
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// What the cleaner is asked to do.
enum Cleanup {
    /// Remove what this canceled task left.
    Task(TaskId),
    /// Messages were missed: look over the storages for partial files of
    /// every ended task.
    Sweep,
}

/// Cancels the running attempts of the tasks named on the channel, and
/// removes what the others left ([`Leftovers`]), until `stop`.
///
/// Removing a task's leftovers reads the store and the disk, so it runs
/// beside the listener: done inline, a burst of cancels (a batch import
/// canceled) piled up behind it until the subscription's channel
/// overflowed and messages were lost. Should that happen anyway, the
/// cleaner sweeps the storages, which finds what the missed messages named.
pub async fn listen(
    subscriber: SubscriberClient,
    running: RunningTasks,
    leftovers: Leftovers,
    stop: CancellationToken,
) {
    let mut messages = subscriber.message_rx();
    let (cleanup, requests) = tokio::sync::mpsc::unbounded_channel();
    let cleaner = tokio::spawn(clean(leftovers, requests));
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = messages.recv() => message,
        };
        match message {
            Ok(message) => {
                let Some(text) = message.value.as_string() else {
                    continue;
                };
                match TaskId::parse(&text) {
                    Ok(task_id) => {
                        if running.cancel(&task_id) {
                            info!(task_id = %task_id, "canceled: stopping its download");
                        } else {
                            // The attempt that runs it cleans up after
                            // itself; nothing here does for the others.
                            let _ = cleanup.send(Cleanup::Task(task_id));
                        }
                    }
                    Err(error) => debug!(%error, "ignoring a cancel message that names no task"),
                }
            }
            Err(RecvError::Lagged(missed)) => {
                // The progress writes of the missed tasks tell their
                // attempts instead; the sweep removes the others' leftovers.
                warn!(
                    missed,
                    "missed cancel messages: looking over the storages for what canceled tasks left"
                );
                let _ = cleanup.send(Cleanup::Sweep);
            }
            Err(RecvError::Closed) => break,
        }
    }
    // What is left to clean waits for the next cancel or the next start's sweep.
    cleaner.abort();
    if let Err(error) = subscriber.quit().await {
        debug!(%error, "closing the cancel subscription");
    }
}

/// Does what the listener asks, one request at a time, until it stops.
async fn clean(leftovers: Leftovers, mut requests: tokio::sync::mpsc::UnboundedReceiver<Cleanup>) {
    while let Some(request) = requests.recv().await {
        match request {
            Cleanup::Task(task_id) => leftovers.remove(&task_id).await,
            Cleanup::Sweep => match leftovers.sweep().await {
                Ok(removed) => info!(
                    removed,
                    "swept the partial files of ended tasks after missed cancel messages"
                ),
                Err(error) => {
                    warn!(%error, "cannot sweep the partial files of ended tasks: they stay until the next start")
                }
            },
        }
    }
}
