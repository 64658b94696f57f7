//! [`Application`]: a worker process, built from config and run until a
//! shutdown future completes.
//!
//! It owns the start-up order (Redis, the consumer group, the cancel
//! subscription, sources and storages, the webhook dispatcher, the
//! `/metrics` listener) and the shutdown order: stop taking work and stop
//! the dispatcher from claiming deliveries, give running tasks the grace
//! period (`[worker] shutdown_grace_seconds`) to finish, release what is
//! still running to the queue so another worker resumes it at once, and
//! only then stop the heartbeat and the other background loops and leave
//! the registry of live workers (each given [`BACKGROUND_WAIT`]). Attempts that do not stop within
//! [`RELEASE_WAIT`] after the grace period are abandoned (their work items
//! stay pending and are taken over once their leases expire), so neither a
//! Redis that does not answer (a release retries it for up to a lease) nor
//! a hung disk write can keep the process from exiting.
//!
//! What a process runs is its [`Role`]: `all` (tasks, and the webhook
//! dispatcher when `[api] webhook_url` is set), `tasks`, or `webhooks`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use savestream_shared::config::Config;
use savestream_shared::store::{
    host_name, process_name, shown_redis_url, RedisConnectError, Store, StoreError, WorkerInfo,
};
use savestream_telegram::TelegramError;
use savestream_webhook::{Dispatcher, WebhookError};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::context::Context;
use crate::metrics::{self, MetricsServer, QueueGauges};
use crate::running::RunningTasks;
use crate::source::http::HttpSource;
use crate::source::telegram::TelegramSource;
use crate::source::{Source, Sources};
use crate::storage::{Storages, STORAGE_USABLE_METRIC};
use crate::{cancel, consumer, lease};

/// What a worker process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Tasks, and the webhook dispatcher when `[api] webhook_url` is set.
    #[default]
    All,
    /// Tasks only.
    Tasks,
    /// The webhook dispatcher only; needs `[api] webhook_url`.
    Webhooks,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Tasks => "tasks",
            Role::Webhooks => "webhooks",
        }
    }

    fn runs_tasks(self) -> bool {
        self != Role::Webhooks
    }

    fn runs_webhooks(self) -> bool {
        self != Role::Tasks
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "all" => Ok(Role::All),
            "tasks" => Ok(Role::Tasks),
            "webhooks" => Ok(Role::Webhooks),
            other => Err(format!("`{other}` is not a role: use all, tasks or webhooks")),
        }
    }
}

/// Why a worker could not start. Each message is complete on its own line
/// (the cause is part of it, not a separate source), so `main` prints one
/// line that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Redis(RedisConnectError),
    #[error("cannot subscribe to cancellations at {url}: {error}")]
    Subscribe { url: String, error: fred::error::Error },
    #[error("cannot set up the http client: {0}")]
    Http(reqwest::Error),
    #[error("{0}")]
    Telegram(TelegramError),
    #[error("cannot start the webhook dispatcher: {0}")]
    Webhook(WebhookError),
    #[error("cannot start the webhook dispatcher: creating its consumer group on redis at {url} failed: {error}; webhooks would not be delivered: check that redis answers and accepts XGROUP on the events stream, then start the worker again")]
    WebhookGroup { url: String, error: WebhookError },
    #[error("--role webhooks runs only the webhook dispatcher, and [api] webhook_url is not set: set it, or run another role")]
    NothingToRun,
    #[error(
        "cannot listen for /metrics on {address} ([worker] metrics_host and metrics_port): {error}; \
         free the port or choose another"
    )]
    Metrics {
        address: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Why a running worker stopped on its own. Like [`StartupError`], each
/// message is complete on its own line.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The dispatcher could not start its loops (its consumer group or its
    /// reading connection): a process left running would look live and
    /// deliver nothing, so it stops, as a worker whose task intake cannot
    /// start does.
    #[error("the webhook dispatcher stopped: {0}; webhooks are not delivered: check that redis answers, then start the worker again")]
    Dispatcher(WebhookError),
    /// Not expected: the dispatcher returns only when it is told to stop.
    #[error("the webhook dispatcher stopped on its own; start the worker again")]
    DispatcherEnded,
    #[error("the webhook dispatcher ended abnormally: {0}; start the worker again")]
    DispatcherPanicked(tokio::task::JoinError),
    /// Attempts that did not finish releasing their tasks within
    /// [`RELEASE_WAIT`] of being told to: most often Redis not answering
    /// (the release retries it for up to a lease), else a write that hangs.
    /// The process exits without them, and their work items, still
    /// pending, are taken over once their leases expire.
    #[error("{attempts} attempt(s) did not finish releasing their tasks within {}s after the grace period (redis not answering, or a write that hangs) and were abandoned: their tasks stay running until their leases expire, then another worker takes them over", RELEASE_WAIT.as_secs())]
    Abandoned { attempts: usize },
}

/// How long running attempts have, once the grace period is over, to hand
/// their tasks back before the process exits without them.
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long, once every task has ended, the background loops (heartbeat,
/// promoter, housekeeping, cancel listener, `/metrics`) have to stop, and
/// then leaving the registry of live workers has to answer. They hold no
/// work: a call they leave unanswered is one the next round of any worker
/// makes again, and the registry entry ages out. Without the bound, a Redis
/// that does not answer held the exit for each call's command timeout in
/// turn (16 s).
pub const BACKGROUND_WAIT: Duration = Duration::from_secs(1);

/// A worker, connected and ready to run.
pub struct Application {
    context: Arc<Context>,
    role: Role,
    /// The connection that blocks in `XREADGROUP`, apart from the one every
    /// other command uses. `None` when the role runs no tasks.
    reader: Option<Store>,
    subscriber: Option<SubscriberClient>,
    dispatcher: Option<Dispatcher>,
    metrics: Option<(MetricsServer, SocketAddr)>,
    gauges: Option<QueueGauges>,
    registration: WorkerInfo,
    slots: usize,
    grace: Duration,
}

impl Application {
    /// A worker of role `all`; see [`Application::build_with_role`].
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        Application::build_with_role(config, Role::All).await
    }

    /// Connects to Redis and sets up what `role` runs; fails with a message
    /// that says what to fix.
    pub async fn build_with_role(config: Config, role: Role) -> Result<Application, StartupError> {
        if role == Role::Webhooks && config.api.webhook_url.is_none() {
            return Err(StartupError::NothingToRun);
        }
        // Checked before anything connects, so unusable Telegram settings
        // are the one error reported; the connection itself is made by the
        // first Telegram task.
        let telegram = if role.runs_tasks() {
            TelegramSource::from_config(&config)
                .map_err(StartupError::Telegram)?
                .map(|telegram| Arc::new(telegram) as Arc<dyn Source>)
        } else {
            None
        };
        let shown_url = shown_redis_url(&config.redis.url);
        let redis_error = |error: StoreError| {
            StartupError::Redis(RedisConnectError {
                at: shown_url.clone(),
                error,
            })
        };
        let store = Store::connect(&config.redis, &config.queue)
            .await
            .map_err(redis_error)?;

        let dispatcher = if role.runs_webhooks() {
            match Dispatcher::new(store.clone(), &config) {
                Ok(dispatcher) => {
                    // What the dispatcher's `run` does first, done here as the
                    // task role creates its group: a failure is a failed start.
                    dispatcher
                        .ensure_group()
                        .await
                        .map_err(|error| StartupError::WebhookGroup {
                            url: shown_url.clone(),
                            error,
                        })?;
                    Some(dispatcher)
                }
                Err(error) if error.is_disabled() => {
                    debug!("no webhook_url: the webhook dispatcher does not run");
                    None
                }
                Err(error) => return Err(StartupError::Webhook(error)),
            }
        } else {
            None
        };

        let (reader, subscriber, sources, storages) = if role.runs_tasks() {
            store.ensure_group().await.map_err(redis_error)?;
            let reader = store.with_own_connection().await.map_err(redis_error)?;
            let subscriber = cancel::subscribe(&config.redis, &store.keys().cancel_channel())
                .await
                .map_err(|error| StartupError::Subscribe {
                    url: shown_url.clone(),
                    error,
                })?;
            // One that cannot be set up here is logged and stands in for
            // itself, failing its tasks retryably (see `UnusableStorage`).
            let storages = Storages::from_config(&config);
            let http = HttpSource::new(&config.http).map_err(StartupError::Http)?;
            if telegram.is_none() {
                info!("[telegram] has no credentials: Telegram tasks fail at once, saying so");
            }
            let sources = Sources {
                http: Arc::new(http),
                telegram,
            };
            (Some(reader), Some(subscriber), sources, storages)
        } else {
            // A dispatcher-only process downloads nothing; the context still
            // wants a source for its type, and an unused client costs nothing.
            let http = HttpSource::new(&config.http).map_err(StartupError::Http)?;
            let sources = Sources {
                http: Arc::new(http),
                telegram: None,
            };
            (None, None, sources, Storages::default())
        };

        let metrics = match config.worker.metrics_port {
            Some(port) => {
                let handle = metrics::install();
                let wanted = std::net::SocketAddr::new(config.worker.metrics_host, port);
                let metrics_error = |error| StartupError::Metrics {
                    address: wanted,
                    error,
                };
                let server = MetricsServer::bind(wanted, handle).await.map_err(metrics_error)?;
                let address = server.local_addr().map_err(metrics_error)?;
                Some((server, address))
            }
            None => None,
        };
        if metrics.is_some() {
            // Set once the recorder is installed: an unusable storage sets
            // its own to 1 when it works.
            for storage in storages.iter() {
                let usable = if storage.is_usable() { 1.0 } else { 0.0 };
                ::metrics::gauge!(STORAGE_USABLE_METRIC, "storage" => storage.name().to_owned()).set(usable);
            }
        }
        let gauges = match &metrics {
            // The gauges are only worth a connection when someone scrapes them.
            Some(_) => match QueueGauges::connect(&store).await {
                Ok(gauges) => Some(gauges),
                Err(error) => return Err(redis_error(error)),
            },
            None => None,
        };

        let consumer = process_name();
        let slots = if role.runs_tasks() { config.workers } else { 0 };
        let registration = WorkerInfo {
            name: consumer.clone(),
            host: host_name(),
            pid: std::process::id(),
            role: role.as_str().to_owned(),
            slots,
            tasks: Vec::new(),
            started_at: Store::now_ms(),
            seen_at: 0,
        };
        let context = Context {
            store,
            consumer,
            sources,
            storages,
            running: RunningTasks::default(),
            retry_limit: config.retry,
            release: CancellationToken::new(),
        };
        Ok(Application {
            context: Arc::new(context),
            role,
            reader,
            subscriber,
            dispatcher,
            metrics,
            gauges,
            registration,
            slots,
            grace: config.worker.shutdown_grace(),
        })
    }

    /// This process's consumer name in the `workers` group (and its name in
    /// the registry of live workers).
    pub fn consumer(&self) -> &str {
        &self.context.consumer
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Where `/metrics` is served, when `[worker] metrics_port` is set (the
    /// port actually bound, for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, address)| *address)
    }

    /// Whether this process runs the webhook dispatcher.
    pub fn runs_dispatcher(&self) -> bool {
        self.dispatcher.is_some()
    }

    /// Runs until `shutdown` completes, then shuts down gracefully. Also
    /// shuts down, and answers the error, when the webhook dispatcher
    /// cannot run. When attempts are abandoned as well, the answer is
    /// [`RunError::Abandoned`]; the dispatcher's error is logged.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let context = self.context;
        let intake = CancellationToken::new();
        let background = CancellationToken::new();
        let webhooks = CancellationToken::new();
        let tasks = TaskTracker::new();
        let services = TaskTracker::new();

        services.spawn(lease::heartbeat(
            context.clone(),
            self.registration.clone(),
            background.clone(),
        ));
        if let Some((server, address)) = self.metrics {
            info!(%address, "serving /metrics");
            services.spawn(server.serve(background.clone()));
        }
        if let Some(gauges) = self.gauges {
            services.spawn(gauges.sample(metrics::install(), background.clone()));
        }
        let mut dispatcher = self.dispatcher.map(|dispatcher| {
            let stop = webhooks.clone();
            tokio::spawn(dispatcher.run(stop))
        });
        let intake_loop = match (self.reader, self.subscriber) {
            (Some(reader), Some(subscriber)) => {
                services.spawn(lease::promote(context.store.clone(), background.clone()));
                services.spawn(lease::housekeeping(context.store.clone(), background.clone()));
                let leftovers = context.leftovers();
                // Subscribed first, so a cancel during the sweep is heard.
                let sweeper = leftovers.clone();
                let stop = background.clone();
                services.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        swept = sweeper.sweep() => if let Err(error) = swept {
                            warn!(%error, "cannot look over the storages for partial files of ended tasks");
                        }
                    }
                });
                services.spawn(cancel::listen(
                    subscriber,
                    context.running.clone(),
                    leftovers,
                    background.clone(),
                ));
                let slots = Arc::new(Semaphore::new(self.slots));
                Some(tokio::spawn(consumer::run(
                    context.clone(),
                    reader,
                    slots,
                    intake.clone(),
                    tasks.clone(),
                )))
            }
            _ => None,
        };
        info!(
            consumer = %context.consumer,
            role = %self.role,
            slots = self.slots,
            webhooks = dispatcher.is_some(),
            "worker started"
        );

        // The dispatcher ends only when told to, unless it cannot run.
        let mut failure = tokio::select! {
            () = shutdown => None,
            ended = dispatcher_ended(&mut dispatcher) => {
                dispatcher = None;
                Some(match ended {
                    Ok(Ok(())) => RunError::DispatcherEnded,
                    Ok(Err(error)) => RunError::Dispatcher(error),
                    Err(error) => RunError::DispatcherPanicked(error),
                })
            }
        };
        if let Some(error) = &failure {
            error!(%error, "the webhook dispatcher cannot run: shutting down");
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        info!(
            running = context.running.len(),
            grace_seconds = self.grace.as_secs(),
            "shutting down: taking no new work, letting running tasks finish"
        );
        intake.cancel();
        // The dispatcher stops claiming now and finishes the tries in flight
        // (each bounded by its request timeout) while the tasks drain.
        webhooks.cancel();
        if let Some(intake_loop) = intake_loop {
            if let Err(error) = intake_loop.await {
                warn!(%error, "the intake loop ended abnormally");
            }
        }
        tasks.close();
        if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
            warn!(
                running = context.running.len(),
                "grace period over: releasing running tasks to other workers"
            );
            context.release.cancel();
            // A release is one Redis call when Redis answers; during an
            // outage it retries for up to a lease, and a hung write holds
            // it for ever. The wait is bounded so the process still exits:
            // the work item stays pending and expires, so leaving the
            // attempt behind loses nothing.
            if tokio::time::timeout(RELEASE_WAIT, tasks.wait()).await.is_err() {
                let attempts = tasks.len();
                error!(
                    abandoned = attempts,
                    "attempts did not finish releasing their tasks within {}s of the end of the grace period (redis not answering, or a write that hangs): abandoning them; their work items stay pending and another worker takes them over once their leases expire",
                    RELEASE_WAIT.as_secs()
                );
                // Abandoned attempts decide the exit (3) even when the
                // dispatcher failed too (1, already logged above): tasks
                // left pending are what an operator must know about first.
                failure = Some(RunError::Abandoned { attempts });
            }
        }
        if let Some(dispatcher) = dispatcher {
            match dispatcher.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!(%error, "the webhook dispatcher stopped");
                    failure.get_or_insert(RunError::Dispatcher(error));
                }
                Err(error) => {
                    warn!(%error, "the webhook dispatcher ended abnormally");
                    failure.get_or_insert(RunError::DispatcherPanicked(error));
                }
            }
        }
        // Leases were renewed until every task ended; now the rest may stop.
        background.cancel();
        services.close();
        if tokio::time::timeout(BACKGROUND_WAIT, services.wait())
            .await
            .is_err()
        {
            debug!("background loops still waiting for redis: leaving them");
        }
        // After the heartbeat stopped, so its last registration cannot
        // follow this.
        match tokio::time::timeout(
            BACKGROUND_WAIT,
            context.store.unregister_worker(&context.consumer),
        )
        .await
        {
            Ok(Ok(())) => {}
            // The entry ages out of the registry after three leases anyway.
            Ok(Err(error)) => debug!(%error, "cannot leave the registry of live workers"),
            Err(_) => debug!("redis did not answer in time: leaving the registry of live workers to age out"),
        }
        info!("worker stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Completes when the dispatcher's task ends; never when there is none.
async fn dispatcher_ended(
    dispatcher: &mut Option<JoinHandle<Result<(), WebhookError>>>,
) -> Result<Result<(), WebhookError>, tokio::task::JoinError> {
    match dispatcher {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
