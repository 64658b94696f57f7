//! Redis' own view of a run: CPU seconds and memory, from `INFO`.

use fred::prelude::*;

/// A client for `INFO` on the benchmark's Redis.
pub async fn info_client(url: &str) -> anyhow::Result<Client> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

fn field(info: &str, name: &str) -> anyhow::Result<f64> {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO has no {name}"))
}

/// User plus system CPU seconds the Redis server has used so far.
pub async fn cpu_seconds(client: &Client) -> anyhow::Result<f64> {
    let info: String = client.info(Some(fred::types::InfoKind::Cpu)).await?;
    Ok(field(&info, "used_cpu_user")? + field(&info, "used_cpu_sys")?)
}

/// Bytes of memory the dataset uses (`used_memory`).
pub async fn used_memory(client: &Client) -> anyhow::Result<f64> {
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    field(&info, "used_memory")
}
