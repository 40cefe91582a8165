//! Test packets: a builder for Ethernet / (802.1Q) / IPv4 or IPv6 (with
//! extension headers) / TCP or UDP frames, a parser to read them back, and
//! an RFC 1071 checksum written independently of the datapath, so a
//! checksum bug there cannot hide behind the same bug here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
/// SCTP chunk types the tests send.
pub const SCTP_DATA: u8 = 0;
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
pub const SCTP_ABORT: u8 = 6;
pub const SCTP_SHUTDOWN_COMPLETE: u8 = 14;
/// The Initiate Tag of the INIT [`Packet::sctp`] builds.
pub const SCTP_INITIATE_TAG: u32 = 0x1357_9bdf;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers the builder and parser know.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTS: u8 = 60;
pub const IPV6_HLEN: usize = 40;
/// IPv4 header offsets of the fields NAT touches.
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
/// TCP flags byte values.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

// ---------------------------------------------------------------- checksum

/// The 32-bit one's-complement accumulator of RFC 1071: 16-bit big-endian
/// words, an odd trailing byte padded with zero. Carries are folded later.
pub fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so that even huge inputs never overflow the accumulator.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = words.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds the carries back in (end-around carry) to a 16-bit sum.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the complement of its folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793 / RFC 768 for IPv4,
/// RFC 8200 §8.1 for IPv6: both addresses, a 32-bit length, the next header).
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u32 {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            ph.extend_from_slice(&src.octets());
            ph.extend_from_slice(&dst.octets());
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            ph.extend_from_slice(&src.octets());
            ph.extend_from_slice(&dst.octets());
            ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("a pseudo-header of mixed families: {src} → {dst}"),
    }
    sum_words(&ph, 0)
}

/// Checksum of a TCP/UDP segment (whose checksum field must be zero).
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    !fold(sum_words(
        segment,
        pseudo_header_sum(src, dst, proto, segment.len()),
    ))
}

// ------------------------------------------------------------------ builder

/// What a frame carries after the IP header.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    /// `checksum: false` sends a zero ("no checksum") UDP checksum.
    Udp {
        checksum: bool,
    },
    /// SCTP: a common header with `vtag` and one chunk of type `chunk`
    /// whose value is `payload` (padded to 4 bytes); `crc: false` leaves
    /// the checksum zero, as a sender with CRC offload hands it over.
    Sctp {
        chunk: u8,
        vtag: u32,
        crc: bool,
    },
    /// Any other protocol: `payload` follows the IP header as is.
    Other {
        proto: u8,
    },
}

/// A frame description; `build` turns it into bytes with correct lengths
/// and checksums. Fields are public so tests can tweak one thing at a time.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 802.1Q VLAN id, if the frame is tagged.
    pub vlan: Option<u16>,
    /// Both of one family: IPv4 or IPv6.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    /// Raw IPv4 options, a multiple of 4 bytes (ihl = 5 + len / 4).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers in order: (type, the bytes after its next
    /// header and length bytes, so 6 + a multiple of 8; a fragment
    /// header's are its offset, flags and identification after a reserved
    /// byte, which the builder writes where the length would be).
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    /// IPv4 flags and fragment offset (host order), e.g. 0x4000 for DF.
    pub frag: u16,
    /// IPv4 TTL, IPv6 hop limit.
    pub ttl: u8,
    pub ip_id: u16,
    pub payload: Vec<u8>,
}

impl Packet {
    fn new(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, l4: L4) -> Self {
        let (src, dst) = (src.into(), dst.into());
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "{src} → {dst}: one family");
        Packet {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            l4,
            ip_options: Vec::new(),
            ipv6_ext: Vec::new(),
            frag: 0x4000,
            ttl: 64,
            ip_id: 0x1234,
            payload: b"kxdp test payload".to_vec(),
        }
    }

    /// A TCP SYN from `src` to `dst`.
    pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Self {
        Packet::new(src, dst, L4::Tcp { flags: TCP_SYN })
    }

    /// A UDP datagram with a computed checksum.
    pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Self {
        Packet::new(src, dst, L4::Udp { checksum: true })
    }

    /// An SCTP INIT from `src` to `dst` (verification tag 0, Initiate Tag
    /// [`SCTP_INITIATE_TAG`]).
    pub fn sctp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Self {
        let mut init = SCTP_INITIATE_TAG.to_be_bytes().to_vec();
        // a_rwnd, outbound and inbound streams, initial TSN.
        init.extend_from_slice(&[0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
        Packet::new(
            src,
            dst,
            L4::Sctp {
                chunk: SCTP_INIT,
                vtag: 0,
                crc: true,
            },
        )
        .payload(&init)
    }

    /// An SCTP packet with a chunk of this type and this verification tag
    /// instead (its value the payload as it is).
    pub fn sctp_chunk(mut self, chunk: u8, vtag: u32) -> Self {
        self.l4 = L4::Sctp {
            chunk,
            vtag,
            crc: true,
        };
        self
    }

    /// The SCTP packet with a zero checksum, as CRC offload leaves it.
    pub fn no_sctp_crc(mut self) -> Self {
        if let L4::Sctp { chunk, vtag, .. } = self.l4 {
            self.l4 = L4::Sctp {
                chunk,
                vtag,
                crc: false,
            };
        }
        self
    }

    /// Another protocol's packet (ICMP, ICMPv6, ...) carrying `payload` as is.
    pub fn other(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, proto: u8) -> Self {
        Packet::new(src, dst, L4::Other { proto })
    }

    /// An IPv6 extension header of `kind` after the ones already added.
    pub fn ipv6_ext(mut self, kind: u8, body: &[u8]) -> Self {
        assert!(self.src.is_ipv6(), "extension headers are IPv6's");
        assert!(
            body.len() >= 6 && (body.len() - 6).is_multiple_of(8),
            "an extension header is a multiple of 8 bytes"
        );
        self.ipv6_ext.push((kind, body.to_vec()));
        self
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn ip_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "bad IPv4 options length"
        );
        self.ip_options = options.to_vec();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// A TCP packet with these flags instead of a bare SYN.
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.l4 = L4::Tcp { flags };
        self
    }

    pub fn no_udp_checksum(mut self) -> Self {
        self.l4 = L4::Udp { checksum: false };
        self
    }

    /// The same packet with new endpoints (e.g. the expected NAT result).
    pub fn with_src(mut self, src: impl Into<SocketAddr>) -> Self {
        self.src = src.into();
        self
    }

    pub fn with_dst(mut self, dst: impl Into<SocketAddr>) -> Self {
        self.dst = dst.into();
        self
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Sctp { .. } => PROTO_SCTP,
            L4::Other { proto } => proto,
        }
    }

    /// The L4 segment (header + payload) with its checksum filled in.
    fn segment(&self) -> Vec<u8> {
        let (sport, dport) = (self.src.port().to_be_bytes(), self.dst.port().to_be_bytes());
        let mut seg = Vec::new();
        let csum_off = match self.l4 {
            L4::Tcp { flags } => {
                seg.extend_from_slice(&sport);
                seg.extend_from_slice(&dport);
                seg.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                let ack = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
                seg.extend_from_slice(&u32::to_be_bytes(ack));
                seg.extend_from_slice(&[5 << 4, flags]); // data offset 5, flags
                seg.extend_from_slice(&64240u16.to_be_bytes()); // window
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                Some(16)
            }
            L4::Udp { checksum } => {
                seg.extend_from_slice(&sport);
                seg.extend_from_slice(&dport);
                seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                checksum.then_some(6)
            }
            L4::Sctp { chunk, vtag, crc } => {
                seg.extend_from_slice(&sport);
                seg.extend_from_slice(&dport);
                seg.extend_from_slice(&vtag.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]);
                let len = (4 + self.payload.len()) as u16;
                seg.extend_from_slice(&[chunk, 0]);
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&self.payload);
                seg.resize(seg.len().next_multiple_of(4), 0);
                if crc {
                    let crc = crc32c::crc32c(&seg);
                    seg[8..12].copy_from_slice(&crc.to_le_bytes());
                }
                return seg;
            }
            L4::Other { .. } => None,
        };
        seg.extend_from_slice(&self.payload);
        if let Some(off) = csum_off {
            let mut sum = l4_checksum(self.src.ip(), self.dst.ip(), self.proto(), &seg);
            if sum == 0 && self.proto() == PROTO_UDP {
                sum = 0xffff; // RFC 768: a computed zero is sent as all ones
            }
            seg[off..off + 2].copy_from_slice(&sum.to_be_bytes());
        }
        seg
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        let seg = self.segment();
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                f.extend_from_slice(&self.ipv4_header(src, dst, seg.len()));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext = self.ipv6_ext_bytes();
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext.len() + seg.len()) as u16).to_be_bytes());
                let first = self.ipv6_ext.first().map_or(self.proto(), |e| e.0);
                f.extend_from_slice(&[first, self.ttl]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&ext);
            }
            _ => unreachable!("one family, checked at construction"),
        }
        f.extend_from_slice(&seg);
        f
    }

    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, seg_len: usize) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(0); // TOS
        ip.extend_from_slice(&((ihl + seg_len) as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let sum = checksum(&ip);
        ip[IP_CSUM_OFF..IP_CSUM_OFF + 2].copy_from_slice(&sum.to_be_bytes());
        ip
    }

    /// The extension headers, each with its next header and length.
    fn ipv6_ext_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (kind, body)) in self.ipv6_ext.iter().enumerate() {
            let next = self.ipv6_ext.get(i + 1).map_or(self.proto(), |e| e.0);
            let len = if *kind == IPV6_FRAGMENT {
                0 // reserved
            } else {
                ((body.len() + 2) / 8 - 1) as u8
            };
            out.extend_from_slice(&[next, len]);
            out.extend_from_slice(body);
        }
        out
    }
}

/// A bare Ethernet frame with any ethertype and body (ARP, IPv6, ...).
pub fn ethernet(ether_type: u16, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(body);
    f
}

// ------------------------------------------------------------------- parser

/// Where things are in a parsed IPv4 or IPv6 TCP/UDP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub l3_off: usize,
    pub l4_off: usize,
    pub proto: u8,
    /// End of the IP packet (from its total or payload length).
    pub end: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Headers {
    /// Offset of the L4 checksum field.
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + match self.proto {
                PROTO_TCP => 16,
                PROTO_SCTP => 8,
                _ => 6,
            }
    }

    /// Length of the L4 checksum field: SCTP's CRC32c is 4 bytes.
    pub fn l4_csum_len(&self) -> usize {
        if self.proto == PROTO_SCTP {
            4
        } else {
            2
        }
    }
}

/// The IPv4 address of a test that speaks IPv4 (panics on IPv6).
pub fn ipv4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(addr) => addr,
        IpAddr::V6(addr) => panic!("{addr} is not IPv4"),
    }
}

fn be16(frame: &[u8], off: usize) -> Result<u16, String> {
    frame
        .get(off..off + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("frame too short for a u16 at {off}"))
}

fn addr(frame: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[off], frame[off + 1], frame[off + 2], frame[off + 3])
}

fn addr6(frame: &[u8], off: usize) -> IpAddr {
    let octets: [u8; 16] = frame[off..off + 16].try_into().expect("16 bytes");
    IpAddr::from(octets)
}

/// Parses an Ethernet (optionally 802.1Q) IPv4 or IPv6 TCP/UDP frame.
pub fn parse(frame: &[u8]) -> Result<Headers, String> {
    let mut l3_off = ETH_HLEN;
    let mut ether_type = be16(frame, 12)?;
    if ether_type == ETH_P_8021Q {
        ether_type = be16(frame, 16)?;
        l3_off += 4;
    }
    let (l4_off, proto, end, (src, dst)) = match ether_type {
        ETH_P_IPV4 => {
            let vihl = *frame.get(l3_off).ok_or("no IPv4 header")?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || frame.len() < l3_off + ihl {
                return Err(format!("bad IPv4 header (version/ihl {vihl:#04x})"));
            }
            let end = l3_off + usize::from(be16(frame, l3_off + 2)?);
            let addrs = (
                IpAddr::V4(addr(frame, l3_off + IP_SADDR_OFF)),
                IpAddr::V4(addr(frame, l3_off + IP_DADDR_OFF)),
            );
            (l3_off + ihl, frame[l3_off + 9], end, addrs)
        }
        ETH_P_IPV6 => {
            if frame.len() < l3_off + IPV6_HLEN || frame[l3_off] >> 4 != 6 {
                return Err("bad IPv6 header".into());
            }
            let end = l3_off + IPV6_HLEN + usize::from(be16(frame, l3_off + 4)?);
            let (mut next, mut off) = (frame[l3_off + 6], l3_off + IPV6_HLEN);
            while matches!(
                next,
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT
            ) {
                let ext = frame
                    .get(off..off + 2)
                    .ok_or("extension header cut short")?;
                off += if next == IPV6_FRAGMENT {
                    8
                } else {
                    (usize::from(ext[1]) + 1) * 8
                };
                next = ext[0];
            }
            let addrs = (addr6(frame, l3_off + 8), addr6(frame, l3_off + 24));
            (off, next, end, addrs)
        }
        other => return Err(format!("not IP: ethertype {other:#06x}")),
    };
    if end > frame.len() || end < l4_off {
        return Err(format!(
            "IP length ends at {end}, frame has {}",
            frame.len()
        ));
    }
    let l4_len = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        // The common header and a chunk header.
        PROTO_SCTP => 16,
        p => return Err(format!("not TCP/UDP/SCTP: protocol {p}")),
    };
    if end < l4_off + l4_len {
        return Err("L4 header cut short".into());
    }
    Ok(Headers {
        l3_off,
        l4_off,
        proto,
        end,
        src: SocketAddr::new(src, be16(frame, l4_off)?),
        dst: SocketAddr::new(dst, be16(frame, l4_off + 2)?),
    })
}

/// Source address and port of a TCP/UDP frame (panics otherwise).
pub fn src(frame: &[u8]) -> SocketAddr {
    parse(frame).expect("parsable frame").src
}

/// Destination address and port of a TCP/UDP frame (panics otherwise).
pub fn dst(frame: &[u8]) -> SocketAddr {
    parse(frame).expect("parsable frame").dst
}

/// The TCP/UDP checksum field of a frame (panics if unparsable).
pub fn l4_csum_field(frame: &[u8]) -> u16 {
    let h = parse(frame).expect("parsable frame");
    be16(frame, h.l4_csum_off()).expect("checksum field")
}

/// Checks the IPv4 header checksum (IPv6 has none) and the TCP/UDP
/// checksum (a zero UDP checksum means "none" and is accepted over IPv4;
/// over IPv6 it is invalid, RFC 8200 §8.1).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let h = parse(frame)?;
    if h.src.is_ipv4() {
        // Summing a header that includes its correct checksum gives all ones.
        let ip_sum = fold(sum_words(
            &frame[h.l3_off..h.l3_off + ipv4_header_len(frame, &h)],
            0,
        ));
        if ip_sum != 0xffff {
            return Err(format!("IPv4 header checksum wrong (sum {ip_sum:#06x})"));
        }
    }
    if h.proto == PROTO_SCTP {
        return verify_sctp_crc(&frame[h.l4_off..h.end]);
    }
    let csum_field = be16(frame, h.l4_csum_off())?;
    if h.proto == PROTO_UDP && csum_field == 0 {
        return if h.src.is_ipv4() {
            Ok(())
        } else {
            Err("a zero UDP checksum over IPv6".into())
        };
    }
    let seg = &frame[h.l4_off..h.end];
    let l4_sum = fold(sum_words(
        seg,
        pseudo_header_sum(h.src.ip(), h.dst.ip(), h.proto, seg.len()),
    ));
    if l4_sum != 0xffff {
        return Err(format!(
            "{} checksum {csum_field:#06x} wrong (sum {l4_sum:#06x})",
            if h.proto == PROTO_TCP { "TCP" } else { "UDP" }
        ));
    }
    Ok(())
}

/// Checks an SCTP packet's CRC32c (least significant byte first, taken
/// with the field zero), by the `crc32c` crate; a zero field is an error.
fn verify_sctp_crc(packet: &[u8]) -> Result<(), String> {
    let field = u32::from_le_bytes(packet[8..12].try_into().expect("4 bytes"));
    let mut zeroed = packet.to_vec();
    zeroed[8..12].fill(0);
    let crc = crc32c::crc32c(&zeroed);
    if field != crc {
        return Err(format!("SCTP checksum {field:#010x}, CRC32c {crc:#010x}"));
    }
    Ok(())
}

/// The SCTP checksum field of a frame, as a number (panics if unparsable).
pub fn sctp_crc_field(frame: &[u8]) -> u32 {
    let h = parse(frame).expect("parsable frame");
    let at = h.l4_csum_off();
    u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"))
}

fn ipv4_header_len(frame: &[u8], h: &Headers) -> usize {
    usize::from(frame[h.l3_off] & 0x0f) * 4
}

// ------------------------------------------------------------ reject replies

fn be32(frame: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([frame[off], frame[off + 1], frame[off + 2], frame[off + 3]])
}

/// Checks that `out` is the SCTP ABORT answering `request` (an SCTP packet
/// built by [`Packet`]) as RFC 9260 §8.4 has it: MACs, addresses and ports
/// swapped, one ABORT chunk without causes, tagged with an INIT's Initiate
/// Tag (T bit clear) or any other packet's own tag (T bit set), and a
/// CRC32c the `crc32c` crate agrees with.
pub fn assert_abort_answers(out: &[u8], request: &Packet) {
    let L4::Sctp { chunk, vtag, .. } = request.l4 else {
        panic!("request is not SCTP")
    };
    let (tag, t_bit) = if chunk == SCTP_INIT {
        (be32(&request.payload, 0), 0)
    } else {
        (vtag, 1)
    };
    verify_checksums(out).unwrap_or_else(|e| panic!("ABORT checksums: {e}"));
    let h = parse(out).expect("an IP packet");
    assert_eq!(&out[0..6], &request.src_mac, "back to the sender's MAC");
    assert_eq!(&out[6..12], &request.dst_mac);
    assert_eq!(
        (h.src, h.dst),
        (request.dst, request.src),
        "endpoints swapped"
    );
    assert_eq!(h.proto, PROTO_SCTP);
    assert_eq!(h.end - h.l4_off, 16, "a common header and one chunk");
    assert_eq!(out.len(), h.end, "nothing past the ABORT");
    let sctp = &out[h.l4_off..];
    assert_eq!(be32(sctp, 4), tag, "verification tag");
    assert_eq!(&sctp[12..16], &[SCTP_ABORT, t_bit, 0, 4], "ABORT chunk");
}

/// Checks that `out` is the RST answering `request` (a TCP segment built by
/// [`Packet`]): MACs and addresses swapped, no payload, RFC 9293 sequence
/// numbers, and both checksums right by this module's own arithmetic.
pub fn assert_rst_answers(out: &[u8], request: &Packet) {
    let L4::Tcp { flags } = request.l4 else {
        panic!("request is not TCP")
    };
    verify_checksums(out).unwrap_or_else(|e| panic!("RST checksums: {e}"));
    let h = parse(out).expect("RST parses");
    let ip_len = if h.src.is_ipv4() { 20 } else { IPV6_HLEN };
    assert_eq!(
        out.len(),
        ETH_HLEN + ip_len + 20,
        "RST carries nothing but headers"
    );
    assert_eq!((h.src, h.dst), (request.dst, request.src), "RST addresses");
    assert_eq!(out[0..6], request.src_mac, "RST goes back to the sender");
    assert_eq!(out[6..12], request.dst_mac);
    let tcp = h.l4_off;
    assert_eq!(out[tcp + 12], 5 << 4, "no TCP options");
    let request_seq = 0x0102_0304u32;
    if flags & TCP_ACK != 0 {
        assert_eq!(out[tcp + 13], 0x04, "bare RST");
        assert_eq!(be32(out, tcp + 4), 0x0a0b_0c0d, "seq = the segment's ack");
    } else {
        let consumed = request.payload.len() as u32 + u32::from(flags & TCP_SYN != 0);
        assert_eq!(out[tcp + 13], 0x14, "RST|ACK");
        assert_eq!(be32(out, tcp + 4), 0, "seq");
        assert_eq!(be32(out, tcp + 8), request_seq + consumed, "ack");
    }
}

/// Checks that `out` is the ICMP (ICMPv6) port unreachable answering
/// `request` (the request's frame bytes): from its destination to its
/// source, quoting its IP header and first 8 bytes of UDP (ICMPv6: as much
/// of it as fits 1280 bytes), checksums right.
pub fn assert_port_unreachable_answers(out: &[u8], request: &[u8]) {
    let req = parse(request).expect("request parses");
    assert_eq!(out[0..6], request[6..12], "back to the sender");
    assert_eq!(out[6..12], request[0..6]);
    if req.src.is_ipv4() {
        assert_eq!(out.len(), ETH_HLEN + 20 + 8 + 28, "ICMP error length");
        let ip = &out[ETH_HLEN..ETH_HLEN + 20];
        assert_eq!(fold(sum_words(ip, 0)), 0xffff, "IPv4 header checksum");
        assert_eq!(ip[9], PROTO_ICMP);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), 56);
        assert_eq!(IpAddr::V4(addr(out, ETH_HLEN + IP_SADDR_OFF)), req.dst.ip());
        assert_eq!(IpAddr::V4(addr(out, ETH_HLEN + IP_DADDR_OFF)), req.src.ip());
        let icmp = &out[ETH_HLEN + 20..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "destination/port unreachable");
        assert_eq!(fold(sum_words(icmp, 0)), 0xffff, "ICMP checksum");
        assert_eq!(icmp[8..], request[req.l3_off..req.l4_off + 8], "quote");
    } else {
        // As much of the request as keeps the error within IPv6's minimum
        // MTU (RFC 4443): 1280 less the error's own 48 bytes of headers.
        let quote = (request.len() - req.l3_off).min(1280 - IPV6_HLEN - 8);
        assert_eq!(
            out.len(),
            ETH_HLEN + IPV6_HLEN + 8 + quote,
            "ICMPv6 error length"
        );
        assert_eq!(out[12..14], ETH_P_IPV6.to_be_bytes());
        let ip = &out[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), 8 + quote);
        assert_eq!(ip[6], PROTO_ICMPV6);
        assert_eq!(addr6(out, ETH_HLEN + 8), req.dst.ip());
        assert_eq!(addr6(out, ETH_HLEN + 24), req.src.ip());
        let icmp = &out[ETH_HLEN + IPV6_HLEN..];
        assert_eq!((icmp[0], icmp[1]), (1, 4), "destination/port unreachable");
        let pseudo = pseudo_header_sum(req.dst.ip(), req.src.ip(), PROTO_ICMPV6, icmp.len());
        assert_eq!(fold(sum_words(icmp, pseudo)), 0xffff, "ICMPv6 checksum");
        assert_eq!(icmp[8..], request[req.l3_off..req.l3_off + quote], "quote");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic IPv4 header example (RFC 1071 style, as on Wikipedia).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_ipv4_header_checksum() {
        let mut h = HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        assert_eq!(fold(sum_words(&HEADER, 0)), 0xffff);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 after folding.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum_words(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn built_frames_verify_and_parse() {
        let a = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000));
        let b = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80));
        for p in [
            Packet::tcp(a, b),
            Packet::udp(a, b),
            Packet::udp(a, b).no_udp_checksum(),
            Packet::tcp(a, b).vlan(7).ip_options(&[0x94, 0x04, 0, 0]),
            Packet::udp(a, b).payload(b"odd"),
        ] {
            let f = p.build();
            verify_checksums(&f).unwrap();
            assert_eq!((src(&f), dst(&f)), (a, b));
        }
    }

    #[test]
    fn built_ipv6_frames_verify_and_parse_past_extension_headers() {
        let a: SocketAddr = "[fd00:10:244::5]:40000".parse().unwrap();
        let b: SocketAddr = "[fd00:10:96::a]:80".parse().unwrap();
        let options = [1, 4, 0, 0, 0, 0]; // a PadN option filling 8 bytes
        for p in [
            Packet::tcp(a, b),
            Packet::udp(a, b).payload(b"odd"),
            Packet::tcp(a, b)
                .vlan(7)
                .ipv6_ext(IPV6_HOP_BY_HOP, &options),
            Packet::udp(a, b)
                .ipv6_ext(IPV6_DEST_OPTS, &options)
                .ipv6_ext(IPV6_FRAGMENT, &[0, 0, 0, 0, 0, 9]),
        ] {
            let f = p.build();
            verify_checksums(&f).unwrap();
            let h = parse(&f).unwrap();
            assert_eq!((h.src, h.dst), (a, b));
            assert_eq!(h.l4_off, h.l3_off + IPV6_HLEN + 8 * p.ipv6_ext.len());
        }
        let zero = Packet::udp(a, b).no_udp_checksum().build();
        assert!(
            verify_checksums(&zero).is_err(),
            "no zero UDP checksum over IPv6"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let a = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000));
        let b = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80));
        let f = Packet::tcp(a, b).build();
        let h = parse(&f).unwrap();
        for off in [h.l3_off + IP_DADDR_OFF, h.l4_off + 2, f.len() - 1] {
            let mut bad = f.clone();
            bad[off] ^= 0x01;
            assert!(
                verify_checksums(&bad).is_err(),
                "flip at {off} not detected"
            );
        }
    }
}
