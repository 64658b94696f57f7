//! [`FakeTelegram`]: an in-process Telegram for tests, faithful where savestream depends on it.
//!
//! It holds chats (public by username, private by id with or without membership), forum
//! topics, linked discussion groups, albums, documents with and without names, photos and
//! media that is not a file, and serves the real bytes of in-memory files. Like Telegram it
//! enforces `upload.getFile`'s precise-mode rules, with a limit that divides 1 MiB (a
//! misaligned, boundary-crossing or odd-sized request is a 400 `OFFSET_INVALID` /
//! `LIMIT_INVALID`), answers a request sent to the wrong data centre
//! with FILE_MIGRATE, and a stale file reference with FILE_REFERENCE_EXPIRED until the message
//! is refetched. After it answers FLOOD_WAIT_n it refuses every `get_part` of the account with
//! the rest of the wait until the n seconds are over (tokio time), as Telegram does, and counts
//! those refusals ([`FakeTelegram::flood_refusals`]). It can model grammers' one connection per
//! data centre with a bandwidth ([`FakeTelegram::limit_bandwidth`]): answers then arrive one
//! after another at that rate, and it counts the requests on each connection, abandoned ones
//! included ([`FakeTelegram::max_on_link`]). Faults are injected on a schedule ([`Fault`]) and
//! every call is recorded, with the peak number of part requests in flight, for assertions.
//!
//! Errors are produced the way the real client produces them: as Telegram's RPC error text run
//! through [`crate::rpc`], so tests see exactly the messages users will.
//!
//! It is compiled into the library (not only under `cfg(test)`) because the worker's tests
//! drive the whole pipeline against it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use grammers_mtsender::InvocationError;
use savestream_shared::link::{ChatRef, TelegramLink};

use crate::api::{
    chat_label, require_files, select_album, ChatKey, ChatKind, FileKind, FileLocation, Media, MediaMessage,
    MessageRef, TelegramApi,
};
use crate::error::TelegramError;
use crate::parts::{self, ALIGNMENT, PART_SIZE};
use crate::rpc::{self, Subject};

/// An in-memory file held by the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub i64);

/// A chat to add to the fake.
#[derive(Debug, Clone)]
pub struct FakeChat {
    id: i64,
    username: Option<String>,
    kind: ChatKind,
    member: bool,
}

impl FakeChat {
    /// A public channel anyone can read through `t.me/<username>/...`.
    pub fn public(id: i64, username: &str) -> FakeChat {
        FakeChat {
            id,
            username: Some(username.to_owned()),
            kind: ChatKind::Channel,
            member: true,
        }
    }

    /// A private channel or supergroup (`t.me/c/<id>/...`) the account is a member of.
    pub fn private(id: i64) -> FakeChat {
        FakeChat {
            id,
            username: None,
            kind: ChatKind::Channel,
            member: true,
        }
    }

    /// The account is not a member (it left, or never joined).
    pub fn not_member(mut self) -> FakeChat {
        self.member = false;
        self
    }
}

/// A message to add to a chat.
#[derive(Debug, Clone)]
pub struct FakeMessage {
    pub id: i32,
    /// The forum topic, for messages outside the General topic.
    pub topic: Option<i32>,
    pub grouped_id: Option<i64>,
    pub content: FakeContent,
}

/// What a [`FakeMessage`] holds.
#[derive(Debug, Clone)]
pub enum FakeContent {
    Document {
        file: FileId,
        name: Option<String>,
        mime: Option<String>,
    },
    Photo {
        file: FileId,
    },
    /// Not a file; the text says what, as in "a poll" or "no media".
    Other(String),
}

impl FakeMessage {
    pub fn document(id: i32, file: FileId, name: Option<&str>, mime: Option<&str>) -> FakeMessage {
        FakeMessage::new(
            id,
            FakeContent::Document {
                file,
                name: name.map(str::to_owned),
                mime: mime.map(str::to_owned),
            },
        )
    }

    pub fn photo(id: i32, file: FileId) -> FakeMessage {
        FakeMessage::new(id, FakeContent::Photo { file })
    }

    /// A message whose media is not a file: `holds` is what it is, as in "a poll".
    pub fn other(id: i32, holds: &str) -> FakeMessage {
        FakeMessage::new(id, FakeContent::Other(holds.to_owned()))
    }

    pub fn in_topic(mut self, topic: i32) -> FakeMessage {
        self.topic = Some(topic);
        self
    }

    pub fn in_album(mut self, grouped_id: i64) -> FakeMessage {
        self.grouped_id = Some(grouped_id);
        self
    }

    fn new(id: i32, content: FakeContent) -> FakeMessage {
        FakeMessage {
            id,
            topic: None,
            grouped_id: None,
            content,
        }
    }
}

/// A fault to inject into `get_part` answers.
#[derive(Debug, Clone)]
pub struct Fault {
    pub when: When,
    pub kind: FaultKind,
    /// How many matching requests it hits before it is spent.
    pub times: u32,
}

impl Fault {
    /// Hits the first request for part `index` (bytes `index` MiB to `index + 1` MiB).
    pub fn at_part(index: u64, kind: FaultKind) -> Fault {
        Fault {
            when: When::Part(index),
            kind,
            times: 1,
        }
    }

    /// Hits the `n`th `get_part` call (from 0), whatever it asks for.
    pub fn at_call(n: usize, kind: FaultKind) -> Fault {
        Fault {
            when: When::Call(n),
            kind,
            times: 1,
        }
    }

    /// Hits every request it matches, up to `times`.
    pub fn times(mut self, times: u32) -> Fault {
        self.times = times;
        self
    }
}

/// Which `get_part` requests a [`Fault`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Requests whose offset falls in this 1 MiB part.
    Part(u64),
    /// The nth `get_part` call, counting from 0.
    Call(usize),
    /// Every `get_part` request.
    Always,
    /// `refetch` calls (only [`FaultKind::FloodWait`] applies to them).
    Refetch,
}

/// What a [`Fault`] does to the request it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// `420 FLOOD_WAIT_<seconds>`.
    FloodWait(u32),
    /// `420 FLOOD_PREMIUM_WAIT_<seconds>`.
    FloodPremiumWait(u32),
    /// The file reference expires now: this and later requests with the old reference get
    /// FILE_REFERENCE_EXPIRED until the message is refetched.
    ExpireReference,
    /// The file moves to data centre `dc`: requests elsewhere get `FILE_MIGRATE_<dc>`. Its
    /// messages still name the data centre it was added on.
    Migrate(i32),
    /// The connection to the request's data centre drops (an I/O error, as grammers reports
    /// one): like grammers, every other request in flight on it fails at once too.
    Disconnect,
    /// The answer comes after this delay (tokio time, so a paused clock skips it).
    Delay(Duration),
}

/// One recorded `get_part` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartCall {
    pub file: FileId,
    pub dc: i32,
    pub offset: u64,
    pub limit: u32,
}

/// One recorded call of any [`TelegramApi`] method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Resolve(String),
    Refetch { chat_id: i64, message_id: i32 },
    GetPart(PartCall),
}

/// The fake Telegram. Cheap to share: wrap it in an `Arc` and hand it out as
/// `Arc<dyn TelegramApi>`.
#[derive(Default)]
pub struct FakeTelegram {
    state: Mutex<State>,
    /// Woken whenever a data centre's connection drops, so the requests waiting on it fail.
    link_dropped: tokio::sync::Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Default)]
struct State {
    chats: BTreeMap<i64, ChatState>,
    files: HashMap<FileId, FileState>,
    faults: Vec<Fault>,
    calls: Vec<Call>,
    part_calls: usize,
    next_file: i64,
    /// The account's current flood wait, set by an injected FLOOD_WAIT.
    flood: Option<Flood>,
    /// `get_part` requests refused because they came during a flood wait.
    flood_refusals: usize,
    /// Set by [`FakeTelegram::limit_bandwidth`]: bytes per second of each data centre's
    /// connection.
    bandwidth: Option<u64>,
    /// When each data centre's connection has delivered every answer queued on it so far.
    links_free_at: HashMap<i32, tokio::time::Instant>,
    /// Under a bandwidth limit, when each answer still on its way over each data centre's
    /// connection arrives, whether or not the request's future is still awaited.
    on_link: HashMap<i32, Vec<tokio::time::Instant>>,
    /// The most requests ever on one data centre's connection at once.
    max_on_link: usize,
    /// Per data centre, how many times its connection dropped: a request fails when this
    /// changes while it waits for its answer.
    link_epochs: HashMap<i32, u64>,
    /// Per data centre, the client's [`TelegramApi::drop_connection`] calls.
    dropped_connections: HashMap<i32, usize>,
}

/// A flood wait the fake enforces on every request until `until`.
#[derive(Clone, Copy)]
struct Flood {
    until: tokio::time::Instant,
    premium: bool,
}

struct ChatState {
    chat: FakeChat,
    discussion: Option<i64>,
    messages: BTreeMap<i32, FakeMessage>,
}

struct FileState {
    bytes: Bytes,
    /// Where the file is served; [`FaultKind::Migrate`] moves it.
    dc: i32,
    /// The data centre its messages name (a migration does not change it).
    document_dc: i32,
    /// The current file reference is this number's bytes; expiring it bumps it.
    generation: u32,
}

impl FakeTelegram {
    pub fn new() -> FakeTelegram {
        FakeTelegram::default()
    }

    /// Stores a file on data centre `dc`.
    pub fn add_file(&self, bytes: impl Into<Bytes>, dc: i32) -> FileId {
        let mut state = self.lock();
        state.next_file += 1;
        let id = FileId(state.next_file);
        state.files.insert(
            id,
            FileState {
                bytes: bytes.into(),
                dc,
                document_dc: dc,
                generation: 0,
            },
        );
        id
    }

    pub fn add_chat(&self, chat: FakeChat) {
        self.lock().chats.insert(
            chat.id,
            ChatState {
                chat,
                discussion: None,
                messages: BTreeMap::new(),
            },
        );
    }

    /// Makes `group` the discussion group of channel `channel` (both must be added).
    pub fn link_discussion(&self, channel: i64, group: i64) {
        if let Some(chat) = self.lock().chats.get_mut(&channel) {
            chat.discussion = Some(group);
        }
    }

    /// Adds a message to chat `chat_id` (which must be added).
    pub fn add_message(&self, chat_id: i64, message: FakeMessage) {
        if let Some(chat) = self.lock().chats.get_mut(&chat_id) {
            chat.messages.insert(message.id, message);
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every `get_part` call so far, in order.
    pub fn part_calls(&self) -> Vec<PartCall> {
        self.lock()
            .calls
            .iter()
            .filter_map(|call| match call {
                Call::GetPart(part) => Some(*part),
                _ => None,
            })
            .collect()
    }

    pub fn refetch_count(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|call| matches!(call, Call::Refetch { .. }))
            .count()
    }

    /// `get_part` requests refused with the rest of a flood wait because they were sent before
    /// it was over: a client that respects flood waits sends none.
    pub fn flood_refusals(&self) -> usize {
        self.lock().flood_refusals
    }

    /// Models grammers' one connection per data centre, shared by every download: from now on
    /// each data centre's answers come back one after another, in the order the requests were
    /// made, each taking its length at `bytes_per_second` (tokio time, so a paused clock runs
    /// it instantly). A request whose future is dropped still takes its turn, as its bytes
    /// still arrive over the real connection; and a [`FaultKind::Delay`] holds the connection
    /// for its length, stalling every answer behind it.
    pub fn limit_bandwidth(&self, bytes_per_second: u64) {
        self.lock().bandwidth = Some(bytes_per_second.max(1));
    }

    /// When the answer to a request to `dc` made now, ready after `delay`, has arrived: `None`
    /// without a bandwidth limit (it arrives after `delay`).
    fn arrival(
        &self,
        dc: i32,
        delay: Duration,
        answer: &Result<Bytes, TelegramError>,
    ) -> Option<tokio::time::Instant> {
        let mut state = self.lock();
        let rate = state.bandwidth?;
        let ready = tokio::time::Instant::now() + delay;
        let start = state
            .links_free_at
            .get(&dc)
            .map_or(ready, |free| (*free).max(ready));
        let length = answer.as_ref().map_or(0, Bytes::len) as u64;
        let at = start + Duration::from_nanos(length.saturating_mul(1_000_000_000) / rate);
        state.links_free_at.insert(dc, at);
        let now = tokio::time::Instant::now();
        let on_link = state.on_link.entry(dc).or_default();
        on_link.retain(|arrives| *arrives > now);
        on_link.push(at);
        let count = on_link.len();
        state.max_on_link = state.max_on_link.max(count);
        Some(at)
    }

    /// Under [`FakeTelegram::limit_bandwidth`], the most `get_part` requests ever on one data
    /// centre's connection at once: sent and not yet arrived, counting those whose future was
    /// dropped (a cancelled or given-up request), since their bytes still come down the
    /// connection ahead of every later answer.
    pub fn max_on_link(&self) -> usize {
        self.lock().max_on_link
    }

    /// How many times the client dropped data centre `dc`'s connection
    /// ([`TelegramApi::drop_connection`]).
    pub fn dropped_connections(&self, dc: i32) -> usize {
        self.lock().dropped_connections.get(&dc).copied().unwrap_or(0)
    }

    fn link_epoch(&self, dc: i32) -> u64 {
        self.lock().link_epochs.get(&dc).copied().unwrap_or(0)
    }

    /// Data centre `dc`'s connection drops: every request waiting on it fails, and the bytes
    /// queued on it never arrive.
    fn drop_link(&self, dc: i32) {
        {
            let mut state = self.lock();
            *state.link_epochs.entry(dc).or_default() += 1;
            state.links_free_at.remove(&dc);
            state.on_link.remove(&dc);
        }
        self.link_dropped.notify_waiters();
    }

    /// `get_part` requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most `get_part` requests ever answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// The data centre a file lives on now.
    pub fn file_dc(&self, file: FileId) -> Option<i32> {
        self.lock().files.get(&file).map(|state| state.dc)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; later assertions
        // may still read the state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn resolve_now(&self, link: &TelegramLink) -> Result<Vec<MediaMessage>, TelegramError> {
        let mut state = self.lock();
        state.calls.push(Call::Resolve(link.to_string()));
        let label = chat_label(&link.chat);
        let chat = match &link.chat {
            ChatRef::Username(username) => state
                .chats
                .values()
                .find(|chat| {
                    chat.chat
                        .username
                        .as_deref()
                        .is_some_and(|name| name.eq_ignore_ascii_case(username.as_str()))
                })
                .ok_or_else(|| {
                    rpc::from_rpc(
                        &rpc::rpc_error(400, "USERNAME_NOT_OCCUPIED"),
                        Subject::Username(username.as_str()),
                    )
                })?,
            // A `c/` link needs the chat's access hash, which only a member's session has (the
            // real client looks in the peer cache and the dialogs): a non-member cannot follow it.
            ChatRef::Channel(id) => state
                .chats
                .get(&id.get())
                .filter(|chat| chat.chat.member)
                .ok_or_else(|| TelegramError::NotMember { chat: label.clone() })?,
        };

        let (chat, label, message_id) = match link.comment {
            None => (chat, label, link.message_id.get()),
            Some(comment) => {
                let group = chat
                    .discussion
                    .and_then(|group| state.chats.get(&group))
                    .ok_or_else(|| TelegramError::no_discussion(&label))?;
                let group_label = format!("{} (the discussion group of {label})", group.chat.id);
                (group, group_label, comment.get())
            }
        };
        let target = chat
            .messages
            .get(&message_id)
            .ok_or_else(|| TelegramError::message_not_found(&label, message_id))?;
        if let (Some(link_topic), Some(topic)) = (link.topic_id, target.topic) {
            if link_topic.get() != topic {
                return Err(TelegramError::not_in_topic(&label, message_id, link_topic.get()));
            }
        }
        let convert = |message: &FakeMessage| to_media_message(&state, &chat.chat, message);
        let neighbours = match target.grouped_id {
            Some(group) if !link.single => chat
                .messages
                .values()
                .filter(|message| message.grouped_id == Some(group))
                .map(convert)
                .collect(),
            _ => Vec::new(),
        };
        let messages = select_album(convert(target), neighbours, link.single);
        require_files(messages, &label, message_id)
    }

    fn refetch_now(&self, message: &MessageRef) -> Result<MediaMessage, TelegramError> {
        let mut state = self.lock();
        state.calls.push(Call::Refetch {
            chat_id: message.chat.id,
            message_id: message.message_id,
        });
        let now = tokio::time::Instant::now();
        if let Some(flood) = state.flood.filter(|flood| flood.until > now) {
            state.flood_refusals += 1;
            let left = flood.until - now;
            let seconds =
                u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
            return Err(TelegramError::FloodWait {
                seconds,
                premium: flood.premium,
            });
        }
        let flood = state.faults.iter_mut().find_map(|fault| match fault.kind {
            FaultKind::FloodWait(seconds) if fault.when == When::Refetch && fault.times > 0 => {
                fault.times -= 1;
                Some(seconds)
            }
            _ => None,
        });
        if let Some(seconds) = flood {
            state.flood = Some(Flood {
                until: now + Duration::from_secs(u64::from(seconds)),
                premium: false,
            });
            let error = rpc::rpc_error(420, &format!("FLOOD_WAIT_{seconds}"));
            return Err(rpc::from_rpc(&error, Subject::File));
        }
        let label = message.chat.id.to_string();
        let chat = state
            .chats
            .get(&message.chat.id)
            .ok_or_else(|| TelegramError::chat_not_found(&label))?;
        let found = chat
            .messages
            .get(&message.message_id)
            .ok_or_else(|| TelegramError::message_not_found(&label, message.message_id))?;
        Ok(to_media_message(&state, &chat.chat, found))
    }

    /// Decides the whole answer under the lock; returns the delay to wait before giving it.
    fn answer_part(
        &self,
        location: &FileLocation,
        dc: i32,
        offset: u64,
        limit: u32,
    ) -> (Duration, Result<Bytes, TelegramError>) {
        let mut state = self.lock();
        let file = FileId(location.id);
        state.calls.push(Call::GetPart(PartCall {
            file,
            dc,
            offset,
            limit,
        }));
        let call = state.part_calls;
        state.part_calls += 1;

        // Telegram refuses every request of an account that is waiting out a flood wait, with
        // what is left of the wait (rounded up), before it looks at the request itself.
        let now = tokio::time::Instant::now();
        if let Some(flood) = state.flood.filter(|flood| flood.until > now) {
            state.flood_refusals += 1;
            let left = flood.until - now;
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            let name = if flood.premium {
                "FLOOD_PREMIUM_WAIT"
            } else {
                "FLOOD_WAIT"
            };
            let refusal = rpc::rpc_error(420, &format!("{name}_{seconds}"));
            return (Duration::ZERO, Err(rpc::from_rpc(&refusal, Subject::File)));
        }

        let mut delay = Duration::ZERO;
        let mut flood = None;
        let mut fault_error = None;
        let mut file_changes = Vec::new();
        for fault in state.faults.iter_mut() {
            let hits = match fault.when {
                When::Part(index) => offset / PART_SIZE == index,
                When::Call(n) => n == call,
                When::Always => true,
                When::Refetch => false,
            };
            if !hits || fault.times == 0 {
                continue;
            }
            fault.times -= 1;
            match &fault.kind {
                FaultKind::Delay(extra) => delay += *extra,
                FaultKind::FloodWait(seconds) => {
                    fault_error = Some(rpc::rpc_error(420, &format!("FLOOD_WAIT_{seconds}")));
                    flood = Some((*seconds, false));
                    break;
                }
                FaultKind::FloodPremiumWait(seconds) => {
                    fault_error = Some(rpc::rpc_error(420, &format!("FLOOD_PREMIUM_WAIT_{seconds}")));
                    flood = Some((*seconds, true));
                    break;
                }
                FaultKind::Disconnect => {
                    let io_error =
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, INJECTED_DISCONNECT);
                    return (
                        delay,
                        Err(rpc::from_invocation(
                            &InvocationError::Io(io_error),
                            Subject::File,
                        )),
                    );
                }
                FaultKind::ExpireReference | FaultKind::Migrate(_) => file_changes.push(fault.kind.clone()),
            }
        }
        if let Some((seconds, premium)) = flood {
            state.flood = Some(Flood {
                until: now + Duration::from_secs(u64::from(seconds)),
                premium,
            });
        }
        if let Some(error) = fault_error {
            return (delay, Err(rpc::from_rpc(&error, Subject::File)));
        }
        if let Some(state_of_file) = state.files.get_mut(&file) {
            for change in file_changes {
                match change {
                    FaultKind::ExpireReference => state_of_file.generation += 1,
                    FaultKind::Migrate(to) => state_of_file.dc = to,
                    _ => {}
                }
            }
        }

        let refuse = |message: &str| {
            (
                delay,
                Err(rpc::from_rpc(&rpc::rpc_error(400, message), Subject::File)),
            )
        };
        if !parts::is_valid_request(offset, limit) {
            return if !offset.is_multiple_of(ALIGNMENT) {
                refuse("OFFSET_INVALID")
            } else {
                refuse("LIMIT_INVALID")
            };
        }
        let Some(stored) = state.files.get(&file) else {
            return refuse("FILE_ID_INVALID");
        };
        if location.access_hash != access_hash(file) {
            return refuse("FILE_ID_INVALID");
        }
        if dc != stored.dc {
            let migrate = rpc::rpc_error(303, &format!("FILE_MIGRATE_{}", stored.dc));
            return (delay, Err(rpc::from_rpc(&migrate, Subject::File)));
        }
        if location.file_reference != reference(stored.generation) {
            return refuse("FILE_REFERENCE_EXPIRED");
        }
        let length = stored.bytes.len() as u64;
        // Telegram refuses an offset at or past the end of the file rather than answering with
        // nothing; the end shows as a short answer before it.
        if offset >= length {
            return refuse("OFFSET_INVALID");
        }
        let start = offset.min(length);
        let end = (offset + u64::from(limit)).min(length);
        // Both ends are at most the file's length, which is a usize.
        let range = usize::try_from(start).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(usize::MAX);
        (delay, Ok(stored.bytes.slice(range)))
    }
}

impl TelegramApi for FakeTelegram {
    fn resolve<'a>(
        &'a self,
        link: &'a TelegramLink,
    ) -> BoxFuture<'a, Result<Vec<MediaMessage>, TelegramError>> {
        Box::pin(async move { self.resolve_now(link) })
    }

    fn refetch<'a>(&'a self, message: &'a MessageRef) -> BoxFuture<'a, Result<MediaMessage, TelegramError>> {
        Box::pin(async move { self.refetch_now(message) })
    }

    fn get_part<'a>(
        &'a self,
        location: &'a FileLocation,
        dc: i32,
        offset: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Bytes, TelegramError>> {
        Box::pin(async move {
            let _in_flight = InFlight::enter(self);
            let epoch = self.link_epoch(dc);
            let (delay, answer) = self.answer_part(location, dc, offset, limit);
            let at = self
                .arrival(dc, delay, &answer)
                .unwrap_or_else(|| tokio::time::Instant::now() + delay);
            loop {
                // Made before the check, so a drop between the two still wakes it.
                let dropped = self.link_dropped.notified();
                if self.link_epoch(dc) != epoch {
                    // What grammers answers every request on a connection it aborted.
                    let error = InvocationError::Dropped("SenderPoolRunner was dropped during receive");
                    return Err(rpc::from_invocation(&error, Subject::File));
                }
                tokio::select! {
                    () = tokio::time::sleep_until(at) => break,
                    () = dropped => {}
                }
            }
            let injected_disconnect = matches!(
                &answer,
                Err(TelegramError::Disconnected(reason)) if reason.contains(INJECTED_DISCONNECT)
            );
            if injected_disconnect {
                self.drop_link(dc);
            }
            answer
        })
    }

    fn drop_connection(&self, dc: i32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.lock().dropped_connections.entry(dc).or_default() += 1;
            self.drop_link(dc);
        })
    }
}

/// The reason of an injected [`FaultKind::Disconnect`], by which the answer is told from
/// others that fail.
const INJECTED_DISCONNECT: &str = "connection reset by peer (injected)";

/// Counts a `get_part` as in flight until it is answered or dropped (a cancelled request
/// stops counting the moment its future is dropped, as a real one stops being awaited).
struct InFlight<'a>(&'a FakeTelegram);

impl<'a> InFlight<'a> {
    fn enter(fake: &'a FakeTelegram) -> InFlight<'a> {
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(fake)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn access_hash(file: FileId) -> i64 {
    file.0.wrapping_mul(31).wrapping_add(7)
}

fn reference(generation: u32) -> Vec<u8> {
    generation.to_be_bytes().to_vec()
}

fn to_media_message(state: &State, chat: &FakeChat, message: &FakeMessage) -> MediaMessage {
    let location = |file: FileId, kind: FileKind| -> Option<(FileLocation, &FileState)> {
        let stored = state.files.get(&file)?;
        Some((
            FileLocation {
                kind,
                id: file.0,
                access_hash: access_hash(file),
                file_reference: reference(stored.generation),
            },
            stored,
        ))
    };
    let media = match &message.content {
        FakeContent::Document { file, name, mime } => match location(*file, FileKind::Document) {
            Some((location, stored)) => Media::Document {
                name: name.clone(),
                mime: mime.clone(),
                size: stored.bytes.len() as u64,
                location,
                dc: stored.document_dc,
            },
            None => Media::Unsupported("a file that no longer exists".to_owned()),
        },
        FakeContent::Photo { file } => match location(
            *file,
            FileKind::Photo {
                thumb_size: "y".to_owned(),
            },
        ) {
            Some((location, stored)) => Media::Photo {
                size: stored.bytes.len() as u64,
                location,
                dc: stored.document_dc,
            },
            None => Media::Unsupported("a photo that no longer exists".to_owned()),
        },
        FakeContent::Other(holds) => Media::Unsupported(holds.clone()),
    };
    MediaMessage {
        chat: ChatKey {
            kind: chat.kind,
            id: chat.id,
            access_hash: 0,
        },
        message_id: message.id,
        grouped_id: message.grouped_id,
        media,
    }
}
