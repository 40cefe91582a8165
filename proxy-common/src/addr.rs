//! Addresses as the packet holds them, one type per family, so the map
//! types and the datapath are written once for both (an IPv4 key keeps its
//! 32-bit address: IPv6 costs IPv4 nothing).

use core::net::{Ipv4Addr, Ipv6Addr};

/// An IPv6 address as four network-order words, as the packet holds it.
pub type Addr6 = [u32; 4];

/// A family's address in map keys and values, network order. All zeros
/// is no address (the model refuses the unspecified address).
pub trait Addr: Copy + Eq + Default + core::fmt::Debug + 'static {
    /// The address's 32-bit words, for hashes and checksums.
    fn words(&self) -> &[u32];
    /// Whether this is the all-zero value of an empty slot.
    #[inline(always)]
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl Addr for u32 {
    #[inline(always)]
    fn words(&self) -> &[u32] {
        core::slice::from_ref(self)
    }
}

impl Addr for Addr6 {
    #[inline(always)]
    fn words(&self) -> &[u32] {
        self
    }
}

/// An IPv6 address as the packet holds it.
pub fn addr6_to_net(addr: Ipv6Addr) -> Addr6 {
    let o = addr.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`addr6_to_net`].
pub fn addr6_from_net(addr: Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A network-order `u32` as the packet holds it.
pub fn addr_to_net(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`addr_to_net`].
pub fn addr_from_net(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_address_keeps_its_bytes_in_order() {
        let addr: Ipv6Addr = "fd00:10:96::1:a".parse().unwrap();
        let net = addr6_to_net(addr);
        assert_eq!(net[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
        assert_eq!(net[3].to_ne_bytes(), [0, 1, 0, 0x0a]);
        assert_eq!(addr6_from_net(net), addr);
        assert!(!net.is_zero() && Addr6::default().is_zero());
        assert_eq!(net.words().len(), 4);
        assert_eq!(addr_to_net(Ipv4Addr::new(10, 0, 0, 1)).words().len(), 1);
    }
}
