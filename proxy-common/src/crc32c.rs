//! CRC32c (Castagnoli), the SCTP checksum (RFC 9260 §6.8, appendix A), and
//! its update when a few bytes change, without a pass over the packet.
//!
//! A CRC is linear over GF(2): for two messages of one length,
//! `crc(a) ^ crc(b)` is the CRC of `a ^ b` taken with a zero register and no
//! final inversion. When only four bytes change, `a ^ b` is zero but for
//! them: leading zeros leave a zero register as it is, the four bytes
//! `D` (read as a little-endian word, the register's reflected order) put
//! `D * x^32` in it, and the `k` zero bytes after them multiply it by
//! `x^(8k)` modulo the polynomial. So the new CRC is the old one XOR
//! `D * x^(8(k+4))`. The power is a product of the powers `x^(8 * 2^i)`
//! for the set bits of `k + 4`, and multiplying by a fixed power is linear
//! in the other factor: four lookups in that power's tables, one per byte
//! ([`POWER_TABLES`]). An update is at most 16 such products for a packet
//! below 64 KiB (about 5 for 1,400 bytes), whatever its length.
//!
//! Polynomials are in the reflected form the CRC uses: bit 31 is `x^0`.
//! On the wire SCTP carries the CRC least significant byte first
//! (`crc.to_le_bytes()`).

/// The CRC32c polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;
/// `x^0`, reflected.
const ONE: u32 = 1 << 31;
/// Powers kept: byte counts below `2^POWERS` (64 KiB).
const POWERS: usize = 16;

/// The CRC32c of `data`, whole (the reference the update is tested
/// against; the datapath never takes it of a packet).
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

/// `a * b` modulo the polynomial, bit by bit (builds the tables).
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
const BYTE_POWERS: [u32; POWERS] = {
    // x^8: a zero byte through a register holding x^0.
    let mut powers = [0u32; POWERS];
    powers[0] = shift_in(ONE, 0);
    let mut i = 1;
    while i < POWERS {
        powers[i] = multiply(powers[i - 1], powers[i - 1]);
        i += 1;
    }
    powers
};

/// Base-4 digits of a byte count below 64 KiB.
const DIGITS: usize = POWERS / 2;

/// `POWER_TABLES[i][d][j][b]`: `x^(8 * d * 4^i)` times the word whose byte
/// `j` is `b` (the others zero). A product by that power is the XOR of its
/// four bytes' entries, and a count of zero bytes is eight such products,
/// one per base-4 digit (digit 0's tables are the identity's). Taking
/// every digit, zero or not, leaves the update without a branch: the
/// verifier would walk each combination of branches as a path of its own.
/// A `static`, so the eBPF programs read it from their object's read-only
/// data (128 KiB) rather than build it on the stack.
pub static POWER_TABLES: [[[[u32; 256]; 4]; 4]; DIGITS] = {
    let mut tables = [[[[0u32; 256]; 4]; 4]; DIGITS];
    let mut i = 0;
    while i < DIGITS {
        // x^(8 * 4^i) and its powers 0 to 3.
        let base = BYTE_POWERS[2 * i];
        let powers = [
            ONE,
            base,
            multiply(base, base),
            multiply(multiply(base, base), base),
        ];
        let mut d = 0;
        while d < 4 {
            let mut j = 0;
            while j < 4 {
                // Each single-bit byte by multiplication, every other byte
                // as the XOR of its lowest bit's entry and the rest's
                // (linearity: 8 products a table, not 256).
                let mut b = 1;
                while b < 256 {
                    let lowest = b & (!b + 1);
                    tables[i][d][j][b] = if lowest == b {
                        multiply(powers[d], (b as u32) << (8 * j))
                    } else {
                        tables[i][d][j][lowest] ^ tables[i][d][j][b ^ lowest]
                    };
                    b += 1;
                }
                j += 1;
            }
            d += 1;
        }
        i += 1;
    }
    tables
};

/// `value * x^(8 * digit * 4^place)`: four table lookups.
#[inline(always)]
fn times_digit(place: usize, digit: u32, value: u32) -> u32 {
    let tables = &POWER_TABLES[place][(digit & 3) as usize];
    tables[0][(value & 0xff) as usize]
        ^ tables[1][((value >> 8) & 0xff) as usize]
        ^ tables[2][((value >> 16) & 0xff) as usize]
        ^ tables[3][(value >> 24) as usize]
}

/// `crc` (a register, not inverted) followed by `zero_bytes` zero bytes
/// (below 64 KiB; higher bits are ignored): eight products, no branch.
#[inline(always)]
pub fn through_zeros(mut crc: u32, zero_bytes: u32) -> u32 {
    for place in 0..DIGITS {
        crc = times_digit(place, zero_bytes >> (2 * place), crc);
    }
    crc
}

/// The CRC32c of a message after its four bytes `old` became `new`, with
/// `bytes_after` bytes after them (`bytes_after + 4` below 64 KiB), from
/// `crc`, its CRC32c before. Bytes that did not change are equal in `old`
/// and `new`.
#[inline(always)]
pub fn update(crc: u32, old: [u8; 4], new: [u8; 4], bytes_after: u32) -> u32 {
    let delta = u32::from_le_bytes(old) ^ u32::from_le_bytes(new);
    crc ^ through_zeros(delta, bytes_after + 4)
}

/// [`update`] for an SCTP packet of `len` bytes whose ports (its first
/// four bytes; network order, as the packet holds them) changed from `old`
/// to `new`.
#[inline(always)]
pub fn update_ports(crc: u32, old: [u16; 2], new: [u16; 2], len: u32) -> u32 {
    let bytes = |ports: [u16; 2]| {
        let [a, b] = ports[0].to_ne_bytes();
        let [c, d] = ports[1].to_ne_bytes();
        [a, b, c, d]
    };
    update(crc, bytes(old), bytes(new), len.wrapping_sub(4))
}

/// The CRC32c of a message of whole 4-byte words (`words[i]`: bytes
/// `4i..4i+4` read little-endian), a word at a time: for the small packets
/// the datapath builds (an SCTP ABORT), with no byte loop.
#[inline(always)]
pub fn of_words<const N: usize>(words: [u32; N]) -> u32 {
    let mut crc = !0u32;
    for word in words {
        // Four bytes through the register: (register ^ word) * x^32, x^32
        // being x^(8 * 1 * 4^1).
        crc = times_digit(1, 1, crc ^ word);
    }
    !crc
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

    #[test]
    fn the_tables_multiply_as_the_bitwise_product_does() {
        let mut rng = Rng(11);
        for place in 0..DIGITS {
            for digit in 0..4u32 {
                let mut power = ONE;
                for _ in 0..digit {
                    power = multiply(power, BYTE_POWERS[2 * place]);
                }
                for _ in 0..200 {
                    let value = rng.next() as u32;
                    assert_eq!(
                        times_digit(place, digit, value),
                        multiply(power, value),
                        "place {place}, digit {digit}, value {value:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_ports_update_equals_the_crc_of_the_rewritten_packet() {
        let mut rng = Rng(0x5c7f);
        let lengths: Vec<usize> = (12..200)
            .chain((0..100).map(|_| 12 + (rng.next() % 65_000) as usize))
            .collect();
        for len in lengths {
            let mut packet: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // The checksum field is zero while the CRC is taken.
            packet[8..12].fill(0);
            let old = [
                u16::from_ne_bytes([packet[0], packet[1]]),
                u16::from_ne_bytes([packet[2], packet[3]]),
            ];
            let new = [old[0], (rng.next() as u16)];
            let before = by_table(&packet);
            packet[0..2].copy_from_slice(&new[0].to_ne_bytes());
            packet[2..4].copy_from_slice(&new[1].to_ne_bytes());
            assert_eq!(
                update_ports(before, old, new, len as u32),
                by_table(&packet),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_crc_of_words_equals_the_crc_of_their_bytes() {
        let mut rng = Rng(3);
        for _ in 0..200 {
            let words = [0; 4].map(|_: u32| rng.next() as u32);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(of_words(words), by_table(&bytes));
        }
    }
}
