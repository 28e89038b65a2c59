//! Who a request comes from: the client address behind trusted proxies, and the key per-address limits use.
//!
//! A proxy appends the address of its own peer to `X-Forwarded-For`, either to the last header line or as a line
//! of its own (HAProxy's `option forwardfor` adds a new line). Every line counts: the list is the lines in order,
//! joined by commas, as HTTP defines repeated fields. Entries left of the last proxy's are whatever the client
//! sent, so the client is the right-most entry that is not a trusted proxy.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` is believed (`CES_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses comma-separated entries, each an address (`10.0.0.9`, `::1`) or a network (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{entry:?} is neither an address nor a network like 10.0.0.0/8")
                })?;
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// No proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most entry of the
/// `X-Forwarded-For` lines (`forwarded`, in the order received) that is not itself a trusted proxy. An entry that
/// is not an address ends the walk at the hop right of it: that hop is trusted, and the garbage is what it was
/// given.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut hop = peer.to_canonical();
    if !trusted.contains(hop) {
        return hop;
    }
    for line in forwarded.rev() {
        for entry in line.rsplit(',').map(str::trim) {
            match parse_entry(entry) {
                Some(ip) if trusted.contains(ip) => hop = ip,
                Some(ip) => return ip,
                None => return hop,
            }
        }
    }
    hop
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    None
}

/// The key per-address limits count under: an IPv4 address itself, an IPv6 address's network of `v6_prefix` bits
/// (a host is given a whole /64 and may pick any address in it).
pub fn limit_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn from(peer: &str, lines: &[&str], t: &TrustedProxies) -> IpAddr {
        client_ip(ip(peer), lines.iter().copied(), t)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = trusted(&["10.0.0.9"]);
        assert_eq!(from("1.2.3.4", &["5.6.7.8"], &t), ip("1.2.3.4"));
        assert_eq!(from("10.0.0.9", &["5.6.7.8"], &t), ip("5.6.7.8"));
        assert_eq!(from("10.0.0.9", &[], &t), ip("10.0.0.9"));
        assert_eq!(from("10.0.0.9", &["2001:db8::1"], &t), ip("2001:db8::1"));
    }

    #[test]
    fn a_client_cannot_pick_its_address_with_a_header_of_its_own() {
        let t = trusted(&["10.0.0.9"]);
        // On the proxy's line, after the client's entries.
        assert_eq!(from("10.0.0.9", &["6.6.6.6, 5.6.7.8"], &t), ip("5.6.7.8"));
        // HAProxy's `option forwardfor`: the client's line first, the proxy's own line last.
        assert_eq!(from("10.0.0.9", &["6.6.6.6", "5.6.7.8"], &t), ip("5.6.7.8"));
        assert_eq!(
            from("10.0.0.9", &["6.6.6.6, 7.7.7.7", "5.6.7.8"], &t),
            ip("5.6.7.8")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_across_lines_and_networks() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(
            from("10.1.2.3", &["6.6.6.6, 5.6.7.8", "10.9.9.9"], &t),
            ip("5.6.7.8")
        );
        assert_eq!(from("fd00::1", &["5.6.7.8, fd12::3"], &t), ip("5.6.7.8"));
        // Every hop trusted: the left-most of them is as far as anyone can tell.
        assert_eq!(
            from("10.1.2.3", &["10.4.4.4, 10.5.5.5"], &t),
            ip("10.4.4.4")
        );
        // An IPv4 peer seen as an IPv4-mapped IPv6 address is the same peer.
        assert_eq!(from("::ffff:10.0.0.1", &["5.6.7.8"], &t), ip("5.6.7.8"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_trusted_hop_that_passed_it_on() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(from("10.0.0.9", &["garbage"], &t), ip("10.0.0.9"));
        assert_eq!(from("10.0.0.9", &["garbage, 10.0.0.7"], &t), ip("10.0.0.7"));
        assert_eq!(from("10.0.0.9", &["unknown", ""], &t), ip("10.0.0.9"));
    }

    #[test]
    fn entries_may_carry_ports() {
        let t = trusted(&["10.0.0.9"]);
        assert_eq!(from("10.0.0.9", &["5.6.7.8:4711"], &t), ip("5.6.7.8"));
        assert_eq!(
            from("10.0.0.9", &["[2001:db8::7]:443"], &t),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_networks_and_name_a_bad_entry() {
        let t = trusted(&["10.0.0.9", "192.168.0.0/16", "2001:db8::/32", "::1"]);
        assert!(t.contains(ip("10.0.0.9")) && !t.contains(ip("10.0.0.8")));
        assert!(t.contains(ip("192.168.200.1")) && !t.contains(ip("192.169.0.1")));
        assert!(t.contains(ip("2001:db8:ffff::1")) && !t.contains(ip("2001:db9::1")));
        assert!(t.contains(ip("::1")) && !t.contains(ip("::2")));
        assert!(!t.is_empty() && TrustedProxies::default().is_empty());
        // A network written with host bits set still means the network.
        assert!(trusted(&["10.1.2.3/8"]).contains(ip("10.200.0.1")));
        let err = TrustedProxies::parse(&["10.0.0.0/8".into(), "lb.internal".into()]).unwrap_err();
        assert!(err.contains("lb.internal"), "{err}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_per_network_and_ipv4_per_address() {
        assert_eq!(limit_key(ip("5.6.7.8"), 64), ip("5.6.7.8"));
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
            limit_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64)
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1"), 64),
            limit_key(ip("2001:db8:1:3::1"), 64)
        );
        assert_eq!(limit_key(ip("2001:db8:1:2:3::1"), 48), ip("2001:db8:1::"));
        assert_eq!(limit_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(limit_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(limit_key(ip("::ffff:5.6.7.8"), 64), ip("5.6.7.8"));
    }
}
