//! config.toml loading through real files: the example, SaveAny-Bot files,
//! every error message, the environment overlay and user storage resolution.

// Inside a module so `cargo test -p savestream-shared config` selects these.
mod config {
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use savestream_shared::config::{Config, ConfigError, Loaded, Secret, StorageKind};

    const TOKEN_WARNING: &str = "api.token is empty: the API accepts requests without authentication";
    const NO_USERS_WARNING: &str =
        "no [[users]] configured: the API refuses every task until a user is added";

    /// A valid base the table-driven cases append to or replace.
    const BASE: &str = r#"
[api]
token = "secret-token"

[[storages]]
name = "local1"
type = "local"
base_path = "./downloads"

[[users]]
id = 42
storages = ["local1"]
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Writes `text` to `<tmp>/config.toml` and loads it. Errors are returned
    /// as their Display; in errors and warnings the temporary path is shortened
    /// to `config.toml`.
    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let shown = path.display().to_string();
        match Config::load_with_env(&path, env(vars)) {
            Ok(mut loaded) => {
                for warning in &mut loaded.warnings {
                    *warning = warning.replace(&shown, "config.toml");
                }
                Ok(loaded)
            }
            Err(error) => Err(error.to_string().replace(&shown, "config.toml")),
        }
    }

    fn names(storages: Vec<&savestream_shared::config::StorageConfig>) -> Vec<&str> {
        storages
            .into_iter()
            .map(|storage| storage.name.as_str())
            .collect()
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml")
    }

    #[test]
    fn example_file_loads_with_only_the_empty_token_warning() {
        let loaded = Config::load_with_env(&example_path(), env(&[])).unwrap();
        assert_eq!(loaded.warnings, vec![TOKEN_WARNING.to_owned()]);
        let config = loaded.config;
        assert_eq!(names(config.storages_for_user(123456789)), ["local1"]);
        let local1 = config.storage("local1").unwrap();
        assert_eq!(local1.kind, StorageKind::Local);
        assert_eq!(local1.base_path, PathBuf::from("./downloads"));
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
        assert!(config.telegram.token.is_empty());
        assert_eq!(config.telegram.app_id, None);
        assert_eq!(config.api.listen_addr(), "0.0.0.0:8080");
    }

    #[test]
    fn sections_left_out_take_their_defaults() {
        let loaded = load(
            "[[storages]]\nname = \"a\"\ntype = \"local\"\nbase_path = \"/srv\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            loaded.warnings,
            vec![TOKEN_WARNING.to_owned(), NO_USERS_WARNING.to_owned()]
        );
        let c = loaded.config;
        assert!(c.storages[0].enable, "storages default to enabled");
        assert_eq!((c.workers, c.threads, c.retry), (3, 4, 3));
        assert!(c.api.enable);
        assert_eq!((c.api.host.as_str(), c.api.port), ("0.0.0.0", 8080));
        assert!(c.api.token.is_empty() && c.api.webhook_url.is_none() && c.api.webhook_secret.is_none());
        assert!(!c.telegram.userbot.enable);
        assert_eq!(c.telegram.userbot.session, PathBuf::from("data/usersession.db"));
        assert!(!c.telegram.proxy.enable && c.telegram.proxy.url.is_none());
        assert_eq!(
            (c.redis.url.as_str(), c.redis.prefix.as_str()),
            ("redis://127.0.0.1:6379", "savestream")
        );
        assert_eq!((c.queue.lease_seconds, c.queue.retention_hours), (30, 168));
        assert_eq!(c.queue.lease(), std::time::Duration::from_secs(30));
        assert_eq!(c.queue.retention(), std::time::Duration::from_secs(168 * 3600));
        assert!(!c.http.allow_private_networks);
        assert_eq!(
            (c.worker.metrics_port, c.worker.shutdown_grace_seconds),
            (None, 30)
        );
        assert_eq!(
            (
                c.webhook.max_attempts,
                c.webhook.span_hours,
                c.webhook.concurrency
            ),
            (10, 24, 8)
        );
        assert!(c.users.is_empty());
        assert!(
            c.storages_for_user(1).is_empty(),
            "with no users nobody gets a storage"
        );
    }

    #[test]
    fn an_empty_file_loads() {
        let loaded = load("", &[]).unwrap();
        assert!(loaded.config.storages.is_empty());
        assert_eq!(loaded.warnings.len(), 2);
    }

    /// Shaped like SaveAny-Bot's config.example.toml and docs, with most of
    /// its sections.
    const SAVEANY: &str = r#"
lang = "en"
workers = 4
retry = 3
threads = 4
stream = false
no_clean_cache = false
proxy = "socks5://127.0.0.1:7890"

[telegram]
token = ""
rpc_retry = 5
flood_retry = 5
[telegram.proxy]
enable = false
url = "socks5://127.0.0.1:7890"

[[storages]]
name = "本机1"
type = "local"
enable = true
base_path = "./downloads"

[[storages]]
name = "MyWebdav"
type = "webdav"
enable = false
base_path = '/path/telegram'
url = 'https://example.com/dav'
username = 'username'
password = 'password'

[[storages]]
name = "second"
type = "local"
base_path = "./second"
url = "https://leftover.example"

[[users]]
id = 114514
storages = []
blacklist = true

[[users]]
id = 123456
storages = ["本机1", "MyWebdav"]
blacklist = false

[aria2]
enable = true
url = "http://localhost:6800/jsonrpc"

[ytdlp]
max_height = 1080

[parser]
plugin_enable = true

[hook.exec]
task_success = "echo done"

[temp]
base_path = "cache/"

[db]
path = "data/saveany.db"

[log]
level = "INFO"
"#;

    #[test]
    fn saveany_bot_file_loads_with_one_warning_naming_the_ignored_keys() {
        let loaded = load(SAVEANY, &[]).unwrap();
        let ignored: Vec<&String> = loaded
            .warnings
            .iter()
            .filter(|w| w.contains("ignoring"))
            .collect();
        assert_eq!(ignored.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(
            ignored[0].split(": ").skip(2).collect::<Vec<_>>().join(": "),
            "lang, stream, no_clean_cache, proxy, aria2, ytdlp, parser, hook, temp, db, log, \
             telegram.rpc_retry, telegram.flood_retry, storages[1], storages[2].url",
            "{}",
            ignored[0]
        );
        assert!(ignored[0]
            .starts_with("config.toml: ignoring SaveAny-Bot settings savestream does not use: lang, "));

        let c = loaded.config;
        assert_eq!(c.workers, 4);
        assert_eq!(
            names(c.storages.iter().collect()),
            ["本机1", "second"],
            "the disabled webdav entry is dropped"
        );
        assert_eq!(
            names(c.storages_for_user(114514)),
            ["本机1", "second"],
            "blacklist with nothing listed: all"
        );
        assert_eq!(
            names(c.storages_for_user(123456)),
            ["本机1"],
            "disabled storages never count"
        );
    }

    #[test]
    fn invalid_files_fail_with_one_line_naming_file_and_key() {
        let cases: &[(&str, String, &str)] = &[
            (
                "typo in a section",
                BASE.replace("token = ", "tokn = "),
                r#"config.toml: api.tokn: unknown key (did you mean "token"?)"#,
            ),
            ("typo at the top", format!("wrokers = 2\n{BASE}"), r#"config.toml: wrokers: unknown key (did you mean "workers"?)"#),
            (
                "unknown key far from any",
                BASE.replace("[api]", "[api]\nfavourite_colour = 1"),
                "config.toml: api.favourite_colour: unknown key: expected one of enable, host, port, token, webhook_url, webhook_secret, live_stream_max_seconds",
            ),
            (
                "typo in a nested table",
                format!("{BASE}\n[telegram.userbot]\nsesion = \"x\"\n"),
                r#"config.toml: telegram.userbot.sesion: unknown key (did you mean "session"?)"#,
            ),
            (
                "typo in a storage",
                BASE.replace("base_path", "base_pth"),
                r#"config.toml: storages[0].base_pth: unknown key (did you mean "base_path"?)"#,
            ),
            (
                "unknown section",
                format!("{BASE}\n[reddis]\nurl = \"redis://x\"\n"),
                r#"config.toml: reddis: unknown key (did you mean "redis"?)"#,
            ),
            (
                "duplicate storage names",
                format!("{BASE}\n[[storages]]\nname = \"local1\"\ntype = \"local\"\nbase_path = \"/x\"\n"),
                r#"config.toml: storages[1].name: duplicate storage name "local1": storage names must be unique"#,
            ),
            (
                "user names a storage that does not exist",
                BASE.replace(r#"storages = ["local1"]"#, r#"storages = ["local1", "nas"]"#),
                r#"config.toml: users[0].storages[1]: unknown storage "nas": it must name a [[storages]] entry"#,
            ),
            (
                "whitelist resolves to nothing",
                format!("{}\n[[storages]]\nname = \"off\"\ntype = \"local\"\nenable = false\nbase_path = \"/x\"\n", BASE.replace(r#"storages = ["local1"]"#, r#"storages = ["off"]"#)),
                "config.toml: users[0].storages: user 42 can use no enabled storage: the list names no enabled storage (or set blacklist = true with an empty list to allow all)",
            ),
            (
                "blacklist excludes everything",
                BASE.replace(r#"storages = ["local1"]"#, "storages = [\"local1\"]\nblacklist = true"),
                "config.toml: users[0].storages: user 42 can use no enabled storage: the blacklist excludes every enabled storage",
            ),
            (
                "duplicate user",
                format!("{BASE}\n[[users]]\nid = 42\nstorages = [\"local1\"]\n"),
                "config.toml: users[1].id: duplicate user id 42: each user may appear once",
            ),
            (
                "typo in a user",
                BASE.replace("id = 42", "ids = 42"),
                r#"config.toml: users[0].ids: unknown key (did you mean "id"?)"#,
            ),
            (
                "typo in the proxy",
                format!("{BASE}\n[telegram.proxy]\nenable = true\nulr = \"socks5://p:1\"\n"),
                r#"config.toml: telegram.proxy.ulr: unknown key (did you mean "url"?)"#,
            ),
            (
                "redis over TLS",
                format!("{BASE}\n[redis]\nurl = \"rediss://r:6379\"\n"),
                "config.toml: redis.url: rediss:// (TLS) is not supported by this build: use redis://",
            ),
            (
                "redis url of another scheme",
                format!("{BASE}\n[redis]\nurl = \"http://user:hunter2@localhost\"\n"),
                "config.toml: redis.url: must start with redis://, redis-cluster:// or redis-sentinel://",
            ),
            ("user without id", format!("{BASE}\n[[users]]\nstorages = []\n"), "config.toml: users[1].id: missing (the user's numeric Telegram id)"),
            ("negative user id", BASE.replace("id = 42", "id = -42"), "config.toml: users[0].id: must be between 1 and 9223372036854775807, found -42"),
            (
                "port of the wrong type",
                BASE.replace("[api]", "[api]\nport = \"x\""),
                "config.toml: api.port: expected a port number (an integer from 0 to 65535), found a string",
            ),
            ("port out of range", BASE.replace("[api]", "[api]\nport = 70000"), "config.toml: api.port: 70000 is not a valid port number (0 to 65535)"),
            ("workers of the wrong type", format!("workers = \"3\"\n{BASE}"), "config.toml: workers: expected an integer from 1 to 256, found a string"),
            ("workers out of range", format!("workers = 0\n{BASE}"), "config.toml: workers: must be between 1 and 256, found 0"),
            ("threads out of range", format!("threads = 65\n{BASE}"), "config.toml: threads: must be between 1 and 64, found 65"),
            ("lease too short", format!("{BASE}\n[queue]\nlease_seconds = 4\n"), "config.toml: queue.lease_seconds: must be between 5 and 3600, found 4"),
            ("retention zero", format!("{BASE}\n[queue]\nretention_hours = 0\n"), "config.toml: queue.retention_hours: must be between 1 and 876000, found 0"),
            ("bool of the wrong type", BASE.replace("[api]", "[api]\nenable = \"yes\""), "config.toml: api.enable: expected true or false, found a string"),
            ("section of the wrong type", format!("redis = \"redis://x\"\n{BASE}"), "config.toml: redis: expected a table, found a string"),
            (
                "storages of the wrong shape",
                "[storages]\nname = \"x\"\n".to_owned(),
                "config.toml: storages: expected an array of tables ([[storages]]), found a table",
            ),
            (
                "user storages of the wrong type",
                BASE.replace(r#"storages = ["local1"]"#, "storages = [1]"),
                "config.toml: users[0].storages[0]: expected a string, found an integer",
            ),
            (
                "enabled storage of another type",
                BASE.replace("type = \"local\"", "type = \"webdav\""),
                r#"config.toml: storages[0].type: storage type "webdav" is not supported: only "local" is supported now (set enable = false to keep this entry)"#,
            ),
            ("storage without type", BASE.replace("type = \"local\"\n", ""), r#"config.toml: storages[0].type: missing (set type = "local")"#),
            ("storage without base_path", BASE.replace("base_path = \"./downloads\"\n", ""), "config.toml: storages[0].base_path: missing (the directory files are saved under)"),
            ("storage with empty name", BASE.replace("name = \"local1\"", "name = \"\""), "config.toml: storages[0].name: must not be empty (a unique name users and tasks refer to)"),
            (
                "webhook url not http",
                BASE.replace("[api]", "[api]\nwebhook_url = \"ftp://example.com/x\""),
                r#"config.toml: api.webhook_url: must be an http or https URL, found scheme "ftp""#,
            ),
            (
                "webhook url not a url",
                BASE.replace("[api]", "[api]\nwebhook_url = \"example.com/hook\""),
                "config.toml: api.webhook_url: not a valid URL: relative URL without a base",
            ),
            (
                "proxy enabled without url",
                format!("{BASE}\n[telegram.proxy]\nenable = true\n"),
                "config.toml: telegram.proxy.url: missing: required when enable = true",
            ),
            (
                "proxy of an unknown scheme",
                format!("{BASE}\n[telegram.proxy]\nurl = \"ftp://proxy:21\"\n"),
                r#"config.toml: telegram.proxy.url: unsupported proxy scheme "ftp": use socks5://, socks5h://, http:// or https://"#,
            ),
            ("redis prefix with a colon", format!("{BASE}\n[redis]\nprefix = \"a:b\"\n"), "config.toml: redis.prefix: must not contain '{', '}', ':' or whitespace"),
            ("redis prefix with a brace", format!("{BASE}\n[redis]\nprefix = \"{{a}}\"\n"), "config.toml: redis.prefix: must not contain '{', '}', ':' or whitespace"),
            ("empty redis prefix", format!("{BASE}\n[redis]\nprefix = \"\"\n"), "config.toml: redis.prefix: must not be empty"),
            ("app_id of zero", format!("{BASE}\n[telegram]\napp_id = 0\n"), "config.toml: telegram.app_id: must be between 1 and 2147483647, found 0"),
            ("metrics port of the wrong type", format!("{BASE}\n[worker]\nmetrics_port = 9100.5\n"), "config.toml: worker.metrics_port: expected a port number (an integer from 0 to 65535), found a float"),
            ("webhook attempts zero", format!("{BASE}\n[webhook]\nmax_attempts = 0\n"), "config.toml: webhook.max_attempts: must be between 1 and 100, found 0"),
            ("syntax error", format!("{BASE}\n[api\n"), "config.toml:14:5: invalid TOML: unclosed table, expected `]`"),
            ("duplicate key", format!("workers = 1\nworkers = 2\n{BASE}"), "config.toml:2:1: invalid TOML: duplicate key"),
        ];
        for (name, text, expected) in cases {
            let error = load(text, &[]).err().unwrap_or_else(|| panic!("{name}: loaded"));
            assert_eq!(&error, expected, "{name}");
            assert!(!error.contains('\n'), "{name}: one line");
        }
    }

    #[test]
    fn redis_url_errors_do_not_echo_the_url() {
        let text = format!("{BASE}\n[redis]\nurl = \"redis://user:hunter2@:6379\"\n");
        let error = load(&text, &[]).unwrap_err();
        assert!(
            error == "config.toml: redis.url: not a valid Redis URL: empty host",
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn missing_file_names_it_and_points_at_the_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let error = Config::load_with_env(&path, env(&[])).unwrap_err();
        assert_eq!(
            error,
            ConfigError::NotFound {
                path: path.display().to_string()
            }
        );
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("{}: config file not found: ", path.display())),
            "{shown}"
        );
        assert!(shown.contains("copy config.example.toml"), "{shown}");
    }

    #[test]
    fn unreadable_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let error = Config::load_with_env(dir.path(), env(&[])).unwrap_err();
        assert!(matches!(error, ConfigError::Unreadable { .. }), "{error:?}");
        assert!(error.to_string().starts_with(&format!(
            "{}: cannot read the config file: ",
            dir.path().display()
        )));

        let binary = dir.path().join("config.toml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let error = Config::load_with_env(&binary, env(&[])).unwrap_err();
        assert!(matches!(error, ConfigError::Unreadable { .. }), "{error:?}");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        assert!(load(&format!("\u{feff}{BASE}"), &[]).is_ok());
    }

    #[test]
    fn environment_overrides_the_file() {
        let loaded = load(
            &format!(
                "workers = 2\n{BASE}\n[redis]\nurl = \"redis://file:6379\"\n[worker]\nmetrics_port = 9100\n"
            ),
            &[
                ("SAVESTREAM_API_TOKEN", "from-env"),
                ("SAVESTREAM_REDIS_URL", "redis://redis.internal:6380/2"),
                ("SAVESTREAM_WORKERS", "7"),
                ("SAVESTREAM_TELEGRAM_USERBOT_SESSION", "/data/user.session"),
                ("SAVESTREAM_API_PORT", " 0 "),
                ("SAVESTREAM_HTTP_ALLOW_PRIVATE_NETWORKS", "true"),
                ("SAVESTREAM_WORKER_METRICS_PORT", ""),
                ("SAVESTREAM_API_WEBHOOK_URL", "https://hooks.example/x"),
                ("SAVESTREAM_CONFIG", "/etc/savestream.toml"),
                ("OTHER_VARIABLE", "ignored"),
            ],
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.api.token.expose(), "from-env");
        assert_eq!(c.redis.url, "redis://redis.internal:6380/2");
        assert_eq!(c.workers, 7);
        assert_eq!(c.telegram.userbot.session, PathBuf::from("/data/user.session"));
        assert_eq!(c.api.port, 0);
        assert!(c.http.allow_private_networks);
        assert_eq!(
            c.worker.metrics_port, None,
            "an empty value unsets an optional key"
        );
        assert_eq!(c.api.webhook_url.unwrap().as_str(), "https://hooks.example/x");
    }

    #[test]
    fn environment_empty_token_still_warns() {
        let loaded = load(BASE, &[("SAVESTREAM_API_TOKEN", "")]).unwrap();
        assert_eq!(loaded.warnings, vec![TOKEN_WARNING.to_owned()]);
    }

    #[test]
    fn unknown_environment_variables_warn_once() {
        let loaded = load(BASE, &[("SAVESTREAM_API_TOKN", "x"), ("SAVESTREAM_LANG", "en")]).unwrap();
        assert_eq!(
            loaded.warnings,
            vec![
                "ignoring unknown environment variables: SAVESTREAM_API_TOKN, SAVESTREAM_LANG \
                  (config keys are set by SAVESTREAM_<SECTION>_<KEY>)"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "SAVESTREAM_API_PORT",
                "abc",
                r#"SAVESTREAM_API_PORT: "abc" is not a valid port number"#,
            ),
            (
                "SAVESTREAM_API_PORT",
                "70000",
                r#"SAVESTREAM_API_PORT: "70000" is not a valid port number"#,
            ),
            (
                "SAVESTREAM_WORKERS",
                "many",
                r#"SAVESTREAM_WORKERS: "many" is not a valid integer"#,
            ),
            (
                "SAVESTREAM_WORKERS",
                "",
                r#"SAVESTREAM_WORKERS: "" is not a valid integer"#,
            ),
            (
                "SAVESTREAM_WORKERS",
                "0",
                "SAVESTREAM_WORKERS: must be between 1 and 256, found 0",
            ),
            (
                "SAVESTREAM_HTTP_ALLOW_PRIVATE_NETWORKS",
                "maybe",
                r#"SAVESTREAM_HTTP_ALLOW_PRIVATE_NETWORKS: "maybe" is not a valid boolean (use true or false)"#,
            ),
            (
                "SAVESTREAM_REDIS_PREFIX",
                "a b",
                "SAVESTREAM_REDIS_PREFIX: must not contain '{', '}', ':' or whitespace",
            ),
            (
                "SAVESTREAM_API_WEBHOOK_URL",
                "ftp://x/y",
                r#"SAVESTREAM_API_WEBHOOK_URL: must be an http or https URL, found scheme "ftp""#,
            ),
            (
                "SAVESTREAM_QUEUE_LEASE_SECONDS",
                "3601",
                "SAVESTREAM_QUEUE_LEASE_SECONDS: must be between 5 and 3600, found 3601",
            ),
        ];
        for (var, value, expected) in cases {
            let error = load(BASE, &[(var, value)]).unwrap_err();
            assert_eq!(&error, expected, "{var}={value:?}");
        }
    }

    #[test]
    fn environment_creates_sections_the_file_leaves_out() {
        let loaded = load(
            BASE,
            &[
                ("SAVESTREAM_WEBHOOK_CONCURRENCY", "2"),
                ("SAVESTREAM_TELEGRAM_APP_ID", "123"),
            ],
        )
        .unwrap();
        assert_eq!(loaded.config.webhook.concurrency, 2);
        assert_eq!(loaded.config.telegram.app_id, Some(123));
    }

    #[test]
    fn storages_for_user_applies_whitelist_blacklist_and_config_order() {
        let text = r#"
[[storages]]
name = "a"
type = "local"
base_path = "/a"
[[storages]]
name = "b"
type = "local"
base_path = "/b"
[[storages]]
name = "off"
type = "local"
enable = false
base_path = "/off"
[[storages]]
name = "d"
type = "local"
base_path = "/d"

[[users]]
id = 1
storages = ["d", "b", "off"]
[[users]]
id = 2
storages = ["b"]
blacklist = true
[[users]]
id = 3
storages = []
blacklist = true
"#;
        let c = load(text, &[]).unwrap().config;
        assert_eq!(
            names(c.storages_for_user(1)),
            ["b", "d"],
            "whitelist, in config order, default first"
        );
        assert_eq!(
            names(c.storages_for_user(2)),
            ["a", "d"],
            "blacklist: all enabled but the listed"
        );
        assert_eq!(
            names(c.storages_for_user(3)),
            ["a", "b", "d"],
            "empty blacklist: all enabled"
        );
        assert!(c.storages_for_user(4).is_empty(), "unknown user");
        assert_eq!(c.user(2).map(|u| u.blacklist), Some(true));
        assert!(c.user(4).is_none());
        assert!(
            !c.storage("off").unwrap().enable,
            "disabled storages stay visible by name"
        );
        assert!(c.storage("nope").is_none());
    }

    #[test]
    fn secrets_are_never_printed() {
        let text = format!(
            "{}\n[telegram]\napp_hash = \"hash-value\"\ntoken = \"bot-token\"\n",
            BASE.replace("[api]", "[api]\nwebhook_secret = \"signing-key\"")
        );
        let loaded = load(&text, &[]).unwrap();
        let printed = format!("{loaded:?} {:#?}", loaded.config);
        for secret in ["secret-token", "hash-value", "bot-token", "signing-key"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(printed.contains("[redacted]"));
        let c = loaded.config;
        assert_eq!(
            c.api.webhook_secret.as_ref().map(Secret::expose),
            Some("signing-key")
        );
        assert_eq!(c.telegram.app_hash.to_string(), "[redacted]");
        assert_eq!(c.telegram.token.expose(), "bot-token");
    }

    proptest! {
        #[test]
        fn secret_debug_and_display_hide_any_value(value in "[a-zA-Z0-9:_-]{1,40}") {
            prop_assume!(!"[redacted]".contains(value.as_str()));
            let secret = Secret::new(value.clone());
            prop_assert_eq!(format!("{secret:?}"), "[redacted]");
            prop_assert_eq!(secret.to_string(), "[redacted]");
            prop_assert_eq!(secret.expose(), value.as_str());
        }

        #[test]
        fn workers_from_the_environment_are_range_checked(workers in -10i64..300) {
            let value = workers.to_string();
            let result = Config::from_toml_str(BASE, "config.toml", env(&[("SAVESTREAM_WORKERS", &value)]));
            if (1..=256).contains(&workers) {
                prop_assert_eq!(result.unwrap().config.workers as i64, workers);
            } else {
                prop_assert_eq!(
                    result.unwrap_err().to_string(),
                    format!("SAVESTREAM_WORKERS: must be between 1 and 256, found {workers}")
                );
            }
        }
    }
}
