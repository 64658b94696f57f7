//! The guard that keeps direct links from reaching into the workers' own
//! network (server-side request forgery): loopback, private, link-local
//! (with the 169.254.169.254 cloud metadata service), shared (CGNAT),
//! unspecified, multicast and reserved addresses are refused unless
//! `[http] allow_private_networks = true`.
//!
//! The check happens where it cannot be fooled: on the addresses a name
//! resolves to ([`GuardedResolver`], the HTTP client's DNS resolver), so a
//! name that points at 127.0.0.1 or flips to it between two lookups is
//! caught; and on literal IPs in the link and in every redirect
//! ([`check_url`]), which never reach a resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// A connection the guard refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to download from {host} ({address}): it is {why}; \
     set [http] allow_private_networks = true to allow such addresses"
)]
pub struct Refused {
    pub host: String,
    pub address: IpAddr,
    pub why: &'static str,
}

/// Why `address` may not be reached from a direct link, or `None` when it
/// is an ordinary public address.
pub fn why_refused(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => why_refused_v4(v4),
        IpAddr::V6(v6) => why_refused_v6(v6),
    }
}

fn why_refused_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    if address.is_loopback() {
        Some("a loopback address")
    } else if address.is_private() {
        Some("a private address")
    } else if address.is_link_local() {
        // 169.254.0.0/16, home of the cloud metadata service 169.254.169.254.
        Some("a link-local address")
    } else if a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if address.is_multicast() {
        Some("a multicast address")
    } else if a >= 240 {
        // 240.0.0.0/4 reserved, and 255.255.255.255 broadcast.
        Some("a reserved address")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) {
        // IETF protocol assignments and the benchmarking range: never a web server.
        Some("a reserved address")
    } else {
        None
    }
}

fn why_refused_v6(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    if address.is_loopback() {
        return Some("a loopback address");
    }
    if address.is_unspecified() {
        return Some("an unspecified address");
    }
    // An IPv4 address in IPv6 clothing is judged as the IPv4 address:
    // mapped (::ffff:a.b.c.d), translated (::ffff:0:a.b.c.d), NAT64
    // (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::).
    if let Some(v4) = address.to_ipv4_mapped() {
        return why_refused_v4(v4);
    }
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return why_refused_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return why_refused_v4(embedded_v4(segments[6], segments[7]));
    }
    // The local-use NAT64 prefix (RFC 8215) belongs to one network, which
    // chooses where in it the IPv4 address sits: never a public server.
    if segments[..3] == [0x64, 0xff9b, 1] {
        return Some("a local-use translation (NAT64) address");
    }
    if segments[0] == 0x2002 {
        return why_refused_v4(embedded_v4(segments[1], segments[2]));
    }
    if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // The deprecated IPv4-compatible form ::a.b.c.d.
        return why_refused_v4(embedded_v4(segments[6], segments[7]));
    }
    match segments[0] {
        first if first & 0xfe00 == 0xfc00 => Some("a private (unique local) address"),
        first if first & 0xffc0 == 0xfe80 => Some("a link-local address"),
        first if first & 0xffc0 == 0xfec0 => Some("a private (site-local) address"),
        first if first & 0xff00 == 0xff00 => Some("a multicast address"),
        _ => None,
    }
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Checks the literal IP of a URL, if it has one; names are checked by the
/// resolver when they are looked up.
pub fn check_url(url: &Url, allow_private_networks: bool) -> Result<(), Refused> {
    if allow_private_networks {
        return Ok(());
    }
    let address = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    match why_refused(address) {
        Some(why) => Err(Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            address,
            why,
        }),
        None => Ok(()),
    }
}

/// Keeps the addresses of `host` that may be reached. When every address
/// is refused, the first refusal says why.
pub fn filter_addresses(
    host: &str,
    addresses: impl IntoIterator<Item = SocketAddr>,
    allow_private_networks: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    let mut allowed = Vec::new();
    let mut first_refusal = None;
    for address in addresses {
        match why_refused(address.ip()) {
            Some(why) if !allow_private_networks => {
                first_refusal.get_or_insert(Refused {
                    host: host.to_owned(),
                    address: address.ip(),
                    why,
                });
            }
            _ => allowed.push(address),
        }
    }
    match (allowed.is_empty(), first_refusal) {
        (true, Some(refused)) => Err(refused),
        _ => Ok(allowed),
    }
}

/// The HTTP client's DNS resolver: the system's lookup, then
/// [`filter_addresses`], so a connection only ever goes to an address the
/// guard allowed.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    pub allow_private_networks: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private_networks = self.allow_private_networks;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = filter_addresses(&host, resolved, allow_private_networks)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused() {
        for (address, why) in [
            ("127.0.0.1", "a loopback address"),
            ("127.255.0.9", "a loopback address"),
            ("10.1.2.3", "a private address"),
            ("172.16.0.1", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("169.254.169.254", "a link-local address"),
            ("169.254.0.1", "a link-local address"),
            ("0.0.0.0", "an unspecified address"),
            ("0.1.2.3", "an unspecified address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("100.127.255.254", "a shared (carrier-grade NAT) address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "a reserved address"),
            ("240.0.0.1", "a reserved address"),
            ("::1", "a loopback address"),
            ("::", "an unspecified address"),
            ("fc00::1", "a private (unique local) address"),
            ("fd12:3456::1", "a private (unique local) address"),
            ("fe80::1", "a link-local address"),
            ("febf::1", "a link-local address"),
            ("fec0::1", "a private (site-local) address"),
            ("ff02::1", "a multicast address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("::ffff:169.254.169.254", "a link-local address"),
            ("::ffff:10.0.0.1", "a private address"),
            ("64:ff9b::7f00:1", "a loopback address"),
            ("2002:c0a8:0101::1", "a private address"),
            ("::127.0.0.1", "a loopback address"),
            ("::ffff:0:7f00:1", "a loopback address"),
            ("::ffff:0:a9fe:a9fe", "a link-local address"),
            ("64:ff9b:1::a00:1", "a local-use translation (NAT64) address"),
            (
                "64:ff9b:1:ffff::808:808",
                "a local-use translation (NAT64) address",
            ),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(why_refused(ip), Some(why), "{address}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "169.253.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "::ffff:0:808:808",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(why_refused(ip), None, "{address}");
        }
    }

    #[test]
    fn literal_ips_in_links_are_checked_and_names_are_left_to_the_resolver() {
        let refused = |link: &str| check_url(&Url::parse(link).unwrap(), false).err();
        assert_eq!(
            refused("http://127.0.0.1:8080/a").unwrap().why,
            "a loopback address"
        );
        assert_eq!(refused("http://[::1]/a").unwrap().why, "a loopback address");
        // The URL parser reads the odd spellings of an IPv4 address too.
        assert_eq!(
            refused("http://0x7f.1/a").unwrap().address.to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            refused("http://2130706433/a").unwrap().address.to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            refused("http://169.254.169.254/latest/meta-data").unwrap().why,
            "a link-local address"
        );
        assert!(
            refused("http://localhost/a").is_none(),
            "names are the resolver's job"
        );
        assert!(refused("https://example.com/a").is_none());
        assert!(refused("https://8.8.8.8/a").is_none());
        assert!(check_url(&Url::parse("http://127.0.0.1/").unwrap(), true).is_ok());
    }

    #[test]
    fn resolved_addresses_are_filtered_and_a_name_with_only_private_ones_is_refused() {
        let addresses = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter()
                .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
                .collect()
        };
        let mixed = filter_addresses("rebind.example", addresses(&["10.0.0.1", "8.8.8.8"]), false).unwrap();
        assert_eq!(mixed, addresses(&["8.8.8.8"]));
        let refused = filter_addresses("localhost", addresses(&["127.0.0.1", "::1"]), false).unwrap_err();
        assert_eq!(refused.host, "localhost");
        assert_eq!(refused.why, "a loopback address");
        assert!(refused
            .to_string()
            .starts_with("refusing to download from localhost (127.0.0.1): it is a loopback address"));
        let allowed = filter_addresses("localhost", addresses(&["127.0.0.1"]), true).unwrap();
        assert_eq!(allowed.len(), 1);
    }
}
