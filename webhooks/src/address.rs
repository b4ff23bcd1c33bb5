//! Where webhooks may be delivered: public addresses, and the non-public networks an admin listed
//! in `webhooks.allowed_networks`. Loopback, private, link-local, shared (CGNAT), multicast,
//! unspecified, documentation and reserved addresses are refused otherwise, so a webhook cannot
//! be aimed at Sluice's own network (its database, its cloud's metadata service).
//!
//! The check runs when a webhook is created (every address its host resolves to must be allowed)
//! and again on every connection: the delivery client resolves names through
//! [`GuardedResolver`], which answers only allowed addresses, so a DNS answer that changed since
//! (DNS rebinding) cannot reach a refused one. Hosts written as IP addresses are checked by
//! [`AddressPolicy::check_literal`] before each request, since no resolver sees them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use url::{Host, Url};

/// How long resolving a webhook's host may take when it is created.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an address may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{host} resolves to {address}, which is not a public address; an admin can allow its network in webhooks.allowed_networks"
    )]
    NotAllowed { host: String, address: IpAddr },
    #[error("{host} does not resolve to any address")]
    Unresolvable { host: String },
}

/// Which addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// From `webhooks.allowed_networks` (checked when the configuration loaded; an entry that
    /// does not parse allows nothing).
    pub fn new(allowed_networks: &[String]) -> Self {
        Self { allowed: allowed_networks.iter().filter_map(|n| n.parse().ok()).collect() }
    }

    /// Whether a delivery may connect to `address`.
    pub fn permits(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.allowed.iter().any(|network| network.contains(&address)) || is_public(address)
    }

    /// The URL's host when it is an IP address: allowed or refused. `None` for names.
    pub fn check_literal(&self, url: &Url) -> Option<Result<(), Refused>> {
        let address = match url.host()? {
            Host::Ipv4(v4) => IpAddr::V4(v4),
            Host::Ipv6(v6) => IpAddr::V6(v6),
            Host::Domain(_) => return None,
        };
        Some(if self.permits(address) {
            Ok(())
        } else {
            Err(Refused::NotAllowed { host: url.host_str().unwrap_or_default().to_owned(), address })
        })
    }

    /// Resolves the URL's host (unless it is an address) and requires every address it gives to
    /// be allowed: what creating a webhook checks.
    pub async fn check(&self, url: &Url) -> Result<(), Refused> {
        if let Some(literal) = self.check_literal(url) {
            return literal;
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> =
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await {
                Ok(Ok(addresses)) => addresses.collect(),
                Ok(Err(_)) | Err(_) => Vec::new(),
            };
        if addresses.is_empty() {
            return Err(Refused::Unresolvable { host });
        }
        match addresses.iter().find(|a| !self.permits(a.ip())) {
            Some(refused) => Err(Refused::NotAllowed { host, address: refused.ip() }),
            None => Ok(()),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is that IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `address` is reachable on the public internet (not special-purpose per the IANA
/// registries: loopback, private, shared, link-local, multicast, documentation, reserved, ...).
pub fn is_public(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215) may embed an IPv4 address anywhere a site's
    // translator chooses, and Teredo (2001::/32) and the benchmarking range (2001:2::/48) are
    // no destination for a webhook: refused whole.
    if segments[..3] == [0x64, 0xff9b, 1] || (segments[0] == 0x2001 && (segments[1] == 0 || segments[1] == 2)) {
        return false;
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || v6.is_unique_local()
        || v6.is_unicast_link_local()
        || segments[0] & 0xffc0 == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
        || segments[..4] == [0x0100, 0, 0, 0]) // discard-only
}

/// The delivery client's resolver: the system's, keeping only the addresses the policy allows;
/// a name with none left fails to resolve, naming the refused address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.iter().copied().filter(|a| policy.permits(a.ip())).collect();
            match (allowed.is_empty(), resolved.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(refused)) => Err(Refused::NotAllowed { host, address: refused.ip() }.into()),
                (true, None) => Err(Refused::Unresolvable { host }.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn only_public_addresses_pass_without_an_allow_list() {
        let policy = AddressPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
        ] {
            assert!(!policy.permits(ip(refused)), "{refused} must be refused");
        }
        for public in
            ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
        {
            assert!(policy.permits(ip(public)), "{public} is public");
        }
    }

    #[test]
    fn an_allowed_network_lets_exactly_its_addresses_through() {
        let policy = AddressPolicy::new(&["127.0.0.1/32".to_owned(), "10.20.0.0/16".to_owned()]);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")), "the same address written as IPv6");
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(policy.permits(ip("10.20.3.4")));
        assert!(!policy.permits(ip("10.21.0.1")));
        assert!(!policy.permits(ip("::1")));
    }

    #[tokio::test]
    async fn literal_hosts_are_checked_without_resolving_and_names_by_every_address() {
        let policy = AddressPolicy::new(&["127.0.0.1/32".to_owned()]);
        let url = |text: &str| Url::parse(text).expect("test URL");
        assert_eq!(policy.check(&url("http://127.0.0.1:9/hook")).await, Ok(()));
        assert!(matches!(policy.check(&url("http://[::1]:9/")).await, Err(Refused::NotAllowed { .. })));
        assert!(matches!(policy.check(&url("http://10.0.0.1/")).await, Err(Refused::NotAllowed { .. })));
        assert_eq!(policy.check_literal(&url("https://example.com/")), None);
        let strict = AddressPolicy::default();
        assert!(
            matches!(strict.check(&url("http://localhost:9/")).await, Err(Refused::NotAllowed { .. })),
            "a name is judged by what it resolves to"
        );
    }
}
