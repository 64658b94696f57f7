//! Where a consumer group stands on a stream: what it has been handed
//! (`last-delivered-id`) and what it holds unacknowledged (its pending
//! entries).
//!
//! Two readers need it: trimming the event log must not drop an event the
//! `webhooks` group has not acknowledged, and a rebuild must tell a live
//! work item (undelivered, or pending with a worker) from a spent one that
//! `jobs` still holds only because an older item is pending.

use std::collections::HashSet;

use fred::prelude::*;
use fred::types::Value;

use super::{pairs, Store, StoreError};
pub(crate) use crate::stream_id::StreamId;

/// One consumer group's position on its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupPosition {
    /// The newest entry handed to any consumer; every later one is undelivered.
    pub last_delivered: StreamId,
    /// Entries handed out and not yet acknowledged, oldest first.
    pub pending: Vec<StreamId>,
}

impl GroupPosition {
    /// The oldest entry the group still needs: its oldest pending one, or
    /// else the first it has not been handed.
    pub fn oldest_needed(&self) -> StreamId {
        self.pending.first().copied().unwrap_or(StreamId {
            millis: self.last_delivered.millis,
            sequence: self.last_delivered.sequence.saturating_add(1),
        })
    }

    /// Whether the entry `id` is still to be processed by the group:
    /// not yet handed out, or handed out and not acknowledged.
    pub fn still_needs(&self, id: StreamId, pending: &HashSet<StreamId>) -> bool {
        id > self.last_delivered || pending.contains(&id)
    }
}

impl Store {
    /// Where `group` stands on `stream`, or `None` when the stream or the
    /// group does not exist (then the group needs nothing).
    pub(crate) async fn group_position(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Option<GroupPosition>, StoreError> {
        let groups: Result<Value, fred::error::Error> = self
            .client()
            .custom(fred::cmd!("XINFO"), vec!["GROUPS", stream])
            .await;
        let groups = match groups {
            Ok(groups) => groups,
            Err(error) if error.details().contains("no such key") => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let Some(info) = groups
            .into_array()
            .into_iter()
            .map(|group| pairs(group.into_array()))
            .find(|info| info.get("name").map(String::as_str) == Some(group))
        else {
            return Ok(None);
        };
        let last_delivered = info
            .get("last-delivered-id")
            .and_then(|id| StreamId::parse(id))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("group {group} on {stream} has no last-delivered-id"))
            })?;
        let pending_count: u64 = info
            .get("pending")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        let mut pending = Vec::new();
        if pending_count > 0 {
            // The extended form lists each pending entry: [[id, consumer, idle, deliveries], ...].
            let reply: Value = self
                .client()
                .custom(
                    fred::cmd!("XPENDING"),
                    vec![
                        stream.to_owned(),
                        group.to_owned(),
                        "-".to_owned(),
                        "+".to_owned(),
                        pending_count.to_string(),
                    ],
                )
                .await?;
            pending = reply
                .into_array()
                .into_iter()
                .filter_map(|entry| entry.into_array().into_iter().next())
                .filter_map(|id| id.as_string())
                .filter_map(|id| StreamId::parse(&id))
                .collect();
        }
        Ok(Some(GroupPosition {
            last_delivered,
            pending,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> StreamId {
        StreamId::parse(text).unwrap()
    }

    #[test]
    fn the_oldest_needed_entry_is_the_oldest_pending_or_the_first_undelivered() {
        let idle = GroupPosition {
            last_delivered: id("10-3"),
            pending: vec![],
        };
        let busy = GroupPosition {
            last_delivered: id("10-3"),
            pending: vec![id("7-0"), id("9-1")],
        };

        assert_eq!(idle.oldest_needed(), id("10-4"));
        assert_eq!(busy.oldest_needed(), id("7-0"));
        let pending: HashSet<_> = busy.pending.iter().copied().collect();
        assert!(busy.still_needs(id("9-1"), &pending));
        assert!(busy.still_needs(id("11-0"), &pending));
        assert!(!busy.still_needs(id("8-0"), &pending), "acknowledged");
    }
}
