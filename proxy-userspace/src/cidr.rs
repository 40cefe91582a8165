//! IPv4 CIDR blocks, as given in flags such as `--service-cidr`.

use std::{fmt, net::Ipv4Addr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
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
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!("'{s}' has host bits set"));
        }
        Ok(Self {
            network: addr,
            prefix_len,
        })
    }
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
}
