//! `savestream add <link> --user N [--storage S] [--dir D]`: creates a task
//! and prints its id alone on stdout, so `id=$(savestream add ...)` works.
//!
//! A `t.me` (or `telegram.me`) link becomes `telegram_url`, any other http(s)
//! link `url`. Only the kind is decided here; the API checks everything else
//! and its refusal is printed as it says it.

use std::process::ExitCode;

use anyhow::anyhow;

use crate::api::Api;

#[derive(clap::Args)]
pub struct AddArgs {
    /// A Telegram message link (https://t.me/channel/123) or a direct http(s) link to a file.
    pub link: String,
    /// The Telegram user id the task is for (a [[users]] entry of the server's config).
    #[arg(long)]
    pub user: i64,
    /// The storage to save into; the user's first storage when absent.
    #[arg(long)]
    pub storage: Option<String>,
    /// The directory inside the storage, absolute; `/` when absent.
    #[arg(long)]
    pub dir: Option<String>,
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
    pub fn parse(text: &str) -> anyhow::Result<Link> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let without_scheme = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        let host = without_scheme
            .unwrap_or(&lower)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if matches!(host, "t.me" | "www.t.me" | "telegram.me" | "www.telegram.me") {
            return Ok(Link::Telegram(text.to_owned()));
        }
        if without_scheme.is_some_and(|rest| !rest.is_empty()) {
            return Ok(Link::Direct(text.to_owned()));
        }
        Err(anyhow!(
            "`{text}` is neither a Telegram message link (https://t.me/<channel>/<message>) nor an http(s) link"
        ))
    }
}

pub async fn run(api: &Api, args: AddArgs) -> anyhow::Result<ExitCode> {
    let link = Link::parse(&args.link)?;
    let created = api
        .client()
        .create_task()
        .body_map(|body| {
            let body = match link {
                Link::Telegram(link) => body.telegram_url(Some(link)),
                Link::Direct(link) => body.url(Some(link)),
            };
            body.user_id(args.user)
                .storage_name(args.storage)
                .dir_path(args.dir)
        })
        .send()
        .await;
    match created {
        Ok(created) => {
            println!("{}", created.into_inner().task_id);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(api.explain(error).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
