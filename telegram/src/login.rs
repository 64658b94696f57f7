//! Interactive user login: [`login`] asks for the phone number, the code Telegram sends and the
//! 2FA password (through a [`LoginPrompt`], so the worker's `login` subcommand reads the
//! terminal and tests script the answers), and writes the user session file.
//!
//! The dialogue itself ([`run_flow`]) is written against a small [`Authenticator`] trait and
//! tested with a scripted one; [`login`] plugs grammers in. The session is written to a
//! temporary file beside the configured path and renamed into place only after a successful
//! login, so workers copying the file at start never see a half-written session (see
//! [`crate::grammers::settings`] for the session-sharing rule). The session holds the account's
//! auth key from the first exchange with Telegram, long before the user types the code, so the
//! temporary file is created readable by its owner only (0600, whatever the umask) before SQLite
//! opens it, and a login whose session cannot be kept private fails.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grammers_client::client::{LoginToken, PasswordToken};
use grammers_client::{Client, SignInError};
use grammers_session::storages::SqliteSession;
use savestream_shared::config::{Secret, TelegramConfig};

use crate::error::TelegramError;
use crate::grammers::settings::{grammers_proxy_url, with_suffix};
use crate::rpc::{self, Subject};

/// Wrong codes or passwords accepted before giving up (Telegram itself locks out after a few).
pub const MAX_ATTEMPTS: u32 = 3;

/// How long one login request may take: long enough for a slow network, short enough that a
/// machine with no route to Telegram says so.
const LOGIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where [`login`] gets its answers and says what is happening.
pub trait LoginPrompt: Send {
    /// The account's phone number, in international form (`+15551234567`).
    fn phone(&mut self) -> io::Result<String>;
    /// The login code Telegram sent to the account's other devices (or by SMS).
    fn code(&mut self) -> io::Result<String>;
    /// The account's 2FA password; `hint` is the hint the user set, if any. Must not echo.
    fn password(&mut self, hint: Option<&str>) -> io::Result<String>;
    /// A line for the user: progress, or why an answer was refused.
    fn tell(&mut self, message: &str);
}

/// Why a login did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("could not read the answer: {0}")]
    Prompt(#[from] io::Error),
    #[error("no phone number was given")]
    NoPhone,
    #[error("the login code was wrong {0} times: run the login again to get a new code")]
    InvalidCode(u32),
    #[error("the 2FA password was wrong {0} times: run the login again")]
    InvalidPassword(u32),
    #[error("this phone number has no Telegram account: sign up in an official Telegram app first")]
    SignUpRequired,
    #[error(transparent)]
    Telegram(#[from] TelegramError),
}

/// What signing in with a code gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    Done,
    InvalidCode,
    PasswordNeeded { hint: Option<String> },
    SignUpRequired,
}

/// What checking the 2FA password gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Done,
    Invalid,
}

/// The three steps of a user login; grammers in production, a script in tests.
#[allow(async_fn_in_trait)]
pub trait Authenticator {
    async fn request_code(&mut self, phone: &str) -> Result<(), TelegramError>;
    async fn sign_in(&mut self, code: &str) -> Result<SignIn, TelegramError>;
    async fn check_password(&mut self, password: &str) -> Result<PasswordCheck, TelegramError>;
}

/// The login dialogue: phone, code (up to [`MAX_ATTEMPTS`] tries), then the 2FA password when
/// the account has one (up to [`MAX_ATTEMPTS`] tries).
pub async fn run_flow<A: Authenticator>(
    auth: &mut A,
    prompt: &mut dyn LoginPrompt,
) -> Result<(), LoginError> {
    let phone: String = prompt.phone()?.chars().filter(|c| !c.is_whitespace()).collect();
    if phone.is_empty() {
        return Err(LoginError::NoPhone);
    }
    auth.request_code(&phone).await?;
    prompt.tell("Telegram sent a login code to the account's other devices (or by SMS)");

    let mut code_attempts = 0;
    let hint = loop {
        code_attempts += 1;
        let code = prompt.code()?;
        match auth.sign_in(code.trim()).await? {
            SignIn::Done => return Ok(()),
            SignIn::SignUpRequired => return Err(LoginError::SignUpRequired),
            SignIn::PasswordNeeded { hint } => break hint,
            SignIn::InvalidCode if code_attempts >= MAX_ATTEMPTS => {
                return Err(LoginError::InvalidCode(code_attempts));
            }
            SignIn::InvalidCode => prompt.tell("that code is not valid (or expired): try again"),
        }
    };

    prompt.tell("the account has a 2FA password");
    let mut password_attempts = 0;
    loop {
        password_attempts += 1;
        let password = prompt.password(hint.as_deref())?;
        match auth.check_password(&password).await? {
            PasswordCheck::Done => return Ok(()),
            PasswordCheck::Invalid if password_attempts >= MAX_ATTEMPTS => {
                return Err(LoginError::InvalidPassword(password_attempts));
            }
            PasswordCheck::Invalid => prompt.tell("that password is not valid: try again"),
        }
    }
}

/// Logs a user account in and writes its session to `[telegram.userbot] session`; returns that
/// path. Needs `[telegram] app_id` and `app_hash`; a `[telegram.proxy]` is used when enabled.
/// The bot token is not involved: bots need no login.
pub async fn login(config: &TelegramConfig, prompt: &mut dyn LoginPrompt) -> Result<PathBuf, LoginError> {
    let app_id = config.app_id.ok_or_else(|| {
        TelegramError::Config(
            "set `[telegram] app_id` and `app_hash` (from https://my.telegram.org)".to_owned(),
        )
    })?;
    if config.app_hash.is_empty() {
        return Err(TelegramError::Config(
            "set `[telegram] app_hash` (from https://my.telegram.org)".to_owned(),
        )
        .into());
    }
    let proxy_url = match (&config.proxy.enable, &config.proxy.url) {
        (true, Some(url)) => Some(grammers_proxy_url(url.as_str())?),
        _ => None,
    };
    let target = config.userbot.session.clone();
    if !config.userbot.enable {
        prompt.tell("note: `[telegram.userbot] enable` is false, so workers will not use this session until it is true");
    }
    if let Some(parent) = target.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(|error| {
            TelegramError::Session(format!("cannot create {}: {error}", parent.display()))
        })?;
    }
    let app_hash = config.app_hash.clone();
    login_to_file(
        &target,
        prompt,
        async move |path: &Path, prompt: &mut dyn LoginPrompt| {
            login_into(path, app_id, app_hash, proxy_url, prompt).await
        },
    )
    .await?;
    prompt.tell(&logged_in_message(&target));
    Ok(target)
}

/// What the user is told after a login: where the session is, and that it serves this host
/// only (see [`crate::grammers::settings`]).
fn logged_in_message(target: &Path) -> String {
    format!(
        "logged in; the user session is at {}. Every worker process on this host copies it when \
         it starts, so one login serves them all. Do not copy the file to another host: Telegram \
         revokes a session used from two IP addresses at once (AUTH_KEY_DUPLICATED), for every \
         worker. Run `savestream-worker login` on each worker host instead, or use a bot token \
         (`[telegram] token`)",
        target.display()
    )
}

/// Runs `log_in` on a private temporary session file beside `target` and renames it to
/// `target` once the login succeeded; removes the temporary file (and SQLite's side files)
/// when it failed. `log_in` opens the session at the path it is given and runs the dialogue.
async fn login_to_file<L>(target: &Path, prompt: &mut dyn LoginPrompt, log_in: L) -> Result<(), LoginError>
where
    L: AsyncFnOnce(&Path, &mut dyn LoginPrompt) -> Result<(), LoginError>,
{
    let temporary = temporary_path(target);
    remove_session_files(&temporary).await;
    let outcome = async {
        create_private_file(&temporary).await?;
        log_in(&temporary, prompt).await?;
        // The file was created 0600 and SQLite gives its journals the database's mode; this
        // catches a file system that ignored the mode, before the session is put in place.
        restrict_to_owner(&temporary).await?;
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        remove_session_files(&temporary).await;
        return Err(error);
    }
    tokio::fs::rename(&temporary, target).await.map_err(|error| {
        TelegramError::Session(format!(
            "cannot move the new session to {}: {error}",
            target.display()
        ))
    })?;
    remove_session_files(&temporary).await;
    Ok(())
}

/// Creates `path`, empty and readable and writable by its owner only, so that SQLite opens a
/// file no one else could ever read (an empty file is an empty database to SQLite). Fails when
/// the file exists: it was just removed, so something else is racing for the name.
async fn create_private_file(path: &Path) -> Result<(), TelegramError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await.map(drop).map_err(|error| {
        TelegramError::Session(format!(
            "cannot create the new session file {}: {error}: check that the directory is writable",
            path.display()
        ))
    })
}

async fn login_into(
    path: &Path,
    app_id: i32,
    app_hash: Secret,
    proxy_url: Option<String>,
    prompt: &mut dyn LoginPrompt,
) -> Result<(), LoginError> {
    let session = SqliteSession::open(path)
        .await
        .map_err(|error| TelegramError::Session(format!("cannot create {}: {error}", path.display())))?;
    let (client, handle, runner) = crate::grammers::start_login_pool(session, app_id, proxy_url);
    let mut auth = GrammersAuthenticator {
        client,
        app_hash,
        login_token: None,
        password_token: None,
    };
    let outcome = run_flow(&mut auth, prompt).await;
    // Stop the pool and wait for it, so the session file is closed before it is renamed.
    handle.quit();
    drop(auth);
    if runner.await.is_err() {
        tracing::warn!("the Telegram connection pool ended abnormally after login");
    }
    outcome
}

/// Telegram's login steps through grammers.
struct GrammersAuthenticator {
    client: Client,
    app_hash: Secret,
    login_token: Option<LoginToken>,
    password_token: Option<PasswordToken>,
}

async fn timed<T>(request: impl std::future::Future<Output = T>) -> Result<T, TelegramError> {
    tokio::time::timeout(LOGIN_REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| {
            TelegramError::Disconnected(format!(
                "Telegram did not answer within {} s: check that this machine can reach Telegram, or set \
             `[telegram.proxy]`",
                LOGIN_REQUEST_TIMEOUT.as_secs()
            ))
        })
}

impl Authenticator for GrammersAuthenticator {
    async fn request_code(&mut self, phone: &str) -> Result<(), TelegramError> {
        let token = timed(self.client.request_login_code(phone, self.app_hash.expose()))
            .await?
            .map_err(|error| rpc::from_invocation(&error, Subject::Login))?;
        self.login_token = Some(token);
        Ok(())
    }

    async fn sign_in(&mut self, code: &str) -> Result<SignIn, TelegramError> {
        let Some(token) = self.login_token.as_ref() else {
            return Err(TelegramError::Protocol(
                "sign-in before a code was requested".to_owned(),
            ));
        };
        match timed(self.client.sign_in(token, code)).await? {
            Ok(_user) => Ok(SignIn::Done),
            Err(SignInError::InvalidCode) => Ok(SignIn::InvalidCode),
            Err(SignInError::SignUpRequired) => Ok(SignIn::SignUpRequired),
            Err(SignInError::PasswordRequired(password_token)) => {
                let hint = password_token.hint().map(str::to_owned);
                self.password_token = Some(password_token);
                Ok(SignIn::PasswordNeeded { hint })
            }
            Err(SignInError::InvalidPassword(_)) => Err(TelegramError::Protocol(
                "Telegram refused a password before one was sent".to_owned(),
            )),
            Err(SignInError::Other(error)) => Err(rpc::from_invocation(&error, Subject::Login)),
        }
    }

    async fn check_password(&mut self, password: &str) -> Result<PasswordCheck, TelegramError> {
        let Some(token) = self.password_token.take() else {
            return Err(TelegramError::Protocol(
                "password check before Telegram asked for one".to_owned(),
            ));
        };
        match timed(self.client.check_password(token, password)).await? {
            Ok(_user) => Ok(PasswordCheck::Done),
            Err(SignInError::InvalidPassword(token)) => {
                self.password_token = Some(token);
                Ok(PasswordCheck::Invalid)
            }
            Err(SignInError::Other(error)) => Err(rpc::from_invocation(&error, Subject::Login)),
            Err(other) => Err(TelegramError::Protocol(format!(
                "unexpected answer to the password: {other}"
            ))),
        }
    }
}

fn temporary_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "usersession.db".to_owned());
    target.with_file_name(format!(".{name}.login-{}", std::process::id()))
}

/// Removes a SQLite database and its side files, ignoring those that do not exist.
async fn remove_session_files(path: &Path) {
    for candidate in [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
        with_suffix(path, "-journal"),
    ] {
        let _ = tokio::fs::remove_file(candidate).await;
    }
}

/// The session is a credential (whoever reads it is logged in as the account): on Unix only
/// its owner may read it. Fails when the mode cannot be set or does not stick (a file system
/// without Unix permissions), rather than leave the account's key readable by others.
async fn restrict_to_owner(path: &Path) -> Result<(), TelegramError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let refuse = |why: String| {
            TelegramError::Session(format!(
                "cannot make the session {} readable by its owner only ({why}); it holds the account's \
                 login key, so it is not kept: put `[telegram.userbot] session` on a file system with \
                 Unix permissions and log in again",
                path.display()
            ))
        };
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|error| refuse(error.to_string()))?;
        let mode = tokio::fs::metadata(path)
            .await
            .map_err(|error| refuse(error.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(refuse(format!("its mode is still {:o}", mode & 0o777)));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Answers from a script and records what it was told.
    #[derive(Default)]
    struct ScriptedPrompt {
        phone: String,
        codes: VecDeque<String>,
        passwords: VecDeque<String>,
        hints: Vec<Option<String>>,
        told: Vec<String>,
    }

    impl LoginPrompt for ScriptedPrompt {
        fn phone(&mut self) -> io::Result<String> {
            Ok(self.phone.clone())
        }
        fn code(&mut self) -> io::Result<String> {
            self.codes
                .pop_front()
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no more codes"))
        }
        fn password(&mut self, hint: Option<&str>) -> io::Result<String> {
            self.hints.push(hint.map(str::to_owned));
            self.passwords
                .pop_front()
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no more passwords"))
        }
        fn tell(&mut self, message: &str) {
            self.told.push(message.to_owned());
        }
    }

    /// Telegram's side: the right code and password, and whether a password is set.
    struct ScriptedTelegram {
        code: &'static str,
        password: Option<&'static str>,
        requested_for: Option<String>,
        registered: bool,
    }

    impl Authenticator for ScriptedTelegram {
        async fn request_code(&mut self, phone: &str) -> Result<(), TelegramError> {
            self.requested_for = Some(phone.to_owned());
            Ok(())
        }
        async fn sign_in(&mut self, code: &str) -> Result<SignIn, TelegramError> {
            Ok(if !self.registered {
                SignIn::SignUpRequired
            } else if code != self.code {
                SignIn::InvalidCode
            } else if self.password.is_some() {
                SignIn::PasswordNeeded {
                    hint: Some("pet".into()),
                }
            } else {
                SignIn::Done
            })
        }
        async fn check_password(&mut self, password: &str) -> Result<PasswordCheck, TelegramError> {
            Ok(if Some(password) == self.password {
                PasswordCheck::Done
            } else {
                PasswordCheck::Invalid
            })
        }
    }

    fn telegram(password: Option<&'static str>) -> ScriptedTelegram {
        ScriptedTelegram {
            code: "12345",
            password,
            requested_for: None,
            registered: true,
        }
    }

    fn prompt(codes: &[&str], passwords: &[&str]) -> ScriptedPrompt {
        ScriptedPrompt {
            phone: "+1 555 0100".into(),
            codes: codes.iter().map(|code| code.to_string()).collect(),
            passwords: passwords.iter().map(|password| password.to_string()).collect(),
            ..ScriptedPrompt::default()
        }
    }

    #[tokio::test]
    async fn login_with_the_right_code_succeeds_and_strips_spaces_from_the_phone() {
        let mut auth = telegram(None);
        let mut answers = prompt(&[" 12345 "], &[]);
        run_flow(&mut auth, &mut answers).await.unwrap();
        assert_eq!(auth.requested_for.as_deref(), Some("+15550100"));
    }

    #[tokio::test]
    async fn a_wrong_code_is_asked_again_then_given_up_on() {
        let mut answers = prompt(&["1", "12345"], &[]);
        run_flow(&mut telegram(None), &mut answers).await.unwrap();
        assert!(answers.told.iter().any(|line| line.contains("not valid")));

        let mut wrong = prompt(&["1", "2", "3", "12345"], &[]);
        let error = run_flow(&mut telegram(None), &mut wrong).await.unwrap_err();
        assert!(matches!(error, LoginError::InvalidCode(3)), "{error}");
    }

    #[tokio::test]
    async fn two_factor_accounts_are_asked_for_the_password_with_its_hint() {
        let mut answers = prompt(&["12345"], &["wrong", "hunter2"]);
        run_flow(&mut telegram(Some("hunter2")), &mut answers)
            .await
            .unwrap();
        assert_eq!(
            answers.hints,
            vec![Some("pet".to_owned()), Some("pet".to_owned())]
        );

        let mut wrong = prompt(&["12345"], &["a", "b", "c"]);
        let error = run_flow(&mut telegram(Some("hunter2")), &mut wrong)
            .await
            .unwrap_err();
        assert!(matches!(error, LoginError::InvalidPassword(3)), "{error}");
    }

    #[tokio::test]
    async fn numbers_without_an_account_and_empty_answers_are_refused() {
        let mut unregistered = telegram(None);
        unregistered.registered = false;
        let error = run_flow(&mut unregistered, &mut prompt(&["12345"], &[]))
            .await
            .unwrap_err();
        assert!(matches!(error, LoginError::SignUpRequired));

        let mut no_phone = prompt(&[], &[]);
        no_phone.phone = "  ".into();
        let error = run_flow(&mut telegram(None), &mut no_phone).await.unwrap_err();
        assert!(matches!(error, LoginError::NoPhone));
    }

    #[tokio::test]
    async fn login_needs_the_app_id() {
        let config = TelegramConfig {
            app_id: None,
            app_hash: Secret::default(),
            token: Secret::default(),
            userbot: Default::default(),
            proxy: Default::default(),
        };
        let error = login(&config, &mut prompt(&[], &[])).await.unwrap_err();
        assert!(error.to_string().contains("app_id"), "{error}");
    }

    /// The modes of the temporary session file and its SQLite side files, as they are now.
    #[cfg(unix)]
    fn session_modes(dir: &Path) -> Vec<(String, u32)> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                (entry.file_name().to_string_lossy().into_owned(), mode)
            })
            .collect()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_session_is_readable_by_its_owner_only_while_and_after_the_login_runs() {
        // Arrange: the usual umask, under which a plain create makes a file 0644.
        // SAFETY: umask only swaps the process's file-creation mask; 022 is the common default
        // and takes no permission from files other tests create.
        unsafe { libc::umask(0o022) };
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("usersession.db");
        let mut answers = prompt(&["12345"], &[]);
        let mut during_login = Vec::new();

        // Act: a real SQLite session gets a key written into it before the code is asked for,
        // as a grammers login does.
        login_to_file(
            &target,
            &mut answers,
            async |path: &Path, prompt: &mut dyn LoginPrompt| {
                let session = SqliteSession::open(path).await.unwrap();
                grammers_session::Session::set_dc_option(
                    &session,
                    &grammers_session::types::DcOption {
                        id: 2,
                        ipv4: "127.0.0.1:443".parse().unwrap(),
                        ipv6: "[::1]:443".parse().unwrap(),
                        auth_key: Some([7; 256]),
                    },
                )
                .await
                .expect("writing an auth key into the session");
                let outcome = run_flow(&mut telegram(None), prompt).await;
                during_login = session_modes(dir.path());
                drop(session);
                outcome
            },
        )
        .await
        .unwrap();

        // Assert
        assert!(!during_login.is_empty());
        for (name, mode) in &during_login {
            assert_eq!(mode & 0o077, 0, "{name} is {mode:o} during the login");
        }
        let after = session_modes(dir.path());
        assert_eq!(after, vec![("usersession.db".to_owned(), 0o600)]);
    }

    #[tokio::test]
    async fn a_failed_login_removes_its_temporary_session() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("usersession.db");
        let mut answers = prompt(&["1", "2", "3"], &[]);

        let error = login_to_file(
            &target,
            &mut answers,
            async |path: &Path, prompt: &mut dyn LoginPrompt| {
                let _session = SqliteSession::open(path).await.unwrap();
                run_flow(&mut telegram(None), prompt).await
            },
        )
        .await
        .unwrap_err();

        assert!(matches!(error, LoginError::InvalidCode(3)), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_login_tells_each_host_to_log_in_itself_rather_than_copy_the_session() {
        let message = logged_in_message(Path::new("data/usersession.db"));

        assert!(message.contains("data/usersession.db"), "{message}");
        assert!(
            message.contains("Do not copy the file to another host"),
            "{message}"
        );
        assert!(
            message.contains("`savestream-worker login` on each worker host"),
            "{message}"
        );
        assert!(!message.contains("give each worker host a copy"), "{message}");
    }

    #[test]
    fn the_temporary_session_sits_beside_the_target() {
        let path = temporary_path(Path::new("data/usersession.db"));
        assert_eq!(path.parent(), Some(Path::new("data")));
        assert!(path.to_string_lossy().contains(".usersession.db.login-"));
    }
}
