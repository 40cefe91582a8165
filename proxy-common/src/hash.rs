//! The hashes that pick a backend. Shared so the agent, the tests and the
//! benchmarks can tell which slot of a Maglev table a flow lands in.

use crate::addr::Addr;

/// 32-bit finaliser (from the "lowbias32" family): cheap and well mixed.
#[inline(always)]
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A well-mixed hash of a 5-tuple as the packet holds it (network order),
/// of either family: the same chain of mixes over every address word.
#[inline(always)]
pub fn flow_hash<A: Addr>(
    src_addr: A,
    dst_addr: A,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let ports = ((src_port as u32) << 16) | dst_port as u32;
    let mut h = 0x9e37_79b9;
    // Two loops, each of a length known once inlined: unrolled (a chained
    // iterator was left a loop over the stack the verifier refused).
    for word in src_addr.words() {
        h = mix(h ^ word);
    }
    for word in dst_addr.words() {
        h = mix(h ^ word);
    }
    mix(h ^ ports ^ ((proto as u32) << 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_hash_mixes_each_address_once_and_an_ipv6_one_every_word() {
        let (client, vip) = (0x0a00_0001u32.to_be(), 0x0a60_000au32.to_be());
        // The chain IPv4 flows have always hashed with: Maglev slots (and
        // so backends) of existing flows stay where they were.
        let chain = mix(mix(client ^ 0x9e37_79b9) ^ vip) ^ ((1234 << 16) | 80) ^ (6 << 24);
        assert_eq!(flow_hash(client, vip, 1234, 80, 6), mix(chain));
        let (src, dst) = ([0xfd00u32.to_be(), 0, 0, 5], [0xfd00u32.to_be(), 0, 1, 10]);
        let hash = flow_hash(src, dst, 1234, 80, 6);
        for word in 0..4 {
            let mut other = src;
            other[word] ^= 1 << 24;
            assert_ne!(
                flow_hash(other, dst, 1234, 80, 6),
                hash,
                "source word {word}"
            );
            let mut other = dst;
            other[word] ^= 1;
            assert_ne!(
                flow_hash(src, other, 1234, 80, 6),
                hash,
                "destination word {word}"
            );
        }
    }
}
