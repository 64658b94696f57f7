//! Shared set-up: deterministic file contents, a fake with one file in a public channel, a
//! downloader over it, and a helper that drains a byte stream.

use std::sync::Arc;

use futures::StreamExt;
use savestream_shared::link::TelegramLink;
use savestream_telegram::fake::{FakeChat, FakeMessage, FakeTelegram, FileId};
use savestream_telegram::{
    ByteStream, DownloadOptions, Downloader, MediaMessage, TelegramApi, TelegramError,
};

pub const MIB: usize = 1024 * 1024;

/// The public channel every single-file test uses.
pub const CHANNEL_ID: i64 = 100;
pub const CHANNEL: &str = "savestream_files";

/// The data centre test files live on.
pub const HOME_DC: i32 = 2;

/// `len` bytes that differ from part to part and from file to file (a xorshift sequence), so a
/// part served twice or out of order is caught.
pub fn contents(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

pub fn link(text: &str) -> TelegramLink {
    TelegramLink::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// A fake holding one document of `len` bytes as message 1 of the public channel.
pub struct OneFile {
    pub fake: Arc<FakeTelegram>,
    pub file: FileId,
    pub bytes: Vec<u8>,
    pub message: MediaMessage,
}

pub async fn one_file(len: usize) -> OneFile {
    let fake = Arc::new(FakeTelegram::new());
    let bytes = contents(len, len as u64 + 1);
    let file = fake.add_file(bytes.clone(), HOME_DC);
    fake.add_chat(FakeChat::public(CHANNEL_ID, CHANNEL));
    fake.add_message(
        CHANNEL_ID,
        FakeMessage::document(1, file, Some("data.bin"), Some("application/octet-stream")),
    );
    let mut messages = fake
        .resolve(&link(&format!("https://t.me/{CHANNEL}/1")))
        .await
        .expect("the file resolves");
    assert_eq!(messages.len(), 1);
    OneFile {
        fake,
        file,
        bytes,
        message: messages.remove(0),
    }
}

pub fn downloader(fake: &Arc<FakeTelegram>, threads: usize) -> Downloader {
    Downloader::new(fake.clone(), DownloadOptions::new(threads))
}

/// Drains `stream`: the bytes it gave before it ended, and the error that ended it, if any.
pub async fn drain(mut stream: ByteStream) -> (Vec<u8>, Option<TelegramError>) {
    let mut received = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "the stream yields no empty chunks");
                received.extend_from_slice(&chunk);
            }
            Err(error) => {
                assert!(stream.next().await.is_none(), "the stream ends after an error");
                return (received, Some(error));
            }
        }
    }
    (received, None)
}

/// Drains `stream`, failing the test on an error.
pub async fn collect(stream: ByteStream) -> Vec<u8> {
    let (received, error) = drain(stream).await;
    if let Some(error) = error {
        panic!("the download failed: {error}");
    }
    received
}

/// Every request the fake saw obeyed precise mode's rules.
pub fn assert_requests_valid(fake: &FakeTelegram) {
    for call in fake.part_calls() {
        assert!(
            savestream_telegram::parts::is_valid_request(call.offset, call.limit),
            "invalid request {call:?}"
        );
    }
}
