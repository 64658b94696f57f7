//! How long a task waits before its next attempt after a retryable failure:
//! exponential backoff with equal jitter, as a pure function.
//!
//! The delay doubles with every retry from [`BASE`] up to [`CAP`]; half of it
//! is fixed and half is random, so a burst of tasks that failed together (a
//! source that was down for a minute) does not come back in lockstep, and no
//! retry comes back sooner than half its nominal delay.

use std::time::Duration;

/// The nominal delay of the first retry.
pub const BASE: Duration = Duration::from_secs(1);
/// Each retry waits this many times longer than the one before.
pub const FACTOR: u32 = 2;
/// No retry waits longer than this, however many came before.
pub const CAP: Duration = Duration::from_secs(5 * 60);

/// The nominal (jitter-free) delay before retry number `retry` (1 for the
/// first retry): `BASE * FACTOR^(retry - 1)`, capped at [`CAP`].
pub fn nominal(retry: u32) -> Duration {
    let exponent = retry.saturating_sub(1).min(31);
    let multiplier = FACTOR.saturating_pow(exponent);
    BASE.saturating_mul(multiplier).min(CAP)
}

/// The delay before retry number `retry`, given `random`, a number in
/// `[0, 1)`: between half the nominal delay and the nominal delay.
pub fn backoff(retry: u32, random: f64) -> Duration {
    let nominal = nominal(retry);
    let random = if random.is_finite() {
        random.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = nominal / 2;
    half + half.mul_f64(random)
}

/// [`backoff`] with a random number from the thread's generator.
pub fn backoff_with_jitter(retry: u32) -> Duration {
    backoff(retry, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nominal_delay_doubles_from_one_second_up_to_the_cap() {
        assert_eq!(nominal(0), Duration::from_secs(1));
        assert_eq!(nominal(1), Duration::from_secs(1));
        assert_eq!(nominal(2), Duration::from_secs(2));
        assert_eq!(nominal(3), Duration::from_secs(4));
        assert_eq!(nominal(9), Duration::from_secs(256));
        assert_eq!(nominal(10), CAP);
        assert_eq!(nominal(u32::MAX), CAP);
    }

    #[test]
    fn the_jittered_delay_stays_between_half_and_all_of_the_nominal_delay() {
        for retry in 0..40 {
            let nominal = nominal(retry);
            for step in 0..=100 {
                let random = f64::from(step) / 100.0;
                let delay = backoff(retry, random);
                assert!(delay >= nominal / 2, "retry {retry}, random {random}: {delay:?}");
                assert!(delay <= nominal, "retry {retry}, random {random}: {delay:?}");
            }
            let delay = backoff_with_jitter(retry);
            assert!(delay >= nominal / 2 && delay <= nominal);
        }
    }

    #[test]
    fn the_jittered_delay_grows_with_the_retry_number() {
        // The smallest delay of a retry is at least the largest of the one
        // before it, until the cap.
        for retry in 1..9 {
            assert!(backoff(retry + 1, 0.0) >= backoff(retry, 1.0), "retry {retry}");
        }
    }

    #[test]
    fn nonsense_random_numbers_are_clamped() {
        assert_eq!(backoff(2, -1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 7.0), Duration::from_secs(2));
        assert_eq!(backoff(2, f64::NAN), Duration::from_secs(1));
    }
}
