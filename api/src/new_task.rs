//! Turns a [`CreateTaskRequest`] into the store's [`NewTask`], or into the
//! [`ApiError`] that refuses it.
//!
//! Every check on a new task happens here, before anything reaches Redis:
//! that is what makes "nothing is written for a refused request" true. The
//! order is the order a user fixes things in: the shape of the request (400),
//! then who the user is (403), then the storage (404, 403).

use savestream_shared::config::Config;
use savestream_shared::dir_path::DirPath;
use savestream_shared::link::TelegramLink;
use savestream_shared::store::NewTask;
use savestream_shared::task::{SourceKind, TaskId};
use savestream_shared::title;

use crate::direct_link::DirectLink;
use crate::error::ApiError;
use crate::wire::CreateTaskRequest;

pub fn validate(request: CreateTaskRequest, config: &Config) -> Result<NewTask, ApiError> {
    let (source, link) = match (request.telegram_url, request.url) {
        (Some(telegram_url), None) => {
            let link = TelegramLink::parse(&telegram_url)
                .map_err(|error| ApiError::BadRequest(format!("`telegram_url`: {error}")))?;
            (SourceKind::Telegram, link.to_string())
        }
        (None, Some(url)) => {
            let link = DirectLink::parse(&url, config.http.allow_private_networks)
                .map_err(|error| ApiError::BadRequest(format!("`url`: {error}")))?;
            (SourceKind::Http, link.as_str().to_owned())
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give `telegram_url` (a Telegram message link) or `url` (a direct http or https link)"
                    .to_owned(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either `telegram_url` or `url`, not both: a task saves one source".to_owned(),
            ))
        }
    };
    let dir = match request.dir_path {
        Some(dir_path) => {
            DirPath::parse(&dir_path).map_err(|error| ApiError::BadRequest(format!("`dir_path`: {error}")))?
        }
        None => DirPath::root(),
    };
    let user_id = request.user_id;
    if config.user(user_id).is_none() {
        return Err(unknown_user(user_id));
    }
    let allowed = config.storages_for_user(user_id);
    let allowed_names = || {
        allowed
            .iter()
            .map(|storage| storage.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let storage = match request.storage_name {
        Some(name) => {
            if config.storage(&name).is_none() {
                return Err(ApiError::NotFound(format!(
                    "storage `{name}` does not exist: use one of the user's storages ({})",
                    allowed_names()
                )));
            }
            if !allowed.iter().any(|storage| storage.name == name) {
                return Err(ApiError::Forbidden(format!(
                    "user {user_id} may not use storage `{name}`: use one of the user's storages ({}), or allow it in the user's `storages` in config.toml",
                    allowed_names()
                )));
            }
            name
        }
        None => match allowed.first() {
            Some(storage) => storage.name.clone(),
            // Config validation refuses a user without a usable storage, so
            // this answers only a config that bypassed it.
            None => {
                return Err(ApiError::Forbidden(format!(
                    "user {user_id} may not use any enabled storage: list one in the user's `storages` in config.toml"
                )))
            }
        },
    };
    let title = title::pending(source, &link, &storage, dir.as_str());
    Ok(NewTask {
        task_id: TaskId::generate(),
        source,
        link,
        user_id,
        storage,
        dir: dir.to_string(),
        title,
    })
}

pub fn unknown_user(user_id: i64) -> ApiError {
    ApiError::Forbidden(format!(
        "user {user_id} is not configured: add a [[users]] entry with id = {user_id} to config.toml"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[storages]]
name = "local1"
type = "local"
base_path = "/tmp/a"

[[storages]]
name = "local2"
type = "local"
base_path = "/tmp/b"

[[storages]]
name = "off"
type = "local"
enable = false
base_path = "/tmp/c"

[[users]]
id = 123456789
storages = ["local1", "off"]
"#;

    fn config() -> Config {
        Config::from_toml_str(CONFIG, "config.toml", Vec::new())
            .expect("the test config is valid")
            .config
    }

    fn request(json: &str) -> CreateTaskRequest {
        CreateTaskRequest::from_json(json.as_bytes()).expect("the test body is valid")
    }

    fn refusal(json: &str) -> (u16, String) {
        let error = validate(request(json), &config()).unwrap_err();
        (error.status().as_u16(), error.to_string())
    }

    #[test]
    fn a_contract_request_becomes_a_queued_telegram_task() {
        let new_task = validate(
            request(
                r#"{"telegram_url": "t.me/channel/123", "user_id": 123456789, "dir_path": "/downloads/"}"#,
            ),
            &config(),
        )
        .unwrap();
        assert_eq!(new_task.source, SourceKind::Telegram);
        assert_eq!(new_task.link, "https://t.me/channel/123");
        assert_eq!(new_task.storage, "local1");
        assert_eq!(new_task.dir, "/downloads");
        assert_eq!(
            new_task.title,
            "[tgfiles](https://t.me/channel/123->local1:/downloads)"
        );
    }

    #[test]
    fn a_direct_link_becomes_an_http_task_in_the_root() {
        let new_task = validate(
            request(r#"{"url": "https://example.com/a.zip", "user_id": 123456789}"#),
            &config(),
        )
        .unwrap();
        assert_eq!(new_task.source, SourceKind::Http);
        assert_eq!(new_task.dir, "/");
        assert_eq!(
            new_task.title,
            "[directlinks](https://example.com/a.zip->local1:/)"
        );
    }

    #[test]
    fn the_create_request_schema_is_one_flat_object_that_typed_clients_can_build() {
        // A `oneOf` (or `anyOf`, `allOf`) beside the properties makes client
        // generators build the request type from the alternatives alone,
        // without `user_id`: their typed clients could not create a task.
        let spec: serde_json::Value = serde_json::from_str(&crate::openapi_json()).unwrap();
        let schema = &spec["components"]["schemas"]["CreateTaskRequest"];
        for keyword in ["oneOf", "anyOf", "allOf"] {
            assert!(schema.get(keyword).is_none(), "{keyword} in {schema:#}");
        }
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], serde_json::json!(["user_id"]));
        let properties: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        for field in ["telegram_url", "url", "user_id", "storage_name", "dir_path"] {
            assert!(properties.contains(&field), "{field} missing from {properties:?}");
        }
        let description = schema["description"].as_str().expect("a description");
        assert!(
            description.contains("exactly one of `telegram_url` or `url`"),
            "the rule is stated where a reader of the schema sees it: {description}"
        );
    }

    #[test]
    fn a_body_gives_exactly_one_source_not_empty() {
        let telegram_url = Some("https://t.me/channel/123");
        let url = Some("https://example.com/a.zip");
        let empty = Some("");
        for (telegram_url, url, accepted) in [
            (None, None, false),
            (telegram_url, None, true),
            (None, url, true),
            (telegram_url, url, false),
            (empty, None, false),
            (None, empty, false),
            (empty, empty, false),
            (telegram_url, empty, true),
            (empty, url, true),
        ] {
            let mut body = serde_json::json!({"user_id": 123456789});
            if let Some(telegram_url) = telegram_url {
                body["telegram_url"] = telegram_url.into();
            }
            if let Some(url) = url {
                body["url"] = url.into();
            }

            assert_eq!(
                validate(request(&body.to_string()), &config()).is_ok(),
                accepted,
                "{body}"
            );
        }
    }

    #[test]
    fn refusals_have_the_status_the_contract_gives_them() {
        let cases = [
            (r#"{"user_id": 123456789}"#, 400, "give `telegram_url`"),
            (
                r#"{"telegram_url": "t.me/a/1", "url": "https://x.y/", "user_id": 1}"#,
                400,
                "give either `telegram_url` or `url`, not both",
            ),
            (
                r#"{"telegram_url": "t.me/durov", "user_id": 1}"#,
                400,
                "`telegram_url`: `/durov` links to a chat",
            ),
            (
                r#"{"url": "http://127.0.0.1/a", "user_id": 123456789}"#,
                400,
                "`url`: `127.0.0.1` is a loopback",
            ),
            (
                r#"{"telegram_url": "t.me/durov/1", "dir_path": "a", "user_id": 1}"#,
                400,
                "`dir_path`: `a` is not absolute",
            ),
            (
                r#"{"telegram_url": "t.me/durov/1", "user_id": 42}"#,
                403,
                "user 42 is not configured",
            ),
            (
                r#"{"telegram_url": "t.me/durov/1", "user_id": 123456789, "storage_name": "nope"}"#,
                404,
                "storage `nope` does not exist",
            ),
            (
                r#"{"telegram_url": "t.me/durov/1", "user_id": 123456789, "storage_name": "local2"}"#,
                403,
                "may not use storage `local2`",
            ),
            (
                r#"{"telegram_url": "t.me/durov/1", "user_id": 123456789, "storage_name": "off"}"#,
                403,
                "may not use storage `off`",
            ),
        ];
        for (json, status, message) in cases {
            let (got_status, got_message) = refusal(json);
            assert_eq!(got_status, status, "{json}: {got_message}");
            assert!(got_message.contains(message), "{json}: {got_message}");
        }
    }
}
