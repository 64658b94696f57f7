//! `GET /api/v1/workers`: the live worker processes, from the registry the
//! workers keep in Redis. It is for operators: nothing in the task contract
//! depends on it.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use crate::auth::Authorized;
use crate::error::{ErrorSet, Failure, STORE_UNAVAILABLE, UNAUTHORIZED};
use crate::routes::ApiTags;
use crate::state::AppState;
use crate::wire::{WorkerBody, WorkerListBody};

pub struct WorkersApi;

pub struct WorkersErrors;
impl ErrorSet for WorkersErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[(401, UNAUTHORIZED), (503, STORE_UNAVAILABLE)];
}

#[derive(ApiResponse)]
pub enum WorkersResponse {
    /// The live workers, sorted by name; empty when none runs.
    #[oai(status = 200)]
    Ok(Json<WorkerListBody>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Workers")]
impl WorkersApi {
    /// List the live workers
    ///
    /// Every worker process that sent a heartbeat within the last three lease periods: its host
    /// and pid, what it runs, how many tasks it runs at once, and the ids of the tasks it holds
    /// now. A worker that stops cleanly leaves the list at once; one that dies leaves it when its
    /// heartbeat is three lease periods old.
    #[oai(path = "/workers", method = "get", operation_id = "list_workers")]
    async fn list_workers(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
    ) -> Result<WorkersResponse, Failure<WorkersErrors>> {
        let workers = state.store.workers().await?;
        Ok(WorkersResponse::Ok(Json(WorkerListBody {
            workers: workers.into_iter().map(WorkerBody::from).collect(),
        })))
    }
}
