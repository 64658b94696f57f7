//! [`DirectLink`]: a direct http(s) download link (`url` in a create request),
//! checked before a task is created for it.
//!
//! The API only looks at the text: scheme, host, length, and, unless
//! `[http] allow_private_networks` is set, whether the host is a literal
//! loopback, private, link-local or metadata address or `localhost`. A name
//! that resolves to such an address is the worker's to refuse, because only
//! the connection it makes knows the address it reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The longest direct link accepted, in bytes.
pub const MAX_DIRECT_LINK_LEN: usize = 2048;

/// A direct link that passed [`DirectLink::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectLink(Url);

/// Why a direct link cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectLinkError {
    #[error("the link is empty: give a http:// or https:// link to the file")]
    Empty,
    #[error("the link is {0} bytes long, more than the {max} allowed: use a shorter link", max = MAX_DIRECT_LINK_LEN)]
    TooLong(usize),
    #[error("the link contains the control character U+{:04X}: paste the link as plain text", u32::from(*.0))]
    ControlCharacter(char),
    #[error("the link is not a valid URL ({0}): give a http:// or https:// link to the file")]
    Invalid(String),
    #[error("`{0}:` links are not supported: give a http:// or https:// link to the file")]
    UnsupportedScheme(String),
    #[error("the link has no host: give a http:// or https:// link to the file")]
    MissingHost,
    #[error("the link has login details before the host: remove everything up to and including the `@` (links are shown in task titles)")]
    UserInfo,
    #[error("`{0}` is a loopback, private or link-local address, which this server may not download from: use a public host, or set [http] allow_private_networks = true")]
    PrivateHost(String),
}

impl DirectLink {
    pub fn parse(text: &str, allow_private_networks: bool) -> Result<DirectLink, DirectLinkError> {
        if text.len() > MAX_DIRECT_LINK_LEN {
            return Err(DirectLinkError::TooLong(text.len()));
        }
        // The URL parser silently drops tabs and newlines; a link that holds
        // them was not pasted as the user thinks, so say so instead.
        if let Some(control) = text.chars().find(|c| c.is_control()) {
            return Err(DirectLinkError::ControlCharacter(control));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(DirectLinkError::Empty);
        }
        let url = Url::parse(text).map_err(|error| DirectLinkError::Invalid(error.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DirectLinkError::UnsupportedScheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DirectLinkError::UserInfo);
        }
        let host = url.host().ok_or(DirectLinkError::MissingHost)?;
        if !allow_private_networks && is_private_host(&host) {
            return Err(DirectLinkError::PrivateHost(host.to_string()));
        }
        Ok(DirectLink(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

fn is_private_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Host::Ipv4(address) => is_private_ipv4(*address),
        Host::Ipv6(address) => is_private_ipv6(*address),
    }
}

/// Addresses a server-side download must not reach by default: this host,
/// the private networks around it, and cloud metadata services (169.254.169.254
/// is link-local).
pub fn is_private_ip(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(address) => is_private_ipv4(address),
        IpAddr::V6(address) => is_private_ipv6(address),
    }
}

fn is_private_ipv4(address: Ipv4Addr) -> bool {
    let [first, second, ..] = address.octets();
    address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_broadcast()
        // 100.64.0.0/10: carrier-grade NAT, private in all but name.
        || (first == 100 && (64..128).contains(&second))
        // 0.0.0.0/8: "this network", which Linux routes to the local host.
        || first == 0
}

fn is_private_ipv6(address: Ipv6Addr) -> bool {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return is_private_ipv4(mapped);
    }
    let first = address.segments()[0];
    address.is_loopback()
        || address.is_unspecified()
        // fc00::/7: unique local addresses.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10: link-local addresses.
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<String, DirectLinkError> {
        DirectLink::parse(text, false).map(|link| link.as_str().to_owned())
    }

    #[test]
    fn direct_link_accepts_public_http_and_https_links() {
        assert_eq!(
            parse(" https://example.com/a.zip ").as_deref(),
            Ok("https://example.com/a.zip")
        );
        assert_eq!(parse("http://8.8.8.8/x").as_deref(), Ok("http://8.8.8.8/x"));
        assert_eq!(
            parse("https://[2001:db8::1]/x").as_deref(),
            Ok("https://[2001:db8::1]/x")
        );
    }

    #[test]
    fn direct_link_refuses_other_schemes_and_malformed_text() {
        assert_eq!(parse(""), Err(DirectLinkError::Empty));
        assert_eq!(
            parse("ftp://example.com/a"),
            Err(DirectLinkError::UnsupportedScheme("ftp".into()))
        );
        assert_eq!(
            parse("file:///etc/passwd"),
            Err(DirectLinkError::UnsupportedScheme("file".into()))
        );
        assert!(matches!(parse("example.com/a"), Err(DirectLinkError::Invalid(_))));
        assert_eq!(
            parse("https://user:pw@example.com/a"),
            Err(DirectLinkError::UserInfo)
        );
        assert_eq!(
            parse("https://example.com/\ta"),
            Err(DirectLinkError::ControlCharacter('\t'))
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_DIRECT_LINK_LEN));
        assert_eq!(parse(&long), Err(DirectLinkError::TooLong(long.len())));
    }

    #[test]
    fn direct_link_refuses_private_hosts_unless_allowed() {
        for link in [
            "http://localhost/a",
            "http://LOCALHOST./a",
            "http://api.localhost/a",
            "http://127.0.0.1:8080/a",
            "http://10.1.2.3/a",
            "http://172.16.0.1/a",
            "http://192.168.1.1/a",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/a",
            "http://0.0.0.0/a",
            "http://[::1]/a",
            "http://[fd00::1]/a",
            "http://[fe80::1]/a",
            "http://[::ffff:127.0.0.1]/a",
            // The URL parser reads these spellings as 127.0.0.1 too.
            "http://2130706433/a",
            "http://0x7f.1/a",
        ] {
            assert!(
                matches!(parse(link), Err(DirectLinkError::PrivateHost(_))),
                "{link}: {:?}",
                parse(link)
            );
            assert!(DirectLink::parse(link, true).is_ok(), "{link}");
        }
    }
}
