//! The task store against a real `redis-server`: every transition, legal and
//! illegal, the cancel/complete race, retries, leases, expiry and rebuild.
//!
//! Each test starts its own Redis (see `savestream_testkit::RedisServer`),
//! so tests run in parallel without sharing state.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::webhooks::{ClaimedWebhook, TaskWebhook, WebhookResult, WebhookState};
use savestream_shared::store::{
    Job, Lease, NewTask, Progress, RetryOutcome, Store, StoreError, TaskRecord, LIBRARIES_IN_USE,
    LIBRARY_HORIZON,
};
use savestream_shared::task::{Millis, SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, RedisServer};

const WORKER: &str = "test-worker";

struct Harness {
    redis: RedisServer,
    store: Store,
    /// A second connection for blocking reads, as workers use.
    reader: Store,
}

impl Harness {
    async fn start() -> Harness {
        Harness::with_lease(30).await
    }

    async fn with_lease(lease_seconds: u64) -> Harness {
        Harness::with_queue(lease_seconds, 1).await
    }

    /// A store whose terminal tasks and log are kept `retention_hours`;
    /// at 0 every event already logged is past the horizon.
    async fn with_queue(lease_seconds: u64, retention_hours: u64) -> Harness {
        let redis = RedisServer::start();
        let store = Store::connect(
            &RedisConfig {
                url: redis.url(),
                prefix: "test".into(),
                startup_wait_seconds: 0,
            },
            &QueueConfig {
                lease_seconds,
                retention_hours,
            },
        )
        .await
        .expect("connecting to the test redis");
        store.ensure_group().await.expect("creating the workers group");
        let reader = store.with_own_connection().await.expect("a second connection");
        Harness { redis, store, reader }
    }

    async fn raw(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }

    async fn create(&self) -> TaskId {
        let task_id = TaskId::generate();
        let link = "https://t.me/channel/123";
        let new_task = NewTask {
            task_id: task_id.clone(),
            source: SourceKind::Telegram,
            link: link.into(),
            user_id: 123456789,
            storage: "local1".into(),
            dir: "/downloads".into(),
            title: title::pending(SourceKind::Telegram, link, "local1", "/downloads"),
        };
        let created = self.store.create(&new_task, None).await.expect("creating a task");
        assert!(created.is_new);
        task_id
    }

    /// Reads the next work item and starts it.
    async fn start_next(&self) -> Lease {
        let jobs = self
            .reader
            .read_jobs(WORKER, 1, Duration::from_secs(1))
            .await
            .expect("reading jobs");
        let job = jobs.into_iter().next().expect("a work item is waiting");
        let task_id = job.task_id.clone().expect("a decodable work item");
        self.store
            .start(&job.job_id, &task_id, WORKER)
            .await
            .expect("starting the task")
    }

    async fn status(&self, task_id: &TaskId) -> TaskStatus {
        self.store
            .get(task_id)
            .await
            .unwrap()
            .expect("the task exists")
            .task
            .status
    }

    async fn event_names(&self, task_id: &TaskId) -> Vec<&'static str> {
        self.store
            .events(task_id)
            .await
            .unwrap()
            .iter()
            .map(|logged| logged.event.kind.name())
            .collect()
    }

    /// Creates, starts and completes a task.
    async fn run_to_completion(&self) -> TaskId {
        let task_id = self.create().await;
        let lease = self.start_next().await;
        assert_eq!(lease.task.id, task_id, "the queue was not empty");
        self.store.complete(&lease, None, "/f").await.unwrap();
        task_id
    }

    /// The id of the task's event of type `name`.
    async fn event_id(&self, task_id: &TaskId, name: &str) -> String {
        let events = self.store.events(task_id).await.unwrap();
        let event = events.iter().find(|logged| logged.event.kind.name() == name);
        event.expect("the task has such an event").id.clone()
    }

    /// Records the delivery of the task's `completed` event, as the
    /// dispatcher does, and returns its webhook id.
    async fn enqueue_webhook_of(&self, task_id: &TaskId) -> String {
        let event_id = self.event_id(task_id, "completed").await;
        let webhook_id = format!("msg_{event_id}");
        let recorded = self
            .store
            .enqueue_webhook(&event_id, &webhook_id, task_id, "{}", Duration::from_secs(86_400))
            .await
            .unwrap();
        assert!(recorded);
        webhook_id
    }

    /// Claims the one delivery due, which must be `webhook_id`'s.
    async fn claim_webhook(&self, webhook_id: &str) -> ClaimedWebhook {
        let claimed = self
            .store
            .claim_webhooks("dispatcher", 1, Duration::from_secs(30))
            .await
            .unwrap();
        let claimed = claimed.into_iter().next().expect("a delivery is due");
        assert_eq!(claimed.webhook_id, webhook_id);
        claimed
    }

    /// Claims `webhook_id`'s try and records `result` with `status`.
    async fn try_webhook(&self, webhook_id: &str, result: WebhookResult, status: u16) {
        let claimed = self.claim_webhook(webhook_id).await;
        self.store
            .record_webhook(&claimed, "dispatcher", result, Some(status), "")
            .await
            .unwrap();
    }

    /// Lets the log's nodes hold `entries` each: `XTRIM MINID ~` drops only
    /// whole nodes, so small ones make its trims almost exact.
    async fn stream_nodes_of(&self, entries: u32) {
        let raw = self.raw().await;
        let _: String = raw
            .custom(
                fred::cmd!("CONFIG"),
                vec![
                    "SET".to_owned(),
                    "stream-node-max-entries".to_owned(),
                    entries.to_string(),
                ],
            )
            .await
            .unwrap();
    }

    async fn jobs_left(&self) -> (i64, i64) {
        let raw = self.raw().await;
        let length: i64 = raw.xlen(self.store.keys().jobs()).await.unwrap();
        let pending: Vec<fred::types::Value> = raw
            .xpending(self.store.keys().jobs(), "workers", ())
            .await
            .unwrap();
        let pending_count = pending.first().and_then(|value| value.as_i64()).unwrap_or(0);
        (length, pending_count)
    }
}

#[tokio::test]
async fn a_created_task_is_queued_listed_and_has_a_work_item() {
    let harness = Harness::start().await;

    let task_id = harness.create().await;

    let record = harness
        .store
        .get(&task_id)
        .await
        .unwrap()
        .expect("the task exists");
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(
        record.task.title,
        "[tgfiles](https://t.me/channel/123->local1:/downloads)"
    );
    assert_eq!(record.task.attempt, 0);
    let list = harness.store.list(100).await.unwrap();
    assert_eq!(
        list.queued.iter().map(|summary| &summary.id).collect::<Vec<_>>(),
        vec![&task_id]
    );
    assert!(list.running.is_empty());
    assert_eq!(harness.jobs_left().await, (1, 0));
    assert_eq!(harness.event_names(&task_id).await, vec!["created"]);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_task() {
    let harness = Harness::start().await;
    let new_task = |task_id: TaskId| NewTask {
        task_id,
        source: SourceKind::Http,
        link: "https://example.com/a.bin".into(),
        user_id: 1,
        storage: "local1".into(),
        dir: "/".into(),
        title: "t".into(),
    };

    let first = harness
        .store
        .create(&new_task(TaskId::generate()), Some("key-1"))
        .await
        .unwrap();
    let second = harness
        .store
        .create(&new_task(TaskId::generate()), Some("key-1"))
        .await
        .unwrap();
    let other = harness
        .store
        .create(&new_task(TaskId::generate()), Some("key-2"))
        .await
        .unwrap();
    let another_link = NewTask {
        link: "https://example.com/b.bin".into(),
        ..new_task(TaskId::generate())
    };
    let reused = harness.store.create(&another_link, Some("key-1")).await;

    assert!(first.is_new);
    assert_eq!(second.task_id, first.task_id);
    assert!(!second.is_new);
    assert!(other.is_new && other.task_id != first.task_id);
    assert!(
        matches!(&reused, Err(StoreError::IdempotencyKeyReused { first: id }) if *id == first.task_id),
        "the key repeated with another link names the first task: {reused:?}"
    );
    assert_eq!(
        harness.store.list(10).await.unwrap().queued.len(),
        2,
        "the refused create made nothing"
    );
}

#[tokio::test]
async fn an_idempotency_key_whose_task_has_expired_creates_the_task_again() {
    let harness = Harness::start().await;
    let new_task = || NewTask {
        task_id: TaskId::generate(),
        source: SourceKind::Http,
        link: "https://example.com/a.bin".into(),
        user_id: 1,
        storage: "local1".into(),
        dir: "/".into(),
        title: "t".into(),
    };
    let first = harness.store.create(&new_task(), Some("key-1")).await.unwrap();
    // What retention does to an ended task's hash (retention may be 1 hour,
    // the key lives 24).
    let raw = harness.raw().await;
    let _: i64 = raw.del(harness.store.keys().task(&first.task_id)).await.unwrap();

    let again = harness.store.create(&new_task(), Some("key-1")).await.unwrap();
    let repeat = harness.store.create(&new_task(), Some("key-1")).await.unwrap();

    assert!(again.is_new, "a repeat must not answer with a task that is gone");
    assert_ne!(again.task_id, first.task_id);
    assert!(harness.store.get(&again.task_id).await.unwrap().is_some());
    assert_eq!((repeat.task_id, repeat.is_new), (again.task_id, false));
}

#[tokio::test]
async fn a_create_sent_again_answers_created_and_makes_one_task() {
    // fred sends a command again when its connection dropped before the
    // answer, and Redis may have run it the first time.
    let harness = Harness::start().await;
    let single = numbered_task(1);
    let batched = numbered_task(2);

    let first = harness.store.create(&single, None).await.unwrap();
    let again = harness.store.create(&single, None).await.unwrap();
    harness.store.create_batch([(&batched, None)]).await.unwrap();
    let batch_again = harness.store.create_batch([(&batched, None)]).await.unwrap();

    assert_eq!(first, again);
    assert!(again.is_new, "the request did create it");
    assert_eq!(batch_again.len(), 1);
    let batch_again = batch_again.into_iter().next().unwrap().unwrap();
    assert_eq!(
        (batch_again.task_id.clone(), batch_again.is_new),
        (batched.task_id.clone(), true)
    );
    for task_id in [&single.task_id, &batched.task_id] {
        assert_eq!(harness.event_names(task_id).await, vec!["created"]);
    }
    assert_eq!(harness.jobs_left().await, (2, 0), "one work item each");
}

#[tokio::test]
async fn a_task_runs_through_start_resolve_progress_and_complete() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;

    let lease = harness.start_next().await;
    assert_eq!(lease.task.id, task_id);
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.task.status, TaskStatus::Running);
    assert_eq!(harness.store.list(10).await.unwrap().running.len(), 1);

    let final_title = title::resolved(SourceKind::Telegram, "file.pdf", "local1", "/downloads/file.pdf");
    harness
        .store
        .resolve(
            &lease,
            "file.pdf",
            Some(10),
            "/downloads/file.pdf",
            &final_title,
            None,
        )
        .await
        .unwrap();
    let progress = Progress {
        downloaded_bytes: 5,
        total_bytes: Some(10),
        bytes_per_second: 100,
    };
    harness.store.progress(&lease, &progress).await.unwrap();
    let record = harness.store.get(&task_id).await.unwrap().unwrap();
    assert_eq!(record.progress, progress);
    assert_eq!(record.task.title, final_title);

    harness
        .store
        .complete(&lease, Some(10), "/downloads/file.pdf")
        .await
        .unwrap();

    let task = harness.store.get(&task_id).await.unwrap().unwrap().task;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.path.as_deref(), Some("/downloads/file.pdf"));
    assert!(task.ended_at.is_some());
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "resolved", "completed"]
    );
    assert_eq!(
        harness.jobs_left().await,
        (0, 0),
        "the work item is acknowledged and deleted"
    );
    assert_eq!(harness.store.list(10).await.unwrap(), Default::default());
}

#[tokio::test]
async fn an_end_sent_again_by_its_own_attempt_answers_as_the_first_did() {
    // fred sends a command again when its connection dropped before the
    // answer, and Redis may have run it the first time.
    let harness = Harness::start().await;
    let completed = harness.create().await;
    let lease = harness.start_next().await;
    harness.store.complete(&lease, None, "/f").await.unwrap();
    harness.store.complete(&lease, None, "/f").await.unwrap();
    let other_end = harness.store.fail(&lease, "x").await;

    let failed = harness.create().await;
    let failing = harness.start_next().await;
    harness.store.fail(&failing, "broken").await.unwrap();
    harness.store.fail(&failing, "broken").await.unwrap();

    let exhausted = harness.create().await;
    let retrying = harness.start_next().await;
    let used_up = RetryKind::Failure { max_retries: 0 };
    let first = harness
        .store
        .retry(&retrying, "again", used_up, Duration::ZERO)
        .await;
    let again = harness
        .store
        .retry(&retrying, "again", used_up, Duration::ZERO)
        .await;

    assert!(
        matches!(
            other_end,
            Err(StoreError::Ended {
                status: TaskStatus::Completed,
                ..
            })
        ),
        "another end of the same attempt is refused: {other_end:?}"
    );
    assert_eq!(
        harness.event_names(&completed).await,
        vec!["created", "started", "completed"]
    );
    assert_eq!(
        harness.event_names(&failed).await,
        vec!["created", "started", "failed"]
    );
    assert_eq!(
        (first.unwrap(), again.unwrap()),
        (RetryOutcome::Failed, RetryOutcome::Failed)
    );
    assert_eq!(
        harness.event_names(&exhausted).await,
        vec!["created", "started", "failed"]
    );
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_change_nothing() {
    let harness = Harness::start().await;

    // A canceled task can be neither completed nor canceled again.
    let canceled = harness.create().await;
    let lease = harness.start_next().await;
    assert_eq!(
        harness.store.cancel(&canceled).await.unwrap(),
        TaskStatus::Running
    );
    let events_before = harness.event_names(&canceled).await;
    assert!(matches!(
        harness.store.complete(&lease, None, "/x").await,
        Err(StoreError::Ended {
            status: TaskStatus::Canceled,
            ..
        })
    ));
    assert!(matches!(
        harness.store.fail(&lease, "x").await,
        Err(StoreError::Ended { .. })
    ));
    assert!(matches!(
        harness.store.resolve(&lease, "f", None, "/f", "t", None).await,
        Err(StoreError::Ended { .. })
    ));
    assert!(matches!(
        harness.store.progress(&lease, &Progress::default()).await,
        Err(StoreError::Ended {
            status: TaskStatus::Canceled,
            ..
        })
    ));
    assert!(matches!(
        harness.store.cancel(&canceled).await,
        Err(StoreError::Ended {
            status: TaskStatus::Canceled,
            ..
        })
    ));
    assert_eq!(harness.event_names(&canceled).await, events_before);
    assert_eq!(harness.status(&canceled).await, TaskStatus::Canceled);

    // A completed task cannot start again from its old work item.
    let completed = harness.create().await;
    let lease = harness.start_next().await;
    harness.store.complete(&lease, None, "/f").await.unwrap();
    assert!(matches!(
        harness.store.start(&lease.job_id, &completed, WORKER).await,
        Err(StoreError::Ended {
            status: TaskStatus::Completed,
            ..
        })
    ));

    // A task that does not exist.
    let unknown = TaskId::generate();
    assert!(matches!(
        harness.store.cancel(&unknown).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(harness.store.get(&unknown).await.unwrap().is_none());
}

#[tokio::test]
async fn a_queued_task_that_is_canceled_is_never_started() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;

    assert_eq!(harness.store.cancel(&task_id).await.unwrap(), TaskStatus::Queued);

    assert_eq!(harness.jobs_left().await, (0, 0), "cancel removes the work item");
    let jobs = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(jobs.is_empty());
    assert_eq!(harness.event_names(&task_id).await, vec!["created", "canceled"]);
}

#[tokio::test]
async fn a_lease_taken_over_fences_out_the_old_holder() {
    let harness = Harness::with_lease(1).await;
    let task_id = harness.create().await;
    let old_lease = harness.start_next().await;

    // The holder stops heartbeating; after the lease another worker claims the item.
    let claimed = eventually(
        "the expired work item to be claimable",
        Duration::from_secs(5),
        || async {
            let jobs = harness.store.claim_expired("other-worker", 1).await.unwrap();
            (!jobs.is_empty()).then_some(jobs)
        },
    )
    .await;
    assert_eq!(claimed[0].job_id, old_lease.job_id);
    assert_eq!(claimed[0].takeovers, 1);
    let new_lease = harness
        .store
        .start(&claimed[0].job_id, &task_id, "other-worker")
        .await
        .unwrap();
    assert_eq!(new_lease.attempt, 2);

    assert!(matches!(
        harness.store.complete(&old_lease, None, "/a").await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        harness.store.progress(&old_lease, &Progress::default()).await,
        Err(StoreError::LeaseLost(_))
    ));
    harness.store.complete(&new_lease, None, "/b").await.unwrap();

    let events = harness.store.events(&task_id).await.unwrap();
    let completions = events
        .iter()
        .filter(|logged| logged.event.kind.name() == "completed")
        .count();
    assert_eq!(completions, 1);
    assert_eq!(
        harness
            .store
            .get(&task_id)
            .await
            .unwrap()
            .unwrap()
            .task
            .worker
            .as_deref(),
        Some("other-worker")
    );
}

#[tokio::test]
async fn takeovers_in_a_row_are_counted_and_a_retry_starts_the_count_again() {
    let harness = Harness::with_lease(1).await;
    let task_id = harness.create().await;
    let first = harness.start_next().await;
    let claim = |worker: &'static str| {
        let harness = &harness;
        async move {
            eventually(
                "the expired work item to be claimable",
                Duration::from_secs(5),
                || async {
                    let jobs = harness.store.claim_expired(worker, 1).await.unwrap();
                    jobs.into_iter().next()
                },
            )
            .await
        }
    };

    // Two workers in turn stop renewing the item (heartbeats of a live
    // holder do not count).
    harness
        .store
        .heartbeat(WORKER, std::slice::from_ref(&first.job_id))
        .await
        .unwrap();
    let once = claim("second-worker").await;
    assert_eq!(once.takeovers, 1);
    let second = harness
        .store
        .start(&once.job_id, &task_id, "second-worker")
        .await
        .unwrap();
    let twice = claim("third-worker").await;
    assert_eq!(twice.takeovers, 2);
    let third = harness
        .store
        .start(&twice.job_id, &task_id, "third-worker")
        .await
        .unwrap();
    assert_eq!(third.attempt, 3);
    assert!(second.attempt < third.attempt);

    // A retry queues a new item, read new: no takeover so far.
    harness
        .store
        .retry(
            &third,
            "failed",
            RetryKind::Failure { max_retries: 3 },
            Duration::ZERO,
        )
        .await
        .unwrap();
    let jobs = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].takeovers, 0);
    assert_ne!(jobs[0].job_id, twice.job_id);
}

#[tokio::test]
async fn a_heartbeat_keeps_the_lease() {
    let harness = Harness::with_lease(1).await;
    harness.create().await;
    let lease = harness.start_next().await;

    // Heartbeat for longer than the lease, and the item stays with its holder.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        harness
            .store
            .heartbeat(WORKER, std::slice::from_ref(&lease.job_id))
            .await
            .unwrap();
        assert!(harness
            .store
            .claim_expired("other-worker", 1)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn retryable_failures_retry_until_the_limit_then_fail_with_the_last_error() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let failure = RetryKind::Failure { max_retries: 2 };

    for round in 1..=2 {
        let lease = harness.start_next().await;
        assert_eq!(lease.attempt, round);
        let outcome = harness
            .store
            .retry(&lease, &format!("error {round}"), failure, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(outcome, RetryOutcome::Retrying);
        let task = harness.store.get(&task_id).await.unwrap().unwrap().task;
        assert_eq!((task.status, task.retries), (TaskStatus::Queued, round));
    }
    let lease = harness.start_next().await;
    let outcome = harness
        .store
        .retry(&lease, "error 3", failure, Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(outcome, RetryOutcome::Failed);
    let task = harness.store.get(&task_id).await.unwrap().unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, "error 3");
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "retrying", "started", "retrying", "started", "failed"]
    );
    assert_eq!(harness.jobs_left().await, (0, 0));
}

#[tokio::test]
async fn a_retry_with_backoff_waits_in_delayed_until_promoted() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let lease = harness.start_next().await;

    harness
        .store
        .retry(
            &lease,
            "source timed out",
            RetryKind::Failure { max_retries: 3 },
            Duration::from_millis(200),
        )
        .await
        .unwrap();

    assert_eq!(
        harness.jobs_left().await,
        (0, 0),
        "no work item while backing off"
    );
    assert!(harness.store.next_due().await.unwrap().is_some());
    assert_eq!(harness.store.promote_due(10).await.unwrap(), 0, "not due yet");
    eventually("the retry to become due", Duration::from_secs(5), || async {
        (harness.store.promote_due(10).await.unwrap() == 1).then_some(())
    })
    .await;
    let lease = harness.start_next().await;
    assert_eq!((lease.task.id, lease.attempt), (task_id, 2));
}

#[tokio::test]
async fn a_release_requeues_at_once_without_using_a_retry() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let lease = harness.start_next().await;

    let outcome = harness
        .store
        .retry(&lease, "worker shutting down", RetryKind::Release, Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(outcome, RetryOutcome::Retrying);
    let lease = harness.start_next().await;
    assert_eq!(lease.task.id, task_id);
    assert_eq!(lease.task.retries, 0);
}

#[tokio::test]
async fn a_started_attempt_shows_no_error_of_the_release_or_retry_before_it() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let error_of = |record: Option<TaskRecord>| {
        let task = record.unwrap().task;
        (task.status, task.error)
    };

    for (kind, error) in [
        (RetryKind::Release, "worker shutting down"),
        (RetryKind::Failure { max_retries: 3 }, "source timed out"),
    ] {
        let lease = harness.start_next().await;
        harness
            .store
            .retry(&lease, error, kind, Duration::ZERO)
            .await
            .unwrap();
        // Queued again, the task says why.
        assert_eq!(
            error_of(harness.store.get(&task_id).await.unwrap()),
            (TaskStatus::Queued, error.to_owned())
        );

        let lease = harness.start_next().await;

        // Running, it shows no error: neither in the lease nor when read.
        assert_eq!(lease.task.error, "", "{kind:?}");
        assert_eq!(
            error_of(harness.store.get(&task_id).await.unwrap()),
            (TaskStatus::Running, String::new())
        );
        harness
            .store
            .retry(&lease, "again", RetryKind::Release, Duration::ZERO)
            .await
            .unwrap();
    }
    // The projection is still the fold of the log.
    let folded = harness.store.fold_log().await.unwrap();
    assert_eq!(
        folded.tasks[&task_id].task,
        harness.store.get(&task_id).await.unwrap().unwrap().task
    );
}

#[tokio::test]
async fn completing_trims_acknowledged_work_items_but_never_a_pending_or_undelivered_one() {
    let harness = Harness::start().await;
    let first = harness.create().await;
    let second = harness.create().await;
    let third = harness.create().await;
    let first_lease = harness.start_next().await;
    let second_lease = harness.start_next().await;
    assert_eq!((&first_lease.task.id, &second_lease.task.id), (&first, &second));

    // The second ends while the first still runs: its item stays behind the
    // pending first one, and the undelivered third is untouched.
    harness
        .store
        .complete(&second_lease, Some(1), "/downloads/second")
        .await
        .unwrap();
    assert_eq!(harness.jobs_left().await, (3, 1));

    // With nothing pending, everything delivered goes; the third stays and is still handed out.
    harness
        .store
        .complete(&first_lease, Some(1), "/downloads/first")
        .await
        .unwrap();
    assert_eq!(harness.jobs_left().await, (1, 0));
    let third_lease = harness.start_next().await;
    assert_eq!(third_lease.task.id, third);
    assert_eq!(third_lease.attempt, 1);
}

#[tokio::test]
async fn cancel_racing_complete_has_exactly_one_winner() {
    let harness = Harness::start().await;
    let mut leases = Vec::new();
    for _ in 0..40 {
        harness.create().await;
        leases.push(harness.start_next().await);
    }

    let races = leases.iter().map(|lease| {
        let store = harness.store.clone();
        let lease = lease.clone();
        async move {
            let completing = store.complete(&lease, None, "/f");
            let canceling = store.cancel(&lease.task.id);
            let (completed, canceled) = tokio::join!(completing, canceling);
            (lease.task.id.clone(), completed.is_ok(), canceled.is_ok())
        }
    });
    let outcomes = futures::future::join_all(races).await;

    for (task_id, completed, canceled) in outcomes {
        assert!(
            completed ^ canceled,
            "task {task_id}: exactly one of complete and cancel wins"
        );
        let expected = if completed {
            TaskStatus::Completed
        } else {
            TaskStatus::Canceled
        };
        assert_eq!(harness.status(&task_id).await, expected);
        let terminal_events = harness
            .store
            .events(&task_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|logged| {
                matches!(
                    logged.event.kind,
                    EventKind::Completed { .. } | EventKind::Canceled
                )
            })
            .count();
        assert_eq!(terminal_events, 1);
    }
}

#[tokio::test]
async fn terminal_tasks_expire_after_retention_and_live_ones_do_not() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let live = harness.create().await;
    let ended = harness.create().await;
    harness.store.cancel(&ended).await.unwrap();

    let live_ttl: i64 = raw.pttl(harness.store.keys().task(&live)).await.unwrap();
    let ended_ttl: i64 = raw.pttl(harness.store.keys().task(&ended)).await.unwrap();

    assert_eq!(live_ttl, -1, "a live task never expires");
    let hour_ms = 3_600_000;
    assert!(
        ended_ttl > hour_ms - 10_000 && ended_ttl <= hour_ms,
        "ttl {ended_ttl}"
    );
}

#[tokio::test]
async fn an_undecodable_work_item_is_reported_and_can_be_discarded() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let _: String = raw
        .xadd(
            harness.store.keys().jobs(),
            false,
            None,
            "*",
            vec![("task", "not-a-task-id")],
        )
        .await
        .unwrap();

    let jobs = harness
        .reader
        .read_jobs(WORKER, 10, Duration::from_millis(100))
        .await
        .unwrap();

    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].task_id, Err("not-a-task-id".to_owned()));
    harness.store.discard_job(&jobs[0].job_id).await.unwrap();
    assert_eq!(harness.jobs_left().await, (0, 0));
}

/// A mixed workload: completed, failed, canceled, retried, taken over,
/// running and queued tasks; resolved files with a validator, without one,
/// and with one replaced by a file without.
async fn mixed_workload(harness: &Harness) {
    let failure = RetryKind::Failure { max_retries: 1 };
    // completed, resolved with a validator
    harness.create().await;
    let lease = harness.start_next().await;
    harness
        .store
        .resolve(
            &lease,
            "a.bin",
            Some(3),
            "/downloads/a.bin",
            "[tgfiles](a.bin->local1:/downloads/a.bin)",
            Some("\"a-etag\""),
        )
        .await
        .unwrap();
    harness
        .store
        .complete(&lease, Some(3), "/downloads/a.bin")
        .await
        .unwrap();
    // failed after a retry; resolved with a validator by the first attempt,
    // which the retry keeps
    harness.create().await;
    let lease = harness.start_next().await;
    harness
        .store
        .resolve(
            &lease,
            "b.bin",
            None,
            "/downloads/b.bin",
            "t",
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
        )
        .await
        .unwrap();
    harness
        .store
        .retry(&lease, "first", failure, Duration::ZERO)
        .await
        .unwrap();
    let lease = harness.start_next().await;
    harness
        .store
        .retry(&lease, "second", failure, Duration::ZERO)
        .await
        .unwrap();
    // canceled while queued, and while running
    let queued = harness.create().await;
    harness.store.cancel(&queued).await.unwrap();
    harness.create().await;
    let lease = harness.start_next().await;
    harness.store.cancel(&lease.task.id).await.unwrap();
    // backing off
    harness.create().await;
    let lease = harness.start_next().await;
    harness
        .store
        .retry(&lease, "later", failure, Duration::from_secs(60))
        .await
        .unwrap();
    // running, its validator replaced by a file without one; and plain queued
    harness.create().await;
    let lease = harness.start_next().await;
    harness
        .store
        .resolve(&lease, "c.bin", Some(5), "/downloads/c.bin", "t", Some("\"c\""))
        .await
        .unwrap();
    harness
        .store
        .resolve(&lease, "c.bin", Some(5), "/downloads/c.bin", "t", None)
        .await
        .unwrap();
    harness.create().await;
}

#[tokio::test]
async fn the_fold_over_the_log_equals_the_live_projection() {
    let harness = Harness::start().await;
    mixed_workload(&harness).await;

    let folded: HashMap<_, _> = harness
        .store
        .fold_log()
        .await
        .unwrap()
        .tasks
        .into_iter()
        .map(|(id, folded)| (id, folded.task))
        .collect();
    let live = harness.store.projection().await.unwrap();

    assert_eq!(folded.len(), 7);
    assert_eq!(folded, live);
    let mut validators: Vec<Option<String>> = live.values().map(|task| task.validator.clone()).collect();
    validators.sort();
    assert_eq!(
        validators,
        [
            vec![None; 5],
            vec![
                Some("\"a-etag\"".to_owned()),
                Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned())
            ]
        ]
        .concat(),
        "the workload's validators reach the projection, so the equality covers them"
    );
}

#[tokio::test]
async fn a_validator_is_recorded_in_the_event_and_the_hash_only_when_there_is_one() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let lease = harness.start_next().await;
    let raw = harness.raw().await;
    let hash_field = |raw: Client| {
        let key = harness.store.keys().task(&task_id);
        async move {
            let value: Option<String> = raw.hget(key, "validator").await.unwrap();
            value
        }
    };
    let validators = || async {
        let mut found = Vec::new();
        for logged in harness.store.events(&task_id).await.unwrap() {
            if let EventKind::Resolved { validator, .. } = logged.event.kind {
                found.push(validator);
            }
        }
        found
    };

    harness
        .store
        .resolve(&lease, "f.bin", Some(3), "/f.bin", "t", None)
        .await
        .unwrap();
    assert_eq!(hash_field(raw.clone()).await, None, "no empty field");
    harness
        .store
        .resolve(&lease, "f.bin", Some(3), "/f.bin", "t", Some(""))
        .await
        .unwrap();
    assert_eq!(hash_field(raw.clone()).await, None, "no empty field");
    harness
        .store
        .resolve(&lease, "f.bin", Some(3), "/f.bin", "t", Some("\"v1\""))
        .await
        .unwrap();
    assert_eq!(hash_field(raw.clone()).await.as_deref(), Some("\"v1\""));
    let record = harness.store.get(&task_id).await.unwrap().unwrap();
    assert_eq!(record.task.validator.as_deref(), Some("\"v1\""));

    // The next attempt's lease carries it: what a resume sends as If-Range.
    harness
        .store
        .retry(&lease, "died", RetryKind::Release, Duration::ZERO)
        .await
        .unwrap();
    let lease = harness.start_next().await;
    assert_eq!(lease.task.validator.as_deref(), Some("\"v1\""));

    // A file resolved without one replaces it, as its name and size do.
    harness
        .store
        .resolve(&lease, "f.bin", Some(3), "/f.bin", "t", None)
        .await
        .unwrap();
    assert_eq!(hash_field(raw.clone()).await, None);
    assert_eq!(
        validators().await,
        vec![None, None, Some("\"v1\"".to_owned()), None]
    );
    // The raw entries: no `validator` field where there is none.
    let entries: Vec<(String, HashMap<String, String>)> = raw
        .xrange(harness.store.keys().events(), "-", "+", None)
        .await
        .unwrap();
    let resolved_fields: Vec<Option<String>> = entries
        .into_iter()
        .filter(|(_, fields)| fields.get("type").map(String::as_str) == Some("resolved"))
        .map(|(_, fields)| fields.get("validator").cloned())
        .collect();
    assert_eq!(resolved_fields, vec![None, None, Some("\"v1\"".to_owned()), None]);
}

#[tokio::test]
async fn rebuild_restores_a_lost_projection_that_equals_the_live_one() {
    let harness = Harness::start().await;
    mixed_workload(&harness).await;
    let live = harness.store.projection().await.unwrap();
    let list_before = harness.store.list(100).await.unwrap();
    let raw = harness.raw().await;
    let delayed_before: Vec<String> = raw
        .zrange(harness.store.keys().delayed(), 0, -1, None, false, None, false)
        .await
        .unwrap();

    let mut events_before = HashMap::new();
    for task_id in live.keys() {
        events_before.insert(task_id.clone(), harness.store.events(task_id).await.unwrap());
    }
    // Lose the projection: every task hash and the sorted sets.
    for task_id in live.keys() {
        let _: i64 = raw.del(harness.store.keys().task(task_id)).await.unwrap();
    }
    let _: i64 = raw
        .del(vec![
            harness.store.keys().queued(),
            harness.store.keys().running(),
            harness.store.keys().delayed(),
        ])
        .await
        .unwrap();
    let report = harness.store.rebuild().await.unwrap();
    for (task_id, events) in &events_before {
        assert_eq!(
            &harness.store.events(task_id).await.unwrap(),
            events,
            "task {task_id}'s history"
        );
    }

    assert_eq!(
        (report.tasks, report.queued, report.running, report.delayed),
        (7, 2, 1, 1)
    );
    assert_eq!(harness.store.projection().await.unwrap(), live);
    assert_eq!(harness.store.list(100).await.unwrap(), list_before);
    let delayed_after: Vec<String> = raw
        .zrange(harness.store.keys().delayed(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(delayed_after, delayed_before);
    // The queued task still runs from its work item.
    let lease = harness.start_next().await;
    assert_eq!(lease.task.status, TaskStatus::Running);
}

#[tokio::test]
async fn a_redis_error_inside_a_worker_batch_leaves_the_sets_agreeing_with_the_tasks_before_it() {
    let harness = Harness::start().await;
    harness.create().await;
    harness.create().await;
    let first = harness.start_next().await;
    let second = harness.start_next().await;
    // Where the second task's hash should be, a key of another type: Redis
    // itself fails inside the call, after the first task's completion ran.
    let raw = harness.raw().await;
    let second_key = harness.store.keys().task(&second.task.id);
    let _: i64 = raw.del(&second_key).await.unwrap();
    let _: () = raw
        .set(&second_key, "not a hash", None, None, false)
        .await
        .unwrap();

    let result = harness
        .store
        .complete_batch(&[(&first, None, "/a"), (&second, None, "/b")])
        .await;

    assert!(result.is_err(), "the call fails as a whole");
    assert_eq!(harness.status(&first.task.id).await, TaskStatus::Completed);
    let running: Vec<String> = raw
        .zrange(harness.store.keys().running(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(
        running,
        vec![second.task.id.to_string()],
        "the completed task left `running`"
    );
    assert_eq!(harness.jobs_left().await.1, 1, "its work item was acknowledged");
}

#[tokio::test]
async fn a_task_whose_hash_cannot_be_read_at_its_start_fails_with_the_reason_instead_of_staying_running() {
    let harness = Harness::start().await;
    let single = harness.create().await;
    let batched = harness.create().await;
    // A field no build of this version writes: another version's, or a hand edit.
    let raw = harness.raw().await;
    for task_id in [&single, &batched] {
        let _: () = raw
            .hset(
                harness.store.keys().task(task_id),
                ("request", "[\"carrier-pigeon\"]"),
            )
            .await
            .unwrap();
    }
    let jobs = harness
        .reader
        .read_jobs(WORKER, 2, Duration::from_secs(1))
        .await
        .unwrap();

    let started = harness.store.start(&jobs[0].job_id, &single, WORKER).await;
    let started_in_batch = harness
        .store
        // As an item that carries no task fields is: its lease comes from the hash.
        .start_batch(
            &[Job {
                carried: None,
                ..jobs[1].clone()
            }],
            WORKER,
        )
        .await
        .unwrap();

    for (task_id, answer) in [
        (&single, started.map(|_| ())),
        (&batched, started_in_batch[0].clone().map(|_| ())),
    ] {
        assert!(
            matches!(
                answer,
                Err(StoreError::Ended {
                    status: TaskStatus::Failed,
                    ..
                })
            ),
            "{answer:?}"
        );
        let error: String = raw
            .hget(harness.store.keys().task(task_id), "error")
            .await
            .unwrap();
        assert!(
            error.contains("cannot read this task") && error.contains("create the task again"),
            "{error}"
        );
        assert_eq!(
            harness.event_names(task_id).await,
            vec!["created", "started", "failed"]
        );
    }
    assert_eq!(harness.jobs_left().await.1, 0, "no work item is left pending");
}

#[tokio::test]
async fn trimming_the_log_keeps_the_whole_history_of_every_queued_and_running_task() {
    // Retention 0: every event logged before the trim is past the horizon.
    let harness = Harness::with_queue(30, 0).await;
    harness.stream_nodes_of(2).await;
    for _ in 0..10 {
        harness.run_to_completion().await;
    }
    let running = harness.create().await;
    harness.start_next().await;
    let queued = harness.create().await;
    for _ in 0..10 {
        harness.create().await;
    }

    let trimmed = harness.store.trim_log().await.unwrap();

    assert!(trimmed >= 20, "the ended tasks' events go ({trimmed} trimmed)");
    assert_eq!(harness.event_names(&running).await, vec!["created", "started"]);
    assert_eq!(harness.event_names(&queued).await, vec!["created"]);
    // What the log holds still folds: a rebuild of a lost projection works.
    let raw = harness.raw().await;
    let _: i64 = raw.del(harness.store.keys().task(&running)).await.unwrap();
    harness.store.rebuild().await.unwrap();
    assert_eq!(harness.status(&running).await, TaskStatus::Running);
    assert_eq!(harness.status(&queued).await, TaskStatus::Queued);
}

#[tokio::test]
async fn trimming_the_log_keeps_events_the_webhook_dispatcher_has_not_acknowledged() {
    let harness = Harness::with_queue(30, 0).await;
    harness.stream_nodes_of(2).await;
    harness.store.ensure_webhooks_group().await.unwrap();
    for _ in 0..5 {
        harness.run_to_completion().await;
    }

    let trimmed_before_delivery = harness.store.trim_log().await.unwrap();
    let read = harness
        .reader
        .read_events("dispatcher", 100, Duration::from_millis(100))
        .await
        .unwrap();
    harness
        .store
        .ack_events(&read.iter().map(|entry| entry.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    let trimmed_after_delivery = harness.store.trim_log().await.unwrap();

    assert_eq!(trimmed_before_delivery, 0);
    assert_eq!(read.len(), 15, "all five tasks' events reach the dispatcher");
    assert!(
        trimmed_after_delivery >= 14,
        "{trimmed_after_delivery} trimmed once delivered"
    );
}

#[tokio::test]
async fn a_rebuild_keeps_the_projection_of_tasks_whose_history_was_trimmed_at_its_start() {
    let harness = Harness::start().await;
    let ended = harness.create().await;
    let running = harness.create().await;
    let ended_lease = harness.start_next().await;
    harness.start_next().await;
    harness.store.complete(&ended_lease, None, "/f").await.unwrap();
    let whole = harness.create().await;
    let live = harness.store.projection().await.unwrap();
    // Cut both first tasks' histories in two, as a trim at that point would.
    let raw = harness.raw().await;
    let cut = harness.event_id(&ended, "started").await;
    let _: i64 = raw
        .custom(
            fred::cmd!("XTRIM"),
            vec![harness.store.keys().events(), "MINID".into(), cut],
        )
        .await
        .unwrap();
    let _: i64 = raw.del(harness.store.keys().running()).await.unwrap();

    let folded = harness.store.fold_log().await.unwrap();
    let report = harness.store.rebuild().await.unwrap();

    assert_eq!(
        folded.truncated,
        [ended.clone(), running.clone()].into_iter().collect()
    );
    assert_eq!(
        (report.tasks, report.kept, report.running, report.queued),
        (1, 2, 1, 1)
    );
    assert_eq!(harness.store.projection().await.unwrap(), live);
    let list = harness.store.list(10).await.unwrap();
    assert_eq!(
        list.running.iter().map(|task| &task.id).collect::<Vec<_>>(),
        vec![&running]
    );
    assert_eq!(
        list.queued.iter().map(|task| &task.id).collect::<Vec<_>>(),
        vec![&whole]
    );
}

#[tokio::test]
async fn a_rebuild_gives_a_task_waiting_out_a_retry_no_spent_work_item() {
    let harness = Harness::start().await;
    // A running task's pending item keeps every later item on `jobs`, spent or not.
    harness.create().await;
    harness.start_next().await;
    let backing_off = harness.create().await;
    let lease = harness.start_next().await;
    harness
        .store
        .retry(
            &lease,
            "later",
            RetryKind::Failure { max_retries: 3 },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let raw = harness.raw().await;
    let _: i64 = raw.del(harness.store.keys().task(&backing_off)).await.unwrap();
    let _: i64 = raw.del(harness.store.keys().delayed()).await.unwrap();

    let report = harness.store.rebuild().await.unwrap();

    assert_eq!(report.delayed, 1);
    let delayed: Vec<String> = raw
        .zrange(harness.store.keys().delayed(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(delayed, vec![backing_off.to_string()]);
    let job: String = raw
        .hget(harness.store.keys().task(&backing_off), "job")
        .await
        .unwrap();
    assert_eq!(
        job, "",
        "its spent item was acknowledged: no worker will be handed it again"
    );
}

#[tokio::test]
async fn a_rebuild_restores_each_task_s_webhook_summary_from_its_delivery_record() {
    let harness = Harness::start().await;
    harness.store.ensure_webhooks_group().await.unwrap();
    let delivered = harness.run_to_completion().await;
    let gone = harness.run_to_completion().await;
    let retrying = harness.run_to_completion().await;
    let untried = harness.run_to_completion().await;
    let queued = harness.create().await;
    let delivered_id = harness.enqueue_webhook_of(&delivered).await;
    harness
        .try_webhook(&delivered_id, WebhookResult::Delivered, 200)
        .await;
    let gone_id = harness.enqueue_webhook_of(&gone).await;
    harness.try_webhook(&gone_id, WebhookResult::Gone, 410).await;
    let retrying_id = harness.enqueue_webhook_of(&retrying).await;
    let retry = WebhookResult::Retry {
        delay: Duration::ZERO,
    };
    harness.try_webhook(&retrying_id, retry, 503).await;
    // Its second try is claimed and not yet recorded: the task shows one.
    let second_try = harness.claim_webhook(&retrying_id).await;
    let untried_id = harness.enqueue_webhook_of(&untried).await;
    let tasks = [&delivered, &gone, &retrying, &untried, &queued];
    let summaries = || async {
        let mut summaries = Vec::new();
        for task_id in tasks {
            summaries.push(harness.store.task_webhook(task_id).await.unwrap());
        }
        summaries
    };
    let summary = |webhook_id: &str, state, attempts, last_status| {
        Some(TaskWebhook {
            webhook_id: webhook_id.to_owned(),
            state,
            attempts,
            last_status,
        })
    };
    let before = summaries().await;
    assert_eq!(
        before,
        vec![
            summary(&delivered_id, WebhookState::Delivered, 1, Some(200)),
            summary(&gone_id, WebhookState::GaveUp, 1, Some(410)),
            summary(&retrying_id, WebhookState::Retrying, 1, Some(503)),
            summary(&untried_id, WebhookState::Pending, 0, None),
            None,
        ]
    );
    let live = harness.store.projection().await.unwrap();

    // Lose the projection: every task hash and the sorted sets.
    let raw = harness.raw().await;
    for task_id in live.keys() {
        let _: i64 = raw.del(harness.store.keys().task(task_id)).await.unwrap();
    }
    let _: i64 = raw
        .del(vec![
            harness.store.keys().queued(),
            harness.store.keys().running(),
            harness.store.keys().delayed(),
        ])
        .await
        .unwrap();
    let report = harness.store.rebuild().await.unwrap();

    assert_eq!(report.tasks, 5);
    assert_eq!(harness.store.projection().await.unwrap(), live);
    assert_eq!(summaries().await, before);
    // The claimed try's result reaches a hash that names its delivery.
    harness
        .store
        .record_webhook(&second_try, "dispatcher", WebhookResult::Delivered, Some(204), "")
        .await
        .unwrap();
    assert_eq!(
        harness.store.task_webhook(&retrying).await.unwrap(),
        summary(&retrying_id, WebhookState::Delivered, 2, Some(204))
    );
}

#[tokio::test]
async fn a_rebuild_keeps_the_progress_of_the_hash_it_replaces() {
    let harness = Harness::start().await;
    let ended = harness.create().await;
    let lease = harness.start_next().await;
    let final_count = Progress {
        downloaded_bytes: 10,
        total_bytes: Some(10),
        bytes_per_second: 0,
    };
    harness.store.progress(&lease, &final_count).await.unwrap();
    harness.store.complete(&lease, Some(10), "/f").await.unwrap();
    let running = harness.create().await;
    let lease = harness.start_next().await;
    let midway = Progress {
        downloaded_bytes: 5,
        total_bytes: None,
        bytes_per_second: 100,
    };
    harness.store.progress(&lease, &midway).await.unwrap();
    let progress = |task_id: &TaskId| {
        let task_id = task_id.clone();
        let store = &harness.store;
        async move { store.get(&task_id).await.unwrap().unwrap().progress }
    };

    harness.store.rebuild().await.unwrap();

    assert_eq!(progress(&ended).await, final_count);
    assert_eq!(progress(&running).await, midway);
    // Progress is on no event: a lost hash's is gone, until the worker's
    // next write.
    let raw = harness.raw().await;
    let _: i64 = raw.del(harness.store.keys().task(&running)).await.unwrap();
    harness.store.rebuild().await.unwrap();
    assert_eq!(progress(&running).await, Progress::default());
    assert_eq!(harness.status(&running).await, TaskStatus::Running);
    harness.store.progress(&lease, &midway).await.unwrap();
    assert_eq!(progress(&running).await, midway);
}

#[tokio::test]
async fn a_rebuild_skips_a_delivery_record_it_cannot_read_and_restores_every_task() {
    let harness = Harness::start().await;
    harness.store.ensure_webhooks_group().await.unwrap();
    let delivered = harness.run_to_completion().await;
    let garbled = harness.run_to_completion().await;
    let queued = harness.create().await;
    let delivered_id = harness.enqueue_webhook_of(&delivered).await;
    harness
        .try_webhook(&delivered_id, WebhookResult::Delivered, 200)
        .await;
    let garbled_id = harness.enqueue_webhook_of(&garbled).await;
    let raw = harness.raw().await;
    let keys = harness.store.keys();
    // A record whose task cannot be read; one with none of a record's
    // fields, as one that expires between the scan and its reading looks
    // to a read of its fields; and a key of another type.
    let _: () = raw
        .hset(keys.webhook(&garbled_id), ("task", "not a task id"))
        .await
        .unwrap();
    let _: () = raw.hset(keys.webhook("msg_husk"), ("junk", "1")).await.unwrap();
    let _: () = raw
        .set(keys.webhook("msg_string"), "not a hash", None, None, false)
        .await
        .unwrap();
    let live = harness.store.projection().await.unwrap();
    for task_id in live.keys() {
        let _: i64 = raw.del(keys.task(task_id)).await.unwrap();
    }
    let _: i64 = raw.del(keys.queued()).await.unwrap();

    let report = harness.store.rebuild().await.unwrap();

    assert_eq!((report.tasks, report.queued), (3, 1));
    assert_eq!(harness.store.projection().await.unwrap(), live);
    assert_eq!(
        harness.store.task_webhook(&delivered).await.unwrap(),
        Some(TaskWebhook {
            webhook_id: delivered_id,
            state: WebhookState::Delivered,
            attempts: 1,
            last_status: Some(200),
        })
    );
    assert_eq!(
        harness.store.task_webhook(&garbled).await.unwrap(),
        None,
        "an unreadable record gives its task no summary"
    );
    let list = harness.store.list(10).await.unwrap();
    assert_eq!(
        list.queued.iter().map(|task| &task.id).collect::<Vec<_>>(),
        vec![&queued]
    );
}

#[tokio::test]
async fn a_rebuild_replaces_a_task_key_that_holds_no_hash_with_the_task_from_the_log() {
    let harness = Harness::start().await;
    let ended = harness.run_to_completion().await;
    let running = harness.create().await;
    let lease = harness.start_next().await;
    let midway = Progress {
        downloaded_bytes: 5,
        total_bytes: Some(10),
        bytes_per_second: 100,
    };
    harness.store.progress(&lease, &midway).await.unwrap();
    let queued = harness.create().await;
    let live = harness.store.projection().await.unwrap();
    // The ended and the running task's keys damaged: strings where their
    // hashes were.
    let raw = harness.raw().await;
    for task_id in [&ended, &running] {
        let _: () = raw
            .set(
                harness.store.keys().task(task_id),
                "not a hash",
                None,
                None,
                false,
            )
            .await
            .unwrap();
    }

    let report = harness.store.rebuild().await.unwrap();

    assert_eq!((report.tasks, report.running, report.queued), (3, 1, 1));
    assert_eq!(harness.store.projection().await.unwrap(), live);
    let ttl: i64 = raw.pttl(harness.store.keys().task(&ended)).await.unwrap();
    assert!(ttl > 0, "the ended task's hash expires again ({ttl})");
    // The damaged key held the only copy of the progress: it is gone,
    // until the worker's next write.
    assert_eq!(
        harness.store.get(&running).await.unwrap().unwrap().progress,
        Progress::default()
    );
    let list = harness.store.list(10).await.unwrap();
    assert_eq!(
        list.running.iter().map(|task| &task.id).collect::<Vec<_>>(),
        vec![&running]
    );
    assert_eq!(
        list.queued.iter().map(|task| &task.id).collect::<Vec<_>>(),
        vec![&queued]
    );
}

#[tokio::test]
async fn the_library_is_reloaded_when_redis_loses_it() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let _: String = raw.custom(fred::cmd!("FUNCTION"), vec!["FLUSH"]).await.unwrap();

    let task_id = harness.create().await;

    assert_eq!(harness.status(&task_id).await, TaskStatus::Queued);
}

/// Loads a library as a process of another build would: named after its
/// `version`, with a create of that version that answers "other build".
async fn load_other_build(raw: &Client, version: &str) {
    let source = format!(
        "#!lua name=savestream_{version}\n\
         redis.register_function('savestream_create_{version}', function() return 'other build' end)\n"
    );
    let _: String = raw.function_load(false, source).await.unwrap();
}

/// Stamps library `version` as last used `at`, as a heartbeat of a process
/// of that build would.
async fn stamp(raw: &Client, version: &str, at: Millis) {
    let _: i64 = raw
        .zadd(LIBRARIES_IN_USE, None, None, false, false, (at as f64, version))
        .await
        .unwrap();
}

/// An API process's registry entry.
fn an_api_process() -> savestream_shared::store::ApiInfo {
    savestream_shared::store::ApiInfo {
        name: "api-1".into(),
        host: "host".into(),
        pid: 1,
        address: "127.0.0.1:8080".into(),
        started_at: now(),
        seen_at: 0,
    }
}

/// The time now, as Redis scores heartbeats: Unix milliseconds.
fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as Millis
}

/// The savestream libraries loaded in Redis, by name, sorted.
async fn loaded_libraries(raw: &Client) -> Vec<String> {
    let listed: Vec<Vec<Value>> = raw.function_list(Some("savestream*"), false).await.unwrap();
    let mut names: Vec<String> = listed
        .into_iter()
        .map(|fields| fields[1].as_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_libraries_of_two_live_builds_stay_loaded_side_by_side() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    // A process of another build is running: it loaded its library and
    // stamped its heartbeat.
    let other = "0123456789abcdef";
    load_other_build(&raw, other).await;
    stamp(&raw, other, now()).await;

    // A process of this build starts, and works.
    harness.store.load_library().await.unwrap();
    let task_id = harness.create().await;

    assert_eq!(harness.status(&task_id).await, TaskStatus::Queued);
    let mut expected = vec![format!("savestream_{other}"), Store::library_name()];
    expected.sort();
    assert_eq!(loaded_libraries(&raw).await, expected);
    let answer: String = raw
        .fcall(
            format!("savestream_create_{other}"),
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer, "other build");
}

#[tokio::test]
async fn loading_deletes_the_libraries_no_live_process_runs() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    // One build last heard of two horizons ago, one never stamped, and one
    // from before versioned libraries, under the bare name.
    let gone = "00000000000000aa";
    let unstamped = "00000000000000bb";
    load_other_build(&raw, gone).await;
    load_other_build(&raw, unstamped).await;
    stamp(&raw, gone, now() - 2 * LIBRARY_HORIZON.as_millis() as Millis).await;
    let legacy = "#!lua name=savestream\n\
        redis.register_function('savestream_create', function() return 'legacy' end)\n";
    let _: String = raw.function_load(false, legacy).await.unwrap();

    harness.store.load_library().await.unwrap();

    assert_eq!(loaded_libraries(&raw).await, vec![Store::library_name()]);
    let stamps: Vec<String> = raw
        .zrange(LIBRARIES_IN_USE, 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert!(!stamps.contains(&gone.to_owned()), "{stamps:?}");
    // This build, which no process has stamped yet, still works.
    let task_id = harness.create().await;
    assert_eq!(harness.status(&task_id).await, TaskStatus::Queued);
}

#[tokio::test]
async fn a_heartbeat_stamps_the_build_whose_library_the_process_runs() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let before = now();

    harness.store.register_api(&an_api_process()).await.unwrap();

    let stamp: Option<f64> = raw
        .zscore(LIBRARIES_IN_USE, Store::library_version())
        .await
        .unwrap();
    let stamp = stamp.expect("this build's version is stamped") as Millis;
    assert!(
        stamp >= before && stamp <= now(),
        "{stamp} not within [{before}, now]"
    );
}

#[tokio::test]
async fn a_redis_user_that_may_not_prune_libraries_still_starts_registers_and_creates() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let stale = "00000000000000cc";
    load_other_build(&raw, stale).await;
    // A user confined to the deployment's keys, who may load libraries but
    // not delete them.
    let _: Value = raw
        .custom(
            fred::cmd!("ACL"),
            vec![
                "SETUSER",
                "confined",
                "on",
                ">secret",
                "~{test}:*",
                "+@all",
                "-function|delete",
            ],
        )
        .await
        .unwrap();
    let url = harness
        .redis
        .url()
        .replacen("redis://", "redis://confined:secret@", 1);
    let queue = QueueConfig {
        lease_seconds: 30,
        retention_hours: 1,
    };
    let redis = RedisConfig {
        url,
        prefix: "test".into(),
        startup_wait_seconds: 0,
    };

    let store = Store::connect(&redis, &queue)
        .await
        .expect("connecting as the confined user");
    store
        .register_api(&an_api_process())
        .await
        .expect("registering as the confined user");
    let created = store
        .create(&numbered_task(1), None)
        .await
        .expect("creating as the confined user");

    assert_eq!(harness.status(&created.task_id).await, TaskStatus::Queued);
    assert!(loaded_libraries(&raw)
        .await
        .contains(&format!("savestream_{stale}")));
}

#[tokio::test]
async fn a_call_finds_its_library_again_after_another_process_deleted_it() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let _: Value = raw.function_delete(Store::library_name()).await.unwrap();

    let task_id = harness.create().await;

    assert_eq!(harness.status(&task_id).await, TaskStatus::Queued);
    assert_eq!(loaded_libraries(&raw).await, vec![Store::library_name()]);
}

/// A new direct-link task, its link and title numbered `index`.
fn numbered_task(index: usize) -> NewTask {
    NewTask {
        task_id: TaskId::generate(),
        source: SourceKind::Http,
        link: format!("https://example.com/{index}"),
        user_id: 1,
        storage: "local1".into(),
        dir: "/".into(),
        title: format!("t{index}"),
    }
}

#[tokio::test]
async fn a_batch_honours_idempotency_keys_within_it_and_from_before() {
    let harness = Harness::start().await;
    let earlier = harness
        .store
        .create(&numbered_task(0), Some("used-before"))
        .await
        .unwrap();
    // Keyed and unkeyed creates interleaved, so each key must be read at
    // its own task's place in KEYS; a key's repeats are the same request
    // (the same link), each with an id of its own.
    let tasks: Vec<NewTask> = [1, 2, 1, 0, 5].into_iter().map(numbered_task).collect();
    let keys = [Some("k"), None, Some("k"), Some("used-before"), None];

    let created = harness.store.create_batch(tasks.iter().zip(keys)).await.unwrap();

    let created: Vec<_> = created.into_iter().map(Result::unwrap).collect();
    assert!(created[0].is_new && created[0].task_id == tasks[0].task_id);
    assert!(created[1].is_new && created[1].task_id == tasks[1].task_id);
    assert!(!created[2].is_new && created[2].task_id == tasks[0].task_id);
    assert!(!created[3].is_new && created[3].task_id == earlier.task_id);
    assert!(created[4].is_new && created[4].task_id == tasks[4].task_id);
    let queued = harness.store.list(10).await.unwrap().queued;
    assert_eq!(
        queued.len(),
        4,
        "the earlier task and three of the five: {queued:?}"
    );
    let later = harness.store.create(&numbered_task(1), Some("k")).await.unwrap();
    assert_eq!(later.task_id, tasks[0].task_id, "the batch recorded the key");
    let other = harness.store.create(&numbered_task(6), Some("k")).await;
    assert!(
        matches!(&other, Err(StoreError::IdempotencyKeyReused { first }) if *first == tasks[0].task_id),
        "the key with another request: {other:?}"
    );
}

/// Concurrent creates of different clients share batches, so a Redis error
/// in one task (here a corrupt idempotency key: `GET` on a hash) must stay
/// that task's: the others are created and answered as created.
#[tokio::test]
async fn a_redis_error_in_one_task_of_a_batch_fails_that_task_only() {
    use sha2::Digest;
    let harness = Harness::start().await;
    let digest: String = sha2::Sha256::digest(b"poisoned")
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let raw = harness.raw().await;
    let _: () = raw
        .hset(harness.store.keys().idempotency(&digest), ("not", "a string"))
        .await
        .unwrap();
    let tasks: Vec<NewTask> = (1..=3).map(numbered_task).collect();

    let created = harness
        .store
        .create_batch(tasks.iter().zip([None, Some("poisoned"), None]))
        .await
        .expect("the batch call itself succeeds");

    assert!(created[0].as_ref().is_ok_and(|created| created.is_new));
    assert!(
        matches!(&created[1], Err(StoreError::Corrupt(details)) if details.contains("WRONGTYPE")),
        "{:?}",
        created[1]
    );
    assert!(created[2].as_ref().is_ok_and(|created| created.is_new));
    let queued: Vec<TaskId> = harness
        .store
        .list(10)
        .await
        .unwrap()
        .queued
        .into_iter()
        .map(|summary| summary.id)
        .collect();
    assert_eq!(queued, vec![tasks[0].task_id.clone(), tasks[2].task_id.clone()]);
}

/// What the task hash holds for the task a lease is of: the lease a start
/// that reads the hash would give.
async fn task_in_hash(harness: &Harness, lease: &Lease) -> savestream_shared::task::Task {
    harness
        .store
        .get(&lease.task.id)
        .await
        .unwrap()
        .expect("the task exists")
        .task
}

#[tokio::test]
async fn a_first_start_takes_the_task_from_its_work_item_as_the_hash_holds_it() {
    let harness = Harness::start().await;
    let single = harness.create().await;
    let new_tasks: Vec<NewTask> = (0..3).map(numbered_task).collect();
    for created in harness
        .store
        .create_batch(new_tasks.iter().map(|new_task| (new_task, None)))
        .await
        .unwrap()
    {
        created.unwrap();
    }
    let jobs = harness
        .reader
        .read_jobs(WORKER, 4, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|job| job.carried.is_some()), "{jobs:?}");
    assert_eq!(jobs[0].task_id.as_ref().unwrap(), &single);

    let alone = harness.store.start_job(&jobs[0], WORKER).await.unwrap();
    let batched: Vec<Lease> = harness
        .store
        .start_batch(&jobs[1..], WORKER)
        .await
        .unwrap()
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();

    for lease in std::iter::once(&alone).chain(&batched) {
        assert_eq!(lease.attempt, 1);
        assert_eq!(lease.task, task_in_hash(&harness, lease).await);
        assert_eq!(lease.progress, Progress::default());
    }
    let titles: Vec<&str> = batched.iter().map(|lease| lease.task.title.as_str()).collect();
    let created_titles: Vec<&str> = new_tasks.iter().map(|new_task| new_task.title.as_str()).collect();
    assert_eq!(titles, created_titles);
}

#[tokio::test]
async fn a_work_item_that_carries_fields_still_reads_the_hash_past_the_first_attempt() {
    let harness = Harness::start().await;
    let task_id = harness.create().await;
    let jobs = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .unwrap();
    let job = jobs.into_iter().next().expect("a work item");
    assert!(job.carried.is_some());
    let first = harness.store.start_job(&job, WORKER).await.unwrap();
    let progress = Progress {
        downloaded_bytes: 500,
        total_bytes: Some(1000),
        bytes_per_second: 10,
    };
    harness.store.progress(&first, &progress).await.unwrap();

    // The same item again, as a worker that read it and was not told of a
    // takeover would present it: the start is the second attempt, whose
    // lease must hold what the first left, which only the hash has.
    let second = harness.store.start_job(&job, "second-worker").await.unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.progress, progress);
    assert_eq!(second.task, task_in_hash(&harness, &second).await);
    assert_eq!(second.task.worker.as_deref(), Some("second-worker"));
    assert_eq!(second.task.id, task_id);

    // So does a batch.
    let third = harness.store.start_batch(&[job], "third-worker").await.unwrap();
    let third = third.into_iter().next().unwrap().unwrap();
    assert_eq!(third.attempt, 3);
    assert_eq!(third.progress, progress);
}

#[tokio::test]
async fn batches_apply_the_same_rules_task_by_task() {
    let harness = Harness::start().await;
    let new_tasks: Vec<NewTask> = (0..5).map(numbered_task).collect();

    let created = harness
        .store
        .create_batch(new_tasks.iter().map(|new_task| (new_task, None)))
        .await
        .unwrap();
    assert!(created
        .iter()
        .all(|result| result.as_ref().is_ok_and(|created| created.is_new)));
    let canceled = &new_tasks[1].task_id;
    harness.store.cancel(canceled).await.unwrap();
    // Read the four work items left, plus the canceled task's deleted one by hand.
    let jobs = harness
        .reader
        .read_jobs(WORKER, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 4);
    let mut to_start = jobs;
    to_start.push(Job {
        job_id: "0-1".into(),
        task_id: Ok(canceled.clone()),
        takeovers: 0,
        carried: None,
    });
    let started = harness.store.start_batch(&to_start, WORKER).await.unwrap();

    assert_eq!(started.iter().filter(|result| result.is_ok()).count(), 4);
    assert!(matches!(
        started[4],
        Err(StoreError::Ended {
            status: TaskStatus::Canceled,
            ..
        })
    ));
    let leases: Vec<Lease> = started.into_iter().filter_map(Result::ok).collect();
    assert!(leases
        .iter()
        .all(|lease| lease.attempt == 1 && lease.task.status == TaskStatus::Running));

    // Complete three; the fourth presents a stale attempt and is refused alone.
    let mut stale = leases[3].clone();
    stale.attempt = 7;
    let completions: Vec<(&Lease, Option<u64>, &str)> = vec![
        (&leases[0], Some(1), "/a"),
        (&leases[1], None, "/b"),
        (&leases[2], Some(3), "/c"),
        (&stale, None, "/d"),
    ];
    let completed = harness.store.complete_batch(&completions).await.unwrap();

    assert!(completed[..3].iter().all(Result::is_ok));
    assert!(matches!(completed[3], Err(StoreError::LeaseLost(_))));
    assert_eq!(harness.status(&leases[3].task.id).await, TaskStatus::Running);
    assert_eq!(
        harness.jobs_left().await,
        (1, 1),
        "only the running task keeps its work item"
    );
    let folded: HashMap<_, _> = harness
        .store
        .fold_log()
        .await
        .unwrap()
        .tasks
        .into_iter()
        .map(|(id, folded)| (id, folded.task))
        .collect();
    assert_eq!(folded, harness.store.projection().await.unwrap());
}

#[tokio::test]
async fn the_registry_lists_live_workers_and_forgets_stopped_ones() {
    let harness = Harness::start().await;
    let worker = |name: &str| savestream_shared::store::WorkerInfo {
        name: name.into(),
        host: "host".into(),
        pid: 42,
        role: "all".into(),
        slots: 3,
        tasks: vec![],
        started_at: 1,
        seen_at: 0,
    };

    harness.store.register_worker(&worker("a")).await.unwrap();
    let mut busy = worker("b");
    busy.tasks = vec!["d4mq2nk0h9pc73b0qpag".into()];
    harness.store.register_worker(&busy).await.unwrap();
    let listed = harness.store.workers().await.unwrap();
    assert_eq!(
        listed.iter().map(|info| info.name.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(listed[1].tasks, busy.tasks);
    assert!(listed[0].seen_at > 0);

    harness.store.unregister_worker("a").await.unwrap();
    let listed = harness.store.workers().await.unwrap();
    assert_eq!(
        listed.iter().map(|info| info.name.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
}

#[tokio::test]
async fn a_heartbeat_reports_work_items_another_worker_took_over() {
    let harness = Harness::with_lease(1).await;
    harness.create().await;
    let lease = harness.start_next().await;
    let claimed = eventually(
        "the expired work item to be claimable",
        Duration::from_secs(5),
        || async {
            let jobs = harness.store.claim_expired("other-worker", 1).await.unwrap();
            (!jobs.is_empty()).then_some(jobs)
        },
    )
    .await;

    let lost = harness
        .store
        .heartbeat(WORKER, std::slice::from_ref(&lease.job_id))
        .await
        .unwrap();

    assert_eq!(lost, vec![lease.job_id.clone()]);
    // The item stays with the worker that took it over.
    let kept = harness
        .store
        .heartbeat("other-worker", &[claimed[0].job_id.clone()])
        .await
        .unwrap();
    assert!(kept.is_empty());
}

#[tokio::test]
async fn the_log_can_be_followed_from_an_event_id() {
    let harness = Harness::start().await;
    let first = harness.create().await;
    let first_event = harness.store.events(&first).await.unwrap()[0].id.clone();
    let second = harness.create().await;

    let after_first = harness
        .reader
        .read_log_after(&first_event, Duration::from_millis(100), 10)
        .await
        .unwrap();
    let nothing_new = harness
        .reader
        .read_log_after("$", Duration::from_millis(50), 10)
        .await
        .unwrap();

    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].event.task_id, second);
    assert!(nothing_new.is_empty());
}

#[tokio::test]
async fn a_lost_consumer_group_is_recreated_by_the_next_read() {
    let harness = Harness::start().await;
    let raw = harness.raw().await;
    let _: String = raw
        .custom(fred::cmd!("FLUSHALL"), Vec::<String>::new())
        .await
        .unwrap();
    let task_id = harness.create().await;

    let lease = harness.start_next().await;

    assert_eq!(lease.task.id, task_id);
}

#[tokio::test]
async fn only_idle_consumers_holding_nothing_are_removed() {
    let harness = Harness::start().await;
    harness.create().await;
    harness.create().await;
    // WORKER holds a work item; "idle-reader" read one and let it go, so it holds nothing.
    let _lease = harness.start_next().await;
    let read = harness
        .reader
        .read_jobs("idle-reader", 1, Duration::from_millis(100))
        .await
        .unwrap();
    harness.store.discard_job(&read[0].job_id).await.unwrap();

    let removed = eventually(
        "the idle consumer to be removed",
        Duration::from_secs(5),
        || async {
            let removed = harness
                .store
                .remove_idle_consumers(Duration::from_millis(20))
                .await
                .unwrap();
            (!removed.is_empty()).then_some(removed)
        },
    )
    .await;

    assert_eq!(removed, vec!["idle-reader".to_owned()]);
    let raw = harness.raw().await;
    let consumers: fred::types::Value = raw
        .custom(
            fred::cmd!("XINFO"),
            vec![
                "CONSUMERS".to_owned(),
                harness.store.keys().jobs(),
                "workers".to_owned(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        consumers.into_array().len(),
        1,
        "the consumer holding an item stays"
    );
}
