//! Black-box tests of the Telegram source from the outside: the real
//! `savestream-api` and `savestream-worker` processes (`TestApp`) with bot
//! credentials in `[telegram]`, on a machine with no route to Telegram
//! (every machine these tests run on). A Telegram task must end `failed`
//! within its retry budget, saying that Telegram could not be reached, and
//! never stay `running`.
//!
//! Everything that needs Telegram to answer is tested in process against
//! `FakeTelegram` (`worker/tests/telegram.rs`).

use std::time::{Duration, Instant};

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::store::Store;
use savestream_shared::task::TaskId;
use savestream_tests::{TestApp, TestOptions, TEST_STORAGE, TEST_USER};
use serde_json::json;

/// Bot credentials of the right shape that no Telegram would accept; the
/// worker never gets far enough to find out.
const TELEGRAM_CONFIG: &str = r#"
[telegram]
token = "123:abc"
app_id = 12345
app_hash = "0123456789abcdef0123456789abcdef"
"#;

#[tokio::test]
async fn a_telegram_task_without_a_route_to_telegram_fails_in_bounded_time_saying_so() {
    let app = TestApp::spawn(TestOptions {
        workers: 1,
        retry: 1,
        extra_config: TELEGRAM_CONFIG.to_owned(),
        ..TestOptions::default()
    })
    .await;
    let (status, created) = app
        .create_task(json!({
            "telegram_url": "https://t.me/durov/1",
            "user_id": TEST_USER,
            "storage_name": TEST_STORAGE,
        }))
        .await;
    assert_eq!(status, 201, "{created}");
    let task_id = created["task_id"].as_str().expect("a task id").to_owned();
    let started = Instant::now();

    let task = app
        .wait_for_status(&task_id, "failed", Duration::from_secs(35))
        .await;
    let took = started.elapsed();

    let error = task["error"].as_str().unwrap_or_default();
    // "could not reach Telegram's servers" when the connection is refused
    // or cut, "check that this machine can reach Telegram's servers" when
    // it hangs until the request timeout.
    assert!(
        error.contains("reach Telegram's servers"),
        "the error should say Telegram could not be reached: {error}"
    );
    assert!(error.contains("https://t.me/durov/1"), "{error}");
    assert!(took < Duration::from_secs(35), "{took:?}");
    // Both attempts ran (retry = 1) and neither was left holding the task.
    let store = Store::connect(
        &RedisConfig {
            url: app.redis.url(),
            prefix: "savestream".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: app.options.lease_seconds,
            retention_hours: 1,
        },
    )
    .await
    .expect("connecting to the app's redis");
    let names: Vec<&str> = store
        .events(&TaskId::parse(&task_id).expect("a task id"))
        .await
        .expect("reading the event log")
        .iter()
        .map(|logged| logged.event.kind.name())
        .collect();
    assert_eq!(
        names,
        vec!["created", "started", "retrying", "started", "failed"],
        "{error}"
    );
    let worker_log = app.workers[0].log();
    assert!(
        !worker_log.contains("123:abc"),
        "the bot token must not be logged:\n{worker_log}"
    );
}
