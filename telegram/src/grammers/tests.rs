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
    api.inner.connection.lock().await.connection = Some(connection.clone());

    let error = api
        .call(&connection, Subject::File, async {
            Err::<(), _>(InvocationError::Dropped("response was non-retryable bad msg"))
        })
        .await
        .unwrap_err();

    assert!(error.is_retryable());
    let kept = api.inner.connection.lock().await.connection.clone();
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
    connect_backoff: Duration::from_secs(1),
    connect_backoff_max: Duration::from_secs(4),
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

/// A listener on a free loopback port, and the port.
async fn local_listener() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let port = listener
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    (listener, port)
}

/// A data centre black-holed after the TCP handshake: accepts connections, keeps them open and
/// never writes. Each accepted connection is reported on the receiver.
async fn silent_listener() -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (listener, port) = local_listener().await;
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

/// A data centre that takes connections and closes them at once, before any answer. Each
/// accepted connection is reported on the receiver before it is closed, so a client that saw
/// the close has been counted.
async fn closing_listener() -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (listener, port) = local_listener().await;
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            drop(socket);
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
    api.inner.connection.lock().await.connection = Some(connection.clone());
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

#[test]
fn the_connect_back_off_doubles_up_to_its_maximum_and_a_flood_wait_waits_what_telegram_asked() {
    let refused = TelegramError::Disconnected("refused".into());
    let backoffs: Vec<u64> = (1..=8)
        .map(|failures| Limits::DEFAULT.connect_backoff(&refused, failures).as_secs())
        .collect();
    assert_eq!(backoffs, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(
        Limits::DEFAULT.connect_backoff(&refused, u32::MAX),
        Duration::from_secs(60)
    );
    let flood_wait = TelegramError::FloodWait {
        seconds: 300,
        premium: false,
    };
    assert_eq!(
        Limits::DEFAULT.connect_backoff(&flood_wait, 1),
        Duration::from_secs(300)
    );
}

#[tokio::test]
async fn a_failed_connect_is_not_repeated_until_its_back_off_runs_out() {
    // Arrange: a bot whose home data centre takes connections and closes them at once.
    let (port, mut accepted) = closing_listener().await;
    let api = local_api(bot_settings(), vec![local_dc(2, port)]);

    // Act: two tasks ask for the connection at once.
    let (first, second) = tokio::join!(api.connect(), api.connect());

    // Assert: one attempt, whose error both got, retryably.
    let first = first.unwrap_err();
    assert!(matches!(first, TelegramError::Disconnected(_)), "{first:?}");
    assert_eq!(second.unwrap_err(), first);
    accepted.recv().await.expect("the first attempt connects");
    assert!(
        accepted.try_recv().is_err(),
        "the second caller connected (and would have signed in) again"
    );

    // Act: later, but within the back-off, a task asks again. The clock is moved rather than
    // waited for; it runs on again for the connects, which need real sockets.
    tokio::time::pause();
    tokio::time::advance(SHORT.connect_backoff - Duration::from_millis(1)).await;
    tokio::time::resume();
    let within = api.connect().await.unwrap_err();

    // Assert: the same error, without a new attempt.
    assert_eq!(within, first);
    assert!(
        accepted.try_recv().is_err(),
        "connected again within the back-off"
    );

    // Act: the back-off runs out, and a task asks again.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::time::resume();
    let after = api.connect().await.unwrap_err();

    // Assert: a new attempt was made, and failed again: the next back-off is twice as long.
    assert!(matches!(after, TelegramError::Disconnected(_)), "{after:?}");
    accepted
        .recv()
        .await
        .expect("the attempt after the back-off connects");
    let slot = api.inner.connection.lock().await;
    let failed = slot.failed.as_ref().expect("the second failure is remembered");
    assert_eq!(failed.failures_in_a_row, 2);
    let left = failed.retry_at.saturating_duration_since(Instant::now());
    assert!(
        left > SHORT.connect_backoff && left <= 2 * SHORT.connect_backoff,
        "{left:?}"
    );
}

#[tokio::test]
async fn a_sign_in_flood_wait_is_waited_out_without_connecting() {
    // Arrange: the last sign-in got FLOOD_WAIT_120, 100 s ago.
    let (port, mut accepted) = closing_listener().await;
    let api = local_api(bot_settings(), vec![local_dc(2, port)]);
    api.inner.connection.lock().await.failed = Some(FailedConnect {
        error: TelegramError::FloodWait {
            seconds: 120,
            premium: false,
        },
        retry_at: Instant::now() + Duration::from_secs(20),
        failures_in_a_row: 1,
    });

    // Act
    let error = api.connect().await.unwrap_err();

    // Assert: the 20 s left, as a flood wait (the worker waits it out without using a retry),
    // and no connection was made.
    assert_eq!(
        error,
        TelegramError::FloodWait {
            seconds: 20,
            premium: false
        }
    );
    assert!(accepted.try_recv().is_err(), "connected during the flood wait");
}
