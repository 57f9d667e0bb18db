//! The address guard of the page reader: which IP addresses and URLs a fetch may reach.
//!
//! The agent chooses the URLs it reads, so every address the reader connects to is checked
//! against an [`AddressPolicy`]: URL schemes and IP-literal hosts are checked before each
//! request (and each redirect hop), and host names go through [`GuardedResolver`], a DNS
//! resolver that drops disallowed addresses, so the address checked is the address connected to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Which IP addresses the page reader may connect to.
///
/// By default only globally routable unicast addresses are allowed. Refused classes are
/// loopback, private (RFC 1918, unique-local IPv6), shared CGNAT space, link-local, unspecified,
/// broadcast, multicast, documentation, benchmarking and other reserved ranges, and cloud
/// metadata endpoints; IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64, 6to4) are judged by the embedded address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Permit private addresses: 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10, and the
    /// shared (CGNAT) space 100.64/10. Metadata endpoints inside them stay refused.
    pub allow_private: bool,
    /// Permit loopback addresses: 127/8 and ::1.
    pub allow_loopback: bool,
    /// Networks that are always permitted, checked before every other rule (this is the only
    /// way to permit e.g. link-local or metadata addresses).
    pub allowed_networks: Vec<ipnet::IpNet>,
}

/// The class of a non-public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Loopback,
    Private,
    Shared,
    LinkLocal,
    Unspecified,
    Broadcast,
    Multicast,
    Documentation,
    Benchmarking,
    Reserved,
    Metadata,
}

impl Class {
    fn describe(self) -> &'static str {
        match self {
            Class::Loopback => "loopback",
            Class::Private => "private",
            Class::Shared => "in the shared CGNAT range 100.64.0.0/10",
            Class::LinkLocal => "link-local",
            Class::Unspecified => "unspecified",
            Class::Broadcast => "broadcast",
            Class::Multicast => "multicast",
            Class::Documentation => "reserved for documentation",
            Class::Benchmarking => "reserved for benchmarking",
            Class::Reserved => "reserved (not globally routable)",
            Class::Metadata => "a cloud metadata endpoint",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Class::Loopback => "set allow_loopback to permit",
            Class::Private | Class::Shared => "set allow_private to permit",
            _ => "only allowed_networks can permit it",
        }
    }
}

/// Cloud metadata and host-agent endpoints (AWS, GCP, Azure, OpenStack, Alibaba, ECS).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];
/// AWS's IPv6 instance metadata endpoint.
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    if METADATA_V4.contains(&ip) {
        return Some(Class::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Class::Unspecified);
    }
    if ip.is_broadcast() {
        return Some(Class::Broadcast);
    }
    let table: [([u8; 4], u32, Class); 16] = [
        // "This network": Linux connects 0.x.x.x to the local host.
        ([0, 0, 0, 0], 8, Class::Reserved),
        ([10, 0, 0, 0], 8, Class::Private),
        ([100, 64, 0, 0], 10, Class::Shared),
        ([127, 0, 0, 0], 8, Class::Loopback),
        ([169, 254, 0, 0], 16, Class::LinkLocal),
        ([172, 16, 0, 0], 12, Class::Private),
        ([192, 0, 0, 0], 24, Class::Reserved),
        ([192, 0, 2, 0], 24, Class::Documentation),
        ([192, 31, 196, 0], 24, Class::Reserved),
        ([192, 52, 193, 0], 24, Class::Reserved),
        ([192, 88, 99, 0], 24, Class::Reserved),
        ([192, 168, 0, 0], 16, Class::Private),
        ([198, 18, 0, 0], 15, Class::Benchmarking),
        ([198, 51, 100, 0], 24, Class::Documentation),
        ([203, 0, 113, 0], 24, Class::Documentation),
        ([224, 0, 0, 0], 4, Class::Multicast),
    ];
    for (net, prefix, class) in table {
        if in_v4(ip, net, prefix) {
            return Some(class);
        }
    }
    if in_v4(ip, [240, 0, 0, 0], 4) {
        return Some(Class::Reserved);
    }
    None
}

/// The IPv4 address an IPv6 address stands for, when it embeds one that a packet would reach.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-mapped ::ffff:a.b.c.d and IPv4-translated ::ffff:0:a.b.c.d.
    if s[..5] == [0; 5] && s[5] == 0xffff || s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(low);
    }
    // Deprecated IPv4-compatible ::a.b.c.d (but not :: and ::1).
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(low);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    if METADATA_V6.contains(&ip) {
        return Some(Class::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Class::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Class::Loopback);
    }
    let table: [(Ipv6Addr, u32, Class); 9] = [
        // Local-use NAT64 prefix.
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            Class::Reserved,
        ),
        // Discard-only.
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            Class::Reserved,
        ),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            Class::Documentation,
        ),
        (
            Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
            20,
            Class::Documentation,
        ),
        // IETF protocol assignments (Teredo, ORCHID, benchmarking, ...).
        (
            Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            23,
            Class::Reserved,
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            Class::Private,
        ),
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::LinkLocal,
        ),
        // Deprecated site-local.
        (
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::Private,
        ),
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            Class::Multicast,
        ),
    ];
    for (net, prefix, class) in table {
        if in_v6(ip, net, prefix) {
            return Some(class);
        }
    }
    // Everything else outside the global unicast space 2000::/3 is unassigned.
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Some(Class::Reserved);
    }
    None
}

impl AddressPolicy {
    /// Whether the reader may connect to `ip`; `Err` carries a reason naming the address and
    /// its class, e.g. "address 10.0.0.1 is private (set allow_private to permit)".
    pub fn check(&self, ip: IpAddr) -> std::result::Result<(), String> {
        if self.allowed_networks.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match ip {
            IpAddr::V4(v4) => self.judge(ip, classify_v4(v4)),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => self
                    .check(IpAddr::V4(v4))
                    .map_err(|reason| format!("address {ip} embeds IPv4 {v4}: {reason}")),
                None => self.judge(ip, classify_v6(v6)),
            },
        }
    }

    fn judge(&self, ip: IpAddr, class: Option<Class>) -> std::result::Result<(), String> {
        let Some(class) = class else { return Ok(()) };
        let allowed = match class {
            Class::Loopback => self.allow_loopback,
            Class::Private | Class::Shared => self.allow_private,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "address {ip} is {} ({})",
                class.describe(),
                class.hint()
            ))
        }
    }
}

/// Checks a URL before any request is sent to it: the scheme must be http or https, there must
/// be a host, and an IP-literal host must pass `policy` (reqwest does not resolve literals, so
/// the resolver never sees them). `Err` carries the reason.
pub(crate) fn check_url(
    url: &Url,
    policy: Option<&AddressPolicy>,
) -> std::result::Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme `{other}` is not allowed (only http and https)"
            ))
        }
    }
    let Some(host) = url.host() else {
        return Err("the URL has no host".to_string());
    };
    let Some(policy) = policy else { return Ok(()) };
    match host {
        Host::Ipv4(v4) => policy.check(IpAddr::V4(v4)),
        Host::Ipv6(v6) => policy.check(IpAddr::V6(v6)),
        Host::Domain(_) => Ok(()),
    }
}

/// Resolution error meaning every address of a host was refused by the policy.
#[derive(Debug)]
pub(crate) struct AddressRefused {
    pub(crate) host: String,
    pub(crate) reason: String,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} resolves only to refused addresses: {}",
            self.host, self.reason
        )
    }
}

impl std::error::Error for AddressRefused {}

/// Finds an [`AddressRefused`] in an error's source chain.
pub(crate) fn find_refusal<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a AddressRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<AddressRefused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// A DNS resolver for reqwest that resolves with tokio and keeps only the addresses the policy
/// permits; it fails with [`AddressRefused`] when none remain.
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut kept = Vec::new();
            let mut refused = Vec::new();
            for addr in resolved {
                match policy.check(addr.ip()) {
                    Ok(()) => kept.push(addr),
                    Err(reason) => refused.push(reason),
                }
            }
            if kept.is_empty() {
                if refused.is_empty() {
                    let msg = format!("{host} resolved to no addresses");
                    return Err(
                        Box::new(std::io::Error::new(std::io::ErrorKind::NotFound, msg)) as _,
                    );
                }
                let reason = refused.join("; ");
                tracing::debug!(%host, %reason, "page reader: host refused");
                return Err(Box::new(AddressRefused { host, reason }) as _);
            }
            if !refused.is_empty() {
                tracing::debug!(%host, refused = %refused.join("; "), "page reader: dropped addresses");
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}
