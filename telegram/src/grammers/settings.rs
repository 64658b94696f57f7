//! What the grammers client needs from `[telegram]` in config.toml, validated without touching
//! the network, and the per-process copy of the user session file.
//!
//! ## The session-sharing rule: copy on start
//! A grammers session file (SQLite) must be opened by one client at a time: grammers writes
//! auth keys, data-centre options, the peer cache and the update state into it, and two
//! processes doing so at once corrupt each other's state. The worker processes of one host
//! still share one login: each copies the configured session file into a private temporary
//! directory when it first connects, and uses only the copy. The original is never opened by
//! workers, so any number of them can start from it; only `savestream-worker login` writes it
//! (atomically, by rename). Each process then has its own MTProto sessions on the same
//! authorization key, from the same address, which Telegram allows. What a copy learns (peers
//! found in the dialogs, auth keys for other data centres) is the process's own and is lost on
//! exit; the next start learns it again.
//!
//! Hosts do not share a session file: Telegram revokes an auth key used from two IP addresses
//! at once (406 `AUTH_KEY_DUPLICATED`, see [`crate::rpc`]), for every process using it. Each
//! worker host runs `savestream-worker login` itself (its own authorization of the same or
//! another account), or uses a bot token.
//!
//! Bots need no file: a bot signs in with its token into an in-memory session each time a
//! worker process starts.

use std::path::{Path, PathBuf};

use savestream_shared::config::{Secret, TelegramConfig};

use crate::error::TelegramError;

/// The account the client signs in as.
#[derive(Debug, Clone)]
pub enum Account {
    /// `[telegram] token`: signs in afresh in every process.
    Bot { token: Secret },
    /// `[telegram.userbot]`: the session file `savestream-worker login` wrote.
    User { session: PathBuf },
}

/// `[telegram]`, checked. `Debug` prints no secret (the token and hash are [`Secret`]s, and the
/// proxy URL, which may hold a password, is left out).
#[derive(Clone)]
pub struct Settings {
    pub app_id: i32,
    pub app_hash: Secret,
    pub account: Account,
    /// A `socks5://` URL for grammers, when `[telegram.proxy]` is enabled.
    pub proxy_url: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("app_id", &self.app_id)
            .field("account", &self.account)
            .field("proxy", &self.proxy_url.is_some())
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Checks `[telegram]` for what the Telegram source needs: an app id and hash, and either a
    /// user session (`[telegram.userbot] enable`) or a bot token. A user session wins when both
    /// are set, as in SaveAny-Bot, because it can read more chats.
    pub fn from_config(config: &TelegramConfig) -> Result<Settings, TelegramError> {
        let app_id = config.app_id.ok_or_else(|| {
            TelegramError::Config(
                "set `[telegram] app_id` and `app_hash` (from https://my.telegram.org)".to_owned(),
            )
        })?;
        if config.app_hash.is_empty() {
            return Err(TelegramError::Config(
                "set `[telegram] app_hash` (from https://my.telegram.org)".to_owned(),
            ));
        }
        let account = if config.userbot.enable {
            Account::User {
                session: config.userbot.session.clone(),
            }
        } else if !config.token.is_empty() {
            Account::Bot {
                token: config.token.clone(),
            }
        } else {
            return Err(TelegramError::Config(
                "set `[telegram] token` (a bot token from @BotFather) or enable `[telegram.userbot]` \
                 and run `savestream-worker login`"
                    .to_owned(),
            ));
        };
        let proxy_url = if config.proxy.enable {
            match &config.proxy.url {
                Some(url) => Some(grammers_proxy_url(url.as_str())?),
                None => {
                    return Err(TelegramError::Config(
                        "`[telegram.proxy] url` is missing".to_owned(),
                    ))
                }
            }
        } else {
            None
        };
        Ok(Settings {
            app_id,
            app_hash: config.app_hash.clone(),
            account,
            proxy_url,
        })
    }
}

/// The proxy URL in the form grammers accepts. grammers (feature `proxy`) speaks SOCKS5 only,
/// with optional `user:password@`, and needs an explicit port. `socks5h://` is accepted as
/// `socks5://`: Telegram's data centres are addressed by IP, so there is no name for the proxy
/// to resolve. HTTP proxies are refused here rather than failing on every connection later.
pub fn grammers_proxy_url(url: &str) -> Result<String, TelegramError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(TelegramError::Config(
            "`[telegram.proxy] url` must look like socks5://host:port".to_owned(),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "socks5" | "socks5h" => {}
        other => {
            return Err(TelegramError::Config(format!(
                "`[telegram.proxy] url` uses {other}://, but the Telegram client (grammers) connects \
                 through SOCKS5 proxies only: use socks5://host:port"
            )));
        }
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let has_port = host_port.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    if !has_port {
        return Err(TelegramError::Config(
            "`[telegram.proxy] url` needs a port: socks5://host:port".to_owned(),
        ));
    }
    Ok(format!("socks5://{rest}"))
}

/// A private copy of the user session file, removed when dropped (see the module docs).
pub struct SessionCopy {
    // Held for its Drop, which deletes the directory and the copy in it.
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SessionCopy {
    /// Copies `original` (and its SQLite write-ahead log, if one is lying beside it) into a new
    /// private temporary directory.
    pub async fn create(original: &Path) -> Result<SessionCopy, TelegramError> {
        if !tokio::fs::try_exists(original).await.unwrap_or(false) {
            return Err(TelegramError::Unauthorized(format!(
                "there is no user session at {}: run `savestream-worker login` to create it, or set \
                 `[telegram.userbot] session` to where it is",
                original.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("savestream-session-")
            .tempdir()
            .map_err(|error| TelegramError::Session(format!("cannot create a private directory: {error}")))?;
        // The session is a credential: the directory holding the copy is this user's only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(
                |error| {
                    TelegramError::Session(format!("cannot make {} private: {error}", dir.path().display()))
                },
            )?;
        }
        let path = dir.path().join("session.db");
        tokio::fs::copy(original, &path).await.map_err(|error| {
            TelegramError::Session(format!("cannot copy {}: {error}", original.display()))
        })?;
        let wal = with_suffix(original, "-wal");
        if tokio::fs::try_exists(&wal).await.unwrap_or(false) {
            tokio::fs::copy(&wal, with_suffix(&path, "-wal"))
                .await
                .map_err(|error| TelegramError::Session(format!("cannot copy {}: {error}", wal.display())))?;
        }
        Ok(SessionCopy { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `path` with `suffix` appended to its file name, as SQLite names its side files.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use savestream_shared::config::{ProxyConfig, UserbotConfig};

    fn config() -> TelegramConfig {
        TelegramConfig {
            app_id: Some(12345),
            app_hash: Secret::new("hash"),
            token: Secret::new("123:abc"),
            userbot: UserbotConfig {
                enable: false,
                session: PathBuf::from("data/usersession.db"),
            },
            proxy: ProxyConfig::default(),
        }
    }

    #[test]
    fn a_bot_token_or_a_user_session_is_required_and_the_user_session_wins() {
        assert!(matches!(
            Settings::from_config(&config()).unwrap().account,
            Account::Bot { .. }
        ));
        let mut user = config();
        user.userbot.enable = true;
        assert!(matches!(
            Settings::from_config(&user).unwrap().account,
            Account::User { .. }
        ));
        let mut neither = config();
        neither.token = Secret::default();
        let error = Settings::from_config(&neither).unwrap_err();
        assert!(error.to_string().contains("@BotFather"), "{error}");
        let mut no_app = config();
        no_app.app_id = None;
        assert!(Settings::from_config(&no_app)
            .unwrap_err()
            .to_string()
            .contains("app_id"));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let mut with_proxy = config();
        with_proxy.proxy.enable = true;
        with_proxy.proxy.url = Some("socks5://user:pw-secret@127.0.0.1:1080".parse().unwrap());
        let printed = format!("{:?}", Settings::from_config(&with_proxy).unwrap());
        for secret in ["123:abc", "hash", "pw-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn only_socks5_proxies_with_a_port_are_accepted() {
        assert_eq!(
            grammers_proxy_url("socks5://127.0.0.1:1080").unwrap(),
            "socks5://127.0.0.1:1080"
        );
        assert_eq!(
            grammers_proxy_url("socks5h://u:p@proxy.example:9050/").unwrap(),
            "socks5://u:p@proxy.example:9050/"
        );
        assert!(grammers_proxy_url("http://127.0.0.1:8080")
            .unwrap_err()
            .to_string()
            .contains("SOCKS5"));
        assert!(grammers_proxy_url("socks5://127.0.0.1")
            .unwrap_err()
            .to_string()
            .contains("port"));
    }

    #[tokio::test]
    async fn the_session_is_copied_privately_and_the_copy_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("usersession.db");
        std::fs::write(&original, b"sqlite bytes").unwrap();
        std::fs::write(with_suffix(&original, "-wal"), b"wal bytes").unwrap();

        let copy = SessionCopy::create(&original).await.unwrap();
        assert_ne!(copy.path(), original);
        assert_eq!(std::fs::read(copy.path()).unwrap(), b"sqlite bytes");
        assert_eq!(
            std::fs::read(with_suffix(copy.path(), "-wal")).unwrap(),
            b"wal bytes"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let parent = copy.path().parent().unwrap();
            let mode = std::fs::metadata(parent).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the private directory is open to others: {mode:o}"
            );
        }
        let copied = copy.path().to_owned();
        drop(copy);
        assert!(!copied.exists());
        assert!(original.exists(), "the original is left alone");
    }

    #[tokio::test]
    async fn a_missing_session_tells_the_user_to_log_in() {
        let error = SessionCopy::create(Path::new("/nonexistent/usersession.db"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&error, TelegramError::Unauthorized(text) if text.contains("savestream-worker login"))
        );
    }
}
