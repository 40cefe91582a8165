//! The reject builders (`proxy_common::reject`) on any bytes: they never
//! panic, a frame they decline is left as it was (the caller drops it),
//! and an answer they build is addressed back to the sender with
//! checksums that verify by an RFC 1071 sum of its own (`common/rfc1071.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_common::reject::{
    icmp6_port_unreachable, icmp_port_unreachable, tcp_rst, tcp_rst6, QuoteRest, ICMP6_FRAME_LEN,
    ICMP6_GROWTH, ICMP_FRAME_LEN, ICMP_GROWTH, RST6_FRAME_LEN, RST_FRAME_LEN,
};

#[path = "common/rfc1071.rs"]
mod rfc1071;
use rfc1071::{folded, sum};

/// Whether `data`, its checksum included, sums to all ones.
fn verifies(data: &[u8], acc: u64) -> bool {
    folded(sum(data, acc)) == 0xffff
}

/// The IPv6 pseudo-header's sum for a reply of `len` bytes of `proto`.
fn pseudo6(frame: &[u8], proto: u8, len: usize) -> u64 {
    sum(&frame[22..54], u64::from(proto) + len as u64)
}

fn fill<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut frame = [0u8; N];
    for (i, byte) in frame.iter_mut().enumerate() {
        *byte = data.get(i).copied().unwrap_or(0);
    }
    frame
}

/// RFC 9293 §3.10.7.1: a RST answers a segment with ACK with `seq = its
/// ack`, one without with `ack = its seq + data + SYN + FIN`; ports
/// swapped. `tcp`: the TCP header's offset in both.
fn rst_answers(request: &[u8], answer: &[u8], tcp: usize, payload_len: u16) {
    let word = |f: &[u8], off: usize| u32::from_be_bytes(f[off..off + 4].try_into().unwrap());
    assert_eq!(
        answer[tcp..tcp + 2],
        request[tcp + 2..tcp + 4],
        "ports swapped"
    );
    assert_eq!(answer[tcp + 2..tcp + 4], request[tcp..tcp + 2]);
    let flags = request[tcp + 13];
    if flags & 0x10 != 0 {
        assert_eq!(answer[tcp + 13], 0x04, "a bare RST");
        assert_eq!(
            word(answer, tcp + 4),
            word(request, tcp + 8),
            "seq = its ack"
        );
    } else {
        let consumed =
            u32::from(payload_len) + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
        assert_eq!(answer[tcp + 13], 0x14, "RST|ACK");
        assert_eq!(word(answer, tcp + 4), 0, "seq");
        assert_eq!(
            word(answer, tcp + 8),
            word(request, tcp + 4).wrapping_add(consumed),
            "ack"
        );
    }
}

/// Checks an answer whose request had addresses `src`, `dst` at the
/// family's offsets: swapped, and the MACs with them.
fn answered(request: &[u8], answer: &[u8], addr_len: usize) {
    let (src, dst) = if addr_len == 4 { (26, 30) } else { (22, 38) };
    assert_eq!(answer[0..6], request[6..12], "back to the sender's MAC");
    assert_eq!(answer[6..12], request[0..6], "from the MAC it was sent to");
    assert_eq!(answer[src..src + addr_len], request[dst..dst + addr_len]);
    assert_eq!(answer[dst..dst + addr_len], request[src..src + addr_len]);
}

fuzz_target!(|data: &[u8]| {
    let Some((&[kind, len_hi, len_lo], data)) = data.split_first_chunk::<3>() else {
        return;
    };
    let payload_len = u16::from_be_bytes([len_hi, len_lo]);
    match kind % 4 {
        0 => {
            let request: [u8; RST_FRAME_LEN] = fill(data);
            let mut frame = request;
            if !tcp_rst(&mut frame, payload_len) {
                assert_eq!(frame, request, "a declined frame is left as it was");
                return;
            }
            answered(&request, &frame, 4);
            rst_answers(&request, &frame, 34, payload_len);
            assert!(verifies(&frame[14..34], 0), "IPv4 header checksum");
            assert!(
                verifies(&frame[34..], sum(&frame[26..34], 6 + 20)),
                "TCP checksum"
            );
        }
        1 => {
            let request: [u8; RST6_FRAME_LEN] = fill(data);
            let mut frame = request;
            if !tcp_rst6(&mut frame, payload_len) {
                assert_eq!(frame, request, "a declined frame is left as it was");
                return;
            }
            answered(&request, &frame, 16);
            rst_answers(&request, &frame, 54, payload_len);
            assert!(
                verifies(&frame[54..], pseudo6(&frame, 6, 20)),
                "TCP checksum"
            );
        }
        2 => {
            let mut frame: [u8; ICMP_FRAME_LEN] = fill(data);
            let before = frame;
            let request = frame[ICMP_GROWTH..].to_vec();
            if !icmp_port_unreachable(&mut frame) {
                assert_eq!(frame, before, "a declined frame is left as it was");
                return;
            }
            answered(&request, &frame, 4);
            assert!(verifies(&frame[14..34], 0), "IPv4 header checksum");
            assert_eq!(frame[34..36], [3, 3], "port unreachable");
            assert!(verifies(&frame[34..], 0), "ICMP checksum");
            assert_eq!(frame[42..], request[14..], "the quote");
        }
        _ => {
            let mut frame: [u8; ICMP6_FRAME_LEN] = fill(data);
            let request = frame[ICMP6_GROWTH..].to_vec();
            if !icmp6_port_unreachable(&mut frame, QuoteRest::default()) {
                return;
            }
            answered(&request, &frame, 16);
            assert_eq!(frame[54..56], [1, 4], "port unreachable");
            let len = ICMP6_FRAME_LEN - 54;
            assert!(
                verifies(&frame[54..], pseudo6(&frame, 58, len)),
                "ICMPv6 checksum"
            );
            assert_eq!(frame[62..], request[14..], "the quote");
        }
    }
});
