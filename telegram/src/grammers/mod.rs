//! [`GrammersApi`]: [`TelegramApi`] over the network with grammers-client 0.11.
//!
//! This module is the only place that talks to Telegram. It owns the connection (made once per
//! process, on first use, and reused; a failed attempt is remembered and not repeated until its
//! back-off runs out, see [`GrammersApi::connection`]), sign-in (bot token, or the user session
//! file copied per process; see [`settings`]), the retry policy (grammers' is `NoRetries`, so
//! every flood wait reaches [`crate::Downloader`], which decides), link resolution and
//! `upload.getFile`.
//!
//! Compiled and unit-tested (its pure parts live in [`convert`], [`settings`] and
//! [`crate::rpc`]); its behaviour is exercised through [`crate::fake::FakeTelegram`], because
//! no machine that builds savestream reaches Telegram.

pub mod convert;
pub mod settings;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use grammers_client::Client;
use grammers_mtsender::{ConnectionParams, InvocationError, NoRetries, SenderPool, SenderPoolHandle};
use grammers_session::storages::{ErasedSession, MemorySession, SqliteSession};
use grammers_session::types::{DcOption, PeerAuth, PeerId, PeerKind, PeerRef};
use grammers_session::Session;
use grammers_tl_types as tl;
use grammers_tl_types::Serializable;
use savestream_shared::config::TelegramConfig;
use savestream_shared::link::{ChatRef, TelegramLink};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::api::{
    chat_label, require_files, select_album, FileLocation, MediaMessage, MessageRef, TelegramApi,
};
use crate::error::TelegramError;
use crate::rpc::{self, Subject};
use settings::{Account, SessionCopy, Settings};

/// How long a metadata request (resolve, refetch, sign-in) may take. A machine with no route to
/// Telegram fails within this instead of hanging in the kernel's connect timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Albums hold at most 10 items, so the other members of a message's album are within 9 ids
/// of it. One `getMessages` for the 19 ids around the target finds them all.
const ALBUM_REACH: i32 = 9;

/// The data centre the watchdog's probe asks: no session has options for it, so grammers'
/// runner answers `InvalidDc` at once, without the network, whenever it is free to read
/// requests at all.
const PROBE_DC: i32 = 0;

/// A login copied to a data centre this recently is not copied again for another part.
const RECENT_AUTHORIZATION: Duration = Duration::from_secs(30);

/// How long the client waits for things; [`Limits::DEFAULT`] in production, shorter in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// A metadata request (resolve, refetch, sign-in).
    request: Duration,
    /// The whole dialog scan: large accounts have thousands of dialogs at 100 per request.
    dialog_scan: Duration,
    /// The runner's answer to the watchdog's probe. A free runner answers in microseconds; a
    /// healthy one may be busy opening a connection for a few seconds (TCP, the key exchange,
    /// `initConnection`: five round trips, through a proxy maybe); one stuck longer than this
    /// is stuck for good.
    probe: Duration,
    /// How long after a failed connect no new one is made, doubling with each failure in a row
    /// up to `connect_backoff_max`. A flood wait on the sign-in waits what Telegram asked for.
    connect_backoff: Duration,
    connect_backoff_max: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        request: REQUEST_TIMEOUT,
        dialog_scan: Duration::from_secs(REQUEST_TIMEOUT.as_secs() * 4),
        probe: Duration::from_secs(10),
        connect_backoff: Duration::from_secs(1),
        connect_backoff_max: Duration::from_secs(60),
    };

    /// How long no new connect is made after `failures_in_a_row` failed ones, the last with
    /// `error`.
    fn connect_backoff(&self, error: &TelegramError, failures_in_a_row: u32) -> Duration {
        if let Some(flood_wait) = error.retry_after() {
            return flood_wait;
        }
        // Past 2^16 the doubling is far beyond any maximum; the cap keeps the shift defined.
        let doublings = failures_in_a_row.saturating_sub(1).min(16);
        self.connect_backoff
            .saturating_mul(1 << doublings)
            .min(self.connect_backoff_max)
    }
}

/// The Telegram source's real client. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct GrammersApi {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    limits: Limits,
    /// Where each data centre is, when not where grammers knows Telegram's to be: empty in
    /// production; tests point grammers at local listeners that misbehave.
    dc_options: Vec<DcOption>,
    /// The process's connection, made on first use, or the last failed attempt to make one. A
    /// tokio mutex held across the attempt because connecting awaits: callers that arrive
    /// meanwhile wait for its outcome (the connection, or its failure) instead of making their
    /// own.
    connection: Mutex<ConnectionSlot>,
    /// `contacts.resolveUsername` is expensive and flood-limited; a username resolves once per
    /// process. Keys are lowercase.
    usernames: StdMutex<HashMap<String, PeerRef>>,
    /// One dialog scan at a time: concurrent tasks for the same uncached private chat wait for
    /// the first scan and then find the chat in the cache it filled. The scan's task holds it,
    /// so it is free only once no scan runs, whoever gave up waiting for one.
    dialog_scan: Arc<Mutex<()>>,
}

#[derive(Default)]
struct ConnectionSlot {
    connection: Option<Arc<Connection>>,
    /// Set when the last attempt to connect failed; cleared by one that succeeds.
    failed: Option<FailedConnect>,
}

/// A failed attempt to connect and sign in. Every attempt is a new key exchange and, for a bot,
/// a new `auth.importBotAuthorization`, which Telegram answers with ever longer flood waits when
/// repeated: until `retry_at` callers get `error` again instead of a new attempt.
struct FailedConnect {
    error: TelegramError,
    retry_at: Instant,
    /// Failed attempts in a row, this one included: the back-off doubles with each.
    failures_in_a_row: u32,
}

impl FailedConnect {
    /// The error for a caller at `now`, before `retry_at`: the same one, except that a flood
    /// wait asks for what is left of it, so the caller waits just that.
    fn error_at(&self, now: Instant) -> TelegramError {
        match &self.error {
            TelegramError::FloodWait { premium, .. } => {
                let left = self.retry_at.saturating_duration_since(now);
                let whole_seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                TelegramError::FloodWait {
                    seconds: u32::try_from(whole_seconds.max(1)).unwrap_or(u32::MAX),
                    premium: *premium,
                }
            }
            other => other.clone(),
        }
    }
}

struct Connection {
    client: Client,
    session: Arc<ErasedSession>,
    handle: SenderPoolHandle,
    runner: JoinHandle<()>,
    /// Set when the watchdog discarded this pool: it is replaced on the next request.
    stopped: AtomicBool,
    is_bot: bool,
    /// When an answer last arrived from each data centre: a request that waited long for its
    /// answer behind others on a busy connection is no sign of a dead one.
    answered: StdMutex<HashMap<i32, Instant>>,
    /// When this connection's login was last copied to each data centre other than home.
    authorized_dcs: Mutex<HashMap<i32, Instant>>,
    // Held for its Drop: the private copy of the user session is deleted with the connection.
    _session_copy: Option<SessionCopy>,
}

impl Connection {
    /// Whether requests may still use this pool.
    fn is_alive(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst) && !self.runner.is_finished()
    }

    fn answered(&self, dc: i32) {
        // Whole entries only are inserted; a poisoned lock still holds a usable map.
        self.answered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(dc, Instant::now());
    }

    /// Whether anything arrived from data centre `dc` within `period`.
    fn answered_within(&self, dc: i32, period: Duration) -> bool {
        self.answered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&dc)
            .is_some_and(|at| at.elapsed() < period)
    }

    /// Stops the pool now, whoever still holds it: every request waiting on it fails at once
    /// (grammers answers them `Dropped`, which is retryable). True the first time.
    fn stop(&self) -> bool {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.handle.quit();
        self.runner.abort();
        true
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Ends the pool's runner task, which closes every connection to Telegram.
        self.handle.quit();
        self.runner.abort();
    }
}

impl std::fmt::Debug for GrammersApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammersApi")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl GrammersApi {
    /// Checks `[telegram]` without touching the network; the connection is made on first use,
    /// so a worker starts (and fails its Telegram tasks with a clear reason) even when
    /// Telegram is unreachable.
    pub fn new(config: &TelegramConfig) -> Result<GrammersApi, TelegramError> {
        Ok(GrammersApi::from_settings(Settings::from_config(config)?))
    }

    pub fn from_settings(settings: Settings) -> GrammersApi {
        GrammersApi::with_limits(settings, Limits::DEFAULT, Vec::new())
    }

    fn with_limits(settings: Settings, limits: Limits, dc_options: Vec<DcOption>) -> GrammersApi {
        GrammersApi {
            inner: Arc::new(Inner {
                settings,
                limits,
                dc_options,
                connection: Mutex::new(ConnectionSlot::default()),
                usernames: StdMutex::new(HashMap::new()),
                dialog_scan: Arc::new(Mutex::new(())),
            }),
        }
    }

    /// Connects and signs in now, for a start-up check. Optional: every method connects on
    /// first use.
    pub async fn connect(&self) -> Result<(), TelegramError> {
        self.connection().await.map(|_| ())
    }

    /// The process's connection, made now if there is none alive.
    ///
    /// A failed attempt is remembered: until its back-off runs out ([`Limits::connect_backoff`],
    /// doubling with each failure in a row up to [`Limits::connect_backoff_max`], or the flood
    /// wait Telegram answered the sign-in with) every caller gets its error again, a flood wait
    /// with the seconds left, without connecting. Otherwise every queued task would sign in
    /// again, each drawing a longer flood wait. The slot's lock is held across the attempt, so
    /// concurrent callers share one attempt and its outcome.
    async fn connection(&self) -> Result<Arc<Connection>, TelegramError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.connection.take() {
            if connection.is_alive() {
                slot.connection = Some(connection.clone());
                return Ok(connection);
            }
            if !connection.stopped.load(Ordering::SeqCst) {
                tracing::warn!("the Telegram connection pool stopped; reconnecting");
            }
        }
        if let Some(failed) = &slot.failed {
            let now = Instant::now();
            if now < failed.retry_at {
                return Err(failed.error_at(now));
            }
        }
        match connect(&self.inner).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                slot.connection = Some(connection.clone());
                slot.failed = None;
                Ok(connection)
            }
            Err(error) => {
                let failures_in_a_row = slot
                    .failed
                    .as_ref()
                    .map_or(1, |failed| failed.failures_in_a_row.saturating_add(1));
                let backoff = self.inner.limits.connect_backoff(&error, failures_in_a_row);
                // The error's text names no secret: it is built from Telegram's answer or the
                // socket's error, never from the token, the app hash or the session.
                tracing::warn!(
                    failures_in_a_row,
                    backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "connecting to Telegram failed: {error}; no new attempt for {:.1} s",
                    backoff.as_secs_f64()
                );
                slot.failed = Some(FailedConnect {
                    error: error.clone(),
                    retry_at: Instant::now() + backoff,
                    failures_in_a_row,
                });
                Err(error)
            }
        }
    }

    /// Runs one request with [`Limits::request`], mapping its failure about `subject`; a
    /// request with no answer in time goes to the watchdog ([`GrammersApi::no_answer`]).
    ///
    /// A failed request never discards the connection: grammers answers `Dropped` also when
    /// one data centre's socket died, and its pool reconnects that socket on the next request.
    /// A new client would mean a new copy of the user session (its peer cache lost) or a new
    /// bot sign-in, which Telegram answers with long flood waits when repeated. Only a pool
    /// whose runner stopped, or that the watchdog found stuck, is replaced, by
    /// [`GrammersApi::connection`].
    async fn call<T>(
        &self,
        connection: &Connection,
        subject: Subject<'_>,
        request: impl Future<Output = Result<T, InvocationError>>,
    ) -> Result<T, TelegramError> {
        match tokio::time::timeout(self.inner.limits.request, request).await {
            Ok(Ok(value)) => {
                if let Ok(home) = connection.session.home_dc_id() {
                    connection.answered(home);
                }
                Ok(value)
            }
            Ok(Err(error)) => Err(rpc::from_invocation(&error, subject)),
            Err(_) => Err(self.no_answer(connection, self.inner.limits.request).await),
        }
    }

    /// The watchdog: a request through `connection` went unanswered for `waited`. Returns the
    /// error for it.
    ///
    /// grammers' runner opens a new connection to a data centre inline, with no timeout (no
    /// connect timeout beyond the kernel's, no read deadline in the key exchange): while one
    /// data centre's connect hangs, no request to any data centre is sent, and none fails.
    /// A request left unanswered may be one of them. So the watchdog asks the runner something
    /// it answers without the network ([`PROBE_DC`]); no answer within [`Limits::probe`] means
    /// the runner is stuck, and only a new pool recovers: this one is stopped (every request
    /// waiting on it fails at once, retryably) and the next request builds another.
    ///
    /// The home data centre's connection (where metadata requests go) may also have died
    /// without closing, which grammers never notices (no read deadline; the keep-alive ping's
    /// answer is not awaited): when nothing at all arrived from home while the request waited,
    /// that connection is dropped too, so the next request opens a new one.
    async fn no_answer(&self, connection: &Connection, waited: Duration) -> TelegramError {
        let why = format!("a Telegram request got no answer in {} ms", waited.as_millis());
        if let Ok(home) = connection.session.home_dc_id() {
            if !connection.answered_within(home, waited) {
                self.drop_dc_connection(connection, home, &format!("{why}, nor did anything else"));
            }
        }
        self.unless_stuck(connection, &why).await;
        no_answer(waited)
    }

    /// Drops `connection`'s connection to data centre `dc`: grammers aborts it, every request
    /// in flight on it fails at once (`Dropped`, retryable), and the next request to `dc`
    /// opens a new one.
    fn drop_dc_connection(&self, connection: &Connection, dc: i32, why: &str) {
        tracing::warn!(
            dc,
            "{why}: dropping the connection to Telegram's data centre {dc} (the requests on it \
             are asked again on a new one)"
        );
        connection.handle.disconnect_from_dc(dc);
    }

    /// Stops `connection`'s pool if its runner does not answer a probe (see
    /// [`GrammersApi::no_answer`]).
    async fn unless_stuck(&self, connection: &Connection, why: &str) {
        let probe = connection
            .handle
            .raw_invoke_in_dc(PROBE_DC, tl::functions::help::GetConfig {}.to_bytes());
        let runner_answered = tokio::time::timeout(self.inner.limits.probe, probe).await.is_ok();
        if !runner_answered && connection.stop() {
            tracing::warn!(
                "{why}, and the Telegram connection pool did not answer a probe in {} ms: it is \
                 stuck opening a connection to a data centre that does not answer; dropped the \
                 pool and its connections, the next request opens new ones",
                self.inner.limits.probe.as_millis()
            );
        }
    }

    async fn resolve_link(&self, link: &TelegramLink) -> Result<Vec<MediaMessage>, TelegramError> {
        let connection = self.connection().await?;
        let mut label = chat_label(&link.chat);
        let mut peer = self.resolve_chat(&connection, &link.chat, &label).await?;
        let mut message_id = link.message_id.get();
        if let Some(comment) = link.comment {
            peer = self.discussion_of(&connection, peer, &label).await?;
            label = format!(
                "{} (the discussion group of {label})",
                peer.id.bare_id().unwrap_or_default()
            );
            message_id = comment.get();
        }

        let ids: Vec<i32> = if link.single {
            vec![message_id]
        } else {
            (message_id.saturating_sub(ALBUM_REACH)..=message_id.saturating_add(ALBUM_REACH))
                .filter(|id| *id > 0)
                .collect()
        };
        let subject = Subject::Message {
            chat: &label,
            id: message_id,
        };
        let found = self
            .call(
                &connection,
                subject,
                connection.client.get_messages_by_id(peer, &ids),
            )
            .await?;
        let mut target = None;
        let mut neighbours = Vec::new();
        for message in found.into_iter().flatten() {
            let tl::enums::Message::Message(raw) = &message.raw else {
                continue;
            };
            let converted = MediaMessage {
                chat: convert::chat_key(peer),
                message_id: raw.id,
                grouped_id: raw.grouped_id,
                media: convert::media_from_raw(raw.media.as_ref()),
            };
            if raw.id == message_id {
                target = Some((converted, convert::topic_of(raw.reply_to.as_ref())));
            } else {
                neighbours.push(converted);
            }
        }
        let Some((target, topic)) = target else {
            return Err(TelegramError::message_not_found(&label, message_id));
        };
        if let (Some(link_topic), Some(topic)) = (link.topic_id, topic) {
            if link_topic.get() != topic {
                return Err(TelegramError::not_in_topic(&label, message_id, link_topic.get()));
            }
        }
        require_files(select_album(target, neighbours, link.single), &label, message_id)
    }

    /// The peer a link's chat names, with the access hash this account needs for it.
    async fn resolve_chat(
        &self,
        connection: &Arc<Connection>,
        chat: &ChatRef,
        label: &str,
    ) -> Result<PeerRef, TelegramError> {
        match chat {
            ChatRef::Username(username) => {
                let key = username.as_str().to_ascii_lowercase();
                let cached = self.usernames().get(&key).copied();
                if let Some(peer) = cached {
                    return Ok(peer);
                }
                let subject = Subject::Username(username.as_str());
                let peer = self
                    .call(
                        connection,
                        subject,
                        connection.client.resolve_username(username.as_str()),
                    )
                    .await?
                    .ok_or_else(|| TelegramError::username_not_found(username.as_str()))?;
                let peer = match tokio::time::timeout(self.inner.limits.request, peer.to_ref()).await {
                    Ok(Ok(Some(peer))) => peer,
                    Ok(Ok(None)) => {
                        return Err(TelegramError::NotMember {
                            chat: label.to_owned(),
                        })
                    }
                    Ok(Err(error)) => return Err(TelegramError::Session(error.to_string())),
                    Err(_) => return Err(no_answer(self.inner.limits.request)),
                };
                self.usernames().insert(key, peer);
                Ok(peer)
            }
            ChatRef::Channel(id) => {
                let peer_id =
                    PeerId::channel(id.get()).ok_or_else(|| TelegramError::chat_not_found(label))?;
                if let Some(peer) = cached_peer(connection, peer_id).await? {
                    return Ok(peer);
                }
                if connection.is_bot {
                    return self.resolve_for_bot(connection, peer_id, label).await;
                }
                self.find_in_dialogs(connection, peer_id, label).await
            }
        }
    }

    /// A bot cannot list dialogs, but `channels.getChannels` accepts an access hash of 0 from a
    /// bot for a channel it is in and answers with the real one (grammers caches it). A channel
    /// the bot is not in comes back as an error (CHANNEL_INVALID, CHANNEL_PRIVATE) or not at
    /// all, and both mean the bot is not a member.
    async fn resolve_for_bot(
        &self,
        connection: &Arc<Connection>,
        peer_id: PeerId,
        label: &str,
    ) -> Result<PeerRef, TelegramError> {
        let not_member = || TelegramError::NotMember {
            chat: label.to_owned(),
        };
        let answer = match tokio::time::timeout(
            self.inner.limits.request,
            connection.client.resolve_peer(peer_id.to_ambient_ref()),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => return Err(self.no_answer(connection, self.inner.limits.request).await),
        };
        let peer = answer.map_err(|error| bot_resolve_error(&error, label))?;
        match peer.to_ref().await {
            Ok(Some(peer)) => Ok(peer),
            Ok(None) => Err(not_member()),
            Err(error) => Err(TelegramError::Session(error.to_string())),
        }
    }

    /// Walks the account's dialogs until `peer_id` shows up; grammers caches every peer it
    /// sees (`auto_cache_peers`), so the session's cache is filled on the way. A chat that is
    /// not among the dialogs is one the account is not in.
    async fn find_in_dialogs(
        &self,
        connection: &Arc<Connection>,
        peer_id: PeerId,
        label: &str,
    ) -> Result<PeerRef, TelegramError> {
        let one_scan_at_a_time = self.inner.dialog_scan.clone().lock_owned().await;
        if let Some(peer) = cached_peer(connection, peer_id).await? {
            return Ok(peer);
        }
        tracing::info!(
            chat = label,
            "chat not in the session's peer cache; scanning the dialogs"
        );
        let client = connection.client.clone();
        // grammers' dialog iterator `expect`s some invariants of Telegram's answer; running it
        // in its own task turns a panic there into an error for this task instead of a crash.
        // The task is aborted when this call stops waiting for it (its timeout, or its own
        // task's cancellation): a scan nobody waits for would go on paging the dialogs beside
        // the next caller's scan. It holds the one-scan lock until it ends.
        let scan = AbortOnDropHandle::new(tokio::spawn(async move {
            let _one_scan_at_a_time = one_scan_at_a_time;
            let mut dialogs = client.iter_dialogs();
            loop {
                match dialogs.next().await {
                    Ok(Some(dialog)) if dialog.peer_id() == peer_id => return Ok(Some(dialog.peer_ref())),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(None),
                    Err(error) => return Err(error),
                }
            }
        }));
        let found = match tokio::time::timeout(self.inner.limits.dialog_scan, scan).await {
            Ok(Ok(Ok(found))) => found,
            Ok(Ok(Err(error))) => return Err(rpc::from_invocation(&error, Subject::Chat(label))),
            Ok(Err(join_error)) => {
                return Err(TelegramError::Protocol(format!(
                    "listing the account's chats failed: {join_error}"
                )))
            }
            Err(_) => return Err(self.no_answer(connection, self.inner.limits.dialog_scan).await),
        };
        found.ok_or_else(|| TelegramError::NotMember {
            chat: label.to_owned(),
        })
    }

    /// The linked discussion group of channel `peer`, for `?comment=` links.
    async fn discussion_of(
        &self,
        connection: &Arc<Connection>,
        peer: PeerRef,
        label: &str,
    ) -> Result<PeerRef, TelegramError> {
        if peer.id.kind() != PeerKind::Channel {
            return Err(TelegramError::no_discussion(label));
        }
        let request = tl::functions::channels::GetFullChannel {
            channel: tl::enums::InputChannel::from(peer),
        };
        let tl::enums::messages::ChatFull::Full(full) = self
            .call(
                connection,
                Subject::Chat(label),
                connection.client.invoke(&request),
            )
            .await?;
        let linked = match &full.full_chat {
            tl::enums::ChatFull::ChannelFull(channel) => channel.linked_chat_id,
            _ => None,
        };
        let Some(linked) = linked else {
            return Err(TelegramError::no_discussion(label));
        };
        let group_label = linked.to_string();
        for chat in &full.chats {
            match chat {
                tl::enums::Chat::Channel(channel) if channel.id == linked => {
                    let (Some(hash), false) = (channel.access_hash, channel.min) else {
                        break;
                    };
                    let id =
                        PeerId::channel(linked).ok_or_else(|| TelegramError::chat_not_found(&group_label))?;
                    return Ok(PeerRef {
                        id,
                        auth: PeerAuth::from_hash(hash),
                    });
                }
                tl::enums::Chat::ChannelForbidden(channel) if channel.id == linked => break,
                _ => {}
            }
        }
        Err(TelegramError::NotMember {
            chat: format!("{group_label} (the discussion group of {label})"),
        })
    }

    async fn refetch_message(&self, message: &MessageRef) -> Result<MediaMessage, TelegramError> {
        let connection = self.connection().await?;
        let label = message.chat.id.to_string();
        let peer = convert::peer_ref(message).ok_or_else(|| TelegramError::chat_not_found(&label))?;
        let subject = Subject::Message {
            chat: &label,
            id: message.message_id,
        };
        let found = self
            .call(
                &connection,
                subject,
                connection.client.get_messages_by_id(peer, &[message.message_id]),
            )
            .await?;
        let raw = found.into_iter().flatten().find_map(|found| match found.raw {
            tl::enums::Message::Message(raw) => Some(raw),
            _ => None,
        });
        let Some(raw) = raw else {
            return Err(TelegramError::message_not_found(&label, message.message_id));
        };
        Ok(MediaMessage {
            chat: message.chat,
            message_id: raw.id,
            grouped_id: raw.grouped_id,
            media: convert::media_from_raw(raw.media.as_ref()),
        })
    }

    // `upload.getFile` is sent with `invoke_in_dc`, in precise mode with 1 MiB parts, rather
    // than through grammers' `iter_download`. `iter_download` asks for one 512 KiB chunk at a
    // time and waits for each answer before sending the next, so a download runs at one chunk
    // per round trip; and it does not refresh expired file references. Sending our own requests
    // lets the Downloader keep many 1 MiB parts in flight at once (the pool pipelines them over
    // its connection to the file's data centre), resume at any offset, and handle every fault
    // itself. The request goes straight to the data centre named in the document, so there is
    // no FILE_MIGRATE round trip.
    async fn fetch_part(
        &self,
        location: &FileLocation,
        dc: i32,
        offset: u64,
        limit: u32,
    ) -> Result<Bytes, TelegramError> {
        let connection = self.connection().await?;
        let request = tl::functions::upload::GetFile {
            precise: true,
            cdn_supported: false,
            location: convert::location_to_tl(location),
            offset: i64::try_from(offset)
                .map_err(|_| TelegramError::Protocol(format!("offset {offset} is out of range")))?,
            limit: i32::try_from(limit)
                .map_err(|_| TelegramError::Protocol(format!("limit {limit} is out of range")))?,
        };
        let mut copied_authorization = false;
        loop {
            // No timeout of its own: answers come back in order over the one connection to the
            // data centre, so a request's age says how much was queued before it, not whether
            // the connection stalled. The Downloader's stall timeout (nothing delivered to the
            // download nor over the data centre's connection for `part_timeout`) says so.
            match connection.client.invoke_in_dc(dc, &request).await {
                Ok(tl::enums::upload::File::File(file)) => {
                    connection.answered(dc);
                    return Ok(Bytes::from(file.bytes));
                }
                Ok(tl::enums::upload::File::CdnRedirect(_)) => {
                    return Err(TelegramError::Protocol(
                        "Telegram redirected the download to a CDN although we did not offer to use one"
                            .to_owned(),
                    ))
                }
                // A new connection to a data centre other than home has an auth key but no
                // login: copy the login there once (auth.exportAuthorization on home,
                // auth.importAuthorization there) and ask again.
                Err(InvocationError::Rpc(error))
                    if error.is("AUTH_KEY_UNREGISTERED") && !copied_authorization =>
                {
                    let home = connection
                        .session
                        .home_dc_id()
                        .map_err(|error| TelegramError::Session(error.to_string()))?;
                    if dc == home {
                        return Err(rpc::from_rpc(&error, Subject::File));
                    }
                    self.copy_authorization(&connection, dc).await?;
                    copied_authorization = true;
                }
                Err(error) => return Err(rpc::from_invocation(&error, Subject::File)),
            }
        }
    }

    async fn copy_authorization(&self, connection: &Arc<Connection>, dc: i32) -> Result<(), TelegramError> {
        // Parts in flight to a new data centre all fail at once; the first copies the login and
        // the others, finding it just done, only ask again.
        let mut authorized = connection.authorized_dcs.lock().await;
        if authorized
            .get(&dc)
            .is_some_and(|at| at.elapsed() < RECENT_AUTHORIZATION)
        {
            return Ok(());
        }
        let exported = self
            .call(
                connection,
                Subject::Login,
                connection
                    .client
                    .invoke(&tl::functions::auth::ExportAuthorization { dc_id: dc }),
            )
            .await?;
        let tl::enums::auth::ExportedAuthorization::Authorization(exported) = exported;
        let import = tl::functions::auth::ImportAuthorization {
            id: exported.id,
            bytes: exported.bytes,
        };
        self.call(
            connection,
            Subject::Login,
            connection.client.invoke_in_dc(dc, &import),
        )
        .await?;
        authorized.insert(dc, Instant::now());
        Ok(())
    }

    fn usernames(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerRef>> {
        // The map is only ever inserted into whole entries; a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.inner
            .usernames
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TelegramApi for GrammersApi {
    fn resolve<'a>(
        &'a self,
        link: &'a TelegramLink,
    ) -> BoxFuture<'a, Result<Vec<MediaMessage>, TelegramError>> {
        Box::pin(self.resolve_link(link))
    }

    fn refetch<'a>(&'a self, message: &'a MessageRef) -> BoxFuture<'a, Result<MediaMessage, TelegramError>> {
        Box::pin(self.refetch_message(message))
    }

    fn get_part<'a>(
        &'a self,
        location: &'a FileLocation,
        dc: i32,
        offset: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Bytes, TelegramError>> {
        Box::pin(self.fetch_part(location, dc, offset, limit))
    }

    fn drop_connection(&self, dc: i32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let connection = self.inner.connection.lock().await.connection.clone();
            let Some(connection) = connection.filter(|connection| connection.is_alive()) else {
                return;
            };
            let why = "a download's part stalled: nothing arrived over the connection for its stall timeout";
            self.drop_dc_connection(&connection, dc, why);
            // The drop is a request to the runner like any other: one stuck opening another
            // data centre's connection never reads it, nor sends the retry.
            self.unless_stuck(&connection, why).await;
        })
    }
}

/// What grammers' `resolve_peer` says, as `Dropped`, when Telegram's answer holds no peer
/// with the id asked for (grammers-client 0.11, `client/chats.rs`).
const NO_MATCHING_PEER: &str = "response did not contain peer matching the input id";

/// A bot's failed `resolve_peer` of channel `label`: an answer without the channel means the
/// bot is not in it; any other failure, a dropped connection included, is mapped as usual
/// (a dropped connection is retryable, not a reason to tell the user to add the bot).
fn bot_resolve_error(error: &InvocationError, label: &str) -> TelegramError {
    match error {
        InvocationError::Dropped(reason) if *reason == NO_MATCHING_PEER => TelegramError::NotMember {
            chat: label.to_owned(),
        },
        error => rpc::from_invocation(error, Subject::Chat(label)),
    }
}

/// The error for a request Telegram did not answer in time.
fn no_answer(timeout: Duration) -> TelegramError {
    TelegramError::Disconnected(format!(
        "Telegram did not answer within {} s: check that this machine can reach Telegram's servers, \
         or set `[telegram.proxy]`",
        timeout.as_secs()
    ))
}

/// A connection failure while connecting means Telegram is out of reach: say what to check.
fn unreachable(error: TelegramError) -> TelegramError {
    match error {
        TelegramError::Disconnected(reason) => TelegramError::Disconnected(format!(
            "could not reach Telegram's servers ({reason}): check that this machine can reach them, \
             or set `[telegram.proxy]`"
        )),
        other => other,
    }
}

async fn cached_peer(connection: &Connection, peer_id: PeerId) -> Result<Option<PeerRef>, TelegramError> {
    connection
        .session
        .peer_ref(peer_id)
        .await
        .map_err(|error| TelegramError::Session(error.to_string()))
}

/// Connects and signs in as `inner`'s settings say.
async fn connect(inner: &Inner) -> Result<Connection, TelegramError> {
    let settings = &inner.settings;
    let connection = match &settings.account {
        Account::Bot { .. } => {
            let session = Arc::new(MemorySession::default());
            seed(&*session, &inner.dc_options).await?;
            start(session, settings, None, true)
        }
        Account::User { session } => {
            let copy = SessionCopy::create(session).await?;
            let sqlite = SqliteSession::open(copy.path()).await.map_err(|error| {
                TelegramError::Session(format!("cannot open {}: {error}", session.display()))
            })?;
            seed(&sqlite, &inner.dc_options).await?;
            start(Arc::new(sqlite), settings, Some(copy), false)
        }
    };
    let authorized = tokio::time::timeout(inner.limits.request, connection.client.is_authorized())
        .await
        .map_err(|_| no_answer(inner.limits.request))?
        .map_err(|error| unreachable(rpc::from_invocation(&error, Subject::Login)))?;
    match &settings.account {
        Account::Bot { token } if !authorized => {
            tokio::time::timeout(
                inner.limits.request,
                connection
                    .client
                    .bot_sign_in(token.expose(), settings.app_hash.expose()),
            )
            .await
            .map_err(|_| no_answer(inner.limits.request))?
            .map_err(|error| unreachable(rpc::from_invocation(&error, Subject::Login)))?;
            tracing::info!("signed in to Telegram as a bot");
        }
        Account::User { session } if !authorized => {
            return Err(TelegramError::Unauthorized(format!(
                "the user session at {} is not logged in (or was logged out): run `savestream-worker login` again",
                session.display()
            )));
        }
        _ => tracing::info!("connected to Telegram"),
    }
    Ok(connection)
}

/// Writes `dc_options` (none in production) into `session`, where the pool looks for them.
async fn seed<S>(session: &S, dc_options: &[DcOption]) -> Result<(), TelegramError>
where
    S: Session,
    S::Error: std::error::Error,
{
    for option in dc_options {
        session
            .set_dc_option(option)
            .await
            .map_err(|error| TelegramError::Session(error.to_string()))?;
    }
    Ok(())
}

/// Starts grammers' sender pool on `session` with our connection parameters, and a client on it.
fn start<S>(session: Arc<S>, settings: &Settings, copy: Option<SessionCopy>, is_bot: bool) -> Connection
where
    S: Session + Sized,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let params = ConnectionParams {
        // Nothing is retried inside grammers: flood waits and dropped connections come back to
        // the caller, whose policy (the Downloader's, the worker's) knows about leases.
        retry_policy: Box::new(NoRetries),
        proxy_url: settings.proxy_url.clone(),
        ..ConnectionParams::default()
    };
    let SenderPool {
        runner,
        handle,
        updates,
    } = SenderPool::with_configuration(session, settings.app_id, params);
    // savestream reads no updates; with the receiver gone, grammers stops forwarding them.
    drop(updates);
    let client = Client::new(handle.clone());
    Connection {
        client,
        session: handle.session.clone(),
        handle: handle.thin.clone(),
        runner: tokio::spawn(runner.run()),
        stopped: AtomicBool::new(false),
        is_bot,
        answered: StdMutex::new(HashMap::new()),
        authorized_dcs: Mutex::new(HashMap::new()),
        _session_copy: copy,
    }
}

/// Starts a pool on a fresh SQLite session file for [`crate::login`]; returns the client and
/// what stops it.
pub(crate) fn start_login_pool(
    session: SqliteSession,
    settings_app_id: i32,
    proxy_url: Option<String>,
) -> (Client, SenderPoolHandle, JoinHandle<()>) {
    let params = ConnectionParams {
        retry_policy: Box::new(NoRetries),
        proxy_url,
        ..ConnectionParams::default()
    };
    let SenderPool {
        runner,
        handle,
        updates,
    } = SenderPool::with_configuration(Arc::new(session), settings_app_id, params);
    drop(updates);
    let client = Client::new(handle.clone());
    (client, handle.thin.clone(), tokio::spawn(runner.run()))
}
