//! A private network namespace for the calling thread, with one NIC whose
//! neighbours and routes are fixed, so the NIC program's FIB lookups in
//! packet tests have known answers: a remote backend's node and the client
//! are known neighbours, one pod network routes via the other node.
//!
//! Only the calling thread moves (unshare(CLONE_NEWNET)); commands it
//! spawns start in the new namespace. The namespace and its veth go when
//! the thread ends, which is when a test ends.

use std::{
    ffi::CString,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use crate::{netns::run, privileged::require_root};

/// This node's NIC and address.
pub const NIC: &str = "nic0";
pub const NIC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The other node, which routes `REMOTE_PODS`.
pub const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
pub const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
pub const REMOTE_PODS: &str = "10.1.2.0/24";
/// The external client, a neighbour on the NIC's network.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];

/// The same neighbours over IPv6, on the same links: this node's NIC
/// address, the other node (which routes `REMOTE_PODS6`, `REMOTE_PODS`'s
/// twin fd00::<IPv4 address>) and the client.
pub const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
pub const OTHER_NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
pub const REMOTE_PODS6: &str = "fd00::a01:200/120";
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x100);

/// A MAC address as `ip` writes it (`02:00:00:00:00:a1`).
pub fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: a valid C string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "{name:?} has no index");
    index
}

/// The MAC address of interface `ifindex` in the calling thread's
/// namespace (read with `ip`, which starts in that namespace: `/sys` shows
/// the namespace it was mounted in).
pub fn mac_of(ifindex: u32) -> [u8; 6] {
    let output = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap_or_else(|e| panic!("ip link show: {e}"));
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|line| line.starts_with(&format!("{ifindex}: ")))
        .unwrap_or_else(|| panic!("no interface {ifindex} in:\n{listing}"));
    let text = line
        .split_whitespace()
        .skip_while(|word| !word.starts_with("link/"))
        .nth(1)
        .unwrap_or_else(|| panic!("no link address in {line:?}"));
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    mac
}

/// The other end of the NIC's veth, standing in for a pod interface.
pub const POD_SIDE: &str = "peer0";

/// Moves the calling thread into a fresh namespace set up as above and
/// returns the NIC's ifindex.
pub fn enter() -> u32 {
    require_root("NIC packet tests");
    // SAFETY: unshare only affects the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", NIC, "type", "veth", "peer", "name", POD_SIDE]);
    ip(&["link", "set", NIC, "address", &mac(NIC_MAC)]);
    for dev in [NIC, POD_SIDE] {
        ip(&["link", "set", dev, "up"]);
    }
    ip(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", NIC]);
    // No duplicate address detection: a tentative address is no source.
    ip(&[
        "addr",
        "add",
        &format!("{NODE_ADDR6}/64"),
        "dev",
        NIC,
        "nodad",
    ]);
    let neighbours: [(std::net::IpAddr, [u8; 6]); 4] = [
        (OTHER_NODE.into(), OTHER_NODE_MAC),
        (CLIENT.into(), CLIENT_MAC),
        (OTHER_NODE6.into(), OTHER_NODE_MAC),
        (CLIENT6.into(), CLIENT_MAC),
    ];
    for (addr, lladdr) in neighbours {
        ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac(lladdr),
            "dev",
            NIC,
            "nud",
            "permanent",
        ]);
    }
    ip(&[
        "route",
        "add",
        REMOTE_PODS,
        "via",
        &OTHER_NODE.to_string(),
        "dev",
        NIC,
    ]);
    ip(&[
        "-6",
        "route",
        "add",
        REMOTE_PODS6,
        "via",
        &OTHER_NODE6.to_string(),
        "dev",
        NIC,
    ]);
    // The FIB helper refuses to forward where the stack would not.
    for path in [
        "/proc/sys/net/ipv4/conf/all/forwarding".to_string(),
        format!("/proc/sys/net/ipv4/conf/{NIC}/forwarding"),
        "/proc/sys/net/ipv6/conf/all/forwarding".to_string(),
    ] {
        std::fs::write(&path, "1").unwrap_or_else(|e| panic!("enabling forwarding ({path}): {e}"));
    }
    ifindex(NIC)
}

/// A second interface (a veth, up, 192.168.51.1/24) whose neighbour
/// 192.168.51.2 routes `BEHIND_SECOND_NIC`; returns its ifindex.
pub fn add_second_nic() -> u32 {
    ip(&[
        "link", "add", SECOND_NIC, "type", "veth", "peer", "name", "peer1",
    ]);
    for dev in [SECOND_NIC, "peer1"] {
        ip(&["link", "set", dev, "up"]);
    }
    ip(&["addr", "add", "192.168.51.1/24", "dev", SECOND_NIC]);
    ip(&[
        "neigh",
        "replace",
        "192.168.51.2",
        "lladdr",
        "02:00:00:00:00:d2",
        "dev",
        SECOND_NIC,
        "nud",
        "permanent",
    ]);
    ip(&[
        "route",
        "add",
        BEHIND_SECOND_NIC,
        "via",
        "192.168.51.2",
        "dev",
        SECOND_NIC,
    ]);
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{SECOND_NIC}/forwarding"),
        "1",
    )
    .unwrap_or_else(|e| panic!("enabling forwarding: {e}"));
    ifindex(SECOND_NIC)
}

/// See [`add_second_nic`].
pub const SECOND_NIC: &str = "nic1";
pub const BEHIND_SECOND_NIC: &str = "10.1.3.0/24";
