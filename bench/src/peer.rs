//! BullMQ, the peer: runs `bench/bullmq/*.mjs` with node on the same Redis.
//!
//! The scripts need `npm ci` in `bench/bullmq` first; without node or the
//! packages the peer is skipped with a note rather than failing the run.

use std::path::PathBuf;
use std::process::Command;

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bullmq")
}

/// Whether node and the BullMQ packages are there.
pub fn available() -> bool {
    scripts_dir().join("node_modules/bullmq").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
}

/// Runs one script with `args` and parses the JSON line it prints.
pub fn run(script: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let output = Command::new("node")
        .arg(scripts_dir().join(script))
        .args(args)
        .output()?;
    if !output.status.success() {
        anyhow::bail!("{script} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(line)?)
}
