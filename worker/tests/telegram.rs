//! The pipeline step function, `pipeline::process`, with the Telegram
//! source over `FakeTelegram` (the in-process Telegram of
//! `savestream-telegram`), a real Redis (`RedisServer`) and a `local`
//! storage in a temp dir: single documents, photos, nameless documents,
//! albums with and without `?single`, every fault the fake injects, resume
//! after a fault or a killed attempt, cancel mid-file, and the permanent
//! failures. Every saved file is compared byte for byte with what the fake
//! served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use savestream_shared::config::{HttpConfig, QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::{Lease, NewTask, Store, TaskRecord};
use savestream_shared::task::{SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_telegram::fake::{
    FakeChat, FakeMessage, FakeTelegram, Fault, FaultKind, FileId, PartCall, When,
};
use savestream_telegram::naming;
use savestream_testkit::{eventually, RedisServer};
use savestream_worker::context::Context;
use savestream_worker::pipeline::{self, Outcome};
use savestream_worker::running::{AttemptSignals, RunningTasks};
use savestream_worker::source::http::HttpSource;
use savestream_worker::source::telegram::{download_options, TelegramSource};
use savestream_worker::source::Sources;
use savestream_worker::storage::{LocalStorage, Storages};
use tokio_util::sync::CancellationToken;

const CONSUMER: &str = "test-worker";
const MIB: usize = 1024 * 1024;
/// The public channel most tests read from.
const CHAT: i64 = 100;
const CHAT_NAME: &str = "savefiles";
/// The lease of every test: the Telegram source sleeps through flood waits
/// of up to half of it, and releases the task for longer ones.
const LEASE_SECONDS: u64 = 4;

/// Deterministic bytes that differ at every offset of a part, so a part
/// written at the wrong place cannot go unnoticed. `seed` tells files apart.
fn body(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|index| ((index * 7919 + seed * 131) % 251) as u8)
        .collect()
}

struct Harness {
    _redis: RedisServer,
    store: Store,
    reader: Store,
    fake: Arc<FakeTelegram>,
    storage_dir: tempfile::TempDir,
    context: Arc<Context>,
}

impl Harness {
    async fn start() -> Harness {
        let redis = RedisServer::start();
        let queue = QueueConfig {
            lease_seconds: LEASE_SECONDS,
            retention_hours: 1,
        };
        let store = Store::connect(
            &RedisConfig {
                url: redis.url(),
                prefix: "test".into(),
                startup_wait_seconds: 0,
            },
            &queue,
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
        let fake = Arc::new(FakeTelegram::new());
        fake.add_chat(FakeChat::public(CHAT, CHAT_NAME));
        let mut options = download_options(4, queue.lease());
        // Dropped connections are retried after 10 ms, not half a second,
        // so a fault that keeps coming ends the attempt quickly.
        options.backoff = Duration::from_millis(10);
        let telegram = TelegramSource::new(fake.clone(), options);
        let context = Context {
            store: store.clone(),
            consumer: CONSUMER.into(),
            sources: Sources {
                http: Arc::new(http),
                telegram: Some(Arc::new(telegram)),
            },
            storages,
            running: RunningTasks::default(),
            retry_limit: 3,
            release: CancellationToken::new(),
        };
        Harness {
            _redis: redis,
            store,
            reader,
            fake,
            storage_dir,
            context: Arc::new(context),
        }
    }

    /// Adds a document with `bytes` to the channel as message `id`.
    fn document(&self, id: i32, name: Option<&str>, mime: Option<&str>, bytes: &[u8]) -> FileId {
        let file = self.fake.add_file(bytes.to_vec(), 2);
        self.fake
            .add_message(CHAT, FakeMessage::document(id, file, name, mime));
        file
    }

    fn link(&self, message_id: i32) -> String {
        format!("https://t.me/{CHAT_NAME}/{message_id}")
    }

    async fn create(&self, link: &str, dir: &str) -> TaskId {
        let task_id = TaskId::generate();
        self.store
            .create(
                &NewTask {
                    task_id: task_id.clone(),
                    source: SourceKind::Telegram,
                    link: link.into(),
                    user_id: 1,
                    storage: "local1".into(),
                    dir: dir.into(),
                    title: title::pending(SourceKind::Telegram, link, "local1", dir),
                },
                None,
            )
            .await
            .expect("creating a task");
        task_id
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

    /// Waits for the retry backoff to be over and starts the next attempt,
    /// doing the promoter's job by hand.
    async fn next_attempt(&self, within: Duration) -> Lease {
        eventually("the retry to be due", within, || async {
            self.store.promote_due(10).await.unwrap();
            self.store.next_due().await.unwrap().is_none().then_some(())
        })
        .await;
        self.lease().await
    }

    async fn process(&self, lease: &Lease) -> Outcome {
        pipeline::process(&self.context, lease, &AttemptSignals::default()).await
    }

    /// Runs an attempt in the background; `cancel` is its cancel signal.
    fn spawn(&self, lease: Lease, cancel: CancellationToken) -> tokio::task::JoinHandle<Outcome> {
        let context = self.context.clone();
        let signals = AttemptSignals::with_cancel(cancel);
        tokio::spawn(async move { pipeline::process(&context, &lease, &signals).await })
    }

    fn stored(&self, relative: &str) -> PathBuf {
        self.storage_dir.path().join(relative.trim_start_matches('/'))
    }

    fn read(&self, relative: &str) -> Vec<u8> {
        std::fs::read(self.stored(relative)).unwrap_or_else(|error| panic!("reading {relative}: {error}"))
    }

    /// Every file under the storage, relative, sorted.
    fn files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let mut stack = vec![self.storage_dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(self.storage_dir.path()).unwrap();
                    files.push(format!("/{}", relative.display()));
                }
            }
        }
        files.sort();
        files
    }

    async fn record(&self, task_id: &TaskId) -> TaskRecord {
        self.store.get(task_id).await.unwrap().expect("the task exists")
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

    /// The `resolved` events of a task: (file name, path, title).
    async fn resolved(&self, task_id: &TaskId) -> Vec<(String, String, String)> {
        self.store
            .events(task_id)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|logged| match logged.event.kind {
                EventKind::Resolved {
                    file_name,
                    path,
                    title,
                    ..
                } => Some((file_name, path, title)),
                _ => None,
            })
            .collect()
    }

    /// Waits until the partial file at `path` holds at least `bytes` on disk.
    async fn wait_for_partial(&self, path: &str, bytes: u64) -> PathBuf {
        let part = self.stored(&format!("{path}.part"));
        eventually(
            &format!("{path}.part to hold {bytes} bytes"),
            Duration::from_secs(10),
            || {
                let part = part.clone();
                async move {
                    let len = std::fs::metadata(&part)
                        .map(|metadata| metadata.len())
                        .unwrap_or(0);
                    (len >= bytes).then_some(())
                }
            },
        )
        .await;
        part
    }

    /// The part requests for `file` from call number `from` on.
    fn part_calls_for(&self, file: FileId, from: usize) -> Vec<PartCall> {
        self.fake.part_calls()[from..]
            .iter()
            .filter(|call| call.file == file)
            .copied()
            .collect()
    }
}

/// Asserts that an attempt completed with `bytes`, all of which it
/// downloaded itself.
fn assert_completed(outcome: &Outcome, bytes: usize) {
    assert_eq!(
        outcome,
        &Outcome::Completed {
            bytes: bytes as u64,
            fetched: bytes as u64
        },
        "the attempt should have completed"
    );
}

/// Asserts that an attempt completed with `bytes`; returns how many of them
/// it downloaded itself (a resumed attempt: not those it found on disk).
fn assert_resumed(outcome: &Outcome, bytes: usize) -> u64 {
    match outcome {
        Outcome::Completed {
            bytes: completed,
            fetched,
        } if *completed == bytes as u64 => *fetched,
        other => panic!("the attempt should have completed with {bytes} bytes: {other:?}"),
    }
}

#[tokio::test]
async fn a_document_is_saved_under_its_own_name_byte_for_byte() {
    let harness = Harness::start().await;
    let bytes = body(3 * MIB + 12_345, 1);
    harness.document(10, Some("report.pdf"), Some("application/pdf"), &bytes);
    // Every answer takes a moment, as over a network, so parts overlap.
    harness.fake.inject(Fault {
        when: When::Always,
        kind: FaultKind::Delay(Duration::from_millis(20)),
        times: 1_000,
    });
    let task_id = harness.create(&harness.link(10), "/docs").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/docs/report.pdf"), bytes);
    assert_eq!(harness.files(), vec!["/docs/report.pdf"]);
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Completed);
    assert_eq!(record.task.path.as_deref(), Some("/docs/report.pdf"));
    assert_eq!(record.task.file_name.as_deref(), Some("report.pdf"));
    assert_eq!(record.task.size, Some(bytes.len() as u64));
    assert_eq!(
        record.task.title,
        "[tgfiles](report.pdf->local1:/docs/report.pdf)"
    );
    assert_eq!(record.progress.downloaded_bytes, bytes.len() as u64);
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "resolved", "completed"]
    );
    // Parts were fetched in parallel, each one a valid precise request.
    assert!(
        harness.fake.max_in_flight() > 1,
        "{}",
        harness.fake.max_in_flight()
    );
}

#[tokio::test]
async fn a_photo_is_saved_as_chat_message_jpg() {
    let harness = Harness::start().await;
    let bytes = body(300_000, 2);
    let file = harness.fake.add_file(bytes.clone(), 2);
    harness.fake.add_message(CHAT, FakeMessage::photo(11, file));
    let task_id = harness.create(&harness.link(11), "/").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/100_11.jpg"), bytes);
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.title, "[tgfiles](100_11.jpg->local1:/100_11.jpg)");
}

#[tokio::test]
async fn a_nameless_document_is_named_after_its_message_and_mime_type() {
    let harness = Harness::start().await;
    let bytes = body(50_000, 3);
    harness.document(12, None, Some("video/mp4"), &bytes);
    harness.create(&harness.link(12), "/").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/100_12.mp4"), bytes);
}

/// Three messages of one album: two documents around a photo.
fn album(harness: &Harness) -> Vec<(FileId, &'static str, Vec<u8>)> {
    let first = body(MIB + 500, 10);
    let photo = body(200_000, 11);
    let last = body(2 * MIB + 700, 12);
    let first_id = harness.fake.add_file(first.clone(), 2);
    let photo_id = harness.fake.add_file(photo.clone(), 2);
    let last_id = harness.fake.add_file(last.clone(), 2);
    harness.fake.add_message(
        CHAT,
        FakeMessage::document(20, first_id, Some("a.bin"), None).in_album(7),
    );
    harness
        .fake
        .add_message(CHAT, FakeMessage::photo(21, photo_id).in_album(7));
    harness.fake.add_message(
        CHAT,
        FakeMessage::document(22, last_id, Some("c.bin"), None).in_album(7),
    );
    vec![
        (first_id, "a.bin", first),
        (photo_id, "100_21.jpg", photo),
        (last_id, "c.bin", last),
    ]
}

#[tokio::test]
async fn an_album_link_saves_every_file_of_the_album_under_a_batch_title() {
    let harness = Harness::start().await;
    let files = album(&harness);
    let total: usize = files.iter().map(|(_, _, bytes)| bytes.len()).sum();
    let task_id = harness.create(&harness.link(21), "/album").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_completed(&outcome, total);
    for (_, name, bytes) in &files {
        assert_eq!(&harness.read(&format!("/album/{name}")), bytes, "{name}");
    }
    assert_eq!(
        harness.files(),
        vec!["/album/100_21.jpg", "/album/a.bin", "/album/c.bin"]
    );
    let record = harness.record(&task_id).await;
    let expected_title = naming::album_title(3, total as u64);
    assert!(
        expected_title.starts_with("[tgfiles](3 files/"),
        "{expected_title}"
    );
    assert_eq!(record.task.title, expected_title);
    assert_eq!(record.task.status, TaskStatus::Completed);
    assert_eq!(record.task.size, Some(total as u64));
    assert_eq!(record.task.path.as_deref(), Some("/album"));
    assert_eq!(record.progress.downloaded_bytes, total as u64);
    assert_eq!(record.progress.total_bytes, Some(total as u64));
    // Every file's path was recorded, in album order, before any download.
    let resolved = harness.resolved(&task_id).await;
    let paths: Vec<&str> = resolved.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(paths, vec!["/album/a.bin", "/album/100_21.jpg", "/album/c.bin"]);
    assert!(resolved.iter().all(|(_, _, title)| title == &expected_title));
}

#[tokio::test]
async fn an_album_link_with_single_saves_only_the_linked_file() {
    let harness = Harness::start().await;
    let files = album(&harness);
    let task_id = harness
        .create(&format!("{}?single", harness.link(21)), "/album")
        .await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    assert_completed(&outcome, files[1].2.len());
    assert_eq!(harness.files(), vec!["/album/100_21.jpg"]);
    assert_eq!(harness.read("/album/100_21.jpg"), files[1].2);
    assert_eq!(
        harness.record(&task_id).await.task.title,
        "[tgfiles](100_21.jpg->local1:/album/100_21.jpg)"
    );
}

/// One document of `size` bytes as message 10, with `fault` injected; runs
/// one attempt and returns its outcome, the bytes and the file.
async fn one_attempt_with(
    harness: &Harness,
    size: usize,
    fault: Fault,
) -> (TaskId, Outcome, Vec<u8>, FileId) {
    let bytes = body(size, 4);
    let file = harness.document(10, Some("f.bin"), None, &bytes);
    harness.fake.inject(fault);
    let task_id = harness.create(&harness.link(10), "/").await;
    let lease = harness.lease().await;
    let outcome = harness.process(&lease).await;
    (task_id, outcome, bytes, file)
}

#[tokio::test]
async fn a_short_flood_wait_is_slept_through_and_the_file_finishes() {
    let harness = Harness::start().await;
    let started = Instant::now();

    let (task_id, outcome, bytes, _) =
        one_attempt_with(&harness, 3 * MIB, Fault::at_part(1, FaultKind::FloodWait(1))).await;

    assert_completed(&outcome, bytes.len());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(harness.read("/f.bin"), bytes);
    assert_eq!(harness.record(&task_id).await.task.retries, 0);
}

#[tokio::test]
async fn a_short_flood_premium_wait_is_slept_through_and_the_file_finishes() {
    let harness = Harness::start().await;

    let (_, outcome, bytes, _) = one_attempt_with(
        &harness,
        2 * MIB + 10,
        Fault::at_part(0, FaultKind::FloodPremiumWait(1)),
    )
    .await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/f.bin"), bytes);
}

#[tokio::test]
async fn a_flood_wait_longer_than_the_lease_allows_releases_the_task_and_a_later_attempt_completes() {
    let harness = Harness::start().await;
    // The source sleeps through at most half the lease (2 s); 3 s is more.
    let (task_id, outcome, bytes, file) =
        one_attempt_with(&harness, 3 * MIB, Fault::at_part(1, FaultKind::FloodWait(3))).await;

    let Outcome::Retrying { delay, error } = &outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(
        *delay >= Duration::from_secs(3),
        "the retry waits what Telegram asked: {delay:?}"
    );
    assert!(error.contains("FLOOD_WAIT"), "{error}");
    assert!(error.contains("wait 3 s"), "{error}");
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(
        record.task.retries, 0,
        "waiting as Telegram asks uses up none of the task's retries"
    );
    let calls_before = harness.fake.part_calls().len();

    let next = harness.next_attempt(Duration::from_secs(10)).await;
    let outcome = harness.process(&next).await;

    let fetched = assert_resumed(&outcome, bytes.len());
    assert!(
        fetched <= (bytes.len() - MIB) as u64,
        "part 0 was on disk already, yet fetched {fetched}"
    );
    assert_eq!(harness.read("/f.bin"), bytes);
    assert_eq!(
        harness.files(),
        vec!["/f.bin"],
        "the second attempt keeps the name"
    );
    let resumed = harness.part_calls_for(file, calls_before);
    assert!(
        resumed.iter().all(|call| call.offset >= MIB as u64),
        "part 0 was already on disk: {resumed:?}"
    );
    assert_eq!(
        harness.event_names(&task_id).await,
        vec![
            "created",
            "started",
            "resolved",
            "retrying",
            "started",
            "completed"
        ]
    );
}

#[tokio::test]
async fn an_expired_file_reference_is_refreshed_and_the_download_continues() {
    let harness = Harness::start().await;
    let (_, outcome, bytes, _) =
        one_attempt_with(&harness, 3 * MIB, Fault::at_part(1, FaultKind::ExpireReference)).await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/f.bin"), bytes);
    // One refetch to open the file, at least one more for the new reference.
    assert!(
        harness.fake.refetch_count() >= 2,
        "{}",
        harness.fake.refetch_count()
    );
}

#[tokio::test]
async fn a_file_migrate_is_followed_to_the_new_data_centre() {
    let harness = Harness::start().await;
    let (_, outcome, bytes, file) =
        one_attempt_with(&harness, 3 * MIB, Fault::at_part(1, FaultKind::Migrate(4))).await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/f.bin"), bytes);
    assert_eq!(harness.fake.file_dc(file), Some(4));
    let last = harness.fake.part_calls().last().copied().expect("part calls");
    assert_eq!(last.dc, 4, "later parts go to the new data centre");
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_the_file_finishes() {
    let harness = Harness::start().await;
    let (task_id, outcome, bytes, _) = one_attempt_with(
        &harness,
        3 * MIB,
        Fault::at_part(2, FaultKind::Disconnect).times(2),
    )
    .await;

    assert_completed(&outcome, bytes.len());
    assert_eq!(harness.read("/f.bin"), bytes);
    assert_eq!(harness.record(&task_id).await.task.retries, 0);
}

#[tokio::test]
async fn after_a_fault_at_any_part_the_next_attempt_resumes_from_the_first_missing_byte() {
    for failing_part in [0usize, 1, 3] {
        let harness = Harness::start().await;
        let size = 4 * MIB + 4321;
        // The connection keeps dropping at this part: the part's retries run
        // out and the attempt ends retryable, keeping what it wrote.
        let fault = Fault::at_part(failing_part as u64, FaultKind::Disconnect).times(5);
        let (task_id, outcome, bytes, file) = one_attempt_with(&harness, size, fault).await;
        assert!(
            matches!(outcome, Outcome::Retrying { .. }),
            "part {failing_part}: {outcome:?}"
        );
        let kept = std::fs::metadata(harness.stored("/f.bin.part"))
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        assert_eq!(kept, (failing_part * MIB) as u64, "part {failing_part}");
        let calls_before = harness.fake.part_calls().len();

        let next = harness.next_attempt(Duration::from_secs(10)).await;
        let outcome = harness.process(&next).await;

        let fetched = assert_resumed(&outcome, size);
        assert_eq!(fetched, size as u64 - kept, "part {failing_part}");
        assert_eq!(harness.read("/f.bin"), bytes, "part {failing_part}");
        assert_eq!(harness.files(), vec!["/f.bin"], "part {failing_part}");
        let resumed = harness.part_calls_for(file, calls_before);
        let first = resumed.iter().map(|call| call.offset).min();
        assert_eq!(first, Some(kept), "part {failing_part}: {resumed:?}");
        assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
    }
}

#[tokio::test]
async fn a_killed_attempt_is_resumed_from_its_partial_file_by_the_next_one() {
    let harness = Harness::start().await;
    let size = 5 * MIB + 99;
    // Part 2 hangs: the attempt has written parts 0 and 1 when it is killed.
    let (bytes, file) = {
        let bytes = body(size, 5);
        let file = harness.document(10, Some("big.bin"), None, &bytes);
        (bytes, file)
    };
    harness
        .fake
        .inject(Fault::at_part(2, FaultKind::Delay(Duration::from_secs(60))));
    let task_id = harness.create(&harness.link(10), "/").await;
    let first = harness.lease().await;
    let running = harness.spawn(first.clone(), CancellationToken::new());
    harness.wait_for_partial("/big.bin", 2 * MIB as u64).await;

    // A crash: the attempt stops dead, and its lease is handed back.
    running.abort();
    let _ = running.await;
    harness
        .store
        .retry(&first, "worker died", RetryKind::Release, Duration::ZERO)
        .await
        .unwrap();
    let kept = std::fs::metadata(harness.stored("/big.bin.part")).unwrap().len();
    let calls_before = harness.fake.part_calls().len();
    let next = harness.lease().await;
    let outcome = harness.process(&next).await;

    let fetched = assert_resumed(&outcome, size);
    assert!(
        fetched <= (size - 2 * MIB) as u64,
        "parts 0 and 1 were on disk already, yet fetched {fetched}"
    );
    assert_eq!(harness.read("/big.bin"), bytes);
    assert_eq!(harness.files(), vec!["/big.bin"]);
    let resumed = harness.part_calls_for(file, calls_before);
    let expected_first = kept - kept % 1024;
    assert_eq!(
        resumed.iter().map(|call| call.offset).min(),
        Some(expected_first),
        "{resumed:?}"
    );
    assert!(resumed.iter().all(|call| call.offset >= expected_first));
    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
}

#[tokio::test]
async fn a_killed_album_keeps_its_names_and_does_not_download_finished_files_again() {
    let harness = Harness::start().await;
    let files = album(&harness);
    let total: usize = files.iter().map(|(_, _, bytes)| bytes.len()).sum();
    // Only the last file (2 MiB + 700) has a part 2: it hangs there.
    harness
        .fake
        .inject(Fault::at_part(2, FaultKind::Delay(Duration::from_secs(60))));
    // Somebody else's file takes the first name, so the album's first file
    // is `a_1.bin`: a resumed attempt must not pick yet another name.
    std::fs::create_dir_all(harness.stored("/album")).unwrap();
    std::fs::write(harness.stored("/album/a.bin"), b"not ours").unwrap();
    let task_id = harness.create(&harness.link(20), "/album").await;
    let first = harness.lease().await;
    let running = harness.spawn(first.clone(), CancellationToken::new());
    harness.wait_for_partial("/album/c.bin", 2 * MIB as u64).await;

    running.abort();
    let _ = running.await;
    harness
        .store
        .retry(&first, "worker died", RetryKind::Release, Duration::ZERO)
        .await
        .unwrap();
    let calls_before = harness.fake.part_calls().len();
    let next = harness.lease().await;
    let outcome = harness.process(&next).await;

    let fetched = assert_resumed(&outcome, total);
    assert!(
        fetched <= (files[2].2.len() - 2 * MIB) as u64,
        "only the rest of the last file was fetched, not {fetched} bytes"
    );
    assert_eq!(
        harness.files(),
        vec![
            "/album/100_21.jpg",
            "/album/a.bin",
            "/album/a_1.bin",
            "/album/c.bin"
        ]
    );
    assert_eq!(harness.read("/album/a.bin"), b"not ours");
    assert_eq!(harness.read("/album/a_1.bin"), files[0].2);
    assert_eq!(harness.read("/album/100_21.jpg"), files[1].2);
    assert_eq!(harness.read("/album/c.bin"), files[2].2);
    assert!(
        harness.part_calls_for(files[0].0, calls_before).is_empty(),
        "a finished file is not downloaded again"
    );
    assert!(harness.part_calls_for(files[1].0, calls_before).is_empty());
    let resumed = harness.part_calls_for(files[2].0, calls_before);
    assert!(
        resumed.iter().all(|call| call.offset >= 2 * MIB as u64),
        "{resumed:?}"
    );
    assert_eq!(
        harness.event_names(&task_id).await,
        vec![
            "created",
            "started",
            "resolved",
            "resolved",
            "resolved",
            "retrying",
            "started",
            "completed"
        ]
    );
}

#[tokio::test]
async fn a_cancel_mid_file_stops_within_a_second_and_leaves_no_part() {
    let harness = Harness::start().await;
    let bytes = body(4 * MIB, 6);
    harness.document(10, Some("slow.bin"), None, &bytes);
    harness
        .fake
        .inject(Fault::at_part(1, FaultKind::Delay(Duration::from_secs(60))));
    let task_id = harness.create(&harness.link(10), "/").await;
    let lease = harness.lease().await;
    let cancel = CancellationToken::new();
    let running = harness.spawn(lease, cancel.clone());
    let part = harness.wait_for_partial("/slow.bin", MIB as u64).await;

    // What the API and the cancel subscriber do: the event, then the signal.
    harness.store.cancel(&task_id).await.unwrap();
    cancel.cancel();
    let canceled_at = Instant::now();
    let outcome = running.await.unwrap();

    assert_eq!(outcome, Outcome::Canceled);
    assert!(
        canceled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        canceled_at.elapsed()
    );
    assert!(!part.exists());
    assert!(harness.files().is_empty(), "{:?}", harness.files());
    // The requests already sent run until answered (grammers cannot call them back, so the
    // downloader keeps their permits until then); no new one starts.
    let requested = harness.fake.part_calls().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        harness.fake.part_calls().len(),
        requested,
        "requests after cancel"
    );
    assert_eq!(
        harness.event_names(&task_id).await,
        vec!["created", "started", "resolved", "canceled"]
    );
}

#[tokio::test]
async fn a_message_without_a_file_fails_saying_what_it_holds() {
    let harness = Harness::start().await;
    harness.fake.add_message(CHAT, FakeMessage::other(30, "a poll"));
    let task_id = harness.create(&harness.link(30), "/").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let Outcome::Failed { error } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        error.contains("message 30 in chat @savefiles holds a poll"),
        "{error}"
    );
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert_eq!(record.task.retries, 0, "no retry can help");
    assert!(harness.files().is_empty());
}

#[tokio::test]
async fn a_private_chat_the_account_is_not_in_fails_naming_the_chat() {
    let harness = Harness::start().await;
    harness.fake.add_chat(FakeChat::private(555).not_member());
    let file = harness.fake.add_file(body(10, 7), 2);
    harness
        .fake
        .add_message(555, FakeMessage::document(1, file, Some("x.bin"), None));
    let task_id = harness.create("https://t.me/c/555/1", "/").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let Outcome::Failed { error } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        error.contains("the account is not a member of chat 555"),
        "{error}"
    );
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert_eq!(record.task.retries, 0);
}

#[tokio::test]
async fn a_message_that_does_not_exist_fails_at_once() {
    let harness = Harness::start().await;
    let task_id = harness.create(&harness.link(404), "/").await;
    let lease = harness.lease().await;

    let outcome = harness.process(&lease).await;

    let Outcome::Failed { error } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        error.contains("message 404 does not exist in chat @savefiles"),
        "{error}"
    );
    assert_eq!(harness.record(&task_id).await.task.retries, 0);
}
