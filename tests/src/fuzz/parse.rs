//! The reference model's reading of a frame, written from the rules in
//! docs/ARCHITECTURE.md, not from the datapath's parser:
//!
//! - Ethernet, at most one 802.1Q tag; IPv4 or IPv6 only.
//! - IPv4: version 4, a header of 20 bytes or more, not a fragment (no
//!   "more fragments" flag, offset 0; DF is fine). Its length fields are
//!   not the datapath's to check: the stack behind it does.
//! - IPv6: version 6; up to four extension headers among hop-by-hop,
//!   routing (only with no segments left: otherwise this is not the
//!   destination), destination options and fragment (only an atomic one:
//!   offset 0, no more fragments) are walked.
//! - then a whole TCP (20 bytes) or UDP (8 bytes) header in the frame.
//!
//! Anything else is not a flow: it passes untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_common::maps::{PROTO_TCP, PROTO_UDP};

/// A TCP or UDP packet as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Parsed {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags (0 for UDP).
    pub flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Parsed {
    /// A TCP SYN without ACK.
    pub fn opens(&self) -> bool {
        self.proto == PROTO_TCP && self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP FIN or RST.
    pub fn closes(&self) -> bool {
        self.proto == PROTO_TCP && self.flags & (TCP_FIN | TCP_RST) != 0
    }

    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    /// Offset of the TCP/UDP checksum.
    pub fn csum_off(&self) -> usize {
        self.l4 + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    /// Offset of the TTL (hop limit).
    pub fn ttl_off(&self) -> usize {
        self.l3 + if self.is_v4() { 8 } else { 7 }
    }
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

/// The frame's IP header offset and whether it is IPv6, if it is IP.
pub fn l3(frame: &[u8]) -> Option<(usize, bool)> {
    let mut ether_type = be16(frame, 12)?;
    let mut l3 = 14;
    if ether_type == 0x8100 {
        ether_type = be16(frame, 16)?;
        l3 = 18;
    }
    match ether_type {
        0x0800 => Some((l3, false)),
        0x86dd => Some((l3, true)),
        _ => None,
    }
}

pub fn parse(frame: &[u8]) -> Option<Parsed> {
    let (l3, v6) = l3(frame)?;
    let (l4, proto, src, dst) = if v6 {
        ipv6(frame, l3)?
    } else {
        ipv4(frame, l3)?
    };
    let header = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return None,
    };
    if frame.len() < l4 + header {
        return None;
    }
    Some(Parsed {
        l3,
        l4,
        proto,
        src: SocketAddr::new(src, be16(frame, l4)?),
        dst: SocketAddr::new(dst, be16(frame, l4 + 2)?),
        flags: if proto == PROTO_TCP {
            frame[l4 + 13]
        } else {
            0
        },
    })
}

fn ipv4(f: &[u8], l3: usize) -> Option<(usize, u8, IpAddr, IpAddr)> {
    let h = f.get(l3..l3 + 20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
    if h[0] >> 4 != 4 || ihl < 20 || fragment {
        return None;
    }
    let addr = |o: usize| IpAddr::V4(Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]));
    Some((l3 + ihl, h[9], addr(12), addr(16)))
}

fn ipv6(f: &[u8], l3: usize) -> Option<(usize, u8, IpAddr, IpAddr)> {
    let h = f.get(l3..l3 + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let addr = |o: usize| {
        let octets: [u8; 16] = h[o..o + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let (mut next, mut off) = (h[6], l3 + 40);
    let mut walked = 0;
    while matches!(next, 0 | 43 | 44 | 60) {
        if walked == 4 {
            return None;
        }
        let ext = f.get(off..off + 4)?;
        match next {
            44 if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff9 != 0 => return None,
            44 => off += 8,
            43 if ext[3] != 0 => return None,
            _ => off += (usize::from(ext[1]) + 1) * 8,
        }
        next = ext[0];
        walked += 1;
    }
    Some((off, next, addr(8), addr(24)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Packet, IPV6_FRAGMENT, IPV6_ROUTING};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_flows_and_refuses_what_is_not_one() {
        let tcp = Packet::tcp(sa("10.0.0.1:1000"), sa("10.96.0.1:80")).vlan(3);
        let p = parse(&tcp.build()).unwrap();
        assert_eq!((p.l3, p.l4, p.flags), (18, 38, TCP_SYN));
        let mut frag = tcp.clone();
        frag.frag = 0x2000;
        assert!(parse(&frag.build()).is_none());
        let v6 = Packet::udp(sa("[fd00::1]:1"), sa("[fd00::2]:2"));
        let atomic = v6.clone().ipv6_ext(IPV6_FRAGMENT, &[0, 0, 0, 0, 0, 1]);
        assert_eq!(parse(&atomic.build()).unwrap().l4, 14 + 48);
        let later = v6.clone().ipv6_ext(IPV6_FRAGMENT, &[0, 8, 0, 0, 0, 1]);
        assert!(parse(&later.build()).is_none());
        let routed = v6.clone().ipv6_ext(IPV6_ROUTING, &[0, 1, 0, 0, 0, 0]);
        assert!(parse(&routed.build()).is_none());
        let five = (0..5).fold(v6, |p, _| p.ipv6_ext(60, &[1, 4, 0, 0, 0, 0]));
        assert!(parse(&five.build()).is_none());
        let built = tcp.build();
        assert!(parse(&built[..built.len() - 17 - 1]).is_none(), "TCP cut");
    }
}
