//! The delivery metric, `savestream_webhook_deliveries_total{outcome}`,
//! counted by a recorder installed for this test binary alone (a global
//! recorder is per process, so this test lives in a binary of its own).

// Shared with the `webhooks` binary, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "webhooks/receiver.rs"]
mod receiver;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use savestream_shared::config::{Config, QueueConfig, RedisConfig};
use savestream_shared::store::{NewTask, Store};
use savestream_shared::task::{SourceKind, TaskId};
use savestream_testkit::{eventually, RedisServer};
use savestream_webhook::dispatcher::DELIVERIES_METRIC;
use savestream_webhook::{Dispatcher, DispatcherOptions};
use tokio_util::sync::CancellationToken;

use receiver::{Receiver, Reply};

struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

/// Counters by `name{label=value,...}`; gauges and histograms are ignored.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<Count>>>);

fn key_text(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for &'static Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = Arc::clone(
            self.0
                .lock()
                .unwrap()
                .entry(key_text(key))
                .or_insert_with(|| Arc::new(Count(AtomicU64::new(0)))),
        );
        Counter::from_arc(count)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counters {
    fn get(&self, outcome: &str) -> u64 {
        let key = format!("{DELIVERIES_METRIC}{{outcome={outcome}}}");
        self.0
            .lock()
            .unwrap()
            .get(&key)
            .map(|count| count.0.load(Ordering::SeqCst))
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn deliveries_are_counted_by_outcome() {
    // Arrange
    let counters: &'static Counters = Box::leak(Box::default());
    metrics::set_global_recorder(counters).expect("the only recorder of this test binary");
    let redis = RedisServer::start();
    let store = Store::connect(
        &RedisConfig {
            url: redis.url(),
            prefix: "test".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: 30,
            retention_hours: 1,
        },
    )
    .await
    .unwrap();
    store.ensure_webhooks_group().await.unwrap();
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500), Reply::Status(410)]);
    let mut config = Config::default();
    config.api.webhook_url = Some(receiver.url().parse().unwrap());
    let options = DispatcherOptions {
        backoff_first: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        idle_poll: Duration::from_millis(50),
        ..DispatcherOptions::from_config(&config)
    };
    let dispatcher = Dispatcher::with_options(store.clone(), &config, options).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(shutdown.clone()));

    // Act: two canceled tasks; the first try fails (500), the retry meets a
    // 410; the other is delivered.
    for _ in 0..2 {
        let task_id = TaskId::generate();
        let new_task = NewTask {
            task_id: task_id.clone(),
            source: SourceKind::Http,
            link: "https://example.com/file.bin".into(),
            user_id: 1,
            storage: "local1".into(),
            dir: "/".into(),
            title: "t".into(),
        };
        store.create(&new_task, None).await.unwrap();
        store.cancel(&task_id).await.unwrap();
    }

    // Assert
    eventually("every outcome counted", Duration::from_secs(20), || async {
        let counted = (
            counters.get("retrying"),
            counters.get("gone"),
            counters.get("delivered"),
        );
        (counted == (1, 1, 1)).then_some(())
    })
    .await;

    // Act: a due delivery whose record cannot be read (no attempts).
    let record = store.keys().webhook("msg_unreadable");
    let due = store.keys().webhooks_due();
    let port = redis.port().to_string();
    for args in [
        vec![
            "HSET",
            &record,
            "task",
            "not-a-task",
            "body",
            "{}",
            "status",
            "pending",
        ],
        vec!["ZADD", &due, "0", "msg_unreadable"],
    ] {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("running redis-cli");
        assert!(output.status.success(), "{output:?}");
    }

    // Assert: giving it up is counted.
    eventually("the give-up counted", Duration::from_secs(20), || async {
        (counters.get("gave_up") == 1).then_some(())
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
