//! Hostile input, from the outside: bodies that are huge, deeply nested or
//! not UTF-8; `dir_path`s and file names (from `Content-Disposition` and
//! from the link's path) that try to climb out of the storage; and
//! `Authorization` headers that try to get past the token.
//!
//! What must hold: a refusal is a 4xx with a JSON `{"error": ...}` body,
//! never a 5xx, and creates nothing; the API stays up; a file is only ever
//! written inside the storage's base path. Two things are accepted on
//! purpose and not tested as refusals: any `Content-Type` (the body is read
//! as JSON, as SaveAny-Bot did for `curl -d`), and the scheme `bearer` in
//! any case with the right token (schemes are case-insensitive, RFC 9110
//! section 11.1). A request that is not valid HTTP (control bytes in a
//! header) is refused by the HTTP layer with a bare 400 before the API sees
//! it. Telegram file names cannot reach
//! a worker process from a test (the binary has no fake Telegram), so the
//! last test checks the naming function the Telegram source uses, over
//! hostile and arbitrary names, by writing each name into a real directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, StreamsInterface};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{TestApp, TestOptions, TEST_STORAGE, TEST_USER};
use serde_json::json;

use super::support::{body, direct_link_request};

const TOKEN: &str = "hostile-token-5f3a9c";
const EVENTS_KEY: &str = "{savestream}:events";

async fn spawn_app(workers: usize) -> TestApp {
    TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        workers,
        ..TestOptions::default()
    })
    .await
}

/// How many events the log holds: 0 means nothing was created.
async fn logged_events(app: &TestApp) -> u64 {
    let client = Builder::from_config(Config::from_url(&app.redis.url()).expect("a valid redis url"))
        .build()
        .expect("building a redis client");
    client.init().await.expect("connecting to the test redis");
    client.xlen(EVENTS_KEY).await.expect("XLEN on the event log")
}

/// One HTTP/1.1 exchange on a fresh connection, bytes exactly as given,
/// for requests no client library would send. Returns the status (0 when
/// the server closed the connection without one), the headers and the body.
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the api");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A raw `POST /api/v1/tasks` with the token, `Connection: close`, and
/// `extra_headers` (each ending in CRLF) before `body`.
fn raw_post(port: u16, extra_headers: &str, body: &[u8]) -> (u16, String, String) {
    raw_post_to(port, "/api/v1/tasks", extra_headers, body)
}

/// [`raw_post`] to any `path`.
fn raw_post_to(port: u16, path: &str, extra_headers: &str, body: &[u8]) -> (u16, String, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n{extra_headers}"
    )
    .into_bytes();
    if !extra_headers.to_ascii_lowercase().contains("content-length") {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    raw_exchange(port, &request)
}

/// Checks a refusal: a 4xx status in `statuses`, a JSON content type and a
/// body that is exactly `{"error": "<text>"}`.
fn assert_json_refusal(case: &str, (status, head, body): &(u16, String, String), statuses: &[u16]) {
    assert!(
        statuses.contains(status),
        "{case}: answered {status}, expected one of {statuses:?}\n{head}\n{body}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{case}: a {status} that is not JSON\n{head}\n{body}"
    );
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("{case}: a {status} body that is not JSON: {body}"));
    let error = json["error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty() && json.as_object().is_some_and(|object| object.len() == 1),
        "{case}: not an error body: {body}"
    );
}

async fn assert_healthy(app: &TestApp) {
    let response = reqwest::get(app.url("/health")).await.expect("GET /health");
    assert_eq!(response.status(), 200, "the api is not healthy any more");
}

fn contract_body() -> String {
    json!({"telegram_url": "https://t.me/channel/123", "user_id": TEST_USER, "storage_name": TEST_STORAGE})
        .to_string()
}

#[tokio::test]
async fn huge_deeply_nested_and_non_utf8_bodies_answer_4xx_json_and_create_nothing() {
    let app = spawn_app(0).await;
    let port = app.api_port;
    let huge = format!(
        r#"{{"telegram_url": "https://t.me/channel/123", "user_id": {TEST_USER}, "padding": "{}"}}"#,
        "p".repeat(10 * 1024 * 1024)
    );
    let nested_arrays = "[".repeat(60_000);
    // 60,001 bytes: under the 64 KiB limit, so the parser meets the depth.
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let nested_in_a_valid_body = format!(
        r#"{{"telegram_url": "https://t.me/channel/123", "user_id": {TEST_USER}, "extra": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut invalid_utf8 = br#"{"telegram_url": "https://t.me/channel/1"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(format!(r#"", "user_id": {TEST_USER}}}"#).as_bytes());
    let mut overlong_slash = br#"{"telegram_url": "https://t.me/channel/1", "dir_path": "/a"#.to_vec();
    overlong_slash.extend_from_slice(&[0xc0, 0xaf, 0xc0, 0xae, 0xc0, 0xae]);
    overlong_slash.extend_from_slice(format!(r#"", "user_id": {TEST_USER}}}"#).as_bytes());
    let json = "Content-Type: application/json\r\n";
    let cases: Vec<(&str, String, Vec<u8>, &[u16])> = vec![
        (
            "a 10 MiB body",
            json.to_owned(),
            huge.clone().into_bytes(),
            &[413],
        ),
        (
            "a body that announces a terabyte",
            format!("{json}Content-Length: 1000000000000\r\n"),
            b"{".to_vec(),
            &[413],
        ),
        (
            "60,000 nested arrays",
            json.to_owned(),
            nested_arrays.into_bytes(),
            &[400],
        ),
        (
            "10,000 nested objects",
            json.to_owned(),
            nested_objects.into_bytes(),
            &[400],
        ),
        (
            "10,000 nested arrays in an unknown field",
            json.to_owned(),
            nested_in_a_valid_body.into_bytes(),
            &[400],
        ),
        ("invalid UTF-8 in a string", json.to_owned(), invalid_utf8, &[400]),
        (
            "overlong UTF-8 for `/..`",
            json.to_owned(),
            overlong_slash,
            &[400],
        ),
        ("a lone NUL byte", json.to_owned(), vec![0], &[400]),
        ("a UTF-16 body", json.to_owned(), utf16(&contract_body()), &[400]),
        // Any Content-Type is read as JSON (SaveAny-Bot accepted `curl -d`),
        // so a form body is refused for what it holds.
        (
            "a form-encoded body",
            "Content-Type: application/x-www-form-urlencoded\r\n".to_owned(),
            format!("telegram_url=https%3A%2F%2Ft.me%2Fchannel%2F1&user_id={TEST_USER}").into_bytes(),
            &[400],
        ),
    ];

    for (case, headers, body, statuses) in &cases {
        let answer = raw_post(port, headers, body);
        assert_json_refusal(case, &answer, statuses);
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = huge
        .into_bytes()
        .chunks(256 * 1024)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let chunked = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server may close the connection while the body still streams in.
    if let Ok(response) = chunked {
        assert_eq!(response.status(), 413, "a chunked 10 MiB body");
    }

    assert_healthy(&app).await;
    assert_eq!(logged_events(&app).await, 0, "a refused request created a task");
}

/// `text` as UTF-16LE with a byte-order mark.
fn utf16(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

#[tokio::test]
async fn authorization_headers_that_are_not_exactly_the_token_answer_401_json_and_create_nothing() {
    let app = spawn_app(0).await;
    let port = app.api_port;
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let base64_token = "aG9zdGlsZS10b2tlbi01ZjNhOWM="; // base64 of TOKEN
    let long = "A".repeat(8 * 1024);
    let header_lines: Vec<(&str, String)> = vec![
        ("no Authorization header", String::new()),
        ("an empty header", "Authorization: \r\n".into()),
        (
            "the token without a scheme",
            format!("Authorization: {TOKEN}\r\n"),
        ),
        (
            "Basic with the token",
            format!("Authorization: Basic {TOKEN}\r\n"),
        ),
        (
            "Basic with base64 of the token",
            format!("Authorization: Basic {base64_token}\r\n"),
        ),
        ("Token scheme", format!("Authorization: Token {TOKEN}\r\n")),
        ("Bearer and nothing", "Authorization: Bearer\r\n".into()),
        ("Bearer and a space", "Authorization: Bearer \r\n".into()),
        (
            "a prefix of the token",
            format!("Authorization: Bearer {prefix}\r\n"),
        ),
        (
            "the token and a suffix",
            format!("Authorization: Bearer {TOKEN}x\r\n"),
        ),
        (
            "the token twice",
            format!("Authorization: Bearer {TOKEN}{TOKEN}\r\n"),
        ),
        (
            "the token, a space, more",
            format!("Authorization: Bearer {TOKEN} x\r\n"),
        ),
        (
            "the token upper-cased",
            format!("Authorization: Bearer {}\r\n", TOKEN.to_uppercase()),
        ),
        (
            "lowercase bearer with a prefix",
            format!("Authorization: bearer {prefix}\r\n"),
        ),
        ("lowercase bearer and nothing", "Authorization: bearer\r\n".into()),
        (
            "Bearer glued to the token",
            format!("Authorization: Bearer{TOKEN}\r\n"),
        ),
        ("Bearer=token", format!("Authorization: Bearer={TOKEN}\r\n")),
        ("a quoted token", format!("Authorization: Bearer \"{TOKEN}\"\r\n")),
        (
            "a percent-encoded token",
            "Authorization: Bearer hostile%2Dtoken%2D5f3a9c\r\n".into(),
        ),
        (
            "a list of schemes",
            format!("Authorization: Basic x, Bearer {prefix}\r\n"),
        ),
        (
            "a non-UTF-8 token",
            "Authorization: Bearer \u{ff}\u{fe}\r\n".into(),
        ),
        ("an 8 KiB token", format!("Authorization: Bearer {long}\r\n")),
        (
            "the token in another header",
            format!("X-Authorization: Bearer {TOKEN}\r\nX-Api-Key: {TOKEN}\r\n"),
        ),
        (
            "the wrong token, then the right one",
            format!("Authorization: Bearer {prefix}\r\nAuthorization: Bearer {TOKEN}\r\n"),
        ),
    ];
    let body = contract_body();
    let targets = [
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks"),
        ("DELETE", "/api/v1/tasks/0123456789abcdefghij"),
    ];

    for (case, header) in &header_lines {
        for (method, path) in targets {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n{header}\r\n{body}",
                body.len()
            );
            let answer = raw_exchange(port, request.as_bytes());
            assert_json_refusal(&format!("{method} {path} with {case}"), &answer, &[401]);
        }
    }
    // Control bytes are not valid in a header value: the HTTP layer refuses
    // the request (a bare 400) before the API sees it.
    let request = format!(
        "GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: Bearer \u{1}{TOKEN}\r\n\r\n"
    );
    let (status, head, _) = raw_exchange(port, request.as_bytes());
    assert!(
        [400, 401].contains(&status),
        "control bytes in the token answered {status}\n{head}"
    );
    for size in [64 * 1024, 1024 * 1024] {
        let request = format!(
            "POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {}\r\n\r\n{body}",
            body.len(),
            "A".repeat(size)
        );
        let (status, head, text) = raw_exchange(port, request.as_bytes());
        // Too large a head may be refused before routing (431) or the
        // connection closed; what matters is no 5xx and no task.
        assert!(
            [0, 401, 431].contains(&status),
            "a {size}-byte Authorization header answered {status}\n{head}\n{text}"
        );
    }

    assert_healthy(&app).await;
    assert_eq!(
        logged_events(&app).await,
        0,
        "an unauthorized request created a task"
    );
}

#[tokio::test]
async fn two_authorization_headers_are_refused_whichever_comes_first() {
    let app = spawn_app(0).await;
    let port = app.api_port;
    let body = contract_body();
    let request = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Authorization: Bearer wrong\r\n\r\n{body}",
        body.len()
    );

    let answer = raw_exchange(port, request.as_bytes());

    assert_json_refusal("the right token, then a wrong one", &answer, &[400, 401]);
    assert_eq!(logged_events(&app).await, 0);
}

#[tokio::test]
async fn a_non_ascii_idempotency_key_is_refused_rather_than_ignored() {
    let app = spawn_app(0).await;
    let header = "Content-Type: application/json\r\nIdempotency-Key: cl\u{e9}-\u{ff}\r\n";

    let first = raw_post(app.api_port, header, contract_body().as_bytes());
    let repeat = raw_post(app.api_port, header, contract_body().as_bytes());

    // Either refused (400), or honoured: the repeat names the first task.
    if first.0 != 400 {
        assert_eq!((first.0, repeat.0), (201, 200), "{}\n{}", first.2, repeat.2);
        assert_eq!(first.2, repeat.2);
    }
    assert!(logged_events(&app).await <= 1, "a repeat created a second task");
}

#[tokio::test]
async fn an_empty_or_blank_idempotency_key_is_refused_with_400_and_creates_nothing() {
    // Arrange: a key that is present but empty, or only spaces (which the
    // server's HTTP parser trims to empty), on both create endpoints.
    let app = spawn_app(0).await;
    let single = contract_body();
    let batch = json!({ "tasks": [serde_json::from_str::<serde_json::Value>(&single).expect("the contract body is JSON")] })
        .to_string();
    let endpoints = [("/api/v1/tasks", single), ("/api/v1/tasks/batch", batch)];
    let keys = [
        "Idempotency-Key:\r\n",
        "Idempotency-Key: \r\n",
        "Idempotency-Key:    \r\n",
    ];

    for (path, body) in &endpoints {
        for key in keys {
            // Act
            let header = format!("Content-Type: application/json\r\n{key}");
            let reply = raw_post_to(app.api_port, path, &header, body.as_bytes());

            // Assert: refused as a bad key, not read as "no key".
            let case = format!("{path} with {key:?}");
            assert_json_refusal(&case, &reply, &[400]);
            assert!(
                reply.2.contains("header `Idempotency-Key`"),
                "{case}: the error names the header: {}",
                reply.2
            );
        }
    }
    assert_eq!(logged_events(&app).await, 0, "an empty key created a task");
    assert_healthy(&app).await;
}

/// How a task with a hostile path ended.
#[derive(Debug)]
enum Outcome {
    Refused(String),
    Completed(String),
    Failed(String),
}

/// Creates the task (direct link), and waits for its end when it is accepted.
async fn outcome_of(app: &TestApp, request: serde_json::Value) -> Outcome {
    let (status, created) = app.create_task(request.clone()).await;
    match status {
        400 => {
            assert_eq!(
                created.as_object().map(|object| object.len()),
                Some(1),
                "{request}: {created}"
            );
            return Outcome::Refused(created["error"].as_str().unwrap_or_default().to_owned());
        }
        201 => {}
        other => panic!("{request}: answered {other}: {created}"),
    }
    let task_id = created["task_id"].as_str().expect("a task id").to_owned();
    let task = eventually(
        &format!("task {task_id} to end"),
        Duration::from_secs(30),
        || async {
            let (_, task) = app.get_task(&task_id).await;
            ["completed", "failed", "canceled"]
                .contains(&task["status"].as_str().unwrap_or_default())
                .then_some(task)
        },
    )
    .await;
    match task["status"].as_str() {
        Some("completed") => Outcome::Completed(task["path"].as_str().unwrap_or_default().to_owned()),
        _ => Outcome::Failed(task["error"].as_str().unwrap_or_default().to_owned()),
    }
}

/// Checks that a completed task's file is inside the storage and holds `expected`.
fn assert_stored_inside(app: &TestApp, case: &str, path: &str, expected: &[u8]) {
    let base = std::fs::canonicalize(&app.storage_dir).expect("the storage dir exists");
    let joined = app.storage_path(path);
    let resolved = std::fs::canonicalize(&joined)
        .unwrap_or_else(|error| panic!("{case}: completed at {path}, but {}: {error}", joined.display()));
    assert!(
        resolved.starts_with(&base),
        "{case}: the file is at {}, outside {}",
        resolved.display(),
        base.display()
    );
    assert!(
        std::fs::read(&resolved).unwrap() == expected,
        "{case}: wrong bytes at {path}"
    );
}

/// Files whose name contains `marker` under `root` (to `depth` levels),
/// except those under `skip`.
fn find_marked(root: &Path, marker: &str, depth: usize, skip: &Path, found: &mut Vec<PathBuf>) {
    if depth == 0 || root.starts_with(skip) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(marker) {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            find_marked(&path, marker, depth - 1, skip, found);
        }
    }
}

/// Checks that no file or directory named with `marker` exists outside the
/// storage: in the app's temp dir, or up to three levels under its parent
/// (where `/../..` and its kin would lead).
fn assert_nothing_outside(app: &TestApp, marker: &str) {
    let mut found = Vec::new();
    let temp_root = app.dir.path().parent().expect("the temp dir has a parent");
    find_marked(temp_root, marker, 4, &app.storage_dir, &mut found);
    assert_eq!(found, Vec::<PathBuf>::new(), "written outside the storage");
}

#[tokio::test]
async fn dir_paths_that_try_to_climb_out_are_refused_or_stay_inside_the_storage() {
    let files = FileServer::start().await;
    let app = spawn_app(2).await;
    let marker = format!("climb{}", std::process::id());
    let dir_paths = [
        "/..",
        "/../..",
        "/../../x",
        "/a/../../x",
        "/./../x",
        "//../x",
        "/a/b/../../../x",
        "/%2e%2e/%2e%2e/x",
        "/%2E%2E%2F%2E%2E%2Fx",
        "/..%2f..%2fx",
        "/..%5c..%5cx",
        "\\..\\..\\x",
        "/\\..\\..\\x",
        "/a\\..\\..\\x",
        "/..\\x",
        "/...",
        "/.../x",
        "/\u{2025}/x",
        "/\u{ff0e}\u{ff0e}/x",
        "/\u{2024}\u{2024}/x",
        "/..\u{200b}/x",
        "/ ../x",
        "/.. /x",
        "/a\u{0}/../x",
        "/\u{202e}x/..",
        "../x",
        "..",
        "",
    ];
    let mut outcomes = BTreeMap::new();

    for (index, dir_path) in dir_paths.iter().enumerate() {
        let path = format!("/climb/{index}/{marker}-{index}.bin");
        let bytes = body(index as u64, 1_000 + index);
        files.add(&path, ServedFile::new(bytes.clone()));
        let mut request = direct_link_request(&files.url(&path), None);
        request["dir_path"] = json!(dir_path);
        let outcome = outcome_of(&app, request).await;
        if let Outcome::Completed(stored) = &outcome {
            assert_stored_inside(&app, &format!("dir_path {dir_path:?}"), stored, &bytes);
        }
        outcomes.insert(format!("{dir_path:?}"), outcome);
    }

    assert_nothing_outside(&app, &marker);
    assert_healthy(&app).await;
    eprintln!("dir_path outcomes:\n{outcomes:#?}");
}

#[tokio::test]
async fn dir_paths_the_worker_would_refuse_are_refused_at_creation() {
    let files = FileServer::start().await;
    files.add("/f.bin", ServedFile::new(body(1, 100)));
    let app = spawn_app(1).await;

    let mut outcomes = Vec::new();
    for dir_path in ["/a\\..\\..\\x", "/\\..\\x", "\\..\\x"] {
        let mut request = direct_link_request(&files.url("/f.bin"), None);
        request["dir_path"] = json!(dir_path);
        outcomes.push((dir_path, outcome_of(&app, request).await));
    }

    assert!(
        outcomes
            .iter()
            .all(|(_, outcome)| matches!(outcome, Outcome::Refused(_) | Outcome::Completed(_))),
        "accepted, then failed by the worker: {outcomes:#?}"
    );
}

#[tokio::test]
async fn file_names_from_the_server_that_try_to_climb_out_land_inside_the_storage() {
    let files = FileServer::start().await;
    let app = spawn_app(2).await;
    let marker = format!("name{}", std::process::id());
    let m = &marker;
    // (how the name is given, the link's path, the Content-Disposition header)
    let cases: Vec<(String, String, Option<String>)> = vec![
        (
            "filename ../../x".into(),
            "/cd/1".into(),
            Some(format!("attachment; filename=\"../../{m}-1.bin\"")),
        ),
        (
            "filename ..%2F..%2Fx".into(),
            "/cd/2".into(),
            Some(format!("attachment; filename=\"..%2F..%2F{m}-2.bin\"")),
        ),
        (
            "filename* ..%2F..%2Fx".into(),
            "/cd/3".into(),
            Some(format!("attachment; filename*=UTF-8''..%2F..%2F{m}-3.bin")),
        ),
        (
            "filename /abs".into(),
            "/cd/4".into(),
            Some(format!("attachment; filename=\"/tmp/{m}-4.bin\"")),
        ),
        (
            "filename ..\\..\\x".into(),
            "/cd/5".into(),
            Some(format!("attachment; filename=\"..\\\\..\\\\{m}-5.bin\"")),
        ),
        (
            "filename C:\\x".into(),
            "/cd/6".into(),
            Some(format!("attachment; filename=\"C:\\\\Windows\\\\{m}-6.bin\"")),
        ),
        (
            "filename ..".into(),
            format!("/cd/{m}-7"),
            Some("attachment; filename=\"..\"".into()),
        ),
        (
            "filename .".into(),
            format!("/cd/{m}-8"),
            Some("attachment; filename=\".\"".into()),
        ),
        (
            "filename* %2E%2E".into(),
            format!("/cd/{m}-9"),
            Some("attachment; filename*=UTF-8''%2E%2E".into()),
        ),
        (
            "filename* NUL".into(),
            "/cd/10".into(),
            Some(format!("attachment; filename*=UTF-8''{m}%00-10.bin")),
        ),
        (
            "filename* newline".into(),
            "/cd/11".into(),
            Some(format!("attachment; filename*=UTF-8''%0A{m}-11.bin")),
        ),
        (
            "filename* two-dot leader".into(),
            format!("/cd/{m}-12"),
            Some("attachment; filename*=UTF-8''%E2%80%A5".into()),
        ),
        (
            "filename* ../ in latin-1".into(),
            "/cd/13".into(),
            Some(format!("attachment; filename*=iso-8859-1''..%2F{m}-13.bin")),
        ),
        (
            "filename empty".into(),
            format!("/cd/{m}-14"),
            Some("attachment; filename=\"\"".into()),
        ),
        (
            "filename dir/".into(),
            format!("/cd/{m}-15"),
            Some("attachment; filename=\"x/\"".into()),
        ),
        (
            "filename 300 bytes".into(),
            "/cd/16".into(),
            Some(format!("attachment; filename=\"{m}-16-{}.bin\"", "n".repeat(300))),
        ),
        (
            "url ..%2F..%2Fx".into(),
            format!("/url/..%2F..%2F{m}-17.bin"),
            None,
        ),
        (
            "url backslashes".into(),
            format!("/url/..%5C..%5C{m}-19.bin"),
            None,
        ),
        ("url %00".into(), format!("/url/{m}-20%00.bin"), None),
        ("url only slashes".into(), format!("/url/{m}-21/%2F%2F"), None),
    ];
    let mut outcomes = BTreeMap::new();

    for (index, (case, path, disposition)) in cases.iter().enumerate() {
        let bytes = body(100 + index as u64, 2_000 + index);
        let mut served = ServedFile::new(bytes.clone());
        if let Some(disposition) = disposition {
            served = served.with_content_disposition(disposition.clone());
        }
        // The file server matches the path as sent, still percent-encoded.
        files.add(path, served);
        let request = direct_link_request(&files.url(path), Some("/names"));
        let outcome = outcome_of(&app, request).await;
        match &outcome {
            Outcome::Completed(stored) => {
                assert!(stored.starts_with("/names/"), "{case}: stored at {stored}");
                assert_stored_inside(&app, case, stored, &bytes);
            }
            Outcome::Failed(error) => panic!("{case}: the task failed: {error}"),
            Outcome::Refused(error) => panic!("{case}: the link was refused: {error}"),
        }
        outcomes.insert(case.clone(), outcome);
    }

    assert_nothing_outside(&app, &marker);
    eprintln!("file name outcomes:\n{outcomes:#?}");
}

/// Checks that `name`, as the Telegram source would save it, is one plain
/// path component that stays inside `base` when a file is created with it.
fn assert_telegram_name_stays_inside(base: &Path, original: &str) {
    let Some(name) = savestream_telegram::naming::sanitize(original) else {
        return;
    };
    assert!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']),
        "{original:?} became {name:?}"
    );
    assert!(name.len() <= 255, "{original:?} became {} bytes", name.len());
    let path = base.join(&name);
    assert_eq!(path.parent(), Some(base), "{original:?} became {name:?}");
    std::fs::write(&path, b"x").unwrap_or_else(|error| panic!("{original:?} -> {name:?}: {error}"));
    let resolved = std::fs::canonicalize(&path).expect("the file was just written");
    assert_eq!(resolved.parent(), Some(base), "{original:?} -> {name:?}");
    std::fs::remove_file(&path).expect("removing the probe file");
}

#[test]
fn telegram_file_names_that_try_to_climb_out_become_one_component_inside_the_storage() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let base = std::fs::canonicalize(dir.path()).expect("the temp dir exists");
    let hostile = [
        "../../etc/passwd",
        "..",
        ".",
        "...",
        "/etc/passwd",
        "..\\..\\windows\\system32",
        "C:\\x.doc",
        "a/../../b",
        "nul\0byte.txt",
        "\n..\n",
        " .. ",
        "..%2F..%2Fx",
        "\u{2025}",
        "\u{ff0e}\u{ff0e}",
        "\u{202e}fdp.exe",
        "",
        "/",
        "\\",
        "//..//",
    ];
    for name in hostile {
        assert_telegram_name_stays_inside(&base, name);
    }
    let long = format!("{}.mp4", "é".repeat(400));
    assert_telegram_name_stays_inside(&base, &long);
    // Arbitrary names, from a fixed seed so a failure repeats.
    let mut state = 0x5eed_u64;
    let alphabet: Vec<char> = "./\\\0 \n\tabc.-é€\u{2025}\u{ff0e}\u{200b}".chars().collect();
    for _ in 0..20_000 {
        let length = {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 59) as usize
        };
        let name: String = (0..length)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                alphabet[(state >> 33) as usize % alphabet.len()]
            })
            .collect();
        assert_telegram_name_stays_inside(&base, &name);
    }
}
