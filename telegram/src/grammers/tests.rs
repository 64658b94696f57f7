//! Tests of [`GrammersApi`] without Telegram: its pure decisions, and the real grammers pool
//! against local TCP listeners that misbehave as a black-holed or dead data centre does
//! (accept and stay silent; a closed port), the way no other machine needs to be reached.

use super::*;

fn bot_settings() -> Settings {
    Settings {
        app_id: 12345,
        app_hash: savestream_shared::config::Secret::new("hash"),
        account: Account::Bot {
            token: savestream_shared::config::Secret::new("123:abc"),
        },
        proxy_url: None,
    }
}

#[test]
fn only_an_answer_without_the_channel_means_the_bot_is_not_in_it() {
    assert_eq!(
        bot_resolve_error(&InvocationError::Dropped(NO_MATCHING_PEER), "123"),
        TelegramError::NotMember { chat: "123".into() }
    );
    for reason in [
        "SenderPoolRunner was dropped during receive",
        "SenderPoolRunner was dropped at send",
        "response was non-retryable bad msg",
    ] {
        let error = bot_resolve_error(&InvocationError::Dropped(reason), "123");
        assert!(
            matches!(error, TelegramError::Disconnected(_)),
            "{reason}: {error:?}"
        );
        assert!(error.is_retryable(), "{reason}");
    }
}

// Building a pool and a client touches no network (the runner connects on the first
// request), so the cached connection can be checked without Telegram.
#[tokio::test]
async fn a_dropped_request_keeps_the_connection_and_its_sign_in() {
    let api = GrammersApi::from_settings(bot_settings());
    let settings = bot_settings();
    let connection = Arc::new(start(Arc::new(MemorySession::default()), &settings, None, true));
    *api.inner.connection.lock().await = Some(connection.clone());

    let error = api
        .call(&connection, Subject::File, async {
            Err::<(), _>(InvocationError::Dropped("response was non-retryable bad msg"))
        })
        .await
        .unwrap_err();

    assert!(error.is_retryable());
    let kept = api.inner.connection.lock().await.clone();
    assert!(
        kept.is_some_and(|kept| Arc::ptr_eq(&kept, &connection)),
        "a dropped request threw the client (and its session and sign-in) away"
    );
}

/// Limits short enough for tests; every wait below is on a local socket.
const SHORT: Limits = Limits {
    request: Duration::from_millis(300),
    dialog_scan: Duration::from_millis(300),
    probe: Duration::from_millis(300),
};

fn user_settings() -> Settings {
    Settings {
        account: Account::User {
            session: std::path::PathBuf::from("/nonexistent/usersession.db"),
        },
        ..bot_settings()
    }
}

/// Data centre `id` at `port` on this machine.
fn local_dc(id: i32, port: u16) -> DcOption {
    DcOption {
        id,
        ipv4: std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
        ipv6: std::net::SocketAddrV6::new(std::net::Ipv6Addr::LOCALHOST, port, 0, 0),
        auth_key: None,
    }
}

/// A port nothing listens on: a connection there is refused at once.
fn closed_port() -> u16 {
    // Bind and drop: the port was free a moment ago and nothing listens on it now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a local port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// A data centre black-holed after the TCP handshake: accepts connections, keeps them open and
/// never writes. Each accepted connection is reported on the receiver.
async fn silent_listener() -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let port = listener
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    (port, accepted_rx)
}

fn local_api(settings: Settings, dc_options: Vec<DcOption>) -> GrammersApi {
    GrammersApi::with_limits(settings, SHORT, dc_options)
}

/// Puts a connection on `api`'s data centres in place without signing in (which needs
/// Telegram): the pool connects on the first request, so nothing touches the network yet.
async fn install(api: &GrammersApi, is_bot: bool) -> Arc<Connection> {
    let session = Arc::new(MemorySession::default());
    seed(&*session, &api.inner.dc_options)
        .await
        .expect("a memory session takes any option");
    let connection = Arc::new(start(session, &api.inner.settings, None, is_bot));
    *api.inner.connection.lock().await = Some(connection.clone());
    connection
}

/// Polls `condition` until it holds, failing the test after 5 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_dialog_scan_given_up_on_is_aborted() {
    // Arrange: a user account whose home data centre accepts and never answers.
    let (port, _accepted) = silent_listener().await;
    let api = local_api(user_settings(), vec![local_dc(2, port)]);
    let connection = install(&api, false).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let channel = PeerId::channel(777).expect("a valid channel id");

    // Act
    let error = api
        .find_in_dialogs(&connection, channel, "777")
        .await
        .unwrap_err();

    // Assert: the call gave up, and so did its scan, which would otherwise page the dialogs
    // beside the next caller's scan.
    assert!(matches!(error, TelegramError::Disconnected(_)), "{error:?}");
    eventually("the scan's task ends", || {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    assert!(
        api.inner.dialog_scan.try_lock().is_ok(),
        "the one-scan lock is free once no scan runs"
    );
}

/// Part 0 of a document on data centre `dc`; the bytes do not matter, nothing answers.
fn some_location() -> FileLocation {
    FileLocation {
        kind: crate::api::FileKind::Document,
        id: 1,
        access_hash: 2,
        file_reference: vec![3],
    }
}

fn some_message() -> MessageRef {
    MessageRef {
        chat: crate::api::ChatKey {
            kind: crate::api::ChatKind::Channel,
            id: 777,
            access_hash: 4,
        },
        message_id: 5,
    }
}

#[tokio::test]
async fn a_data_centre_that_never_answers_a_connect_does_not_block_requests_to_the_others() {
    // Arrange: a file on data centre 4, which accepts connections and never answers; home (2)
    // refuses connections, so a request there fails at once whenever it is sent. A part is
    // asked for on 4: the pool's runner hangs in the key exchange with it.
    let (silent, mut accepted) = silent_listener().await;
    let api = local_api(
        bot_settings(),
        vec![local_dc(2, closed_port()), local_dc(4, silent)],
    );
    install(&api, true).await;
    let part = tokio::spawn({
        let api = api.clone();
        async move { api.get_part(&some_location(), 4, 0, 1 << 20).await }
    });
    accepted.recv().await.expect("the pool connects to data centre 4");

    // Act: a request to home waits for the stuck runner, in vain; then another.
    let first = api.refetch(&some_message()).await.unwrap_err();
    let started = std::time::Instant::now();
    let second = api.refetch(&some_message()).await.unwrap_err();

    // Assert: the first timed out and the stuck pool was dropped, failing the part at once
    // (retryably); the second went out on a new pool and failed as home's closed port makes
    // it, at once, instead of waiting for the runner again.
    assert!(first.to_string().contains("did not answer"), "{first}");
    let part = tokio::time::timeout(Duration::from_secs(5), part)
        .await
        .expect("the part waiting on the stuck pool fails once the pool is dropped")
        .expect("the part's task does not panic")
        .unwrap_err();
    assert!(part.is_retryable(), "{part:?}");
    assert!(
        !second.to_string().contains("did not answer"),
        "the second request waited for the stuck runner too: {second}"
    );
    assert!(matches!(second, TelegramError::Disconnected(_)), "{second:?}");
    assert!(started.elapsed() < SHORT.request, "took {:?}", started.elapsed());
}
