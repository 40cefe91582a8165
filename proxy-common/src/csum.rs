//! Internet checksum arithmetic (RFC 1071, RFC 1624), shared by the eBPF
//! programs and the reject builders and tested on the host against a full
//! recomputation.
//!
//! Incremental updates take and return values as the packet holds them
//! (read with native byte order, as the datapath reads them): one's
//! complement addition is the same in either byte order, so no swapping is
//! needed as long as every input is read the same way.

use crate::addr::Addr;

/// The one's-complement sum of `data` as big-endian 16-bit words, added to
/// `acc` (an odd last byte is ignored: every region summed here is even).
#[inline(always)]
pub fn sum_be_words(data: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// The checksum for a sum of at most 65,537 16-bit words: folded twice,
/// complemented.
#[inline(always)]
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// A checksum after a 16-bit field changed from `from` to `to`:
/// HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace_u16(check: u16, from: u16, to: u16) -> u16 {
    fold((!check) as u32 + (!from) as u32 + to as u32)
}

/// A checksum after a 32-bit field changed from `from` to `to`, as two
/// 16-bit fields.
#[inline(always)]
pub fn replace_u32(check: u16, from: u32, to: u32) -> u16 {
    // Five 16-bit terms: two folds suffice.
    fold((!check) as u32 + (!(from >> 16) & 0xffff) + (!from & 0xffff) + (to >> 16) + (to & 0xffff))
}

/// One end of a flow as the packet holds it: address (of either family),
/// port.
pub type Endpoint<A> = (A, u16);

/// The TCP or UDP checksum of a segment whose source and destination
/// addresses (pseudo-header) and ports changed from `from` to `to`, every
/// address word replaced in turn. A UDP checksum of 0 means "none" and
/// stays 0 (over IPv6 it is invalid: the receiver drops it either way); a
/// UDP checksum that computes to 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn l4_translated<A: Addr>(
    check: u16,
    udp: bool,
    from: (Endpoint<A>, Endpoint<A>),
    to: (Endpoint<A>, Endpoint<A>),
) -> u16 {
    if udp && check == 0 {
        return 0;
    }
    let ((from_src, from_dst), (to_src, to_dst)) = (from, to);
    let mut check = check;
    for (from, to) in from_src.0.words().iter().zip(to_src.0.words()) {
        check = replace_u32(check, *from, *to);
    }
    for (from, to) in from_dst.0.words().iter().zip(to_dst.0.words()) {
        check = replace_u32(check, *from, *to);
    }
    check = replace_u16(check, from_src.1, to_src.1);
    check = replace_u16(check, from_dst.1, to_dst.1);
    if udp && check == 0 {
        0xffff
    } else {
        check
    }
}

/// The difference words changing from `from` to `to` make to a checksum,
/// as a 32-bit one's-complement sum (what `bpf_csum_diff` returns): the tc
/// path hands it to the checksum helper in one call for all four words of
/// an IPv6 address (`bpf_l4_csum_replace` with size 0), where an IPv4
/// address is one 4-byte replacement.
#[inline(always)]
pub fn words_diff(from: &[u32], to: &[u32]) -> u32 {
    let mut acc: u64 = 0;
    for (from, to) in from.iter().zip(to) {
        acc += (!from) as u64 + *to as u64;
    }
    // At most 2^36: two end-around carries fit it in 32 bits.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// The IPv4 header checksum after its addresses changed from `from` to `to`.
#[inline(always)]
pub fn ipv4_translated(check: u16, from: (u32, u32), to: (u32, u32)) -> u16 {
    replace_u32(replace_u32(check, from.0, to.0), from.1, to.1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// RFC 1071 §4.1, written on its own: a 64-bit running sum of
    /// big-endian words (odd byte padded), folded until it fits, complemented.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for chunk in data.chunks(2) {
            let hi = chunk[0] as u64;
            let lo = chunk.get(1).copied().unwrap_or(0) as u64;
            sum += (hi << 8) | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Reads as the datapath does: native byte order.
    fn ne16(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }
    fn ne32(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// A UDP or TCP segment with its IPv4 pseudo-header in front:
    /// src(0..4) dst(4..8) zero proto len(8..12), then ports at 12 and 14,
    /// the checksum at `12 + csum_off`.
    fn segment(rng: &mut Rng, udp: bool, payload: usize) -> (Vec<u8>, usize) {
        let (hlen, csum_off) = if udp { (8, 6) } else { (20, 16) };
        let l4_len = hlen + payload;
        let mut b = rng.bytes(12 + l4_len);
        b[8] = 0;
        b[9] = if udp { 17 } else { 6 };
        b[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
        if udp {
            b[16..18].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let at = 12 + csum_off;
        b[at..at + 2].copy_from_slice(&[0, 0]);
        let check = rfc1071(&b);
        let check = if udp && check == 0 { 0xffff } else { check };
        b[at..at + 2].copy_from_slice(&check.to_be_bytes());
        (b, at)
    }

    fn full_check(b: &[u8], at: usize, udp: bool) -> u16 {
        let mut z = b.to_vec();
        z[at..at + 2].copy_from_slice(&[0, 0]);
        let check = rfc1071(&z);
        let check = if udp && check == 0 { 0xffff } else { check };
        u16::from_ne_bytes(check.to_be_bytes())
    }

    fn ends(b: &[u8]) -> (Endpoint<u32>, Endpoint<u32>) {
        ((ne32(b, 0), ne16(b, 12)), (ne32(b, 4), ne16(b, 14)))
    }

    fn rewrite(b: &mut [u8], (src, dst): (Endpoint<u32>, Endpoint<u32>)) {
        b[0..4].copy_from_slice(&src.0.to_ne_bytes());
        b[4..8].copy_from_slice(&dst.0.to_ne_bytes());
        b[12..14].copy_from_slice(&src.1.to_ne_bytes());
        b[14..16].copy_from_slice(&dst.1.to_ne_bytes());
    }

    #[test]
    fn the_shared_sum_agrees_with_rfc_1071() {
        let mut rng = Rng(0x1071);
        for len in (2..200).step_by(2) {
            let data = rng.bytes(len);
            assert_eq!(fold(sum_be_words(&data, 0)), rfc1071(&data), "{len} bytes");
        }
    }

    #[test]
    fn a_replaced_field_gives_the_recomputed_checksum() {
        let mut rng = Rng(1624);
        for round in 0..2_000 {
            let len = 4 + 2 * (rng.next() % 40) as usize;
            let mut data = rng.bytes(len);
            let check = u16::from_ne_bytes(rfc1071(&data).to_be_bytes());
            let at = 2 * (rng.next() as usize % (len / 2 - 1));
            if round % 2 == 0 {
                let from = ne16(&data, at);
                let to = rng.next() as u16;
                data[at..at + 2].copy_from_slice(&to.to_ne_bytes());
                let want = u16::from_ne_bytes(rfc1071(&data).to_be_bytes());
                assert_eq!(replace_u16(check, from, to), want);
            } else {
                let from = ne32(&data, at);
                let to = rng.next() as u32;
                data[at..at + 4].copy_from_slice(&to.to_ne_bytes());
                let want = u16::from_ne_bytes(rfc1071(&data).to_be_bytes());
                // Equal up to the two representations of zero.
                let got = replace_u32(check, from, to);
                assert!(got == want || (got, want) == (0xffff, 0) || (got, want) == (0, 0xffff));
            }
        }
    }

    #[test]
    fn a_translated_segment_verifies_with_a_full_checksum() {
        let mut rng = Rng(768);
        for round in 0..4_000 {
            let udp = round % 2 == 0;
            let payload = (rng.next() % 64) as usize * 2;
            let (mut b, at) = segment(&mut rng, udp, payload);
            let from = ends(&b);
            let to = (
                (rng.next() as u32, rng.next() as u16),
                (rng.next() as u32, rng.next() as u16),
            );
            let got = l4_translated(ne16(&b, at), udp, from, to);
            rewrite(&mut b, to);
            assert_eq!(got, full_check(&b, at, udp), "round {round}");
        }
    }

    #[test]
    fn a_translated_ipv6_segment_verifies_with_a_full_checksum() {
        let mut rng = Rng(8200);
        let addr =
            |b: &[u8], at: usize| -> [u32; 4] { core::array::from_fn(|i| ne32(b, at + 4 * i)) };
        for round in 0..4_000 {
            let udp = round % 2 == 0;
            let (hlen, csum_off) = if udp { (8, 6) } else { (20, 16) };
            let l4_len = hlen + (rng.next() % 64) as usize * 2;
            // The IPv6 pseudo-header (RFC 8200 §8.1), then the segment.
            let mut b = rng.bytes(40 + l4_len);
            b[32..36].copy_from_slice(&(l4_len as u32).to_be_bytes());
            b[36..39].fill(0);
            b[39] = if udp { 17 } else { 6 };
            let at = 40 + csum_off;
            b[at..at + 2].fill(0);
            let check = rfc1071(&b);
            let check = if udp && check == 0 { 0xffff } else { check };
            b[at..at + 2].copy_from_slice(&check.to_be_bytes());
            let from = ((addr(&b, 0), ne16(&b, 40)), (addr(&b, 16), ne16(&b, 42)));
            let fresh = rng.bytes(36);
            let to = (
                (addr(&fresh, 0), ne16(&fresh, 32)),
                (addr(&fresh, 16), ne16(&fresh, 34)),
            );
            let got = l4_translated(ne16(&b, at), udp, from, to);
            b[..32].copy_from_slice(&fresh[..32]);
            b[40..44].copy_from_slice(&fresh[32..36]);
            assert_eq!(got, full_check(&b, at, udp), "round {round}");
        }
    }

    #[test]
    fn a_udp_checksum_that_computes_to_zero_is_sent_as_ffff() {
        let mut rng = Rng(0xffff);
        let (mut b, at) = segment(&mut rng, true, 16);
        let from = ends(&b);
        let to = ((0x0a00_0001u32.to_be(), 4000u16.to_be()), from.1);
        // Tune a payload word so the translated segment sums to 0xffff,
        // i.e. its checksum computes to 0.
        rewrite(&mut b, to);
        b[at..at + 2].copy_from_slice(&[0, 0]);
        let last = b.len() - 2;
        b[last..].copy_from_slice(&[0, 0]);
        let rest = !rfc1071(&b);
        b[last..].copy_from_slice(&(0xffff - rest).to_be_bytes());
        assert_eq!(rfc1071(&b), 0, "the tuned segment computes to zero");
        // Back to the original addresses, with its valid checksum.
        rewrite(&mut b, from);
        let check = rfc1071(&b);
        b[at..at + 2].copy_from_slice(&check.to_be_bytes());
        assert_eq!(l4_translated(ne16(&b, at), true, from, to), 0xffff);
        // TCP has no "none": zero is sent as zero.
        assert_eq!(
            l4_translated(ne16(&b, at), false, from, to),
            0,
            "the same sum over TCP"
        );
    }

    #[test]
    fn a_udp_checksum_of_zero_means_none_and_stays_zero() {
        let from = ((1, 2), (3, 4));
        let to = ((5, 6), (7, 8));
        assert_eq!(l4_translated(0, true, from, to), 0);
        assert_ne!(l4_translated(0, false, from, to), 0);
    }

    /// A checksum after `diff` is added, as the kernel's checksum helper
    /// adds it: ~fold(diff + ~check).
    fn add_diff(check: u16, diff: u32) -> u16 {
        let mut acc = diff as u64 + (!check) as u64;
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn an_ipv6_pseudo_header_change_in_one_diff_gives_the_recomputed_checksum() {
        let mut rng = Rng(8200);
        for round in 0..2_000 {
            // src(0..16) dst(16..32), then the rest of a pseudo-header and segment.
            let len = 40 + 2 * (rng.next() % 40) as usize;
            let mut b = rng.bytes(len);
            b[38..40].copy_from_slice(&[0, 0]);
            let check = rfc1071(&b);
            b[38..40].copy_from_slice(&check.to_be_bytes());
            let words = |b: &[u8]| -> Vec<u32> { (0..8).map(|i| ne32(b, 4 * i)).collect() };
            let from = words(&b);
            let changed = &mut b[..32];
            let new = rng.bytes(32);
            // Sometimes only the destination, as DNAT changes it.
            let start = if round % 3 == 0 { 16 } else { 0 };
            changed[start..].copy_from_slice(&new[start..]);
            let to = words(&b);
            let got = add_diff(ne16(&b, 38), words_diff(&from, &to));
            let want = full_check(&b, 38, false);
            assert!(
                got == want || (got, want) == (0xffff, 0) || (got, want) == (0, 0xffff),
                "round {round}: {got:#x} != {want:#x}"
            );
        }
    }

    #[test]
    fn a_translated_ipv4_header_verifies() {
        let mut rng = Rng(791);
        for _ in 0..1_000 {
            let mut h = rng.bytes(20);
            h[10..12].copy_from_slice(&[0, 0]);
            let check = rfc1071(&h);
            h[10..12].copy_from_slice(&check.to_be_bytes());
            let from = (ne32(&h, 12), ne32(&h, 16));
            let to = (rng.next() as u32, rng.next() as u32);
            let got = ipv4_translated(ne16(&h, 10), from, to);
            h[12..16].copy_from_slice(&to.0.to_ne_bytes());
            h[16..20].copy_from_slice(&to.1.to_ne_bytes());
            h[10..12].copy_from_slice(&got.to_ne_bytes());
            assert_eq!(rfc1071(&h), 0, "a header with its checksum sums to zero");
        }
    }
}
