//! Stream entry ids, `<milliseconds>-<sequence>`, as Redis orders them.
//!
//! Ids are compared as number pairs, never as text (`"10-0"` comes after
//! `"9-5"`). The store reads them off consumer groups and work items; the
//! API compares an SSE client's `Last-Event-ID` with the log's ids. Both
//! parse with [`StreamId::parse`], so the two cannot disagree on what an id
//! is.

use std::fmt;

/// A stream entry id, ordered as Redis orders ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub millis: u64,
    pub sequence: u64,
}

impl StreamId {
    /// Parses `<ms>-<seq>`, or `<ms>` alone for `<ms>-0` (Redis takes an id
    /// without its sequence the same way). Anything else is `None`.
    pub fn parse(text: &str) -> Option<StreamId> {
        let (millis, sequence) = text.split_once('-').unwrap_or((text, "0"));
        Some(StreamId {
            millis: millis.parse().ok()?,
            sequence: sequence.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.millis, self.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> StreamId {
        StreamId::parse(text).unwrap()
    }

    #[test]
    fn ids_compare_as_numbers_not_text() {
        assert!(id("1700000000000-1") > id("1700000000000-0"));
        assert!(id("1700000000001-0") > id("1700000000000-9"));
        assert!(id("10-0") > id("9-5"));
        assert_eq!(id("1700000000000-0"), id("1700000000000-0"));
    }

    #[test]
    fn an_id_without_its_sequence_is_sequence_zero() {
        assert_eq!(
            id("42"),
            StreamId {
                millis: 42,
                sequence: 0
            }
        );
    }

    #[test]
    fn anything_else_is_not_an_id() {
        for text in ["", "-", "not an id", "1-", "-1", "1-2-3", "1 -2", "-1-0"] {
            assert_eq!(StreamId::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn an_id_prints_as_redis_writes_it() {
        assert_eq!(id("1700000000000-7").to_string(), "1700000000000-7");
    }
}
