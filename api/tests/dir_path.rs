//! `dir_path` at the API: a directory name no storage accepts (longer than
//! a storage's 200 bytes) is refused with 400 when the task is created,
//! not accepted and then failed by every worker. The contract allows it:
//! its errors are `{"error": ...}` with a 4xx status.
//!
//! The API runs in this process (`Application::build` on port 0) against a
//! private `redis-server`.

mod support;

use savestream_api::Application;
use savestream_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `POST /api/v1/tasks` of a task into `dir_path`; the status line and the body.
async fn create_in(address: &str, dir_path: &str) -> (String, String) {
    let body = serde_json::json!({
        "telegram_url": "https://t.me/channel/123",
        "user_id": 1,
        "storage_name": "local1",
        "dir_path": dir_path,
    })
    .to_string();
    let request = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nhost: api\r\nauthorization: Bearer t\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = TcpStream::connect(address).await.expect("connecting to the API");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut answer = String::new();
    socket
        .read_to_string(&mut answer)
        .await
        .expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn a_dir_path_with_a_directory_name_longer_than_a_storage_accepts_is_refused_with_400() {
    // Arrange
    let redis = RedisServer::start();
    let storage = tempfile::tempdir().expect("a storage dir");
    let config = support::minimal_config(&redis.url(), storage.path());
    let app = Application::build(config).await.expect("building the API");
    let address = format!("127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    // Act
    let (refused_status, refused_body) = create_in(&address, &format!("/a/{}", "x".repeat(300))).await;
    let (longest_status, _) = create_in(&address, &format!("/a/{}", "x".repeat(200))).await;

    // Assert
    assert!(
        refused_status.contains(" 400 "),
        "{refused_status}: {refused_body}"
    );
    let error: serde_json::Value = serde_json::from_str(&refused_body).expect("a JSON error body");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("dir_path") && message.contains("300 bytes") && message.contains("200"),
        "{message}"
    );
    assert!(longest_status.contains(" 201 "), "{longest_status}");

    let _ = stop.send(());
    server.await.expect("the server task").expect("the server");
}
