//! Packet tests of the pod programs over IPv6, as data (`kxdp_testbed::cases`):
//! DNAT and reverse NAT past extension headers, rejects (TCP RST, ICMPv6
//! port unreachable), hairpin, source ranges, and what must pass untouched
//! (fragments, neighbour discovery, router advertisements, MLD, echo,
//! truncated headers). Every output frame is compared whole, checksums by
//! `kxdp_testbed::packet`'s own arithmetic over the IPv6 pseudo-header.
//! Needs root; panics rather than skipping without it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use kxdp_testbed::{
    cases::{
        self, entering_pod as into_pod, from_chosen, leaving_pod as out, pod_case as case, Case,
        Count, Frame, Frontend, Hook, Out, Step,
    },
    datapath::{pod_key, pod_key6, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packet::{
        self, Packet, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, PROTO_ICMPV6,
    },
};
use proxy_common::maps::{
    DropReason, Verdict, FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
};

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn sa6(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(v6(addr)), port)
}

const CLIENT: &str = "fd00:10:244:1::5";
const VIP: &str = "fd00:10:96::a";
const TCP_ID: u32 = 1;
const UDP_ID: u32 = 2;

fn client(port: u16) -> SocketAddr {
    sa6(CLIENT, port)
}

fn tcp_vip() -> SocketAddr {
    sa6(VIP, 80)
}

fn udp_vip() -> SocketAddr {
    sa6(VIP, 53)
}

fn tcp_backends() -> Vec<SocketAddr> {
    vec![
        sa6("fd00:10:244:2::7", 8080),
        sa6("fd00:10:244:3::8", 8080),
        // On the service port itself: the address changes, the port not.
        sa6("fd00:10:244:4::9", 80),
    ]
}

fn udp_backends() -> Vec<SocketAddr> {
    vec![sa6("fd00:10:244:2::7", 5353)]
}

fn frontend(vip: SocketAddr, proto: u8, id: u32, flags: u32, backends: &[SocketAddr]) -> Frontend {
    let IpAddr::V6(addr) = vip.ip() else {
        panic!("{vip} is not IPv6")
    };
    Frontend {
        key: pod_key6(addr, vip.port(), proto).into(),
        id,
        flags,
        backends: backends.iter().map(|b| (b.ip(), b.port(), false)).collect(),
        sources: Vec::new(),
    }
}

fn services() -> Vec<Frontend> {
    vec![
        frontend(tcp_vip(), PROTO_TCP, TCP_ID, 0, &tcp_backends()),
        frontend(udp_vip(), PROTO_UDP, UDP_ID, 0, &udp_backends()),
    ]
}

fn untouched(what: &str, frame: Vec<u8>) -> Step {
    Step::new(
        what,
        Hook::PodIngress,
        Frame::Raw(frame),
        TC_ACT_OK,
        Out::Untouched,
    )
}

const SYN_ACK: u8 = packet::TCP_SYN | packet::TCP_ACK;
/// A PadN option filling an 8-byte options header.
const PAD: [u8; 6] = [1, 4, 0, 0, 0, 0];

/// ICMPv6 of `kind` (and code 0) from the client to `dst`, its checksum
/// over the IPv6 pseudo-header.
fn icmpv6(dst: &str, kind: u8, body: &[u8]) -> Vec<u8> {
    let (src, dst) = (client(0), sa6(dst, 0));
    let mut message = vec![kind, 0, 0, 0];
    message.extend_from_slice(body);
    let check = packet::l4_checksum(src.ip(), dst.ip(), PROTO_ICMPV6, &message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut p = Packet::other(src, dst, PROTO_ICMPV6).payload(&message);
    p.ttl = 255;
    p.build()
}

/// What is no frontend's business: control traffic a node lives on, and
/// headers the programs must not follow.
fn untouched_steps() -> Vec<Step> {
    let eth = packet::ETH_HLEN;
    let syn = Packet::tcp(client(40100), tcp_vip()).build();
    let vsyn = Packet::tcp(client(40100), tcp_vip()).vlan(3).build();
    let vip_bytes = v6(VIP).octets();
    // Neighbour solicitation for the VIP (its target), sent to its
    // solicited-node group; an advertisement back; a router advertisement;
    // an MLDv2 report; an echo request to the VIP.
    let mut solicitation = vec![0; 4];
    solicitation.extend_from_slice(&vip_bytes);
    let mut advertisement = vec![0x60, 0, 0, 0];
    advertisement.extend_from_slice(&vip_bytes);
    let later_fragment =
        Packet::udp(client(40101), udp_vip()).ipv6_ext(IPV6_FRAGMENT, &[0x05, 0x28, 0, 0, 0, 1]);
    let first_fragment =
        Packet::tcp(client(40102), tcp_vip()).ipv6_ext(IPV6_FRAGMENT, &[0, 1, 0, 0, 0, 1]);
    // A routing header with a segment left: the VIP would be a waypoint.
    let mut waypoint = vec![0, 1, 0, 0, 0, 0];
    waypoint.extend_from_slice(&v6("fd00:10:244:9::1").octets());
    let routed = Packet::tcp(client(40107), tcp_vip()).ipv6_ext(IPV6_ROUTING, &waypoint);
    // An unknown next header (ESP) in front of the ports.
    let mut esp = Packet::tcp(client(40103), tcp_vip()).build();
    esp[eth + 6] = 50;
    vec![
        untouched(
            "neighbour solicitation for the VIP",
            icmpv6("ff02::1:ff00:a", 135, &solicitation),
        ),
        untouched(
            "neighbour advertisement",
            icmpv6("fe80::1", 136, &advertisement),
        ),
        untouched(
            "router advertisement",
            icmpv6("ff02::1", 134, &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        untouched("MLDv2 report", icmpv6("ff02::16", 143, &[0, 0, 0, 0])),
        untouched("echo request to the VIP", icmpv6(VIP, 128, &[0, 1, 0, 1])),
        untouched(
            "VIP, other port",
            Packet::tcp(client(40104), sa6(VIP, 443)).build(),
        ),
        untouched(
            "VIP, other protocol",
            Packet::udp(client(40105), tcp_vip()).build(),
        ),
        untouched("a later fragment", later_fragment.build()),
        untouched("a first fragment of more", first_fragment.build()),
        untouched("an unknown next header", esp),
        untouched("a routing header with segments left", routed.build()),
        // BPF_PROG_TEST_RUN refuses untagged frames shorter than the
        // family's header, so the cut IPv6 headers hide behind a VLAN tag.
        untouched("IPv6 header cut at 30 bytes", vsyn[..eth + 4 + 30].to_vec()),
        untouched("TCP header cut at 12 bytes", syn[..eth + 40 + 12].to_vec()),
        untouched(
            "extension header cut",
            Packet::tcp(client(40106), tcp_vip())
                .ipv6_ext(IPV6_HOP_BY_HOP, &PAD)
                .build()[..eth + 40 + 4]
                .to_vec(),
        ),
    ]
}

fn ipv6_cases() -> Vec<Case> {
    let no_backends_tcp = sa6("fd00:10:96::14", 80);
    let no_backends_udp = sa6("fd00:10:96::15", 53);
    let pod = sa6("fd00:10:244:1::9", 8080);
    let pod_vip = sa6("fd00:10:96::46", 80);
    let lb = sa6("fd00:192:168:60::a", 80);
    let mut lb_frontend = frontend(
        lb,
        PROTO_TCP,
        9,
        FRONTEND_SOURCE_RANGES,
        &tcp_backends()[..1],
    );
    lb_frontend
        .sources
        .push((IpAddr::V6(v6("fd00:10:244:1::")), 64));
    let v4_vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let v4_backend = SocketAddr::from(([10, 244, 1, 5], 8080));
    let dual_stack = vec![
        Frontend {
            key: pod_key([10, 96, 0, 10].into(), 80, PROTO_TCP).into(),
            id: 5,
            flags: 0,
            backends: vec![(v4_backend.ip(), v4_backend.port(), false)],
            sources: Vec::new(),
        },
        frontend(tcp_vip(), PROTO_TCP, 6, 0, &tcp_backends()[..1]),
    ];
    vec![
        case(
            "a connection to an IPv6 ClusterIP is DNATed and its replies reverse-NATed",
            services(),
            vec![
                out(
                    "SYN",
                    Packet::tcp(client(40000), tcp_vip()),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()),
                ),
                into_pod(
                    "SYN-ACK into the client",
                    from_chosen(|b| Packet::tcp(b, client(40000)).tcp_flags(SYN_ACK)),
                    TC_ACT_OK,
                    Out::ReverseNat(tcp_vip()),
                ),
                out(
                    "ACK",
                    Packet::tcp(client(40000), tcp_vip())
                        .tcp_flags(packet::TCP_ACK)
                        .payload(&[0x42; 300]),
                    TC_ACT_OK,
                    Out::DnatAsBefore,
                ),
            ],
            vec![Count::Packets(TCP_ID, 2), Count::ConntrackEntries(2)],
        ),
        case(
            "a datagram to an IPv6 ClusterIP is DNATed and its answer reverse-NATed",
            services(),
            vec![
                out(
                    "query",
                    Packet::udp(client(40001), udp_vip()),
                    TC_ACT_OK,
                    Out::Dnat(udp_backends()),
                ),
                into_pod(
                    "answer",
                    from_chosen(|b| Packet::udp(b, client(40001))),
                    TC_ACT_OK,
                    Out::ReverseNat(udp_vip()),
                ),
            ],
            vec![Count::Packets(UDP_ID, 1)],
        ),
        case(
            "extension headers before the ports are walked past",
            services(),
            vec![
                out(
                    "hop-by-hop options",
                    Packet::tcp(client(40002), tcp_vip()).ipv6_ext(IPV6_HOP_BY_HOP, &PAD),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()),
                ),
                out(
                    "hop-by-hop, routing (no segments left), destination options",
                    Packet::udp(client(40003), udp_vip())
                        .ipv6_ext(IPV6_HOP_BY_HOP, &PAD)
                        .ipv6_ext(IPV6_ROUTING, &[0, 0, 0, 0, 0, 0])
                        .ipv6_ext(IPV6_DEST_OPTS, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                    TC_ACT_OK,
                    Out::Dnat(udp_backends()),
                ),
                out(
                    "an atomic fragment (offset 0, no more)",
                    Packet::tcp(client(40004), tcp_vip())
                        .ipv6_ext(IPV6_FRAGMENT, &[0, 0, 0, 0, 0, 7]),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()),
                ),
                out(
                    "VLAN-tagged",
                    Packet::tcp(client(40005), tcp_vip()).vlan(9),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()),
                ),
            ],
            vec![Count::Packets(TCP_ID, 3), Count::Packets(UDP_ID, 1)],
        ),
        case(
            "what is no frontend's passes untouched",
            services(),
            untouched_steps(),
            vec![Count::ConntrackEntries(0)],
        ),
        case(
            "an IPv6 frontend without backends answers with RST or ICMPv6 port unreachable",
            vec![
                frontend(no_backends_tcp, PROTO_TCP, 3, 0, &[]),
                frontend(no_backends_udp, PROTO_UDP, 4, 0, &[]),
            ],
            vec![
                out(
                    "SYN",
                    Packet::tcp(client(40006), no_backends_tcp),
                    TC_ACT_REDIRECT,
                    Out::Rst,
                ),
                out(
                    "segment with ACK and data",
                    Packet::tcp(client(40006), no_backends_tcp)
                        .tcp_flags(packet::TCP_ACK)
                        .payload(&[7; 40]),
                    TC_ACT_REDIRECT,
                    Out::Rst,
                ),
                out(
                    "datagram",
                    Packet::udp(client(40007), no_backends_udp).payload(&[1; 64]),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
                out(
                    "datagram of odd length, quoted whole",
                    Packet::udp(client(40009), no_backends_udp).payload(b"query"),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
                out(
                    "datagram longer than the minimum MTU allows to quote",
                    Packet::udp(client(40010), no_backends_udp).payload(&[0xa5; 1400]),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
                out(
                    "RST",
                    Packet::tcp(client(40006), no_backends_tcp).tcp_flags(0x04),
                    TC_ACT_SHOT,
                    Out::Dropped(DropReason::NoBackend),
                ),
                out(
                    "behind an extension header: not answered",
                    Packet::udp(client(40008), no_backends_udp).ipv6_ext(IPV6_DEST_OPTS, &PAD),
                    TC_ACT_SHOT,
                    Out::Dropped(DropReason::RejectFailed),
                ),
            ],
            vec![
                Count::Verdicts(Verdict::RejectedTcp, 2),
                Count::Verdicts(Verdict::RejectedUdp, 3),
                Count::ConntrackEntries(0),
            ],
        ),
        hairpin(pod, pod_vip),
        case(
            "loadBalancerSourceRanges admit IPv6 clients by prefix",
            vec![lb_frontend],
            vec![
                out(
                    "from inside the /64",
                    Packet::tcp(client(40009), lb),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()[..1].to_vec()),
                ),
                out(
                    "from outside it",
                    Packet::tcp(sa6("fd00:10:244:7::5", 40009), lb),
                    TC_ACT_SHOT,
                    Out::Dropped(DropReason::SourceRange),
                ),
            ],
            vec![],
        ),
        case(
            "a dual-stack Service's families each go to their own backends",
            dual_stack,
            vec![
                out(
                    "IPv4",
                    Packet::tcp(SocketAddr::from(([10, 244, 9, 9], 40010)), v4_vip),
                    TC_ACT_OK,
                    Out::Dnat(vec![v4_backend]),
                ),
                out(
                    "IPv6",
                    Packet::tcp(client(40010), tcp_vip()),
                    TC_ACT_OK,
                    Out::Dnat(tcp_backends()[..1].to_vec()),
                ),
            ],
            vec![
                Count::Packets(5, 1),
                Count::Packets(6, 1),
                Count::ConntrackEntries(4),
            ],
        ),
        case(
            "ClientIP affinity holds for an IPv6 client",
            vec![frontend(
                tcp_vip(),
                PROTO_TCP,
                TCP_ID,
                FRONTEND_AFFINITY_CLIENT_IP,
                &tcp_backends(),
            )],
            (0..6)
                .map(|i| {
                    let expect = if i == 0 {
                        Out::Dnat(tcp_backends())
                    } else {
                        Out::DnatAsBefore
                    };
                    out(
                        "SYN from another port",
                        Packet::tcp(client(41000 + i), tcp_vip()),
                        TC_ACT_OK,
                        expect,
                    )
                })
                .collect(),
            vec![Count::ConntrackEntries(12)],
        ),
    ]
}

/// A pod reaching itself through its Service: the VIP stands in as the
/// client, with the client's port, both ways.
fn hairpin(pod: SocketAddr, vip: SocketAddr) -> Case {
    let client = SocketAddr::new(pod.ip(), 40000);
    let stand_in = SocketAddr::new(vip.ip(), client.port());
    let request = Packet::tcp(client, vip);
    let request_in = Packet {
        src_mac: request.dst_mac,
        dst_mac: request.src_mac,
        ..request.clone()
    };
    let answer = Packet::tcp(pod, stand_in).tcp_flags(SYN_ACK);
    let answer_in = Packet {
        src_mac: answer.dst_mac,
        dst_mac: answer.src_mac,
        ..answer.clone()
    };
    case(
        "an IPv6 pod reaching itself through its Service sees the VIP as the client",
        vec![frontend(vip, PROTO_TCP, 7, 0, &[pod])],
        vec![
            out(
                "request",
                request,
                TC_ACT_REDIRECT,
                Out::Exactly(request_in.with_src(stand_in).with_dst(pod)),
            ),
            out(
                "answer",
                answer,
                TC_ACT_REDIRECT,
                Out::Exactly(answer_in.with_src(vip).with_dst(client)),
            ),
        ],
        vec![Count::ConntrackEntries(2)],
    )
}

#[test]
fn ipv6_pod_packet_cases() {
    cases::run(ipv6_cases());
}

/// The RST's ack counts the segment's data as its IPv6 payload length says,
/// past 16 bits of total length (the differential fuzzer's find: a payload
/// length of 65,504 plus the header saturated at 65,535, nine short).
#[test]
fn a_rst_acknowledges_a_payload_length_past_16_bits_of_total_length() {
    let vip = sa6("fd00:10:96::14", 80);
    let mut dp = kxdp_testbed::datapath::Datapath::load();
    let IpAddr::V6(vip_addr) = vip.ip() else {
        unreachable!()
    };
    dp.add_frontend_any(pod_key6(vip_addr, vip.port(), PROTO_TCP), 3, 0, &[]);
    let mut syn = Packet::tcp(client(40006), vip).build();
    let payload_len = packet::ETH_HLEN + 4;
    syn[payload_len..payload_len + 2].copy_from_slice(&0xffe0u16.to_be_bytes());
    let (verdict, out) = dp.run(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "answered");
    let tcp = packet::ETH_HLEN + 40;
    let ack = u32::from_be_bytes(out[tcp + 8..tcp + 12].try_into().unwrap());
    // The SYN's sequence number, its data (65,504 less the TCP header) and
    // the SYN itself.
    assert_eq!(ack, 0x0102_0304 + (0xffe0 - 20) + 1);
}
