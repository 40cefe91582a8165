//! This network namespace's addresses: the node addresses NodePorts
//! answer on (`--nodeport-addresses`, as kube-proxy's flag), both
//! families, and the IPv4 address each NIC SNATs to. Re-read on every
//! rescan, so a DHCP renewal or an added address reaches the plan.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::cidr::IpCidr;

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub interface: String,
    pub index: u32,
    pub addr: IpAddr,
}

/// Every address of either family but loopback and IPv6 link-local (an
/// address of one link, no NodePort address), in the kernel's order (an
/// interface's primary address first).
pub fn list() -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut entry = head;
    // SAFETY: walk the list getifaddrs returned; each ifa_addr of family
    // AF_INET points to a sockaddr_in, of AF_INET6 to a sockaddr_in6;
    // names are NUL-terminated.
    unsafe {
        while !entry.is_null() {
            let ifa = &*entry;
            entry = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let addr = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            if !is_node_address(addr) {
                continue;
            }
            addrs.push(InterfaceAddr {
                interface: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                index: libc::if_nametoindex(ifa.ifa_name),
                addr,
            });
        }
        libc::freeifaddrs(head);
    }
    Ok(addrs)
}

/// Whether an interface's address can be a node address: not loopback,
/// and not IPv6 link-local (kube-proxy skips those too).
fn is_node_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(addr) => !addr.is_loopback(),
        IpAddr::V6(addr) => !addr.is_loopback() && !addr.is_unicast_link_local(),
    }
}

/// The addresses NodePorts answer on: those inside one of `filter` (every
/// address when it is empty), sorted and unique.
pub fn nodeport_addresses(all: &[InterfaceAddr], filter: &[IpCidr]) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = all
        .iter()
        .map(|a| a.addr)
        .filter(|addr| filter.is_empty() || filter.iter().any(|c| c.contains(*addr)))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The address each NIC SNATs flows to remote backends to, per family, by
/// ifindex (the agent writes them to `NIC_ADDRS`
/// and `NIC_ADDRS6`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NicAddrs {
    pub v4: BTreeMap<u32, Ipv4Addr>,
    pub v6: BTreeMap<u32, Ipv6Addr>,
}

/// The primary (first) address of each family of each interface in `nics`
/// that has one, by ifindex: what the NIC program SNATs that family's
/// flows to.
pub fn nic_addresses(all: &[InterfaceAddr], nics: &[String]) -> NicAddrs {
    let mut primary = NicAddrs::default();
    for a in all.iter().filter(|a| nics.contains(&a.interface)) {
        match a.addr {
            IpAddr::V4(addr) => {
                primary.v4.entry(a.index).or_insert(addr);
            }
            IpAddr::V6(addr) => {
                primary.v6.entry(a.index).or_insert(addr);
            }
        }
    }
    primary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(interface: &str, index: u32, addr: &str) -> InterfaceAddr {
        InterfaceAddr {
            interface: interface.into(),
            index,
            addr: addr.parse().unwrap(),
        }
    }

    fn host() -> Vec<InterfaceAddr> {
        vec![
            addr("eth0", 2, "192.168.1.10"),
            addr("eth0", 2, "192.168.1.20"),
            addr("eth1", 3, "10.0.0.5"),
            addr("cni0", 4, "10.244.0.1"),
            addr("eth0", 2, "fd00:192:168::10"),
            addr("eth1", 3, "fd00:10::5"),
        ]
    }

    #[test]
    fn nodeport_addresses_are_filtered_by_cidr_or_all() {
        let all = nodeport_addresses(&host(), &[]);
        assert_eq!(all.len(), 6);
        let filtered = nodeport_addresses(
            &host(),
            &[
                "192.168.1.0/24".parse().unwrap(),
                "10.0.0.4/30".parse().unwrap(),
                "fd00:192:168::/64".parse().unwrap(),
            ],
        );
        let expected: Vec<IpAddr> = [
            "10.0.0.5",
            "192.168.1.10",
            "192.168.1.20",
            "fd00:192:168::10",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            filtered, expected,
            "cni0's 10.244.0.1 and eth1's fd00:10::5 are left out"
        );
    }

    #[test]
    fn a_nic_snats_to_its_first_address_of_each_family() {
        let mut addrs = host();
        addrs.insert(0, addr("eth0", 2, "fd00:192:168::1"));
        let nics = nic_addresses(&addrs, &["eth0".into(), "eth9".into()]);
        assert_eq!(
            nics.v4.into_iter().collect::<Vec<_>>(),
            [(2, "192.168.1.10".parse().unwrap())],
            "eth9 has no address; eth1 is no NIC of ours"
        );
        assert_eq!(
            nics.v6.into_iter().collect::<Vec<_>>(),
            [(2, "fd00:192:168::1".parse().unwrap())],
            "the first IPv6 address listed, not the later fd00:192:168::10"
        );
    }

    #[test]
    fn lists_addresses_without_loopback() {
        let addrs = list().unwrap();
        assert!(addrs.iter().all(|a| !a.addr.is_loopback()), "{addrs:?}");
    }

    #[test]
    fn loopback_and_ipv6_link_local_are_no_node_addresses() {
        for (addr, node) in [
            ("192.168.1.10", true),
            ("127.0.0.1", false),
            ("fd00:192:168::10", true),
            ("::1", false),
            ("fe80::1", false),
        ] {
            assert_eq!(is_node_address(addr.parse().unwrap()), node, "{addr}");
        }
    }
}
