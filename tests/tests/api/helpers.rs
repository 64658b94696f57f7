//! What the API tests share: an app with a token, the generated client,
//! raw requests, JSON error checks, and a look into Redis.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface, ServerInterface, StreamsInterface};
use savestream_tests::{TestApp, TestOptions, TEST_USER};

/// The bearer token every test app is configured with.
pub const TOKEN: &str = "test-token-7c1d";

/// The event log's key for the test config's `prefix = "savestream"`.
pub const EVENTS_KEY: &str = "{savestream}:events";

/// A storage that exists but that the test user may not use.
pub const OTHER_STORAGE: &str = "other";

/// An API with [`TOKEN`], and a second storage the test user may not use.
pub async fn spawn_app() -> TestApp {
    TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        extra_config: format!(
            "[[storages]]\nname = \"{OTHER_STORAGE}\"\ntype = \"local\"\nbase_path = \"other\"\n"
        ),
        ..TestOptions::default()
    })
    .await
}

/// The client progenitor generated from `openapi/openapi.json`.
pub fn generated_client(app: &TestApp) -> savestream_client::Client {
    savestream_client::with_token(&app.base_url(), TOKEN).expect("building the generated client")
}

/// A client that sends no token.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::new()
}

/// The contract's example body.
pub fn contract_body() -> serde_json::Value {
    serde_json::json!({
        "telegram_url": "https://t.me/channel/123",
        "user_id": TEST_USER,
        "storage_name": "local1",
        "dir_path": "/downloads"
    })
}

/// Checks that a response is a JSON error with `status`, and returns its `error` text.
pub async fn expect_json_error(response: reqwest::Response, status: u16) -> String {
    let got_status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("reading an error body");
    assert_eq!(got_status, status, "body: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "a {status} answered with content type {content_type:?}: {text}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("a {status} body is not JSON: {text}"));
    let fields: Vec<&String> = body
        .as_object()
        .expect("an error body is an object")
        .keys()
        .collect();
    assert_eq!(fields, ["error"], "an error body has only `error`: {text}");
    let error = body["error"].as_str().expect("`error` is a string").to_owned();
    assert!(
        !error.is_empty() && !error.ends_with('.'),
        "error message: {error:?}"
    );
    error
}

/// A Redis connection of the test's own, to look at what the API wrote.
pub async fn redis(app: &TestApp) -> Client {
    let client = Builder::from_config(Config::from_url(&app.redis.url()).expect("a valid redis url"))
        .build()
        .expect("building a redis client");
    client.init().await.expect("connecting to the test redis");
    client
}

/// How many events the log holds.
pub async fn logged_events(app: &TestApp) -> u64 {
    redis(app)
        .await
        .xlen(EVENTS_KEY)
        .await
        .expect("XLEN on the event log")
}

/// The API process's own entry in the registry of live API processes, and
/// the stamp of its build's function library: written before it answers
/// its first request, and by its heartbeats, never by a request.
const API_REGISTRY_KEYS: [&str; 3] = [
    "{savestream}:apis",
    "{savestream}:apis:seen",
    "savestream:libraries",
];

/// How many keys Redis holds besides the API process's registry entry: the
/// keys requests write.
pub async fn redis_keys(app: &TestApp) -> u64 {
    let redis = redis(app).await;
    let all: u64 = redis.dbsize().await.expect("DBSIZE");
    let registry: u64 = redis.exists(API_REGISTRY_KEYS.to_vec()).await.expect("EXISTS");
    all - registry
}

/// Creates a task with the contract's body and returns its id.
pub async fn create_contract_task(app: &TestApp) -> String {
    let (status, body) = app.create_task(contract_body()).await;
    assert_eq!(status, 201, "{body}");
    body["task_id"].as_str().expect("a task id").to_owned()
}

/// A deadline for one step of a test that waits on the server.
pub const STEP: Duration = Duration::from_secs(20);
