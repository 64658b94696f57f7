//! [`Downloader`]: a file's bytes from a start offset, fetched in parallel 1 MiB parts and
//! yielded in order, surviving Telegram's faults.
//!
//! This module owns the download loop and its fault policy; it knows nothing of grammers
//! (it speaks only [`TelegramApi`]) nor of storage (it yields [`Bytes`]).
//!
//! ## How
//! [`crate::parts::plan`] lists the requests. Each part runs as its own tokio task, so parts
//! make progress while the consumer is busy writing; `buffered` keeps at most
//! [`crate::parts::parts_in_flight`] of them alive and hands results back in plan order. That
//! is the reorder window: a part that finishes early waits in memory for the ones before it,
//! and no new part starts until the consumer takes the oldest, so memory stays near
//! `window × 1 MiB` however large the file. Dropping the stream drops the part tasks' handles,
//! which aborts them: a cancelled download stops asking Telegram at once. The requests it has
//! already sent cannot be called back (grammers sends no cancellation), so each runs in a
//! detached task holding its data centre's permit until its answer arrives: the next
//! downloads' requests wait for those bytes instead of queueing behind them.
//!
//! ## Faults, per part
//! - FLOOD_WAIT / FLOOD_PREMIUM_WAIT: every part of every download of the [`Downloader`] holds
//!   its next request until the wait is over (one flood wait means the account is throttled,
//!   not the part nor the download), then retries. A wait
//!   longer than [`DownloadOptions::max_flood_wait`] ends the stream with the
//!   [`TelegramError::FloodWait`] so the worker can release the task instead of holding a slot;
//!   the gate is held for it all the same, and a part that finds the gate closed for longer
//!   than that gives up without asking, since Telegram refuses (and may lengthen the wait of)
//!   every request the account sends before the wait is over.
//! - FILE_REFERENCE_EXPIRED: the message is refetched (once for all parts that saw the same
//!   stale reference) and the part retried with the new reference, same offset.
//! - FILE_MIGRATE_X: every later request goes to data centre X.
//! - Dropped connections, stalls and Telegram's 5xx: retried with doubling backoff, a few
//!   times, then surfaced (a stall first drops the data centre's connection, through
//!   [`TelegramApi::drop_connection`], since the retry would stall again on a dead one) (they are retryable, so the worker tries the task again later). A
//!   request has stalled when, for [`DownloadOptions::part_timeout`] since it was sent, neither
//!   a part of its download nor any answer over the connection to the data centre it was sent
//!   to (for any download) arrived: not its own age, since answers come back in order over the
//!   one connection per data centre, and a request sent behind others, of this download or
//!   another, waits for all of them while the connection is busy delivering. The clock starts
//!   when the request is handed to the [`TelegramApi`], not while it waits at the flood gate.
//!   A request still unanswered after four part timeouts is given up on all the same, whatever
//!   the connection delivers meanwhile.
//!
//! ## Sharing the connection
//! Every download of a [`Downloader`] goes over the process's one connection per data centre,
//! so the [`Downloader`] keeps at most [`DownloadOptions::max_parts_in_flight_per_dc`] requests
//! in flight to each, whatever the downloads' windows: bytes queued on the connection beyond
//! what keeps it busy only delay every answer behind them.
//! - An answer shorter than asked for is the end of the file.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{oneshot, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::api::{FileLocation, MediaMessage, MessageRef, TelegramApi};
use crate::error::TelegramError;
use crate::parts::{self, Part};

/// A file's bytes, in order, from the requested offset.
pub type ByteStream = BoxStream<'static, Result<Bytes, TelegramError>>;

/// How a [`Downloader`] behaves. [`DownloadOptions::new`] gives the defaults for a `threads`.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// `threads` from config.toml: parts in flight for files under 64 MiB (see
    /// [`parts::parts_in_flight`] for bigger ones).
    pub threads: usize,
    /// The longest flood wait slept through inside the download. Set it below the lease so a
    /// long wait releases the task (a `retrying` event) instead of holding the slot.
    pub max_flood_wait: Duration,
    /// Flood waits one part sleeps through before giving up.
    pub max_flood_waits_per_part: u32,
    /// The stall timeout: how long a sent request may wait while neither its download nor its
    /// data centre's connection delivers any part, before it counts as dropped. Like an HTTP
    /// read timeout it restarts with every part that arrives, so a slow but steady connection
    /// never trips it, however many parts of however many downloads wait behind one another
    /// on it. Four of them bound a single request's wait, however busy its connection.
    pub part_timeout: Duration,
    /// The most part requests the whole [`Downloader`] keeps in flight to one data centre,
    /// across all its downloads. grammers has one connection per data centre and answers come
    /// back over it in order, so more requests in flight only queue more bytes behind one
    /// another; and a request given up on is not cancelled (its bytes still arrive and are
    /// thrown away), so it keeps its place in the count until its answer arrives (or for at
    /// most four [`DownloadOptions::part_timeout`]s after it was sent; one whose download was
    /// cancelled while it waited at the flood gate is never sent). A request waits at most this many parts'
    /// transfer for its answer; the stall timeout counts the connection's progress, not the
    /// request's age, but the four-part-timeout bound does not, so connections slower than
    /// this many MiB per four [`DownloadOptions::part_timeout`]s (2 MiB a minute by default)
    /// may still have parts asked again.
    pub max_parts_in_flight_per_dc: usize,
    /// Retries of one part after dropped connections, timeouts or Telegram's 5xx.
    pub disconnect_retries: u32,
    /// The first retry's delay; each further retry doubles it.
    pub backoff: Duration,
    /// Refetches of the message for fresh file references, per part.
    pub max_reference_refreshes: u32,
    /// FILE_MIGRATE redirects followed, per part.
    pub max_migrations: u32,
}

impl DownloadOptions {
    pub fn new(threads: usize) -> DownloadOptions {
        DownloadOptions {
            threads: threads.max(1),
            max_flood_wait: Duration::from_secs(60),
            max_flood_waits_per_part: 10,
            part_timeout: Duration::from_secs(60),
            max_parts_in_flight_per_dc: 8,
            disconnect_retries: 4,
            backoff: Duration::from_millis(500),
            max_reference_refreshes: 3,
            max_migrations: 3,
        }
    }
}

impl Default for DownloadOptions {
    fn default() -> DownloadOptions {
        DownloadOptions::new(4)
    }
}

/// Downloads files named by [`MediaMessage`]s through a [`TelegramApi`].
///
/// One per process (per account): every stream it makes, and every clone of it, shares the
/// account's flood gate, since Telegram's flood wait holds back every request of the account,
/// not one download's, and the cap on parts in flight per data centre, since every download
/// shares the process's one connection to each.
#[derive(Clone)]
pub struct Downloader {
    api: Arc<dyn TelegramApi>,
    options: DownloadOptions,
    account: Arc<Account>,
}

impl Downloader {
    pub fn new(api: Arc<dyn TelegramApi>, options: DownloadOptions) -> Downloader {
        Downloader {
            api,
            options,
            account: Arc::new(Account::default()),
        }
    }

    pub fn options(&self) -> &DownloadOptions {
        &self.options
    }

    /// How many parts a download of `message` from `start` keeps in flight.
    pub fn window(&self, message: &MediaMessage, start: u64) -> usize {
        let size = message.media.size().unwrap_or(0);
        parts::parts_in_flight(size, self.options.threads, parts::plan(start, size).len())
    }

    /// The bytes of `message`'s file from `start` (the bytes already on disk) to its end, in
    /// order. Fails at once when the message has no file or `start` is past the end.
    ///
    /// Must be polled inside a tokio runtime: each part is a tokio task.
    pub fn stream(&self, message: &MediaMessage, start: u64) -> Result<ByteStream, TelegramError> {
        let Some(file) = message.media.file() else {
            return Err(TelegramError::Unsupported(format!(
                "message {} in chat {} has no file to download",
                message.message_id, message.chat.id
            )));
        };
        if start > file.size {
            return Err(TelegramError::OffsetBeyondEnd {
                offset: start,
                size: file.size,
            });
        }
        let plan = parts::plan(start, file.size);
        let window = parts::parts_in_flight(file.size, self.options.threads, plan.len());
        let shared = Arc::new(Shared {
            api: self.api.clone(),
            message: message.reference(),
            file_id: file.location.id,
            current: Mutex::new(Current {
                location: file.location.clone(),
                dc: file.dc,
                document_dc: file.dc,
                generation: 0,
            }),
            account: self.account.clone(),
            last_part: StdMutex::new(Instant::now()),
            options: self.options.clone(),
        });

        let parts_in_order = stream::iter(plan)
            .map(move |part| {
                let shared = shared.clone();
                let task = AbortOnDropHandle::new(tokio::spawn(async move {
                    let answer = fetch_part(&shared, part).await;
                    (part, answer)
                }));
                async move {
                    match task.await {
                        Ok(done) => done,
                        Err(join_error) => (
                            part,
                            Err(TelegramError::Protocol(format!(
                                "the task fetching bytes from {} failed: {join_error}",
                                part.offset
                            ))),
                        ),
                    }
                }
            })
            .buffered(window);

        let state = Emitter {
            parts: Box::pin(parts_in_order),
            finished: false,
        };
        Ok(stream::unfold(state, Emitter::next).boxed())
    }
}

type PartResults = std::pin::Pin<Box<dyn stream::Stream<Item = (Part, Result<Bytes, TelegramError>)> + Send>>;

/// Turns part answers (in plan order) into the byte stream: drops the resumed prefix, stops
/// after a short answer (the end of the file) or the first error.
struct Emitter {
    parts: PartResults,
    finished: bool,
}

impl Emitter {
    async fn next(mut self) -> Option<(Result<Bytes, TelegramError>, Emitter)> {
        if self.finished {
            return None;
        }
        loop {
            let (part, answer) = self.parts.next().await?;
            let bytes = match answer {
                Ok(bytes) => bytes,
                Err(error) => {
                    self.finished = true;
                    return Some((Err(error), self));
                }
            };
            let short = (bytes.len() as u64) < u64::from(part.limit);
            // `skip` is below 1 MiB, so the conversion cannot fail on any platform we build for.
            let skip = usize::try_from(part.skip).unwrap_or(usize::MAX).min(bytes.len());
            let chunk = bytes.slice(skip..);
            if short {
                self.finished = true;
            }
            if chunk.is_empty() {
                if short {
                    return None;
                }
                continue;
            }
            return Some((Ok(chunk), self));
        }
    }
}

/// State every part task of one download shares.
struct Shared {
    api: Arc<dyn TelegramApi>,
    message: MessageRef,
    file_id: i64,
    /// The location and data centre parts ask; a tokio mutex because a refresh holds it across
    /// the refetch, so parts that saw the same stale reference wait for one refetch.
    current: Mutex<Current>,
    /// What every download of the [`Downloader`] shares.
    account: Arc<Account>,
    /// When the download last received a part (its start before the first): with its data
    /// centre's last delivery and its own sending, what a request's stall timeout counts from.
    last_part: StdMutex<Instant>,
    options: DownloadOptions,
}

/// State every download of one [`Downloader`] shares: the account's.
#[derive(Default)]
struct Account {
    /// No request starts before this instant: a flood wait is the account's, not the part's
    /// nor the download's, and Telegram refuses (and may lengthen the wait of) every request
    /// any download sends before it is over.
    flood_gate: StdMutex<Option<FloodGate>>,
    /// Per data centre: the permits for part requests in flight
    /// ([`DownloadOptions::max_parts_in_flight_per_dc`]) and the connection's progress.
    data_centres: StdMutex<HashMap<i32, Arc<DataCentre>>>,
}

/// What every download shares of one data centre: grammers' one connection to it.
struct DataCentre {
    id: i32,
    /// Permits for part requests in flight, [`DownloadOptions::max_parts_in_flight_per_dc`].
    permits: Arc<Semaphore>,
    /// When an answer carrying a part of any download last arrived from this data centre. A
    /// part sent behind other downloads' parts waits for all of them; while their bytes keep
    /// coming the connection is alive, and the part has not stalled however long it waits.
    last_delivery: StdMutex<Option<Instant>>,
}

impl DataCentre {
    fn delivered(&self) {
        *self
            .last_delivery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    fn last_delivery(&self) -> Option<Instant> {
        *self
            .last_delivery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A flood wait being waited out: no request before `until`.
#[derive(Clone, Copy)]
struct FloodGate {
    until: Instant,
    /// FLOOD_PREMIUM_WAIT rather than FLOOD_WAIT, for the error of a part that gives up.
    premium: bool,
}

struct Current {
    location: FileLocation,
    /// Where parts are asked for: the document's data centre, or where FILE_MIGRATE sent us.
    dc: i32,
    /// The data centre the message's document named when last fetched.
    document_dc: i32,
    /// Bumped on every refresh, so a part knows whether its stale reference was replaced.
    generation: u64,
}

#[derive(Default)]
struct Attempts {
    flood_waits: u32,
    refreshes: u32,
    migrations: u32,
    disconnects: u32,
}

async fn fetch_part(shared: &Shared, part: Part) -> Result<Bytes, TelegramError> {
    let options = &shared.options;
    let mut attempts = Attempts::default();
    // The file reference generation the part last asked with, and whether the message must be
    // refetched before asking again. A refetch's failure goes through the same handling as a
    // part's: a flood wait closes the gate, a dropped connection is retried with backoff.
    let mut generation = 0;
    let mut stale = false;
    // The permit of the last request, kept until what its answer taught is recorded (the data
    // centre a FILE_MIGRATE named, or the fresh reference), so the parts waiting for it read
    // the new values rather than send with the old ones.
    let mut permit = None;
    loop {
        shared.account.wait_for_flood_gate(options.max_flood_wait).await?;
        let error = if stale {
            let refreshed = shared.refresh(generation).await;
            drop(permit.take());
            match refreshed {
                Ok(()) => {
                    stale = false;
                    continue;
                }
                Err(error) => error,
            }
        } else {
            let (answer, sent_with) = ask(shared, part, &mut generation).await;
            permit = sent_with;
            match answer {
                Ok(bytes) => return Ok(bytes),
                Err(error) => error,
            }
        };
        match error {
            TelegramError::FloodWait { seconds, premium } => {
                attempts.flood_waits += 1;
                let wait = Duration::from_secs(u64::from(seconds));
                // Held even when this part gives up: until the wait is over Telegram refuses
                // every request of the account, and the other parts would only earn more
                // (and longer) flood waits by asking.
                shared.account.hold_requests_for(wait, premium);
                if wait > options.max_flood_wait || attempts.flood_waits > options.max_flood_waits_per_part {
                    return Err(error);
                }
                tracing::info!(
                    seconds,
                    premium,
                    offset = part.offset,
                    "Telegram asked to wait before the next part"
                );
            }
            TelegramError::FileReferenceExpired => {
                attempts.refreshes += 1;
                if attempts.refreshes > options.max_reference_refreshes {
                    return Err(error);
                }
                tracing::debug!(
                    offset = part.offset,
                    "file reference expired, refetching the message"
                );
                stale = true;
            }
            TelegramError::FileMigrate(new_dc) => {
                attempts.migrations += 1;
                if attempts.migrations > options.max_migrations {
                    return Err(error);
                }
                let mut current = shared.current.lock().await;
                tracing::debug!(
                    from = current.dc,
                    to = new_dc,
                    "the file lives on another data centre"
                );
                current.dc = new_dc;
            }
            error if error.is_retryable() => {
                attempts.disconnects += 1;
                if attempts.disconnects > options.disconnect_retries {
                    return Err(error);
                }
                let delay = options
                    .backoff
                    .saturating_mul(2u32.saturating_pow(attempts.disconnects - 1));
                tracing::debug!(
                    offset = part.offset,
                    attempt = attempts.disconnects,
                    %error,
                    "part failed, retrying after {delay:?}"
                );
                // The backoff is this part's, not its data centre's: other parts (of this
                // download or another) use the slot meanwhile, and this one queues for a slot
                // again when it asks.
                drop(permit.take());
                tokio::time::sleep(delay).await;
            }
            error => return Err(error),
        }
        if !stale {
            drop(permit.take());
        }
    }
}

/// How many [`DownloadOptions::part_timeout`]s a sent request may go unanswered before it fails
/// and its permit is released all the same: a backstop for a request whose answer never comes,
/// whether its part gave up on it (the stall timeout) or still waits because the connection
/// keeps delivering other requests' answers.
const ABANDONED_REQUEST_TIMEOUTS: u32 = 4;

/// Sends one request for `part` with the current location, once a permit for its data centre
/// is free and the flood gate open; records the reference generation it asked with in
/// `generation`, and any answer with bytes as its data centre's delivery. Hands back the permit
/// with the answer (none after a stall: the abandoned request keeps it until its answer
/// arrives).
async fn ask(
    shared: &Shared,
    part: Part,
    generation: &mut u64,
) -> (Result<Bytes, TelegramError>, Option<OwnedSemaphorePermit>) {
    let options = &shared.options;
    // The location, data centre and reference are read once the permit is held: a part that
    // waited for it behind others may have waited through a FILE_MIGRATE or a refresh.
    let mut dc = shared.current.lock().await.dc;
    let (location, data_centre, permit) = loop {
        let data_centre = shared.account.data_centre(dc, options.max_parts_in_flight_per_dc);
        // The semaphore is never closed, so acquiring fails never; `None` would only mean
        // sending without a permit.
        let permit = data_centre.permits.clone().acquire_owned().await.ok();
        let current = shared.current.lock().await;
        if current.dc == dc {
            *generation = current.generation;
            break (current.location.clone(), data_centre, permit);
        }
        // Migrated meanwhile: wait for a permit of the new data centre instead.
        dc = current.dc;
    };
    // A flood wait may have begun while this part waited for its permit.
    if let Err(error) = shared.account.wait_for_flood_gate(options.max_flood_wait).await {
        return (Err(error), None);
    }
    // grammers never cancels a request once sent: its answer comes down the connection even
    // if nobody waits for it. So the request runs in a task of its own that keeps the permit
    // until the answer (or an error) arrives, whether this part gave up on it (a stall) or was
    // aborted (the download was cancelled); dropping its handle does not abort it.
    let api = shared.api.clone();
    let account = shared.account.clone();
    let connection = data_centre.clone();
    let max_flood_wait = options.max_flood_wait;
    let backstop = options.part_timeout.saturating_mul(ABANDONED_REQUEST_TIMEOUTS);
    let Part { offset, limit, .. } = part;
    // When the request is handed to the API: its stall timeout counts from then, not while it
    // waits at the flood gate, which may be closed for up to `max_flood_wait`.
    let (sent_tx, sent_rx) = oneshot::channel();
    let request = tokio::spawn(async move {
        // The task starts a moment after the check above; another request may have met a
        // flood wait in that moment.
        if let Err(error) = account.wait_for_flood_gate(max_flood_wait).await {
            return (Err(error), permit);
        }
        // Nobody waits for the answer any more: the part was dropped (its download was
        // cancelled) while this request waited at the gate. Not sent, it costs the connection
        // nothing; sent, its MiB would hold up every other download's parts behind it.
        if sent_tx.send(Instant::now()).is_err() {
            return (
                Err(TelegramError::Disconnected(format!(
                    "the request for byte {offset} was not sent: its download was cancelled"
                ))),
                permit,
            );
        }
        let answer = tokio::time::timeout(backstop, api.get_part(&location, dc, offset, limit)).await;
        let answer = answer.unwrap_or_else(|_| {
            Err(TelegramError::Disconnected(format!(
                "no answer to the request for byte {offset} in {} s",
                backstop.as_secs()
            )))
        });
        // Both recorded here, as the answer arrives, rather than when its part gets to it: a
        // delivery shows the connection alive to every part waiting on it even if this part
        // gave up on it, and a flood wait closes the gate before any other request starts.
        match &answer {
            Ok(_) => connection.delivered(),
            Err(TelegramError::FloodWait { seconds, premium }) => {
                account.hold_requests_for(Duration::from_secs(u64::from(*seconds)), *premium);
            }
            Err(_) => {}
        }
        // Handed back with the answer, so the part keeps it until it has recorded what the
        // answer taught (a FILE_MIGRATE, a stale reference); dropped with the output when
        // nobody waits any more.
        (answer, permit)
    });
    let answered = async move {
        match request.await {
            Ok((answer, permit)) => (answer, permit),
            Err(join_error) => (
                Err(TelegramError::Protocol(format!(
                    "the request for bytes from {offset} failed: {join_error}"
                ))),
                None,
            ),
        }
    };
    let (answer, permit) = shared
        .answer_unless_stalled(answered, sent_rx, &data_centre, part.offset)
        .await;
    let answer = match answer {
        Ok(bytes) if bytes.len() as u64 > u64::from(part.limit) => Err(TelegramError::Protocol(format!(
            "asked for {} bytes at {}, got {}",
            part.limit,
            part.offset,
            bytes.len()
        ))),
        answer => answer,
    };
    (answer, permit)
}

impl Account {
    /// Data centre `dc`'s shared state; its permits let `limit` requests of any download be
    /// in flight there at once, and are handed out in order.
    fn data_centre(&self, dc: i32, limit: usize) -> Arc<DataCentre> {
        self.data_centres
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(dc)
            .or_insert_with(|| {
                Arc::new(DataCentre {
                    id: dc,
                    permits: Arc::new(Semaphore::new(limit.max(1))),
                    last_delivery: StdMutex::new(None),
                })
            })
            .clone()
    }

    fn hold_requests_for(&self, wait: Duration, premium: bool) {
        let until = Instant::now() + wait;
        // A poisoned lock only means another part panicked mid-update of an Option of a Copy
        // value, which cannot be left half-written; keep using the value.
        let mut gate = self
            .flood_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if gate.is_none_or(|current| current.until < until) {
            *gate = Some(FloodGate { until, premium });
        }
    }

    /// Waits until no flood wait holds requests back. Fails with the flood wait, without
    /// waiting, when what is left of it is longer than [`DownloadOptions::max_flood_wait`]:
    /// the download gives up as the part that got the wait did.
    async fn wait_for_flood_gate(&self, max_flood_wait: Duration) -> Result<(), TelegramError> {
        loop {
            let gate = *self
                .flood_gate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(gate) = gate.filter(|gate| gate.until > Instant::now()) else {
                return Ok(());
            };
            let left = gate.until - Instant::now();
            if left > max_flood_wait {
                let seconds =
                    u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
                return Err(TelegramError::FloodWait {
                    seconds,
                    premium: gate.premium,
                });
            }
            tokio::time::sleep_until(gate.until).await;
        }
    }
}

impl Shared {
    /// Awaits `request`'s answer, unless it stalls first: neither a part of this download nor
    /// any answer from `data_centre` (where the request went) arrives for
    /// [`DownloadOptions::part_timeout`] since the request was handed to the API (`sent`).
    /// Until then the request is waiting at the flood gate, not on the connection, and cannot
    /// stall. An answer with bytes restarts the clock for every part.
    async fn answer_unless_stalled(
        &self,
        request: impl Future<Output = (Result<Bytes, TelegramError>, Option<OwnedSemaphorePermit>)>,
        sent: oneshot::Receiver<Instant>,
        data_centre: &DataCentre,
        offset: u64,
    ) -> (Result<Bytes, TelegramError>, Option<OwnedSemaphorePermit>) {
        let timeout = self.options.part_timeout;
        let stalled_since = |sent: Instant| {
            let last_part = *self
                .last_part
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            data_centre
                .last_delivery()
                .map_or(sent, |delivered| delivered.max(sent))
                .max(last_part)
        };
        tokio::pin!(request);
        tokio::pin!(sent);
        // `None` until the request is sent. The signal is dropped unsent only when the request
        // task ended without sending (it failed at the flood gate, or panicked), whose answer
        // then comes at once.
        let mut sent_at: Option<Instant> = None;
        let mut signal_pending = true;
        loop {
            let deadline = sent_at.map(|sent| stalled_since(sent) + timeout);
            // Built even while disabled (unsent), though then never polled.
            let stall = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                answer = &mut request => {
                    if answer.0.is_ok() {
                        *self.last_part.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                            Instant::now();
                    }
                    return answer;
                }
                at = &mut sent, if signal_pending => {
                    signal_pending = false;
                    sent_at = at.ok();
                }
                () = stall, if deadline.is_some() => {
                    // Another part may have arrived meanwhile, moving the deadline on.
                    if sent_at.is_some_and(|sent| stalled_since(sent) + timeout <= Instant::now()) {
                        let stalled = TelegramError::Disconnected(format!(
                            "no part of the file arrived for {} s, nor any other answer from data \
                             centre {} (the part at byte {offset} is still unanswered)",
                            timeout.as_secs(),
                            data_centre.id
                        ));
                        // Asking again on a connection that died without closing would stall
                        // again: grammers never notices such a death itself. Dropping it fails
                        // every request on it, this one included (which frees its permit), and
                        // the retry opens a new one.
                        self.api.drop_connection(data_centre.id).await;
                        return (Err(stalled), None);
                    }
                }
            }
        }
    }

    /// Refetches the message for a fresh file reference, unless another part already did since
    /// this part read generation `seen`.
    async fn refresh(&self, seen: u64) -> Result<(), TelegramError> {
        let mut current = self.current.lock().await;
        if current.generation != seen {
            return Ok(());
        }
        // Parts that waited for the lock while another's refetch failed with a flood wait must
        // not refetch during it.
        self.account
            .wait_for_flood_gate(self.options.max_flood_wait)
            .await?;
        let fresh = self.api.refetch(&self.message).await?;
        let Some(file) = fresh.media.file().filter(|file| file.location.id == self.file_id) else {
            return Err(TelegramError::Protocol(format!(
                "message {} in chat {} no longer holds the file being downloaded (it was edited): \
                 send the task again",
                self.message.message_id, self.message.chat.id
            )));
        };
        current.location = file.location.clone();
        // A FILE_MIGRATE followed since holds unless the document itself now names another
        // data centre.
        if file.dc != current.document_dc {
            current.dc = file.dc;
            current.document_dc = file.dc;
        }
        current.generation += 1;
        Ok(())
    }
}
