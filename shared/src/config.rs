//! config.toml and its `SAVESTREAM_*` environment overlay, loaded once into [`Config`].
//!
//! This module owns the whole loading path: read the file, parse TOML, drop the
//! SaveAny-Bot settings savestream does not use (one warning names them all), lay
//! the environment over the table, then walk the table into typed sections,
//! validating as it goes. Both binaries call [`Config::load`] and nothing else
//! reads the file, so every rule about the file lives here.
//!
//! The walk is hand-written rather than `#[derive(Deserialize)]` because every
//! error must name the dotted key (`storages[1].name`) or the environment
//! variable that supplied the bad value, and serde errors from a `toml::Table`
//! carry neither.
//!
//! # Errors
//! Each [`ConfigError`] displays as one line:
//! - `<file>: <key>: <what is wrong>`, e.g.
//!   `config.toml: storages[1].name: duplicate storage name "local1": storage names must be unique`
//! - `<file>:<line>:<column>: invalid TOML: <parser message>`
//! - `<VARIABLE>: <what is wrong>`, e.g. `SAVESTREAM_API_PORT: "abc" is not a valid port number`
//! - `<file>: config file not found: ...` and `<file>: cannot read the config file: ...`
//!
//! Errors echo storage names and bad numbers or booleans from the environment,
//! never a token, URL or other string value, so a misplaced secret cannot leak
//! into a log line.
//!
//! # Environment
//! Every scalar key can be set by `SAVESTREAM_<SECTION>_<KEY>` (upper case, dots
//! become underscores): `SAVESTREAM_WORKERS`, `SAVESTREAM_API_TOKEN`,
//! `SAVESTREAM_TELEGRAM_USERBOT_SESSION`. `[[storages]]` and `[[users]]` are
//! file-only. For optional keys (`api.webhook_url`, `api.webhook_secret`,
//! `telegram.app_id`, `telegram.proxy.url`, `worker.metrics_port`) an empty value
//! unsets the key, so compose files can pass `${VAR:-}` through.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "SAVESTREAM_";

/// `SAVESTREAM_*` variables that are not config keys (the binaries' own flags),
/// so the overlay neither applies nor warns about them.
const ENV_RESERVED: &[&str] = &[
    "SAVESTREAM_CONFIG",
    "SAVESTREAM_LOG",
    // savestream-worker --role
    "SAVESTREAM_ROLE",
    // the savestream CLI's --url and --token, which README has users export
    "SAVESTREAM_URL",
    "SAVESTREAM_TOKEN",
];

/// Top-level keys of SaveAny-Bot's config.toml that savestream has no use for.
/// `proxy` is SaveAny-Bot's global proxy; savestream only has `[telegram.proxy]`.
const IGNORED_TOP: &[&str] = &[
    "lang",
    "stream",
    "no_clean_cache",
    "proxy",
    "aria2",
    "ytdlp",
    "parser",
    "parsers",
    "hook",
    "cache",
    "temp",
    "db",
    "log",
    "minio",
];

/// `[telegram]` keys of SaveAny-Bot that tune its MTProto client, not ours.
const IGNORED_TELEGRAM: &[&str] = &["rpc_retry", "flood_retry", "timeout"];

/// `[[storages]]` keys that belong to SaveAny-Bot's other storage types
/// (alist, webdav, s3/minio, rclone, telegram).
const IGNORED_STORAGE: &[&str] = &[
    "url",
    "username",
    "password",
    "token",
    "token_exp",
    "endpoint",
    "access_key_id",
    "secret_access_key",
    "bucket_name",
    "bucket",
    "use_ssl",
    "region",
    "remote",
    "config_path",
    "flags",
    "chat_id",
    "force_file",
    "rate_limit",
    "rate_burst",
];

/// How an environment value is read for a key: the file gives TOML types, the
/// environment only gives text, so the overlay needs to know what to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Str,
    OptStr,
    Bool,
    Int,
    OptInt,
    Port,
    OptPort,
}

/// Every scalar key, with how its environment value is parsed. A unit test
/// checks this list against the keys the loader actually reads.
const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("workers", EnvKind::Int),
    ("threads", EnvKind::Int),
    ("retry", EnvKind::Int),
    ("api.enable", EnvKind::Bool),
    ("api.host", EnvKind::Str),
    ("api.port", EnvKind::Port),
    ("api.token", EnvKind::Str),
    ("api.webhook_url", EnvKind::OptStr),
    ("api.webhook_secret", EnvKind::OptStr),
    ("api.live_stream_max_seconds", EnvKind::Int),
    ("telegram.app_id", EnvKind::OptInt),
    ("telegram.app_hash", EnvKind::Str),
    ("telegram.token", EnvKind::Str),
    ("telegram.userbot.enable", EnvKind::Bool),
    ("telegram.userbot.session", EnvKind::Str),
    ("telegram.proxy.enable", EnvKind::Bool),
    ("telegram.proxy.url", EnvKind::OptStr),
    ("redis.url", EnvKind::Str),
    ("redis.prefix", EnvKind::Str),
    ("redis.startup_wait_seconds", EnvKind::Int),
    ("queue.lease_seconds", EnvKind::Int),
    ("queue.retention_hours", EnvKind::Int),
    ("http.allow_private_networks", EnvKind::Bool),
    ("worker.metrics_port", EnvKind::OptPort),
    ("worker.metrics_host", EnvKind::Str),
    ("worker.shutdown_grace_seconds", EnvKind::Int),
    ("webhook.max_attempts", EnvKind::Int),
    ("webhook.span_hours", EnvKind::Int),
    ("webhook.concurrency", EnvKind::Int),
];

/// The environment variable that overrides a dotted key: `api.port` -> `SAVESTREAM_API_PORT`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// A value that must not reach logs: `Debug` and `Display` print `[redacted]`.
///
/// Deliberately not `PartialEq`: compare tokens with a constant-time comparison
/// on [`Secret::expose`], not `==`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything both binaries need from config.toml, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tasks one worker process runs at once (1..=256, default 3).
    pub workers: usize,
    /// Parts of one Telegram file downloaded at once (1..=64, default 4);
    /// big files get more (`savestream_telegram::parts::parts_in_flight`).
    /// Direct links do not use it: each downloads over one connection.
    pub threads: usize,
    /// Retries after the first attempt, for retryable failures (1..=100,
    /// default 3): a task that keeps failing so makes `retry + 1` attempts.
    pub retry: u32,
    pub api: ApiConfig,
    pub telegram: TelegramConfig,
    /// Every `local` storage, enabled or not, in file order. Disabled entries of
    /// other SaveAny-Bot types are not here: they only reserve their name.
    pub storages: Vec<StorageConfig>,
    /// Who may create tasks. Empty: the API refuses every `user_id`.
    pub users: Vec<UserConfig>,
    pub redis: RedisConfig,
    pub queue: QueueConfig,
    pub http: HttpConfig,
    pub worker: WorkerConfig,
    pub webhook: WebhookConfig,
}

/// `[api]`: the HTTP task API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Default true.
    pub enable: bool,
    /// Bind address, default `0.0.0.0`.
    pub host: String,
    /// Default 8080; 0 binds any free port.
    pub port: u16,
    /// Bearer token; empty means no authentication.
    pub token: Secret,
    /// Callback for every task that ends (completed, failed or canceled);
    /// always http or https.
    pub webhook_url: Option<Url>,
    /// Key that signs webhook bodies; `None` sends them unsigned.
    pub webhook_secret: Option<Secret>,
    /// How long one live event stream stays open before the server ends it
    /// and the client reconnects with `Last-Event-ID` (1..=86400, default 600).
    pub live_stream_max_seconds: u64,
}

impl ApiConfig {
    /// `host:port` for binding, with an IPv6 host bracketed.
    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn live_stream_max_lifetime(&self) -> Duration {
        Duration::from_secs(self.live_stream_max_seconds)
    }
}

/// `[telegram]`.
#[derive(Debug, Clone, Default)]
pub struct TelegramConfig {
    /// API id from my.telegram.org; `None` when unset.
    pub app_id: Option<i32>,
    pub app_hash: Secret,
    /// Bot token; empty when the bot is not used.
    pub token: Secret,
    pub userbot: UserbotConfig,
    pub proxy: ProxyConfig,
}

/// `[telegram.userbot]`.
#[derive(Debug, Clone)]
pub struct UserbotConfig {
    pub enable: bool,
    /// Path of the user session file, default `data/usersession.db` (SaveAny-Bot's).
    pub session: PathBuf,
}

/// `[telegram.proxy]`.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub enable: bool,
    /// socks5, socks5h, http or https; always set when `enable` is true.
    /// The Telegram client takes socks5 and socks5h only: with `enable`,
    /// an http or https URL is refused by `savestream-worker login` and by
    /// a worker that runs tasks with Telegram credentials, when it starts.
    pub url: Option<Url>,
}

/// What a `[[storages]]` entry writes to. Only `local` exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageKind {
    Local,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Local => "local",
        }
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[storages]]` entry.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Unique among all `[[storages]]` entries.
    pub name: String,
    pub kind: StorageKind,
    /// Default true.
    pub enable: bool,
    /// Root directory; relative paths are relative to the working directory.
    pub base_path: PathBuf,
}

/// One `[[users]]` entry.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Telegram user id.
    pub id: i64,
    /// Storage names, as written.
    pub storages: Vec<String>,
    /// True: every storage except `storages`. False: only `storages`.
    pub blacklist: bool,
}

/// `[redis]`.
#[derive(Clone)]
pub struct RedisConfig {
    /// Default `redis://127.0.0.1:6379`; checked with fred's URL parser.
    pub url: String,
    /// Key prefix, default `savestream`; never empty, no braces, colons or whitespace.
    pub prefix: String,
    /// How long the API and a worker wait at start for a Redis that does
    /// not answer (down, restarting, loading its data) before they give up;
    /// default 60, 0 gives up at once.
    pub startup_wait_seconds: u64,
}

impl fmt::Debug for RedisConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown_url())
            .field("prefix", &self.prefix)
            .field("startup_wait_seconds", &self.startup_wait_seconds)
            .finish()
    }
}

impl RedisConfig {
    /// `url` as logs and error messages show it: its password, if any, as
    /// `***` ([`shown_redis_url`](crate::store::shown_redis_url), the one
    /// form every message uses).
    pub fn shown_url(&self) -> String {
        crate::store::shown_redis_url(&self.url)
    }

    pub fn startup_wait(&self) -> Duration {
        Duration::from_secs(self.startup_wait_seconds)
    }
}

/// `[queue]`.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a worker owns a task between heartbeats (5..=3600, default 30).
    pub lease_seconds: u64,
    /// How long finished tasks stay queryable (1..=876000, default 168).
    pub retention_hours: u64,
}

impl QueueConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours * 3600)
    }
}

/// `[http]`: direct-link downloads.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Default false: downloads may not reach loopback or private addresses.
    pub allow_private_networks: bool,
}

/// `[worker]`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Prometheus endpoint port; `None` serves no metrics.
    pub metrics_port: Option<u16>,
    /// The address `/metrics` listens on: every interface (`0.0.0.0`, the
    /// default, for a Prometheus outside the container) or one of them
    /// (`127.0.0.1` for this machine only).
    pub metrics_host: std::net::IpAddr,
    /// How long a stopping worker lets running tasks finish (0..=3600, default 30).
    pub shutdown_grace_seconds: u64,
}

impl WorkerConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// `[webhook]`: delivery of task callbacks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Deliveries tried per event (1..=100, default 10).
    pub max_attempts: u32,
    /// Window the attempts are spread over (1..=720, default 24).
    pub span_hours: u64,
    /// Deliveries in flight at once (1..=1024, default 8).
    pub concurrency: usize,
}

impl WebhookConfig {
    pub fn span(&self) -> Duration {
        Duration::from_secs(self.span_hours * 3600)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: 3,
            threads: 4,
            retry: 3,
            api: ApiConfig::default(),
            telegram: TelegramConfig::default(),
            storages: Vec::new(),
            users: Vec::new(),
            redis: RedisConfig::default(),
            queue: QueueConfig::default(),
            http: HttpConfig::default(),
            worker: WorkerConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            enable: true,
            host: "0.0.0.0".to_owned(),
            port: 8080,
            token: Secret::default(),
            webhook_url: None,
            webhook_secret: None,
            live_stream_max_seconds: 600,
        }
    }
}

impl Default for UserbotConfig {
    fn default() -> UserbotConfig {
        UserbotConfig {
            enable: false,
            session: PathBuf::from("data/usersession.db"),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "savestream".to_owned(),
            startup_wait_seconds: 60,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            lease_seconds: 30,
            retention_hours: 168,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            metrics_port: None,
            metrics_host: std::net::IpAddr::from([0, 0, 0, 0]),
            shutdown_grace_seconds: 30,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            max_attempts: 10,
            span_hours: 24,
            concurrency: 8,
        }
    }
}

/// A loaded config and what the binaries should log about it with `tracing::warn!`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Logs every warning at WARN level.
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// Why the config could not be loaded; `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{path}: config file not found: copy config.example.toml to {path} and edit it, or pass --config PATH"
    )]
    NotFound { path: String },
    #[error("{path}: cannot read the config file: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{origin}:{line}:{column}: invalid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key of the file is unknown, of the wrong type or out of range.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    /// The value came from this environment variable.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
}

impl Config {
    /// Reads `path` and lays the process environment over it.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let mut env = Vec::new();
        // std::env::vars() panics on non-UTF-8; only our own variables must be text.
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|name| name.starts_with(ENV_PREFIX)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => env.push((name.to_owned(), value)),
                Err(_) => {
                    return Err(ConfigError::Env {
                        var: name.to_owned(),
                        message: "the value is not valid UTF-8".to_owned(),
                    })
                }
            }
        }
        Config::load_with_env(path, env)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound { path: origin.clone() },
            _ => ConfigError::Unreadable {
                path: origin.clone(),
                reason: error.to_string(),
            },
        })?;
        Config::from_toml_str(&text, &origin, env)
    }

    /// Parses `text`; `origin` names it in errors and warnings (normally the file path).
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        // Notepad writes a BOM, and SaveAny-Bot users edit this file on Windows.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut table: Table = toml::from_str(text).map_err(|error| syntax_error(origin, text, &error))?;

        let mut warnings = Vec::new();
        let ignored = strip_ignored(&mut table);
        if !ignored.is_empty() {
            warnings.push(format!(
                "{origin}: ignoring SaveAny-Bot settings savestream does not use: {}",
                ignored.join(", ")
            ));
        }

        let (env_sources, unknown_env) = apply_env(&mut table, env)?;
        if !unknown_env.is_empty() {
            warnings.push(format!(
                "ignoring unknown environment variables: {} (config keys are set by {ENV_PREFIX}<SECTION>_<KEY>)",
                unknown_env.join(", ")
            ));
        }

        let ctx = Ctx::new(origin, env_sources);
        let config = read_config(&ctx, &table)?;

        if config.api.enable && config.api.token.is_empty() {
            warnings.push("api.token is empty: the API accepts requests without authentication".to_owned());
        }
        if config.users.is_empty() {
            warnings
                .push("no [[users]] configured: the API refuses every task until a user is added".to_owned());
        }
        Ok(Loaded { config, warnings })
    }

    /// The `[[storages]]` entry named `name`, enabled or not.
    pub fn storage(&self, name: &str) -> Option<&StorageConfig> {
        self.storages.iter().find(|storage| storage.name == name)
    }

    /// The `[[users]]` entry for a Telegram user id.
    pub fn user(&self, id: i64) -> Option<&UserConfig> {
        self.users.iter().find(|user| user.id == id)
    }

    /// Enabled storages `id` may use, in config order; the first is the user's
    /// default. Empty for an unknown user.
    pub fn storages_for_user(&self, id: i64) -> Vec<&StorageConfig> {
        let Some(user) = self.user(id) else {
            return Vec::new();
        };
        self.storages
            .iter()
            .filter(|storage| storage.enable && user_may_use(user, &storage.name))
            .collect()
    }
}

fn user_may_use(user: &UserConfig, storage: &str) -> bool {
    user.storages.iter().any(|name| name == storage) != user.blacklist
}

fn syntax_error(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let (line, column) = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            (line, column)
        }
        None => (1, 1),
    };
    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        message: error.message().split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Removes the SaveAny-Bot settings savestream does not use and returns their
/// dotted paths. A disabled storage of another type is dropped whole except
/// `name`, `type` and `enable`: its name stays reserved so users naming it
/// still resolve.
fn strip_ignored(table: &mut Table) -> Vec<String> {
    let mut ignored = Vec::new();
    for key in IGNORED_TOP {
        if table.remove(*key).is_some() {
            ignored.push((*key).to_owned());
        }
    }
    if let Some(Value::Table(telegram)) = table.get_mut("telegram") {
        for key in IGNORED_TELEGRAM {
            if telegram.remove(*key).is_some() {
                ignored.push(format!("telegram.{key}"));
            }
        }
    }
    if let Some(Value::Array(storages)) = table.get_mut("storages") {
        for (index, entry) in storages.iter_mut().enumerate() {
            let Value::Table(entry) = entry else { continue };
            let other_type = matches!(entry.get("type"), Some(Value::String(kind)) if kind != "local");
            let disabled = matches!(entry.get("enable"), Some(Value::Boolean(false)));
            if other_type && disabled {
                entry.retain(|key, _| matches!(key, "name" | "type" | "enable"));
                ignored.push(format!("storages[{index}]"));
                continue;
            }
            for key in IGNORED_STORAGE {
                if entry.remove(*key).is_some() {
                    ignored.push(format!("storages[{index}].{key}"));
                }
            }
        }
    }
    ignored
}

/// Lays `SAVESTREAM_*` variables over the table. Returns which dotted keys came
/// from which variable (so later errors name the variable) and the unknown
/// variables.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(BTreeMap<String, String>, Vec<String>), ConfigError> {
    let mut sources = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for (var, text) in env {
        if !var.starts_with(ENV_PREFIX) || ENV_RESERVED.contains(&var.as_str()) {
            continue;
        }
        let Some(&(key, kind)) = ENV_KEYS.iter().find(|(key, _)| env_var_name(key) == var) else {
            unknown.insert(var);
            continue;
        };
        let value = parse_env_value(kind, &text).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        set_path(table, key, value);
        sources.insert(key.to_owned(), var);
    }
    Ok((sources, unknown.into_iter().collect()))
}

/// `Ok(None)` unsets an optional key.
fn parse_env_value(kind: EnvKind, text: &str) -> Result<Option<Value>, String> {
    let trimmed = text.trim();
    let optional = matches!(kind, EnvKind::OptStr | EnvKind::OptInt | EnvKind::OptPort);
    if optional && trimmed.is_empty() {
        return Ok(None);
    }
    let value = match kind {
        EnvKind::Str | EnvKind::OptStr => Value::String(text.to_owned()),
        EnvKind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Boolean(true),
            "false" | "0" => Value::Boolean(false),
            _ => return Err(format!("{text:?} is not a valid boolean (use true or false)")),
        },
        EnvKind::Int | EnvKind::OptInt => match trimmed.parse::<i64>() {
            Ok(number) => Value::Integer(number),
            Err(_) => return Err(format!("{text:?} is not a valid integer")),
        },
        EnvKind::Port | EnvKind::OptPort => match trimmed.parse::<u16>() {
            Ok(port) => Value::Integer(i64::from(port)),
            Err(_) => return Err(format!("{text:?} is not a valid port number")),
        },
    };
    Ok(Some(value))
}

/// Sets (or, for `None`, removes) a dotted key, creating missing tables. A
/// non-table in the way is left alone: reading the table reports it.
fn set_path(table: &mut Table, key: &str, value: Option<Value>) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(leaf) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(next) => current = next,
            _ => return,
        }
    }
    match value {
        Some(value) => {
            current.insert(leaf.to_owned(), value);
        }
        None => {
            current.remove(leaf);
        }
    }
}

/// What every section reader shares: where values came from.
struct Ctx<'o> {
    origin: &'o str,
    env_sources: BTreeMap<String, String>,
    /// Every scalar key read, so a test can compare it with `ENV_KEYS`.
    #[cfg(test)]
    leaves: std::cell::RefCell<BTreeSet<String>>,
}

impl<'o> Ctx<'o> {
    fn new(origin: &'o str, env_sources: BTreeMap<String, String>) -> Ctx<'o> {
        Ctx {
            origin,
            env_sources,
            #[cfg(test)]
            leaves: Default::default(),
        }
    }

    /// An error about `key`, blamed on its environment variable if it came from one.
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        match self.env_sources.get(key) {
            Some(var) => ConfigError::Env {
                var: var.clone(),
                message: message.into(),
            },
            None => ConfigError::Invalid {
                origin: self.origin.to_owned(),
                key: key.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// One table being read. Every key asked for is remembered, so
/// [`Section::finish`] can call anything else a typo.
struct Section<'c, 't> {
    ctx: &'c Ctx<'c>,
    path: String,
    table: Option<&'t Table>,
    known: Vec<&'static str>,
}

impl<'c, 't> Section<'c, 't> {
    fn new(ctx: &'c Ctx<'c>, path: String, table: Option<&'t Table>) -> Section<'c, 't> {
        Section {
            ctx,
            path,
            table,
            known: Vec::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.ctx.error(&self.key(key), message)
    }

    fn raw(&mut self, key: &'static str) -> Option<&'t Value> {
        self.known.push(key);
        self.table.and_then(|table| table.get(key))
    }

    fn leaf(&mut self, key: &'static str) -> Option<&'t Value> {
        #[cfg(test)]
        self.ctx.leaves.borrow_mut().insert(self.key(key));
        self.raw(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ConfigError {
        self.error(key, format!("expected {expected}, found {}", describe(found)))
    }

    /// A sub-table; absent reads as empty so every key takes its default.
    fn section(&mut self, key: &'static str) -> Result<Section<'c, 't>, ConfigError> {
        let path = self.key(key);
        match self.raw(key) {
            None => Ok(Section::new(self.ctx, path, None)),
            Some(Value::Table(table)) => Ok(Section::new(self.ctx, path, Some(table))),
            Some(other) => Err(self.wrong_type(key, "a table", other)),
        }
    }

    /// `[[key]]` entries, each as a section named `key[i]`.
    fn tables(&mut self, key: &'static str) -> Result<Vec<Section<'c, 't>>, ConfigError> {
        let array = match self.raw(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(array)) => array,
            Some(other) => {
                return Err(self.wrong_type(key, &format!("an array of tables ([[{key}]])"), other))
            }
        };
        let path = self.key(key);
        array
            .iter()
            .enumerate()
            .map(|(index, value)| match value {
                Value::Table(table) => Ok(Section::new(self.ctx, format!("{path}[{index}]"), Some(table))),
                other => Err(self.ctx.error(
                    &format!("{path}[{index}]"),
                    format!("expected a table, found {}", describe(other)),
                )),
            })
            .collect()
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.leaf(key) {
            None => Ok(default),
            Some(Value::Boolean(value)) => Ok(*value),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    fn opt_int<T: TryFrom<i64>>(
        &mut self,
        key: &'static str,
        range: RangeInclusive<i64>,
    ) -> Result<Option<T>, ConfigError> {
        let number = match self.leaf(key) {
            None => return Ok(None),
            Some(Value::Integer(number)) => *number,
            Some(other) => {
                let expected = format!("an integer from {} to {}", range.start(), range.end());
                return Err(self.wrong_type(key, &expected, other));
            }
        };
        if !range.contains(&number) {
            return Err(self.error(
                key,
                format!(
                    "must be between {} and {}, found {number}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        // The range is chosen to fit T, so this cannot fail; if it did, say so plainly.
        T::try_from(number)
            .map(Some)
            .map_err(|_| self.error(key, format!("{number} is out of range")))
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        key: &'static str,
        default: T,
        range: RangeInclusive<i64>,
    ) -> Result<T, ConfigError> {
        Ok(self.opt_int(key, range)?.unwrap_or(default))
    }

    fn opt_port(&mut self, key: &'static str) -> Result<Option<u16>, ConfigError> {
        match self.leaf(key) {
            None => Ok(None),
            Some(Value::Integer(number)) => u16::try_from(*number)
                .map(Some)
                .map_err(|_| self.error(key, format!("{number} is not a valid port number (0 to 65535)"))),
            Some(other) => Err(self.wrong_type(key, "a port number (an integer from 0 to 65535)", other)),
        }
    }

    fn port(&mut self, key: &'static str, default: u16) -> Result<u16, ConfigError> {
        Ok(self.opt_port(key)?.unwrap_or(default))
    }

    fn opt_string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.leaf(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_owned()))
    }

    /// A token (empty: none) that must be exactly what the other side
    /// compares: visible ASCII, nothing around it. The API trims what a
    /// client sends and refuses anything but ASCII, so a token read as is
    /// from a secret file with its trailing newline could never match and
    /// every request would be refused, with nothing saying why. `consequence`
    /// says what would happen if the token were kept; the error never holds
    /// the token.
    fn token(&mut self, key: &'static str, consequence: &str) -> Result<Secret, ConfigError> {
        let text = self.string(key, "")?;
        match token_problem(&text) {
            None => Ok(Secret::new(text)),
            Some(problem) => Err(self.error(key, format!("{problem}; {consequence}"))),
        }
    }

    /// Checks a string that must be present and not blank. Called after
    /// [`Section::finish`], so a misspelt key is reported as a typo rather than
    /// as the correct key missing.
    fn require(&self, key: &str, value: Option<String>, hint: &str) -> Result<String, ConfigError> {
        match value {
            Some(text) if !text.trim().is_empty() => Ok(text),
            Some(_) => Err(self.error(key, format!("must not be empty ({hint})"))),
            None => Err(self.error(key, format!("missing ({hint})"))),
        }
    }

    /// An optional string where empty means unset, as SaveAny-Bot files write it.
    fn non_empty_string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.opt_string(key)?.filter(|text| !text.trim().is_empty()))
    }

    fn string_list(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        let array = match self.raw(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(array)) => array,
            Some(other) => return Err(self.wrong_type(key, "an array of strings", other)),
        };
        let path = self.key(key);
        array
            .iter()
            .enumerate()
            .map(|(index, value)| match value {
                Value::String(text) => Ok(text.clone()),
                other => Err(self.ctx.error(
                    &format!("{path}[{index}]"),
                    format!("expected a string, found {}", describe(other)),
                )),
            })
            .collect()
    }

    /// Every key not asked for is a typo: name the first, with a suggestion.
    fn finish(&self) -> Result<(), ConfigError> {
        let Some(table) = self.table else { return Ok(()) };
        let Some(unknown) = table.keys().find(|key| !self.known.contains(&key.as_str())) else {
            return Ok(());
        };
        let message = match closest(unknown, &self.known) {
            Some(suggestion) => format!("unknown key (did you mean \"{suggestion}\"?)"),
            None => format!("unknown key: expected one of {}", self.known.join(", ")),
        };
        Err(self.error(unknown, message))
    }
}

/// What is wrong with a non-empty token, and what to do about it, in words
/// that never quote the token.
fn token_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        return None;
    }
    if text.trim().is_empty() {
        return Some("is only whitespace: set a token of visible ASCII characters, or \"\" for none");
    }
    if text.ends_with(['\n', '\r']) {
        return Some("ends with a newline (as a secret file often does): remove the trailing newline");
    }
    if text.trim() != text {
        return Some("starts or ends with whitespace: remove it");
    }
    // Inner spaces are sendable (`Authorization: Bearer two words` presents
    // `two words`); control and non-ASCII characters are not.
    if !text.bytes().all(|byte| (0x20..=0x7e).contains(&byte)) {
        return Some(
            "holds a control character or a non-ASCII character: use visible ASCII characters and \
             spaces only, e.g. the output of `openssl rand -hex 32`",
        );
    }
    None
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The known key within edit distance 2 of `key`, if one is.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn read_config(ctx: &Ctx<'_>, table: &Table) -> Result<Config, ConfigError> {
    let defaults = Config::default();
    let mut root = Section::new(ctx, String::new(), Some(table));
    let workers = root.int("workers", defaults.workers, 1..=256)?;
    let threads = root.int("threads", defaults.threads, 1..=64)?;
    let retry = root.int("retry", defaults.retry, 1..=100)?;
    let api = read_api(root.section("api")?)?;
    let telegram = read_telegram(root.section("telegram")?)?;
    let (storages, declared) = read_storages(root.tables("storages")?)?;
    let users = read_users(root.tables("users")?, &storages, &declared)?;
    let redis = read_redis(root.section("redis")?)?;
    let queue = read_queue(root.section("queue")?)?;
    let http = read_http(root.section("http")?)?;
    let worker = read_worker(root.section("worker")?)?;
    let webhook = read_webhook(root.section("webhook")?)?;
    root.finish()?;
    Ok(Config {
        workers,
        threads,
        retry,
        api,
        telegram,
        storages,
        users,
        redis,
        queue,
        http,
        worker,
        webhook,
    })
}

fn read_api(mut s: Section<'_, '_>) -> Result<ApiConfig, ConfigError> {
    let d = ApiConfig::default();
    let enable = s.bool("enable", d.enable)?;
    let host = s.string("host", &d.host)?;
    if host.trim().is_empty() {
        return Err(s.error("host", "must not be empty (0.0.0.0 listens on every interface)"));
    }
    let port = s.port("port", d.port)?;
    let token = s.token(
        "token",
        "as it is, no request could send it and every one would be refused with 401",
    )?;
    let webhook_url = match s.non_empty_string("webhook_url")? {
        None => None,
        Some(text) => Some(parse_http_url(&text).map_err(|message| s.error("webhook_url", message))?),
    };
    // Empty means unsigned, as SaveAny-Bot files write it; a secret of only
    // whitespace (a variable set to a newline) would silently mean the same.
    let webhook_secret = match s.opt_string("webhook_secret")? {
        Some(text) if !text.is_empty() && text.trim().is_empty() => {
            return Err(s.error(
                "webhook_secret",
                "is only whitespace: set whsec_ and base64 (echo whsec_$(openssl rand -base64 32)), or \"\" to send webhooks unsigned",
            ))
        }
        other => other.filter(|text| !text.is_empty()).map(Secret::new),
    };
    // At least a second: 0 would end every stream as it opens, and its client
    // would reconnect in a loop. At most a day: longer is as good as no bound.
    let live_stream_max_seconds = s.int("live_stream_max_seconds", d.live_stream_max_seconds, 1..=86_400)?;
    s.finish()?;
    Ok(ApiConfig {
        enable,
        host,
        port,
        token,
        webhook_url,
        webhook_secret,
        live_stream_max_seconds,
    })
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not a valid URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, found scheme \"{}\"",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("the URL has no host".to_owned());
    }
    Ok(url)
}

fn read_telegram(mut s: Section<'_, '_>) -> Result<TelegramConfig, ConfigError> {
    let app_id = s.opt_int("app_id", 1..=i64::from(i32::MAX))?;
    let app_hash = Secret::new(s.string("app_hash", "")?);
    let token = s.token("token", "as it is, Telegram would refuse the bot's sign-in")?;

    let mut u = s.section("userbot")?;
    let userbot_defaults = UserbotConfig::default();
    let userbot_enable = u.bool("enable", userbot_defaults.enable)?;
    let session = u.string("session", &userbot_defaults.session.to_string_lossy())?;
    if session.trim().is_empty() {
        return Err(u.error("session", "must not be empty (the path of the user session file)"));
    }
    u.finish()?;
    let userbot = UserbotConfig {
        enable: userbot_enable,
        session: PathBuf::from(session),
    };

    let mut p = s.section("proxy")?;
    let proxy_enable = p.bool("enable", false)?;
    let proxy_url = p.non_empty_string("url")?;
    p.finish()?;
    let proxy_url = match proxy_url {
        None if proxy_enable => return Err(p.error("url", "missing: required when enable = true")),
        None => None,
        Some(text) => Some(parse_proxy_url(&text).map_err(|message| p.error("url", message))?),
    };
    let proxy = ProxyConfig {
        enable: proxy_enable,
        url: proxy_url,
    };

    s.finish()?;
    Ok(TelegramConfig {
        app_id,
        app_hash,
        token,
        userbot,
        proxy,
    })
}

fn parse_proxy_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not a valid URL: {error}"))?;
    if !matches!(url.scheme(), "socks5" | "socks5h" | "http" | "https") {
        return Err(format!(
            "unsupported proxy scheme \"{}\": use socks5://, socks5h://, http:// or https://",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("the URL has no host".to_owned());
    }
    Ok(url)
}

/// Returns the local storages and every declared name (including disabled
/// entries of other types, which users may still name).
fn read_storages(entries: Vec<Section<'_, '_>>) -> Result<(Vec<StorageConfig>, Vec<String>), ConfigError> {
    let mut storages = Vec::new();
    let mut declared: Vec<String> = Vec::new();
    for mut s in entries {
        let name = s.opt_string("name")?;
        let kind = s.opt_string("type")?;
        let enable = s.bool("enable", true)?;
        let base_path = s.opt_string("base_path")?;
        s.finish()?;
        let name = s.require("name", name, "a unique name users and tasks refer to")?;
        if declared.contains(&name) {
            return Err(s.error(
                "name",
                format!("duplicate storage name {name:?}: storage names must be unique"),
            ));
        }
        declared.push(name.clone());
        let kind = s.require("type", kind, "set type = \"local\"")?;
        if kind != "local" {
            if enable {
                return Err(s.error(
                    "type",
                    format!(
                        "storage type {kind:?} is not supported: only \"local\" is supported now \
                         (set enable = false to keep this entry)"
                    ),
                ));
            }
            // Disabled and of another type: its other keys were stripped as ignored.
            continue;
        }
        let base_path = s.require("base_path", base_path, "the directory files are saved under")?;
        storages.push(StorageConfig {
            name,
            kind: StorageKind::Local,
            enable,
            base_path: PathBuf::from(base_path),
        });
    }
    Ok((storages, declared))
}

fn read_users(
    entries: Vec<Section<'_, '_>>,
    storages: &[StorageConfig],
    declared: &[String],
) -> Result<Vec<UserConfig>, ConfigError> {
    let mut users: Vec<UserConfig> = Vec::new();
    for mut s in entries {
        let id: Option<i64> = s.opt_int("id", 1..=i64::MAX)?;
        let names = s.string_list("storages")?;
        let blacklist = s.bool("blacklist", false)?;
        s.finish()?;
        let Some(id) = id else {
            return Err(s.error("id", "missing (the user's numeric Telegram id)"));
        };
        if users.iter().any(|user| user.id == id) {
            return Err(s.error("id", format!("duplicate user id {id}: each user may appear once")));
        }
        for (index, name) in names.iter().enumerate() {
            if !declared.contains(name) {
                return Err(s.error(
                    &format!("storages[{index}]"),
                    format!("unknown storage {name:?}: it must name a [[storages]] entry"),
                ));
            }
        }
        let user = UserConfig {
            id,
            storages: names,
            blacklist,
        };
        let usable = storages
            .iter()
            .any(|storage| storage.enable && user_may_use(&user, &storage.name));
        if !usable {
            let why = if blacklist {
                "the blacklist excludes every enabled storage"
            } else {
                "the list names no enabled storage (or set blacklist = true with an empty list to allow all)"
            };
            return Err(s.error("storages", format!("user {id} can use no enabled storage: {why}")));
        }
        users.push(user);
    }
    Ok(users)
}

fn read_redis(mut s: Section<'_, '_>) -> Result<RedisConfig, ConfigError> {
    let d = RedisConfig::default();
    let url = s.string("url", &d.url)?;
    let scheme = url.trim().split_once("://").map_or("", |(scheme, _)| scheme);
    if matches!(
        scheme,
        "rediss" | "valkeys" | "rediss-cluster" | "valkeys-cluster" | "rediss-sentinel" | "valkeys-sentinel"
    ) {
        // fred is built without a TLS feature and would quietly connect in plain text.
        return Err(s.error(
            "url",
            format!("{scheme}:// (TLS) is not supported by this build: use redis://"),
        ));
    }
    if !matches!(
        scheme,
        "redis" | "valkey" | "redis-cluster" | "valkey-cluster" | "redis-sentinel" | "valkey-sentinel"
    ) {
        return Err(s.error(
            "url",
            "must start with redis://, redis-cluster:// or redis-sentinel://",
        ));
    }
    // Validate with the client's own parser so a URL that loads here also connects
    // there. The URL itself is not echoed: it may hold a password.
    if let Err(error) = Url::parse(url.trim()) {
        return Err(s.error("url", format!("not a valid Redis URL: {error}")));
    }
    if let Err(error) = fred::types::config::Config::from_url(url.trim()) {
        return Err(s.error(
            "url",
            format!(
                "not a valid Redis URL ({}); expected redis://host:port/db",
                error.details()
            ),
        ));
    }
    let prefix = s.string("prefix", &d.prefix)?;
    if prefix.is_empty() {
        return Err(s.error("prefix", "must not be empty"));
    }
    if prefix
        .chars()
        .any(|c| matches!(c, '{' | '}' | ':') || c.is_whitespace())
    {
        // It becomes the `{prefix}` hash tag of every key.
        return Err(s.error("prefix", "must not contain '{', '}', ':' or whitespace"));
    }
    let startup_wait_seconds = s.int("startup_wait_seconds", d.startup_wait_seconds, 0..=3600)?;
    s.finish()?;
    Ok(RedisConfig {
        url: url.trim().to_owned(),
        prefix,
        startup_wait_seconds,
    })
}

fn read_queue(mut s: Section<'_, '_>) -> Result<QueueConfig, ConfigError> {
    let d = QueueConfig::default();
    let lease_seconds = s.int("lease_seconds", d.lease_seconds, 5..=3600)?;
    // The upper bound (100 years) keeps hours * 3600 far from overflowing.
    let retention_hours = s.int("retention_hours", d.retention_hours, 1..=876_000)?;
    s.finish()?;
    Ok(QueueConfig {
        lease_seconds,
        retention_hours,
    })
}

fn read_http(mut s: Section<'_, '_>) -> Result<HttpConfig, ConfigError> {
    let allow_private_networks = s.bool("allow_private_networks", false)?;
    s.finish()?;
    Ok(HttpConfig {
        allow_private_networks,
    })
}

fn read_worker(mut s: Section<'_, '_>) -> Result<WorkerConfig, ConfigError> {
    let d = WorkerConfig::default();
    let metrics_port = s.opt_port("metrics_port")?;
    let metrics_host_text = s.string("metrics_host", &d.metrics_host.to_string())?;
    let metrics_host = metrics_host_text.trim().parse().map_err(|_| {
        s.error(
            "metrics_host",
            format!(
                "{metrics_host_text:?} is not an IP address: use 0.0.0.0 (every interface) or the address of one, \
                 such as 127.0.0.1 (this machine only)"
            ),
        )
    })?;
    let shutdown_grace_seconds = s.int("shutdown_grace_seconds", d.shutdown_grace_seconds, 0..=3600)?;
    s.finish()?;
    Ok(WorkerConfig {
        metrics_port,
        metrics_host,
        shutdown_grace_seconds,
    })
}

fn read_webhook(mut s: Section<'_, '_>) -> Result<WebhookConfig, ConfigError> {
    let d = WebhookConfig::default();
    let max_attempts = s.int("max_attempts", d.max_attempts, 1..=100)?;
    let span_hours = s.int("span_hours", d.span_hours, 1..=720)?;
    let concurrency = s.int("concurrency", d.concurrency, 1..=1024)?;
    s.finish()?;
    Ok(WebhookConfig {
        max_attempts,
        span_hours,
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that sets every scalar key, so reading it touches every leaf.
    const FULL: &str = r#"
        workers = 3
        threads = 4
        retry = 3
        [api]
        enable = true
        host = "0.0.0.0"
        port = 8080
        token = "t"
        webhook_url = "https://example.com/hook"
        webhook_secret = "s"
        live_stream_max_seconds = 600
        [telegram]
        app_id = 1
        app_hash = "h"
        token = "b"
        [telegram.userbot]
        enable = false
        session = "data/usersession.db"
        [telegram.proxy]
        enable = false
        url = "socks5://127.0.0.1:7890"
        [[storages]]
        name = "local1"
        type = "local"
        base_path = "./downloads"
        [[users]]
        id = 1
        storages = ["local1"]
        [redis]
        url = "redis://127.0.0.1:6379"
        prefix = "savestream"
        startup_wait_seconds = 60
        [queue]
        lease_seconds = 30
        retention_hours = 168
        [http]
        allow_private_networks = false
        [worker]
        metrics_port = 9100
        metrics_host = "0.0.0.0"
        shutdown_grace_seconds = 30
        [webhook]
        max_attempts = 10
        span_hours = 24
        concurrency = 8
    "#;

    #[test]
    fn config_env_keys_match_the_keys_the_loader_reads() {
        let table: Table = toml::from_str(FULL).unwrap();
        let ctx = Ctx::new("t", BTreeMap::new());
        read_config(&ctx, &table).unwrap();
        let read: BTreeSet<String> = ctx
            .leaves
            .borrow()
            .iter()
            .filter(|key| !key.contains('['))
            .cloned()
            .collect();
        let listed: BTreeSet<String> = ENV_KEYS.iter().map(|(key, _)| (*key).to_owned()).collect();
        assert_eq!(read, listed);
    }

    #[test]
    fn config_env_var_names_are_unique() {
        let names: BTreeSet<String> = ENV_KEYS.iter().map(|(key, _)| env_var_name(key)).collect();
        assert_eq!(names.len(), ENV_KEYS.len());
        assert_eq!(
            env_var_name("telegram.userbot.session"),
            "SAVESTREAM_TELEGRAM_USERBOT_SESSION"
        );
    }

    #[test]
    fn config_edit_distance() {
        for (a, b, distance) in [
            ("tokn", "token", 1),
            ("", "abc", 3),
            ("port", "port", 0),
            ("hots", "host", 2),
        ] {
            assert_eq!(edit_distance(a, b), distance, "{a} -> {b}");
        }
    }

    /// Loads [`FULL`] with `[api] token` set to `token` (a TOML string).
    fn load_api_token(toml_string: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let text = FULL.replace("token = \"t\"", &format!("token = {toml_string}"));
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
        Config::from_toml_str(&text, "config.toml", env)
    }

    #[test]
    fn config_api_token_ending_in_a_newline_is_refused_and_the_error_says_to_remove_it() {
        let error = load_api_token(r#""tok-3f9a\n""#, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config.toml: api.token: "), "{error}");
        assert!(error.contains("remove the trailing newline"), "{error}");
        assert!(
            !error.contains("tok-3f9a"),
            "the error printed the token: {error}"
        );
    }

    #[test]
    fn config_api_token_from_the_environment_ending_in_a_newline_names_the_variable() {
        let error = load_api_token(r#""""#, &[("SAVESTREAM_API_TOKEN", "env-tok-77c1\r\n")])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("SAVESTREAM_API_TOKEN: "), "{error}");
        assert!(error.contains("remove the trailing newline"), "{error}");
        assert!(
            !error.contains("env-tok-77c1"),
            "the error printed the token: {error}"
        );
    }

    #[test]
    fn config_api_token_with_an_inner_space_is_accepted_as_a_client_can_send_it() {
        let loaded = load_api_token(r#""correct horse 4b2e""#, &[]).unwrap();
        assert_eq!(loaded.config.api.token.expose(), "correct horse 4b2e");
    }

    #[test]
    fn config_api_token_with_a_control_character_is_refused() {
        let error = load_api_token(r#""tok	4b2e""#, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config.toml: api.token: "), "{error}");
        assert!(error.contains("control character"), "{error}");
        assert!(!error.contains("4b2e"), "the error printed the token: {error}");
    }

    #[test]
    fn a_blank_webhook_secret_is_refused_rather_than_read_as_none() {
        let text = FULL.replace("webhook_secret = \"s\"", "webhook_secret = \"  \"");
        let error = Config::from_toml_str(&text, "config.toml", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config.toml: api.webhook_secret: "), "{error}");
        assert!(error.contains("only whitespace"), "{error}");
    }

    #[test]
    fn the_binaries_own_environment_variables_are_not_reported_as_unknown() {
        let env = [
            ("SAVESTREAM_ROLE", "tasks"),
            ("SAVESTREAM_URL", "http://x"),
            ("SAVESTREAM_TOKEN", "t"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let loaded = Config::from_toml_str(FULL, "config.toml", env).unwrap();
        assert!(
            loaded
                .warnings
                .iter()
                .all(|warning| !warning.contains("SAVESTREAM_")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn config_api_token_with_a_non_ascii_character_is_refused() {
        let error = load_api_token(r#""tök-91d0""#, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config.toml: api.token: "), "{error}");
        assert!(error.contains("non-ASCII"), "{error}");
        assert!(!error.contains("91d0"), "the error printed the token: {error}");
    }

    #[test]
    fn config_api_token_of_only_whitespace_or_leading_whitespace_is_refused() {
        for (toml_string, expected) in [(r#""  ""#, "only whitespace"), (r#"" tok-5e""#, "remove it")] {
            let error = load_api_token(toml_string, &[]).unwrap_err().to_string();
            assert!(
                error.starts_with("config.toml: api.token: "),
                "{toml_string}: {error}"
            );
            assert!(error.contains(expected), "{toml_string}: {error}");
        }
    }

    #[test]
    fn config_api_token_of_visible_ascii_or_empty_is_accepted() {
        let loaded = load_api_token(r#""Ab0-_.~!+/=tok""#, &[]).unwrap();
        assert_eq!(loaded.config.api.token.expose(), "Ab0-_.~!+/=tok");
        let loaded = load_api_token(r#""""#, &[]).unwrap();
        assert!(loaded.config.api.token.is_empty());
    }

    #[test]
    fn config_telegram_token_ending_in_a_newline_is_refused_without_printing_it() {
        let text = FULL.replace("token = \"b\"", "token = \"123:bot-6a1f\\n\"");
        let error = Config::from_toml_str(&text, "config.toml", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config.toml: telegram.token: "), "{error}");
        assert!(error.contains("remove the trailing newline"), "{error}");
        assert!(
            !error.contains("bot-6a1f"),
            "the error printed the token: {error}"
        );
    }

    #[test]
    fn metrics_listen_on_every_interface_unless_told_one() {
        let load = |host: &str| {
            let text = FULL.replace(r#"metrics_host = "0.0.0.0""#, host);
            Config::from_toml_str(&text, "config.toml", std::iter::empty())
        };
        let every = load("").unwrap().config.worker.metrics_host;
        assert_eq!(every, std::net::IpAddr::from([0, 0, 0, 0]));
        let local = load(r#"metrics_host = "127.0.0.1""#)
            .unwrap()
            .config
            .worker
            .metrics_host;
        assert_eq!(local, std::net::IpAddr::from([127, 0, 0, 1]));
        let v6 = load(r#"metrics_host = "::1""#)
            .unwrap()
            .config
            .worker
            .metrics_host;
        assert!(v6.is_loopback());
        let error = load(r#"metrics_host = "localhost""#).unwrap_err().to_string();
        assert!(error.starts_with("config.toml: worker.metrics_host: "), "{error}");
        assert!(error.contains("is not an IP address"), "{error}");
        assert!(error.contains("127.0.0.1"), "{error}");
    }

    #[test]
    fn config_redis_debug_hides_the_password() {
        let redis = RedisConfig {
            url: "redis://user:hunter2@localhost:6379/0".into(),
            prefix: "p".into(),
            startup_wait_seconds: 0,
        };
        let printed = format!("{redis:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redis://user:***@localhost:6379/0"), "{printed}");
        assert_eq!(redis.shown_url(), "redis://user:***@localhost:6379/0");
    }
}
