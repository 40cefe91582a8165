//! CRC32c (Castagnoli), the SCTP checksum (RFC 9260 §6.8, appendix A), and
//! its update when a few bytes change, without a pass over the packet.
//!
//! A CRC is linear over GF(2): for two messages of one length,
//! `crc(a) ^ crc(b)` is the CRC of `a ^ b` taken with a zero register and no
//! final inversion. When only the bytes at one place change, `a ^ b` is
//! zero but for those bytes: leading zeros leave a zero register as it is,
//! the changed bytes go through the register, and the `k` zero bytes after
//! them multiply it by `x^(8k)` modulo the polynomial. So the new CRC is
//! the old one XOR (the changed bytes' difference, through the register,
//! times `x^(8k)`): bounded work (at most 16 multiplications of 32 steps
//! for packets below 64 KiB) whatever the packet's length.
//!
//! Polynomials are in the reflected form the CRC uses: bit 31 is `x^0`.

/// The CRC32c polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;
/// `x^0`, reflected.
const ONE: u32 = 1 << 31;

/// The CRC32c of `data`, whole (the reference the update is tested
/// against; the datapath never takes it).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc = shift_in(crc, *byte);
    }
    !crc
}

/// One byte through the register.
const fn shift_in(mut crc: u32, byte: u8) -> u32 {
    crc ^= byte as u32;
    let mut bit = 0;
    while bit < 8 {
        crc = if crc & 1 != 0 {
            (crc >> 1) ^ POLY
        } else {
            crc >> 1
        };
        bit += 1;
    }
    crc
}

/// `a * b` modulo the polynomial.
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = ONE;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        bit >>= 1;
    }
    product
}

/// `x^(8 * 2^i)` modulo the polynomial, for `i` in `0..16`: a byte count
/// below 64 KiB is a sum of these powers' exponents.
const BYTE_POWERS: [u32; 16] = {
    // x^8: a zero byte through a register holding x^0.
    let mut powers = [0u32; 16];
    powers[0] = shift_in(ONE, 0);
    let mut i = 1;
    while i < 16 {
        powers[i] = multiply(powers[i - 1], powers[i - 1]);
        i += 1;
    }
    powers
};

/// `crc` (a register, not inverted) followed by `zero_bytes` zero bytes
/// (below 64 KiB; higher bits are ignored).
pub fn through_zeros(mut crc: u32, zero_bytes: u32) -> u32 {
    for (i, power) in BYTE_POWERS.iter().enumerate() {
        if zero_bytes & (1 << i) != 0 {
            crc = multiply(*power, crc);
        }
    }
    crc
}

/// The CRC32c of a message after its four bytes `old` became `new`, with
/// `bytes_after` bytes after them (below 64 KiB), from `crc`, its CRC32c
/// before. Bytes that did not change are equal in `old` and `new`.
pub fn update(crc: u32, old: [u8; 4], new: [u8; 4], bytes_after: u32) -> u32 {
    let mut delta = 0u32;
    for (o, n) in old.iter().zip(new) {
        delta = shift_in(delta, o ^ n);
    }
    crc ^ through_zeros(delta, bytes_after)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Table-driven CRC32c, written apart from the bitwise one above.
    fn by_table(data: &[u8]) -> u32 {
        let mut table = [0u32; 256];
        for (n, entry) in table.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        let crc = data.iter().fold(0xFFFF_FFFFu32, |c, b| {
            table[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8)
        });
        crc ^ 0xFFFF_FFFF
    }

    #[test]
    fn the_published_check_values() {
        // RFC 3720 appendix B.4 and the catalogue's check value.
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFF; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(by_table(b"123456789"), 0xE306_9283);
    }

    /// A small xorshift: the same cases on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn an_update_equals_the_crc_of_the_rewritten_message() {
        let mut rng = Rng(0x6b78_6470_7363_7470);
        // Every length from 4 to 300 bytes, then lengths up to 64 KiB.
        let lengths = (4..300).chain((0..200).map(|_| 4 + (rng.next() % 65_530) as usize));
        let lengths: Vec<usize> = lengths.collect();
        for len in lengths {
            let mut message: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let at = (rng.next() as usize) % (len - 3);
            let old: [u8; 4] = message[at..at + 4].try_into().unwrap();
            let mut new = old;
            // Two bytes (one port), or all four (both ports).
            let changed = if rng.next().is_multiple_of(2) {
                0..2
            } else {
                0..4
            };
            for i in changed {
                new[i] = rng.next() as u8;
            }
            let before = by_table(&message);
            message[at..at + 4].copy_from_slice(&new);
            let after = update(before, old, new, (len - at - 4) as u32);
            assert_eq!(
                after,
                by_table(&message),
                "length {len}, bytes {at}..{}",
                at + 4
            );
        }
    }

    #[test]
    fn zero_bytes_multiply_the_register_as_shifting_them_in_does() {
        let mut rng = Rng(7);
        for _ in 0..100 {
            let register = rng.next() as u32;
            let zeros = (rng.next() % 3000) as u32;
            let shifted = (0..zeros).fold(register, |c, _| shift_in(c, 0));
            assert_eq!(through_zeros(register, zeros), shifted, "{zeros} zeros");
        }
    }
}
