//! Packet tests of `nic_ingress` over IPv6, through BPF_PROG_TEST_RUN in a
//! private network namespace (`nic_netns`, whose NIC has `NODE_ADDR6` and
//! knows the client and the other node as IPv6 neighbours): NodePort and
//! LoadBalancer frontends to local backends, past extension headers, source
//! ranges, rejects, what must pass untouched (neighbour discovery, echo,
//! fragments, a ClusterIP), and a remote backend's flow SNATed to the
//! node's IPv6 address and forwarded from XDP, its reply translated back.
//! Every output frame is compared whole, checksums by
//! `kxdp_testbed::packet`'s own arithmetic. Needs root.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use kxdp_testbed::{
    cases::{self, nic_case, Case, Count, Frame, Frontend, Hook, Out, Step},
    datapath::{Datapath, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_TX},
    nic_checks::{self, arriving, from_client},
    nic_netns::{self, CLIENT6, NODE_ADDR6},
    packet::{self, Packet, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, PROTO_ICMPV6},
};
use proxy_common::{
    addr::addr6_to_net,
    maps::{
        port_to_net, DropReason, FrontendKey6, Verdict, CT_SNAT, FRONTEND_SNAT_REMOTE,
        FRONTEND_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, SCOPE_NODE, SCOPE_POD,
    },
};

const NODE_PORT: u16 = 30080;
const LOCAL_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 1, 0, 0, 0, 0, 2);
/// Behind the other node (`nic_netns::REMOTE_PODS6`).
const REMOTE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x0a01, 0x0202);
/// A LoadBalancer ingress IP routed to this node.
const LB_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 0x10);
const SYN_ACK: u8 = packet::TCP_SYN | packet::TCP_ACK;

fn sa(addr: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(addr), port)
}

fn nodeport() -> SocketAddr {
    sa(NODE_ADDR6, NODE_PORT)
}

fn client(port: u16) -> SocketAddr {
    sa(CLIENT6, port)
}

fn key(addr: Ipv6Addr, port: u16, proto: u8, scope: u8) -> FrontendKey6 {
    FrontendKey6 {
        addr: addr6_to_net(addr),
        port: port_to_net(port),
        proto,
        scope,
    }
}

fn frontend(
    addr: Ipv6Addr,
    port: u16,
    proto: u8,
    id: u32,
    flags: u32,
    backends: &[(Ipv6Addr, u16, bool)],
) -> Frontend {
    nic_checks::frontend(key(addr, port, proto, SCOPE_NODE), id, flags, backends)
}

/// The NodePort frontends 1 (TCP) and 2 (UDP) on the node's IPv6 address.
fn nodeports(flags: u32, backends: &[(Ipv6Addr, u16, bool)]) -> Vec<Frontend> {
    vec![
        frontend(NODE_ADDR6, NODE_PORT, PROTO_TCP, 1, flags, backends),
        frontend(NODE_ADDR6, NODE_PORT, PROTO_UDP, 2, flags, backends),
    ]
}

/// A local pod's answer to a NodePort flow: it leaves the pod through
/// `pod_ingress`, from the NodePort again, and is routed straight out of
/// the NIC with its hop limit spent (the stack would drop a packet from a
/// pod with the node's address).
fn answered(answer: Packet) -> Step {
    let routed = Packet {
        ttl: answer.ttl - 1,
        ..answer.clone()
    };
    Step::new(
        "the pod's answer",
        Hook::PodIngressOnPodSide,
        Frame::Built(answer),
        TC_ACT_REDIRECT,
        Out::Exactly(routed.with_src(nodeport())),
    )
}

/// ICMPv6 of `kind` (code 0) from the client to `dst`, as it arrives.
fn icmpv6_from_client(dst: Ipv6Addr, kind: u8, body: &[u8]) -> Vec<u8> {
    let (src, dst) = (client(0), sa(dst, 0));
    let mut message = vec![kind, 0, 0, 0];
    message.extend_from_slice(body);
    let check = packet::l4_checksum(src.ip(), dst.ip(), PROTO_ICMPV6, &message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut p = from_client(Packet::other(src, dst, PROTO_ICMPV6).payload(&message));
    p.ttl = 255;
    p.build()
}

fn untouched(what: &str, frame: Vec<u8>) -> Step {
    Step::new(what, Hook::Nic, Frame::Raw(frame), XDP_PASS, Out::Untouched)
}

fn nic_cases() -> Vec<Case> {
    let backend = sa(LOCAL_POD, 8080);
    let local = [(LOCAL_POD, 8080, true)];
    let lb = sa(LB_IP, 80);
    let mut ranged = frontend(LB_IP, 80, PROTO_TCP, 7, FRONTEND_SOURCE_RANGES, &local);
    ranged.sources = vec![("fd00:50::".parse::<Ipv6Addr>().unwrap().into(), 64)];
    // Another frontend's range admits nobody here.
    let mut closed = frontend(LB_IP, 81, PROTO_TCP, 8, FRONTEND_SOURCE_RANGES, &local);
    closed.sources = vec![("fd00:51::".parse::<Ipv6Addr>().unwrap().into(), 64)];
    // A ClusterIP is served from pods, never from outside.
    let cluster_ip = Frontend {
        key: key("fd00:10:96::a".parse().unwrap(), 80, PROTO_TCP, SCOPE_POD).into(),
        ..frontend(LB_IP, 80, PROTO_TCP, 3, 0, &local)
    };
    // Neighbour solicitation for the node's address, from the client.
    let mut solicitation = vec![0; 4];
    solicitation.extend_from_slice(&NODE_ADDR6.octets());
    // A later fragment of a datagram to the NodePort: no ports to read.
    let later_fragment = from_client(
        Packet::udp(client(40010), nodeport()).ipv6_ext(IPV6_FRAGMENT, &[0x05, 0x28, 0, 0, 0, 1]),
    );

    vec![
        nic_case(
            "an IPv6 NodePort to a local backend is DNATed and handed to the stack",
            nodeports(FRONTEND_SNAT_REMOTE, &local),
            vec![
                arriving(
                    "SYN",
                    Packet::tcp(client(40000), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                answered(from_client(Packet::tcp(backend, client(40000))).tcp_flags(SYN_ACK)),
                arriving(
                    "its next segment",
                    Packet::tcp(client(40000), nodeport()).tcp_flags(packet::TCP_ACK),
                    XDP_PASS,
                    Out::DnatAsBefore,
                ),
                arriving(
                    "datagram",
                    Packet::udp(client(40001), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                answered(from_client(Packet::udp(backend, client(40001)))),
                arriving(
                    "SYN behind a hop-by-hop header",
                    Packet::tcp(client(40002), nodeport())
                        .ipv6_ext(IPV6_HOP_BY_HOP, &[1, 4, 0, 0, 0, 0]),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
            ],
            vec![Count::Packets(1, 3), Count::Packets(2, 1)],
        ),
        nic_case(
            "an IPv6 frontend without endpoints rejects TCP with a RST and UDP with ICMPv6",
            nodeports(FRONTEND_SNAT_REMOTE, &[]),
            vec![
                arriving(
                    "SYN",
                    Packet::tcp(client(40000), nodeport()),
                    XDP_TX,
                    Out::Rst,
                ),
                arriving(
                    "datagram",
                    Packet::udp(client(40001), nodeport()).payload(b"query"),
                    XDP_TX,
                    Out::PortUnreachable,
                ),
                arriving(
                    "datagram longer than the minimum MTU allows to quote",
                    Packet::udp(client(40002), nodeport()).payload(&[0x5a; 1400]),
                    XDP_TX,
                    Out::PortUnreachable,
                ),
            ],
            vec![
                Count::ConntrackEntries(0),
                Count::Verdicts(Verdict::RejectedTcp, 1),
                Count::Verdicts(Verdict::RejectedUdp, 2),
            ],
        ),
        nic_case(
            "an IPv6 LoadBalancer IP admits only its source ranges",
            vec![ranged, closed],
            vec![
                arriving(
                    "from inside the range",
                    Packet::tcp(client(40000), lb),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                arriving(
                    "to the frontend whose range leaves the client out",
                    Packet::tcp(client(40001), sa(LB_IP, 81)),
                    XDP_DROP,
                    Out::Dropped(DropReason::SourceRange),
                ),
            ],
            vec![Count::Packets(7, 1), Count::Packets(8, 0)],
        ),
        nic_case(
            "what is no frontend's business passes the NIC untouched",
            nodeports(FRONTEND_SNAT_REMOTE, &local)
                .into_iter()
                .chain([cluster_ip])
                .collect(),
            vec![
                untouched(
                    "neighbour solicitation",
                    icmpv6_from_client(NODE_ADDR6, 135, &solicitation),
                ),
                untouched(
                    "echo request",
                    icmpv6_from_client(NODE_ADDR6, 128, &[0, 1, 0, 1]),
                ),
                untouched(
                    "a ClusterIP from outside",
                    from_client(Packet::tcp(
                        client(40000),
                        sa("fd00:10:96::a".parse().unwrap(), 80),
                    ))
                    .build(),
                ),
                untouched("a later fragment", later_fragment.build()),
                untouched(
                    "another port on the node",
                    from_client(Packet::tcp(client(40000), sa(NODE_ADDR6, 22))).build(),
                ),
            ],
            vec![Count::ConntrackEntries(0), Count::Packets(1, 0)],
        ),
    ]
}

#[test]
fn ipv6_nic_packet_cases() {
    cases::run(nic_cases());
}

fn assert_snated(out: &[u8], request: &Packet, backend: SocketAddr) -> u16 {
    nic_checks::assert_snated(out, request, backend, NODE_ADDR6.into())
}

#[test]
fn an_ipv6_nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_back() {
    let nic = nic_netns::enter();
    let mut dp = Datapath::load();
    dp.set_nic_addr(nic, nic_netns::NODE_ADDR);
    dp.set_nic_addr(nic, NODE_ADDR6);
    for (id, proto) in [(1, PROTO_TCP), (2, PROTO_UDP)] {
        dp.add_frontend_any(
            key(NODE_ADDR6, NODE_PORT, proto, SCOPE_NODE),
            id,
            FRONTEND_SNAT_REMOTE,
            &[(REMOTE_POD.into(), 8080, false)],
        );
    }
    let backend = sa(REMOTE_POD, 8080);
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    let (verdict, out) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_TX, "back out of the NIC it came in on");
    let port = assert_snated(&out, &syn, backend);

    let ack = from_client(Packet::tcp(client(40000), nodeport()).tcp_flags(packet::TCP_ACK));
    let (verdict, out) = dp.run_nic(&ack.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        assert_snated(&out, &ack, backend),
        port,
        "the flow keeps its port"
    );

    // The backend's reply reaches the node's address and SNAT port; it
    // leaves for the client from the NodePort the client contacted.
    let reply = Packet::tcp(backend, sa(NODE_ADDR6, port)).tcp_flags(SYN_ACK);
    nic_checks::assert_reply_translated_back(&mut dp, nic, reply, nodeport(), client(40000));

    // A datagram without a checksum is invalid over IPv6; one with takes
    // its own SNAT port.
    let datagram = from_client(Packet::udp(client(40000), sa(NODE_ADDR6, NODE_PORT)));
    let (verdict, out) = dp.run_nic(&datagram.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_snated(&out, &datagram, backend);

    let entries = dp.conntrack6();
    assert_eq!(entries.len(), 4, "two entries per flow: {entries:?}");
    assert!(entries.iter().all(|(_, e)| e.flags == CT_SNAT));
    assert!(dp.conntrack().is_empty(), "nothing in the IPv4 table");
}

/// See `nic_checks::assert_local_backend_taken_for_remote_is_answered`.
#[test]
fn a_local_ipv6_backend_taken_for_a_remote_one_gets_its_reply_translated_back() {
    let nic = nic_netns::enter();
    let mut dp = Datapath::load();
    dp.set_nic_addr(nic, NODE_ADDR6);
    let key = key(NODE_ADDR6, NODE_PORT, PROTO_TCP, SCOPE_NODE);
    dp.add_frontend_any(
        key,
        1,
        FRONTEND_SNAT_REMOTE,
        &[(LOCAL_POD.into(), 8080, false)],
    );
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    nic_checks::assert_local_backend_taken_for_remote_is_answered(
        &mut dp,
        nic,
        &syn,
        sa(LOCAL_POD, 8080),
        NODE_ADDR6.into(),
    );
}
