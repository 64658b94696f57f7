//! The `http` source against a real local HTTP server (`FileServer`): file
//! names and sizes, redirects, resuming with `Range`, status and network
//! errors, the guard against private addresses, and the download that
//! `resolve_and_open` hands over from its one GET.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use savestream_shared::config::HttpConfig;
use savestream_shared::task::{SourceKind, Task, TaskId, TaskStatus};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_worker::source::http::{HttpSource, MAX_RETRY_AFTER};
use savestream_worker::source::{Download, RemoteFile, Source, SourceErrorKind};

fn source(allow_private_networks: bool) -> HttpSource {
    HttpSource::new(&HttpConfig {
        allow_private_networks,
    })
    .expect("building the http client")
}

fn task(link: &str) -> Task {
    Task {
        id: TaskId::generate(),
        status: TaskStatus::Running,
        source: SourceKind::Http,
        link: link.to_owned(),
        user_id: 1,
        storage: "local1".into(),
        dir: "/".into(),
        title: String::new(),
        file_name: None,
        size: None,
        path: None,
        validator: None,
        created_at: 0,
        updated_at: 0,
        started_at: None,
        ended_at: None,
        attempt: 1,
        retries: 0,
        error: String::new(),
        worker: None,
    }
}

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 7 % 251) as u8).collect()
}

async fn read_all(download: Download) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = download.stream.try_collect().await.expect("reading the body");
    chunks.concat()
}

#[tokio::test]
async fn the_file_name_comes_from_content_disposition_and_the_size_from_content_length() {
    let server = FileServer::start().await;
    server.add(
        "/download",
        ServedFile::new(body(1000))
            .with_content_disposition("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
    );

    let files = source(true)
        .resolve(&task(&server.url("/download")))
        .await
        .unwrap();

    assert_eq!(
        files,
        vec![RemoteFile {
            name: Some("résumé.pdf".into()),
            size: Some(1000),
            mime: None,
            key: None,
            validator: None,
        }]
    );
}

#[tokio::test]
async fn without_content_disposition_the_name_is_the_last_url_segment_and_the_size_may_be_unknown() {
    let server = FileServer::start().await;
    server.add(
        "/files/my%20file.bin",
        ServedFile::new(body(10)).without_content_length(),
    );

    let files = source(true)
        .resolve(&task(&server.url("/files/my%20file.bin?token=secret")))
        .await
        .unwrap();

    assert_eq!(files[0].name.as_deref(), Some("my file.bin"));
    assert_eq!(files[0].size, None);
}

#[tokio::test]
async fn redirects_are_followed_and_the_name_comes_from_the_final_url() {
    let server = FileServer::start().await;
    server.add("/short", ServedFile::redirect(server.url("/real/archive.zip")));
    server.add("/real/archive.zip", ServedFile::new(body(100)));

    let source = source(true);
    let link = task(&server.url("/short"));
    let files = source.resolve(&link).await.unwrap();
    let download = source.open(&link, &files[0], 0).await.unwrap();

    assert_eq!(files[0].name.as_deref(), Some("archive.zip"));
    assert_eq!(read_all(download).await, body(100));
}

#[tokio::test]
async fn a_redirect_loop_fails_permanently_after_ten_hops() {
    let server = FileServer::start().await;
    server.add("/a", ServedFile::redirect(server.url("/b")));
    server.add("/b", ServedFile::redirect(server.url("/a")));

    let error = source(true).resolve(&task(&server.url("/a"))).await.unwrap_err();

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert!(error.message.contains("redirected more than 10 times"), "{error}");
    assert_eq!(server.requests().len(), 11, "the first request and ten redirects");
}

#[tokio::test]
async fn a_redirect_to_another_scheme_is_refused() {
    let server = FileServer::start().await;
    server.add("/a", ServedFile::redirect("ftp://example.com/file"));

    let error = source(true).resolve(&task(&server.url("/a"))).await.unwrap_err();

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert!(error.message.contains("ftp"), "{error}");
}

#[tokio::test]
async fn a_missing_file_is_a_permanent_error_that_names_the_link() {
    let server = FileServer::start().await;

    let error = source(true)
        .resolve(&task(&server.url("/gone.bin?sig=secret")))
        .await
        .unwrap_err();

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(
        error.message,
        format!(
            "http://{}/gone.bin?… answered 404 Not Found: check the link",
            server.address()
        )
    );
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_retryable() {
    let server = FileServer::start().await;
    server.add("/flaky", ServedFile::new(body(10)).failing_first(1));
    let source = source(true);

    let error = source.resolve(&task(&server.url("/flaky"))).await.unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Retryable);
    assert!(error.message.contains("500 Internal Server Error"), "{error}");
    assert!(source.resolve(&task(&server.url("/flaky"))).await.is_ok());

    let closed_port = savestream_testkit::free_port();
    let error = source
        .resolve(&task(&format!("http://127.0.0.1:{closed_port}/x")))
        .await
        .unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Retryable);
    assert!(error.message.starts_with("cannot connect to"), "{error}");
}

#[tokio::test]
async fn a_429_or_503_that_asks_to_wait_is_retried_no_sooner_and_at_most_an_hour_later() {
    let server = FileServer::start().await;
    server.add("/limited", ServedFile::status(429).with_retry_after("120"));
    server.add("/down", ServedFile::status(503).with_retry_after("86400"));
    server.add("/failing", ServedFile::status(500).with_retry_after("120"));
    let source = source(true);

    let limited = source.resolve(&task(&server.url("/limited"))).await.unwrap_err();
    assert_eq!(limited.kind, SourceErrorKind::Retryable, "the retry counts");
    assert_eq!(limited.retry_after, Some(Duration::from_secs(120)));
    assert!(limited.message.ends_with("(it asks to wait 120 s)"), "{limited}");

    let down = source.resolve(&task(&server.url("/down"))).await.unwrap_err();
    assert_eq!(down.retry_after, Some(MAX_RETRY_AFTER));

    // Retry-After means nothing on other statuses (RFC 9110 §10.2.3).
    let failing = source.resolve(&task(&server.url("/failing"))).await.unwrap_err();
    assert_eq!(failing.retry_after, None);
}

#[tokio::test]
async fn a_download_resumes_from_an_offset_with_a_range_request() {
    let server = FileServer::start().await;
    server.add("/big.bin", ServedFile::new(body(10_000)));
    let file = RemoteFile {
        name: Some("big.bin".into()),
        size: Some(10_000),
        mime: None,
        key: None,
        validator: None,
    };

    let download = source(true)
        .open(&task(&server.url("/big.bin")), &file, 4_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 4_000);
    assert_eq!(download.total, Some(10_000));
    assert_eq!(read_all(download).await, body(10_000)[4_000..].to_vec());
    let requests = server.requests_for("/big.bin");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].range.as_deref(), Some("bytes=4000-"));
    assert_eq!(requests[0].status, 206);
}

#[tokio::test]
async fn a_recorded_validator_that_cannot_be_sent_fetches_the_file_whole() {
    // Only a hand-edited hash holds one; without If-Range nothing tells
    // whether the saved bytes are of the file there now.
    let server = FileServer::start().await;
    server.add("/big.bin", ServedFile::new(body(10_000)).with_etag("\"a\""));
    let file = RemoteFile {
        size: Some(10_000),
        validator: Some("\"a\"\r\nX-Injected: 1".into()),
        ..RemoteFile::default()
    };

    let download = source(true)
        .open(&task(&server.url("/big.bin")), &file, 4_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 0);
    assert_eq!(read_all(download).await, body(10_000));
    let requests = server.requests_for("/big.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].range.as_deref(), requests[0].status), (None, 200));
}

#[tokio::test]
async fn a_range_of_a_file_with_another_validator_is_not_resumed_even_from_a_server_that_ignores_if_range() {
    // The file was replaced (same size, new ETag); this server answers the
    // Range regardless of If-Range, but its 206 names the new ETag.
    let server = FileServer::start().await;
    server.add(
        "/big.bin",
        ServedFile::new(body(10_000))
            .with_etag("\"new\"")
            .ignoring_if_range(),
    );
    let file = RemoteFile {
        size: Some(10_000),
        validator: Some("\"old\"".into()),
        ..RemoteFile::default()
    };

    let download = source(true)
        .open(&task(&server.url("/big.bin")), &file, 4_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 0, "the saved bytes are of another file");
    assert_eq!(read_all(download).await, body(10_000));
    let requests = server.requests_for("/big.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (requests[0].range_start(), requests[0].status),
        (Some(4_000), 206)
    );
    assert_eq!((requests[1].range.as_deref(), requests[1].status), (None, 200));
}

#[tokio::test]
async fn a_range_whose_validator_matches_the_recorded_one_is_resumed() {
    let server = FileServer::start().await;
    server.add(
        "/big.bin",
        ServedFile::new(body(10_000))
            .with_etag("\"same\"")
            .ignoring_if_range(),
    );
    let file = RemoteFile {
        size: Some(10_000),
        validator: Some("\"same\"".into()),
        ..RemoteFile::default()
    };

    let download = source(true)
        .open(&task(&server.url("/big.bin")), &file, 4_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 4_000);
    assert_eq!(read_all(download).await, body(10_000)[4_000..].to_vec());
    assert_eq!(server.requests_for("/big.bin").len(), 1);
}

#[tokio::test]
async fn a_server_that_ignores_range_sends_the_whole_file_from_offset_zero() {
    let server = FileServer::start().await;
    server.add("/big.bin", ServedFile::new(body(5_000)).without_ranges());
    let file = RemoteFile {
        size: Some(5_000),
        ..RemoteFile::default()
    };

    let download = source(true)
        .open(&task(&server.url("/big.bin")), &file, 1_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 0);
    assert_eq!(read_all(download).await, body(5_000));
    assert_eq!(
        server.requests_for("/big.bin").len(),
        1,
        "the 200 answer is used as it is"
    );
}

#[tokio::test]
async fn a_range_that_stops_short_of_the_end_of_the_file_is_not_taken_for_the_rest_of_it() {
    let server = FileServer::start().await;
    // `bytes=30000-` is answered `206 Content-Range: bytes 30000-39999/100000`.
    server.add(
        "/capped.bin",
        ServedFile::new(body(100_000)).capping_ranges(10_000),
    );
    let source = source(true);
    let link = task(&server.url("/capped.bin"));

    for known_size in [Some(100_000), None] {
        let file = RemoteFile {
            size: known_size,
            ..RemoteFile::default()
        };
        let download = source.open(&link, &file, 30_000).await.unwrap();

        assert_eq!(download.offset, 0, "size {known_size:?}: it starts over");
        assert_eq!(download.total, Some(100_000), "size {known_size:?}");
        assert_eq!(read_all(download).await, body(100_000), "size {known_size:?}");
    }
    let requests: Vec<(Option<String>, u16)> = server
        .requests_for("/capped.bin")
        .into_iter()
        .map(|request| (request.range, request.status))
        .collect();
    let attempt = [(Some("bytes=30000-".to_owned()), 206), (None, 200)];
    assert_eq!(requests, [attempt.clone(), attempt].concat());
}

#[tokio::test]
async fn a_file_that_changed_size_is_not_resumed_and_fails_permanently_with_both_sizes() {
    let server = FileServer::start().await;
    server.add("/changed.bin", ServedFile::new(body(3_000)));
    let source = source(true);
    let link = task(&server.url("/changed.bin?sig=secret"));
    // The earlier attempt saw 2 000 bytes; the server now has 3 000.
    let stale = RemoteFile {
        size: Some(2_000),
        ..RemoteFile::default()
    };

    // A 206 (`bytes 1000-2999/3000`) and a 416 (`bytes */3000`) both tell the new size.
    for offset in [1_000, 5_000] {
        let error = source.open(&link, &stale, offset).await.unwrap_err();

        assert_eq!(error.kind, SourceErrorKind::Permanent, "offset {offset}");
        assert_eq!(
            error.message,
            format!(
                "the file at http://{}/changed.bin?… changed on the server (was 2000 bytes, now 3000): \
                 add the link again to download the new file",
                server.address()
            ),
            "offset {offset}"
        );
    }
    let statuses: Vec<u16> = server.requests().iter().map(|request| request.status).collect();
    assert_eq!(statuses, vec![206, 416], "no whole GET of the new file");
}

#[tokio::test]
async fn an_unsatisfiable_range_of_a_file_of_unknown_size_starts_over() {
    let server = FileServer::start().await;
    server.add("/f.bin", ServedFile::new(body(3_000)));

    let download = source(true)
        .open(&task(&server.url("/f.bin")), &RemoteFile::default(), 5_000)
        .await
        .unwrap();

    assert_eq!(download.offset, 0);
    assert_eq!(download.total, Some(3_000));
    assert_eq!(read_all(download).await, body(3_000));
    let statuses: Vec<u16> = server.requests().iter().map(|request| request.status).collect();
    assert_eq!(statuses, vec![416, 200]);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let server = FileServer::start().await;
    server.add("/f", ServedFile::new(body(10)));
    let guarded = source(false);

    let literal = guarded.resolve(&task(&server.url("/f"))).await.unwrap_err();
    assert_eq!(literal.kind, SourceErrorKind::Permanent);
    assert!(
        literal
            .message
            .starts_with("refusing to download from 127.0.0.1 (127.0.0.1): it is a loopback address"),
        "{literal}"
    );
    assert!(
        literal.message.contains("allow_private_networks = true"),
        "{literal}"
    );

    // A name is checked after it is resolved.
    let named = format!("http://localhost:{}/f", server.address().port());
    let by_name = guarded.resolve(&task(&named)).await.unwrap_err();
    assert_eq!(by_name.kind, SourceErrorKind::Permanent);
    assert!(by_name.message.contains("it is a loopback address"), "{by_name}");

    let metadata = guarded
        .resolve(&task("http://169.254.169.254/latest/meta-data/"))
        .await
        .unwrap_err();
    assert!(metadata.message.contains("link-local"), "{metadata}");

    assert!(
        server.requests().is_empty(),
        "no refused request reached the server"
    );
    assert!(source(true).resolve(&task(&server.url("/f"))).await.is_ok());
}

#[tokio::test]
async fn links_that_are_not_http_fail_permanently() {
    for link in ["ftp://example.com/file", "not a url", "file:///etc/passwd"] {
        let error = source(true).resolve(&task(link)).await.unwrap_err();
        assert_eq!(error.kind, SourceErrorKind::Permanent, "{link}");
    }
}

#[tokio::test]
async fn a_206_to_a_plain_get_is_sized_by_its_content_range_and_the_rest_is_fetched_in_ranges() {
    // A GET without Range is answered `206 Content-Range: bytes 0-99999/300000`,
    // and every Range request with at most 100 000 bytes more.
    let server = FileServer::start().await;
    server.add(
        "/capped.bin",
        ServedFile::new(body(300_000))
            .with_etag("\"v1\"")
            .partial_even_without_range(100_000),
    );
    let source = source(true);
    let link = task(&server.url("/capped.bin"));

    let files = source.resolve(&link).await.unwrap();
    assert_eq!(files[0].size, Some(300_000), "the size is Content-Range's total");
    let download = source.open(&link, &files[0], 0).await.unwrap();

    assert_eq!((download.offset, download.total), (0, Some(300_000)));
    assert!(read_all(download).await == body(300_000), "the whole file");
    let requests: Vec<(Option<String>, Option<String>, u16)> = server
        .requests_for("/capped.bin")
        .into_iter()
        .map(|request| (request.range, request.if_range, request.status))
        .collect();
    let rest = |range: &str| (Some(range.to_owned()), Some("\"v1\"".to_owned()), 206);
    assert_eq!(
        requests[requests.len() - 3..],
        [(None, None, 206), rest("bytes=100000-"), rest("bytes=200000-")],
        "the open's requests: {requests:?}"
    );
}

#[tokio::test]
async fn a_206_to_a_plain_get_that_holds_the_whole_file_is_the_file() {
    let server = FileServer::start().await;
    server.add(
        "/whole.bin",
        ServedFile::new(body(5_000)).partial_even_without_range(5_000),
    );
    let source = source(true);
    let link = task(&server.url("/whole.bin"));

    let files = source.resolve(&link).await.unwrap();
    let download = source.open(&link, &files[0], 0).await.unwrap();

    assert_eq!(files[0].size, Some(5_000));
    assert_eq!(read_all(download).await, body(5_000));
    let statuses: Vec<u16> = server.requests().iter().map(|request| request.status).collect();
    assert_eq!(statuses, vec![206, 206], "one request for resolve, one for open");
}

#[tokio::test]
async fn a_file_replaced_between_two_of_its_parts_is_not_spliced() {
    let server = FileServer::start().await;
    // The first part is of v1; the file is v2 for every later request, and
    // the server answers the If-Range it no longer matches with a part from 0.
    server.add(
        "/capped.bin",
        ServedFile::new(body(300_000))
            .with_etag("\"v1\"")
            .partial_even_without_range(100_000)
            .replaced_after(
                1,
                ServedFile::new(body(300_000))
                    .with_etag("\"v2\"")
                    .partial_even_without_range(100_000),
            ),
    );
    let file = RemoteFile {
        size: Some(300_000),
        validator: Some("\"v1\"".into()),
        ..RemoteFile::default()
    };

    let download = source(true)
        .open(&task(&server.url("/capped.bin")), &file, 0)
        .await
        .unwrap();
    let chunks: Vec<Result<bytes::Bytes, _>> = download.stream.collect().await;

    let received: usize = chunks.iter().flatten().map(bytes::Bytes::len).sum();
    assert_eq!(received, 100_000, "only the first part's bytes");
    let error = chunks.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.kind, SourceErrorKind::Retryable, "{error}");
    assert!(error.message.contains("from byte 100000"), "{error}");
}

#[tokio::test]
async fn a_204_or_another_unexpected_success_status_is_an_error_not_an_empty_file() {
    let server = FileServer::start().await;
    for status in [201, 202, 203, 204, 205, 207] {
        server.add(&format!("/{status}"), ServedFile::status(status));
    }
    let source = source(true);

    for status in [201, 202, 203, 204, 205, 207] {
        let link = task(&server.url(&format!("/{status}")));
        let resolved = source.resolve(&link).await.unwrap_err();
        let opened = source.open(&link, &RemoteFile::default(), 0).await.unwrap_err();
        let resumed = source
            .open(&link, &RemoteFile::default(), 1_000)
            .await
            .unwrap_err();

        for error in [&resolved, &opened, &resumed] {
            assert!(
                error.message.contains(&format!("answered {status} ")),
                "{status}: {error}"
            );
        }
        let expected = if status == 202 {
            SourceErrorKind::Retryable
        } else {
            SourceErrorKind::Permanent
        };
        assert_eq!(resolved.kind, expected, "{status}: {resolved}");
    }
    let no_content = source.resolve(&task(&server.url("/204"))).await.unwrap_err();
    assert_eq!(
        no_content.message,
        format!(
            "http://{}/204 answered 204 No Content: it sent no file; check the link",
            server.address()
        )
    );
}

#[tokio::test]
async fn resolve_and_open_hands_over_the_response_of_its_one_get() {
    let server = FileServer::start().await;
    // A single-use link: a second request would be refused.
    server.add(
        "/once.bin",
        ServedFile::new(body(10_000))
            .with_etag("\"v1\"")
            .replaced_after(1, ServedFile::status(403)),
    );

    let resolved = source(true)
        .resolve_and_open(&task(&server.url("/once.bin")))
        .await
        .unwrap();

    assert_eq!(resolved.files.len(), 1);
    assert_eq!(resolved.files[0].size, Some(10_000));
    let download = resolved.opened.expect("resolving opened the file");
    assert_eq!(
        (download.offset, download.total, download.validator.as_deref()),
        (0, Some(10_000), Some("\"v1\""))
    );
    assert_eq!(read_all(download).await, body(10_000));
    assert_eq!(server.requests().len(), 1);
}
