//! The real client with no way to Telegram: it fails fast, retryably, and says what to check.
//! A SOCKS5 proxy on a local port nobody listens on makes "no route" deterministic here and
//! exercises the proxy plumbing on the way.

use std::time::{Duration, Instant};

use savestream_shared::config::{ProxyConfig, Secret, TelegramConfig};
use savestream_telegram::{GrammersApi, TelegramApi, TelegramError};

use crate::support::link;

fn closed_local_port() -> u16 {
    // Bind and drop: the port was free a moment ago and nothing listens on it now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn grammers_without_a_route_fails_fast_with_what_to_check() {
    let config = TelegramConfig {
        app_id: Some(12345),
        app_hash: Secret::new("0123456789abcdef"),
        token: Secret::new("123456:not-a-real-token"),
        userbot: Default::default(),
        proxy: ProxyConfig {
            enable: true,
            url: Some(
                format!("socks5://127.0.0.1:{}", closed_local_port())
                    .parse()
                    .unwrap(),
            ),
        },
    };
    let api = GrammersApi::new(&config).unwrap();

    let started = Instant::now();
    let error = api.resolve(&link("https://t.me/durov/1")).await.unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, TelegramError::Disconnected(_)), "{error:?}");
    assert!(error.is_retryable());
    let text = error.to_string();
    assert!(text.contains("could not reach Telegram's servers"), "{text}");
    assert!(text.contains("[telegram.proxy]"), "{text}");
    assert!(!text.contains("not-a-real-token"), "{text}");
}

#[tokio::test]
async fn a_user_session_that_does_not_exist_asks_for_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let userbot = savestream_shared::config::UserbotConfig {
        enable: true,
        session: dir.path().join("usersession.db"),
    };
    let config = TelegramConfig {
        app_id: Some(12345),
        app_hash: Secret::new("0123456789abcdef"),
        token: Secret::default(),
        userbot,
        proxy: ProxyConfig::default(),
    };
    let error = GrammersApi::new(&config).unwrap().connect().await.unwrap_err();
    assert!(matches!(&error, TelegramError::Unauthorized(text) if text.contains("savestream-worker login")));
}

fn unreachable_user_config(session: std::path::PathBuf) -> TelegramConfig {
    let userbot = savestream_shared::config::UserbotConfig {
        enable: true,
        session,
    };
    TelegramConfig {
        app_id: Some(12345),
        app_hash: Secret::new("0123456789abcdef"),
        token: Secret::default(),
        userbot,
        proxy: ProxyConfig {
            enable: true,
            url: Some(
                format!("socks5://127.0.0.1:{}", closed_local_port())
                    .parse()
                    .unwrap(),
            ),
        },
    }
}

#[tokio::test]
async fn a_user_session_is_copied_opened_and_left_untouched_when_telegram_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("usersession.db");
    // A real (empty, logged-out) grammers session file, as a fresh login would start from.
    drop(
        grammers_session::storages::SqliteSession::open(&session)
            .await
            .unwrap(),
    );
    let before = std::fs::read(&session).unwrap();

    let api = GrammersApi::new(&unreachable_user_config(session.clone())).unwrap();
    let error = api.connect().await.unwrap_err();

    assert!(matches!(error, TelegramError::Disconnected(_)), "{error:?}");
    assert_eq!(
        std::fs::read(&session).unwrap(),
        before,
        "workers never write the original"
    );
}

struct NoAnswers;

impl savestream_telegram::LoginPrompt for NoAnswers {
    fn phone(&mut self) -> std::io::Result<String> {
        Ok("+15550100".into())
    }
    fn code(&mut self) -> std::io::Result<String> {
        panic!("no code is asked for when Telegram is unreachable")
    }
    fn password(&mut self, _hint: Option<&str>) -> std::io::Result<String> {
        panic!("no password is asked for when Telegram is unreachable")
    }
    fn tell(&mut self, _message: &str) {}
}

#[tokio::test]
async fn a_failed_login_leaves_no_session_behind() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("data").join("usersession.db");
    let config = unreachable_user_config(session.clone());

    let error = savestream_telegram::login(&config, &mut NoAnswers)
        .await
        .unwrap_err();

    assert!(error.to_string().contains("Telegram"), "{error}");
    assert!(!session.exists());
    let leftovers: Vec<_> = std::fs::read_dir(session.parent().unwrap()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
