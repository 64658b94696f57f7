//! [`TaskRequest`]: what a task was asked to do — its source, link, user,
//! storage and dir — and its one-field text form, `request`.
//!
//! The five never change after the create and are always read together, so
//! Redis keeps them as one field holding the JSON array
//! `[source, link, user, storage, dir]`: in the task hash, in the `created`
//! event (format 2) and in the first work item's `carried`. One field costs
//! Redis less than five everywhere it is written, searched or passed to the
//! function library; the Rust store encodes it, Lua only copies it.

use crate::task::SourceKind;

/// A task's request as the `request` field decodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    pub source: SourceKind,
    pub link: String,
    pub user_id: i64,
    pub storage: String,
    pub dir: String,
}

/// The `request` field of these five.
pub fn request_field(source: SourceKind, link: &str, user_id: i64, storage: &str, dir: &str) -> String {
    // A tuple serializes as the same array without building a `Value`
    // first, which cost several times the serializing.
    serde_json::to_string(&(source.as_str(), link, user_id, storage, dir))
        .expect("strings and a number always serialize")
}

impl TaskRequest {
    /// Reads a `request` field; the error says what is wrong with it.
    pub fn parse(field: &str) -> Result<TaskRequest, String> {
        let (source, link, user_id, storage, dir): (String, String, i64, String, String) =
            serde_json::from_str(field).map_err(|error| {
                format!("field `request` is not [source, link, user, storage, dir]: {error}")
            })?;
        let source = SourceKind::parse(&source)
            .ok_or_else(|| format!("field `request` names an unknown source {source:?}"))?;
        Ok(TaskRequest {
            source,
            link,
            user_id,
            storage,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_field_round_trips_every_kind_of_text() {
        let request = TaskRequest {
            source: SourceKind::Telegram,
            link: "https://t.me/c/1/2?single&x=\"quoted\"\n".into(),
            user_id: -42,
            storage: "ünïcode".into(),
            dir: "/a/b c".into(),
        };
        let field = request_field(
            request.source,
            &request.link,
            request.user_id,
            &request.storage,
            &request.dir,
        );
        assert_eq!(TaskRequest::parse(&field), Ok(request));
    }

    #[test]
    fn a_field_that_is_not_the_array_or_names_no_source_says_so() {
        let error = TaskRequest::parse("http").unwrap_err();
        assert!(
            error.contains("not [source, link, user, storage, dir]"),
            "{error}"
        );
        let error = TaskRequest::parse(r#"["carrier-pigeon","l",1,"s","/"]"#).unwrap_err();
        assert!(error.contains("unknown source \"carrier-pigeon\""), "{error}");
    }
}
