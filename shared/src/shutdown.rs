//! Redis calls in flight when a process is told to stop.
//!
//! A loop that reads work (a blocked `XREADGROUP`, a claim) lets its call
//! finish on shutdown rather than drop it: what the call took would stay
//! pending to this consumer until its lease ran out. But a Redis that does
//! not answer (a frozen host) holds such a call for the command timeout,
//! and each loop in turn held the exit for it. [`unless_stuck`] lets a call
//! finish by the time an answering Redis would have answered it, and after
//! shutdown leaves it otherwise; what it may have taken is then taken over
//! after the lease, as after a crash.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long beyond its block time a call is waited for after shutdown. A
/// Redis that answers is far quicker; one that does not would hold the
/// exit for the call's command timeout.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Runs `call` to its end, unless `shutdown` has come and `call` has not
/// ended by the latest a Redis that answers would have answered it: `block`
/// (the time a blocking read may wait for news; zero for any other call)
/// and [`ANSWER_MARGIN`] after it began. Then `None`. Without shutdown,
/// `call` runs as long as it takes.
pub async fn unless_stuck<T>(
    call: impl Future<Output = T>,
    shutdown: &CancellationToken,
    block: Duration,
) -> Option<T> {
    let answer_by = Instant::now() + block + ANSWER_MARGIN;
    tokio::select! {
        biased;
        done = call => Some(done),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep_until(answer_by).await;
        } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_ends_by_its_time_after_shutdown_is_kept() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        // Its time: the margin (1 s) after it began.
        let call = async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            7
        };
        assert_eq!(unless_stuck(call, &shutdown, Duration::ZERO).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_not_ended_by_its_time_is_left_once_shutdown_comes() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        let call = std::future::pending::<()>();
        // Its time (the margin, 1 s) passed before shutdown: it is left
        // at shutdown.
        assert_eq!(unless_stuck(call, &shutdown, Duration::ZERO).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn after_shutdown_a_call_is_waited_for_until_its_time() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = Instant::now();
        let call = std::future::pending::<()>();
        // Its time: a block of 1 s and the margin.
        assert_eq!(unless_stuck(call, &shutdown, Duration::from_secs(1)).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_shutdown_a_call_runs_as_long_as_it_takes() {
        let shutdown = CancellationToken::new();
        let call = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "done"
        };
        assert_eq!(unless_stuck(call, &shutdown, Duration::ZERO).await, Some("done"));
    }
}
