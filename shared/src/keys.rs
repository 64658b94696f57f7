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

    /// `{prefix}` followed by `parts`. Keys are built on every store call,
    /// and concatenation costs a fraction of `format!`.
    fn join(&self, parts: &[&str]) -> String {
        let length = self.tag.len() + parts.iter().map(|part| part.len()).sum::<usize>();
        let mut key = String::with_capacity(length);
        key.push_str(&self.tag);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// The event log: every [`crate::event::TaskEvent`], oldest first.
    pub fn events(&self) -> String {
        self.join(&[":events"])
    }

    /// The work queue: one entry per attempt to be made, read by the `workers` group.
    pub fn jobs(&self) -> String {
        self.join(&[":jobs"])
    }

    /// Queued task ids, scored by creation time (oldest first).
    pub fn queued(&self) -> String {
        self.join(&[":queued"])
    }

    /// Running task ids, scored by start time.
    pub fn running(&self) -> String {
        self.join(&[":running"])
    }

    /// Queued tasks waiting out a retry backoff, scored by due time.
    pub fn delayed(&self) -> String {
        self.join(&[":delayed"])
    }

    /// The projection of one task: a hash.
    pub fn task(&self, task_id: &TaskId) -> String {
        self.join(&[":task:", task_id.as_str()])
    }

    /// The task an `Idempotency-Key` created, for 24 hours.
    pub fn idempotency(&self, key_digest: &str) -> String {
        self.join(&[":idem:", key_digest])
    }

    /// Live worker processes and what they hold.
    pub fn workers(&self) -> String {
        self.join(&[":workers"])
    }

    /// The workers' names, scored by their last heartbeat.
    pub fn workers_seen(&self) -> String {
        self.join(&[":workers:seen"])
    }

    /// Live API processes and where they listen.
    pub fn apis(&self) -> String {
        self.join(&[":apis"])
    }

    /// The API processes' names, scored by their last heartbeat.
    pub fn apis_seen(&self) -> String {
        self.join(&[":apis:seen"])
    }

    /// The pub/sub channel that carries the ids of canceled tasks.
    pub fn cancel_channel(&self) -> String {
        self.join(&[":cancel"])
    }

    /// The prefix of task hashes, for the function library's batch calls.
    pub fn task_prefix(&self) -> String {
        self.join(&[":task:"])
    }

    /// Webhook deliveries waiting for a try, scored by due time. A delivery
    /// being tried stays in it, pushed forward by the claim's lease.
    pub fn webhooks_due(&self) -> String {
        self.join(&[":webhooks:due"])
    }

    /// One webhook delivery: a hash keyed by its `webhook-id`.
    pub fn webhook(&self, webhook_id: &str) -> String {
        self.join(&[":webhook:", webhook_id])
    }

    /// The prefix of webhook delivery hashes, for the function library's batch calls.
    pub fn webhook_prefix(&self) -> String {
        self.join(&[":webhook:"])
    }
}

/// The consumer group on the `jobs` stream.
pub const WORKERS_GROUP: &str = "workers";

/// The consumer group on the `events` stream that turns terminal events
/// into webhook deliveries.
pub const WEBHOOKS_GROUP: &str = "webhooks";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_the_tagged_prefix_then_its_name() {
        let keys = Keys::new("savestream");
        let task_id = TaskId::parse("d4mq2nk0h9pc73b0qpag").unwrap();
        assert_eq!(keys.events(), "{savestream}:events");
        assert_eq!(keys.jobs(), "{savestream}:jobs");
        assert_eq!(keys.queued(), "{savestream}:queued");
        assert_eq!(keys.running(), "{savestream}:running");
        assert_eq!(keys.delayed(), "{savestream}:delayed");
        assert_eq!(keys.task(&task_id), "{savestream}:task:d4mq2nk0h9pc73b0qpag");
        assert_eq!(keys.idempotency("ab12"), "{savestream}:idem:ab12");
        assert_eq!(keys.workers(), "{savestream}:workers");
        assert_eq!(keys.workers_seen(), "{savestream}:workers:seen");
        assert_eq!(keys.apis(), "{savestream}:apis");
        assert_eq!(keys.apis_seen(), "{savestream}:apis:seen");
        assert_eq!(keys.cancel_channel(), "{savestream}:cancel");
        assert_eq!(keys.task_prefix(), "{savestream}:task:");
        assert_eq!(keys.webhooks_due(), "{savestream}:webhooks:due");
        assert_eq!(keys.webhook("w1"), "{savestream}:webhook:w1");
        assert_eq!(keys.webhook_prefix(), "{savestream}:webhook:");
    }
}
