//! Fast cancellation: a subscriber on the cancel channel that stops a
//! running attempt the moment its task is canceled.
//!
//! The `canceled` event is the truth and this is only the fast path: an
//! attempt that misses the message (the subscription was reconnecting)
//! learns it from the answer to its next progress write, a quarter of a
//! second later. A task canceled while queued never starts at all, because
//! the cancel removes its work item.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use savestream_shared::config::RedisConfig;
use savestream_shared::task::TaskId;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::running::RunningTasks;

/// Connects a subscriber to `channel`; it re-subscribes by itself after a reconnect.
pub async fn subscribe(redis: &RedisConfig, channel: &str) -> Result<SubscriberClient, fred::error::Error> {
    let subscriber = Builder::from_config(Config::from_url(&redis.url)?)
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(3);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_subscriber_client()?;
    subscriber.init().await?;
    // The handle is not kept: the task ends when the client quits.
    let _resubscriber = subscriber.manage_subscriptions();
    subscriber.subscribe(channel).await?;
    Ok(subscriber)
}

/// Cancels the running attempts of the tasks named on the channel, until `stop`.
pub async fn listen(subscriber: SubscriberClient, running: RunningTasks, stop: CancellationToken) {
    let mut messages = subscriber.message_rx();
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
                        }
                    }
                    Err(error) => debug!(%error, "ignoring a cancel message that names no task"),
                }
            }
            Err(RecvError::Lagged(missed)) => {
                // The progress writes of the missed tasks tell them instead.
                warn!(missed, "missed cancel messages");
            }
            Err(RecvError::Closed) => break,
        }
    }
    if let Err(error) = subscriber.quit().await {
        debug!(%error, "closing the cancel subscription");
    }
}
