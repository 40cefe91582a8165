//! What the IPv4 and IPv6 NIC packet suites share: the case table's
//! builders for packets arriving from the client, and the checks of the
//! NIC program's SNAT that read the same in either family. Run in a
//! `nic_netns`, whose NIC has `NIC_MAC` and knows the other node and the
//! client.

use std::net::{IpAddr, SocketAddr};

use proxy_userspace::sync::entries::FrontendMapKey;

use crate::{
    cases::{Frame, Frontend, Hook, Out, Step},
    datapath::{Datapath, TC_ACT_REDIRECT, XDP_PASS, XDP_TX},
    nic_netns::{self, CLIENT_MAC, NIC_MAC, OTHER_NODE_MAC},
    packet::{self, Packet},
};

/// A packet as it arrives from the client, addressed to our NIC.
pub fn from_client(p: Packet) -> Packet {
    Packet {
        src_mac: CLIENT_MAC,
        dst_mac: NIC_MAC,
        ..p
    }
}

/// A packet from the client arriving at the NIC.
pub fn arriving(what: &str, p: Packet, verdict: u32, expect: Out) -> Step {
    Step::new(
        what,
        Hook::Nic,
        Frame::Built(from_client(p)),
        verdict,
        expect,
    )
}

/// Frontend `key` (`id`, `FRONTEND_*` `flags`) serving `backends`
/// (address, port, on this node?) of its family, no source ranges.
pub fn frontend<A: Into<IpAddr> + Copy>(
    key: impl Into<FrontendMapKey>,
    id: u32,
    flags: u32,
    backends: &[(A, u16, bool)],
) -> Frontend {
    Frontend {
        key: key.into(),
        id,
        flags,
        backends: backends.iter().map(|&(a, p, l)| (a.into(), p, l)).collect(),
        sources: Vec::new(),
    }
}

/// The SNAT port of a remote backend's flow, checking the rest of
/// `out`: `request` from the node's `node_addr`, to `backend`, towards the
/// other node's MAC, its TTL (hop limit) spent.
pub fn assert_snated(out: &[u8], request: &Packet, backend: SocketAddr, node_addr: IpAddr) -> u16 {
    packet::verify_checksums(out).unwrap_or_else(|e| panic!("{e}"));
    let port = packet::src(out).port();
    let range = proxy_common::maps::SNAT_PORT_MIN..=proxy_common::maps::SNAT_PORT_MAX;
    assert!(range.contains(&port), "SNAT port {port} out of range");
    let expected = Packet {
        src_mac: NIC_MAC,
        dst_mac: OTHER_NODE_MAC,
        ttl: request.ttl - 1,
        ..request.clone()
    }
    .with_src(SocketAddr::new(node_addr, port))
    .with_dst(backend);
    assert_eq!(out, expected.build(), "forwarded to the other node");
    port
}

/// The reply of a SNATed flow: `reply`, from the backend to the node's
/// SNAT address and port, arrives from the other node at NIC `nic` and must
/// leave for `client` from `frontend`, the address and port it contacted,
/// its TTL (hop limit) spent and its checksums right.
pub fn assert_reply_translated_back(
    dp: &mut Datapath,
    nic: u32,
    reply: Packet,
    frontend: SocketAddr,
    client: SocketAddr,
) {
    let reply = Packet {
        src_mac: OTHER_NODE_MAC,
        dst_mac: NIC_MAC,
        ..reply
    };
    let (verdict, out) = dp.run_nic(&reply.build(), nic);
    assert_eq!(verdict, XDP_TX, "back out of the NIC");
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
    let expected = Packet {
        src_mac: NIC_MAC,
        dst_mac: CLIENT_MAC,
        ttl: reply.ttl - 1,
        ..reply
    }
    .with_src(frontend)
    .with_dst(client);
    assert_eq!(out, expected.build(), "translated back to the client");
}

/// A backend on this node whose endpoint names no node (or another) is
/// SNATed like a remote one and handed to the stack, which routes it to the
/// pod; the pod's reply comes back through its own interface, where
/// `pod_ingress` must translate it back to the client, as the NIC would.
/// `syn` comes from `client` to `nodeport`, whose only backend is
/// `backend`, marked remote; the NIC `nic` SNATs to `node_addr`.
pub fn assert_local_backend_taken_for_remote_is_answered(
    dp: &mut Datapath,
    nic: u32,
    syn: &Packet,
    backend: SocketAddr,
    node_addr: IpAddr,
) {
    let (verdict, out) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_PASS, "no route to it from the NIC's FIB");
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(packet::dst(&out), backend);
    let snat = packet::src(&out);
    assert_eq!(snat.ip(), node_addr);

    let reply = Packet::tcp(backend, snat).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
    let pod_side = nic_netns::ifindex(nic_netns::POD_SIDE);
    let (verdict, out) = dp.run_from(&reply.build(), pod_side);
    assert_eq!(verdict, TC_ACT_REDIRECT, "out of the NIC, past the stack");
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
    let expected = Packet {
        ttl: reply.ttl - 1,
        ..reply.clone()
    }
    .with_src(syn.dst)
    .with_dst(syn.src);
    assert_eq!(out, expected.build(), "from the NodePort to the client");
}
