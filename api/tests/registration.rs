//! The API process in the registry of live API processes (`{p}:apis`):
//! listed, with its pid and the address it listens on, before it answers
//! its first request; gone from the registry once it has stopped, not merely aged out.
//! `savestream-worker rebuild` reads this registry to refuse while an API
//! runs (its test is in worker/tests/cli.rs).
//!
//! The API runs in this process (`Application::build` on port 0) against a
//! private `redis-server`.

mod support;

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config as RedisConfig, HashesInterface};
use savestream_api::Application;
use savestream_shared::keys::Keys;
use savestream_shared::store::Store;
use savestream_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn an_api_is_registered_with_its_pid_and_address_before_its_first_answer_and_leaves_the_registry_when_it_stops(
) {
    // Arrange
    let redis = RedisServer::start();
    let storage = tempfile::tempdir().expect("a storage dir");
    let config = support::minimal_config(&redis.url(), storage.path());
    let store = Store::connect(&config.redis, &config.queue)
        .await
        .expect("connecting the store");
    let app = Application::build(config).await.expect("building the API");
    let address = format!("127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    // Act
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    // Assert: listed by the time it answers its first request (so a
    // request never sees the registry's keys appear)...
    let mut socket = TcpStream::connect(&address).await.expect("connecting to the API");
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        .await
        .expect("sending a request");
    let mut answer = String::new();
    socket
        .read_to_string(&mut answer)
        .await
        .expect("reading the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let registered = store
        .apis()
        .await
        .expect("reading the registry")
        .pop()
        .expect("the API registered before answering");
    assert_eq!(registered.pid, std::process::id());
    assert_eq!(registered.address, address);
    assert!(registered.seen_at > 0, "{registered:?}");
    assert_eq!(store.apis().await.unwrap().len(), 1, "one entry per process");

    // ...and removed when it stops.
    stop.send(()).expect("the server waits for the signal");
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops")
        .expect("the server task does not panic")
        .expect("the server stops cleanly");
    assert_eq!(store.apis().await.unwrap(), Vec::new());
    let raw = Builder::from_config(RedisConfig::from_url(&redis.url()).expect("a redis url"))
        .build()
        .expect("a redis client");
    raw.init().await.expect("connecting to the test's redis");
    let left: Vec<String> = raw.hkeys(Keys::new("savestream").apis()).await.expect("HKEYS");
    assert!(
        left.is_empty(),
        "the entry is removed, not left to age out: {left:?}"
    );
}
