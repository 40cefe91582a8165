//! The hashes that pick a backend. Shared so the agent, the tests and the
//! benchmarks can tell which slot of a Maglev table a flow lands in.

/// 32-bit finaliser (from the "lowbias32" family): cheap and well mixed.
#[inline(always)]
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A well-mixed hash of a 5-tuple as the packet holds it (network order).
#[inline(always)]
pub fn flow_hash(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let ports = ((src_port as u32) << 16) | dst_port as u32;
    let h = mix(src_addr ^ 0x9e37_79b9);
    let h = mix(h ^ dst_addr);
    mix(h ^ ports ^ ((proto as u32) << 24))
}
