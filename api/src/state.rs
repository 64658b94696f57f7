//! [`AppState`]: what every request handler shares, built once at start-up.

use std::ops::Deref;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use savestream_shared::config::Config;
use savestream_shared::store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::ExpectedToken;
use crate::create_batcher::CreateBatcher;

/// At most this many live event streams are open at once: each holds a Redis
/// connection of its own, and Redis' connections are not free. Each also
/// ends after `[api] live_stream_max_seconds`, so a client that never reads
/// its streams holds slots for that long, not for as long as its tasks run.
pub const MAX_LIVE_STREAMS: usize = 256;

/// The shared state behind one reference count. poem hands every request
/// its own clone of the state; one `Arc` to copy is cheaper than the
/// handles inside (a cancellation token's clone takes a lock).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    /// `[api] token`, digested once for [`crate::auth::check`].
    pub token: ExpectedToken,
    pub store: Store,
    /// Creates go through here, so that concurrent ones share a store call.
    pub creates: CreateBatcher,
    /// Cancelled when the server begins to shut down, so that live event
    /// streams end and graceful shutdown does not wait on them forever.
    pub shutdown: CancellationToken,
    /// The slots of the live event streams, [`MAX_LIVE_STREAMS`] of them.
    pub live_streams: Arc<Semaphore>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Builds the state and starts the create batcher, on the current Tokio runtime.
    pub fn new(config: Config, store: Store, metrics: PrometheusHandle) -> AppState {
        AppState(Arc::new(Shared {
            creates: CreateBatcher::start(store.clone()),
            token: ExpectedToken::new(&config.api.token),
            config: Arc::new(config),
            store,
            shutdown: CancellationToken::new(),
            live_streams: Arc::new(Semaphore::new(MAX_LIVE_STREAMS)),
            metrics,
        }))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
