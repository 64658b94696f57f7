//! The processes a benchmark runs or measures: the release binaries next to
//! the benchmark's own (`sibling`), a child that is killed when dropped
//! (`Killed`), a process's CPU time from `/proc` (`cpu_seconds`), the
//! time the machine's cores sat idle (`idle_seconds`) and the time the
//! hypervisor gave them to others (`steal_seconds`).

use std::path::PathBuf;
use std::process::Child;

/// A child process, killed and reaped when dropped, so a failed benchmark
/// leaves no API or worker running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of a release binary built next to this benchmark.
pub fn sibling(binary: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(binary);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release --bins",
        path.display()
    );
    Ok(path)
}

/// User plus system CPU seconds a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis are numbered from 3.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index - 3)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat is short"))?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Seconds the machine's cores have spent idle (idle plus waiting on I/O),
/// summed over the cores, from the `cpu` line of `/proc/stat`. Between two
/// readings it tells how much of the machine a run left unused: time in
/// which no process had work, because each waited on another.
pub fn idle_seconds() -> anyhow::Result<f64> {
    let times = machine_cpu_times()?;
    Ok(times[IDLE] + times[IOWAIT])
}

/// Seconds the hypervisor kept the machine's virtual cores from running
/// although they had work ("steal"), summed over the cores, from the `cpu`
/// line of `/proc/stat`; 0 on a machine of its own. A latency's tail
/// includes the host's pauses, so a run reports them beside its figures.
pub fn steal_seconds() -> anyhow::Result<f64> {
    Ok(machine_cpu_times()?[STEAL])
}

// Columns of the `cpu` line of `/proc/stat`, after its name: user nice
// system idle iowait irq softirq steal ...
const IDLE: usize = 3;
const IOWAIT: usize = 4;
const STEAL: usize = 7;

/// The `cpu` line of `/proc/stat` (every core together), in seconds.
fn machine_cpu_times() -> anyhow::Result<Vec<f64>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no `cpu` line"))?;
    let times: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|ticks| ticks.parse::<f64>().map(|ticks| ticks / ticks_per_second()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(times.len() > STEAL, "/proc/stat's `cpu` line is short: {line}");
    Ok(times)
}

/// What share of the machine's cores the hypervisor took while `run` ran,
/// in percent, with what `run` returned: [`steal_seconds`] over the wall
/// time times the cores `/proc/stat` sums over (`cpu0`, `cpu1`, ...).
pub async fn with_steal<T>(
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cores = stat
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .count()
        .max(1) as f64;
    let (steal_before, started) = (steal_seconds()?, std::time::Instant::now());
    let value = run.await?;
    let stolen = steal_seconds()? - steal_before;
    Ok((value, stolen * 100.0 / (started.elapsed().as_secs_f64() * cores)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_computes_has_used_cpu() {
        let before = cpu_seconds(std::process::id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
        let mut spin = 0u64;
        while std::time::Instant::now() < deadline {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let used = cpu_seconds(std::process::id()).unwrap() - before;
        assert!(used >= 0.05, "spinning 100 ms counted {used} s of CPU");
    }

    #[test]
    fn steal_time_is_read_and_never_goes_back() {
        let before = steal_seconds().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = steal_seconds().unwrap();
        assert!(
            before >= 0.0 && after >= before,
            "steal went from {before} s to {after} s"
        );
    }

    #[test]
    fn idle_time_is_read_and_never_goes_back() {
        let before = idle_seconds().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = idle_seconds().unwrap();
        assert!(
            before > 0.0 && after >= before,
            "idle went from {before} s to {after} s"
        );
    }
}
