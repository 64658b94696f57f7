//! `Retry-After` (RFC 9110 §10.2.3): how long an HTTP peer asked to be
//! left alone. Both HTTP clients read it, the direct-link source of a
//! download and the webhook sender of a delivery, and each decides what
//! the wait means for its retries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Retry-After` as a delay from `now`: delta-seconds or an HTTP date
/// (RFC 9110). A date in the past is a delay of zero; junk is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // A huge number of seconds saturates; each caller caps the wait.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822 syntax.
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(date.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_is_a_delay() {
        assert_eq!(
            parse_retry_after(" 120 ", SystemTime::now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", SystemTime::now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date_is_the_time_until_it() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_717); // 1994-11-06T08:48:37Z

        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    #[test]
    fn retry_after_that_is_neither_is_ignored() {
        assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
        assert_eq!(parse_retry_after("-5", SystemTime::now()), None);
        assert_eq!(parse_retry_after("", SystemTime::now()), None);
    }
}
