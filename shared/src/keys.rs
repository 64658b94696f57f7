//! Every Redis key and channel name savestream uses, built in one place.
//!
//! All of them share one hash tag, `{<prefix>}`, so each function call
//! touches a single slot and the same library runs on Redis Cluster.

use crate::task::TaskId;

#[derive(Clone, Debug)]
pub struct Keys {
    tag: String,
}

impl Keys {
    /// `prefix` comes from `[redis] prefix`, which config validation keeps
    /// free of braces, colons and whitespace.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The event log: every [`crate::event::TaskEvent`], oldest first.
    pub fn events(&self) -> String {
        format!("{}:events", self.tag)
    }

    /// The work queue: one entry per attempt to be made, read by the `workers` group.
    pub fn jobs(&self) -> String {
        format!("{}:jobs", self.tag)
    }

    /// Queued task ids, scored by creation time (oldest first).
    pub fn queued(&self) -> String {
        format!("{}:queued", self.tag)
    }

    /// Running task ids, scored by start time.
    pub fn running(&self) -> String {
        format!("{}:running", self.tag)
    }

    /// Queued tasks waiting out a retry backoff, scored by due time.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.tag)
    }

    /// The projection of one task: a hash.
    pub fn task(&self, task_id: &TaskId) -> String {
        format!("{}:task:{}", self.tag, task_id)
    }

    /// The task an `Idempotency-Key` created, for 24 hours.
    pub fn idempotency(&self, key_digest: &str) -> String {
        format!("{}:idem:{}", self.tag, key_digest)
    }

    /// Live worker processes and what they hold.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }

    /// The pub/sub channel that carries the ids of canceled tasks.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.tag)
    }

    /// The prefix of task hashes, for the function library's batch calls.
    pub fn task_prefix(&self) -> String {
        format!("{}:task:", self.tag)
    }

    /// Webhook deliveries waiting for a try, scored by due time. A delivery
    /// being tried stays in it, pushed forward by the claim's lease.
    pub fn webhooks_due(&self) -> String {
        format!("{}:webhooks:due", self.tag)
    }

    /// One webhook delivery: a hash keyed by its `webhook-id`.
    pub fn webhook(&self, webhook_id: &str) -> String {
        format!("{}:webhook:{}", self.tag, webhook_id)
    }

    /// The prefix of webhook delivery hashes, for the function library's batch calls.
    pub fn webhook_prefix(&self) -> String {
        format!("{}:webhook:", self.tag)
    }
}

/// The consumer group on the `jobs` stream.
pub const WORKERS_GROUP: &str = "workers";

/// The consumer group on the `events` stream that turns terminal events
/// into webhook deliveries.
pub const WEBHOOKS_GROUP: &str = "webhooks";
