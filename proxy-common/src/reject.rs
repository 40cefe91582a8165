//! Reject replies, as kube-proxy's REJECT sends them for a Service without
//! endpoints: a TCP RST for TCP, an ICMP port unreachable for UDP; for SCTP
//! the ABORT a host without a listener sends (RFC 9260 §8.4), not
//! kube-proxy's ICMP, which an SCTP client only reads as a soft error and
//! so retries its INIT for minutes, where an ABORT fails it at once. Pure
//! functions over fixed-size frames, shared by the XDP and tc programs and
//! unit-tested on the host. Only untagged frames whose IPv4 header has no
//! options, or whose IPv6 header has no extension headers, are answered
//! (every pod and NIC frame in practice); the caller drops the rest.

const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// What an ICMP error quotes of the request: its IP header and 8 bytes of L4.
const QUOTE_LEN: usize = IP_HLEN + 8;

/// Ethernet + IPv4 + TCP without options: the request prefix `tcp_rst`
/// reads and the length of the RST it writes.
pub const RST_FRAME_LEN: usize = ETH_HLEN + IP_HLEN + TCP_HLEN;
/// The request prefix `icmp_port_unreachable` reads: headers and 8 bytes of L4.
pub const ICMP_REQUEST_LEN: usize = ETH_HLEN + QUOTE_LEN;
/// Length of the ICMP port-unreachable frame.
pub const ICMP_FRAME_LEN: usize = ETH_HLEN + IP_HLEN + ICMP_HLEN + QUOTE_LEN;
/// How much an ICMP error is longer than the request prefix it quotes.
pub const ICMP_GROWTH: usize = ICMP_FRAME_LEN - ICMP_REQUEST_LEN;

const PROTO_ICMP: u8 = 1;
const REPLY_TTL: u8 = 64;

const IPV6_HLEN: usize = 40;
/// What an ICMPv6 error quotes of the request at least: its IPv6 header
/// and 8 bytes of L4, the prefix the builder reads and writes.
const QUOTE6_LEN: usize = IPV6_HLEN + 8;
/// The most an ICMPv6 error quotes: as much of the request as keeps the
/// error within IPv6's minimum MTU (RFC 4443 §2.4 (c)), 1280 bytes less
/// its own IPv6 and ICMPv6 headers.
const QUOTE6_MAX: usize = 1280 - IPV6_HLEN - ICMP_HLEN;
/// The most of the quote past the builder's prefix ([`QuoteRest`]).
pub const QUOTE6_REST_MAX: usize = QUOTE6_MAX - QUOTE6_LEN;
/// Ethernet + IPv6 + TCP without options: `tcp_rst6`'s request prefix and
/// RST.
pub const RST6_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + TCP_HLEN;
/// The request prefix `icmp6_port_unreachable` reads.
pub const ICMP6_REQUEST_LEN: usize = ETH_HLEN + QUOTE6_LEN;
/// Length of the ICMPv6 port-unreachable frame.
pub const ICMP6_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN + QUOTE6_LEN;
/// How much an ICMPv6 error is longer than the request prefix it quotes.
pub const ICMP6_GROWTH: usize = ICMP6_FRAME_LEN - ICMP6_REQUEST_LEN;
const PROTO_ICMPV6: u8 = 58;
/// Ethernet + IPv4 + an SCTP common header and one ABORT chunk: the
/// length of the ABORT `sctp_abort` writes.
pub const ABORT_FRAME_LEN: usize = ETH_HLEN + IP_HLEN + ABORT_LEN;
/// [`ABORT_FRAME_LEN`] over IPv6.
pub const ABORT6_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + ABORT_LEN;
/// An SCTP packet holding one ABORT chunk without causes.
const ABORT_LEN: usize = sctp::COMMON_HLEN + 4;

use crate::{
    crc32c,
    csum::{fold, sum_be_words},
    lb::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    sctp,
};

#[inline(always)]
fn put_u16(frame: &mut [u8], off: usize, value: u16) {
    frame[off..off + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
fn swap<const N: usize>(frame: &mut [u8], a: usize, b: usize) {
    let mut tmp = [0u8; N];
    tmp.copy_from_slice(&frame[a..a + N]);
    frame.copy_within(b..b + N, a);
    frame[b..b + N].copy_from_slice(&tmp);
}

/// Turns the IPv4 header at `ip` into a reply's: addresses swapped, fresh
/// fields, checksum filled in.
#[inline(always)]
fn reply_ip_header(frame: &mut [u8], ip: usize, proto: u8, total_len: u16) {
    swap::<4>(frame, ip + 12, ip + 16);
    frame[ip] = 0x45;
    frame[ip + 1] = 0;
    put_u16(frame, ip + 2, total_len);
    put_u16(frame, ip + 4, 0);
    // Don't fragment, as Linux sends its own resets and ICMP errors.
    put_u16(frame, ip + 6, 0x4000);
    frame[ip + 8] = REPLY_TTL;
    frame[ip + 9] = proto;
    put_u16(frame, ip + 10, 0);
    let check = fold(sum_be_words(&frame[ip..ip + IP_HLEN], 0));
    put_u16(frame, ip + 10, check);
}

/// Whether `frame` starts with an untagged IPv4 header without options.
#[inline(always)]
fn plain_ipv4(frame: &[u8]) -> bool {
    frame[12..14] == [0x08, 0x00] && frame[ETH_HLEN] == 0x45
}

/// Turns a TCP segment (its first [`RST_FRAME_LEN`] bytes, the frame cut
/// there by the caller) into the RST answering it. `payload_len` is the
/// segment's data length. Returns false, leaving the frame unchanged, for a
/// RST (never answered) or anything but plain IPv4 TCP. Sequence numbers
/// follow RFC 9293 §3.10.7.1: a segment with ACK gets `seq = its ack`; one
/// without gets `ack = its seq + data + SYN + FIN`.
#[inline(always)]
pub fn tcp_rst(frame: &mut [u8; RST_FRAME_LEN], payload_len: u16) -> bool {
    let tcp = ETH_HLEN + IP_HLEN;
    let flags = frame[tcp + 13];
    if !plain_ipv4(frame) || frame[ETH_HLEN + 9] != PROTO_TCP || flags & TCP_RST != 0 {
        return false;
    }
    swap::<6>(frame, 0, 6);
    reply_ip_header(frame, ETH_HLEN, PROTO_TCP, (IP_HLEN + TCP_HLEN) as u16);
    let ip = ETH_HLEN;
    let pseudo = sum_be_words(&frame[ip + 12..ip + 20], PROTO_TCP as u32 + TCP_HLEN as u32);
    rst_segment(frame, tcp, payload_len, pseudo);
    true
}

/// [`tcp_rst`] for IPv6: a segment in an IPv6 header without extension
/// headers (its first [`RST6_FRAME_LEN`] bytes).
#[inline(always)]
pub fn tcp_rst6(frame: &mut [u8; RST6_FRAME_LEN], payload_len: u16) -> bool {
    let tcp = ETH_HLEN + IPV6_HLEN;
    let flags = frame[tcp + 13];
    if !plain_ipv6(frame, PROTO_TCP) || flags & TCP_RST != 0 {
        return false;
    }
    swap::<6>(frame, 0, 6);
    reply_ipv6_header(frame, ETH_HLEN, PROTO_TCP, TCP_HLEN as u16);
    let pseudo = pseudo6(frame, PROTO_TCP, TCP_HLEN as u32);
    rst_segment(frame, tcp, payload_len, pseudo);
    true
}

/// Turns the TCP header at `tcp` (flags of the request's) into the RST
/// answering it, its checksum over `pseudo` (the reply's pseudo-header
/// sum). Sequence numbers follow RFC 9293 §3.10.7.1.
#[inline(always)]
fn rst_segment(frame: &mut [u8], tcp: usize, payload_len: u16, pseudo: u32) {
    let flags = frame[tcp + 13];
    swap::<2>(frame, tcp, tcp + 2);
    if flags & TCP_ACK != 0 {
        frame.copy_within(tcp + 8..tcp + 12, tcp + 4);
        frame[tcp + 8..tcp + 12].fill(0);
        frame[tcp + 13] = TCP_RST;
    } else {
        let seq = u32::from_be_bytes([
            frame[tcp + 4],
            frame[tcp + 5],
            frame[tcp + 6],
            frame[tcp + 7],
        ]);
        let consumed =
            payload_len as u32 + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        frame[tcp + 4..tcp + 8].fill(0);
        frame[tcp + 8..tcp + 12].copy_from_slice(&seq.wrapping_add(consumed).to_be_bytes());
        frame[tcp + 13] = TCP_RST | TCP_ACK;
    }
    // Data offset 5 words; window, checksum and urgent pointer 0 for now.
    frame[tcp + 12] = 5 << 4;
    frame[tcp + 14..tcp + TCP_HLEN].fill(0);
    let check = fold(sum_be_words(&frame[tcp..tcp + TCP_HLEN], pseudo));
    put_u16(frame, tcp + 16, check);
}

/// Whether `frame` starts with an untagged IPv6 header whose next header
/// is `proto` (no extension headers).
#[inline(always)]
fn plain_ipv6(frame: &[u8], proto: u8) -> bool {
    frame[12..14] == [0x86, 0xdd] && frame[ETH_HLEN] >> 4 == 6 && frame[ETH_HLEN + 6] == proto
}

/// Turns the IPv6 header at `ip` into a reply's: addresses swapped, fresh
/// fields (no traffic class or flow label, as Linux's own errors).
#[inline(always)]
fn reply_ipv6_header(frame: &mut [u8], ip: usize, proto: u8, payload_len: u16) {
    swap::<16>(frame, ip + 8, ip + 24);
    frame[ip..ip + 4].copy_from_slice(&[0x60, 0, 0, 0]);
    put_u16(frame, ip + 4, payload_len);
    frame[ip + 6] = proto;
    frame[ip + 7] = REPLY_TTL;
}

/// The sum of the IPv6 pseudo-header (RFC 8200 §8.1) of the header at
/// [`ETH_HLEN`], for an upper-layer packet of `len` bytes.
#[inline(always)]
fn pseudo6(frame: &[u8], proto: u8, len: u32) -> u32 {
    let ip = ETH_HLEN;
    sum_be_words(
        &frame[ip + 8..ip + 40],
        proto as u32 + (len >> 16) + (len & 0xffff),
    )
}

/// Turns a datagram into the ICMP port unreachable answering it (RFC 792),
/// in place: the caller grows the frame by [`ICMP_GROWTH`] bytes in front
/// and cuts it at [`ICMP_FRAME_LEN`], so the request's first
/// [`ICMP_REQUEST_LEN`] bytes sit at `ICMP_GROWTH..`. Its IP header and 8
/// bytes of L4 are then exactly where the ICMP error quotes them. Returns
/// false for anything but plain IPv4.
#[inline(always)]
pub fn icmp_port_unreachable(frame: &mut [u8; ICMP_FRAME_LEN]) -> bool {
    let request = ICMP_GROWTH;
    if !plain_ipv4(&frame[request..]) {
        return false;
    }
    frame.copy_within(request + 6..request + 12, 0);
    frame.copy_within(request..request + 6, 6);
    frame.copy_within(request + 12..request + 14, 12);
    // The outer header starts as a copy of the quoted one.
    frame.copy_within(request + ETH_HLEN..request + ETH_HLEN + IP_HLEN, ETH_HLEN);
    let total_len = (IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16;
    reply_ip_header(frame, ETH_HLEN, PROTO_ICMP, total_len);
    let icmp = ETH_HLEN + IP_HLEN;
    // Type 3 (destination unreachable), code 3 (port unreachable), unused.
    frame[icmp..icmp + ICMP_HLEN].copy_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    let check = fold(sum_be_words(&frame[icmp..], 0));
    put_u16(frame, icmp + 2, check);
    true
}

/// The part of an ICMPv6 error's quote past the request prefix the
/// builder reads: the request's next bytes, as many as fit
/// ([`QUOTE6_REST_MAX`]), which stay where they are in the frame. The
/// caller sums them off the packet.
#[derive(Clone, Copy, Default)]
pub struct QuoteRest {
    /// How many bytes.
    pub len: u16,
    /// Their sum as big-endian 16-bit words, an odd last byte as the high
    /// half of a word (RFC 1071), not folded.
    pub sum: u32,
}

/// [`icmp_port_unreachable`] for IPv6: the ICMPv6 destination unreachable,
/// port unreachable (type 1, code 4; RFC 4443), quoting the request's IPv6
/// header, its datagram's first 8 bytes and `rest` of it; the caller grows
/// the frame by [`ICMP6_GROWTH`] in front and cuts it at
/// [`ICMP6_FRAME_LEN`] + `rest.len`, and hands the first
/// [`ICMP6_FRAME_LEN`] bytes here. Returns false for anything but a plain
/// IPv6 UDP datagram.
#[inline(always)]
pub fn icmp6_port_unreachable(frame: &mut [u8; ICMP6_FRAME_LEN], rest: QuoteRest) -> bool {
    let request = ICMP6_GROWTH;
    if !plain_ipv6(&frame[request..], PROTO_UDP) {
        return false;
    }
    frame.copy_within(request + 6..request + 12, 0);
    frame.copy_within(request..request + 6, 6);
    frame.copy_within(request + 12..request + 14, 12);
    frame.copy_within(request + ETH_HLEN..request + ETH_HLEN + IPV6_HLEN, ETH_HLEN);
    if rest.len as usize > QUOTE6_REST_MAX {
        return false;
    }
    let icmp_len = (ICMP_HLEN + QUOTE6_LEN) as u16 + rest.len;
    reply_ipv6_header(frame, ETH_HLEN, PROTO_ICMPV6, icmp_len);
    let icmp = ETH_HLEN + IPV6_HLEN;
    // Type 1 (destination unreachable), code 4 (port unreachable), unused.
    frame[icmp..icmp + ICMP_HLEN].copy_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    // ICMPv6, unlike ICMP, covers the pseudo-header. The prefix here is of
    // even length, so the rest's words line up with the message's.
    let pseudo = pseudo6(frame, PROTO_ICMPV6, icmp_len as u32);
    let check = fold(sum_be_words(&frame[icmp..], pseudo + rest.sum));
    put_u16(frame, icmp + 2, check);
    true
}

/// The verification tag of an SCTP ABORT answering an out-of-the-blue
/// packet (RFC 9260 §8.4), as the datapath reads it from the request
/// before cutting it to the answer's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortTag {
    /// As the packet holds it.
    pub tag: [u8; 4],
    /// The T bit: the tag is the request's own verification tag (any
    /// chunk but an INIT); clear for an INIT, whose Initiate Tag it is.
    pub reflected: bool,
}

/// Turns an SCTP packet (its first [`ABORT_FRAME_LEN`] bytes, the frame
/// cut there by the caller) into the ABORT answering it, tagged with
/// `tag`. Returns false for anything but plain IPv4 SCTP.
#[inline(always)]
pub fn sctp_abort(frame: &mut [u8; ABORT_FRAME_LEN], tag: AbortTag) -> bool {
    if !plain_ipv4(frame) || frame[ETH_HLEN + 9] != PROTO_SCTP {
        return false;
    }
    swap::<6>(frame, 0, 6);
    reply_ip_header(frame, ETH_HLEN, PROTO_SCTP, (IP_HLEN + ABORT_LEN) as u16);
    abort_packet(&mut frame[ETH_HLEN + IP_HLEN..], tag);
    true
}

/// [`sctp_abort`] for IPv6 (no extension headers; the first
/// [`ABORT6_FRAME_LEN`] bytes).
#[inline(always)]
pub fn sctp_abort6(frame: &mut [u8; ABORT6_FRAME_LEN], tag: AbortTag) -> bool {
    if !plain_ipv6(frame, PROTO_SCTP) {
        return false;
    }
    swap::<6>(frame, 0, 6);
    reply_ipv6_header(frame, ETH_HLEN, PROTO_SCTP, ABORT_LEN as u16);
    abort_packet(&mut frame[ETH_HLEN + IPV6_HLEN..], tag);
    true
}

/// Turns the SCTP packet at the start of `packet` into an ABORT: ports
/// swapped, `tag`, one ABORT chunk without causes, its CRC32c (no
/// pseudo-header: addresses do not enter it).
#[inline(always)]
fn abort_packet(packet: &mut [u8], tag: AbortTag) {
    swap::<2>(packet, 0, 2);
    packet[4..8].copy_from_slice(&tag.tag);
    packet[8..12].fill(0);
    let flags = if tag.reflected { sctp::ABORT_T_BIT } else { 0 };
    packet[12..16].copy_from_slice(&[sctp::CHUNK_ABORT, flags, 0, 4]);
    let word =
        |i: usize| u32::from_le_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
    let crc = crc32c::of_words([word(0), word(4), word(8), word(12)]);
    packet[8..12].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN (or other segment) from 10.0.1.5:40000 to 10.96.0.10:80.
    fn tcp_request(flags: u8, seq: u32, ack: u32) -> [u8; RST_FRAME_LEN] {
        let mut f = [0u8; RST_FRAME_LEN];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 8] = 63;
        f[14 + 9] = PROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 1, 5]);
        f[30..34].copy_from_slice(&[10, 96, 0, 10]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&ack.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = flags;
        f
    }

    /// A checksum over a region that includes its own checksum field is 0.
    fn verifies(data: &[u8], acc: u32) -> bool {
        fold(sum_be_words(data, acc)) == 0
    }

    fn rst(mut request: [u8; RST_FRAME_LEN], payload_len: u16) -> Option<[u8; RST_FRAME_LEN]> {
        tcp_rst(&mut request, payload_len).then_some(request)
    }

    #[test]
    fn a_syn_gets_rst_ack_acknowledging_the_syn() {
        let rst = rst(tcp_request(TCP_SYN, 1000, 0), 0).unwrap();
        assert_eq!(&rst[0..6], &[2, 0, 0, 0, 0, 1], "back to the sender's MAC");
        assert_eq!(&rst[26..30], &[10, 96, 0, 10], "from the VIP");
        assert_eq!(&rst[30..34], &[10, 0, 1, 5], "to the client");
        assert_eq!(u16::from_be_bytes([rst[34], rst[35]]), 80);
        assert_eq!(u16::from_be_bytes([rst[36], rst[37]]), 40000);
        assert_eq!(&rst[38..42], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_be_bytes([rst[42], rst[43], rst[44], rst[45]]),
            1001
        );
        assert_eq!(rst[47], TCP_RST | TCP_ACK);
        assert!(verifies(&rst[14..34], 0), "IP checksum");
        let pseudo = sum_be_words(&rst[26..34], PROTO_TCP as u32 + 20);
        assert!(verifies(&rst[34..54], pseudo), "TCP checksum");
    }

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_at_its_ack_number() {
        let rst = rst(tcp_request(TCP_ACK, 5000, 777), 100).unwrap();
        assert_eq!(
            u32::from_be_bytes([rst[38], rst[39], rst[40], rst[41]]),
            777
        );
        assert_eq!(rst[47], TCP_RST);
        let pseudo = sum_be_words(&rst[26..34], PROTO_TCP as u32 + 20);
        assert!(verifies(&rst[34..54], pseudo));
    }

    #[test]
    fn data_and_fin_count_in_the_acknowledgement() {
        let rst = rst(tcp_request(TCP_FIN, 0xffff_fff0, 0), 0x20).unwrap();
        assert_eq!(
            u32::from_be_bytes([rst[42], rst[43], rst[44], rst[45]]),
            0x11,
            "wraps around"
        );
    }

    #[test]
    fn resets_and_ip_options_are_not_answered() {
        let reset = tcp_request(TCP_RST | TCP_ACK, 1, 1);
        let mut frame = reset;
        assert!(!tcp_rst(&mut frame, 0));
        assert_eq!(frame, reset, "left unchanged");
        let mut with_options = tcp_request(TCP_SYN, 1, 0);
        with_options[14] = 0x46;
        assert!(rst(with_options, 0).is_none());
    }

    #[test]
    fn udp_gets_port_unreachable_quoting_the_request() {
        let mut request = [0u8; ICMP_REQUEST_LEN];
        request[..34].copy_from_slice(&tcp_request(0, 0, 0)[..34]);
        request[14 + 9] = 17;
        request[34..42].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0xab, 0xcd]);
        let mut reply = [0u8; ICMP_FRAME_LEN];
        reply[ICMP_GROWTH..].copy_from_slice(&request);
        assert!(icmp_port_unreachable(&mut reply));
        assert_eq!(
            &reply[0..6],
            &[2, 0, 0, 0, 0, 1],
            "back to the sender's MAC"
        );
        assert_eq!(&reply[6..12], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(reply.len(), 70);
        assert_eq!(reply[23], PROTO_ICMP);
        assert_eq!(u16::from_be_bytes([reply[16], reply[17]]), 56);
        assert_eq!(&reply[26..30], &[10, 96, 0, 10]);
        assert_eq!(&reply[30..34], &[10, 0, 1, 5]);
        assert_eq!((reply[34], reply[35]), (3, 3));
        assert_eq!(&reply[42..], &request[14..], "original header and 8 bytes");
        assert!(verifies(&reply[14..34], 0), "IP checksum");
        assert!(verifies(&reply[34..], 0), "ICMP checksum");
    }

    /// A segment from [fd00:10:244::5]:40000 to [fd00:10:96::a]:80.
    fn tcp6_request(flags: u8, seq: u32, ack: u32) -> [u8; RST6_FRAME_LEN] {
        let mut f = [0u8; RST6_FRAME_LEN];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14..18].copy_from_slice(&[0x60, 0x12, 0x34, 0x56]);
        f[18..20].copy_from_slice(&20u16.to_be_bytes());
        f[20] = PROTO_TCP;
        f[21] = 63;
        f[22..38].copy_from_slice(&CLIENT6);
        f[38..54].copy_from_slice(&VIP6);
        f[54..56].copy_from_slice(&40000u16.to_be_bytes());
        f[56..58].copy_from_slice(&80u16.to_be_bytes());
        f[58..62].copy_from_slice(&seq.to_be_bytes());
        f[62..66].copy_from_slice(&ack.to_be_bytes());
        f[66] = 5 << 4;
        f[67] = flags;
        f
    }

    const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    const VIP6: [u8; 16] = [0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];

    /// The sum of the IPv6 pseudo-header of `frame` for `len` bytes of `proto`.
    fn pseudo6_sum(frame: &[u8], proto: u8, len: u32) -> u32 {
        sum_be_words(&frame[22..54], proto as u32 + len)
    }

    #[test]
    fn an_ipv6_syn_gets_rst_ack_from_the_vip() {
        let mut rst = tcp6_request(TCP_SYN, 1000, 0);
        assert!(tcp_rst6(&mut rst, 0));
        assert_eq!(&rst[0..6], &[2, 0, 0, 0, 0, 1], "back to the sender's MAC");
        assert_eq!(&rst[14..18], &[0x60, 0, 0, 0], "no class or flow label");
        assert_eq!(u16::from_be_bytes([rst[18], rst[19]]), 20);
        assert_eq!((rst[20], rst[21]), (PROTO_TCP, REPLY_TTL));
        assert_eq!(&rst[22..38], &VIP6, "from the VIP");
        assert_eq!(&rst[38..54], &CLIENT6, "to the client");
        assert_eq!(u16::from_be_bytes([rst[54], rst[55]]), 80);
        assert_eq!(u16::from_be_bytes([rst[56], rst[57]]), 40000);
        assert_eq!(
            u32::from_be_bytes([rst[62], rst[63], rst[64], rst[65]]),
            1001
        );
        assert_eq!(rst[67], TCP_RST | TCP_ACK);
        let pseudo = pseudo6_sum(&rst, PROTO_TCP, 20);
        assert!(verifies(&rst[54..74], pseudo), "TCP checksum");

        let mut bare = tcp6_request(TCP_ACK, 5000, 777);
        assert!(tcp_rst6(&mut bare, 100));
        assert_eq!(
            u32::from_be_bytes([bare[58], bare[59], bare[60], bare[61]]),
            777
        );
        assert_eq!(bare[67], TCP_RST);
    }

    #[test]
    fn ipv6_resets_and_extension_headers_are_not_answered() {
        let reset = tcp6_request(TCP_RST, 1, 1);
        let mut frame = reset;
        assert!(!tcp_rst6(&mut frame, 0));
        assert_eq!(frame, reset, "left unchanged");
        let mut hop_by_hop = tcp6_request(TCP_SYN, 1, 0);
        hop_by_hop[20] = 0;
        assert!(!tcp_rst6(&mut hop_by_hop, 0));
        let mut ipv4 = tcp6_request(TCP_SYN, 1, 0);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!tcp_rst6(&mut ipv4, 0));
    }

    #[test]
    fn ipv6_udp_gets_icmpv6_port_unreachable_quoting_the_request() {
        let mut request = [0u8; ICMP6_REQUEST_LEN];
        request[..54].copy_from_slice(&tcp6_request(0, 0, 0)[..54]);
        request[20] = PROTO_UDP;
        request[54..62].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0xab, 0xcd]);
        let mut reply = [0u8; ICMP6_FRAME_LEN];
        reply[ICMP6_GROWTH..].copy_from_slice(&request);
        assert!(icmp6_port_unreachable(&mut reply, QuoteRest::default()));
        assert_eq!(&reply[0..6], &[2, 0, 0, 0, 0, 1], "back to the sender");
        assert_eq!(&reply[6..12], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&reply[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([reply[18], reply[19]]), 56);
        assert_eq!(reply[20], PROTO_ICMPV6);
        assert_eq!(&reply[22..38], &VIP6);
        assert_eq!(&reply[38..54], &CLIENT6);
        assert_eq!((reply[54], reply[55]), (1, 4));
        assert_eq!(&reply[62..], &request[14..], "IPv6 header and 8 bytes");
        let pseudo = pseudo6_sum(&reply, PROTO_ICMPV6, 56);
        assert!(verifies(&reply[54..], pseudo), "ICMPv6 checksum");

        let mut tcp = [0u8; ICMP6_FRAME_LEN];
        tcp[ICMP6_GROWTH..].copy_from_slice(&tcp6_request(0, 0, 0)[..ICMP6_REQUEST_LEN]);
        assert!(
            !icmp6_port_unreachable(&mut tcp, QuoteRest::default()),
            "only UDP"
        );
    }

    /// The quote past the prefix, of every length up to the minimum MTU's
    /// bound, odd ones included: the error's checksum verifies over the
    /// whole message, which never exceeds 1280 bytes.
    #[test]
    fn an_icmpv6_error_quotes_up_to_the_minimum_mtu_and_its_checksum_covers_it() {
        let mut request = [0u8; ICMP6_REQUEST_LEN];
        request[..54].copy_from_slice(&tcp6_request(0, 0, 0)[..54]);
        request[20] = PROTO_UDP;
        request[54..62].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0xab, 0xcd]);
        for len in (0..=QUOTE6_REST_MAX)
            .step_by(7)
            .chain([1, 2, 3, QUOTE6_REST_MAX])
        {
            // The tail zero-padded to even length, as RFC 1071 pads it.
            let mut tail = [0u8; QUOTE6_REST_MAX + 1];
            for (i, byte) in tail[..len].iter_mut().enumerate() {
                *byte = (i * 37 + 11) as u8;
            }
            let padded = &tail[..len + len % 2];
            let mut head = [0u8; ICMP6_FRAME_LEN];
            head[ICMP6_GROWTH..].copy_from_slice(&request);
            let rest = QuoteRest {
                len: len as u16,
                sum: sum_be_words(padded, 0),
            };
            assert!(icmp6_port_unreachable(&mut head, rest), "{len}");
            let icmp_len = (ICMP_HLEN + QUOTE6_LEN + len) as u32;
            assert_eq!(u16::from_be_bytes([head[18], head[19]]) as u32, icmp_len);
            assert!(40 + icmp_len <= 1280, "within the minimum MTU");
            // The whole message: the builder's part, then the tail.
            let pseudo = pseudo6_sum(&head, PROTO_ICMPV6, icmp_len);
            let acc = sum_be_words(&head[54..], pseudo);
            assert!(verifies(padded, acc), "ICMPv6 checksum, rest {len}");
        }
        let too_long = QuoteRest {
            len: QUOTE6_REST_MAX as u16 + 1,
            sum: 0,
        };
        let mut head = [0u8; ICMP6_FRAME_LEN];
        head[ICMP6_GROWTH..].copy_from_slice(&request);
        assert!(!icmp6_port_unreachable(&mut head, too_long));
    }

    /// An SCTP INIT (first 16 bytes: common header and chunk header) from
    /// 10.0.1.5:40000 to 10.96.0.10:3868, vtag 0.
    fn sctp_request() -> [u8; ABORT_FRAME_LEN] {
        let mut f = [0u8; ABORT_FRAME_LEN];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 8] = 63;
        f[14 + 9] = PROTO_SCTP;
        f[26..30].copy_from_slice(&[10, 0, 1, 5]);
        f[30..34].copy_from_slice(&[10, 96, 0, 10]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&3868u16.to_be_bytes());
        f[46..50].copy_from_slice(&[sctp::CHUNK_INIT, 0, 0, 20]);
        f
    }

    #[test]
    fn an_sctp_request_gets_an_abort_with_the_tag_given() {
        for reflected in [false, true] {
            let mut frame = sctp_request();
            let tag = AbortTag {
                tag: [0xde, 0xad, 0xbe, 0xef],
                reflected,
            };
            assert!(sctp_abort(&mut frame, tag));
            assert_eq!(
                &frame[0..6],
                &[2, 0, 0, 0, 0, 1],
                "back to the sender's MAC"
            );
            assert_eq!(&frame[26..30], &[10, 96, 0, 10], "from the VIP");
            assert_eq!(&frame[30..34], &[10, 0, 1, 5], "to the client");
            assert!(verifies(&frame[14..34], 0), "IP checksum");
            assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 36);
            let sctp = &frame[34..];
            assert_eq!(u16::from_be_bytes([sctp[0], sctp[1]]), 3868);
            assert_eq!(u16::from_be_bytes([sctp[2], sctp[3]]), 40000);
            assert_eq!(&sctp[4..8], &tag.tag);
            assert_eq!(&sctp[12..16], &[sctp::CHUNK_ABORT, reflected as u8, 0, 4]);
            let mut zeroed = [0u8; ABORT_LEN];
            zeroed.copy_from_slice(sctp);
            zeroed[8..12].fill(0);
            let crc = u32::from_le_bytes([sctp[8], sctp[9], sctp[10], sctp[11]]);
            assert_eq!(
                crc,
                crc32c::crc32c(&zeroed),
                "CRC32c, least significant byte first"
            );
        }
    }

    #[test]
    fn an_abort_is_built_over_ipv6_too_and_only_over_sctp() {
        let mut frame = [0u8; ABORT6_FRAME_LEN];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame[14] = 0x60;
        frame[14 + 6] = PROTO_SCTP;
        frame[14 + 8..14 + 24]
            .copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        frame[14 + 24..14 + 40]
            .copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let tag = AbortTag {
            tag: [1, 2, 3, 4],
            reflected: true,
        };
        assert!(sctp_abort6(&mut frame, tag));
        assert_eq!(frame[14 + 23], 9, "from the address it was sent to");
        assert_eq!(frame[14 + 39], 5);
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]), ABORT_LEN as u16);
        let mut tcp = sctp_request();
        tcp[14 + 9] = PROTO_TCP;
        let before = tcp;
        assert!(!sctp_abort(&mut tcp, tag));
        assert_eq!(tcp, before, "left as it was");
    }
}
