//! Packet tests of `nic_ingress`, the XDP program on the node's NICs
//! (NodePort, LoadBalancer ingress IPs, external IPs), run through
//! BPF_PROG_TEST_RUN: a table of cases (`nic_cases`), then the SNAT and
//! forwarding tests that check more than a frame. Each test (and case)
//! moves its thread into a private network
//! namespace (`nic_netns`) so the program's FIB lookups have fixed answers:
//! the other node and the client are known neighbours of `nic0`.
//! Expected frames are built from scratch by `kxdp_testbed::packet`, whose
//! checksum code is independent of the datapath's. Needs root.

use std::net::{Ipv4Addr, SocketAddr};

use kxdp_testbed::{
    cases::{self, nic_case, Case, Count, Frame, Frontend, Hook, Out, Step},
    datapath::{
        datapath_now_s, datapath_s_ago, Datapath, TestBackend, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX,
    },
    nic_checks::{self, arriving, from_client},
    nic_netns::{self, CLIENT, NIC_MAC, NODE_ADDR, OTHER_NODE_MAC},
    packet::{self, Packet, L4, PROTO_ICMP},
};
use proxy_common::maps::{
    addr_to_net, hop_slot, port_to_net, CtEntry, DropReason, FlowKey, FrontendKey, NextHop,
    Verdict, CT_CLOSING, CT_FORWARD, CT_REPLY, CT_SNAT, FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE,
    FRONTEND_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, SCOPE_NODE, SCOPE_POD, SNAT_PORT_MAX,
    SNAT_PORT_MIN,
};

const NODE_PORT: u16 = 30080;
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
const OTHER_LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 2);
/// A LoadBalancer ingress IP routed to this node.
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);

fn sa(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((addr, port))
}

fn node_key(addr: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: addr_to_net(addr),
        port: port_to_net(port),
        proto,
        scope: SCOPE_NODE,
    }
}

fn nodeport() -> SocketAddr {
    sa(NODE_ADDR, NODE_PORT)
}

fn client(port: u16) -> SocketAddr {
    sa(CLIENT, port)
}

/// A datapath in a private namespace with the NodePort frontend 1 (TCP) and
/// 2 (UDP) serving `backends`; returns it with the NIC's ifindex.
fn nodeport_datapath(flags: u32, backends: &[TestBackend]) -> (Datapath, u32) {
    let nic = nic_netns::enter();
    let mut dp = Datapath::load();
    dp.set_nic_addr(nic, NODE_ADDR);
    dp.add_frontend(
        node_key(NODE_ADDR, NODE_PORT, PROTO_TCP),
        1,
        flags,
        backends,
    );
    dp.add_frontend(
        node_key(NODE_ADDR, NODE_PORT, PROTO_UDP),
        2,
        flags,
        backends,
    );
    (dp, nic)
}

// ------------------------------------------------------------ case table

fn nic_frontend(
    addr: Ipv4Addr,
    port: u16,
    proto: u8,
    id: u32,
    flags: u32,
    backends: &[TestBackend],
) -> Frontend {
    nic_checks::frontend(node_key(addr, port, proto), id, flags, backends)
}

/// The NodePort frontends 1 (TCP) and 2 (UDP) of [`nodeport_datapath`].
fn nodeports(flags: u32, backends: &[TestBackend]) -> Vec<Frontend> {
    vec![
        nic_frontend(NODE_ADDR, NODE_PORT, PROTO_TCP, 1, flags, backends),
        nic_frontend(NODE_ADDR, NODE_PORT, PROTO_UDP, 2, flags, backends),
    ]
}

fn nic_cases() -> Vec<Case> {
    let backend = sa(LOCAL_POD, 8080);
    let local = [(LOCAL_POD, 8080, true)];
    // The local pod's answer leaves it through pod_ingress, from the
    // NodePort again, and goes straight out of the NIC towards the client:
    // the stack would drop a packet from a pod with the node's address.
    let answered = |answer: Packet| {
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
    };
    let syn_ack = packet::TCP_SYN | packet::TCP_ACK;
    let lb = sa(LB_IP, 80);
    let mut lb_frontend = nic_frontend(LB_IP, 80, PROTO_TCP, 7, FRONTEND_SOURCE_RANGES, &local);
    lb_frontend.sources = vec![
        (Ipv4Addr::new(192, 168, 50, 0).into(), 25),
        (Ipv4Addr::new(172, 16, 0, 9).into(), 32),
    ];
    // Another frontend's range admits nobody here.
    let mut other = nic_frontend(LB_IP, 81, PROTO_TCP, 8, FRONTEND_SOURCE_RANGES, &local);
    other.sources = vec![(Ipv4Addr::new(192, 168, 50, 128).into(), 25)];
    let ranged = |from: Ipv4Addr| Packet::tcp(sa(from, 40000), lb);
    let mut ping = Packet::tcp(client(0), sa(LB_IP, 0));
    ping.l4 = L4::Other { proto: PROTO_ICMP };
    ping.payload = vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    // A ClusterIP is served from pods, never from outside.
    let cluster_ip = Frontend {
        key: FrontendKey {
            scope: SCOPE_POD,
            ..node_key(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP)
        }
        .into(),
        ..nic_frontend(Ipv4Addr::new(10, 96, 0, 10), 80, PROTO_TCP, 3, 0, &local)
    };
    let untouched = |what, p| arriving(what, p, XDP_PASS, Out::Untouched);

    vec![
        nic_case(
            "a NodePort to a local backend is DNATed and handed to the stack",
            nodeports(FRONTEND_SNAT_REMOTE, &local),
            vec![
                arriving(
                    "SYN",
                    Packet::tcp(client(40000), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                answered(from_client(Packet::tcp(backend, client(40000))).tcp_flags(syn_ack)),
                arriving(
                    "datagram",
                    Packet::udp(client(40001), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                answered(from_client(Packet::udp(backend, client(40001)))),
                arriving(
                    "datagram without a checksum",
                    Packet::udp(client(40002), nodeport()).no_udp_checksum(),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                answered(from_client(Packet::udp(backend, client(40002)))),
            ],
            vec![Count::Packets(1, 1), Count::Packets(2, 2)],
        ),
        // One conntrack rule for every hook: a SYN reuses only an entry
        // known to be open (a SNATed one); a local backend's entry may be a
        // finished connection's, so a SYN on its tuple is balanced afresh.
        nic_case(
            "a SYN on a tuple a local backend served is balanced afresh",
            nodeports(FRONTEND_SNAT_REMOTE, &local),
            vec![
                arriving(
                    "SYN",
                    Packet::tcp(client(40003), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                )
                .then(|dp| {
                    // Another local backend takes over the table; the
                    // first one still exists.
                    let other = node_key(NODE_ADDR, NODE_PORT + 1, PROTO_TCP);
                    dp.add_frontend(other, 5, 0, &[(OTHER_LOCAL_POD, 8080, true)]);
                    let tcp = node_key(NODE_ADDR, NODE_PORT, PROTO_TCP);
                    dp.set_backends(tcp, 1, &[Datapath::backend_id(5, 0)]);
                }),
                arriving(
                    "SYN on the same tuple",
                    Packet::tcp(client(40003), nodeport()),
                    XDP_PASS,
                    Out::Dnat(vec![sa(OTHER_LOCAL_POD, 8080)]),
                )
                .then(|dp| {
                    // The first backend takes the table back: the
                    // connection stays where its SYN went.
                    let tcp = node_key(NODE_ADDR, NODE_PORT, PROTO_TCP);
                    dp.set_backends(tcp, 1, &[Datapath::backend_id(1, 0)]);
                }),
                arriving(
                    "its next segment",
                    Packet::tcp(client(40003), nodeport()).tcp_flags(packet::TCP_ACK),
                    XDP_PASS,
                    Out::DnatAsBefore,
                ),
            ],
            vec![Count::Packets(1, 3)],
        ),
        nic_case(
            "a frontend without endpoints rejects TCP and UDP",
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
                    Packet::udp(client(40001), nodeport()).payload(&[7; 300]),
                    XDP_TX,
                    Out::PortUnreachable,
                ),
            ],
            vec![
                Count::Verdicts(Verdict::RejectedTcp, 1),
                Count::Verdicts(Verdict::RejectedUdp, 1),
                Count::ConntrackEntries(0),
            ],
        ),
        nic_case(
            "policy Local without local endpoints drops silently",
            nodeports(FRONTEND_EMPTY_DROP, &[]),
            vec![arriving(
                "SYN",
                Packet::tcp(client(40000), nodeport()),
                XDP_DROP,
                Out::Dropped(DropReason::NoLocalBackend),
            )],
            vec![
                Count::Drops(DropReason::NoLocalBackend, 1),
                Count::Verdicts(Verdict::RejectedTcp, 0),
            ],
        ),
        nic_case(
            "source ranges admit only their clients",
            vec![lb_frontend, other],
            vec![
                arriving(
                    "inside a /25",
                    ranged(Ipv4Addr::new(192, 168, 50, 100)),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                arriving(
                    "its last address",
                    ranged(Ipv4Addr::new(192, 168, 50, 127)),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                arriving(
                    "a /32",
                    ranged(Ipv4Addr::new(172, 16, 0, 9)),
                    XDP_PASS,
                    Out::Dnat(vec![backend]),
                ),
                arriving(
                    "another frontend's range",
                    ranged(Ipv4Addr::new(192, 168, 50, 200)),
                    XDP_DROP,
                    Out::Dropped(DropReason::SourceRange),
                ),
                arriving(
                    "next to the /32",
                    ranged(Ipv4Addr::new(172, 16, 0, 10)),
                    XDP_DROP,
                    Out::Dropped(DropReason::SourceRange),
                ),
            ],
            vec![Count::Drops(DropReason::SourceRange, 2)],
        ),
        nic_case(
            "traffic that is not for a node frontend passes untouched",
            {
                let mut frontends = nodeports(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
                frontends.push(cluster_ip);
                frontends
            },
            vec![
                untouched(
                    "ssh to the node",
                    Packet::tcp(client(40000), sa(NODE_ADDR, 22)),
                ),
                untouched(
                    "NodePort on another address",
                    Packet::tcp(client(40000), sa(Ipv4Addr::new(192, 168, 50, 9), NODE_PORT)),
                ),
                untouched(
                    "ClusterIP from outside",
                    Packet::tcp(client(40000), sa(Ipv4Addr::new(10, 96, 0, 10), 80)),
                ),
                untouched(
                    "SNAT port range without a flow",
                    Packet::tcp(sa(REMOTE_POD, 8080), sa(NODE_ADDR, 61000)),
                ),
                untouched("ICMP echo to an external address", ping),
            ],
            vec![Count::ConntrackEntries(0)],
        ),
    ]
}

#[test]
fn nic_packet_cases() {
    cases::run(nic_cases());
}

// ------------------------------------------------------------ SNAT

/// The SNAT port a remote-backend flow got, checking the rest of the frame.
fn assert_snated(out: &[u8], request: &Packet, backend: SocketAddr) -> u16 {
    nic_checks::assert_snated(out, request, backend, NODE_ADDR.into())
}

#[test]
fn an_established_nodeport_flow_goes_on_without_its_frontend_while_its_backend_exists() {
    let local = sa(LOCAL_POD, 8080);
    let (mut dp, nic) = nodeport_datapath(0, &[(LOCAL_POD, 8080, true)]);
    let syn = from_client(Packet::tcp(client(41_001), nodeport()));
    let (verdict, _) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_PASS);
    dp.remove_frontend(node_key(NODE_ADDR, NODE_PORT, PROTO_TCP));
    // Conntrack first at the NIC: the flow's next segment needs no frontend.
    let ack = from_client(Packet::tcp(client(41_001), nodeport()).tcp_flags(packet::TCP_ACK));
    let (verdict, out) = dp.run_nic(&ack.build(), nic);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, ack.clone().with_dst(local).build());
    assert_eq!(dp.stats(1).packets, 2, "counted for its frontend");
    // A new connection has no frontend to go to.
    let new = from_client(Packet::tcp(client(41_002), nodeport())).build();
    let (verdict, out) = dp.run_nic(&new, nic);
    assert_eq!((verdict, &out), (XDP_PASS, &new));
}

#[test]
fn a_next_hop_is_asked_of_the_fib_once_a_second() {
    let backend = sa(REMOTE_POD, 8080);
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let syn = from_client(Packet::tcp(client(40_100), nodeport()));
    let (verdict, out) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_snated(&out, &syn, backend);
    let hops = dp.next_hops();
    if dp.nic_on_loopback() {
        // Run on the loopback standing in for the NIC (before 5.15), the
        // packet left by redirect to the NIC: hops are learnt only for
        // packets going back out of the NIC they came in on.
        assert!(hops.is_empty(), "{hops:?}");
        return;
    }
    // Learnt from the FIB: the other node's and the NIC's addresses.
    let [hop] = hops.as_slice() else {
        panic!("one next hop expected: {hops:?}");
    };
    assert_eq!(
        (hop.dst, hop.src, hop.ifindex),
        (addr_to_net(REMOTE_POD), addr_to_net(NODE_ADDR), nic)
    );
    assert_eq!((hop.dmac, hop.smac), (OTHER_NODE_MAC, NIC_MAC));
    let ack = from_client(Packet::tcp(client(40_100), nodeport()).tcp_flags(packet::TCP_ACK));
    // Within its second the learnt hop is used as it is (made recognisable
    // here); a hop from an earlier second, or one learnt for another
    // destination or source sharing its slot, is asked of the FIB again. The clock
    // may tick in between: then the round is tried again.
    let marked = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
    let mut used_as_learnt = false;
    for _ in 0..3 {
        let now = datapath_now_s();
        dp.insert_next_hop(NextHop {
            stamp: now,
            dmac: marked,
            ..*hop
        });
        let (verdict, out) = dp.run_nic(&ack.build(), nic);
        assert_eq!(verdict, XDP_TX);
        if out[..6] == marked {
            used_as_learnt = true;
            break;
        }
        assert_ne!(datapath_now_s(), now, "not used: {:02x?}", &out[..12]);
    }
    assert!(used_as_learnt, "the clock ticked in every round");
    for stale in [
        NextHop {
            stamp: datapath_s_ago(1),
            dmac: marked,
            ..*hop
        },
        NextHop {
            stamp: datapath_now_s(),
            dmac: marked,
            ..sharing_its_slot(hop, |h, i| NextHop {
                dst: h.dst.wrapping_add(i),
                ..*h
            })
        },
        NextHop {
            stamp: datapath_now_s(),
            dmac: marked,
            ..sharing_its_slot(hop, |h, i| NextHop {
                src: h.src.wrapping_add(i),
                ..*h
            })
        },
    ] {
        dp.insert_next_hop(stale);
        let (verdict, out) = dp.run_nic(&ack.build(), nic);
        assert_eq!(verdict, XDP_TX);
        assert_snated(&out, &ack, backend);
    }
}

/// The first of `step(hop, 1)`, `step(hop, 2)`, … whose slot is `hop`'s.
fn sharing_its_slot(hop: &NextHop, step: impl Fn(&NextHop, u32) -> NextHop) -> NextHop {
    let slot = |h: &NextHop| hop_slot(h.dst, h.src, h.ifindex);
    (1..u32::MAX)
        .map(|i| step(hop, i))
        .find(|other| slot(other) == slot(hop))
        .expect("the slots are fewer than the addresses")
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_back() {
    let backend = sa(REMOTE_POD, 8080);
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    let (verdict, out) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_TX, "back out of the NIC it came in on");
    let port = assert_snated(&out, &syn, backend);

    // Later packets of the flow keep its SNAT port.
    let ack = from_client(Packet::tcp(client(40000), nodeport()).tcp_flags(packet::TCP_ACK));
    let (verdict, out) = dp.run_nic(&ack.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(assert_snated(&out, &ack, backend), port);

    // The backend's reply reaches this node's address and SNAT port; it
    // leaves for the client from the NodePort the client contacted.
    let reply =
        Packet::tcp(backend, sa(NODE_ADDR, port)).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
    nic_checks::assert_reply_translated_back(&mut dp, nic, reply, nodeport(), client(40000));

    let entries = dp.conntrack();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().all(|(_, e)| e.flags == CT_SNAT));
}

/// The FIB's MTU check is made on the bytes the frame holds: an IPv4
/// total length claiming 52,749 bytes (the differential fuzzer's find)
/// was sent back out when the next hop was cached this second and passed
/// to the stack when the FIB was asked.
#[test]
fn a_wrong_ip_length_field_does_not_decide_the_forwarding() {
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let mut syn = from_client(Packet::tcp(client(40000), nodeport())).build();
    let tot_len = packet::ETH_HLEN + 2;
    syn[tot_len..tot_len + 2].copy_from_slice(&0xce0du16.to_be_bytes());
    let (verdict, out) = dp.run_nic(&syn, nic);
    assert_eq!(verdict, XDP_TX, "sent on with its hop from the FIB");
    assert_eq!(out[0..6], OTHER_NODE_MAC, "to the other node");
}

#[test]
fn snat_ports_are_not_shared_and_every_reply_finds_its_client() {
    let backend = sa(REMOTE_POD, 8080);
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let mut ports = std::collections::BTreeMap::new();
    // Many clients using the same source port towards the one backend.
    for host in 1..=50u8 {
        let from = sa(Ipv4Addr::new(192, 168, 50, 100 + host), 40000);
        let request = from_client(Packet::udp(from, nodeport()));
        let (verdict, out) = dp.run_nic(&request.build(), nic);
        // Only .100 is a known neighbour: a reply to the others goes to the stack.
        assert_eq!(verdict, XDP_TX);
        let port = packet::src(&out).port();
        assert_eq!(packet::dst(&out), backend);
        assert!(ports.insert(port, from).is_none(), "port {port} reused");
    }
    for (port, from) in ports {
        let reply = Packet::udp(backend, sa(NODE_ADDR, port));
        let (verdict, out) = dp.run_nic(&reply.build(), nic);
        assert_eq!(
            verdict, XDP_PASS,
            "no neighbour entry: the stack resolves it"
        );
        packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((packet::src(&out), packet::dst(&out)), (nodeport(), from));
    }
}

#[test]
fn a_remote_backend_without_a_route_is_left_to_the_stack() {
    let unrouted = sa(Ipv4Addr::new(10, 9, 9, 9), 8080);
    let (mut dp, nic) = nodeport_datapath(
        FRONTEND_SNAT_REMOTE,
        &[(packet::ipv4(unrouted.ip()), 8080, false)],
    );
    let request = from_client(Packet::tcp(client(40000), nodeport()));
    let (verdict, out) = dp.run_nic(&request.build(), nic);
    assert_eq!(verdict, XDP_PASS);
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(packet::dst(&out), unrouted);
    assert_eq!(
        packet::ipv4(packet::src(&out).ip()),
        NODE_ADDR,
        "translated all the same"
    );
    assert_eq!(
        out[packet::ETH_HLEN + 8],
        request.ttl,
        "TTL is the stack's to lower"
    );
}

/// See `nic_checks::assert_local_backend_taken_for_remote_is_answered`.
#[test]
fn a_local_backend_taken_for_a_remote_one_gets_its_reply_translated_back() {
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(LOCAL_POD, 8080, false)]);
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    let backend = sa(LOCAL_POD, 8080);
    nic_checks::assert_local_backend_taken_for_remote_is_answered(
        &mut dp,
        nic,
        &syn,
        backend,
        NODE_ADDR.into(),
    );
}

fn flow_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: addr_to_net(packet::ipv4(src.ip())),
        dst_addr: addr_to_net(packet::ipv4(dst.ip())),
        src_port: port_to_net(src.port()),
        dst_port: port_to_net(dst.port()),
        proto,
        _pad: [0; 3],
    }
}

/// How the flows holding every SNAT port towards one backend look.
#[derive(Clone, Copy)]
struct Holders {
    /// Seconds since their last packet.
    idle: u32,
    /// `CT_CLOSING` on their forward entries.
    closing: bool,
    /// Whether their forward entries still exist.
    forward: bool,
}

/// Occupies every SNAT port of (backend, node address, `proto`) with flows
/// of other clients to the NodePort, as the datapath would have made them.
fn hold_every_snat_port(dp: &mut Datapath, backend: SocketAddr, proto: u8, holders: Holders) {
    let last_seen = datapath_s_ago(holders.idle);
    for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
        let client = sa(Ipv4Addr::new(172, 16, (port >> 8) as u8, port as u8), 40000);
        let node = sa(NODE_ADDR, port);
        let entry = |direction, nat: SocketAddr, snat: SocketAddr, flags| CtEntry {
            nat_addr: addr_to_net(packet::ipv4(nat.ip())),
            nat_port: port_to_net(nat.port()),
            direction,
            flags: CT_SNAT | flags,
            frontend_id: 1,
            backend_id: Datapath::backend_id(1, 0),
            snat_addr: addr_to_net(packet::ipv4(snat.ip())),
            snat_port: port_to_net(snat.port()),
            last_seen,
            ..CtEntry::default()
        };
        let reply = entry(CT_REPLY, nodeport(), client, 0);
        dp.insert_conntrack(flow_key(backend, node, proto), reply);
        if holders.forward {
            let closing = if holders.closing { CT_CLOSING } else { 0 };
            let forward = entry(CT_FORWARD, backend, node, closing);
            dp.insert_conntrack(flow_key(client, nodeport(), proto), forward);
        }
    }
}

/// The first packet of a flow of `proto` from the client to the NodePort.
fn new_flow(proto: u8) -> Packet {
    if proto == PROTO_TCP {
        Packet::tcp(client(40000), nodeport())
    } else {
        Packet::udp(client(40000), nodeport())
    }
}

#[test]
fn snat_ports_of_live_flows_are_never_taken_over() {
    let backend = sa(REMOTE_POD, 8080);
    for (proto, holders) in [
        (
            PROTO_TCP,
            Holders {
                idle: 5,
                closing: false,
                forward: true,
            },
        ),
        (
            PROTO_TCP,
            Holders {
                idle: 3,
                closing: true,
                forward: true,
            },
        ),
        (
            PROTO_UDP,
            Holders {
                idle: 30,
                closing: false,
                forward: true,
            },
        ),
    ] {
        let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
        hold_every_snat_port(&mut dp, backend, proto, holders);
        let entries = dp.conntrack_len();
        let request = new_flow(proto);
        let (verdict, _) = dp.run_nic(&from_client(request).build(), nic);
        assert_eq!(verdict, XDP_DROP, "proto {proto}");
        assert_eq!(dp.drops(DropReason::SnatPortsExhausted), 1);
        assert_eq!(dp.conntrack_len(), entries, "nothing taken over");
    }
}

#[test]
fn snat_ports_of_gone_closed_or_idle_flows_are_taken_over() {
    let backend = sa(REMOTE_POD, 8080);
    for (name, proto, holders) in [
        (
            "forward entries gone",
            PROTO_TCP,
            Holders {
                idle: 0,
                closing: false,
                forward: false,
            },
        ),
        (
            "closed 20 s ago",
            PROTO_TCP,
            Holders {
                idle: 20,
                closing: true,
                forward: true,
            },
        ),
        (
            "TCP idle for 2 h",
            PROTO_TCP,
            Holders {
                idle: 7200,
                closing: false,
                forward: true,
            },
        ),
        (
            "UDP idle for 90 s",
            PROTO_UDP,
            Holders {
                idle: 90,
                closing: false,
                forward: true,
            },
        ),
    ] {
        let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
        hold_every_snat_port(&mut dp, backend, proto, holders);
        let entries = dp.conntrack_len();
        let request = new_flow(proto);
        let (verdict, out) = dp.run_nic(&from_client(request).build(), nic);
        assert_eq!(verdict, XDP_TX, "{name}");
        let port = packet::src(&out).port();
        // The old holder's forward entry went with its port, so its next
        // packet opens a flow of its own instead of sharing this one.
        let old_client = sa(Ipv4Addr::new(172, 16, (port >> 8) as u8, port as u8), 40000);
        let entries_now: std::collections::BTreeMap<FlowKey, CtEntry> =
            dp.conntrack().into_iter().collect();
        assert!(
            !entries_now.contains_key(&flow_key(old_client, nodeport(), proto)),
            "{name}"
        );
        let reply = &entries_now[&flow_key(backend, sa(NODE_ADDR, port), proto)];
        assert_eq!(
            reply.snat_addr,
            addr_to_net(CLIENT),
            "{name}: the port is ours now"
        );
        // Our forward entry replaces the holder's, our reply entry its reply.
        let added = usize::from(!holders.forward);
        assert_eq!(dp.conntrack_len(), entries + added, "{name}");
    }
}

#[test]
fn snated_flows_record_their_packets_and_their_end() {
    let backend = sa(REMOTE_POD, 8080);
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    let (_, out) = dp.run_nic(&syn.build(), nic);
    let port = packet::src(&out).port();
    let entry = |dp: &mut Datapath, key: FlowKey| {
        dp.conntrack()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| e)
            .expect("entry")
    };
    let forward_key = flow_key(client(40000), nodeport(), PROTO_TCP);
    let reply_key = flow_key(backend, sa(NODE_ADDR, port), PROTO_TCP);
    // Stamped at creation, both directions.
    for key in [forward_key, reply_key] {
        let e = entry(&mut dp, key);
        assert!(datapath_now_s() - e.last_seen <= 1, "{e:?}");
        assert_eq!(e.flags, CT_SNAT);
    }
    // Age both, then a reply refreshes its own entry.
    let mut aged = entry(&mut dp, reply_key);
    aged.last_seen = datapath_s_ago(100);
    dp.insert_conntrack(reply_key, aged);
    let answer =
        Packet::tcp(backend, sa(NODE_ADDR, port)).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
    dp.run_nic(&answer.build(), nic);
    assert!(datapath_now_s() - entry(&mut dp, reply_key).last_seen <= 1);
    // The client's FIN marks its entry closing...
    let fin = from_client(Packet::tcp(client(40000), nodeport()).tcp_flags(0x11));
    assert_eq!(dp.run_nic(&fin.build(), nic).0, XDP_TX);
    assert_eq!(entry(&mut dp, forward_key).flags, CT_SNAT | CT_CLOSING);
    // ...and a new connection on the same tuple is a new flow, on another
    // port: the closing one may still see its last packets.
    let (verdict, out) = dp.run_nic(&syn.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_ne!(packet::src(&out).port(), port);
    assert_eq!(entry(&mut dp, forward_key).flags, CT_SNAT);
}

#[test]
fn a_remote_backend_behind_another_interface_is_redirected_only_to_a_nic_of_ours() {
    let behind = Ipv4Addr::new(10, 1, 3, 2);
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(behind, 8080, false)]);
    let second = nic_netns::add_second_nic();
    let request = from_client(Packet::tcp(client(40000), nodeport()));
    // Not one of ours (a tunnel or bridge would drop XDP frames): the stack
    // forwards the translated packet.
    let (verdict, out) = dp.run_nic(&request.build(), nic);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(packet::dst(&out), sa(behind, 8080));
    // One of ours: redirected from the driver.
    dp.clear_conntrack();
    dp.set_nic_addr(second, Ipv4Addr::new(192, 168, 51, 1));
    let (verdict, out) = dp.run_nic(&request.build(), nic);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(packet::dst(&out), sa(behind, 8080));
    assert_eq!(out[0..6], [0x02, 0, 0, 0, 0, 0xd2], "the next hop's MAC");
}

#[test]
fn a_nodeport_connection_whose_backend_left_is_reset() {
    let (mut dp, nic) = nodeport_datapath(FRONTEND_SNAT_REMOTE, &[(REMOTE_POD, 8080, false)]);
    let syn = from_client(Packet::tcp(client(40000), nodeport()));
    assert_eq!(dp.run_nic(&syn.build(), nic).0, XDP_TX);
    let ack = from_client(Packet::tcp(client(40000), nodeport()).tcp_flags(packet::TCP_ACK));
    assert_eq!(dp.run_nic(&ack.build(), nic).0, XDP_TX);
    dp.remove_backend(Datapath::backend_id(1, 0));
    let (verdict, out) = dp.run_nic(&ack.build(), nic);
    assert_eq!(verdict, XDP_TX, "answered from the NIC");
    packet::assert_rst_answers(&out, &ack);
}
