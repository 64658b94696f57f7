//! `GET /api/v1/storages?user_id=N`: the storages a user may save into, so a
//! client can offer a choice for `storage_name`.

use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use crate::auth::Authorized;
use crate::error::{ApiError, ErrorSet, Failure, UNAUTHORIZED};
use crate::new_task::unknown_user;
use crate::routes::ApiTags;
use crate::state::AppState;
use crate::wire::{StorageBody, StorageListBody};

pub struct StoragesApi;

pub struct StoragesErrors;
impl ErrorSet for StoragesErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "`user_id` is missing, is not a whole number, or is not positive.",
        ),
        (401, UNAUTHORIZED),
        (403, "`user_id` has no `[[users]]` entry in the server's config."),
    ];
}

#[derive(ApiResponse)]
pub enum StoragesResponse {
    /// The storages the user may use; the first is their default.
    #[oai(status = 200)]
    Ok(Json<StorageListBody>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Storages")]
impl StoragesApi {
    /// List a user's storages
    ///
    /// The enabled storages `user_id` may save into, in config order, with their types. The first
    /// is where a task goes when `storage_name` is not given.
    #[oai(path = "/storages", method = "get", operation_id = "list_storages")]
    async fn list_storages(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// The Telegram user id, as in `POST /api/v1/tasks`: a positive whole number.
        user_id: Query<i64>,
    ) -> Result<StoragesResponse, Failure<StoragesErrors>> {
        let user_id = user_id.0;
        // As `POST /api/v1/tasks` answers it: no Telegram user id is 0 or
        // negative, so such a value is malformed, not an unknown user.
        if user_id < 1 {
            return Err(ApiError::BadRequest(format!(
                "`user_id` must be a positive whole number (a Telegram user id), not {user_id}"
            ))
            .into());
        }
        if state.config.user(user_id).is_none() {
            return Err(unknown_user(user_id).into());
        }
        let storages = state
            .config
            .storages_for_user(user_id)
            .into_iter()
            .map(StorageBody::from)
            .collect();
        Ok(StoragesResponse::Ok(Json(StorageListBody { user_id, storages })))
    }
}
