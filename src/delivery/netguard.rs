//! The private-network block: which addresses a delivery may connect to.
//!
//! Checked on every resolved address at connect time (see `client`), so a DNS
//! name cannot smuggle in an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct NetGuard {
    allow: Vec<IpNet>,
}

impl NetGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// May a delivery connect to `ip`?
    pub fn allows(&self, ip: IpAddr) -> bool {
        let canonical = canonical(ip);
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return true;
        }
        !is_internal(canonical)
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`) addresses are judged as the IPv4 inside.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            let o = v6.octets();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            if s[0] == 0x2002 {
                return IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback() // 127/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16, includes the cloud metadata address
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 CGNAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24 IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
        || ip.is_multicast() // 224/4
        || a >= 240 // 240/4 reserved and the broadcast address
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (first & 0xffc0) == 0xfec0 // fec0::/10 deprecated site-local
        || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local, includes fd00:ec2::254 (AWS metadata)
        || ip.segments()[..3] == [0x64, 0xff9b, 1] // 64:ff9b:1::/48 local-use NAT64
        || ip.segments()[..4] == [0x100, 0, 0, 0] // 100::/64 discard-only
        || (first & 0xff00) == 0xff00 // ff00::/8 multicast
        || (ip.segments()[..6] == [0; 6] && {
            // Deprecated IPv4-compatible form `::a.b.c.d`.
            let o = ip.octets();
            is_internal_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        !NetGuard::default().allows(s.parse().unwrap())
    }

    #[test]
    fn blocks_internal_addresses() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            // Cloud metadata services, in every spelling.
            "169.254.170.2",   // AWS ECS task metadata
            "100.100.100.200", // Alibaba Cloud
            "192.0.0.192",     // Oracle Cloud
            "::ffff:100.100.100.200",
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "::ffff:a9fe:a9fe",   // mapped 169.254.169.254, hex form
            "::169.254.169.254",  // deprecated IPv4-compatible
            "2002:a9fe:a9fe::",   // 6to4 of 169.254.169.254
            "2002:7f00:1::1",     // 6to4 of 127.0.0.1
            "2002:c0a8:101::",    // 6to4 of 192.168.1.1
            // Other internal IPv6 ranges.
            "fd00::1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "100::1",
            "::ffff:0.0.0.0",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "::ffff:224.0.0.1",
        ] {
            assert!(blocked(a), "{a} should be blocked");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!blocked(a), "{a} should be allowed");
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        let g = NetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(g.allows("127.0.0.1".parse().unwrap()));
        assert!(g.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!g.allows("10.0.0.1".parse().unwrap()));
        assert!(!g.allows("::1".parse().unwrap()));
        assert!(g.allows("64:ff9b::7f00:1".parse().unwrap()));
        assert!(!g.allows("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn allowing_one_metadata_spelling_opens_only_that_address() {
        let g = NetGuard::new(vec!["169.254.169.254/32".parse().unwrap()]);
        assert!(g.allows("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!g.allows("169.254.169.253".parse().unwrap()));
        assert!(!g.allows("fd00:ec2::254".parse().unwrap()));
    }
}
