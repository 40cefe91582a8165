//! IPv4 CIDR blocks, as given in flags such as `--service-cidr`.

use std::{fmt, net::Ipv4Addr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// Every address: 0.0.0.0/0, the lowest block in sort order.
    pub const ANY: Self = Self {
        network: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    /// The block of the single address `addr`.
    pub const fn host(addr: Ipv4Addr) -> Self {
        Self {
            network: addr,
            prefix_len: 32,
        }
    }

    /// The block holding `addr` with `prefix_len` leading bits, host bits
    /// cleared; `None` for a length above 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let host_bits = 32u32.checked_sub(u32::from(prefix_len))?;
        // A shift by 32 overflows: /0 keeps no bit.
        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }

    /// Parses `a.b.c.d/len` clearing host bits, as the API server accepts
    /// `loadBalancerSourceRanges` (Go's `net.ParseCIDR`).
    pub fn parse_lenient(s: &str) -> Result<Self, String> {
        let (addr, len) = split(s)?;
        Self::new(addr, len).ok_or_else(|| format!("'{s}' has a bad prefix length"))
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The `index`-th address of the block (`index < size()`).
    pub fn nth(&self, index: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(index as u32))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(addr).wrapping_sub(u32::from(self.network)));
        offset < self.size()
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix_len) = split(s)?;
        match Self::new(addr, prefix_len) {
            Some(cidr) if cidr.network == addr => Ok(cidr),
            _ => Err(format!("'{s}' has host bits set")),
        }
    }
}

/// The address and prefix length of `a.b.c.d/len`.
fn split(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not a CIDR (expected a.b.c.d/len)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("'{len}' is not a prefix length (0-32)"))?;
    Ok((addr, prefix_len))
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_contains() {
        let cidr: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr.size(), 1 << 20);
        assert!(cidr.contains("10.111.255.255".parse().unwrap()));
        assert!(!cidr.contains("10.112.0.0".parse().unwrap()));
        assert!(!cidr.contains("10.95.255.255".parse().unwrap()));
        assert_eq!(cidr.nth(10), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.96.0.0",
            "10.96.0.1/12",
            "10.96.0.0/33",
            "x/8",
            "10.0.0.0/a",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} accepted");
        }
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().size(), 1 << 32);
    }

    #[test]
    fn lenient_parse_clears_host_bits_like_the_api_server() {
        let cidr = Ipv4Cidr::parse_lenient("203.0.113.77/24").unwrap();
        assert_eq!(cidr.to_string(), "203.0.113.0/24");
        assert_eq!(cidr.prefix_len(), 24);
        assert_eq!(cidr.network(), Ipv4Addr::new(203, 0, 113, 0));
        assert_eq!(
            Ipv4Cidr::parse_lenient("1.2.3.4/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in ["1.2.3.4", "1.2.3.4/33", "fd00::/8", "x/8"] {
            assert!(Ipv4Cidr::parse_lenient(bad).is_err(), "{bad} accepted");
        }
    }
}
