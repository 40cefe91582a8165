//! How the model checks an output frame: a rewrite of the input (addresses,
//! ports, MACs, TTL) compared byte for byte, checksums by what an
//! incremental update must preserve (the one's-complement sum of the
//! covered bytes: a checksum wrong on the way in stays as wrong, a right
//! one stays right; a UDP datagram without checksum keeps none), and the
//! refusals (TCP RST, ICMP / ICMPv6 port unreachable) read field by field.
//! All with `packet`'s own arithmetic, none of the datapath's.

use std::net::{IpAddr, SocketAddr};

use proxy_common::maps::{PROTO_TCP, PROTO_UDP};

use super::parse::{self, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::packet::{self, fold, pseudo_header_sum, sum_words};

/// The input with the fields a translation changes replaced.
pub struct Rewrite<'a> {
    input: &'a [u8],
    p: Parsed,
    expected: Vec<u8>,
    src: SocketAddr,
    dst: SocketAddr,
}

fn put_addr(frame: &mut [u8], off: usize, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => frame[off..off + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => frame[off..off + 16].copy_from_slice(&a.octets()),
    }
}

impl<'a> Rewrite<'a> {
    pub fn new(input: &'a [u8], p: &Parsed) -> Self {
        Rewrite {
            input,
            p: *p,
            expected: input.to_vec(),
            src: p.src,
            dst: p.dst,
        }
    }

    pub fn source(mut self, to: SocketAddr) -> Self {
        let off = self.p.l3 + if self.p.is_v4() { 12 } else { 8 };
        put_addr(&mut self.expected, off, to.ip());
        self.expected[self.p.l4..self.p.l4 + 2].copy_from_slice(&to.port().to_be_bytes());
        self.src = to;
        self
    }

    pub fn destination(mut self, to: SocketAddr) -> Self {
        let off = self.p.l3 + if self.p.is_v4() { 16 } else { 24 };
        put_addr(&mut self.expected, off, to.ip());
        self.expected[self.p.l4 + 2..self.p.l4 + 4].copy_from_slice(&to.port().to_be_bytes());
        self.dst = to;
        self
    }

    pub fn swap_macs(mut self) -> Self {
        let (dst, src) = (self.input[0..6].to_vec(), self.input[6..12].to_vec());
        self.expected[0..6].copy_from_slice(&src);
        self.expected[6..12].copy_from_slice(&dst);
        self
    }

    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.expected[0..6].copy_from_slice(&dst);
        self.expected[6..12].copy_from_slice(&src);
        self
    }

    /// One hop spent: TTL (hop limit) less one.
    pub fn hop(mut self) -> Self {
        let off = self.p.ttl_off();
        self.expected[off] -= 1;
        self
    }

    pub fn check(self, verdict_wanted: u32, verdict: u32, out: &[u8]) -> Result<(), String> {
        if verdict != verdict_wanted {
            return Err(format!(
                "verdict {verdict}, expected {verdict_wanted} ({} → {})",
                self.src, self.dst
            ));
        }
        if out.len() != self.expected.len() {
            return Err(format!(
                "output is {} bytes, expected {}",
                out.len(),
                self.expected.len()
            ));
        }
        let p = &self.p;
        let csum = p.csum_off();
        let ip_csum = p.is_v4().then_some(p.l3 + 10);
        let in_field = |off: Option<usize>, i: usize| off.is_some_and(|o| (o..o + 2).contains(&i));
        if let Some(i) = (0..out.len()).find(|&i| {
            out[i] != self.expected[i] && !in_field(Some(csum), i) && !in_field(ip_csum, i)
        }) {
            return Err(format!(
                "byte {i} is {:#04x}, expected {:#04x} ({} → {})",
                out[i], self.expected[i], self.src, self.dst
            ));
        }
        if p.is_v4() {
            let ihl = usize::from(self.input[p.l3] & 0x0f) * 4;
            let sum = |f: &[u8]| fold(sum_words(&f[p.l3..p.l3 + ihl], 0));
            same_residue(sum(self.input), sum(out), "IPv4 header checksum")?;
        }
        let field = |f: &[u8]| u16::from_be_bytes([f[csum], f[csum + 1]]);
        if p.proto == PROTO_UDP && field(self.input) == 0 {
            return match field(out) {
                0 => Ok(()),
                c => Err(format!("UDP without checksum got one: {c:#06x}")),
            };
        }
        if p.proto == PROTO_UDP && field(out) == 0 {
            return Err("a UDP checksum became 0, \"no checksum\"".into());
        }
        let l4_sum = |f: &[u8], src: SocketAddr, dst: SocketAddr| {
            let seg = &f[p.l4..];
            fold(sum_words(
                seg,
                pseudo_header_sum(src.ip(), dst.ip(), p.proto, seg.len()),
            ))
        };
        same_residue(
            l4_sum(self.input, p.src, p.dst),
            l4_sum(out, self.src, self.dst),
            "L4 checksum",
        )
    }
}

/// Two one's-complement sums equal, 0 and 0xffff being the same number.
fn same_residue(input: u16, out: u16, what: &str) -> Result<(), String> {
    let norm = |s: u16| if s == 0 { 0xffff } else { s };
    if norm(input) == norm(out) {
        Ok(())
    } else {
        Err(format!(
            "{what}: covered sum {out:#06x}, the input's was {input:#06x}"
        ))
    }
}

fn be32(f: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([f[off], f[off + 1], f[off + 2], f[off + 3]])
}

/// The answer to a packet for a frontend without endpoints (core rule 4):
/// a TCP segment gets a RST (none to a RST: RFC 9293 §3.10.7.1), a
/// datagram an ICMP (ICMPv6) port unreachable, sent back where it came
/// from with `verdict_wanted`.
pub fn rejected(
    verdict_wanted: u32,
    input: &[u8],
    p: &Parsed,
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    if verdict != verdict_wanted {
        return Err(format!(
            "a refusal: verdict {verdict}, expected {verdict_wanted}"
        ));
    }
    if out.len() < 14 {
        return Err(format!("a refusal of {} bytes", out.len()));
    }
    if out[0..6] != input[6..12] || out[6..12] != input[0..6] {
        return Err("a refusal goes back to the sender's MAC".into());
    }
    if p.proto == PROTO_TCP {
        rst(input, p, out)
    } else {
        port_unreachable(input, p, out)
    }
}

fn rst(input: &[u8], p: &Parsed, out: &[u8]) -> Result<(), String> {
    let o = parse::parse(out).ok_or("the RST does not parse")?;
    if o.proto != PROTO_TCP || (o.src, o.dst) != (p.dst, p.src) {
        return Err(format!("RST {} → {}, not the reverse", o.src, o.dst));
    }
    let ip_len = if p.is_v4() { 20 } else { 40 };
    if out.len() != o.l3 + ip_len + 20 || o.l4 != o.l3 + ip_len {
        return Err(format!("RST of {} bytes: headers only", out.len()));
    }
    // Its own lengths say so too, and it has hops to go.
    let (said, ttl) = if p.is_v4() {
        (
            u16::from_be_bytes([out[o.l3 + 2], out[o.l3 + 3]]),
            out[o.l3 + 8],
        )
    } else {
        (
            u16::from_be_bytes([out[o.l3 + 4], out[o.l3 + 5]]) + 40,
            out[o.l3 + 7],
        )
    };
    if usize::from(said) != ip_len + 20 || ttl == 0 || out[o.l4 + 12] != 5 << 4 {
        return Err(format!(
            "RST's IP length {said}, TTL {ttl}, data offset {:#04x}",
            out[o.l4 + 12]
        ));
    }
    packet::verify_checksums(out).map_err(|e| format!("RST: {e}"))?;
    let tcp = p.l4;
    let flags = p.flags;
    let (seq, ack, out_flags) = (be32(out, o.l4 + 4), be32(out, o.l4 + 8), out[o.l4 + 13]);
    if flags & TCP_ACK != 0 {
        if out_flags != TCP_RST || seq != be32(input, tcp + 8) {
            return Err(format!(
                "RST to an ACK: flags {out_flags:#04x} seq {seq:#x}, expected RST with seq = its ack"
            ));
        }
        return Ok(());
    }
    // Its length: what the IP header says, less the headers.
    let ip_end = if p.is_v4() {
        p.l3 + usize::from(u16::from_be_bytes([input[p.l3 + 2], input[p.l3 + 3]]))
    } else {
        p.l3 + 40 + usize::from(u16::from_be_bytes([input[p.l3 + 4], input[p.l3 + 5]]))
    };
    let data = ip_end.saturating_sub(tcp + usize::from(input[tcp + 12] >> 4) * 4);
    let consumed = data as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    let want = be32(input, tcp + 4).wrapping_add(consumed);
    if out_flags != TCP_RST | TCP_ACK || seq != 0 || ack != want {
        return Err(format!(
            "RST to a segment without ACK: flags {out_flags:#04x} seq {seq:#x} ack {ack:#x}, expected RST|ACK, 0, {want:#x}"
        ));
    }
    Ok(())
}

fn port_unreachable(input: &[u8], p: &Parsed, out: &[u8]) -> Result<(), String> {
    let (l3, v6) = parse::l3(out).ok_or("the ICMP error is not IP")?;
    if v6 == p.is_v4() {
        return Err("the ICMP error changed family".into());
    }
    let addr = |f: &[u8], off: usize, v6: bool| -> IpAddr {
        if v6 {
            let o: [u8; 16] = f[off..off + 16].try_into().expect("16 bytes");
            o.into()
        } else {
            let o: [u8; 4] = f[off..off + 4].try_into().expect("4 bytes");
            o.into()
        }
    };
    let (icmp, quote, kind) = if v6 {
        let quote = (input.len() - p.l3).min(1280 - 48);
        (l3 + 40, &input[p.l3..p.l3 + quote], (1, 4))
    } else {
        (l3 + 20, &input[p.l3..p.l4 + 8], (3, 3))
    };
    if out.len() != icmp + 8 + quote.len() {
        return Err(format!(
            "ICMP error of {} bytes, expected {}",
            out.len(),
            icmp + 8 + quote.len()
        ));
    }
    let said = if v6 {
        usize::from(u16::from_be_bytes([out[l3 + 4], out[l3 + 5]])) + 40
    } else {
        usize::from(u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]))
    };
    if said != out.len() - l3 {
        return Err(format!("the ICMP error's IP length says {said}"));
    }
    let (src_off, dst_off, proto) = if v6 {
        (l3 + 8, l3 + 24, out[l3 + 6])
    } else {
        (l3 + 12, l3 + 16, out[l3 + 9])
    };
    if (addr(out, src_off, v6), addr(out, dst_off, v6)) != (p.dst.ip(), p.src.ip()) {
        return Err("the ICMP error is not from the frontend to the client".into());
    }
    if proto != if v6 { 58 } else { 1 } || (out[icmp], out[icmp + 1]) != kind {
        return Err(format!(
            "not a port unreachable: {:?}",
            (out[icmp], out[icmp + 1])
        ));
    }
    if &out[icmp + 8..] != quote {
        return Err("the ICMP error does not quote the request".into());
    }
    let pseudo = if v6 {
        pseudo_header_sum(p.dst.ip(), p.src.ip(), 58, out.len() - icmp)
    } else {
        if fold(sum_words(&out[l3..l3 + 20], 0)) != 0xffff {
            return Err("IPv4 header checksum wrong".into());
        }
        0
    };
    if fold(sum_words(&out[icmp..], pseudo)) != 0xffff {
        return Err("ICMP checksum wrong".into());
    }
    Ok(())
}
