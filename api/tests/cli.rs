//! The `savestream-api` binary from the outside: the committed OpenAPI
//! document matches the code, `--print-openapi` needs nothing, and each way
//! start-up can fail ends with one clear line and the documented exit code.
//!
//! Being an integration test of this package also makes `cargo test
//! --workspace` build the binary that the black-box tests in `tests/` run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_savestream-api");

fn committed_spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

/// The binary in `dir` (an empty temp dir, so no config.toml is found by
/// accident), without the ambient settings that would pick another config.
fn command(args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SAVESTREAM_CONFIG")
        .env_remove("SAVESTREAM_REDIS_URL");
    command
}

/// Runs the binary in `dir`, without colours.
fn run(args: &[&str], dir: &Path) -> Output {
    command(args, dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("running savestream-api")
}

/// Writes a config.toml into `dir` whose Redis (`redis://<userinfo>127.0.0.1:<port>`)
/// nothing listens at, waited for 1 s; returns the port.
fn config_with_unreachable_redis(dir: &Path, userinfo: &str) -> u16 {
    // Nothing listens on a port that was free a moment ago.
    let redis_port = savestream_testkit::free_port();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[api]\nhost = \"127.0.0.1\"\nport = 0\n\n[redis]\nurl = \"redis://{userinfo}127.0.0.1:{redis_port}\"\n\
             startup_wait_seconds = 1\n"
        ),
    )
    .unwrap();
    redis_port
}

fn explain(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--print-openapi"], dir.path());
    assert!(output.status.success(), "{}", explain(&output));
    let generated = String::from_utf8(output.stdout).expect("the spec is UTF-8");
    let committed = std::fs::read_to_string(committed_spec_path()).unwrap_or_default();
    assert!(
        generated.trim_end() == committed.trim_end(),
        "openapi/openapi.json differs from what the code generates: regenerate it with\n\
         \n    cargo run -p savestream-api -- --print-openapi > openapi/openapi.json\n\n\
         and commit it (the generated client in openapi/client is built from it)"
    );
}

#[test]
fn print_openapi_needs_no_config_and_prints_an_openapi_3_document() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &["--print-openapi", "--config", "does-not-exist.toml"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", explain(&output));
    let spec: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the spec is JSON");
    assert!(spec["openapi"].as_str().unwrap_or_default().starts_with("3."));
    assert!(spec["paths"]["/api/v1/tasks"]["post"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn every_operation_has_an_id_and_all_but_the_probes_need_the_bearer_token() {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed_spec_path()).unwrap()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has no operationId: progenitor needs one"
            );
            let secured = operation["security"]
                .as_array()
                .is_some_and(|schemes| schemes.iter().any(|scheme| scheme.get("bearer").is_some()));
            let probe = matches!(path.as_str(), "/health" | "/ready");
            assert_eq!(
                secured, !probe,
                "{method} {path}: security is {}",
                operation["security"]
            );
        }
    }
}

#[test]
fn a_missing_config_exits_2_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--config", "missing.toml"], dir.path());
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{}", explain(&output));
    assert!(
        stderr.contains("missing.toml: config file not found"),
        "{}",
        explain(&output)
    );
}

#[test]
fn a_disabled_api_exits_0_saying_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[api]\nenable = false\n").unwrap();
    let output = run(&[], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the API is disabled"), "{}", explain(&output));
    assert!(stderr.contains("enable"), "{}", explain(&output));
}

#[test]
fn unreachable_redis_is_waited_for_then_exits_1_naming_the_host_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let redis_port = config_with_unreachable_redis(dir.path(), ":hunter2@");
    let output = run(&[], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("redis is not answering: waiting for it"),
        "{}",
        explain(&output)
    );
    assert!(
        stderr.contains(&format!(
            "cannot connect to redis at redis://:***@127.0.0.1:{redis_port}"
        )),
        "{}",
        explain(&output)
    );
    assert!(stderr.contains("[redis] url"), "{}", explain(&output));
    assert!(
        !stderr.contains("hunter2"),
        "the password leaked: {}",
        explain(&output)
    );
}

#[test]
fn log_lines_to_a_pipe_carry_no_colour_codes() {
    // Arrange: a start-up that logs (it waits for a Redis that is not
    // there), with stderr a pipe and NO_COLOR unset.
    let dir = tempfile::tempdir().unwrap();
    config_with_unreachable_redis(dir.path(), "");

    // Act
    let output = command(&[], dir.path())
        .env_remove("NO_COLOR")
        .output()
        .expect("running savestream-api");

    // Assert: log lines, and not one escape code among them.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WARN"), "{}", explain(&output));
    assert!(!stderr.contains('\x1b'), "colour codes in a pipe: {stderr:?}");
}
