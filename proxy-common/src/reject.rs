//! Reject replies, as kube-proxy's REJECT sends them for a Service without
//! endpoints: a TCP RST for TCP, an ICMP port unreachable for UDP. Pure
//! functions over fixed-size frames, shared by the XDP and tc programs and
//! unit-tested on the host. Only untagged frames whose IPv4 header has no
//! options are answered (every pod and NIC frame in practice); the caller
//! drops the rest.

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

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const REPLY_TTL: u8 = 64;

/// The one's-complement sum of `data` as big-endian 16-bit words, added to `acc`.
fn sum_be_words(data: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// Folds a sum into the 16-bit checksum. Every sum here covers at most
/// 64 words, so two folds always suffice.
fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

fn put_u16(frame: &mut [u8], off: usize, value: u16) {
    frame[off..off + 2].copy_from_slice(&value.to_be_bytes());
}

/// Writes the reply's Ethernet header (addresses swapped) and a fresh IPv4
/// header from `dst` back to `src` of the request; returns nothing, the
/// checksum is filled in.
fn reply_headers(request: &[u8], reply: &mut [u8], proto: u8, total_len: u16) {
    reply[0..6].copy_from_slice(&request[6..12]);
    reply[6..12].copy_from_slice(&request[0..6]);
    reply[12..14].copy_from_slice(&request[12..14]);
    let ip = ETH_HLEN;
    reply[ip] = 0x45;
    reply[ip + 1] = 0;
    put_u16(reply, ip + 2, total_len);
    put_u16(reply, ip + 4, 0);
    // Don't fragment, as Linux sends its own resets and ICMP errors.
    put_u16(reply, ip + 6, 0x4000);
    reply[ip + 8] = REPLY_TTL;
    reply[ip + 9] = proto;
    put_u16(reply, ip + 10, 0);
    reply[ip + 12..ip + 16].copy_from_slice(&request[ip + 16..ip + 20]);
    reply[ip + 16..ip + 20].copy_from_slice(&request[ip + 12..ip + 16]);
    let check = fold(sum_be_words(&reply[ip..ip + IP_HLEN], 0));
    put_u16(reply, ip + 10, check);
}

/// Whether `frame` starts with an untagged IPv4 header without options.
fn plain_ipv4(frame: &[u8]) -> bool {
    frame[12..14] == [0x08, 0x00] && frame[ETH_HLEN] == 0x45
}

/// The RST answering a TCP segment, or `None` if the segment is itself a
/// RST (never answered) or not plain IPv4. `payload_len` is the segment's
/// data length. Sequence numbers follow RFC 9293 §3.10.7.1: a segment with
/// ACK gets `seq = its ack`; one without gets `ack = its seq + data + SYN + FIN`.
pub fn tcp_rst(request: &[u8; RST_FRAME_LEN], payload_len: u16) -> Option<[u8; RST_FRAME_LEN]> {
    let tcp = ETH_HLEN + IP_HLEN;
    let flags = request[tcp + 13];
    if !plain_ipv4(request) || request[ETH_HLEN + 9] != PROTO_TCP || flags & TCP_RST != 0 {
        return None;
    }
    let mut reply = [0u8; RST_FRAME_LEN];
    reply_headers(request, &mut reply, PROTO_TCP, (IP_HLEN + TCP_HLEN) as u16);
    reply[tcp..tcp + 2].copy_from_slice(&request[tcp + 2..tcp + 4]);
    reply[tcp + 2..tcp + 4].copy_from_slice(&request[tcp..tcp + 2]);
    if flags & TCP_ACK != 0 {
        reply[tcp + 4..tcp + 8].copy_from_slice(&request[tcp + 8..tcp + 12]);
        reply[tcp + 13] = TCP_RST;
    } else {
        let seq = u32::from_be_bytes([
            request[tcp + 4],
            request[tcp + 5],
            request[tcp + 6],
            request[tcp + 7],
        ]);
        let consumed = payload_len as u32
            + (flags & TCP_SYN != 0) as u32
            + (flags & TCP_FIN != 0) as u32;
        reply[tcp + 8..tcp + 12].copy_from_slice(&seq.wrapping_add(consumed).to_be_bytes());
        reply[tcp + 13] = TCP_RST | TCP_ACK;
    }
    // Data offset 5 words, window 0, urgent pointer 0.
    reply[tcp + 12] = 5 << 4;
    let ip = ETH_HLEN;
    let mut acc = sum_be_words(&reply[ip + 12..ip + 20], 0);
    acc += PROTO_TCP as u32 + TCP_HLEN as u32;
    let check = fold(sum_be_words(&reply[tcp..tcp + TCP_HLEN], acc));
    put_u16(&mut reply, tcp + 16, check);
    Some(reply)
}

/// The ICMP destination unreachable (port unreachable) answering a
/// datagram, quoting its IP header and first 8 bytes of L4 (RFC 792), or
/// `None` if the request is not plain IPv4.
pub fn icmp_port_unreachable(request: &[u8; ICMP_REQUEST_LEN]) -> Option<[u8; ICMP_FRAME_LEN]> {
    if !plain_ipv4(request) {
        return None;
    }
    let mut reply = [0u8; ICMP_FRAME_LEN];
    let total_len = (IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16;
    reply_headers(request, &mut reply, PROTO_ICMP, total_len);
    let icmp = ETH_HLEN + IP_HLEN;
    // Type 3 (destination unreachable), code 3 (port unreachable).
    reply[icmp] = 3;
    reply[icmp + 1] = 3;
    reply[icmp + ICMP_HLEN..].copy_from_slice(&request[ETH_HLEN..]);
    let check = fold(sum_be_words(&reply[icmp..], 0));
    put_u16(&mut reply, icmp + 2, check);
    Some(reply)
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

    #[test]
    fn a_syn_gets_rst_ack_acknowledging_the_syn() {
        let rst = tcp_rst(&tcp_request(TCP_SYN, 1000, 0), 0).unwrap();
        assert_eq!(&rst[0..6], &[2, 0, 0, 0, 0, 1], "back to the sender's MAC");
        assert_eq!(&rst[26..30], &[10, 96, 0, 10], "from the VIP");
        assert_eq!(&rst[30..34], &[10, 0, 1, 5], "to the client");
        assert_eq!(u16::from_be_bytes([rst[34], rst[35]]), 80);
        assert_eq!(u16::from_be_bytes([rst[36], rst[37]]), 40000);
        assert_eq!(&rst[38..42], &[0, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes([rst[42], rst[43], rst[44], rst[45]]), 1001);
        assert_eq!(rst[47], TCP_RST | TCP_ACK);
        assert!(verifies(&rst[14..34], 0), "IP checksum");
        let pseudo = sum_be_words(&rst[26..34], PROTO_TCP as u32 + 20);
        assert!(verifies(&rst[34..54], pseudo), "TCP checksum");
    }

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_at_its_ack_number() {
        let rst = tcp_rst(&tcp_request(TCP_ACK, 5000, 777), 100).unwrap();
        assert_eq!(u32::from_be_bytes([rst[38], rst[39], rst[40], rst[41]]), 777);
        assert_eq!(rst[47], TCP_RST);
        let pseudo = sum_be_words(&rst[26..34], PROTO_TCP as u32 + 20);
        assert!(verifies(&rst[34..54], pseudo));
    }

    #[test]
    fn data_and_fin_count_in_the_acknowledgement() {
        let rst = tcp_rst(&tcp_request(TCP_FIN, 0xffff_fff0, 0), 0x20).unwrap();
        assert_eq!(
            u32::from_be_bytes([rst[42], rst[43], rst[44], rst[45]]),
            0x11,
            "wraps around"
        );
    }

    #[test]
    fn resets_and_ip_options_are_not_answered() {
        assert!(tcp_rst(&tcp_request(TCP_RST | TCP_ACK, 1, 1), 0).is_none());
        let mut with_options = tcp_request(TCP_SYN, 1, 0);
        with_options[14] = 0x46;
        assert!(tcp_rst(&with_options, 0).is_none());
    }

    #[test]
    fn udp_gets_port_unreachable_quoting_the_request() {
        let mut request = [0u8; ICMP_REQUEST_LEN];
        request[..34].copy_from_slice(&tcp_request(0, 0, 0)[..34]);
        request[14 + 9] = 17;
        request[34..42].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0xab, 0xcd]);
        let reply = icmp_port_unreachable(&request).unwrap();
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
}
