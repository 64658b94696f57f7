//! `GET /health` and `GET /ready`: whether the process is up, and whether it
//! can reach Redis. Neither needs a token, so orchestrators can probe them.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use crate::routes::ApiTags;
use crate::state::AppState;
use crate::wire::{ErrorBody, Health, Ready};

/// How long `/ready` waits for Redis: probes want a quick answer, and a Redis
/// that takes longer than this is not serving requests well either.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct HealthApi;

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The process is up and serving HTTP.
    #[oai(status = 200)]
    Ok(Json<Health>),
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Redis answers: the API can create and read tasks.
    #[oai(status = 200)]
    Ready(Json<Ready>),
    /// Redis does not answer: requests that need it get 503 until it does.
    #[oai(status = 503)]
    NotReady(Json<ErrorBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness
    ///
    /// Answers `{"status": "ok"}` while the process serves HTTP. Needs no token.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        HealthResponse::Ok(Json(Health {
            status: "ok".to_owned(),
        }))
    }

    /// Readiness
    ///
    /// Answers 200 `{"status": "ready"}` when Redis answers a PING within two seconds, and 503
    /// otherwise. Needs no token.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        let not_ready = |why: String| {
            ReadyResponse::NotReady(Json(ErrorBody {
                error: format!("not ready: redis {why}: check that redis is running and reachable"),
            }))
        };
        match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => ReadyResponse::Ready(Json(Ready {
                status: "ready".to_owned(),
            })),
            Ok(Err(error)) => {
                crate::metrics::redis_error();
                tracing::warn!(%error, "readiness check failed");
                not_ready("is not answering".to_owned())
            }
            Err(_) => {
                crate::metrics::redis_error();
                not_ready(format!(
                    "did not answer within {} seconds",
                    READY_TIMEOUT.as_secs()
                ))
            }
        }
    }
}
