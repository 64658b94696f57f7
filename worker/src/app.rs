//! [`Application`]: a worker process, built from config and run until a
//! shutdown future completes.
//!
//! It owns the start-up order (Redis, the consumer group, the cancel
//! subscription, sources and storages) and the shutdown order: stop taking
//! work, give running tasks the grace period (`[worker]
//! shutdown_grace_seconds`) to finish, release what is still running to the
//! queue so another worker resumes it at once, and only then stop the
//! heartbeat and the other background loops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use savestream_shared::config::{Config, RedisConfig};
use savestream_shared::store::{Store, StoreError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::context::{consumer_name, Context};
use crate::running::RunningTasks;
use crate::source::http::HttpSource;
use crate::source::Sources;
use crate::storage::{StorageError, Storages};
use crate::{cancel, consumer, lease};

/// Why a worker could not start. Each message is complete on its own line
/// (the cause is part of it, not a separate source), so `main` prints one
/// line that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to redis at {url}: {error}")]
    Redis { url: String, error: StoreError },
    #[error("cannot subscribe to cancellations at {url}: {error}")]
    Subscribe { url: String, error: fred::error::Error },
    #[error("{0}")]
    Storage(StorageError),
    #[error("cannot set up the http client: {0}")]
    Http(reqwest::Error),
}

impl From<StorageError> for StartupError {
    fn from(error: StorageError) -> StartupError {
        StartupError::Storage(error)
    }
}

/// A worker, connected and ready to run.
pub struct Application {
    context: Arc<Context>,
    /// The connection that blocks in `XREADGROUP`, apart from the one every
    /// other command uses.
    reader: Store,
    subscriber: SubscriberClient,
    slots: usize,
    grace: Duration,
}

impl Application {
    /// Connects to Redis and sets up sources and storages; fails with a
    /// message that says what to fix.
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        let redis_error = |error| StartupError::Redis {
            url: shown_url(&config.redis),
            error,
        };
        let store = Store::connect(&config.redis, &config.queue)
            .await
            .map_err(redis_error)?;
        store.ensure_group().await.map_err(redis_error)?;
        let reader = store.with_own_connection().await.map_err(redis_error)?;
        let subscriber = cancel::subscribe(&config.redis, &store.keys().cancel_channel())
            .await
            .map_err(|error| StartupError::Subscribe {
                url: shown_url(&config.redis),
                error,
            })?;
        let storages = Storages::from_config(&config)?;
        let http = HttpSource::new(&config.http).map_err(StartupError::Http)?;
        let context = Context {
            store,
            consumer: consumer_name(),
            sources: Sources {
                http: Arc::new(http),
                telegram: None,
            },
            storages,
            running: RunningTasks::default(),
            retry_limit: config.retry,
            release: CancellationToken::new(),
        };
        Ok(Application {
            context: Arc::new(context),
            reader,
            subscriber,
            slots: config.workers,
            grace: config.worker.shutdown_grace(),
        })
    }

    /// This process's consumer name in the `workers` group.
    pub fn consumer(&self) -> &str {
        &self.context.consumer
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let context = self.context;
        let intake = CancellationToken::new();
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        let services = TaskTracker::new();

        services.spawn(lease::heartbeat(context.clone(), background.clone()));
        services.spawn(lease::promote(context.store.clone(), background.clone()));
        services.spawn(lease::housekeeping(context.store.clone(), background.clone()));
        services.spawn(cancel::listen(
            self.subscriber,
            context.running.clone(),
            background.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.slots));
        let intake_loop = tokio::spawn(consumer::run(
            context.clone(),
            self.reader,
            slots,
            intake.clone(),
            tasks.clone(),
        ));
        info!(consumer = %context.consumer, slots = self.slots, "worker started");

        shutdown.await;
        let deadline = tokio::time::Instant::now() + self.grace;
        info!(
            running = context.running.len(),
            grace_seconds = self.grace.as_secs(),
            "shutting down: taking no new work, letting running tasks finish"
        );
        intake.cancel();
        if let Err(error) = intake_loop.await {
            warn!(%error, "the intake loop ended abnormally");
        }
        tasks.close();
        if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
            warn!(
                running = context.running.len(),
                "grace period over: releasing running tasks to other workers"
            );
            context.release.cancel();
            tasks.wait().await;
        }
        // Leases were renewed until every task ended; now the rest may stop.
        background.cancel();
        services.close();
        services.wait().await;
        info!("worker stopped");
    }
}

/// The Redis URL without its password, for messages.
fn shown_url(redis: &RedisConfig) -> String {
    match url::Url::parse(&redis.url) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Only URLs that cannot have a password refuse one, and this one has one.
                let _ = url.set_password(Some("[redacted]"));
            }
            url.to_string()
        }
        Err(_) => "[unparsable url]".to_owned(),
    }
}
