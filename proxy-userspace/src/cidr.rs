//! CIDR blocks of either family, as given in flags such as
//! `--service-cidr` and in `loadBalancerSourceRanges`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// A block of addresses of one family. Sorts IPv4 blocks before IPv6 ones
/// (as `IpAddr` does), then by network and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Bits of an address of `addr`'s family.
fn family_bits(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address as a number, whatever its family (an IPv4 one in the low 32 bits).
fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family`'s family numbered `bits`.
fn from_bits(family: IpAddr, bits: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

impl IpCidr {
    /// The block holding `addr` with `prefix_len` leading bits, host bits
    /// cleared; `None` for a length beyond the family's bits.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let host_bits = u32::from(family_bits(addr).checked_sub(prefix_len)?);
        // A shift by 128 overflows: /0 keeps no bit.
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(Self {
            network: from_bits(addr, to_bits(addr) & mask),
            prefix_len,
        })
    }

    /// The block of the single address `addr`.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            network: addr,
            prefix_len: family_bits(addr),
        }
    }

    /// Parses `addr/len` clearing host bits, as the API server accepts
    /// `loadBalancerSourceRanges` (Go's `net.ParseCIDR`).
    pub fn parse_lenient(s: &str) -> Result<Self, String> {
        let (addr, len) = split(s)?;
        Self::new(addr, len).ok_or_else(|| format!("'{s}' has a bad prefix length"))
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// Bits of the block's addresses that vary (32 for an IPv4 /0).
    pub fn host_bits(&self) -> u32 {
        u32::from(family_bits(self.network) - self.prefix_len)
    }

    /// The `index`-th address of the block (`index` below 2^[`Self::host_bits`]).
    pub fn nth(&self, index: u128) -> IpAddr {
        from_bits(self.network, to_bits(self.network).wrapping_add(index))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.is_ipv4()
            && to_bits(addr).checked_shr(self.host_bits()).unwrap_or(0)
                == to_bits(self.network)
                    .checked_shr(self.host_bits())
                    .unwrap_or(0)
    }
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix_len) = split(s)?;
        match Self::new(addr, prefix_len) {
            Some(cidr) if cidr.network == addr => Ok(cidr),
            _ => Err(format!("'{s}' has host bits set")),
        }
    }
}

/// The address and prefix length of `addr/len`.
fn split(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not a CIDR (expected address/length)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IP address"))?;
    let bits = family_bits(addr);
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= bits)
        .ok_or_else(|| format!("'{len}' is not a prefix length (0-{bits})"))?;
    Ok((addr, prefix_len))
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_contains() {
        let cidr: IpCidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr.host_bits(), 20);
        assert!(cidr.contains(ip("10.111.255.255")));
        assert!(!cidr.contains(ip("10.112.0.0")));
        assert!(!cidr.contains(ip("10.95.255.255")));
        assert_eq!(cidr.nth(10), ip("10.96.0.10"));
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn ipv6_blocks_parse_and_contain_only_their_family() {
        let cidr: IpCidr = "fd00:10:96::/112".parse().unwrap();
        assert!(!cidr.is_ipv4());
        assert_eq!(cidr.host_bits(), 16);
        assert!(cidr.contains(ip("fd00:10:96::ffff")));
        assert!(!cidr.contains(ip("fd00:10:96::1:0")));
        assert_eq!(cidr.nth(0xa), ip("fd00:10:96::a"));
        assert_eq!(cidr.to_string(), "fd00:10:96::/112");
        let any: IpCidr = "::/0".parse().unwrap();
        assert!(any.contains(ip("fd00::1")));
        assert!(
            !any.contains(ip("10.0.0.1")),
            "no IPv4 address in an IPv6 block"
        );
        let all_v4: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert!(all_v4.contains(ip("10.0.0.1")) && !all_v4.contains(ip("fd00::1")));
        assert_eq!(all_v4.host_bits(), 32);
        assert!(IpCidr::host(ip("10.0.0.1")) < IpCidr::host(ip("fd00::1")));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.96.0.0",
            "10.96.0.1/12",
            "10.96.0.0/33",
            "fd00::1/64",
            "fd00::/129",
            "x/8",
            "10.0.0.0/a",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn lenient_parse_clears_host_bits_like_the_api_server() {
        let cidr = IpCidr::parse_lenient("203.0.113.77/24").unwrap();
        assert_eq!(cidr.to_string(), "203.0.113.0/24");
        assert_eq!(cidr.prefix_len(), 24);
        assert_eq!(cidr.network(), ip("203.0.113.0"));
        assert_eq!(
            IpCidr::parse_lenient("1.2.3.4/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            IpCidr::parse_lenient("fd00:1:2:3::77/48")
                .unwrap()
                .to_string(),
            "fd00:1:2::/48"
        );
        for bad in ["1.2.3.4", "1.2.3.4/33", "fd00::/200", "x/8"] {
            assert!(IpCidr::parse_lenient(bad).is_err(), "{bad} accepted");
        }
    }
}
