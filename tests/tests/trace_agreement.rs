//! `kxdp trace` against the programs it explains: for random tuples the
//! backend the trace predicts for a new flow is the one the flow then gets
//! through BPF_PROG_TEST_RUN (and the trace then finds that flow), at a pod
//! interface and at a NIC (with its SNAT), in both families, with and
//! without session affinity; and its verdicts match the programs' for a
//! Service without endpoints, source ranges and a policy Local without a
//! local endpoint. The trace reads the datapath's own pins. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kxdp_testbed::{
    datapath::{pod_key, Datapath, TC_ACT_OK, TC_ACT_SHOT, XDP_TX},
    nic_netns::{self, NODE_ADDR},
    packet::{self, Packet},
};
use proxy_common::maps::{
    addr_to_net, port_to_net, DropReason, FrontendKey, FRONTEND_AFFINITY_CLIENT_IP,
    FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, SCOPE_NODE,
};
use proxy_userspace::{
    commands::trace::{
        now_s,
        request::{Destination, Request, Source, Via},
        walk::{walk, Choice, Outcome, TraceMaps, Translation},
    },
    model::types::Protocol,
};

/// xorshift64*: reproducible tuples from a printed seed.
struct Tuples(u64);

impl Tuples {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn port(&mut self) -> u16 {
        1024 + (self.next() % 60_000) as u16
    }
}

fn trace(maps: &TraceMaps, src: SocketAddr, dst: SocketAddr, proto: Protocol, via: Via) -> Outcome {
    let request = Request::new(
        Source {
            addr: src.ip(),
            port: Some(src.port()),
        },
        Destination {
            addr: dst,
            protocol: proto,
        },
        via,
    )
    .unwrap();
    walk(maps, request, now_s()).unwrap().outcome
}

fn frame(src: SocketAddr, dst: SocketAddr, proto: Protocol) -> Vec<u8> {
    match proto {
        Protocol::Tcp => Packet::tcp(src, dst).build(),
        Protocol::Udp => Packet::udp(src, dst).build(),
        Protocol::Sctp => Packet::sctp(src, dst).build(),
    }
}

fn backends4(third: u8, n: u8) -> Vec<(Ipv4Addr, u16)> {
    (0..n)
        .map(|i| (Ipv4Addr::new(10, 244, third, 10 + i), 8080))
        .collect()
}

#[test]
fn the_backend_traced_for_a_new_flow_is_the_one_it_gets() {
    let seed = 0x6b78_6470 ^ u64::from(std::process::id());
    println!("seed {seed:#x}");
    let mut tuples = Tuples(seed | 1);
    let mut dp = Datapath::load();
    let web = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80));
    let dns = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 53), 53));
    let sticky = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 77), 80));
    let vip6 = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
    let web6 = SocketAddr::from((vip6, 80));
    dp.add_service(
        Ipv4Addr::new(10, 96, 0, 10),
        80,
        PROTO_TCP,
        1,
        &backends4(1, 7),
    );
    dp.add_service(
        Ipv4Addr::new(10, 96, 0, 53),
        53,
        PROTO_UDP,
        2,
        &backends4(2, 3),
    );
    dp.add_frontend(
        pod_key(Ipv4Addr::new(10, 96, 0, 77), 80, PROTO_TCP),
        3,
        FRONTEND_AFFINITY_CLIENT_IP,
        &backends4(3, 5)
            .iter()
            .map(|&(a, p)| (a, p, false))
            .collect::<Vec<_>>(),
    );
    let v6: Vec<(Ipv6Addr, u16)> = (0..5)
        .map(|i| (Ipv6Addr::new(0xfd00, 0x10, 0x244, 4, 0, 0, 0, 10 + i), 8080))
        .collect();
    dp.add_service6(vip6, 80, PROTO_TCP, 4, &v6);
    let sctp = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 99), 99));
    dp.add_service(
        Ipv4Addr::new(10, 96, 0, 99),
        99,
        PROTO_SCTP,
        5,
        &backends4(5, 4),
    );
    let maps = TraceMaps::open(dp.pin_path()).unwrap();
    let (mut by_affinity, mut spread) = (0, std::collections::BTreeSet::new());
    for i in 0..200 {
        let (dst, proto) = match i % 5 {
            0 => (web, Protocol::Tcp),
            1 => (dns, Protocol::Udp),
            2 => (sticky, Protocol::Tcp),
            3 => (sctp, Protocol::Sctp),
            _ => (web6, Protocol::Tcp),
        };
        let client: IpAddr = match dst {
            SocketAddr::V4(_) if dst == sticky => {
                Ipv4Addr::new(10, 0, 0, 1 + (tuples.next() % 4) as u8).into()
            }
            SocketAddr::V4(_) => {
                Ipv4Addr::from(0x0a00_0000 | (tuples.next() as u32 & 0xff_ffff)).into()
            }
            SocketAddr::V6(_) => {
                Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(tuples.next())).into()
            }
        };
        let src = SocketAddr::new(client, tuples.port());
        let predicted = match trace(&maps, src, dst, proto, Via::Pod) {
            Outcome::Translate(Translation::New(chosen)) => {
                by_affinity += usize::from(matches!(chosen.choice, Choice::Affinity { .. }));
                chosen.backend
            }
            other => panic!("{src} → {dst}: traced {other:?}"),
        };
        let (verdict, out) = dp.run(&frame(src, dst, proto));
        assert_eq!(verdict, TC_ACT_OK, "{src} → {dst}");
        assert_eq!(
            packet::dst(&out),
            predicted,
            "{src} → {dst}: the flow's backend"
        );
        spread.insert(predicted);
        // The flow now exists: the trace follows its entry.
        match trace(&maps, src, dst, proto, Via::Pod) {
            Outcome::Translate(Translation::Existing(entry)) => assert_eq!(entry.nat, predicted),
            other => panic!("{src} → {dst} again: traced {other:?}"),
        }
    }
    assert!(
        by_affinity > 20,
        "clients of the sticky Service came back: {by_affinity}"
    );
    // Not one backend over and over: the tuples spread over the tables
    // (the sticky Service's four clients keep at most four of its five).
    assert!(spread.len() >= 15, "{} backends hit", spread.len());
}

#[test]
fn a_nodeport_flow_is_traced_to_its_backend_and_its_snat() {
    let nic = nic_netns::enter();
    let mut dp = Datapath::load();
    dp.set_nic_addr(nic, NODE_ADDR);
    let key = FrontendKey {
        addr: addr_to_net(NODE_ADDR),
        port: port_to_net(30080),
        proto: PROTO_TCP,
        scope: SCOPE_NODE,
    };
    // Behind the other node (`nic_netns::REMOTE_PODS`), so SNATed.
    let remote: Vec<(Ipv4Addr, u16, bool)> = (0..4)
        .map(|i| (Ipv4Addr::new(10, 1, 2, 10 + i), 8080, false))
        .collect();
    dp.add_frontend(key, 1, FRONTEND_SNAT_REMOTE, &remote);
    let maps = TraceMaps::open(dp.pin_path()).unwrap();
    let nodeport = SocketAddr::from((NODE_ADDR, 30080));
    let mut tuples = Tuples(0x5eed);
    for _ in 0..50 {
        let src = SocketAddr::from((nic_netns::CLIENT, tuples.port()));
        let chosen = match trace(&maps, src, nodeport, Protocol::Tcp, Via::Nic) {
            Outcome::Translate(Translation::New(chosen)) => chosen,
            other => panic!("{src}: traced {other:?}"),
        };
        assert_eq!(chosen.recording, "snat");
        // (Before 5.15 the harness runs the NIC program on the loopback,
        // whose address it writes too.)
        assert!(
            chosen.snat_to.contains(&(nic, IpAddr::V4(NODE_ADDR))),
            "{chosen:?}"
        );
        let mut syn = Packet::tcp(src, nodeport);
        syn.src_mac = nic_netns::CLIENT_MAC;
        syn.dst_mac = nic_netns::NIC_MAC;
        let (verdict, out) = dp.run_nic(&syn.build(), nic);
        assert_eq!(verdict, XDP_TX, "{src}");
        assert_eq!(
            packet::dst(&out),
            chosen.backend,
            "{src}: the flow's backend"
        );
        assert_eq!(
            packet::src(&out).ip(),
            IpAddr::V4(NODE_ADDR),
            "{src}: SNATed"
        );
        assert_eq!(Some(packet::src(&out).port()), chosen.snat_first_port);
    }
}

#[test]
fn the_traced_verdict_is_the_programs_for_rejects_source_ranges_and_policy_local() {
    let mut dp = Datapath::load();
    let empty = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 1), 80));
    let ranged = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 2), 80));
    let local = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 3), 80));
    dp.add_service(Ipv4Addr::new(10, 96, 1, 1), 80, PROTO_TCP, 1, &[]);
    let one = [(Ipv4Addr::new(10, 244, 9, 2), 8080, false)];
    dp.add_frontend(
        pod_key(Ipv4Addr::new(10, 96, 1, 2), 80, PROTO_TCP),
        2,
        FRONTEND_SOURCE_RANGES,
        &one,
    );
    dp.allow_source(2, Ipv4Addr::new(10, 1, 0, 0), 16);
    dp.add_frontend(
        pod_key(Ipv4Addr::new(10, 96, 1, 3), 80, PROTO_TCP),
        3,
        FRONTEND_EMPTY_DROP,
        &[],
    );
    let maps = TraceMaps::open(dp.pin_path()).unwrap();
    let inside = SocketAddr::from((Ipv4Addr::new(10, 1, 2, 3), 40000));
    let outside = SocketAddr::from((Ipv4Addr::new(10, 2, 0, 1), 40000));

    assert!(matches!(
        trace(&maps, inside, empty, Protocol::Tcp, Via::Pod),
        Outcome::Reject
    ));
    let rejected = dp.verdicts(proxy_common::maps::Verdict::RejectedTcp);
    let (_, out) = dp.run(&frame(inside, empty, Protocol::Tcp));
    assert_eq!(
        dp.verdicts(proxy_common::maps::Verdict::RejectedTcp),
        rejected + 1
    );
    assert_eq!(packet::dst(&out), inside, "the RST goes back to the client");

    match trace(&maps, inside, ranged, Protocol::Tcp, Via::Pod) {
        Outcome::Translate(Translation::New(chosen)) => {
            let (verdict, out) = dp.run(&frame(inside, ranged, Protocol::Tcp));
            assert_eq!((verdict, packet::dst(&out)), (TC_ACT_OK, chosen.backend));
        }
        other => panic!("a client in range: traced {other:?}"),
    }
    for (dst, reason) in [
        (ranged, DropReason::SourceRange),
        (local, DropReason::NoLocalBackend),
    ] {
        match trace(&maps, outside, dst, Protocol::Tcp, Via::Pod) {
            Outcome::Drop(traced) => assert_eq!(traced, reason, "{dst}"),
            other => panic!("{dst}: traced {other:?}"),
        }
        let drops = dp.drops(reason);
        let (verdict, _) = dp.run(&frame(outside, dst, Protocol::Tcp));
        assert_eq!(verdict, TC_ACT_SHOT, "{dst}");
        assert_eq!(
            dp.drops(reason),
            drops + 1,
            "{dst}: counted as {}",
            reason.name()
        );
    }
    // Not a frontend: untouched, as the program leaves it.
    let nothing = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 9), 80));
    assert!(matches!(
        trace(&maps, inside, nothing, Protocol::Tcp, Via::Pod),
        Outcome::NoFrontend
    ));
    let built = frame(inside, nothing, Protocol::Tcp);
    assert_eq!(dp.run(&built), (TC_ACT_OK, built));
}
