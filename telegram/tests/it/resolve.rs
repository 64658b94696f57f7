//! Every link form against the fake: which messages a link names, and the errors that say why
//! one cannot be followed.

use savestream_telegram::fake::{FakeChat, FakeMessage, FakeTelegram};
use savestream_telegram::naming::{album_title, file_name};
use savestream_telegram::{Media, MediaMessage, TelegramApi, TelegramError};

use crate::support::{contents, link, HOME_DC};

const PUBLIC_ID: i64 = 1000;
const PRIVATE_ID: i64 = 1234567;
const FORBIDDEN_ID: i64 = 7654321;
const DISCUSSION_ID: i64 = 2000;
const FORUM_ID: i64 = 3000;

/// A small Telegram: a public channel with documents, a photo, an album, a poll and a text
/// message, and a discussion group; a private channel the account is in and one it is not; a
/// forum with topics.
fn world() -> FakeTelegram {
    let fake = FakeTelegram::new();
    let file = |seed: u64| fake.add_file(contents(3000 + seed as usize, seed), HOME_DC);

    fake.add_chat(FakeChat::public(PUBLIC_ID, "public_chan"));
    fake.add_message(
        PUBLIC_ID,
        FakeMessage::document(10, file(1), Some("report.pdf"), Some("application/pdf")),
    );
    fake.add_message(
        PUBLIC_ID,
        FakeMessage::document(11, file(2), None, Some("video/mp4")),
    );
    fake.add_message(PUBLIC_ID, FakeMessage::photo(12, file(3)));
    for (id, seed) in [(20, 4), (21, 5), (22, 6)] {
        fake.add_message(PUBLIC_ID, FakeMessage::photo(id, file(seed)).in_album(77));
    }
    fake.add_message(
        PUBLIC_ID,
        FakeMessage::document(23, file(7), Some("clip.mov"), Some("video/quicktime")).in_album(77),
    );
    fake.add_message(PUBLIC_ID, FakeMessage::photo(24, file(8)).in_album(78));
    fake.add_message(PUBLIC_ID, FakeMessage::other(30, "a poll"));
    fake.add_message(
        PUBLIC_ID,
        FakeMessage::other(31, "no media (it is a text message)"),
    );

    fake.add_chat(FakeChat::private(DISCUSSION_ID));
    fake.add_message(
        DISCUSSION_ID,
        FakeMessage::document(5, file(9), Some("comment.zip"), Some("application/zip")),
    );
    fake.link_discussion(PUBLIC_ID, DISCUSSION_ID);

    fake.add_chat(FakeChat::private(PRIVATE_ID));
    fake.add_message(
        PRIVATE_ID,
        FakeMessage::document(42, file(10), Some("secret.txt"), Some("text/plain")),
    );
    fake.add_chat(FakeChat::private(FORBIDDEN_ID).not_member());
    fake.add_message(FORBIDDEN_ID, FakeMessage::document(1, file(11), None, None));

    fake.add_chat(FakeChat::public(FORUM_ID, "forum_group"));
    fake.add_message(
        FORUM_ID,
        FakeMessage::document(50, file(12), Some("in-topic.txt"), None).in_topic(7),
    );
    fake.add_message(
        FORUM_ID,
        FakeMessage::document(51, file(13), Some("general.txt"), None),
    );
    fake
}

async fn resolve(text: &str) -> Result<Vec<MediaMessage>, TelegramError> {
    world().resolve(&link(text)).await
}

fn ids(messages: &[MediaMessage]) -> Vec<i32> {
    messages.iter().map(|message| message.message_id).collect()
}

#[tokio::test]
async fn public_username_link_resolves_the_document() {
    let messages = resolve("https://t.me/public_chan/10").await.unwrap();
    assert_eq!(ids(&messages), [10]);
    let Media::Document { name, mime, size, .. } = &messages[0].media else {
        panic!("{:?}", messages[0].media);
    };
    assert_eq!(name.as_deref(), Some("report.pdf"));
    assert_eq!(mime.as_deref(), Some("application/pdf"));
    assert_eq!(*size, 3001);
    assert_eq!(messages[0].chat_id(), PUBLIC_ID);
    assert_eq!(file_name(&messages[0]), "report.pdf");
}

#[tokio::test]
async fn usernames_match_case_insensitively() {
    assert_eq!(ids(&resolve("t.me/Public_Chan/10").await.unwrap()), [10]);
}

#[tokio::test]
async fn nameless_documents_and_photos_are_named_after_chat_and_message() {
    let video = resolve("https://t.me/public_chan/11").await.unwrap();
    assert_eq!(file_name(&video[0]), format!("{PUBLIC_ID}_11.mp4"));
    let photo = resolve("https://t.me/public_chan/12").await.unwrap();
    assert!(matches!(photo[0].media, Media::Photo { .. }));
    assert_eq!(file_name(&photo[0]), format!("{PUBLIC_ID}_12.jpg"));
}

#[tokio::test]
async fn private_channel_link_resolves_for_a_member() {
    let messages = resolve(&format!("https://t.me/c/{PRIVATE_ID}/42")).await.unwrap();
    assert_eq!(ids(&messages), [42]);
    assert_eq!(messages[0].chat_id(), PRIVATE_ID);
}

#[tokio::test]
async fn private_channel_link_for_a_non_member_names_the_chat() {
    let error = resolve(&format!("https://t.me/c/{FORBIDDEN_ID}/1"))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        TelegramError::NotMember {
            chat: FORBIDDEN_ID.to_string()
        }
    );
    assert!(error
        .to_string()
        .starts_with("the account is not a member of chat 7654321"));
    assert!(!error.is_retryable());

    let unknown = resolve("https://t.me/c/999999/1").await.unwrap_err();
    assert_eq!(
        unknown,
        TelegramError::NotMember {
            chat: "999999".into()
        }
    );
}

#[tokio::test]
async fn topic_link_resolves_a_message_in_its_topic() {
    assert_eq!(
        ids(&resolve("https://t.me/forum_group/7/50").await.unwrap()),
        [50]
    );
    // A General-topic message carries no topic, so any topic link reaches it, as on Telegram.
    assert_eq!(
        ids(&resolve("https://t.me/forum_group/1/51").await.unwrap()),
        [51]
    );
}

#[tokio::test]
async fn topic_link_to_a_message_of_another_topic_is_not_found() {
    let error = resolve("https://t.me/forum_group/8/50").await.unwrap_err();
    assert_eq!(error, TelegramError::not_in_topic("@forum_group", 50, 8));
}

#[tokio::test]
async fn comment_link_resolves_through_the_discussion_group() {
    let messages = resolve("https://t.me/public_chan/10?comment=5").await.unwrap();
    assert_eq!(ids(&messages), [5]);
    assert_eq!(messages[0].chat_id(), DISCUSSION_ID);
    assert_eq!(file_name(&messages[0]), "comment.zip");
}

#[tokio::test]
async fn comment_link_on_a_channel_without_discussion_is_not_found() {
    let error = resolve("https://t.me/forum_group/51?comment=5")
        .await
        .unwrap_err();
    assert_eq!(error, TelegramError::no_discussion("@forum_group"));
}

#[tokio::test]
async fn album_link_resolves_every_file_of_the_album_in_order() {
    let messages = resolve("https://t.me/public_chan/21").await.unwrap();
    assert_eq!(ids(&messages), [20, 21, 22, 23]);
    let total: u64 = messages.iter().map(|message| message.media.size().unwrap()).sum();
    assert_eq!(total, 3004 + 3005 + 3006 + 3007);
    assert_eq!(album_title(messages.len(), total), "[tgfiles](4 files/0.01MB)");
    let names: Vec<String> = messages.iter().map(file_name).collect();
    assert_eq!(
        names,
        [
            format!("{PUBLIC_ID}_20.jpg"),
            format!("{PUBLIC_ID}_21.jpg"),
            format!("{PUBLIC_ID}_22.jpg"),
            "clip.mov".to_owned()
        ]
    );
}

#[tokio::test]
async fn album_link_with_single_resolves_only_that_file() {
    assert_eq!(
        ids(&resolve("https://t.me/public_chan/21?single").await.unwrap()),
        [21]
    );
    assert_eq!(ids(&resolve("https://t.me/public_chan/24").await.unwrap()), [24]);
}

#[tokio::test]
async fn unsupported_media_is_a_permanent_error_saying_what_the_message_holds() {
    let poll = resolve("https://t.me/public_chan/30").await.unwrap_err();
    assert_eq!(
        poll,
        TelegramError::unsupported_media("@public_chan", 30, "a poll")
    );
    assert!(poll.to_string().contains("holds a poll"), "{poll}");
    assert!(!poll.is_retryable());

    let text = resolve("https://t.me/public_chan/31").await.unwrap_err();
    assert!(text.to_string().contains("holds no media"), "{text}");
}

#[tokio::test]
async fn missing_messages_and_chats_are_not_found() {
    let message = resolve("https://t.me/public_chan/999").await.unwrap_err();
    assert_eq!(message, TelegramError::message_not_found("@public_chan", 999));
    assert!(message
        .to_string()
        .contains("message 999 does not exist in chat @public_chan"));

    let chat = resolve("https://t.me/nobody_here/1").await.unwrap_err();
    assert_eq!(chat, TelegramError::username_not_found("nobody_here"));
    assert!(!chat.is_retryable());
}

#[tokio::test]
async fn refetch_returns_the_message_again() {
    let fake = world();
    let messages = fake.resolve(&link("https://t.me/public_chan/10")).await.unwrap();
    let again = fake.refetch(&messages[0].reference()).await.unwrap();
    assert_eq!(again, messages[0]);
}
