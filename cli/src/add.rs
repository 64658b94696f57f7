//! `savestream add <link>... --user N [--storage S] [--dir D]`: creates a
//! task per link and prints their ids on stdout, one per line in the links'
//! order, so `id=$(savestream add ...)` works for one. `-` reads the links
//! from standard input, one per line, for an import: blank lines and lines
//! whose first non-blank character is `#` (comments) are skipped, and a
//! line that is not UTF-8 text or holds whitespace inside a link (several
//! links on one line) is a usage error naming the line, found before
//! anything is sent.
//!
//! A `t.me` (or `telegram.me`) link becomes `telegram_url`, any other http(s)
//! link `url`: the host decides, whatever the port or user info. Only the
//! kind is decided here; the API checks everything else and its refusal is
//! printed as it says it. One link is one
//! `POST /api/v1/tasks`; several go in `POST /api/v1/tasks/batch` requests,
//! each checked whole by the API before it creates any of its tasks. Each
//! request carries an `Idempotency-Key` and is repeated with it while its
//! fate is unknown (see `repeat.rs`); `--idempotency-key` gives the key,
//! to repeat an `add` that gave up without creating its tasks twice.
//!
//! When a later batch fails after earlier ones were created, the error
//! says which links were created, which were refused (or may have been
//! created) and which were never sent, and gives the key: the same command
//! with `--idempotency-key KEY` and the list fixed answers the created
//! batches with their tasks and creates the rest.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use savestream_client::types::{CreateTaskRequest, CreateTasksRequest};

use crate::api::Api;
use crate::exit::usage;
use crate::{out, repeat};

/// The most tasks the API takes in one batch.
const MAX_BATCH_TASKS: usize = 500;
/// A batch's body stays under this many bytes, well inside the API's 64 KiB.
const MAX_BATCH_BYTES: usize = 48 * 1024;

#[derive(clap::Args)]
pub struct AddArgs {
    /// Telegram message links (https://t.me/channel/123) or direct http(s) links to files;
    /// `-` reads them from standard input, one per line (blank lines and lines starting with
    /// `#` are skipped; a line with spaces inside a link is refused).
    #[arg(required = true, value_name = "LINK")]
    pub links: Vec<String>,
    /// The Telegram user id the task is for (a [[users]] entry of the server's config).
    #[arg(long)]
    pub user: i64,
    /// The storage to save into; the user's first storage when absent.
    #[arg(long)]
    pub storage: Option<String>,
    /// The directory inside the storage, absolute; `/` when absent.
    #[arg(long)]
    pub dir: Option<String>,
    /// The Idempotency-Key to send (a fresh one when absent): the key an
    /// `add` that gave up printed, to repeat its command without creating a
    /// task twice.
    #[arg(long, value_name = "KEY", value_parser = repeat::check_key)]
    pub idempotency_key: Option<String>,
}

/// Which field of the create request a link goes into.
#[derive(Debug, PartialEq, Eq)]
pub enum Link {
    /// `telegram_url`.
    Telegram(String),
    /// `url`.
    Direct(String),
}

impl Link {
    /// The link as the user gave it.
    pub fn text(&self) -> &str {
        match self {
            Link::Telegram(text) | Link::Direct(text) => text,
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Link> {
        let text = text.trim();
        // A URL has no whitespace in it: this is several links on one line
        // (or in one quoted argument), which the API would take for one
        // link with `%20` inside.
        if let Some(space) = text.chars().find(|char| char.is_whitespace()) {
            return Err(usage(format_args!(
                "`{text}` has whitespace ({space:?}) inside: give one link per line (or per argument); \
                 a space that belongs in a link is written %20"
            )));
        }
        let lower = text.to_ascii_lowercase();
        let without_scheme = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        // The host as a URL parser reads it, without a port or user info
        // (`https://t.me:443/chan/5` is a Telegram link); a link without a
        // scheme (`t.me/c/1234/5`) is read as https to find it.
        let as_url = match without_scheme {
            Some(_) => text.to_owned(),
            None => format!("https://{text}"),
        };
        let url = reqwest::Url::parse(&as_url).ok();
        let host = url
            .as_ref()
            .and_then(reqwest::Url::host_str)
            .map(|host| host.trim_end_matches('.'));
        if host.is_some_and(|host| matches!(host, "t.me" | "www.t.me" | "telegram.me" | "www.telegram.me")) {
            return Ok(Link::Telegram(text.to_owned()));
        }
        if without_scheme.is_some_and(|rest| !rest.is_empty()) {
            return Ok(Link::Direct(text.to_owned()));
        }
        Err(usage(format_args!(
            "`{text}` is neither a Telegram message link (https://t.me/<channel>/<message>) nor an http(s) link"
        )))
    }
}

pub async fn run(api: &Api, args: AddArgs) -> anyhow::Result<ExitCode> {
    let given = link_texts(&args.links, || std::io::stdin().lock())?;
    // Every link is read before anything is sent, so a typo in the last
    // one creates nothing.
    let total = given.len();
    let links = given
        .iter()
        .enumerate()
        .map(|(index, link)| Link::parse(&link.text).with_context(|| link.place(index, total)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let [link] = links.as_slice() {
        return add_one(api, &args, link).await;
    }
    let lines: Vec<Option<usize>> = given.iter().map(|given| given.line).collect();
    add_many(api, &args, links, &lines).await
}

/// A link as given: its text, and the line of standard input it is on.
#[derive(Debug, PartialEq, Eq)]
struct Given {
    text: String,
    /// 1-based; `None` for a link given as an argument.
    line: Option<usize>,
}

impl Given {
    /// Where the user finds this link, the `index`th of `total`: its line
    /// of standard input, else its place among the arguments.
    fn place(&self, index: usize, total: usize) -> String {
        match self.line {
            Some(line) => format!("line {line} of standard input"),
            None => format!("link {} of {total}", index + 1),
        }
    }
}

/// The links the arguments give: themselves, or for a lone `-` standard
/// input's lines that are neither blank nor comments (`#` first), without
/// the byte-order mark that a file saved by some Windows editors starts
/// with (`trim` keeps it: it is no whitespace). Lines are read as bytes and
/// decoded one by one, so a byte that is not UTF-8 is named by its line.
fn link_texts<R: BufRead>(arguments: &[String], stdin: impl FnOnce() -> R) -> anyhow::Result<Vec<Given>> {
    if !arguments.iter().any(|argument| argument == "-") {
        return Ok(arguments
            .iter()
            .map(|text| Given {
                text: text.clone(),
                line: None,
            })
            .collect());
    }
    if arguments.len() > 1 {
        return Err(usage(
            "`-` reads the links from standard input: give it alone, without other links",
        ));
    }
    let mut texts = Vec::new();
    for (index, line) in stdin().split(b'\n').enumerate() {
        let number = index + 1;
        let line = line.context("reading links from standard input")?;
        let line = std::str::from_utf8(&line).map_err(|error| {
            usage(format_args!(
                "line {number} of standard input is not UTF-8 text (byte {} is not): save the list as UTF-8",
                error.valid_up_to() + 1
            ))
        })?;
        let line = match index {
            0 => line.strip_prefix('\u{feff}').unwrap_or(line),
            _ => line,
        };
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            texts.push(Given {
                text: line.to_owned(),
                line: Some(number),
            });
        }
    }
    if texts.is_empty() {
        return Err(usage("standard input held no links: give one link per line"));
    }
    Ok(texts)
}

/// The key of this `add`: the one given, or a fresh one.
fn key_of(args: &AddArgs) -> String {
    args.idempotency_key.clone().unwrap_or_else(repeat::new_key)
}

/// One task, with `POST /api/v1/tasks`.
async fn add_one(api: &Api, args: &AddArgs, link: &Link) -> anyhow::Result<ExitCode> {
    let body = task_request(link, args)?;
    let key = key_of(args);
    let created = repeat::with_same_key(api, &key, |key| {
        api.client()
            .create_task()
            .idempotency_key(key)
            .body(body.clone())
            .send()
    })
    .await;
    match created {
        Ok(created) => {
            out::line(created.into_inner().task_id)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(gave_up) => Err(gave_up.explain(api, &key, "the task").await),
    }
}

/// Many tasks, with as few `POST /api/v1/tasks/batch` requests as the API's
/// limits allow. Each batch's ids are printed as soon as it is created, so
/// a failure in a later batch leaves the earlier ids on stdout. `lines` are
/// the links' lines of standard input, when they came from it.
async fn add_many(
    api: &Api,
    args: &AddArgs,
    links: Vec<Link>,
    lines: &[Option<usize>],
) -> anyhow::Result<ExitCode> {
    let total = links.len();
    let tasks = links
        .iter()
        .map(|link| task_request(link, args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sizes: Vec<usize> = tasks
        .iter()
        .map(|task| serde_json::to_vec(task).map_or(0, |json| json.len()) + 1)
        .collect();
    // The `index`th batch goes with `batch_key(key, index)`, and the API
    // keys each of its tasks by that and the task's place in it. Batches
    // are cut from the first link on, so a batch's links depend only on
    // the links up to it: a re-run with the same key and a list fixed
    // after the created batches sends them again under the same keys (the
    // API answers them with their tasks) and creates the rest.
    let key = key_of(args);
    for (index, range) in batches(&sizes).into_iter().enumerate() {
        let failed = range.clone();
        let body = CreateTasksRequest {
            tasks: tasks[range].to_vec(),
        };
        let answer = repeat::with_same_key(api, &repeat::batch_key(&key, index), |key| {
            api.client()
                .create_tasks()
                .idempotency_key(key)
                .body(body.clone())
                .send()
        })
        .await;
        match answer {
            Ok(created) => {
                for task in created.into_inner().tasks {
                    out::line(task.task_id)?;
                }
            }
            Err(gave_up) => {
                let fate_unknown = gave_up.fate_unknown;
                let key_reused = gave_up.key_reused();
                let what = format!("the tasks of links {} to {}", failed.start + 1, failed.end);
                let said = gave_up.explain(api, &key, &what).await.to_string();
                let named = name_the_link(
                    &said,
                    failed.start,
                    &links[failed.clone()],
                    &lines[failed.clone()],
                );
                if key_reused {
                    // The list changed since the first run with this key:
                    // the same key cannot finish it, whatever is fixed.
                    bail!(
                        "{} (this list differs from the one first sent with --idempotency-key {key}: \
                         keep the links of that run in their places to finish it with that key, or \
                         leave the key out to send all the links as new tasks)",
                        named.as_deref().unwrap_or(&said)
                    );
                }
                bail!(
                    "{}",
                    stopped_partway(named.as_deref(), &said, failed, total, fate_unknown, &key)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `link 5` or `links 5 to 9` (1-based, `range` 0-based), and whether
/// that is more than one.
fn span(range: std::ops::Range<usize>) -> (String, bool) {
    match range.len() {
        1 => (format!("link {}", range.end), false),
        _ => (format!("links {} to {}", range.start + 1, range.end), true),
    }
}

/// The error of an `add` of `total` links that stopped at the batch of
/// links `failed` (0-based), whose request ended in `said` (`named` when
/// it names the refused link). When batches before it were created, it
/// says which links were created, which were refused (or, when the
/// request's fate is unknown, may have been: `said` then says so and gives
/// the key) and which were never sent, and how to finish: the same command
/// with `--idempotency-key key`, which answers the created batches with
/// their tasks rather than creating them twice.
fn stopped_partway(
    named: Option<&str>,
    said: &str,
    failed: std::ops::Range<usize>,
    total: usize,
    fate_unknown: bool,
    key: &str,
) -> String {
    let message = named.unwrap_or(said);
    if failed.start == 0 && !fate_unknown {
        // Nothing was created: the same command, fixed, starts afresh.
        return message.to_owned();
    }
    let mut parts = Vec::new();
    if failed.start > 0 {
        parts.push(match failed.start {
            1 => format!("link 1 of {total} was created, its id is printed above"),
            created => format!("links 1 to {created} of {total} were created, their ids are printed above"),
        });
    }
    if !fate_unknown {
        let (links, many) = span(failed.clone());
        parts.push(format!(
            "{links} {} refused, nothing of that request was created",
            if many { "were" } else { "was" }
        ));
    }
    if failed.end < total {
        let (links, many) = span(failed.end..total);
        parts.push(format!("{links} {} not sent", if many { "were" } else { "was" }));
    }
    if parts.is_empty() {
        return message.to_owned();
    }
    let summary = parts.join("; ");
    if fate_unknown {
        // `said` already gives the key, and how to use it.
        return format!("{message} ({summary})");
    }
    let fix = match named {
        Some(_) => "fix or remove the refused link, then run",
        None => "once that is fixed, run",
    };
    format!(
        "{message} ({summary}): {fix} this command again with --idempotency-key {key}, \
         which answers the links already created with their tasks instead of creating them twice \
         and creates the rest"
    )
}

/// Splits tasks, given the size of each one's JSON, into consecutive
/// batches within the API's limits.
fn batches(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, size) in sizes.iter().enumerate() {
        if index > start && (index - start == MAX_BATCH_TASKS || bytes + size > MAX_BATCH_BYTES) {
            batches.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// The create request for `link`, with the user, storage and dir given.
fn task_request(link: &Link, args: &AddArgs) -> anyhow::Result<CreateTaskRequest> {
    let builder = CreateTaskRequest::builder()
        .user_id(args.user)
        .storage_name(args.storage.clone())
        .dir_path(args.dir.clone());
    let builder = match link {
        Link::Telegram(link) => builder.telegram_url(Some(link.clone())),
        Link::Direct(link) => builder.url(Some(link.clone())),
    };
    builder.try_into().map_err(|error| anyhow!("{error}"))
}

/// The API names a refused task by its place in the batch (`` `tasks[3]` ``);
/// the user knows it by its place among the links, by the link itself and,
/// for a list read from standard input, by its line (`lines`, the batch's).
/// `None` when the message names no task of the batch.
fn name_the_link(message: &str, first: usize, batch: &[Link], lines: &[Option<usize>]) -> Option<String> {
    let rest = message.strip_prefix("`tasks[")?;
    let (index, rest) = rest.split_once("]`")?;
    let index = index.parse::<usize>().ok()?;
    let link = batch.get(index)?;
    let line = match lines.get(index) {
        Some(Some(line)) => format!(", line {line} of standard input"),
        _ => String::new(),
    };
    Some(format!(
        "link {} (`{}`{line}){rest}",
        first + index + 1,
        link.text()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(count: usize, length: usize) -> Vec<Link> {
        (0..count)
            .map(|index| {
                Link::Direct(format!(
                    "https://example.com/{index:0>width$}",
                    width = length - 20
                ))
            })
            .collect()
    }

    #[test]
    fn batches_cover_every_task_in_order_within_the_apis_count_and_size() {
        assert_eq!(batches(&[90; 1201]), [0..500, 500..1000, 1000..1201]);
        assert_eq!(batches(&[2100; 50]), [0..23, 23..46, 46..50]);
        assert_eq!(
            batches(&[60_000, 10]),
            [0..1, 1..2],
            "an oversized task goes alone, for the API to refuse"
        );
        assert_eq!(batches(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn a_refused_task_is_named_by_its_place_among_all_links_and_its_line() {
        let batch = direct(3, 30);
        assert_eq!(
            name_the_link("`tasks[2]`: `url`: the host is private", 500, &batch, &[None; 3]).unwrap(),
            format!("link 503 (`{}`): `url`: the host is private", batch[2].text())
        );
        assert_eq!(
            name_the_link("`tasks[1]`: `url`: bad", 0, &batch, &[Some(1), Some(4), Some(5)]).unwrap(),
            format!(
                "link 2 (`{}`, line 4 of standard input): `url`: bad",
                batch[1].text()
            )
        );
        assert_eq!(
            name_the_link("user 1 is not configured", 0, &batch, &[None; 3]),
            None
        );
        assert_eq!(
            name_the_link("`tasks[9]`: out of range", 0, &batch, &[None; 3]),
            None
        );
    }

    #[test]
    fn a_list_that_stops_partway_says_what_was_created_refused_and_not_sent_and_gives_the_key() {
        let refused = "link 800 (`https://t.me/chan/5`): `telegram_url`: bad";
        assert_eq!(
            stopped_partway(Some(refused), "`tasks[299]`: ...", 500..1000, 1200, false, "K"),
            format!(
                "{refused} (links 1 to 500 of 1200 were created, their ids are printed above; \
                 links 501 to 1000 were refused, nothing of that request was created; \
                 links 1001 to 1200 were not sent): fix or remove the refused link, then run this \
                 command again with --idempotency-key K, which answers the links already created \
                 with their tasks instead of creating them twice and creates the rest"
            )
        );
        assert_eq!(
            stopped_partway(None, "too many requests", 1..2, 2, false, "K"),
            "too many requests (link 1 of 2 was created, its id is printed above; \
             link 2 was refused, nothing of that request was created): once that is fixed, run \
             this command again with --idempotency-key K, which answers the links already created \
             with their tasks instead of creating them twice and creates the rest"
        );
        assert_eq!(
            stopped_partway(Some(refused), "x", 0..500, 1200, false, "K"),
            refused,
            "nothing was created: no key needed"
        );
        assert_eq!(
            stopped_partway(
                None,
                "gave up ... --idempotency-key K ...",
                500..1000,
                1200,
                true,
                "K"
            ),
            "gave up ... --idempotency-key K ... (links 1 to 500 of 1200 were created, their ids \
             are printed above; links 1001 to 1200 were not sent)"
        );
        assert_eq!(stopped_partway(None, "gave up", 0..2, 2, true, "K"), "gave up");
    }

    /// The texts of `link_texts`' answer.
    fn texts(given: anyhow::Result<Vec<Given>>) -> Vec<String> {
        given.unwrap().into_iter().map(|given| given.text).collect()
    }

    #[test]
    fn a_lone_dash_reads_the_non_empty_lines_of_standard_input() {
        let arguments = |list: &[&str]| list.iter().map(|text| text.to_string()).collect::<Vec<_>>();
        let stdin = || std::io::Cursor::new("https://t.me/a_chan/1\n\n  https://example.com/b  \n");
        assert_eq!(
            link_texts(&arguments(&["-"]), stdin).unwrap(),
            [
                Given {
                    text: "https://t.me/a_chan/1".into(),
                    line: Some(1)
                },
                Given {
                    text: "https://example.com/b".into(),
                    line: Some(3)
                }
            ]
        );
        assert_eq!(texts(link_texts(&arguments(&["x", "y"]), stdin)), ["x", "y"]);
        assert!(link_texts(&arguments(&["-", "x"]), stdin).is_err());
        assert!(link_texts(&arguments(&["-"]), || std::io::Cursor::new("\n \n")).is_err());
    }

    #[test]
    fn comment_lines_are_skipped_and_a_line_that_is_not_utf8_is_named() {
        let dash = ["-".to_owned()];
        let stdin = || std::io::Cursor::new("# my links\n  # indented\nhttps://example.com/a#frag\n");
        assert_eq!(texts(link_texts(&dash, stdin)), ["https://example.com/a#frag"]);
        assert!(link_texts(&dash, || std::io::Cursor::new("# only a comment\n")).is_err());

        let bad: &[u8] = b"https://example.com/a\nhttps://example.com/caf\xe9\n";
        let error = link_texts(&dash, || std::io::Cursor::new(bad)).unwrap_err();
        assert!(error.is::<crate::exit::Usage>(), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("line 2 of standard input is not UTF-8"),
            "{error}"
        );
    }

    #[test]
    fn a_link_with_whitespace_inside_is_refused() {
        for text in [
            "https://example.com/a.txt https://example.com/b.txt",
            "https://example.com/a\tb",
        ] {
            let error = Link::parse(text).unwrap_err();
            assert!(error.is::<crate::exit::Usage>(), "{error}");
            assert!(error.to_string().contains("one link per line"), "{error}");
        }
        let given = Given {
            text: "x".into(),
            line: Some(7),
        };
        assert_eq!(given.place(2, 9), "line 7 of standard input");
        assert_eq!(Given { line: None, ..given }.place(2, 9), "link 3 of 9");
    }

    #[test]
    fn a_byte_order_mark_before_the_first_link_is_dropped() {
        let dash = ["-".to_owned()];
        let stdin = || std::io::Cursor::new("\u{feff}https://t.me/a_chan/1\r\nhttps://example.com/b\r\n");
        assert_eq!(
            texts(link_texts(&dash, stdin)),
            ["https://t.me/a_chan/1", "https://example.com/b"]
        );
        let stdin = || std::io::Cursor::new("\u{feff}\r\n https://example.com/b");
        assert_eq!(texts(link_texts(&dash, stdin)), ["https://example.com/b"]);
        assert!(
            link_texts(&dash, || std::io::Cursor::new("\u{feff}\n")).is_err(),
            "a byte-order mark alone is no link"
        );
    }

    #[test]
    fn a_telegram_link_is_known_by_its_host_whatever_its_port_or_user_info() {
        for text in [
            "https://t.me:443/chan/5",
            "https://user@t.me/chan/5",
            "https://user:secret@T.ME:443/chan/5",
            "https://t.me./chan/5",
            "t.me:443/chan/5",
            "https://www.telegram.me:8443/chan/5",
        ] {
            assert_eq!(
                Link::parse(text).unwrap(),
                Link::Telegram(text.to_owned()),
                "{text}"
            );
        }
        for text in [
            "https://t.me@example.com/chan/5",
            "https://t.me.example.com/chan/5",
            "https://example.com:443/t.me/5",
        ] {
            assert_eq!(
                Link::parse(text).unwrap(),
                Link::Direct(text.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn telegram_links_and_direct_links_are_told_apart() {
        let telegram = |text: &str| Link::Telegram(text.to_owned());
        let direct = |text: &str| Link::Direct(text.to_owned());
        assert_eq!(
            Link::parse("https://t.me/channel/123").unwrap(),
            telegram("https://t.me/channel/123")
        );
        assert_eq!(Link::parse("t.me/c/1234/5").unwrap(), telegram("t.me/c/1234/5"));
        assert_eq!(
            Link::parse("HTTPS://T.ME/a/1?single").unwrap(),
            telegram("HTTPS://T.ME/a/1?single")
        );
        assert_eq!(
            Link::parse("https://telegram.me/a/1").unwrap(),
            telegram("https://telegram.me/a/1")
        );
        assert_eq!(
            Link::parse("https://example.com/t.me/a.zip").unwrap(),
            direct("https://example.com/t.me/a.zip")
        );
        assert_eq!(
            Link::parse("http://10.0.0.2:8000/x").unwrap(),
            direct("http://10.0.0.2:8000/x")
        );
        assert!(Link::parse("example.com/a.zip").is_err());
        assert!(Link::parse("ftp://example.com/a.zip").is_err());
        assert!(Link::parse("https://").is_err());
    }

    /// `AddArgs` as clap reads `savestream add <arguments>`.
    fn add_args(arguments: &[&str]) -> AddArgs {
        #[derive(clap::Parser)]
        struct Add {
            #[command(flatten)]
            args: AddArgs,
        }
        let arguments = std::iter::once("add").chain(arguments.iter().copied());
        <Add as clap::Parser>::try_parse_from(arguments).unwrap().args
    }

    // Time is paused, so the 15 s of pauses between tries pass at once.
    #[tokio::test(start_paused = true)]
    async fn giving_up_after_a_lost_answer_says_the_task_may_have_been_created_and_gives_the_key() {
        // Arrange: an API that reads the create and closes the connection
        // without an answer (its fate unknown), then stops listening (every
        // repeat is refused, as while an API restarts).
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lost = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let api = Api::new(&url, "").unwrap();
        let args = add_args(&["https://example.com/a.bin", "--user", "1"]);

        // Act
        let error = add_one(&api, &args, &Link::Direct("https://example.com/a.bin".into()))
            .await
            .expect_err("no API answered")
            .to_string();

        // Assert: the last try was refused, and yet the message says the
        // task may exist and gives the key the tries carried.
        let head = lost.await.unwrap();
        let key = head
            .lines()
            .find_map(|line| line.strip_prefix("idempotency-key: "))
            .expect("the create carried a key")
            .trim()
            .to_owned();
        assert!(error.starts_with("gave up after 5 tries"), "{error}");
        assert!(error.contains("does not accept connections"), "{error}");
        assert!(error.contains("the task may have been created"), "{error}");
        assert!(
            error.contains(&format!("run this command again with --idempotency-key {key},")),
            "{error}"
        );
        assert!(!error.contains("is it running"), "{error}");
    }
}
