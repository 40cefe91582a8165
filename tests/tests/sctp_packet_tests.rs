//! SCTP through every packet program, by BPF_PROG_TEST_RUN: DNAT and
//! reverse NAT with and without a port rewrite, of both families, on pod
//! interfaces and NICs, a NodePort's SNAT pair, the ABORT answering a
//! Service without endpoints, and the packets that are not ours. Every
//! checksum an output carries is checked by the `crc32c` crate over the
//! whole packet (`kxdp_testbed::packet`), apart from the datapath's
//! incremental update. Needs root; panics rather than skipping without it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use kxdp_testbed::{
    cases::{
        self, entering_pod as into_pod, from_chosen, leaving_pod as out, nic_case, pod_case, Count,
        Frame, Frontend, Out,
    },
    datapath::{Datapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_TX},
    nic_checks::{self, arriving, from_client},
    nic_netns::{self, NODE_ADDR},
    packet::{self, Packet, SCTP_ABORT, SCTP_DATA, SCTP_INIT_ACK, SCTP_SHUTDOWN_COMPLETE},
};
use proxy_common::maps::{
    addr_to_net, port_to_net, DropReason, FrontendKey, FrontendKey6, Verdict, CT_SNAT,
    FRONTEND_SNAT_REMOTE, PROTO_SCTP, SCOPE_NODE, SCOPE_POD,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// Diameter's port on the VIP; its backends listen on another port and on
/// the same one, so the rewrite with and without a port change both run.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const PORT: u16 = 3868;
const MOVED: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 1), 3869);
const SAME_PORT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 2), PORT);
/// A VIP without endpoints.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 5);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x20);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 1);
/// The vtag a client's association packets carry after the handshake.
const VTAG: u32 = 0x2468_ace0;

fn sa(addr: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(addr.into(), port)
}

fn pod_key(vip: Ipv4Addr, port: u16) -> FrontendKey {
    FrontendKey {
        addr: addr_to_net(vip),
        port: port_to_net(port),
        proto: PROTO_SCTP,
        scope: SCOPE_POD,
    }
}

fn frontend(
    key: impl Into<proxy_userspace::sync::entries::FrontendMapKey>,
    id: u32,
    flags: u32,
    backends: &[(std::net::IpAddr, u16, bool)],
) -> Frontend {
    nic_checks::frontend(key, id, flags, backends)
}

fn one_backend(backend: (Ipv4Addr, u16)) -> Vec<(std::net::IpAddr, u16, bool)> {
    vec![(backend.0.into(), backend.1, false)]
}

/// An association to `vip` through `backend`: INIT out (DNAT), INIT ACK
/// back (reverse NAT), DATA and ABORT out on the same backend.
fn association(name: &str, backend: (Ipv4Addr, u16)) -> cases::Case {
    let client = sa(CLIENT, 40_000);
    let vip = sa(VIP, PORT);
    let chosen = sa(backend.0, backend.1);
    pod_case(
        name,
        vec![frontend(pod_key(VIP, PORT), 1, 0, &one_backend(backend))],
        vec![
            out(
                "INIT to the VIP",
                Packet::sctp(client, vip),
                TC_ACT_OK,
                Out::Dnat(vec![chosen]),
            ),
            into_pod(
                "INIT ACK from the backend",
                from_chosen(move |b| {
                    Packet::sctp(b, client)
                        .sctp_chunk(SCTP_INIT_ACK, packet::SCTP_INITIATE_TAG)
                        .payload(&[7; 40])
                }),
                TC_ACT_OK,
                Out::ReverseNat(vip),
            ),
            out(
                "DATA, 1,400 bytes",
                Packet::sctp(client, vip)
                    .sctp_chunk(SCTP_DATA, VTAG)
                    .payload(&[0x5a; 1400]),
                TC_ACT_OK,
                Out::DnatAsBefore,
            ),
            out(
                "ABORT",
                Packet::sctp(client, vip)
                    .sctp_chunk(SCTP_ABORT, VTAG)
                    .payload(&[]),
                TC_ACT_OK,
                Out::DnatAsBefore,
            ),
        ],
        vec![Count::Packets(1, 3), Count::ConntrackEntries(2)],
    )
}

/// A Service without endpoints answers as a closed port does.
fn refused() -> cases::Case {
    let client = sa(CLIENT, 40_001);
    let vip = sa(EMPTY_VIP, PORT);
    pod_case(
        "no endpoints: ABORT",
        vec![frontend(pod_key(EMPTY_VIP, PORT), 2, 0, &[])],
        vec![
            out(
                "INIT: ABORT with its Initiate Tag",
                Packet::sctp(client, vip),
                TC_ACT_REDIRECT,
                Out::Abort,
            ),
            out(
                "DATA: ABORT with its own tag, reflected",
                Packet::sctp(client, vip).sctp_chunk(SCTP_DATA, VTAG),
                TC_ACT_REDIRECT,
                Out::Abort,
            ),
            out(
                "an ABORT is not answered",
                Packet::sctp(client, vip)
                    .sctp_chunk(SCTP_ABORT, VTAG)
                    .payload(&[]),
                TC_ACT_SHOT,
                Out::Dropped(DropReason::NoBackend),
            ),
            out(
                "nor a SHUTDOWN COMPLETE",
                Packet::sctp(client, vip)
                    .sctp_chunk(SCTP_SHUTDOWN_COMPLETE, VTAG)
                    .payload(&[]),
                TC_ACT_SHOT,
                Out::Dropped(DropReason::NoBackend),
            ),
        ],
        vec![Count::Verdicts(Verdict::RejectedSctp, 2)],
    )
}

/// Frames that are not ours pass untouched: too short to hold a chunk,
/// or a fragment.
fn not_ours() -> cases::Case {
    let init = Packet::sctp(sa(CLIENT, 40_002), sa(VIP, PORT));
    let whole = init.build();
    // The common header alone, lengths made to agree.
    let mut short = whole[..packet::ETH_HLEN + 20 + 12].to_vec();
    short[packet::ETH_HLEN + 2..packet::ETH_HLEN + 4].copy_from_slice(&32u16.to_be_bytes());
    fix_ipv4_header_checksum(&mut short);
    let fragment = Packet {
        frag: 0x2000,
        ..init
    };
    pod_case(
        "not ours",
        vec![frontend(pod_key(VIP, PORT), 1, 0, &one_backend(MOVED))],
        vec![
            out("a fragment", fragment, TC_ACT_OK, Out::Untouched),
            cases::Step::new(
                "a common header without a chunk",
                cases::Hook::PodIngress,
                Frame::Raw(short),
                TC_ACT_OK,
                Out::Untouched,
            ),
        ],
        vec![Count::ConntrackEntries(0)],
    )
}

fn fix_ipv4_header_checksum(frame: &mut [u8]) {
    let ip = packet::ETH_HLEN;
    frame[ip + 10..ip + 12].fill(0);
    let check = !packet::fold(packet::sum_words(&frame[ip..ip + 20], 0));
    frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
}

fn ipv6_association() -> cases::Case {
    let client = sa(CLIENT6, 40_003);
    let vip = sa(VIP6, PORT);
    let key = FrontendKey6 {
        addr: proxy_common::addr::addr6_to_net(VIP6),
        port: port_to_net(PORT),
        proto: PROTO_SCTP,
        scope: SCOPE_POD,
    };
    pod_case(
        "IPv6",
        vec![frontend(key, 3, 0, &[(BACKEND6.into(), 3869, false)])],
        vec![
            out(
                "INIT to the VIP",
                Packet::sctp(client, vip),
                TC_ACT_OK,
                Out::Dnat(vec![sa(BACKEND6, 3869)]),
            ),
            into_pod(
                "INIT ACK from the backend",
                from_chosen(move |b| {
                    Packet::sctp(b, client).sctp_chunk(SCTP_INIT_ACK, packet::SCTP_INITIATE_TAG)
                }),
                TC_ACT_OK,
                Out::ReverseNat(vip),
            ),
        ],
        vec![Count::Packets(3, 1)],
    )
}

fn ipv6_refused() -> cases::Case {
    let key = FrontendKey6 {
        addr: proxy_common::addr::addr6_to_net(VIP6),
        port: port_to_net(PORT),
        proto: PROTO_SCTP,
        scope: SCOPE_POD,
    };
    pod_case(
        "IPv6, no endpoints: ABORT",
        vec![frontend(key, 4, 0, &[])],
        vec![out(
            "INIT",
            Packet::sctp(sa(CLIENT6, 40_004), sa(VIP6, PORT)),
            TC_ACT_REDIRECT,
            Out::Abort,
        )],
        vec![Count::Verdicts(Verdict::RejectedSctp, 1)],
    )
}

fn node_key(port: u16) -> FrontendKey {
    FrontendKey {
        addr: addr_to_net(NODE_ADDR),
        port: port_to_net(port),
        proto: PROTO_SCTP,
        scope: SCOPE_NODE,
    }
}

/// A NodePort from outside to a backend on this node, and to none.
fn nodeport_cases() -> cases::Case {
    let local = (Ipv4Addr::new(10, 1, 1, 2), 3869);
    let client = sa(nic_netns::CLIENT, 40_005);
    nic_case(
        "NodePort",
        vec![
            frontend(node_key(30_868), 5, 0, &[(local.0.into(), local.1, true)]),
            frontend(node_key(30_869), 6, 0, &[]),
        ],
        vec![
            arriving(
                "INIT to a local backend",
                Packet::sctp(client, sa(NODE_ADDR, 30_868)),
                XDP_TX_OR_PASS,
                Out::Dnat(vec![sa(local.0, local.1)]),
            ),
            arriving(
                "INIT to a NodePort without endpoints",
                Packet::sctp(client, sa(NODE_ADDR, 30_869)),
                XDP_TX,
                Out::Abort,
            ),
        ],
        vec![Count::Verdicts(Verdict::RejectedSctp, 1)],
    )
}

/// A local backend's packet is handed to the stack.
const XDP_TX_OR_PASS: u32 = kxdp_testbed::datapath::XDP_PASS;

#[test]
fn sctp_packet_cases() {
    cases::run(vec![
        association("port rewritten", MOVED),
        association("port kept", SAME_PORT),
        refused(),
        not_ours(),
        ipv6_association(),
        ipv6_refused(),
        nodeport_cases(),
    ]);
}

/// A checksum left to CRC offload (zero) stays zero through the rewrite:
/// whoever computes it computes it over the rewritten packet.
#[test]
fn a_checksum_left_to_offload_stays_zero() {
    let mut dp = Datapath::load();
    dp.add_frontend_any(pod_key(VIP, PORT), 1, 0, &one_backend(MOVED));
    let init = Packet::sctp(sa(CLIENT, 40_006), sa(VIP, PORT)).no_sctp_crc();
    let (verdict, out) = dp.run(&init.build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(packet::dst(&out), sa(MOVED.0, MOVED.1), "translated");
    assert_eq!(packet::sctp_crc_field(&out), 0, "checksum left to offload");
    let expected = init.with_dst(sa(MOVED.0, MOVED.1)).build();
    assert_eq!(out, expected);
}

/// The port rewrite keeps the checksum right whatever the packet's length
/// (the update shifts by it), up to what a test run takes in one page
/// (proxy-common's tests take lengths to 64 KiB).
#[test]
fn the_checksum_is_right_for_every_length() {
    let mut dp = Datapath::load();
    dp.add_frontend_any(pod_key(VIP, PORT), 1, 0, &one_backend(MOVED));
    for (i, len) in (0..64)
        .chain([255, 256, 1020, 1396, 1400, 1452, 2900])
        .enumerate()
    {
        let client = sa(CLIENT, 41_000 + i as u16);
        let data = Packet::sctp(client, sa(VIP, PORT))
            .sctp_chunk(SCTP_DATA, VTAG)
            .payload(&vec![i as u8 ^ 0xa5; len]);
        let (verdict, out) = dp.run(&data.build());
        assert_eq!(verdict, TC_ACT_OK, "payload {len}");
        packet::verify_checksums(&out).unwrap_or_else(|e| panic!("payload {len}: {e}"));
        assert_eq!(
            out,
            data.with_dst(sa(MOVED.0, MOVED.1)).build(),
            "payload {len}"
        );
    }
}

/// A NodePort whose backend is on another node: both ends translated in
/// XDP, both ports changed in one checksum update, and the reply back.
#[test]
fn a_nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_back() {
    let remote = sa(Ipv4Addr::new(10, 1, 2, 2), 3869);
    let nic = nic_netns::enter();
    let mut dp = Datapath::load();
    dp.set_nic_addr(nic, NODE_ADDR);
    dp.add_frontend_any(
        node_key(30_868),
        1,
        FRONTEND_SNAT_REMOTE,
        &[(remote.ip(), remote.port(), false)],
    );
    let client = sa(nic_netns::CLIENT, 40_007);
    let nodeport = sa(NODE_ADDR, 30_868);
    let init = from_client(Packet::sctp(client, nodeport));
    let (verdict, out) = dp.run_nic(&init.build(), nic);
    assert_eq!(verdict, XDP_TX, "back out of the NIC it came in on");
    let port = nic_checks::assert_snated(&out, &init, remote, NODE_ADDR.into());

    let reply = Packet::sctp(remote, sa(NODE_ADDR, port))
        .sctp_chunk(SCTP_INIT_ACK, packet::SCTP_INITIATE_TAG)
        .payload(&[3; 100]);
    nic_checks::assert_reply_translated_back(&mut dp, nic, reply, nodeport, client);
    let entries = dp.conntrack();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().all(|(_, e)| e.flags == CT_SNAT));

    // An ABORT marks the SNATed association closing, as a RST does.
    let abort = from_client(
        Packet::sctp(client, nodeport)
            .sctp_chunk(SCTP_ABORT, VTAG)
            .payload(&[]),
    );
    let (verdict, out) = dp.run_nic(&abort.build(), nic);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        nic_checks::assert_snated(&out, &abort, remote, NODE_ADDR.into()),
        port
    );
    assert!(dp
        .conntrack()
        .iter()
        .any(|(_, e)| e.flags & proxy_common::maps::CT_CLOSING != 0));
}

/// An INIT on a tuple whose association conntrack still holds is balanced
/// afresh, as a SYN is; the new association's later packets stay.
#[test]
fn an_init_on_a_reused_tuple_is_balanced_afresh() {
    let mut dp = Datapath::load();
    let both = [MOVED, SAME_PORT];
    let all: Vec<_> = both.iter().map(|&(a, p)| (a.into(), p, false)).collect();
    dp.add_frontend_any(pod_key(VIP, PORT), 1, 0, &all);
    let init = Packet::sctp(sa(CLIENT, 40_008), sa(VIP, PORT));
    let (_, out) = dp.run(&init.build());
    let first = packet::dst(&out);
    let remaining: Vec<_> = both
        .iter()
        .filter(|&&(a, p)| sa(a, p) != first)
        .map(|&(a, p)| (a.into(), p, false))
        .collect();
    dp.add_frontend_any(pod_key(VIP, PORT), 5, 0, &remaining);
    let (_, out) = dp.run(&init.build());
    let again = packet::dst(&out);
    assert_ne!(again, first, "the INIT followed a stale conntrack entry");
    let data = init.sctp_chunk(SCTP_DATA, VTAG);
    let (verdict, out) = dp.run(&data.build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, data.with_dst(again).build(), "the association stays");
}
