//! Packet tests of the pod programs (`pod_ingress`, `pod_egress`) through
//! BPF_PROG_TEST_RUN: a table of cases (`pod_cases`, run by
//! `kxdp_testbed::cases`), then the properties a table does not express
//! (spread, Maglev slots, table swaps, affinity over time). Each packet's
//! verdict and whole output frame are asserted: the expected frame is built
//! from scratch (checksums computed by `kxdp_testbed::packet`, not by the
//! kernel) and compared byte for byte. Needs root; panics rather than
//! skipping without it.

use std::{collections::BTreeMap, net::Ipv4Addr, net::SocketAddr};

use kxdp_testbed::{
    cases::{
        self, assert_only_changed, entering_pod as into_pod, from_chosen, leaving_pod as out,
        nat_fields, pod_case as case, Case, Count, Frame, Frontend, Hook, Out, Step,
    },
    datapath::{datapath_now_s, datapath_s_ago, Datapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packet::{self, ethernet, Packet, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, L4, PROTO_ICMP},
};
use proxy_common::hash::flow_hash;
use proxy_common::maps::{
    addr_to_net, port_roles, port_to_net, AffinityKey, AffinityValue, DropReason, FrontendKey,
    Verdict, CT_FORWARD, CT_REPLY, FRONTEND_EMPTY_DROP, FRONTEND_SOURCE_RANGES, PROTO_TCP,
    PROTO_UDP, SCOPE_POD,
};

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn sa(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((addr, port))
}

const CLIENT: Ipv4Addr = ip(10, 0, 1, 5);
/// TCP service 1: three backends, one on the service port itself so the
/// "address changes, port does not" path is exercised too.
const TCP_VIP: Ipv4Addr = ip(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const TCP_ID: u32 = 1;
const TCP_BACKENDS: [(Ipv4Addr, u16); 3] = [
    (ip(10, 0, 2, 1), 8080),
    (ip(10, 0, 2, 2), 8080),
    (ip(10, 0, 2, 3), 80),
];
/// UDP service 2: two backends.
const UDP_VIP: Ipv4Addr = ip(10, 96, 0, 53);
const UDP_PORT: u16 = 53;
const UDP_ID: u32 = 2;
const UDP_BACKENDS: [(Ipv4Addr, u16); 2] = [(ip(10, 0, 3, 1), 5353), (ip(10, 0, 3, 2), 53)];

/// A datapath with the TCP and the UDP service configured.
fn datapath() -> Datapath {
    let mut dp = Datapath::load();
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, TCP_ID, &TCP_BACKENDS);
    dp.add_service(UDP_VIP, UDP_PORT, PROTO_UDP, UDP_ID, &UDP_BACKENDS);
    dp
}

fn tcp_vip() -> SocketAddr {
    sa(TCP_VIP, TCP_PORT)
}

fn udp_vip() -> SocketAddr {
    sa(UDP_VIP, UDP_PORT)
}

fn backend_of(out: &[u8], backends: &[(Ipv4Addr, u16)]) -> SocketAddr {
    let dst = packet::dst(out);
    assert!(
        backends.iter().any(|&(a, p)| sa(a, p) == dst),
        "destination {dst} is not a backend of the service"
    );
    dst
}

/// The full check of a translated packet: verdict, exact expected bytes,
/// independent checksum verification, nothing outside the NAT fields touched.
fn assert_translated(verdict: u32, input: &[u8], out: &[u8], expected: &Packet, source: bool) {
    assert_eq!(verdict, TC_ACT_OK, "verdict");
    packet::verify_checksums(out).unwrap_or_else(|e| panic!("output checksums: {e}"));
    assert_only_changed(input, out, &nat_fields(input, source));
    assert_eq!(out, expected.build().as_slice(), "output frame");
}

/// Sends `p` (client → VIP) and checks it is DNATed to one of `backends`.
fn forward(dp: &mut Datapath, p: &Packet, backends: &[(Ipv4Addr, u16)]) -> SocketAddr {
    let input = p.build();
    let (verdict, out) = dp.run(&input);
    assert_eq!(verdict, TC_ACT_OK, "verdict");
    let backend = backend_of(&out, backends);
    assert_translated(verdict, &input, &out, &p.clone().with_dst(backend), false);
    backend
}

// ------------------------------------------------------------ case table

fn pod_frontend(
    vip: SocketAddr,
    proto: u8,
    id: u32,
    flags: u32,
    backends: &[(Ipv4Addr, u16)],
) -> Frontend {
    Frontend {
        key: FrontendKey {
            addr: addr_to_net(packet::ipv4(vip.ip())),
            port: port_to_net(vip.port()),
            proto,
            scope: SCOPE_POD,
        }
        .into(),
        id,
        flags,
        backends: backends
            .iter()
            .map(|&(a, p)| (a.into(), p, false))
            .collect(),
        sources: Vec::new(),
    }
}

/// The TCP and the UDP service of [`datapath`].
fn services() -> Vec<Frontend> {
    vec![
        pod_frontend(tcp_vip(), PROTO_TCP, TCP_ID, 0, &TCP_BACKENDS),
        pod_frontend(udp_vip(), PROTO_UDP, UDP_ID, 0, &UDP_BACKENDS),
    ]
}

fn to_tcp_backend(what: &str, p: Packet) -> Step {
    out(what, p, TC_ACT_OK, Out::Dnat(addrs(&TCP_BACKENDS)))
}

fn to_udp_backend(what: &str, p: Packet) -> Step {
    out(what, p, TC_ACT_OK, Out::Dnat(addrs(&UDP_BACKENDS)))
}

fn addrs(backends: &[(Ipv4Addr, u16)]) -> Vec<SocketAddr> {
    backends.iter().map(|&(a, p)| sa(a, p)).collect()
}

/// Frames that are not for a Service, or not parsable as such.
fn not_for_a_service() -> Vec<(&'static str, Vec<u8>)> {
    let client = sa(CLIENT, 40009);
    let syn = Packet::tcp(client, tcp_vip()).build();
    let vsyn = Packet::tcp(client, tcp_vip()).vlan(5).build();
    let eth = packet::ETH_HLEN;
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 0, 1, 5]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 96, 0, 10]);
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 20, PROTO_TCP, 64];
    for a in [CLIENT, TCP_VIP] {
        ipv6.extend_from_slice(&a.to_ipv6_mapped().octets());
    }
    ipv6.extend_from_slice(&syn[eth + 20..]);
    let mut ihl_too_small = syn.clone();
    ihl_too_small[eth] = 0x44;
    let mut ihl_past_end = syn.clone();
    ihl_past_end[eth] = 0x4f;
    let mut fragment = Packet::tcp(client, tcp_vip());
    fragment.frag = 0x2000; // more fragments
    let mut later_fragment = Packet::udp(client, udp_vip());
    later_fragment.frag = 0x0003;
    let mut icmp = Packet::tcp(client, tcp_vip());
    icmp.l4 = L4::Other { proto: PROTO_ICMP };
    icmp.payload = vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0]; // echo request
    vec![
        (
            "other destination",
            Packet::tcp(client, sa(ip(10, 0, 9, 9), 80)).build(),
        ),
        (
            "VIP, other port",
            Packet::tcp(client, sa(TCP_VIP, 443)).build(),
        ),
        (
            "VIP, other protocol (UDP)",
            Packet::udp(client, tcp_vip()).build(),
        ),
        (
            "VIP, other protocol (TCP)",
            Packet::tcp(client, udp_vip()).build(),
        ),
        ("ICMP to VIP", icmp.build()),
        // BPF_PROG_TEST_RUN itself refuses frames of ETH_HLEN bytes or less and
        // untagged IPv4 frames without a full 20-byte IPv4 header (EINVAL), so
        // the short-header cases hide behind an 802.1Q tag, which it does not parse.
        ("802.1Q tag cut", vsyn[..eth + 2].to_vec()),
        (
            "Ethernet + 802.1Q, no IPv4 header",
            vsyn[..eth + 4].to_vec(),
        ),
        ("IPv4 header cut at 12 bytes", vsyn[..eth + 4 + 12].to_vec()),
        ("IPv4 header cut at 19 bytes", vsyn[..eth + 4 + 19].to_vec()),
        ("TCP header cut at 10 bytes", syn[..eth + 20 + 10].to_vec()),
        ("TCP header cut at 19 bytes", syn[..eth + 20 + 19].to_vec()),
        (
            "UDP header cut at 6 bytes",
            Packet::udp(client, udp_vip()).build()[..eth + 20 + 6].to_vec(),
        ),
        ("IPv4 ihl < 5", ihl_too_small),
        ("IPv4 ihl past the frame end", ihl_past_end),
        ("first fragment", fragment.build()),
        ("later fragment", later_fragment.build()),
        ("ARP", ethernet(ETH_P_ARP, &arp)),
        ("IPv6", ethernet(ETH_P_IPV6, &ipv6)),
        ("802.1Q-tagged ARP", {
            let mut f = vsyn[..eth + 4].to_vec();
            f[16..18].copy_from_slice(&ETH_P_ARP.to_be_bytes());
            f.extend_from_slice(&arp);
            f
        }),
    ]
}

/// RFC 768: a UDP checksum that computes to zero is sent as 0xffff, since 0
/// means "no checksum". The payload is chosen so the translated datagram
/// sums to exactly that: with a zero word in it, the translated datagram's
/// checksum is c; putting c into that word makes it 0.
fn udp_checksum_computing_to_zero() -> Case {
    let (vip, backend) = (sa(ip(10, 96, 0, 54), 53), sa(ip(10, 0, 3, 9), 5353));
    let probe = Packet::udp(sa(CLIENT, 40000), backend).payload(&[0, 0, 0x6b, 0x78]);
    let c = packet::l4_csum_field(&probe.build());
    let expected = probe.payload(&[(c >> 8) as u8, c as u8, 0x6b, 0x78]);
    assert_eq!(packet::l4_csum_field(&expected.build()), 0xffff);
    let request = expected.clone().with_dst(vip);
    assert_ne!(
        packet::l4_csum_field(&request.build()),
        0,
        "input carries a checksum"
    );
    case(
        "a UDP checksum computing to zero is sent as 0xffff",
        vec![pod_frontend(
            vip,
            PROTO_UDP,
            4,
            0,
            &[(packet::ipv4(backend.ip()), backend.port())],
        )],
        vec![out(
            "the datagram",
            request,
            TC_ACT_OK,
            Out::Dnat(vec![backend]),
        )],
        vec![],
    )
}

fn pod_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let udp_checksum = Packet::udp(client, udp_vip());
    assert_ne!(packet::l4_csum_field(&udp_checksum.build()), 0);
    let no_checksum = Packet::udp(client, udp_vip()).no_udp_checksum();
    assert_eq!(packet::l4_csum_field(&no_checksum.build()), 0);
    let vlan = Packet::tcp(sa(CLIENT, 40010), tcp_vip()).vlan(100);
    assert_eq!(vlan.build()[12..14], 0x8100u16.to_be_bytes());
    assert_eq!(vlan.build()[16..18], ETH_P_IPV4.to_be_bytes());
    let router_alert = [0x94, 0x04, 0, 0];
    let nops_then_end = [1, 1, 1, 1, 1, 1, 1, 0];
    let with_options = |options: &[u8], port| {
        let tcp = Packet::tcp(sa(CLIENT, port), tcp_vip()).ip_options(options);
        assert_eq!(
            tcp.build()[packet::ETH_HLEN] & 0x0f,
            5 + options.len() as u8 / 4
        );
        vec![
            to_tcp_backend("TCP", tcp.clone()),
            to_udp_backend(
                "UDP",
                Packet::udp(sa(CLIENT, port), udp_vip()).ip_options(options),
            ),
            to_tcp_backend("TCP, VLAN-tagged", tcp.vlan(9)),
        ]
    };
    let no_backends_tcp = sa(ip(10, 96, 0, 20), 80);
    let no_backends_udp = sa(ip(10, 96, 0, 21), 53);
    let policy_local = sa(ip(10, 96, 0, 22), 80);
    let syn_ack = packet::TCP_SYN | packet::TCP_ACK;
    let counted = [
        Packet::tcp(sa(CLIENT, 40012), tcp_vip()),
        Packet::tcp(sa(CLIENT, 40012), tcp_vip()).payload(&[0x55; 100]),
        Packet::tcp(sa(CLIENT, 40013), tcp_vip()).vlan(7),
    ];
    let counted_bytes = counted.iter().map(|p| p.build().len() as u64).sum();
    let pod = sa(ip(10, 0, 2, 1), 8080);
    let pod_vip = sa(ip(10, 96, 0, 70), 80);
    let lb = sa(ip(192, 168, 60, 10), 80);
    let mut lb_frontend =
        pod_frontend(lb, PROTO_TCP, 9, FRONTEND_SOURCE_RANGES, &TCP_BACKENDS[..1]);
    lb_frontend.sources.push((ip(10, 0, 1, 0).into(), 24));

    vec![
        case(
            "TCP SYN to a VIP is DNATed",
            services(),
            vec![to_tcp_backend("SYN", Packet::tcp(client, tcp_vip()))],
            vec![Count::Packets(TCP_ID, 1), Count::ConntrackEntries(2)],
        ),
        case(
            "UDP with a checksum to a VIP is DNATed",
            services(),
            vec![to_udp_backend("datagram", udp_checksum)],
            vec![],
        ),
        case(
            "UDP without a checksum keeps it zero",
            services(),
            vec![to_udp_backend("datagram", no_checksum)],
            vec![],
        ),
        udp_checksum_computing_to_zero(),
        case(
            "the same flow twice gets the same backend",
            services(),
            vec![
                to_tcp_backend("TCP", Packet::tcp(sa(CLIENT, 40001), tcp_vip())),
                out(
                    "TCP again",
                    Packet::tcp(sa(CLIENT, 40001), tcp_vip()),
                    TC_ACT_OK,
                    Out::DnatAsBefore,
                ),
                to_udp_backend("UDP", Packet::udp(sa(CLIENT, 40001), udp_vip())),
                out(
                    "UDP again",
                    Packet::udp(sa(CLIENT, 40001), udp_vip()),
                    TC_ACT_OK,
                    Out::DnatAsBefore,
                ),
            ],
            vec![],
        ),
        // Conntrack, not just a deterministic hash: after the service is
        // re-pointed at a new backend set, an established flow keeps its
        // backend and a new flow takes the new one.
        case(
            "an established flow keeps its backend when the selection changes",
            services(),
            vec![
                to_tcp_backend("SYN", Packet::tcp(sa(CLIENT, 40002), tcp_vip())).then(|dp| {
                    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, 5, &[(ip(10, 0, 2, 9), 9090)])
                }),
                out(
                    "next segment",
                    Packet::tcp(sa(CLIENT, 40002), tcp_vip()).tcp_flags(packet::TCP_ACK),
                    TC_ACT_OK,
                    Out::DnatAsBefore,
                ),
                out(
                    "a new flow",
                    Packet::tcp(sa(CLIENT, 40003), tcp_vip()),
                    TC_ACT_OK,
                    Out::Dnat(vec![sa(ip(10, 0, 2, 9), 9090)]),
                ),
            ],
            vec![],
        ),
        case(
            "a reply without a forward flow is untouched",
            services(),
            vec![
                to_tcp_backend("a flow", Packet::tcp(sa(CLIENT, 40006), tcp_vip())),
                into_pod(
                    "reply before any forward packet",
                    Frame::Built(Packet::tcp(
                        sa(TCP_BACKENDS[0].0, TCP_BACKENDS[0].1),
                        sa(CLIENT, 40007),
                    )),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "reply to another client port",
                    from_chosen(|b| Packet::tcp(b, sa(CLIENT, 40008))),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "reply to another client",
                    from_chosen(|b| Packet::tcp(b, sa(ip(10, 0, 1, 6), 40006))),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "reply with another protocol",
                    from_chosen(|b| Packet::udp(b, sa(CLIENT, 40006))),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
            ],
            vec![],
        ),
        case(
            "each direction translates only its own packets",
            services(),
            vec![
                // A packet entering a pod is never DNATed, even if it is for a VIP.
                into_pod(
                    "to the VIP, into a pod",
                    Frame::Built(Packet::tcp(sa(CLIENT, 40200), tcp_vip())),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                to_tcp_backend(
                    "to the VIP, out of a pod",
                    Packet::tcp(sa(CLIENT, 40200), tcp_vip()),
                ),
                // A reply leaving the backend pod passes as it is: it is
                // reverse-NATed on its way into the client, wherever the
                // backend runs.
                Step::new(
                    "reply, out of the backend pod",
                    Hook::PodIngress,
                    from_chosen(move |b| Packet::tcp(b, sa(CLIENT, 40200)).tcp_flags(syn_ack)),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "reply, into the client pod",
                    from_chosen(move |b| Packet::tcp(b, sa(CLIENT, 40200)).tcp_flags(syn_ack)),
                    TC_ACT_OK,
                    Out::ReverseNat(tcp_vip()),
                ),
            ],
            vec![],
        ),
        case(
            "traffic not for a service passes untouched",
            services(),
            not_for_a_service()
                .into_iter()
                .map(|(what, frame)| {
                    Step::new(
                        what,
                        Hook::PodIngress,
                        Frame::Raw(frame),
                        TC_ACT_OK,
                        Out::Untouched,
                    )
                })
                .collect(),
            vec![
                Count::Packets(TCP_ID, 0),
                Count::Packets(UDP_ID, 0),
                Count::ConntrackEntries(0),
            ],
        ),
        case(
            "IP options shift the L4 header",
            services(),
            with_options(&router_alert, 41000)
                .into_iter()
                .chain(with_options(&nops_then_end, 41001))
                .collect(),
            vec![],
        ),
        case(
            "VLAN-tagged TCP to a VIP is DNATed",
            services(),
            vec![to_tcp_backend("tagged SYN", vlan)],
            vec![],
        ),
        case(
            "a service without backends rejects TCP with a reset",
            vec![pod_frontend(no_backends_tcp, PROTO_TCP, 3, 0, &[])],
            vec![
                out(
                    "SYN with data",
                    Packet::tcp(sa(CLIENT, 40011), no_backends_tcp),
                    TC_ACT_REDIRECT,
                    Out::Rst,
                ),
                out(
                    "ACK",
                    Packet::tcp(sa(CLIENT, 40011), no_backends_tcp)
                        .tcp_flags(packet::TCP_ACK)
                        .payload(&[]),
                    TC_ACT_REDIRECT,
                    Out::Rst,
                ),
                // A RST is never answered.
                out(
                    "RST",
                    Packet::tcp(sa(CLIENT, 40011), no_backends_tcp).tcp_flags(0x04),
                    TC_ACT_SHOT,
                    Out::Dropped(DropReason::NoBackend),
                ),
            ],
            vec![
                Count::Verdicts(Verdict::RejectedTcp, 2),
                Count::ConntrackEntries(0),
            ],
        ),
        case(
            "a service without backends answers UDP with port unreachable",
            vec![pod_frontend(no_backends_udp, PROTO_UDP, 4, 0, &[])],
            vec![
                out(
                    "datagram",
                    Packet::udp(sa(CLIENT, 40012), no_backends_udp),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
                out(
                    "empty datagram",
                    Packet::udp(sa(CLIENT, 40012), no_backends_udp).payload(&[]),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
                out(
                    "large datagram",
                    Packet::udp(sa(CLIENT, 40012), no_backends_udp).payload(&[0x5a; 1200]),
                    TC_ACT_REDIRECT,
                    Out::PortUnreachable,
                ),
            ],
            vec![Count::Verdicts(Verdict::RejectedUdp, 3)],
        ),
        case(
            "internal policy Local without local endpoints drops silently",
            vec![pod_frontend(
                policy_local,
                PROTO_TCP,
                5,
                FRONTEND_EMPTY_DROP,
                &[],
            )],
            vec![out(
                "SYN",
                Packet::tcp(sa(CLIENT, 40013), policy_local),
                TC_ACT_SHOT,
                Out::Dropped(DropReason::NoLocalBackend),
            )],
            vec![
                Count::Drops(DropReason::NoLocalBackend, 1),
                Count::Verdicts(Verdict::RejectedTcp, 0),
            ],
        ),
        case(
            "stats count service packets and bytes",
            services(),
            counted
                .iter()
                .map(|p| to_tcp_backend("TCP", p.clone()))
                .chain([to_udp_backend(
                    "UDP",
                    Packet::udp(sa(CLIENT, 40012), udp_vip()),
                )])
                .collect(),
            vec![
                Count::Packets(TCP_ID, counted.len() as u64),
                Count::Bytes(TCP_ID, counted_bytes),
                Count::Packets(UDP_ID, 1),
                Count::Packets(9, 0),
            ],
        ),
        case(
            "a direct connection reusing a VIP tuple is not reverse-NATed",
            services(),
            vec![
                to_tcp_backend("through the VIP", Packet::tcp(sa(CLIENT, 40100), tcp_vip())),
                // While the VIP connection lives, a non-SYN packet straight to
                // the backend leaves its reply entry alone.
                Step::new(
                    "ACK straight to the backend",
                    Hook::PodIngress,
                    from_chosen(|b| Packet::tcp(sa(CLIENT, 40100), b).tcp_flags(packet::TCP_ACK)),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "reply through the VIP",
                    from_chosen(move |b| Packet::tcp(b, sa(CLIENT, 40100)).tcp_flags(syn_ack)),
                    TC_ACT_OK,
                    Out::ReverseNat(tcp_vip()),
                ),
                // A new connection from the same client port straight to the
                // backend gets the backend's answer as the backend sent it.
                Step::new(
                    "SYN straight to the backend",
                    Hook::PodIngress,
                    from_chosen(|b| Packet::tcp(sa(CLIENT, 40100), b).tcp_flags(packet::TCP_SYN)),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
                into_pod(
                    "its answer",
                    from_chosen(move |b| Packet::tcp(b, sa(CLIENT, 40100)).tcp_flags(syn_ack)),
                    TC_ACT_OK,
                    Out::Untouched,
                ),
            ],
            // The forward entry only: the stale reply entry is gone.
            vec![Count::ConntrackEntries(1), Count::ConntrackReplies(0)],
        ),
        hairpin(pod, pod_vip),
        case(
            "a load balancer address keeps its source ranges for pods too",
            vec![lb_frontend],
            vec![
                out(
                    "from inside the range",
                    Packet::tcp(sa(CLIENT, 44000), lb),
                    TC_ACT_OK,
                    Out::Dnat(addrs(&TCP_BACKENDS[..1])),
                ),
                out(
                    "from outside it",
                    Packet::tcp(sa(ip(10, 0, 7, 5), 44000), lb),
                    TC_ACT_SHOT,
                    Out::Dropped(DropReason::SourceRange),
                ),
            ],
            vec![Count::Drops(DropReason::SourceRange, 1)],
        ),
    ]
}

/// A pod reaching itself through its Service: out of the pod to the VIP,
/// back in from the VIP (same port) to its server; it must not see its own
/// address as the source. The server's answer goes to the stand-in; the
/// client gets it from the VIP.
fn hairpin(pod: SocketAddr, vip: SocketAddr) -> Case {
    let client = sa(packet::ipv4(pod.ip()), 40000);
    let stand_in = sa(packet::ipv4(vip.ip()), client.port());
    let mut steps = Vec::new();
    for flags in [packet::TCP_SYN, packet::TCP_ACK] {
        let request = Packet::tcp(client, vip).tcp_flags(flags);
        let back_in = Packet {
            src_mac: request.dst_mac,
            dst_mac: request.src_mac,
            ..request.clone()
        };
        steps.push(out(
            "request",
            request,
            TC_ACT_REDIRECT,
            Out::Exactly(back_in.with_src(stand_in).with_dst(pod)),
        ));
        let answer = Packet::tcp(pod, stand_in).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
        let back_in = Packet {
            src_mac: answer.dst_mac,
            dst_mac: answer.src_mac,
            ..answer.clone()
        };
        steps.push(out(
            "answer",
            answer,
            TC_ACT_REDIRECT,
            Out::Exactly(back_in.with_src(vip).with_dst(client)),
        ));
    }
    case(
        "a pod reaching itself through its service sees the VIP as the client",
        vec![pod_frontend(
            vip,
            PROTO_TCP,
            7,
            0,
            &[(packet::ipv4(pod.ip()), pod.port())],
        )],
        steps,
        vec![Count::ConntrackEntries(2)],
    )
}

#[test]
fn pod_packet_cases() {
    cases::run(pod_cases());
}

// ------------------------------------------------------------ conntrack

/// A new connection (SYN) on a tuple an earlier connection used is balanced
/// afresh: the old entry may name a backend that has left the service.
#[test]
fn a_new_connection_on_a_reused_tuple_is_balanced_afresh() {
    let mut dp = datapath();
    let syn = Packet::tcp(sa(CLIENT, 40004), tcp_vip());
    let first = forward(&mut dp, &syn, &TCP_BACKENDS);
    let remaining: Vec<_> = TCP_BACKENDS
        .iter()
        .copied()
        .filter(|(addr, port)| sa(*addr, *port) != first)
        .collect();
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, 5, &remaining);
    let again = forward(&mut dp, &syn, &remaining);
    assert_ne!(again, first, "the SYN followed a stale conntrack entry");
    // The new connection's later packets stay on the new backend.
    let ack = Packet::tcp(sa(CLIENT, 40004), tcp_vip()).tcp_flags(packet::TCP_ACK);
    assert_eq!(forward(&mut dp, &ack, &remaining), again);
}

/// A UDP flow keeps its backend while that backend exists, and is balanced
/// afresh once the agent has deleted it (its endpoint went away).
#[test]
fn a_udp_flow_whose_backend_is_gone_is_balanced_afresh() {
    let mut dp = datapath();
    let p = Packet::udp(sa(CLIENT, 40300), udp_vip());
    let first = forward(&mut dp, &p, &UDP_BACKENDS);
    let index = UDP_BACKENDS
        .iter()
        .position(|(addr, port)| sa(*addr, *port) == first)
        .unwrap();
    let remaining: Vec<_> = UDP_BACKENDS
        .iter()
        .copied()
        .filter(|(addr, port)| sa(*addr, *port) != first)
        .collect();
    dp.add_service(UDP_VIP, UDP_PORT, PROTO_UDP, 6, &remaining);
    assert_eq!(
        forward(&mut dp, &p, &UDP_BACKENDS),
        first,
        "the backend still exists: the flow stays on it"
    );
    dp.remove_backend(Datapath::backend_id(UDP_ID, index));
    let again = forward(&mut dp, &p, &remaining);
    assert_ne!(again, first, "the flow followed a deleted backend");
    assert_eq!(
        forward(&mut dp, &p, &remaining),
        again,
        "and stays on the new one"
    );
}

#[test]
fn conntrack_records_forward_and_reply_entries() {
    let mut dp = datapath();
    let client = sa(CLIENT, 40004);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    let mut entries = dp.conntrack();
    entries.sort_by_key(|(_, e)| e.direction);
    let [(fwd_key, fwd), (rev_key, rev)] = entries.as_slice() else {
        panic!("expected 2 conntrack entries, got {entries:?}");
    };
    let net = |s: SocketAddr| (addr_to_net(packet::ipv4(s.ip())), port_to_net(s.port()));
    assert_eq!((fwd.direction, rev.direction), (CT_FORWARD, CT_REPLY));
    assert_eq!((fwd_key.src_addr, fwd_key.src_port), net(client));
    assert_eq!((fwd_key.dst_addr, fwd_key.dst_port), net(tcp_vip()));
    assert_eq!((fwd.nat_addr, fwd.nat_port), net(backend));
    assert_eq!((rev_key.src_addr, rev_key.src_port), net(backend));
    assert_eq!((rev_key.dst_addr, rev_key.dst_port), net(client));
    assert_eq!((rev.nat_addr, rev.nat_port), net(tcp_vip()));
    assert_eq!((fwd_key.proto, rev_key.proto), (PROTO_TCP, PROTO_TCP));
    assert_eq!((fwd.frontend_id, rev.frontend_id), (TCP_ID, TCP_ID));
    assert_eq!(fwd.backend_id, rev.backend_id);
}

#[test]
fn a_pods_flow_stops_with_its_frontend() {
    // Pod interfaces look the frontend up first (most packets on a
    // frontend's port there are for none): a deleted frontend's flows stop.
    let mut dp = datapath();
    let client = sa(CLIENT, 40_011);
    forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    dp.remove_frontend(tcp_key());
    let ack = Packet::tcp(client, tcp_vip())
        .tcp_flags(packet::TCP_ACK)
        .build();
    let (verdict, out) = dp.run(&ack);
    assert_eq!((verdict, &out), (TC_ACT_OK, &ack));
}

#[test]
fn a_reply_is_looked_up_only_from_a_port_some_backend_uses() {
    let mut dp = datapath();
    let client = sa(CLIENT, 40_010);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    // The flow's reply entry, moved to a port no backend has (PORT_ROLES
    // has no bit for it).
    let stray = sa(packet::ipv4(backend.ip()), 9_999);
    let (mut key, entry) = dp
        .conntrack()
        .into_iter()
        .find(|(_, e)| e.direction == CT_REPLY)
        .expect("a reply entry");
    key.src_port = port_to_net(stray.port());
    dp.insert_conntrack(key, entry);
    let reply = Packet::tcp(stray, client).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
    let input = reply.build();
    let (verdict, out) = dp.run_egress(&input);
    assert_eq!((verdict, &out), (TC_ACT_OK, &input), "looked up anyway");
    // Once a backend has the port, the same reply is translated.
    dp.give_role(port_roles::BACKEND, stray.port());
    let (verdict, out) = dp.run_egress(&input);
    assert_translated(verdict, &input, &out, &reply.with_src(tcp_vip()), true);
}

#[test]
fn many_flows_spread_over_every_backend() {
    let mut dp = datapath();
    let mut hits = BTreeMap::new();
    for port in 30000..30200 {
        let backend = forward(
            &mut dp,
            &Packet::tcp(sa(CLIENT, port), tcp_vip()),
            &TCP_BACKENDS,
        );
        *hits.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), TCP_BACKENDS.len(), "backends chosen: {hits:?}");
}

/// The backend the frontend's Maglev table names for `flow` (client → VIP),
/// worked out in userspace from the same hash the datapath uses.
fn maglev_choice(table: &[u32], client: SocketAddr, vip: SocketAddr, proto: u8) -> u32 {
    let hash = flow_hash(
        addr_to_net(packet::ipv4(client.ip())),
        addr_to_net(packet::ipv4(vip.ip())),
        port_to_net(client.port()),
        port_to_net(vip.port()),
        proto,
    );
    table[(hash % table.len() as u32) as usize]
}

#[test]
fn a_new_flow_takes_the_backend_its_maglev_slot_names() {
    let mut dp = datapath();
    let table = dp.table(TCP_ID);
    assert_eq!(table.len(), 509, "smallest prime of the ladder >= 100 x 3");
    for port in 41000..41200 {
        let client = sa(CLIENT, port);
        let expected = backend_with_id(maglev_choice(&table, client, tcp_vip(), PROTO_TCP));
        let got = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
        assert_eq!(got, expected, "client port {port}");
    }
}

/// A changed table takes over at once for new flows, in place within its
/// size class and swapped whole into another one (the datapath takes M from
/// the table it reads, not from the service entry); established flows keep
/// their backend, even one the table no longer holds.
#[test]
fn a_table_of_another_size_takes_over_in_one_update() {
    let mut dp = datapath();
    let vip = sa(ip(10, 96, 0, 90), 80);
    let many: Vec<(Ipv4Addr, u16)> = (1..=24).map(|i| (ip(10, 0, 9, i), 8080)).collect();
    dp.add_service(packet::ipv4(vip.ip()), vip.port(), PROTO_TCP, 9, &many);
    let big = dp.table(9);
    assert_eq!(big.len(), 4093);
    let established = sa(CLIENT, 43000);
    let kept = forward(&mut dp, &Packet::tcp(established, vip), &many);
    // One backend fewer, same size class: the table is rewritten in place.
    let kept_id = Datapath::backend_id(9, many.iter().position(|b| sa(b.0, b.1) == kept).unwrap());
    let others: Vec<u32> = (0..24)
        .map(|i| Datapath::backend_id(9, i))
        .filter(|id| *id != kept_id)
        .take(23)
        .collect();
    dp.replace_table(9, &others);
    let fewer = dp.table(9);
    assert_eq!(fewer.len(), 4093);
    assert!(!fewer.contains(&kept_id));
    for port in 44001..44101 {
        let client = sa(CLIENT, port);
        let id = maglev_choice(&fewer, client, vip, PROTO_TCP);
        let index = (0..24).find(|i| Datapath::backend_id(9, *i) == id).unwrap();
        let got = forward(&mut dp, &Packet::tcp(client, vip), &many);
        assert_eq!(got, sa(many[index].0, many[index].1), "client port {port}");
    }
    // Down to two backends (the first two, ids unchanged): M = 251, but
    // the service entry still says 4093 until sync rewrites it.
    let two = [Datapath::backend_id(9, 0), Datapath::backend_id(9, 1)];
    dp.replace_table(9, &two);
    let small = dp.table(9);
    assert_eq!(small.len(), 251);
    for port in 43001..43101 {
        let client = sa(CLIENT, port);
        let id = maglev_choice(&small, client, vip, PROTO_TCP);
        let expected = many[two.iter().position(|b| *b == id).expect("one of the two")];
        let got = forward(&mut dp, &Packet::tcp(client, vip), &many);
        assert_eq!(got, sa(expected.0, expected.1), "client port {port}");
    }
    let next_segment = Packet::tcp(established, vip).tcp_flags(packet::TCP_ACK);
    assert_eq!(forward(&mut dp, &next_segment, &many), kept);
}

/// The backends of the arena tests' frontends.
const ARENA_BACKENDS: [(Ipv4Addr, u16); 3] = [
    (ip(10, 0, 9, 1), 8080),
    (ip(10, 0, 9, 2), 8080),
    (ip(10, 0, 9, 3), 8080),
];

/// Frontend 12 (`a`) over [`ARENA_BACKENDS`], and frontend 13 (`b`) over
/// the same backends (by id: the same table); the backend ids.
fn two_frontends_over_three(dp: &mut Datapath) -> (SocketAddr, SocketAddr, Vec<u32>) {
    let (a, b) = (sa(ip(10, 96, 0, 91), 80), sa(ip(10, 96, 0, 92), 80));
    dp.add_service(
        packet::ipv4(a.ip()),
        a.port(),
        PROTO_TCP,
        12,
        &ARENA_BACKENDS,
    );
    let ids: Vec<u32> = (0..3).map(|i| Datapath::backend_id(12, i)).collect();
    dp.add_service_over(packet::ipv4(b.ip()), b.port(), PROTO_TCP, 13, &ids);
    (a, b, ids)
}

/// New flows from `ports` to `vip` go where `table` (over the backend ids
/// `ids` of [`ARENA_BACKENDS`]) names.
fn routes_by_table(
    dp: &mut Datapath,
    vip: SocketAddr,
    table: &[u32],
    ids: &[u32],
    ports: std::ops::Range<u16>,
) {
    for port in ports {
        let client = sa(CLIENT, port);
        let id = maglev_choice(table, client, vip, PROTO_TCP);
        let expected = ARENA_BACKENDS[ids.iter().position(|b| *b == id).expect("a backend")];
        let got = forward(dp, &Packet::tcp(client, vip), &ARENA_BACKENDS);
        assert_eq!(got, sa(expected.0, expected.1), "{vip} client port {port}");
    }
}

/// Frontends with the same backends (a Service's ClusterIP, NodePorts,
/// external addresses) share one block of the arena; a frontend whose
/// backends change moves to a block of its own while the other keeps
/// routing through the shared one; a block no frontend points at any more
/// is reused, but only once the untouched tail has no room (the reuse
/// waits for a grace period; the allocator's unit tests show the order).
#[test]
fn frontends_with_the_same_backends_share_a_block_and_a_released_one_is_reused() {
    // Blocks: 136 entries for three backends (M = 509, room for 5
    // members), 72 for two (M = 251). The arena holds, after its unused
    // first line, one of 136 and two of 72.
    let mut dp = Datapath::load_with_arena(8 + 136 + 72 + 72);
    let (a, b, ids) = two_frontends_over_three(&mut dp);
    let shared = dp.table_block(12);
    assert_eq!(shared, 8, "the first block after the unused line");
    assert_eq!(dp.table_block(13), shared, "one block for both");
    let routes_by = |dp: &mut Datapath, vip, table: &[u32], ports| {
        routes_by_table(dp, vip, table, &ids, ports);
    };
    let full = dp.table(12);
    assert_eq!(full.len(), 509);
    routes_by(&mut dp, a, &full, 45001..45041);
    routes_by(&mut dp, b, &full, 45001..45041);
    // 13 loses a backend: its own block; 12 keeps the shared one as it was.
    dp.replace_table(13, &[ids[0], ids[2]]);
    let own = dp.table_block(13);
    assert_eq!(own, 8 + 136);
    assert_eq!((dp.table_block(12), dp.table(12)), (shared, full.clone()));
    routes_by(&mut dp, a, &full, 46001..46041);
    let two = dp.table(13);
    assert_eq!(two.len(), 251);
    assert!(!two.contains(&ids[1]));
    routes_by(&mut dp, b, &two, 46001..46041);
    // 12 comes to the table 13 has: it joins 13's block, and the first
    // block, now unused, is released.
    dp.replace_table(12, &[ids[0], ids[2]]);
    assert_eq!(dp.table_block(12), own, "shared again");
    routes_by(&mut dp, a, &two, 47001..47041);
    // A new table of two backends: the tail has room, so no wait.
    dp.add_service_over(ip(10, 96, 0, 93), 80, PROTO_TCP, 14, &ids[..2]);
    assert_eq!(dp.table_block(14), 8 + 136 + 72, "from the tail");
    // One of three: only the released block fits, reused after a grace
    // period.
    dp.add_service_over(ip(10, 96, 0, 94), 80, PROTO_TCP, 15, &ids);
    assert_eq!(dp.table_block(15), shared, "the released block, reused");
    let c = sa(ip(10, 96, 0, 94), 80);
    routes_by(&mut dp, c, &full, 48001..48041);
    routes_by(&mut dp, a, &two, 48001..48041);
    routes_by(&mut dp, b, &two, 48001..48041);
}

/// A restarted agent takes the arena over as it is: every table, every
/// shared block with its count of frontends, and the free space past
/// them. So the first change after a restart neither rewrites a block
/// another frontend still reads nor writes over a live one.
#[test]
fn a_reopened_arena_keeps_every_table_and_its_sharing() {
    let mut dp = Datapath::load_with_arena(1 << 12);
    let (a, _, ids) = two_frontends_over_three(&mut dp);
    dp.add_service(ip(10, 96, 0, 95), 80, PROTO_TCP, 20, &ARENA_BACKENDS[..2]);
    let before = dp.table_specs();
    let blocks: Vec<u32> = [12, 13, 20].map(|id| dp.table_block(id)).to_vec();
    let full = dp.table(12);

    dp.reopen_maps();
    assert_eq!(dp.table_specs(), before);
    assert_eq!([12, 13, 20].map(|id| dp.table_block(id)).to_vec(), blocks);
    // 13 changes: its block is still 12's too, so 13 moves to a fresh one
    // past every live block, and 12 reads its table as before.
    dp.replace_table(13, &[ids[0], ids[2]]);
    let moved = dp.table_block(13);
    assert!(
        !blocks.contains(&moved),
        "{moved} is a live block: {blocks:?}"
    );
    assert_eq!(dp.table(12), full);
    routes_by_table(&mut dp, a, &full, &ids, 50001..50041);
}

#[test]
fn reply_from_backend_is_reverse_nated() {
    let mut dp = datapath();
    // (name, VIP, backends, packet from a to b)
    type Case = (&'static str, SocketAddr, &'static [(Ipv4Addr, u16)], Make);
    type Make = fn(SocketAddr, SocketAddr) -> Packet;
    let cases: [Case; 3] = [
        ("TCP", tcp_vip(), &TCP_BACKENDS, |a, b| {
            Packet::tcp(a, b).tcp_flags(packet::TCP_SYN | packet::TCP_ACK)
        }),
        ("UDP", udp_vip(), &UDP_BACKENDS, Packet::udp),
        ("UDP, no checksum", udp_vip(), &UDP_BACKENDS, |a, b| {
            Packet::udp(a, b).no_udp_checksum()
        }),
    ];
    for (i, (name, vip, backends, make)) in cases.into_iter().enumerate() {
        // Enough clients that every backend (incl. one on the service port,
        // where only the address changes) answers at least once.
        let mut answered = BTreeMap::new();
        for port in 0..30 {
            let client = sa(CLIENT, 42000 + 100 * i as u16 + port);
            let backend = forward(&mut dp, &make(client, vip), backends);
            let p = make(backend, client);
            let input = p.build();
            let (verdict, out) = dp.run_egress(&input);
            assert_translated(verdict, &input, &out, &p.with_src(vip), true);
            *answered.entry(backend).or_insert(0) += 1;
        }
        assert_eq!(answered.len(), backends.len(), "{name}: {answered:?}");
    }
}

// ------------------------------------------------------ session affinity

fn tcp_key() -> FrontendKey {
    FrontendKey {
        addr: addr_to_net(TCP_VIP),
        port: port_to_net(TCP_PORT),
        proto: PROTO_TCP,
        scope: SCOPE_POD,
    }
}

fn affinity_of(dp: &mut Datapath, client: Ipv4Addr) -> AffinityValue {
    let key = AffinityKey {
        frontend_id: TCP_ID,
        client_addr: addr_to_net(client),
    };
    dp.affinity()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .expect("an affinity entry")
}

/// The backend of `TCP_BACKENDS` with the given backend id.
fn backend_with_id(id: u32) -> SocketAddr {
    let index = (0..TCP_BACKENDS.len())
        .find(|&i| Datapath::backend_id(TCP_ID, i) == id)
        .expect("a backend of the TCP service");
    sa(TCP_BACKENDS[index].0, TCP_BACKENDS[index].1)
}

#[test]
fn client_ip_affinity_keeps_each_client_on_one_backend() {
    let mut dp = datapath();
    dp.set_affinity(tcp_key(), 60);
    for client in [CLIENT, ip(10, 0, 1, 6), ip(10, 0, 1, 7)] {
        let backends: BTreeMap<SocketAddr, usize> =
            (0..30).fold(BTreeMap::new(), |mut seen, port| {
                let syn = Packet::tcp(sa(client, 41000 + port), tcp_vip());
                *seen
                    .entry(forward(&mut dp, &syn, &TCP_BACKENDS))
                    .or_default() += 1;
                seen
            });
        assert_eq!(backends.len(), 1, "{client}: {backends:?}");
        let remembered = affinity_of(&mut dp, client);
        assert_eq!(
            backends.keys().next(),
            Some(&backend_with_id(remembered.backend_id))
        );
        assert!(datapath_now_s() - remembered.last_used <= 1);
    }
}

/// The backend a datapath without affinity picks for `syn` (the same
/// service layout, so the same hash and slots).
fn hashed_backend(syn: &Packet) -> SocketAddr {
    let mut control = datapath();
    forward(&mut control, syn, &TCP_BACKENDS)
}

/// Maglev moves about a quarter of the slots to a fourth backend: the
/// clients whose remembered slot moved must still stay, since their backend
/// is still a member of the service.
#[test]
fn affinity_holds_when_a_backend_joins_the_service() {
    let mut dp = datapath();
    dp.set_affinity(tcp_key(), 60);
    let clients: Vec<Ipv4Addr> = (10..50).map(|d| ip(10, 0, 1, d)).collect();
    let before: Vec<SocketAddr> = clients
        .iter()
        .map(|c| {
            forward(
                &mut dp,
                &Packet::tcp(sa(*c, 45000), tcp_vip()),
                &TCP_BACKENDS,
            )
        })
        .collect();
    let table_before = dp.table(TCP_ID);
    let mut four = TCP_BACKENDS.to_vec();
    four.push((ip(10, 0, 2, 4), 8080));
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, TCP_ID, &four);
    dp.set_affinity(tcp_key(), 60);
    let table_after = dp.table(TCP_ID);
    assert_eq!(table_after.len(), table_before.len(), "same size class");
    let moved_slots = table_before
        .iter()
        .zip(&table_after)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        moved_slots > table_before.len() / 8,
        "the newcomer took slots"
    );
    for (client, first) in clients.iter().zip(&before) {
        let again = forward(&mut dp, &Packet::tcp(sa(*client, 45001), tcp_vip()), &four);
        assert_eq!(again, *first, "client {client} moved");
    }
    // New clients do reach the newcomer.
    let newcomer = sa(four[3].0, four[3].1);
    let reached = (100..200)
        .map(|d| {
            forward(
                &mut dp,
                &Packet::tcp(sa(ip(10, 0, 1, d), 45000), tcp_vip()),
                &four,
            )
        })
        .any(|b| b == newcomer);
    assert!(reached, "no new client reached the new backend");
}

#[test]
fn affinity_lapses_after_the_timeout_and_when_its_backend_leaves() {
    let mut dp = datapath();
    dp.set_affinity(tcp_key(), 60);
    let first = forward(
        &mut dp,
        &Packet::tcp(sa(CLIENT, 42000), tcp_vip()),
        &TCP_BACKENDS,
    );
    // A port whose hash picks another backend than the remembered one.
    let syn = (42001..42100)
        .map(|port| Packet::tcp(sa(CLIENT, port), tcp_vip()))
        .find(|syn| hashed_backend(syn) != first)
        .expect("some port hashes elsewhere");
    let elsewhere = hashed_backend(&syn);
    let key = AffinityKey {
        frontend_id: TCP_ID,
        client_addr: addr_to_net(CLIENT),
    };
    // Within the timeout: the client stays.
    let fresh = affinity_of(&mut dp, CLIENT);
    dp.insert_affinity(
        key,
        AffinityValue {
            last_used: datapath_s_ago(50),
            ..fresh
        },
    );
    assert_eq!(forward(&mut dp, &syn, &TCP_BACKENDS), first);
    // Past it: balanced as any new flow, and remembered anew.
    dp.insert_affinity(
        key,
        AffinityValue {
            last_used: datapath_s_ago(70),
            ..fresh
        },
    );
    dp.clear_conntrack();
    assert_eq!(forward(&mut dp, &syn, &TCP_BACKENDS), elsewhere);
    assert_eq!(
        backend_with_id(affinity_of(&mut dp, CLIENT).backend_id),
        elsewhere
    );
    // Its backend leaves the service (the others keep their ids, as sync
    // keeps them): the next connection goes elsewhere, and is remembered.
    let leaving = affinity_of(&mut dp, CLIENT).backend_id;
    let staying: Vec<u32> = (0..TCP_BACKENDS.len())
        .map(|i| Datapath::backend_id(TCP_ID, i))
        .filter(|id| *id != leaving)
        .collect();
    dp.set_backends(tcp_key(), TCP_ID, &staying);
    let next = Packet::tcp(sa(CLIENT, 42200), tcp_vip());
    let moved = forward(&mut dp, &next, &TCP_BACKENDS);
    assert_ne!(moved, elsewhere);
    let remembered = affinity_of(&mut dp, CLIENT).backend_id;
    assert!(staying.contains(&remembered));
    assert_eq!(backend_with_id(remembered), moved);
}

// --------------------------------------------------------------- hairpin

#[test]
fn a_connection_whose_backend_left_is_reset_on_its_next_segment() {
    let mut dp = datapath();
    let client = sa(CLIENT, 43000);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    let index = TCP_BACKENDS
        .iter()
        .position(|&(a, p)| sa(a, p) == backend)
        .unwrap();
    // While the backend exists, the connection goes on.
    let ack = Packet::tcp(client, tcp_vip()).tcp_flags(packet::TCP_ACK);
    assert_eq!(forward(&mut dp, &ack, &TCP_BACKENDS), backend);
    // Gone (sync deletes a backend once no frontend lists it, draining
    // ones included): the next segment is answered with a RST from the VIP.
    dp.remove_backend(Datapath::backend_id(TCP_ID, index));
    let (verdict, out) = dp.run(&ack.build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "back into the client pod");
    packet::assert_rst_answers(&out, &ack);
    // A new connection from the same port is balanced afresh.
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, TCP_ID, &TCP_BACKENDS);
    let syn = Packet::tcp(client, tcp_vip());
    forward(&mut dp, &syn, &TCP_BACKENDS);
}

/// A connection-tracking table that refuses inserts (a plain hash map,
/// full; the real one is an LRU, which evicts instead): a new flow whose
/// entries cannot both go in is dropped and counted, never forwarded with
/// half a pair left behind, and the established connection goes on both
/// ways.
#[test]
fn a_flow_that_cannot_be_recorded_is_dropped_and_counted_and_established_ones_go_on() {
    let mut dp = Datapath::load_with_conntrack(3, true);
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, TCP_ID, &TCP_BACKENDS);
    let client = sa(CLIENT, 40_100);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    assert_eq!(dp.conntrack_len(), 2);

    // One slot left: the reply entry goes in, the forward one cannot, and
    // the reply entry comes out again.
    let full = |dp: &Datapath| dp.drops(DropReason::ConntrackFull);
    let before = full(&dp);
    let (verdict, _) = dp.run(&Packet::tcp(sa(CLIENT, 40_101), tcp_vip()).build());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(full(&dp), before + 1);
    assert_eq!(dp.conntrack_len(), 2, "half a pair was left behind");

    // No slot left: the first entry already fails.
    let (key, entry) = dp.conntrack()[0];
    let mut filler = key;
    filler.src_port = port_to_net(1);
    dp.insert_conntrack(filler, entry);
    let (verdict, _) = dp.run(&Packet::tcp(sa(CLIENT, 40_102), tcp_vip()).build());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(full(&dp), before + 2);
    assert_eq!(dp.conntrack_len(), 3);

    // The established connection: on to its backend, and its replies back.
    let data = Packet::tcp(client, tcp_vip()).tcp_flags(packet::TCP_ACK);
    assert_eq!(forward(&mut dp, &data, &TCP_BACKENDS), backend);
    let reply = Packet::tcp(backend, client).tcp_flags(packet::TCP_ACK);
    let input = reply.build();
    let (verdict, out) = dp.run_egress(&input);
    assert_translated(verdict, &input, &out, &reply.with_src(tcp_vip()), true);
}

/// The real table, an LRU, never refuses: flooded with three times as many
/// new flows as it holds, it evicts the entries no packet used lately, and
/// a connection that keeps sending keeps its backend and its replies'
/// translation throughout.
#[test]
fn a_flood_of_new_flows_evicts_idle_entries_not_an_active_connection() {
    const ENTRIES: u32 = 2048;
    let mut dp = Datapath::load_with_conntrack(ENTRIES, false);
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, TCP_ID, &TCP_BACKENDS);
    let client = sa(CLIENT, 40_200);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    let data = Packet::tcp(client, tcp_vip()).tcp_flags(packet::TCP_ACK);
    let reply = Packet::tcp(backend, client).tcp_flags(packet::TCP_ACK);
    let before = dp.drops(DropReason::ConntrackFull);
    for n in 0..3 * ENTRIES {
        let other = sa(
            ip(10, 0, 9, (n / 50_000) as u8 + 1),
            1024 + (n % 50_000) as u16,
        );
        forward(&mut dp, &Packet::tcp(other, tcp_vip()), &TCP_BACKENDS);
        // The active connection: a segment each way every few new flows.
        if n % 8 == 0 {
            assert_eq!(
                forward(&mut dp, &data, &TCP_BACKENDS),
                backend,
                "after {n} new flows"
            );
            let input = reply.build();
            let (verdict, out) = dp.run_egress(&input);
            assert_translated(
                verdict,
                &input,
                &out,
                &reply.clone().with_src(tcp_vip()),
                true,
            );
        }
    }
    assert_eq!(
        dp.drops(DropReason::ConntrackFull),
        before,
        "the LRU refused an insert"
    );
    assert!(dp.conntrack_len() <= ENTRIES as usize);
}
