//! The Internet checksum's sum (RFC 1071), written here on its own so the
//! targets check `proxy_common`'s arithmetic against something else.

/// `acc` plus the big-endian 16-bit words of `data`, an odd last byte
/// padded with zero; not folded.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    for chunk in data.chunks(2) {
        acc += u64::from(chunk[0]) << 8 | u64::from(chunk.get(1).copied().unwrap_or(0));
    }
    acc
}

/// `acc` folded to 16 bits with its carries (end-around).
pub fn folded(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}
