//! The pipeline step function, `pipeline::process`, against a real Redis
//! (`RedisServer`), a real HTTP server (`FileServer`) and a `local` storage
//! in a temp dir: one attempt at a time, driven by hand, so each test can
//! set up exactly the state an attempt finds (a resumed path, a partial
//! file, a cancel, a takeover, the end of the grace period).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use savestream_shared::config::{HttpConfig, QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::queue::{Job, RetryKind};
use savestream_shared::store::{Lease, NewTask, Store, TaskRecord};
use savestream_shared::task::{SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, RedisServer};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_worker::context::Context;
use savestream_worker::lease::DEATHS_IN_A_ROW;
use savestream_worker::pipeline::{self, Outcome, PROGRESS_WORTH_A_TRY, RELEASED_MESSAGE};
use savestream_worker::running::{AttemptSignals, RunningTasks};
use savestream_worker::source::http::HttpSource;
use savestream_worker::source::Sources;
use savestream_worker::storage::{FileName, LocalStorage, Storage, StorageDir, StoragePath, Storages};
use tokio_util::sync::CancellationToken;

const CONSUMER: &str = "test-worker";

struct Harness {
    _redis: RedisServer,
    store: Store,
    reader: Store,
    files: FileServer,
    storage_dir: tempfile::TempDir,
    context: Arc<Context>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::with_lease(5).await
    }

    async fn with_lease(lease_seconds: u64) -> Harness {
        let redis = RedisServer::start();
        let store = Store::connect(
            &RedisConfig {
                url: redis.url(),
                prefix: "test".into(),
                startup_wait_seconds: 0,
            },
            &QueueConfig {
                lease_seconds,
                retention_hours: 1,
            },
        )
        .await
        .expect("connecting to the test redis");
        store.ensure_group().await.expect("creating the workers group");
        let reader = store.with_own_connection().await.expect("a second connection");
        let storage_dir = tempfile::tempdir().expect("a temp dir");
        let mut storages = Storages::default();
        storages.insert(Arc::new(
            LocalStorage::new("local1", storage_dir.path()).expect("the local storage"),
        ));
        let http = HttpSource::new(&HttpConfig {
            allow_private_networks: true,
        })
        .expect("the http source");
        let context = Context {
            store: store.clone(),
            consumer: CONSUMER.into(),
            sources: Sources {
                http: Arc::new(http),
                telegram: None,
            },
            storages,
            running: RunningTasks::default(),
            retry_limit: 2,
            release: CancellationToken::new(),
        };
        Harness {
            _redis: redis,
            store,
            reader,
            files: FileServer::start().await,
            storage_dir,
            context: Arc::new(context),
        }
    }

    async fn create_task(&self, source: SourceKind, link: &str, storage: &str, dir: &str) -> TaskId {
        let task_id = TaskId::generate();
        self.store
            .create(
                &NewTask {
                    task_id: task_id.clone(),
                    source,
                    link: link.into(),
                    user_id: 1,
                    storage: storage.into(),
                    dir: dir.into(),
                    title: title::pending(source, link, storage, dir),
                },
                None,
            )
            .await
            .expect("creating a task");
        task_id
    }

    async fn create(&self, path_on_server: &str) -> TaskId {
        self.create_task(SourceKind::Http, &self.files.url(path_on_server), "local1", "/")
            .await
    }

    /// Reads the next work item and starts its attempt, as the intake loop does.
    async fn lease(&self) -> Lease {
        let jobs = self
            .reader
            .read_jobs(CONSUMER, 1, Duration::from_secs(2))
            .await
            .expect("reading work items");
        let job = jobs.into_iter().next().expect("a work item is waiting");
        let task_id = job.task_id.clone().expect("a valid work item");
        self.store
            .start(&job.job_id, &task_id, CONSUMER)
            .await
            .expect("starting the attempt")
    }

    /// Resolves the attempt to `path` and hands the task back to the queue,
    /// as an attempt that died after resolving would leave it; returns the
    /// next attempt's lease.
    async fn resolved_and_released(&self, name: &str, size: u64, path: &str) -> Lease {
        self.resolved_and_released_with(name, Some(size), path).await
    }

    /// [`Harness::resolved_and_released`] with the size the first attempt
    /// recorded, `None` when the server did not tell it.
    async fn resolved_and_released_with(&self, name: &str, size: Option<u64>, path: &str) -> Lease {
        self.resolved_and_released_validated(name, size, path, None).await
    }

    /// [`Harness::resolved_and_released_with`] with the validator (ETag or
    /// Last-Modified) the first attempt recorded.
    async fn resolved_and_released_validated(
        &self,
        name: &str,
        size: Option<u64>,
        path: &str,
        validator: Option<&str>,
    ) -> Lease {
        let first = self.lease().await;
        let resolved = title::resolved(SourceKind::Http, name, "local1", path);
        self.store
            .resolve(&first, name, size, path, &resolved, validator)
            .await
            .unwrap();
        self.store
            .retry(&first, "worker died", RetryKind::Release, Duration::ZERO)
            .await
            .unwrap();
        self.lease().await
    }

    /// Reserves `name` in the storage's root for `task_id`, as an earlier
    /// attempt that got that far leaves it, and reads the task's work item.
    async fn reserved_and_read(&self, task_id: &TaskId, name: &str) -> Job {
        self.storage()
            .reserve(
                task_id,
                &StorageDir::parse("/").unwrap(),
                &FileName::parse(name).unwrap(),
                &[],
            )
            .await
            .unwrap();
        self.reader
            .read_jobs(CONSUMER, 1, Duration::from_secs(2))
            .await
            .unwrap()
            .remove(0)
    }

    async fn process(&self, lease: &Lease) -> Outcome {
        pipeline::process(&self.context, lease, &AttemptSignals::default()).await
    }

    /// Runs an attempt in the background.
    fn spawn(&self, lease: Lease) -> tokio::task::JoinHandle<Outcome> {
        let context = self.context.clone();
        tokio::spawn(async move { pipeline::process(&context, &lease, &AttemptSignals::default()).await })
    }

    fn stored(&self, relative: &str) -> PathBuf {
        self.storage_dir.path().join(relative.trim_start_matches('/'))
    }

    /// The task's own partial file of the file `name` in the storage's root.
    fn own_partial(&self, task_id: &TaskId, name: &str) -> PathBuf {
        let name = FileName::parse(name).expect("a valid file name");
        self.stored(&LocalStorage::own_partial_name(&name, task_id))
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        self.context.storages.get("local1").expect("the local storage")
    }

    /// Every name in the storage, hidden ones too, sorted.
    fn names_on_disk(&self) -> Vec<String> {
        savestream_testkit::names_in(self.storage_dir.path())
    }

    /// Runs `lease`'s attempt until the task's partial file of `name` holds
    /// a beginning of `expected`, then ends it as the end of a shutdown's
    /// grace period does, in a context of its own (the harness's release
    /// stays unfired): the task goes back to the queue and the partial file
    /// keeps what arrived. Returns how many bytes it kept and the next
    /// attempt's lease.
    async fn released_partway(&self, lease: Lease, name: &str, expected: &[u8]) -> (u64, Lease) {
        let release = CancellationToken::new();
        let context = Context {
            store: self.store.clone(),
            consumer: CONSUMER.into(),
            sources: self.context.sources.clone(),
            storages: self.context.storages.clone(),
            running: RunningTasks::default(),
            retry_limit: self.context.retry_limit,
            release: release.clone(),
        };
        let own_partial = self.own_partial(&lease.task.id, name);
        let attempt = async move { pipeline::process(&context, &lease, &AttemptSignals::default()).await };
        let running = tokio::spawn(attempt);
        let holds_a_beginning = |bytes: &[u8]| !bytes.is_empty() && expected.starts_with(bytes);
        eventually(
            "the partial file to hold a beginning of the file",
            Duration::from_secs(10),
            || {
                let held = std::fs::read(&own_partial).unwrap_or_default();
                std::future::ready(holds_a_beginning(&held).then_some(()))
            },
        )
        .await;

        release.cancel();

        assert_eq!(running.await.unwrap(), Outcome::Released);
        let kept = std::fs::read(&own_partial).expect("the released attempt keeps its partial file");
        assert!(
            holds_a_beginning(&kept) && kept.len() < expected.len(),
            "the partial file holds {} bytes, not a beginning of the file",
            kept.len()
        );
        (kept.len() as u64, self.lease().await)
    }

    /// The validators of the task's `resolved` events, oldest first.
    async fn resolved_validators(&self, task_id: &TaskId) -> Vec<Option<String>> {
        self.events(task_id)
            .await
            .into_iter()
            .filter_map(|kind| match kind {
                EventKind::Resolved { validator, .. } => Some(validator),
                _ => None,
            })
            .collect()
    }

    /// Starts an attempt and hands the task back to the queue before it
    /// records anything, as an attempt that died early leaves it; returns
    /// the next attempt's lease.
    async fn released_unresolved(&self) -> Lease {
        let first = self.lease().await;
        self.store
            .retry(&first, "worker died", RetryKind::Release, Duration::ZERO)
            .await
            .unwrap();
        self.lease().await
    }

    async fn record(&self, task_id: &TaskId) -> TaskRecord {
        self.store.get(task_id).await.unwrap().expect("the task exists")
    }

    async fn events(&self, task_id: &TaskId) -> Vec<EventKind> {
        self.store
            .events(task_id)
            .await
            .unwrap()
            .into_iter()
            .map(|logged| logged.event.kind)
            .collect()
    }

    async fn event_names(&self, task_id: &TaskId) -> Vec<&'static str> {
        self.events(task_id).await.iter().map(EventKind::name).collect()
    }

    /// Waits until the partial file of `path` holds some bytes; returns its
    /// hold, `<path>.part`, a link to the task's own partial file.
    async fn wait_for_partial(&self, path: &str) -> PathBuf {
        let part = self.stored(&format!("{path}.part"));
        eventually("the partial file to fill", Duration::from_secs(10), || {
            let part = part.clone();
            async move {
                let len = std::fs::metadata(&part)
                    .map(|metadata| metadata.len())
                    .unwrap_or(0);
                (len > 0).then_some(())
            }
        })
        .await;
        part
    }
}

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 31 % 253) as u8).collect()
}

#[tokio::test]
async fn process_saves_a_direct_link_and_records_its_title_path_and_progress() {
    let harness = Harness::start().await;
    harness.files.add(
        "/dl",
        ServedFile::new(body(200_000)).with_content_disposition("attachment; filename=\"report.pdf\""),
    );
    let task_id = harness
        .create_task(SourceKind::Http, &harness.files.url("/dl"), "local1", "/docs")
        .await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 200_000,
            fetched: 200_000
        }
    );
    assert_eq!(
        std::fs::read(harness.stored("/docs/report.pdf")).unwrap(),
        body(200_000)
    );
    assert!(!harness.stored("/docs/report.pdf.part").exists());
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Completed);
    assert_eq!(record.task.path.as_deref(), Some("/docs/report.pdf"));
    assert_eq!(record.task.file_name.as_deref(), Some("report.pdf"));
    assert_eq!(record.task.size, Some(200_000));
    assert_eq!(
        record.task.title,
        "[directlinks](report.pdf->local1:/docs/report.pdf)"
    );
    assert_eq!(record.progress.downloaded_bytes, 200_000);
    assert_eq!(record.progress.total_bytes, Some(200_000));
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "resolved", "completed"]
    );
}

#[tokio::test]
async fn a_taken_name_gets_a_number_and_a_hostile_name_is_sanitised() {
    let harness = Harness::start().await;
    std::fs::write(harness.stored("/a.bin"), b"somebody else's").unwrap();
    harness.files.add("/a.bin", ServedFile::new(body(10)));
    harness.files.add(
        "/evil",
        ServedFile::new(body(20)).with_content_disposition("attachment; filename=\"../../../etc/passwd\""),
    );
    let taken = harness.create("/a.bin").await;
    let evil = harness.create("/evil").await;

    let first = harness.lease().await;
    assert_eq!(
        harness.process(&first).await,
        Outcome::Completed {
            bytes: 10,
            fetched: 10
        }
    );
    let second = harness.lease().await;
    assert_eq!(
        harness.process(&second).await,
        Outcome::Completed {
            bytes: 20,
            fetched: 20
        }
    );

    assert_eq!(
        harness.record(&taken).await.task.path.as_deref(),
        Some("/a_1.bin")
    );
    assert_eq!(
        std::fs::read(harness.stored("/a.bin")).unwrap(),
        b"somebody else's"
    );
    assert_eq!(std::fs::read(harness.stored("/a_1.bin")).unwrap(), body(10));
    assert_eq!(harness.record(&evil).await.task.path.as_deref(), Some("/passwd"));
    assert_eq!(std::fs::read(harness.stored("/passwd")).unwrap(), body(20));
}

#[tokio::test]
async fn a_resumed_attempt_continues_its_part_file_with_a_range_request() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(100_000)));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.resolved_and_released("f.bin", 100_000, "/f.bin").await;
    std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(100_000)[..30_000]).unwrap();

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 100_000,
            fetched: 70_000
        }
    );
    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(100_000));
    let requests = harness.files.requests_for("/f.bin");
    assert_eq!(
        requests.len(),
        1,
        "a resumed attempt does not resolve again: {requests:?}"
    );
    assert_eq!(requests[0].range.as_deref(), Some("bytes=30000-"));
    assert_eq!(requests[0].sent, 70_000);
    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
    assert_eq!(harness.names_on_disk(), vec!["f.bin"]);
}

#[tokio::test]
async fn a_resumed_attempt_reports_as_fetched_only_the_bytes_it_downloaded_not_those_it_resumed_from() {
    // What the earlier attempt left in the partial file, and what this one
    // must then say it fetched: the completed log's speed is fetched bytes
    // over this attempt's time.
    for (kept, expected_fetched) in [(0, 100_000), (30_000, 70_000), (100_000, 0)] {
        let harness = Harness::start().await;
        harness.files.add("/f.bin", ServedFile::new(body(100_000)));
        let task_id = harness.create("/f.bin").await;
        let lease = harness.resolved_and_released("f.bin", 100_000, "/f.bin").await;
        std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(100_000)[..kept]).unwrap();

        let outcome = harness.process(&lease).await;

        assert_eq!(
            outcome,
            Outcome::Completed {
                bytes: 100_000,
                fetched: expected_fetched
            },
            "{kept} bytes kept"
        );
        let sent: u64 = harness
            .files
            .requests_for("/f.bin")
            .iter()
            .map(|request| request.sent)
            .sum();
        assert_eq!(sent, expected_fetched, "{kept} bytes kept: what the server sent");
        assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(100_000));
    }
}

/// Another file of the same size as [`body`]'s: what the server has at the
/// link after the first file was replaced.
fn other_body(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 7 % 251) as u8 ^ 0x5a).collect()
}

#[tokio::test]
async fn the_first_attempt_records_the_servers_validator_and_a_weak_etag_falls_back_to_last_modified() {
    const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    for (served, expected) in [
        (
            ServedFile::new(body(1_000))
                .with_etag("\"a1\"")
                .with_last_modified(DATE),
            Some("\"a1\""),
        ),
        (
            ServedFile::new(body(1_000))
                .with_etag("W/\"a1\"")
                .with_last_modified(DATE),
            Some(DATE),
        ),
        (ServedFile::new(body(1_000)).with_etag("W/\"a1\""), None),
        (ServedFile::new(body(1_000)), None),
    ] {
        let harness = Harness::start().await;
        harness.files.add("/f.bin", served.clone());
        let task_id = harness.create("/f.bin").await;
        let lease = harness.lease().await;

        assert_eq!(
            harness.process(&lease).await,
            Outcome::Completed {
                bytes: 1_000,
                fetched: 1_000
            }
        );

        let record = harness.record(&task_id).await;
        assert_eq!(record.task.validator.as_deref(), expected, "{served:?}");
        let recorded: Vec<Option<String>> = harness
            .events(&task_id)
            .await
            .into_iter()
            .filter_map(|kind| match kind {
                EventKind::Resolved { validator, .. } => Some(validator),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, vec![expected.map(str::to_owned)], "{served:?}");
    }
}

#[tokio::test]
async fn a_resumed_attempt_of_a_file_replaced_by_another_of_the_same_size_starts_over_and_saves_the_new_one()
{
    // The first attempt saved 30 000 bytes of file A, whose validator it
    // recorded; the link now serves B: as large, other bytes, another
    // validator. A server that honours If-Range answers the resume with
    // the whole of B.
    const SIZE: usize = 100_000;
    for (how, recorded, now_served) in [
        (
            "etag",
            "\"a\"",
            ServedFile::new(other_body(SIZE)).with_etag("\"b\""),
        ),
        (
            "last-modified",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            ServedFile::new(other_body(SIZE)).with_last_modified("Thu, 22 Oct 2015 09:00:00 GMT"),
        ),
    ] {
        let harness = Harness::start().await;
        harness.files.add("/f.bin", now_served);
        let task_id = harness.create("/f.bin").await;
        let lease = harness
            .resolved_and_released_validated("f.bin", Some(SIZE as u64), "/f.bin", Some(recorded))
            .await;
        std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(SIZE)[..30_000]).unwrap();

        let outcome = harness.process(&lease).await;

        assert_eq!(
            outcome,
            Outcome::Completed {
                bytes: SIZE as u64,
                fetched: SIZE as u64
            },
            "{how}"
        );
        let stored = std::fs::read(harness.stored("/f.bin")).unwrap();
        assert!(
            stored == other_body(SIZE),
            "{how}: the stored file is not B ({} bytes; A's prefix kept: {})",
            stored.len(),
            stored[..30_000] == body(SIZE)[..30_000]
        );
        let requests = harness.files.requests_for("/f.bin");
        assert_eq!(requests.len(), 1, "{how}: {requests:?}");
        assert_eq!(requests[0].range.as_deref(), Some("bytes=30000-"), "{how}");
        assert_eq!(requests[0].if_range.as_deref(), Some(recorded), "{how}");
        assert_eq!(requests[0].status, 200, "{how}: the whole new file");
        assert_eq!(requests[0].sent, SIZE as u64, "{how}");
        assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
        assert_eq!(harness.names_on_disk(), vec!["f.bin"], "{how}");
    }
}

#[tokio::test]
async fn a_resumed_attempt_whose_validator_still_matches_continues_with_a_range_request() {
    const SIZE: usize = 100_000;
    const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    for (how, recorded, served) in [
        (
            "etag",
            "\"a\"",
            ServedFile::new(body(SIZE))
                .with_etag("\"a\"")
                .with_last_modified(DATE),
        ),
        (
            "last-modified",
            DATE,
            ServedFile::new(body(SIZE)).with_last_modified(DATE),
        ),
    ] {
        let harness = Harness::start().await;
        harness.files.add("/f.bin", served);
        let task_id = harness.create("/f.bin").await;
        let lease = harness
            .resolved_and_released_validated("f.bin", Some(SIZE as u64), "/f.bin", Some(recorded))
            .await;
        std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(SIZE)[..30_000]).unwrap();

        let outcome = harness.process(&lease).await;

        assert_eq!(
            outcome,
            Outcome::Completed {
                bytes: SIZE as u64,
                fetched: 70_000
            },
            "{how}"
        );
        assert_eq!(
            std::fs::read(harness.stored("/f.bin")).unwrap(),
            body(SIZE),
            "{how}"
        );
        let requests = harness.files.requests_for("/f.bin");
        assert_eq!(requests.len(), 1, "{how}: {requests:?}");
        assert_eq!(requests[0].range.as_deref(), Some("bytes=30000-"), "{how}");
        assert_eq!(requests[0].if_range.as_deref(), Some(recorded), "{how}");
        assert_eq!(requests[0].status, 206, "{how}");
        assert_eq!(requests[0].sent, 70_000, "{how}");
    }
}

#[tokio::test]
async fn a_file_replaced_on_the_server_is_resumed_under_its_new_validator_once_it_started_over() {
    // File A (ETag "a") is resolved and partly saved; the server then
    // serves B: as large, other bytes, ETag "b". The second attempt's
    // If-Range "a" gets the whole of B, and it starts over; interrupted
    // too, it leaves a beginning of B, which the third attempt must resume
    // with If-Range "b" rather than start over once more.
    const SIZE: usize = 1_000_000;
    let harness = Harness::start().await;
    harness.files.add(
        "/f.bin",
        ServedFile::new(body(SIZE)).with_etag("\"a\"").throttled(200_000),
    );
    let task_id = harness.create("/f.bin").await;
    let first = harness.lease().await;
    let (kept_of_a, second) = harness.released_partway(first, "f.bin", &body(SIZE)).await;
    assert_eq!(second.task.validator.as_deref(), Some("\"a\""));
    harness.files.add(
        "/f.bin",
        ServedFile::new(other_body(SIZE))
            .with_etag("\"b\"")
            .throttled(200_000),
    );
    let (kept_of_b, third) = harness.released_partway(second, "f.bin", &other_body(SIZE)).await;
    harness.files.set_throttle("/f.bin", None);

    let outcome = harness.process(&third).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: SIZE as u64,
            fetched: SIZE as u64 - kept_of_b
        }
    );
    let stored = std::fs::read(harness.stored("/f.bin")).unwrap();
    assert!(
        stored == other_body(SIZE),
        "the stored file is not B ({} bytes)",
        stored.len()
    );
    let requests = harness.files.requests_for("/f.bin");
    let seen: Vec<_> = requests
        .iter()
        .map(|request| {
            (
                request.range.as_deref(),
                request.if_range.as_deref(),
                request.status,
            )
        })
        .collect();
    let (resume_of_a, resume_of_b) = (format!("bytes={kept_of_a}-"), format!("bytes={kept_of_b}-"));
    assert_eq!(
        seen,
        vec![
            // The first attempt: one GET, which resolved and downloaded A.
            (None, None, 200),
            // The second: A's resume, answered with the whole of B.
            (Some(resume_of_a.as_str()), Some("\"a\""), 200),
            // The third: B's resume, under the validator the second recorded.
            (Some(resume_of_b.as_str()), Some("\"b\""), 206),
        ],
        "{requests:?}"
    );
    assert_eq!(requests[2].sent, SIZE as u64 - kept_of_b, "only the rest of B");
    assert_eq!(third.task.validator.as_deref(), Some("\"b\""));
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Completed);
    assert_eq!(record.task.validator.as_deref(), Some("\"b\""));
    assert_eq!(record.task.path.as_deref(), Some("/f.bin"));
    assert_eq!(record.task.title, "[directlinks](f.bin->local1:/f.bin)");
    assert_eq!(
        harness.resolved_validators(&task_id).await,
        vec![Some("\"a\"".to_owned()), Some("\"b\"".to_owned())]
    );
    // The second `resolved` folds as the projection recorded it.
    let mut folded = harness.store.fold_log().await.unwrap().tasks;
    let live = harness.store.projection().await.unwrap();
    assert_eq!(folded.remove(&task_id).unwrap().task, live[&task_id]);
    assert_eq!(harness.names_on_disk(), vec!["f.bin"]);
}

#[tokio::test]
async fn a_first_attempt_saves_the_response_it_resolved_so_a_file_replaced_since_is_not_mixed_in() {
    const SIZE: usize = 100_000;
    let harness = Harness::start().await;
    // Resolve sees A; any later request would get B, of another size.
    harness.files.add(
        "/f.bin",
        ServedFile::new(body(SIZE))
            .with_etag("\"a\"")
            .replaced_after(1, ServedFile::new(other_body(SIZE + 1_000)).with_etag("\"b\"")),
    );
    let task_id = harness.create("/f.bin").await;
    let lease = harness.lease().await;

    assert_eq!(
        harness.process(&lease).await,
        Outcome::Completed {
            bytes: SIZE as u64,
            fetched: SIZE as u64
        }
    );

    assert!(std::fs::read(harness.stored("/f.bin")).unwrap() == body(SIZE));
    assert_eq!(
        harness.resolved_validators(&task_id).await,
        vec![Some("\"a\"".to_owned())]
    );
    assert_eq!(harness.files.requests_for("/f.bin").len(), 1, "one GET");
}

#[tokio::test]
async fn a_single_use_link_is_saved_from_the_one_request_that_resolved_it() {
    let harness = Harness::start().await;
    // A signed one-time link: every request after the first is refused.
    harness.files.add(
        "/once.bin",
        ServedFile::new(body(200_000)).replaced_after(1, ServedFile::status(403)),
    );
    let task_id = harness.create("/once.bin").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 200_000,
            fetched: 200_000
        }
    );
    assert!(std::fs::read(harness.stored("/once.bin")).unwrap() == body(200_000));
    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
    let requests = harness.files.requests_for("/once.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].sent, 200_000, "the whole file, once");
}

#[tokio::test]
async fn an_attempt_that_stops_before_its_download_closes_the_response_its_resolve_opened() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(2_000_000)).throttled(100_000));
    // The task's directory cannot be made: a file holds its name, and the
    // attempt fails after resolving, before it downloads.
    std::fs::write(harness.stored("/docs"), b"not a directory").unwrap();
    let task_id = harness
        .create_task(
            SourceKind::Http,
            &harness.files.url("/slow.bin"),
            "local1",
            "/docs",
        )
        .await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert!(
        matches!(outcome, Outcome::Failed { .. } | Outcome::Retrying { .. }),
        "{outcome:?}"
    );
    assert_ne!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
    eventually("the response to be closed", Duration::from_secs(1), || async {
        harness
            .files
            .requests_for("/slow.bin")
            .iter()
            .all(|request| request.finished && !request.complete)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_late_write_of_an_earlier_attempt_never_reaches_a_replaced_file_downloaded_into_a_partial_file_it_left_empty(
) {
    const SIZE: usize = 100_000;
    let harness = Harness::start().await;
    let task_id = harness.create("/f.bin").await;
    let lease = harness
        .resolved_and_released_validated("f.bin", Some(SIZE as u64), "/f.bin", Some("\"a\""))
        .await;
    // The earlier attempt, taken over while frozen: its partial file is
    // still empty (what it downloaded of A had not reached the disk).
    let path = StoragePath::parse("/f.bin").unwrap();
    let mut frozen = harness.storage().open(&task_id, &path).await.unwrap();
    assert_eq!(frozen.len(), 0);
    // The server now has B, of the same size.
    harness
        .files
        .add("/f.bin", ServedFile::new(other_body(SIZE)).with_etag("\"b\""));

    assert_eq!(
        harness.process(&lease).await,
        Outcome::Completed {
            bytes: SIZE as u64,
            fetched: SIZE as u64
        }
    );
    // The frozen attempt wakes up and writes what it had of A.
    frozen
        .write(bytes::Bytes::from(body(SIZE)[..40_000].to_vec()))
        .await
        .unwrap();
    frozen.flush().await.unwrap();

    assert!(
        std::fs::read(harness.stored("/f.bin")).unwrap() == other_body(SIZE),
        "the saved file holds bytes of the file the server had before"
    );
    assert_eq!(
        harness.record(&task_id).await.task.validator.as_deref(),
        Some("\"b\"")
    );
}

#[tokio::test]
async fn a_download_that_starts_over_from_a_file_without_a_validator_keeps_the_recorded_one() {
    // The server stopped sending a validator: nothing names the bytes
    // saved now, and the recorded one stays (a resume starts over again).
    const SIZE: usize = 100_000;
    let harness = Harness::start().await;
    let task_id = harness.create("/f.bin").await;
    // An earlier attempt resolved A and died before its first byte.
    let lease = harness
        .resolved_and_released_validated("f.bin", Some(SIZE as u64), "/f.bin", Some("\"a\""))
        .await;
    harness.files.add("/f.bin", ServedFile::new(other_body(SIZE)));

    assert_eq!(
        harness.process(&lease).await,
        Outcome::Completed {
            bytes: SIZE as u64,
            fetched: SIZE as u64
        }
    );

    assert!(std::fs::read(harness.stored("/f.bin")).unwrap() == other_body(SIZE));
    assert_eq!(
        harness.record(&task_id).await.task.validator.as_deref(),
        Some("\"a\"")
    );
    assert_eq!(
        harness.resolved_validators(&task_id).await,
        vec![Some("\"a\"".to_owned())]
    );
}

#[tokio::test]
async fn a_resumed_attempt_of_a_task_recorded_without_a_validator_sends_no_if_range() {
    // A task resolved before validators were recorded resumes as it did,
    // even from a server that gives one now.
    let harness = Harness::start().await;
    harness
        .files
        .add("/f.bin", ServedFile::new(body(100_000)).with_etag("\"a\""));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.resolved_and_released("f.bin", 100_000, "/f.bin").await;
    std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(100_000)[..30_000]).unwrap();

    assert_eq!(
        harness.process(&lease).await,
        Outcome::Completed {
            bytes: 100_000,
            fetched: 70_000
        }
    );

    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(100_000));
    let requests = harness.files.requests_for("/f.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].range.as_deref(), Some("bytes=30000-"));
    assert_eq!(requests[0].if_range, None);
    assert_eq!(requests[0].status, 206);
}

#[tokio::test]
async fn a_resumed_attempt_that_gets_a_capped_range_starts_over_rather_than_saving_part_of_the_file() {
    // Whether or not the first attempt learnt the size, the server answers
    // `bytes=30000-` with `bytes 30000-39999/100000`: not the rest of the file.
    for recorded_size in [None, Some(100_000)] {
        let harness = Harness::start().await;
        harness
            .files
            .add("/f.bin", ServedFile::new(body(100_000)).capping_ranges(10_000));
        let task_id = harness.create("/f.bin").await;
        let lease = harness
            .resolved_and_released_with("f.bin", recorded_size, "/f.bin")
            .await;
        std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(100_000)[..30_000]).unwrap();

        let outcome = harness.process(&lease).await;

        assert_eq!(
            outcome,
            Outcome::Completed {
                bytes: 100_000,
                fetched: 100_000
            },
            "recorded size {recorded_size:?}"
        );
        assert_eq!(
            std::fs::read(harness.stored("/f.bin")).unwrap(),
            body(100_000),
            "recorded size {recorded_size:?}"
        );
        let statuses: Vec<u16> = harness
            .files
            .requests_for("/f.bin")
            .iter()
            .map(|request| request.status)
            .collect();
        assert_eq!(statuses, vec![206, 200], "recorded size {recorded_size:?}");
        assert_eq!(harness.record(&task_id).await.task.size, Some(100_000));
        assert_eq!(harness.names_on_disk(), vec!["f.bin"]);
    }
}

#[tokio::test]
async fn a_file_that_changed_size_on_the_server_fails_at_once_with_an_error_that_says_what_to_do() {
    // Slow enough that downloading the 3 000 bytes would take seconds.
    let changed = ServedFile::new(body(3_000)).throttled(1_000);
    for (how, served, status) in [
        ("206 bytes 1000-2999/3000", changed.clone(), 206),
        ("200 with Content-Length: 3000", changed.without_ranges(), 200),
    ] {
        let harness = Harness::start().await;
        harness.files.add("/f.bin", served);
        let task_id = harness.create("/f.bin").await;
        // The first attempt recorded 2 000 bytes and saved 1 000 of them;
        // the server has a file of 3 000 bytes at the link now.
        let lease = harness.resolved_and_released("f.bin", 2_000, "/f.bin").await;
        std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(3_000)[..1_000]).unwrap();

        let outcome = harness.process(&lease).await;

        let expected = format!(
            "the file at {} changed on the server (was 2000 bytes, now 3000): add the link again to \
             download the new file",
            harness.files.url("/f.bin")
        );
        assert_eq!(
            outcome,
            Outcome::Failed {
                error: expected.clone()
            },
            "{how}"
        );
        let record = harness.record(&task_id).await;
        assert_eq!(record.task.status, TaskStatus::Failed, "{how}");
        assert_eq!(record.task.error, expected, "{how}");
        assert_eq!(
            harness.event_names(&task_id).await,
            vec!["created", "started", "resolved", "retrying", "started", "failed"],
            "{how}: no retry"
        );
        assert_eq!(harness.names_on_disk(), Vec::<String>::new(), "{how}");
        // One request, whose body was left unread: the connection closed
        // before the server could send it all.
        let requests = eventually("the request to end", Duration::from_secs(5), || async {
            let requests = harness.files.requests_for("/f.bin");
            requests
                .iter()
                .all(|request| request.finished)
                .then_some(requests)
        })
        .await;
        assert_eq!(requests.len(), 1, "{how}: {requests:?}");
        assert_eq!(requests[0].status, status, "{how}");
        assert!(!requests[0].complete, "{how}: {requests:?}");
    }
}

#[tokio::test]
async fn a_file_of_unstated_size_that_outgrows_the_recorded_size_fails_as_soon_as_it_does() {
    let harness = Harness::start().await;
    // Neither Range nor Content-Length: only the bytes tell the size.
    harness.files.add(
        "/f.bin",
        ServedFile::new(body(3_000))
            .without_ranges()
            .without_content_length(),
    );
    let task_id = harness.create("/f.bin").await;
    let lease = harness.resolved_and_released("f.bin", 2_000, "/f.bin").await;
    std::fs::write(harness.own_partial(&task_id, "f.bin"), &body(3_000)[..1_000]).unwrap();

    let outcome = harness.process(&lease).await;

    let expected = format!(
        "the file at {} changed on the server (was 2000 bytes, now larger): add the link again to \
         download the new file",
        harness.files.url("/f.bin")
    );
    assert_eq!(outcome, Outcome::Failed { error: expected });
    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Failed);
    assert_eq!(harness.names_on_disk(), Vec::<String>::new());
}

#[tokio::test]
async fn a_reservation_an_attempt_could_not_record_keeps_its_name_for_the_next_attempt() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(1_000)));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.released_unresolved().await;
    // What the first attempt did before it died: reserve `f.bin`, and not record it.
    let root = StorageDir::parse("/").unwrap();
    let f_bin = FileName::parse("f.bin").unwrap();
    harness
        .storage()
        .reserve(&task_id, &root, &f_bin, &[])
        .await
        .unwrap();
    // Meanwhile another task wants the same name, and finds it held.
    let other_task = TaskId::generate();
    let other = harness
        .storage()
        .reserve(&other_task, &root, &f_bin, &[])
        .await
        .unwrap();

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 1_000,
            fetched: 1_000
        }
    );
    assert_eq!(
        harness.record(&task_id).await.task.path.as_deref(),
        Some("/f.bin")
    );
    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(1_000));
    assert_eq!(other.to_string(), "/f_1.bin");
    assert_eq!(
        harness.names_on_disk(),
        vec![
            format!(".f_1.bin.{other_task}.part"),
            "f.bin".to_owned(),
            "f_1.bin.part".to_owned()
        ],
        "only the other task's reservation is left"
    );
}

#[tokio::test]
async fn a_completed_task_removes_a_reservation_an_earlier_attempt_made_and_it_did_not_use() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(1_000)));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.released_unresolved().await;
    // The first attempt was told another name, reserved it and died.
    harness
        .storage()
        .reserve(
            &task_id,
            &StorageDir::parse("/").unwrap(),
            &FileName::parse("old-name.bin").unwrap(),
            &[],
        )
        .await
        .unwrap();

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 1_000,
            fetched: 1_000
        }
    );
    assert_eq!(harness.names_on_disk(), vec!["f.bin"]);
}

#[tokio::test]
async fn a_resumed_attempt_starts_over_when_the_server_ignores_range() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/f.bin", ServedFile::new(body(50_000)).without_ranges());
    let task_id = harness.create("/f.bin").await;
    let lease = harness.resolved_and_released("f.bin", 50_000, "/f.bin").await;
    std::fs::write(harness.own_partial(&task_id, "f.bin"), vec![0xff; 20_000]).unwrap();

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 50_000,
            fetched: 50_000
        }
    );
    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(50_000));
    let requests = harness.files.requests_for("/f.bin");
    assert_eq!(requests[0].range.as_deref(), Some("bytes=20000-"));
    assert_eq!(requests[0].status, 200);
}

#[tokio::test]
async fn a_file_finished_before_a_crash_is_completed_without_downloading_again() {
    let harness = Harness::start().await;
    harness.files.add("/done.bin", ServedFile::new(body(1_000)));
    let task_id = harness.create("/done.bin").await;
    let lease = harness
        .resolved_and_released("done.bin", 1_000, "/done.bin")
        .await;
    std::fs::write(harness.stored("/done.bin"), body(1_000)).unwrap();

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 1_000,
            fetched: 0
        }
    );
    assert!(harness.files.requests().is_empty());
    assert_eq!(
        harness.record(&task_id).await.task.path.as_deref(),
        Some("/done.bin")
    );
}

#[tokio::test]
async fn a_retryable_failure_queues_a_retry_after_a_backoff_and_keeps_the_part() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::status(503));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.resolved_and_released("f.bin", 1_000, "/f.bin").await;
    let own_partial = harness.own_partial(&task_id, "f.bin");
    std::fs::write(&own_partial, body(300)).unwrap();

    let outcome = harness.process(&lease).await;

    let Outcome::Retrying { delay, error } = outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(
        delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert!(error.contains("503 Service Unavailable"), "{error}");
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(record.task.retries, 1);
    assert_eq!(record.task.error, error);
    assert_eq!(
        std::fs::read(&own_partial).unwrap(),
        body(300),
        "the next attempt resumes it"
    );
    let retrying = harness
        .store
        .events(&task_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|logged| match logged.event.kind {
            EventKind::Retrying { due_at, .. } if logged.event.task_id == task_id => {
                Some(due_at - logged.event.at)
            }
            _ => None,
        })
        .collect::<Vec<_>>();
    // The release of the first attempt (no backoff), then the failure (backoff).
    assert_eq!(retrying.len(), 2);
    assert!((500..=1_000).contains(&retrying[1]), "{retrying:?}");
}

#[tokio::test]
async fn retries_used_up_end_in_failed_with_the_last_error_and_no_part() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::status(500));
    let task_id = harness.create("/f.bin").await;

    let mut outcomes = Vec::new();
    for _attempt in 0..3 {
        // The promoter's job: queue the task again when its backoff is over.
        eventually("the retry to be due", Duration::from_secs(5), || async {
            harness.store.promote_due(10).await.unwrap();
            harness.store.next_due().await.unwrap().is_none().then_some(())
        })
        .await;
        let lease = harness.lease().await;
        outcomes.push(harness.process(&lease).await);
    }

    assert!(matches!(outcomes[0], Outcome::Retrying { .. }), "{outcomes:?}");
    assert!(matches!(outcomes[1], Outcome::Retrying { .. }), "{outcomes:?}");
    let Outcome::Failed { error } = &outcomes[2] else {
        panic!("expected a failure, got {outcomes:?}");
    };
    assert!(error.contains("500 Internal Server Error"), "{error}");
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert_eq!(&record.task.error, error);
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "retrying", "started", "retrying", "started", "failed"]
    );
    assert!(std::fs::read_dir(harness.storage_dir.path())
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn a_missing_file_fails_at_once() {
    let harness = Harness::start().await;
    let task_id = harness.create("/nothing-here.bin").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let expected = format!(
        "http://{}/nothing-here.bin answered 404 Not Found: check the link",
        harness.files.address()
    );
    assert_eq!(
        outcome,
        Outcome::Failed {
            error: expected.clone()
        }
    );
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert_eq!(record.task.error, expected);
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "failed"]
    );
}

#[tokio::test]
async fn a_server_that_answers_a_plain_get_with_part_of_the_file_gets_the_whole_file_saved() {
    // `206 Content-Range: bytes 0-99999/300000` to a GET without Range: the
    // file is 300 000 bytes, not the 100 000 of the answer's Content-Length.
    let harness = Harness::start().await;
    harness.files.add(
        "/f.bin",
        ServedFile::new(body(300_000))
            .with_etag("\"a\"")
            .partial_even_without_range(100_000),
    );
    let task_id = harness.create("/f.bin").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_eq!(
        outcome,
        Outcome::Completed {
            bytes: 300_000,
            fetched: 300_000
        }
    );
    assert!(std::fs::read(harness.stored("/f.bin")).unwrap() == body(300_000));
    assert_eq!(harness.record(&task_id).await.task.size, Some(300_000));
}

#[tokio::test]
async fn a_204_no_content_fails_the_task_rather_than_saving_an_empty_file() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::status(204));
    let task_id = harness.create("/f.bin").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let expected = format!(
        "http://{}/f.bin answered 204 No Content: it sent no file; check the link",
        harness.files.address()
    );
    assert_eq!(outcome, Outcome::Failed { error: expected });
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "failed"]
    );
    assert!(
        harness.names_on_disk().is_empty(),
        "{:?}",
        harness.names_on_disk()
    );
}

#[tokio::test]
async fn a_telegram_task_fails_at_once_with_a_clear_error() {
    let harness = Harness::start().await;
    let task_id = harness
        .create_task(SourceKind::Telegram, "https://t.me/channel/123", "local1", "/")
        .await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let Outcome::Failed { error } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        error.starts_with("this worker has no Telegram source yet: https://t.me/channel/123"),
        "{error}"
    );
    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Failed);
}

#[tokio::test]
async fn a_task_for_a_storage_this_worker_lacks_fails_with_a_clear_error() {
    let harness = Harness::start().await;
    harness.files.add("/f", ServedFile::new(body(5)));
    harness
        .create_task(SourceKind::Http, &harness.files.url("/f"), "nas", "/")
        .await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let Outcome::Failed { error } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        error.starts_with("storage \"nas\" is not configured on this worker"),
        "{error}"
    );
}

#[tokio::test]
async fn a_cancel_seen_by_a_progress_write_stops_the_download_and_removes_the_part() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let task_id = harness.create("/slow.bin").await;
    let lease = harness.lease().await;
    // No pub/sub here: the attempt's cancel token never fires, so only the
    // answer to a progress write can tell it.
    let running = harness.spawn(lease);
    let part = harness.wait_for_partial("/slow.bin").await;

    harness.store.cancel(&task_id).await.unwrap();
    let canceled_at = Instant::now();
    let outcome = running.await.unwrap();

    assert_eq!(outcome, Outcome::Canceled);
    assert!(
        canceled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        canceled_at.elapsed()
    );
    assert!(!part.exists());
    assert!(!harness.stored("/slow.bin").exists());
    eventually(
        "the download connection to close",
        Duration::from_secs(1),
        || async {
            harness
                .files
                .requests_for("/slow.bin")
                .iter()
                .all(|request| request.finished)
                .then_some(())
        },
    )
    .await;
    let names = harness.event_names(&task_id).await;
    assert_eq!(names, vec!["created", "started", "resolved", "canceled"]);
}

#[tokio::test]
async fn a_cancel_removes_every_partial_file_of_the_task_even_one_an_earlier_attempt_left() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let task_id = harness.create("/slow.bin").await;
    let lease = harness.released_unresolved().await;
    harness
        .storage()
        .reserve(
            &task_id,
            &StorageDir::parse("/").unwrap(),
            &FileName::parse("old-name.bin").unwrap(),
            &[],
        )
        .await
        .unwrap();
    let running = harness.spawn(lease);
    harness.wait_for_partial("/slow.bin").await;

    harness.store.cancel(&task_id).await.unwrap();
    let outcome = running.await.unwrap();

    assert_eq!(outcome, Outcome::Canceled);
    assert_eq!(harness.names_on_disk(), Vec::<String>::new());
}

#[tokio::test]
async fn the_end_of_the_grace_period_releases_the_task_and_keeps_the_part() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let task_id = harness.create("/slow.bin").await;
    let lease = harness.lease().await;
    let running = harness.spawn(lease);
    let part = harness.wait_for_partial("/slow.bin").await;

    harness.context.release.cancel();
    let outcome = running.await.unwrap();

    assert_eq!(outcome, Outcome::Released);
    assert!(part.exists(), "the next attempt resumes it");
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(record.task.retries, 0, "a release does not use up a retry");
    assert_eq!(record.task.error, RELEASED_MESSAGE);
    let next = harness.lease().await;
    assert_eq!(next.attempt, 2);
    assert_eq!(next.task.path.as_deref(), Some("/slow.bin"));
}

#[tokio::test]
async fn a_lost_lease_stops_the_download_without_writing_a_transition() {
    let harness = Harness::with_lease(1).await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let task_id = harness.create("/slow.bin").await;
    let lease = harness.lease().await;
    let running = harness.spawn(lease);
    let part = harness.wait_for_partial("/slow.bin").await;

    // Nobody renews the lease here, so after a second another worker may take the task.
    let claimed = eventually("the lease to expire", Duration::from_secs(5), || async {
        let jobs = harness.store.claim_expired("other-worker", 1).await.unwrap();
        jobs.into_iter().next()
    })
    .await;
    let takeover = harness
        .store
        .start(&claimed.job_id, &task_id, "other-worker")
        .await
        .unwrap();
    let outcome = running.await.unwrap();

    assert_eq!(takeover.attempt, 2);
    assert_eq!(outcome, Outcome::LeaseLost);
    assert!(part.exists(), "the new holder resumes it");
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "resolved", "started"]
    );
}

#[tokio::test]
async fn a_work_item_whose_task_was_canceled_before_it_started_removes_what_earlier_attempts_left() {
    let harness = Harness::start().await;
    let task_id = harness.create("/f.bin").await;
    // An earlier attempt reserved the file and was released: the task waits in the queue.
    let job = harness.reserved_and_read(&task_id, "f.bin").await;
    // Canceled after this worker read the item and before it started it:
    // this worker's cancel listener took the task for one it runs, so only
    // the start's answer tells the worker to clean up.
    harness.store.cancel(&task_id).await.unwrap();

    savestream_worker::consumer::run_job(&harness.context, job).await;

    assert_eq!(harness.names_on_disk(), Vec::<String>::new());
}

#[tokio::test]
async fn a_task_whose_attempts_died_five_times_in_a_row_fails_and_leaves_no_partial_file() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(vec![3u8; 1000]));
    let task_id = harness.create("/f.bin").await;
    // An earlier attempt reserved the file and died.
    let mut job = harness.reserved_and_read(&task_id, "f.bin").await;
    // Claimed as the reaper claims an item whose worker died: the fifth
    // claim in a row, after five attempts that died.
    job.takeovers = DEATHS_IN_A_ROW;

    savestream_worker::consumer::run_job(&harness.context, job).await;

    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert!(
        record
            .task
            .error
            .contains("its last 5 attempts in a row ended with their worker"),
        "{}",
        record.task.error
    );
    assert_eq!(harness.names_on_disk(), Vec::<String>::new());
    assert!(harness.files.requests_for("/f.bin").is_empty(), "not downloaded");
}

#[tokio::test]
async fn a_task_whose_attempts_died_four_times_in_a_row_runs_again() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(vec![3u8; 1000]));
    let task_id = harness.create("/f.bin").await;
    let mut job = harness
        .reader
        .read_jobs(CONSUMER, 1, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0);
    job.takeovers = DEATHS_IN_A_ROW - 1;

    savestream_worker::consumer::run_job(&harness.context, job).await;

    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
}

#[tokio::test]
async fn a_download_that_broke_off_after_moving_the_file_on_uses_up_no_retry() {
    let harness = Harness::start().await;
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|index| (index % 251) as u8).collect();
    let kept = PROGRESS_WORTH_A_TRY + PROGRESS_WORTH_A_TRY / 2;
    harness
        .files
        .add("/big.bin", ServedFile::new(body).breaking_off_after(kept));
    let task_id = harness.create("/big.bin").await;

    let outcome = harness.process(&harness.lease().await).await;

    assert!(matches!(outcome, Outcome::Retrying { .. }), "{outcome:?}");
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(
        record.task.retries, 0,
        "1.5 MiB arrived and are kept: no retry used"
    );
}

#[tokio::test]
async fn a_download_that_broke_off_before_moving_the_file_on_much_uses_up_a_retry() {
    let harness = Harness::start().await;
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|index| (index % 251) as u8).collect();
    harness
        .files
        .add("/big.bin", ServedFile::new(body).breaking_off_after(100_000));
    let task_id = harness.create("/big.bin").await;

    let outcome = harness.process(&harness.lease().await).await;

    assert!(matches!(outcome, Outcome::Retrying { .. }), "{outcome:?}");
    assert_eq!(harness.record(&task_id).await.task.retries, 1);
}
