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

/// One line of `INFO commandstats`: a command's calls and the microseconds
/// Redis spent in it, counting calls made from inside functions.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommandCost {
    pub command: String,
    pub calls: u64,
    pub usec: u64,
}

/// Resets Redis' command statistics (`CONFIG RESETSTAT`).
pub async fn reset_command_stats(client: &Client) -> anyhow::Result<()> {
    let _: () = client.custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"]).await?;
    Ok(())
}

/// Every command's calls and time since the last reset, costliest first.
pub async fn command_stats(client: &Client) -> anyhow::Result<Vec<CommandCost>> {
    let info: String = client.info(Some(fred::types::InfoKind::CommandStats)).await?;
    // Lines look like `cmdstat_xadd:calls=3,usec=12,usec_per_call=4.00,...`.
    let mut costs: Vec<CommandCost> = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let stat = |key: &str| {
                stats
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
            };
            Some(CommandCost {
                command: name.to_owned(),
                calls: stat("calls")?,
                usec: stat("usec")?,
            })
        })
        .collect();
    costs.sort_by_key(|cost| std::cmp::Reverse(cost.usec));
    Ok(costs)
}
