//! [`DispatcherOptions`]: every knob of a dispatcher, with defaults from
//! config, so tests can shrink the backoff, the lease and the polling to
//! milliseconds; and [`Backoff`], the retry schedule.
//!
//! The schedule is exponential: the first retry waits `backoff_first`, each
//! later one `factor` times longer (capped at `backoff_max`), with the factor
//! chosen so that the `max_attempts - 1` retries add up to `span`. With the
//! defaults (5 s, 10 attempts, 24 h) the retries come after about 5 s, 16 s,
//! 52 s, 3 min, 9 min, 29 min, 1.6 h, 5 h and 16 h: quick while a receiver
//! blinks, patient while it is down for the day. Each delay is jittered by
//! ±25 % so that many deliveries failing together do not retry together.

use std::time::Duration;

use savestream_shared::config::Config;

/// How long one try may take, connection to last byte read (the 15 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The first retry's delay before jitter.
pub const DEFAULT_BACKOFF_FIRST: Duration = Duration::from_secs(5);

/// How much of a response body is read (and thrown away) before the
/// connection is dropped, so a huge answer cannot stall a slot.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The longest a dispatcher sleeps before looking at the due set again.
/// Deliveries it records itself wake it at once; this bounds how late it
/// notices the ones other dispatchers recorded or a claim that expired.
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// Tries per delivery, the first included (`[webhook] max_attempts`).
    pub max_attempts: u32,
    /// No try of a delivery is due later than this after its event was
    /// read (`[webhook] span_hours`).
    pub span: Duration,
    /// The delay before the first retry, before jitter.
    pub backoff_first: Duration,
    /// The longest delay between two tries, before jitter.
    pub backoff_max: Duration,
    /// Tries in flight at once (`[webhook] concurrency`).
    pub concurrency: usize,
    /// Per try: connect, send, status and the capped body read.
    pub request_timeout: Duration,
    /// How long a claim on a delivery (and an event read but not yet
    /// recorded) is held before another dispatcher may take it over. Must
    /// exceed `request_timeout`, or a slow try could be sent twice.
    pub lease: Duration,
    /// See [`DEFAULT_IDLE_POLL`]; also the block time of event reads.
    pub idle_poll: Duration,
    /// See [`DEFAULT_MAX_RESPONSE_BODY`].
    pub max_response_body: usize,
}

impl DispatcherOptions {
    /// The options `config` implies. The lease is `[queue] lease_seconds`,
    /// the same as a job's, but never shorter than a try plus 10 s.
    pub fn from_config(config: &Config) -> DispatcherOptions {
        let request_timeout = DEFAULT_REQUEST_TIMEOUT;
        DispatcherOptions {
            max_attempts: config.webhook.max_attempts.max(1),
            span: config.webhook.span(),
            backoff_first: DEFAULT_BACKOFF_FIRST,
            backoff_max: config.webhook.span(),
            concurrency: config.webhook.concurrency.max(1),
            request_timeout,
            lease: config
                .queue
                .lease()
                .max(request_timeout + Duration::from_secs(10)),
            idle_poll: DEFAULT_IDLE_POLL,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
        }
    }

    /// Refuses options that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if self.lease <= self.request_timeout {
            return Err(format!(
                "lease ({:?}) must exceed request_timeout ({:?}), or a slow try could be sent twice",
                self.lease, self.request_timeout
            ));
        }
        // Event reads block for `idle_poll`, and the store gives up on a
        // command after 5 s.
        if self.idle_poll.is_zero() || self.idle_poll > Duration::from_secs(4) {
            return Err("idle_poll must be more than zero and at most 4 s".into());
        }
        Ok(())
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_first, self.backoff_max, self.span, self.max_attempts)
    }
}

/// The retry schedule; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    factor: f64,
}

impl Backoff {
    /// A schedule whose `max_attempts - 1` retries, before jitter and the
    /// cap, add up to `span`. When constant delays of `first` already fill
    /// the span, the factor is 1.
    pub fn new(first: Duration, max: Duration, span: Duration, max_attempts: u32) -> Backoff {
        let retries = max_attempts.saturating_sub(1);
        Backoff {
            first,
            max,
            factor: factor_filling(first.as_secs_f64(), span.as_secs_f64(), retries),
        }
    }

    /// The growth between two delays.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The delay after failed try `attempt` (from 1), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let seconds = self.first.as_secs_f64() * self.factor.powi(exponent);
        let capped = seconds.min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max)
    }

    /// The delay after failed try `attempt`, jittered by ±25 %;
    /// `unit` is a uniform random number in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.base_delay(attempt)
            .mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// The factor `f >= 1` with `first * (1 + f + ... + f^(retries-1)) = span`,
/// found by bisection (the sum grows with `f`).
fn factor_filling(first: f64, span: f64, retries: u32) -> f64 {
    if retries <= 1 || first <= 0.0 || first * f64::from(retries) >= span {
        return 1.0;
    }
    let total = |factor: f64| -> f64 { (0..retries).map(|k| first * factor.powi(k as i32)).sum() };
    let (mut low, mut high) = (1.0_f64, 2.0_f64);
    while total(high) < span {
        high *= 2.0;
    }
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if total(middle) < span {
            low = middle;
        } else {
            high = middle;
        }
    }
    (low + high) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spreads_its_retries_over_the_span() {
        let options = DispatcherOptions::from_config(&Config::default());
        let backoff = options.backoff();

        let delays: Vec<Duration> = (1..options.max_attempts)
            .map(|attempt| backoff.base_delay(attempt))
            .collect();
        let total: Duration = delays.iter().sum();

        assert_eq!(delays.len(), 9, "10 tries are 9 retries");
        assert_eq!(delays[0], Duration::from_secs(5));
        assert!(delays.windows(2).all(|pair| pair[0] < pair[1]), "{delays:?}");
        let span = options.span.as_secs_f64();
        assert!(
            (total.as_secs_f64() - span).abs() < 1.0,
            "the retries add up to {total:?}, not the 24 h span"
        );
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_delay() {
        let backoff = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(3600),
            Duration::from_secs(86400),
            10,
        );

        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(7_500));
        assert_eq!(backoff.delay(1, 0.5), Duration::from_secs(10));
        assert!(backoff.delay(1, 0.999_999) <= Duration::from_millis(12_500));
    }

    #[test]
    fn delays_are_capped_at_backoff_max() {
        let backoff = Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(40),
            Duration::from_secs(86400),
            10,
        );

        assert_eq!(backoff.base_delay(1), Duration::from_millis(10));
        assert_eq!(backoff.base_delay(9), Duration::from_millis(40));
    }

    #[test]
    fn a_span_that_constant_delays_fill_gives_a_factor_of_one() {
        let backoff = Backoff::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
            10,
        );

        assert_eq!(backoff.factor(), 1.0);
    }

    #[test]
    fn a_lease_not_longer_than_a_try_is_refused() {
        let mut options = DispatcherOptions::from_config(&Config::default());
        assert_eq!(options.validate(), Ok(()));
        assert!(options.lease > options.request_timeout);

        options.lease = options.request_timeout;

        assert!(options.validate().unwrap_err().contains("lease"));
    }
}
