//! The `savestream` binary from the outside, with no API running: its help
//! names every subcommand, and each way it cannot do its job ends with one
//! clear line on stderr and the exit code that says which way: 1 when the
//! API cannot be reached, 3 when `watch` cannot follow its task.
//!
//! Being an integration test of this package also makes `cargo test
//! --workspace` build `target/debug/savestream`, which the black-box tests in
//! `tests/` run against real APIs.

use std::path::Path;
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_savestream");

/// Runs the binary in `dir` with no ambient savestream settings and an
/// empty standard input.
fn run(args: &[&str], dir: &Path) -> Output {
    run_with(args, dir, b"", &[])
}

fn explain(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks that the command failed with exit code 1 and exactly one line on
/// stderr, and returns that line.
fn one_line_error(output: &Output) -> String {
    one_line_error_with(output, 1)
}

/// Checks that the command failed with exit code `code` and exactly one
/// line on stderr, and returns that line.
fn one_line_error_with(output: &Output, code: i32) -> String {
    assert_eq!(output.status.code(), Some(code), "{}", explain(output));
    assert!(output.stdout.is_empty(), "{}", explain(output));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", explain(output));
    let line = lines[0].to_owned();
    assert!(line.starts_with("savestream: "), "{line}");
    assert!(!line.ends_with('.'), "error lines end without a period: {line}");
    line
}

/// A loopback URL where nothing listens: a port bound and released.
fn nothing_listens() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let port = listener.local_addr().expect("a bound address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn help_names_every_subcommand_and_the_connection_settings() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--help"], dir.path());
    assert!(output.status.success(), "{}", explain(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    for word in [
        "up",
        "add",
        "status",
        "ls",
        "cancel",
        "workers",
        "watch",
        "--url",
        "--token",
        "SAVESTREAM_URL",
        "SAVESTREAM_TOKEN",
    ] {
        assert!(help.contains(word), "--help does not mention {word}:\n{help}");
    }
}

#[test]
fn an_unreachable_api_is_one_line_that_says_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();
    for args in [
        vec!["ls"],
        vec!["status", "d4mq2nk0h9pc73b0qpag"],
        vec!["cancel", "d4mq2nk0h9pc73b0qpag"],
        vec!["workers"],
        vec!["watch", "d4mq2nk0h9pc73b0qpag"],
        vec!["add", "https://example.com/a.zip", "--user", "1"],
    ] {
        let mut with_url = vec!["--url", url.as_str()];
        with_url.extend(args.iter().copied());
        // `watch` cannot tell how the task ends: not 1, which says it failed.
        let code = if args[0] == "watch" { 3 } else { 1 };
        let line = one_line_error_with(&run(&with_url, dir.path()), code);
        assert_eq!(
            line,
            format!(
                "savestream: cannot reach the API at {url}: is it running? start it with `savestream up`"
            ),
            "savestream {}",
            args.join(" ")
        );
    }
}

#[test]
fn a_name_that_does_not_resolve_is_named_with_the_cause_not_taken_for_an_api_not_running() {
    let dir = tempfile::tempdir().unwrap();
    // `.invalid` never resolves (RFC 2606).
    let url = "http://savestream-api.invalid:8080";

    let line = one_line_error(&run(&["--url", url, "ls"], dir.path()));

    assert!(
        line.starts_with(&format!("savestream: cannot reach the API at {url}: ")),
        "{line}"
    );
    assert!(!line.contains("is it running"), "{line}");
    assert!(!line.contains("savestream up"), "{line}");
    assert!(
        line.len() > format!("savestream: cannot reach the API at {url}: ").len(),
        "the cause is named: {line}"
    );
}

#[test]
fn the_url_also_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();
    let output = Command::new(BINARY)
        .arg("ls")
        .current_dir(dir.path())
        .env("SAVESTREAM_URL", &url)
        .output()
        .expect("running savestream");
    let line = one_line_error(&output);
    assert!(line.contains(&url), "{line}");
}

/// The exit code of a bad command line, as clap gives for its own usage errors.
const USAGE: i32 = 2;

#[test]
fn a_link_that_is_neither_telegram_nor_http_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let line = one_line_error_with(
        &run(
            &[
                "--url",
                &nothing_listens(),
                "add",
                "example.com/a.zip",
                "--user",
                "1",
            ],
            dir.path(),
        ),
        USAGE,
    );
    assert!(
        line.contains("neither a Telegram message link") && line.contains("nor an http(s) link"),
        "{line}"
    );
}

#[test]
fn a_dash_among_links_or_no_links_on_standard_input_is_a_bad_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();
    let mixed = run(
        &[
            "--url",
            &url,
            "add",
            "-",
            "https://example.com/a.zip",
            "--user",
            "1",
        ],
        dir.path(),
    );
    let empty = run(&["--url", &url, "add", "-", "--user", "1"], dir.path());

    assert!(
        one_line_error_with(&mixed, USAGE).contains("give it alone"),
        "{}",
        explain(&mixed)
    );
    assert!(
        one_line_error_with(&empty, USAGE).contains("standard input held no links"),
        "{}",
        explain(&empty)
    );
}

#[test]
fn a_url_that_is_not_http_is_refused_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["localhost:8080", "127.0.0.1:8080"] {
        for command in ["ls", "watch"] {
            let mut args = vec!["--url", url, command];
            if command == "watch" {
                args.push("d4mq2nk0h9pc73b0qpag");
            }
            let line = one_line_error_with(&run(&args, dir.path()), USAGE);
            assert!(line.contains("--url (SAVESTREAM_URL)"), "{line}");
            assert!(line.contains("http://127.0.0.1:8080"), "{line}");
        }
    }
}

/// Runs the binary in `dir` with `input` on its standard input and `env`
/// set, none of the ambient savestream settings.
fn run_with(args: &[&str], dir: &Path, input: &[u8], env: &[(&str, &str)]) -> Output {
    use std::io::Write as _;
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SAVESTREAM_URL")
        .env_remove("SAVESTREAM_TOKEN")
        .env_remove("SAVESTREAM_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("running savestream");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    // The binary may exit before reading it all: a broken pipe is no failure here.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("waiting on savestream")
}

#[test]
fn several_links_on_one_line_or_a_line_that_is_not_utf8_is_a_usage_error_naming_the_line() {
    // Nothing listens at the URL: each error must come before any request.
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();
    let add = ["--url", url.as_str(), "add", "-", "--user", "1"];

    let two_on_a_line = run_with(
        &add,
        dir.path(),
        b"# my links\nhttps://example.com/a.txt\n\nhttps://example.com/a.txt http://example.com/b.txt\n",
        &[],
    );
    let not_utf8 = run_with(
        &add,
        dir.path(),
        b"https://example.com/a.txt\nhttps://example.com/caf\xe9.txt\n",
        &[],
    );
    let comments_only = run_with(&add, dir.path(), b"# my links\n   # none yet\n", &[]);

    let line = one_line_error_with(&two_on_a_line, USAGE);
    assert!(
        line.starts_with("savestream: line 4 of standard input: `https://example.com/a.txt http://example.com/b.txt` has whitespace"),
        "{line}"
    );
    assert!(line.contains("one link per line"), "{line}");
    let line = one_line_error_with(&not_utf8, USAGE);
    assert!(
        line.starts_with("savestream: line 2 of standard input is not UTF-8 text"),
        "{line}"
    );
    let line = one_line_error_with(&comments_only, USAGE);
    assert!(line.contains("standard input held no links"), "{line}");
}

#[test]
fn a_comment_line_is_skipped_not_taken_for_a_link() {
    // The comment is skipped and the link after it is sent: to a port
    // where nothing listens, so `add` fails reaching the API (1), not on
    // the comment (2).
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();
    let output = run_with(
        &["--url", &url, "add", "-", "--user", "1"],
        dir.path(),
        b"# my links\nhttps://example.com/a.txt\n",
        &[],
    );
    let line = one_line_error(&output);
    assert!(line.contains("cannot reach the API"), "{line}");
}

#[test]
fn usage_errors_do_not_show_url_and_token_as_required_even_when_set_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SAVESTREAM_URL", "http://admin:hunter2@127.0.0.1:9"),
        ("SAVESTREAM_TOKEN", "secret-token-7c1"),
    ];

    let output = run_with(&["add"], dir.path(), b"", &env);

    assert_eq!(output.status.code(), Some(USAGE), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let usage = stderr
        .lines()
        .find(|line| line.starts_with("Usage: "))
        .unwrap_or_else(|| panic!("no usage line: {stderr}"));
    assert!(!usage.contains("--url") && !usage.contains("--token"), "{usage}");
    assert!(usage.contains("--user <USER>"), "{usage}");
}

#[test]
fn a_password_in_the_url_is_shown_neither_in_errors_nor_in_the_help() {
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens().replacen("http://", "http://admin:hunter2@", 1);
    let env = [("SAVESTREAM_URL", url.as_str())];

    let from_flag = run(&["--url", &url, "ls"], dir.path());
    let from_env = run_with(&["ls"], dir.path(), b"", &env);
    let not_a_url = run(&["--url", "admin:hunter2@127.0.0.1:9", "ls"], dir.path());
    let help = run_with(&["--help"], dir.path(), b"", &env);

    let shown = url.replacen("hunter2", "***", 1);
    for output in [&from_flag, &from_env] {
        let line = one_line_error(output);
        assert_eq!(
            line,
            format!(
                "savestream: cannot reach the API at {shown}: is it running? start it with `savestream up`"
            )
        );
    }
    let line = one_line_error_with(&not_a_url, USAGE);
    assert!(
        line.contains("`admin:***@127.0.0.1:9`") && !line.contains("hunter2"),
        "{line}"
    );
    assert!(help.status.success(), "{}", explain(&help));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains("hunter2"), "{help}");
    assert!(help.contains("[env: SAVESTREAM_URL]"), "{help}");
    assert!(help.contains("[default: http://127.0.0.1:8080]"), "{help}");
}

#[test]
fn up_with_a_missing_or_invalid_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[api]\nport = \"not a number\"\n").unwrap();

    let missing = run(&["up", "--config", "missing.toml"], dir.path());
    let invalid = run(&["up", "--config", "bad.toml"], dir.path());

    for output in [&missing, &invalid] {
        assert_eq!(output.status.code(), Some(USAGE), "{}", explain(output));
        assert!(
            !dir.path().join(".savestream").exists(),
            "nothing is started for a bad config: {}",
            explain(output)
        );
    }
}

#[test]
fn up_neither_offers_nor_takes_url_and_token_which_the_other_subcommands_take_after_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let url = nothing_listens();

    let up_help = run(&["up", "--help"], dir.path());
    let up_with_url = run(&["--url", &url, "up", "--config", "missing.toml"], dir.path());
    let up_with_token = run(&["--token", "t", "up", "--config", "missing.toml"], dir.path());
    let ls_help = run(&["ls", "--help"], dir.path());
    let ls_with_url_after = run(&["ls", "--url", &url], dir.path());

    assert!(up_help.status.success(), "{}", explain(&up_help));
    let up_help = String::from_utf8_lossy(&up_help.stdout);
    assert!(
        !up_help.contains("--url") && !up_help.contains("--token"),
        "{up_help}"
    );
    for output in [&up_with_url, &up_with_token] {
        let line = one_line_error_with(output, USAGE);
        assert!(line.contains("`up` takes neither --url nor --token"), "{line}");
    }
    assert!(ls_help.status.success(), "{}", explain(&ls_help));
    let ls_help = String::from_utf8_lossy(&ls_help.stdout);
    assert!(
        ls_help.contains("--url") && ls_help.contains("--token"),
        "{ls_help}"
    );
    let line = one_line_error(&ls_with_url_after);
    assert!(line.contains(&format!("cannot reach the API at {url}")), "{line}");
}
