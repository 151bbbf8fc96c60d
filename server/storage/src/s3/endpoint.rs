//! Which addresses the S3 clients may reach.
//!
//! Two guards, both set up by the operator and never by a client:
//!
//! - [`Address`]: the `host:port` of an explicit endpoint, as written in
//!   `s3://host:port/bucket/key` URIs and in `[[storage.s3.endpoints]]`.
//!   Hosts compare case-insensitively (IP literals by value), ports exactly.
//!   Only addresses listed in the configuration get a client; any other is
//!   refused before a request exists.
//! - [`GuardedResolver`]: the DNS resolver of the S3 clients' HTTP clients
//!   (the default endpoint's included). It resolves a name with the system
//!   resolver and refuses the whole answer when one address is link-local,
//!   a cloud metadata service, unspecified ("this network") or multicast;
//!   see [`refused`]. It runs on every new connection, so a name that is
//!   re-pointed after startup (DNS rebinding) is caught at connect time.
//!   An IP literal written by the operator is not resolved, so listing the
//!   address itself is the explicit way to allow one of these addresses.
//!
//! The credential providers (instance and container metadata, STS, SSO)
//! have their own HTTP client without this resolver: they must reach the
//! metadata services.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

/// Addresses of cloud metadata and credential services that are not already
/// link-local: Alibaba Cloud's metadata, Azure's WireServer, Oracle Cloud's
/// legacy metadata.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// AWS's IPv6 instance metadata, EKS pod identity and time sync addresses.
const METADATA_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0123),
];

/// Why `ip` may not be reached through a name, or `None` when it may.
///
/// Refused: the metadata services (169.254.169.254, 169.254.170.2,
/// 100.100.100.200, fd00:ec2::254, …), link-local (169.254.0.0/16,
/// fe80::/10), unspecified and "this network" (0.0.0.0/8, `::`), broadcast
/// and multicast; also as IPv4-mapped (`::ffff:a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) IPv6 addresses. Loopback and private addresses are
/// allowed: S3-compatible servers on the node or the local network.
pub(crate) fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b, c, d] = v6.octets()[12..] else {
                    unreachable!("an ipv6 address has 16 octets")
                };
                return refused_v4(Ipv4Addr::new(a, b, c, d));
            }
            if METADATA_V6.contains(&v6) {
                Some("cloud metadata")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if METADATA_V4.contains(&ip) {
        Some("cloud metadata")
    } else if ip.is_link_local() {
        // 169.254.169.254 (AWS, GCP, Azure, OCI, OpenStack), 169.254.170.2
        // (ECS credentials), 169.254.170.23 (EKS pod identity) are all here.
        Some("link-local or cloud metadata")
    } else if ip.octets()[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

/// A name resolved to an address the S3 clients may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves to {addr}, a {reason} address, which is refused")]
pub(crate) struct RefusedAddress {
    name: String,
    addr: IpAddr,
    reason: &'static str,
}

/// `addrs`, the answer for `name`, unless one of them is [`refused`].
pub(crate) fn check_resolved(name: &str, addrs: &[IpAddr]) -> Result<(), RefusedAddress> {
    for &addr in addrs {
        if let Some(reason) = refused(addr) {
            return Err(RefusedAddress {
                name: name.to_owned(),
                addr,
                reason,
            });
        }
    }
    Ok(())
}

/// The system resolver (`getaddrinfo`, on the blocking pool), filtered by
/// [`check_resolved`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GuardedResolver;

impl ResolveDns for GuardedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await
                .map_err(ResolveDnsError::new)?
                .map(|a| a.ip())
                .collect();
            check_resolved(name, &addrs).map_err(ResolveDnsError::new)?;
            Ok(addrs)
        })
    }
}

/// The host of an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    /// An IP literal, compared by value.
    Ip(IpAddr),
    /// A DNS name, lowercased.
    Name(String),
}

/// `host:port` of an explicit endpoint, canonical: two spellings of the same
/// endpoint (`MinIO.local:9000`, `minio.local:9000`; `[::1]:80`,
/// `[0::1]:80`) are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Address {
    host: Host,
    port: u16,
}

impl Address {
    /// Parses `host:port`: a DNS name, an IPv4 address or a bracketed IPv6
    /// address, then a port from 1 to 65535. The error says what is wrong.
    pub(super) fn parse(s: &str) -> Result<Address, &'static str> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or("expected host:port, e.g. minio.local:9000")?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the port must be a number from 1 to 65535");
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err("the port must be a number from 1 to 65535"),
        };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(
                v6.parse()
                    .map_err(|_| "not an ipv6 address between the brackets")?,
            ))
        } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else if host.contains(':') {
            return Err("ipv6 addresses are written in brackets: [fd00::1]:9000");
        } else if valid_name(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(
                "the host must be a dns name (letters, digits, '-', '_', '.'), an ipv4 address or a bracketed ipv6 address",
            );
        };
        Ok(Address { host, port })
    }

    /// The IP address when the host is a literal.
    pub(super) fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// `scheme://host:port`, the endpoint URL of the SDK client.
    pub(super) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{self}")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// A DNS name: dot-separated labels of 1-63 letters, digits, `-` or `_`,
/// 253 characters at most, one trailing dot allowed.
fn valid_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_link_local_and_unspecified_addresses_are_refused() {
        for bad in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "192.0.0.192",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "ff02::1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(ip(bad)).is_some(), "{bad} must be refused");
        }
        for good in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "10.0.0.5",
            "192.168.1.20",
            "172.16.0.1",
            "100.64.0.1",
            "52.216.1.1",
            "fd00::1",
            "fec0::1",
            "2600:1f18::1",
            "::ffff:10.1.2.3",
            "64:ff9b::3444:1",
        ] {
            assert_eq!(refused(ip(good)), None, "{good} must be allowed");
        }
    }

    #[test]
    fn one_refused_address_refuses_the_whole_answer() {
        assert!(check_resolved("ok.test", &[ip("10.0.0.1"), ip("::1")]).is_ok());
        let e = check_resolved("mixed.test", &[ip("10.0.0.1"), ip("169.254.169.254")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mixed.test resolves to 169.254.169.254, a link-local or cloud metadata address, which is refused"
        );
    }

    /// Through the real system resolver: `getaddrinfo` reads numeric
    /// shorthands the way `inet_aton` does, so `0` is 0.0.0.0 and
    /// `2852039166` is 169.254.169.254 without any DNS or hosts entry. Such
    /// names are not IP literals to the HTTP client, so they reach the
    /// resolver exactly as a hostile DNS answer would.
    #[tokio::test]
    async fn the_resolver_refuses_names_of_refused_addresses() {
        let resolver = GuardedResolver;
        for (name, addr) in [
            ("0", "0.0.0.0"),
            ("2852039166", "169.254.169.254"),
            ("0xa9.0xfe.0xaa.2", "169.254.170.2"),
            ("fe80::1", "fe80::1"),
            ("::", "::"),
        ] {
            let e = resolver.resolve_dns(name).await.unwrap_err();
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<RefusedAddress>())
                .unwrap_or_else(|| panic!("{name}: not refused by the filter: {e:?}"));
            assert_eq!((refused.name.as_str(), refused.addr), (name, ip(addr)));
        }
        for (name, addr) in [("localhost", None), ("2130706433", Some("127.0.0.1"))] {
            let got = resolver.resolve_dns(name).await.unwrap();
            assert!(
                !got.is_empty() && got.iter().all(|a| a.is_loopback()),
                "{name}: {got:?}"
            );
            if let Some(addr) = addr {
                assert_eq!(got, vec![ip(addr)]);
            }
        }
    }

    #[test]
    fn addresses_parse_and_compare_canonically() {
        let a = Address::parse("MinIO.Local:9000").unwrap();
        assert_eq!(a, Address::parse("minio.local:9000").unwrap());
        assert_ne!(a, Address::parse("minio.local:9001").unwrap());
        assert_eq!(a.to_string(), "minio.local:9000");
        assert_eq!(a.ip(), None);
        let v6 = Address::parse("[0::1]:80").unwrap();
        assert_eq!(v6, Address::parse("[::1]:80").unwrap());
        assert_eq!(v6.url("http"), "http://[::1]:80");
        assert_eq!(v6.ip(), Some(ip("::1")));
        let v4 = Address::parse("169.254.169.254:80").unwrap();
        assert_eq!(v4.ip(), Some(ip("169.254.169.254")));
        assert_eq!(v4.url("https"), "https://169.254.169.254:80");
        assert_eq!(
            Address::parse("minio.local:09000").unwrap(),
            a,
            "the same port number"
        );
        for bad in [
            "minio.local",
            "minio.local:",
            "minio.local:0",
            "minio.local:65536",
            "minio.local:http",
            ":9000",
            "::1:9000",
            "[::1:9000",
            "[not-v6]:9000",
            "user@host:9000",
            "host/path:9000",
            "a..b:9000",
            "white space:9000",
            "http://minio.local:9000",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    proptest! {
        #[test]
        fn address_parsing_never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Ok(a) = Address::parse(&s) {
                prop_assert_eq!(Address::parse(&a.to_string()), Ok(a));
            }
        }
    }
}
