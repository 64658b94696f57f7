//! [`Application`]: the API bound to its port and ready to serve.
//!
//! `build` connects to Redis and binds the listener, so every start-up failure
//! surfaces before the process reports it is listening; `run_until_stopped`
//! serves until the shutdown future completes, then lets in-flight requests
//! finish. Tests build one on port 0 and read the port back.

use std::future::Future;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::{EndpointExt, IntoEndpoint, Route, Server};
use savestream_shared::config::Config;
use savestream_shared::store::{RedisConnectError, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics_endpoint;
use crate::middleware::{json_panic, limit_body, observe};
use crate::state::AppState;

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the API could not start; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Redis(RedisConnectError),
    #[error("cannot listen on {address} ({source}): free the port, or change [api] host and port")]
    Bind { address: String, source: std::io::Error },
}

pub struct Application {
    acceptor: TcpAcceptor,
    state: AppState,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        let store = Store::connect(&config.redis, &config.queue)
            .await
            .map_err(|error| {
                StartupError::Redis(RedisConnectError {
                    at: config.redis.shown_url(),
                    error,
                })
            })?;
        let metrics = crate::metrics::install();
        let address = config.api.listen_addr();
        let bind_error = |source| StartupError::Bind {
            address: address.clone(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(bind_error)?;
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(bind_error)?;
        Ok(Application {
            acceptor,
            state: AppState::new(config, store, metrics),
        })
    }

    /// The address the listener is bound to (with the real port when the config says 0).
    pub fn local_addr(&self) -> String {
        self.acceptor
            .local_addr()
            .first()
            .map(|address| address.to_string())
            .unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.acceptor
            .local_addr()
            .first()
            .and_then(|address| address.as_socket_addr().map(|socket| socket.port()))
            .unwrap_or(0)
    }

    /// Serves until `shutdown` completes, then stops accepting, ends live
    /// event streams and waits (at most [`SHUTDOWN_GRACE`]) for in-flight
    /// requests. The process is in the registry of live API processes
    /// while it serves ([`crate::registration`]).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let streams = self.state.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            streams.cancel();
        };
        // Not a child of `shutdown`: the entry stays until the requests in
        // flight when shutdown began have finished.
        let registration = CancellationToken::new();
        let address = self
            .acceptor
            .local_addr()
            .first()
            .and_then(|address| address.as_socket_addr().map(ToString::to_string))
            .unwrap_or_default();
        let entry = crate::registration::this_process(address);
        crate::registration::register(&self.state.store, &entry).await;
        let heartbeat = tokio::spawn(crate::registration::heartbeat(
            self.state.store.clone(),
            entry,
            registration.clone(),
        ));
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app(self.state), signal, Some(SHUTDOWN_GRACE))
            .await;
        // Left only now: requests in flight until here could still write.
        registration.cancel();
        let _ = heartbeat.await;
        served
    }
}

/// The routes [`app`] serves with `GET` only that are not operations of the
/// API (so not in its document); a 405 on them lists their methods too
/// ([`crate::routes::allowed_methods`]). `/openapi.json` is not one: poem's
/// spec endpoint answers every method.
pub const GET_ONLY_ROUTES: &[&str] = &["/metrics"];

/// The whole HTTP surface: the API's operations, `/openapi.json`, `/docs`
/// and `/metrics` (which is not an operation of the API, so not in its document).
pub fn app(state: AppState) -> impl poem::Endpoint + 'static {
    let service = crate::openapi_service();
    Route::new()
        .at("/openapi.json", service.spec_endpoint())
        .at("/metrics", poem::get(metrics_endpoint))
        .nest("/docs", service.swagger_ui())
        .nest("/", service.into_endpoint())
        .around(limit_body)
        .data(state)
        .with(json_panic())
        .around(observe)
}
