//! The datapath's incremental checksum updates (`proxy_common::csum`)
//! against a full RFC 1071 recomputation of its own (`common/rfc1071.rs`):
//! a TCP/UDP segment and its IP addresses of either family taken from the
//! input, a checksum computed for them, then the addresses and ports
//! translated to others from the input. The updated checksum must verify as the recomputed one
//! does (0 and 0xffff are the same one's-complement number), a UDP
//! checksum of 0 ("none") must stay 0 and no other may become 0. SCTP's
//! CRC32c after a port rewrite (`proxy_common::crc32c::update_ports`)
//! against a bitwise CRC32c of the rewritten packet, written here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_common::{
    addr::{addr6_to_net, Addr},
    crc32c, csum,
};
use std::net::Ipv6Addr;

#[path = "common/rfc1071.rs"]
mod rfc1071;
use rfc1071::{folded, sum};

fn complement_of(acc: u64) -> u16 {
    !folded(acc)
}

/// The checksum of `segment` (its checksum field zero) with the
/// pseudo-header of `src`, `dst` (address bytes of one family).
fn full(src: &[u8], dst: &[u8], proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u64;
    complement_of(sum(
        segment,
        sum(
            src,
            sum(dst, u64::from(proto) + (len >> 16) + (len & 0xffff)),
        ),
    ))
}

fn same_number(a: u16, b: u16) -> bool {
    a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

/// Translates one segment's addresses (`A`: `u32` or IPv6 words, built from
/// bytes by `addr`) and checks the checksum.
fn translate<A: Addr + Copy, const N: usize>(
    input: &mut Input,
    udp: bool,
    no_checksum: bool,
    addr: fn([u8; N]) -> A,
) -> Option<()> {
    let (src, dst, new_src, new_dst) = (
        input.take::<N>()?,
        input.take::<N>()?,
        input.take::<N>()?,
        input.take::<N>()?,
    );
    let ports: [u8; 8] = input.take()?;
    let no_checksum = udp && no_checksum;
    let mut segment = input.0.to_vec();
    let header = if udp { 8 } else { 20 };
    if segment.len() < header {
        return None;
    }
    let csum_off = if udp { 6 } else { 16 };
    segment[0..4].copy_from_slice(&ports[0..4]);
    segment[csum_off..csum_off + 2].fill(0);
    let proto = if udp { 17 } else { 6 };
    let mut check = full(&src, &dst, proto, &segment);
    if no_checksum {
        check = 0;
    } else if udp && check == 0 {
        check = 0xffff;
    }
    let port = |b: &[u8]| u16::from_ne_bytes([b[0], b[1]]);
    let updated = csum::l4_translated(
        u16::from_ne_bytes(check.to_be_bytes()),
        udp,
        (
            (addr(src), port(&ports[0..2])),
            (addr(dst), port(&ports[2..4])),
        ),
        (
            (addr(new_src), port(&ports[4..6])),
            (addr(new_dst), port(&ports[6..8])),
        ),
    );
    let updated = u16::from_be_bytes(updated.to_ne_bytes());
    segment[0..4].copy_from_slice(&ports[4..8]);
    let recomputed = full(&new_src, &new_dst, proto, &segment);
    if no_checksum {
        assert_eq!(updated, 0, "a UDP datagram without checksum got one");
    } else {
        assert!(!(udp && updated == 0), "a UDP checksum became 0 (none)");
        assert!(
            same_number(updated, recomputed),
            "updated {updated:#06x}, recomputed {recomputed:#06x}"
        );
    }
    Some(())
}

/// The IPv4 header checksum after both addresses change.
fn ipv4_header(input: &mut Input) -> Option<()> {
    let mut header: [u8; 20] = input.take()?;
    let new: [u8; 8] = input.take()?;
    header[10..12].fill(0);
    let check = complement_of(sum(&header, 0));
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let updated = csum::ipv4_translated(
        u16::from_ne_bytes(check.to_be_bytes()),
        (word(&header[12..16]), word(&header[16..20])),
        (word(&new[0..4]), word(&new[4..8])),
    );
    let updated = u16::from_be_bytes(updated.to_ne_bytes());
    header[12..20].copy_from_slice(&new);
    assert!(same_number(updated, complement_of(sum(&header, 0))));
    Some(())
}

/// CRC32c bit by bit, reflected (RFC 9260 appendix A's polynomial).
fn bitwise_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// An SCTP packet (the rest of the input, below 64 KiB) whose ports become
/// the input's next four bytes.
fn sctp_ports(input: &mut Input) -> Option<()> {
    let new: [u8; 4] = input.take()?;
    let mut packet = input.0.to_vec();
    if packet.len() < 12 || packet.len() >= 1 << 16 {
        return None;
    }
    packet[8..12].fill(0);
    let ports = |b: &[u8]| {
        [
            u16::from_ne_bytes([b[0], b[1]]),
            u16::from_ne_bytes([b[2], b[3]]),
        ]
    };
    let old = ports(&packet[0..4]);
    let before = bitwise_crc32c(&packet);
    let updated = crc32c::update_ports(before, old, ports(&new), packet.len() as u32);
    packet[0..4].copy_from_slice(&new);
    let recomputed = bitwise_crc32c(&packet);
    assert_eq!(
        updated, recomputed,
        "updated {updated:#010x}, recomputed {recomputed:#010x}"
    );
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some([kind]) = input.take::<1>() else {
        return;
    };
    let udp = kind & 1 == 1;
    // A UDP datagram sent without checksum.
    let none = kind & 8 == 8;
    let _ = match kind >> 1 & 3 {
        0 => translate::<u32, 4>(&mut input, udp, none, u32::from_ne_bytes),
        1 => translate(&mut input, udp, none, |b: [u8; 16]| {
            addr6_to_net(Ipv6Addr::from(b))
        }),
        2 => ipv4_header(&mut input),
        _ => sctp_ports(&mut input),
    };
});
