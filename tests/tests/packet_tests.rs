//! Packet tests (DESIGN.md §5): the real `pod_ingress` program run through
//! BPF_PROG_TEST_RUN. Each case asserts the verdict and the whole output frame:
//! the expected frame is built from scratch (checksums computed by
//! `kxdp_testbed::packet`, not by the kernel) and compared byte for byte.
//! Needs root; panics rather than skipping without it.

use std::{collections::BTreeMap, net::Ipv4Addr, net::SocketAddrV4};

use kxdp_testbed::{
    datapath::{datapath_now_s, datapath_s_ago, Datapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packet::{self, ethernet, Packet, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, L4, PROTO_ICMP},
};
use proxy_common::hash::flow_hash;
use proxy_common::maps::{
    addr_to_net, port_to_net, AffinityKey, AffinityValue, DropReason, ServiceKey, Verdict,
    CT_FORWARD, CT_REPLY, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SERVICE_EMPTY_DROP,
    SERVICE_SOURCE_RANGES,
};

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn sa(addr: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr, port)
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

fn tcp_vip() -> SocketAddrV4 {
    sa(TCP_VIP, TCP_PORT)
}

fn udp_vip() -> SocketAddrV4 {
    sa(UDP_VIP, UDP_PORT)
}

fn backend_of(out: &[u8], backends: &[(Ipv4Addr, u16)]) -> SocketAddrV4 {
    let dst = packet::dst(out);
    assert!(
        backends.iter().any(|&(a, p)| sa(a, p) == dst),
        "destination {dst} is not a backend of the service"
    );
    dst
}

/// Asserts that `out` differs from `input` only inside `fields` (offset, length).
fn assert_only_changed(input: &[u8], out: &[u8], fields: &[(usize, usize)]) {
    assert_eq!(input.len(), out.len(), "frame length changed");
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        let allowed = fields
            .iter()
            .any(|&(off, len)| (off..off + len).contains(&i));
        assert!(allowed || a == b, "byte {i} changed: {a:#04x} -> {b:#04x}");
    }
}

/// The fields DNAT (`source == false`) or reverse NAT (`source == true`) may touch.
fn nat_fields(frame: &[u8], source: bool) -> Vec<(usize, usize)> {
    let h = packet::parse(frame).expect("parsable input");
    let (addr, port) = if source {
        (packet::IP_SADDR_OFF, 0)
    } else {
        (packet::IP_DADDR_OFF, 2)
    };
    vec![
        (h.l3_off + addr, 4),
        (h.l3_off + packet::IP_CSUM_OFF, 2),
        (h.l4_off + port, 2),
        (h.l4_csum_off(), 2),
    ]
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
fn forward(dp: &mut Datapath, p: &Packet, backends: &[(Ipv4Addr, u16)]) -> SocketAddrV4 {
    let input = p.build();
    let (verdict, out) = dp.run(&input);
    assert_eq!(verdict, TC_ACT_OK, "verdict");
    let backend = backend_of(&out, backends);
    assert_translated(verdict, &input, &out, &p.clone().with_dst(backend), false);
    backend
}

#[test]
fn tcp_syn_to_vip_is_dnated() {
    let mut dp = datapath();
    forward(
        &mut dp,
        &Packet::tcp(sa(CLIENT, 40000), tcp_vip()),
        &TCP_BACKENDS,
    );
}

#[test]
fn udp_with_checksum_to_vip_is_dnated() {
    let mut dp = datapath();
    let p = Packet::udp(sa(CLIENT, 40000), udp_vip());
    assert_ne!(packet::l4_csum_field(&p.build()), 0);
    forward(&mut dp, &p, &UDP_BACKENDS);
}

#[test]
fn udp_without_checksum_keeps_zero_checksum() {
    let mut dp = datapath();
    let p = Packet::udp(sa(CLIENT, 40000), udp_vip()).no_udp_checksum();
    let input = p.build();
    let (verdict, out) = dp.run(&input);
    let backend = backend_of(&out, &UDP_BACKENDS);
    assert_translated(verdict, &input, &out, &p.clone().with_dst(backend), false);
    assert_eq!(
        packet::l4_csum_field(&out),
        0,
        "UDP checksum must stay 0 (none)"
    );
}

/// RFC 768: a UDP checksum that computes to zero is sent as 0xffff, since 0
/// means "no checksum". The payload is chosen so the translated datagram sums
/// to exactly that.
#[test]
fn udp_checksum_computing_to_zero_is_sent_as_ffff() {
    let mut dp = Datapath::load();
    let (vip, backend) = (sa(ip(10, 96, 0, 54), 53), sa(ip(10, 0, 3, 9), 5353));
    dp.add_service(
        *vip.ip(),
        vip.port(),
        PROTO_UDP,
        4,
        &[(*backend.ip(), backend.port())],
    );
    // With a zero word in the payload, the checksum of the translated datagram
    // is c; putting c into that word makes the checksum 0.
    let probe = Packet::udp(sa(CLIENT, 40000), backend).payload(&[0, 0, 0x6b, 0x78]);
    let c = packet::l4_csum_field(&probe.build());
    let expected = probe.payload(&[(c >> 8) as u8, c as u8, 0x6b, 0x78]);
    let p = expected.clone().with_dst(vip);
    let input = p.build();
    assert_ne!(
        packet::l4_csum_field(&input),
        0,
        "input must carry a checksum"
    );

    let (verdict, out) = dp.run(&input);
    assert_translated(verdict, &input, &out, &expected, false);
    assert_eq!(packet::l4_csum_field(&out), 0xffff);
}

#[test]
fn same_flow_twice_gets_same_backend() {
    let mut dp = datapath();
    for p in [
        Packet::tcp(sa(CLIENT, 40001), tcp_vip()),
        Packet::udp(sa(CLIENT, 40001), udp_vip()),
    ] {
        let backends: &[_] = if matches!(p.l4, L4::Tcp { .. }) {
            &TCP_BACKENDS
        } else {
            &UDP_BACKENDS
        };
        let first = forward(&mut dp, &p, backends);
        assert_eq!(forward(&mut dp, &p, backends), first);
    }
}

/// Conntrack, not just a deterministic hash: after the service is re-pointed
/// at a new backend set, an established flow keeps its backend and a new flow
/// takes the new one.
#[test]
fn established_flow_keeps_backend_when_selection_changes() {
    let mut dp = datapath();
    let client = sa(CLIENT, 40002);
    let first = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);

    let replacement = [(ip(10, 0, 2, 9), 9090)];
    dp.add_service(TCP_VIP, TCP_PORT, PROTO_TCP, 5, &replacement);
    let established = Packet::tcp(client, tcp_vip()).tcp_flags(packet::TCP_ACK);
    assert_eq!(forward(&mut dp, &established, &TCP_BACKENDS), first);
    let new_flow = Packet::tcp(sa(CLIENT, 40003), tcp_vip());
    assert_eq!(
        forward(&mut dp, &new_flow, &replacement),
        sa(ip(10, 0, 2, 9), 9090)
    );
}

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
    let net = |s: SocketAddrV4| (addr_to_net(*s.ip()), port_to_net(s.port()));
    assert_eq!((fwd.direction, rev.direction), (CT_FORWARD, CT_REPLY));
    assert_eq!((fwd_key.src_addr, fwd_key.src_port), net(client));
    assert_eq!((fwd_key.dst_addr, fwd_key.dst_port), net(tcp_vip()));
    assert_eq!((fwd.nat_addr, fwd.nat_port), net(backend));
    assert_eq!((rev_key.src_addr, rev_key.src_port), net(backend));
    assert_eq!((rev_key.dst_addr, rev_key.dst_port), net(client));
    assert_eq!((rev.nat_addr, rev.nat_port), net(tcp_vip()));
    assert_eq!((fwd_key.proto, rev_key.proto), (PROTO_TCP, PROTO_TCP));
    assert_eq!((fwd.service_id, rev.service_id), (TCP_ID, TCP_ID));
    assert_eq!(fwd.backend_id, rev.backend_id);
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
fn maglev_choice(table: &[u32], client: SocketAddrV4, vip: SocketAddrV4, proto: u8) -> u32 {
    let hash = flow_hash(
        addr_to_net(*client.ip()),
        addr_to_net(*vip.ip()),
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
    let many: Vec<(Ipv4Addr, u16)> = (1..=30).map(|i| (ip(10, 0, 9, i), 8080)).collect();
    dp.add_service(*vip.ip(), vip.port(), PROTO_TCP, 9, &many);
    let big = dp.table(9);
    assert_eq!(big.len(), 4093);
    let established = sa(CLIENT, 43000);
    let kept = forward(&mut dp, &Packet::tcp(established, vip), &many);
    // One backend fewer, same size class: the table is rewritten in place.
    let kept_id = Datapath::backend_id(9, many.iter().position(|b| sa(b.0, b.1) == kept).unwrap());
    let others: Vec<u32> = (0..30)
        .map(|i| Datapath::backend_id(9, i))
        .filter(|id| *id != kept_id)
        .take(29)
        .collect();
    dp.replace_table(9, &others);
    let fewer = dp.table(9);
    assert_eq!(fewer.len(), 4093);
    assert!(!fewer.contains(&kept_id));
    for port in 44001..44101 {
        let client = sa(CLIENT, port);
        let id = maglev_choice(&fewer, client, vip, PROTO_TCP);
        let index = (0..30).find(|i| Datapath::backend_id(9, *i) == id).unwrap();
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

/// The agent knows which table each slot holds from its record
/// (`MAGLEV_IDS`), never by reading `MAGLEV` back: before Linux 6.8 every
/// such read waits for a grace period. A record naming a table that is gone
/// (an agent killed between writing the record and the outer array) or a
/// map that is no table reads as no table; the datapath keeps the table in
/// its slot, and the next write swaps a new one in.
#[test]
fn a_recorded_table_that_is_gone_reads_as_none_and_the_next_write_replaces_it() {
    let mut dp = datapath();
    let vip = sa(ip(10, 96, 0, 91), 80);
    let three = [
        (ip(10, 0, 9, 1), 8080),
        (ip(10, 0, 9, 2), 8080),
        (ip(10, 0, 9, 3), 8080),
    ];
    dp.add_service(*vip.ip(), vip.port(), PROTO_TCP, 12, &three);
    let ids: Vec<u32> = (0..3).map(|i| Datapath::backend_id(12, i)).collect();
    let first = dp.recorded_table_id(12);
    assert_ne!(first, 0, "a written table is recorded");
    assert_eq!(dp.table(12).len(), 509);
    // Two backends: another size class, so a new table replaces the first,
    // which is freed.
    dp.replace_table(12, &ids[..2]);
    let second = dp.recorded_table_id(12);
    assert_ne!(second, first);
    let live = dp.table(12);
    assert_eq!(live.len(), 251);
    let routes_by = |dp: &mut Datapath, table: &[u32], ports: std::ops::Range<u16>| {
        for port in ports {
            let client = sa(CLIENT, port);
            let id = maglev_choice(table, client, vip, PROTO_TCP);
            let expected = three[ids.iter().position(|b| *b == id).expect("a backend")];
            let got = forward(dp, &Packet::tcp(client, vip), &three);
            assert_eq!(got, sa(expected.0, expected.1), "client port {port}");
        }
    };
    for (what, stale) in [
        ("a gone table", first),
        ("a map that is no table", dp.map_id("BACKENDS")),
    ] {
        dp.record_table_id(12, stale);
        assert!(dp.table(12).is_empty(), "the record names {what}: no table");
        routes_by(&mut dp, &live, 45001..45041);
    }
    // Same size class as the live table, but it is not known: swapped in
    // whole, and recorded.
    dp.replace_table(12, &[ids[0], ids[2]]);
    let healed = dp.table(12);
    assert_eq!(healed.len(), 251);
    assert_ne!(healed, live);
    assert!(![0, first, second].contains(&dp.recorded_table_id(12)));
    routes_by(&mut dp, &healed, 46001..46041);
}

#[test]
fn reply_from_backend_is_reverse_nated() {
    let mut dp = datapath();
    // (name, VIP, backends, packet from a to b)
    type Case = (&'static str, SocketAddrV4, &'static [(Ipv4Addr, u16)], Make);
    type Make = fn(SocketAddrV4, SocketAddrV4) -> Packet;
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

#[test]
fn reply_without_forward_flow_is_untouched() {
    let mut dp = datapath();
    let (b, bport) = TCP_BACKENDS[0];
    let backend = forward(
        &mut dp,
        &Packet::tcp(sa(CLIENT, 40006), tcp_vip()),
        &TCP_BACKENDS,
    );
    for (name, p) in [
        (
            "reply before any forward packet",
            Packet::tcp(sa(b, bport), sa(CLIENT, 40007)),
        ),
        (
            "reply to another client port",
            Packet::tcp(backend, sa(CLIENT, 40008)),
        ),
        (
            "reply to another client",
            Packet::tcp(backend, sa(ip(10, 0, 1, 6), 40006)),
        ),
        (
            "reply with another protocol",
            Packet::udp(backend, sa(CLIENT, 40006)),
        ),
    ] {
        let input = p.build();
        assert_eq!(dp.run_egress(&input), (TC_ACT_OK, input), "{name}");
    }
}

#[test]
fn each_direction_translates_only_its_own_packets() {
    let mut dp = datapath();
    let client = sa(CLIENT, 40200);
    let to_vip = Packet::tcp(client, tcp_vip()).build();
    // A packet entering a pod is never DNATed, even if it is for a VIP.
    assert_eq!(dp.run_egress(&to_vip), (TC_ACT_OK, to_vip.clone()));
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    // A reply leaving the backend pod passes as it is: it is reverse-NATed
    // on its way into the client, wherever the backend runs.
    let reply = Packet::tcp(backend, client)
        .tcp_flags(packet::TCP_SYN | packet::TCP_ACK)
        .build();
    assert_eq!(dp.run(&reply), (TC_ACT_OK, reply.clone()));
    let (_, out) = dp.run_egress(&reply);
    assert_eq!(packet::src(&out), tcp_vip());
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    let mut dp = datapath();
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

    let cases: Vec<(&str, Vec<u8>)> = vec![
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
    ];
    for (name, input) in cases {
        assert_eq!(dp.run(&input), (TC_ACT_OK, input), "{name}");
    }
    assert_eq!(dp.stats(TCP_ID).packets + dp.stats(UDP_ID).packets, 0);
    assert!(dp.conntrack().is_empty(), "no flow may be tracked");
}

#[test]
fn ip_options_shift_the_l4_header() {
    let mut dp = datapath();
    let router_alert = [0x94, 0x04, 0, 0];
    let nops_then_end = [1, 1, 1, 1, 1, 1, 1, 0];
    for (i, options) in [&router_alert[..], &nops_then_end[..]]
        .into_iter()
        .enumerate()
    {
        let client = sa(CLIENT, 41000 + i as u16);
        let tcp = Packet::tcp(client, tcp_vip()).ip_options(options);
        let udp = Packet::udp(client, udp_vip()).ip_options(options);
        assert_eq!(
            tcp.build()[packet::ETH_HLEN] & 0x0f,
            5 + options.len() as u8 / 4
        );
        forward(&mut dp, &tcp, &TCP_BACKENDS);
        forward(&mut dp, &udp, &UDP_BACKENDS);
        forward(&mut dp, &tcp.clone().vlan(9), &TCP_BACKENDS);
    }
}

#[test]
fn vlan_tagged_tcp_to_vip_is_dnated() {
    let mut dp = datapath();
    let p = Packet::tcp(sa(CLIENT, 40010), tcp_vip()).vlan(100);
    assert_eq!(p.build()[12..14], 0x8100u16.to_be_bytes());
    assert_eq!(p.build()[16..18], ETH_P_IPV4.to_be_bytes());
    forward(&mut dp, &p, &TCP_BACKENDS);
}

#[test]
fn service_without_backends_rejects_tcp_with_a_reset() {
    let mut dp = datapath();
    let vip = sa(ip(10, 96, 0, 20), 80);
    dp.add_service(*vip.ip(), vip.port(), PROTO_TCP, 3, &[]);
    let client = sa(CLIENT, 40011);
    let cases = [
        ("SYN with data", Packet::tcp(client, vip)),
        (
            "ACK",
            Packet::tcp(client, vip)
                .tcp_flags(packet::TCP_ACK)
                .payload(&[]),
        ),
    ];
    for (n, (name, request)) in cases.iter().enumerate() {
        let (verdict, out) = dp.run(&request.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{name}: sent back into the pod");
        packet::assert_rst_answers(&out, request);
        assert_eq!(dp.verdicts(Verdict::RejectedTcp), n as u64 + 1);
    }
    // A RST is never answered.
    let rst = Packet::tcp(client, vip).tcp_flags(0x04).build();
    assert_eq!(dp.run(&rst).0, TC_ACT_SHOT);
    assert!(
        dp.conntrack().is_empty(),
        "a rejected flow must not be tracked"
    );
}

#[test]
fn service_without_backends_answers_udp_with_port_unreachable() {
    let mut dp = datapath();
    let vip = sa(ip(10, 96, 0, 21), 53);
    dp.add_service(*vip.ip(), vip.port(), PROTO_UDP, 4, &[]);
    for request in [
        Packet::udp(sa(CLIENT, 40012), vip),
        Packet::udp(sa(CLIENT, 40012), vip).payload(&[]),
        Packet::udp(sa(CLIENT, 40012), vip).payload(&[0x5a; 1200]),
    ] {
        let input = request.build();
        let (verdict, out) = dp.run(&input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        packet::assert_port_unreachable_answers(&out, &input);
    }
    assert_eq!(dp.verdicts(Verdict::RejectedUdp), 3);
}

#[test]
fn internal_policy_local_without_local_endpoints_drops_silently() {
    let mut dp = datapath();
    let key = ServiceKey {
        addr: addr_to_net(ip(10, 96, 0, 22)),
        port: port_to_net(80),
        proto: PROTO_TCP,
        scope: SCOPE_CLUSTER_IP,
    };
    dp.add_frontend(key, 5, SERVICE_EMPTY_DROP, &[]);
    let request = Packet::tcp(sa(CLIENT, 40013), sa(ip(10, 96, 0, 22), 80));
    assert_eq!(dp.run(&request.build()).0, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::NoLocalBackend), 1);
    assert_eq!(dp.verdicts(Verdict::RejectedTcp), 0);
}

#[test]
fn stats_count_service_packets_and_bytes() {
    let mut dp = datapath();
    let packets = [
        Packet::tcp(sa(CLIENT, 40012), tcp_vip()),
        Packet::tcp(sa(CLIENT, 40012), tcp_vip()).payload(&[0x55; 100]),
        Packet::tcp(sa(CLIENT, 40013), tcp_vip()).vlan(7),
    ];
    let mut bytes = 0;
    for p in &packets {
        forward(&mut dp, p, &TCP_BACKENDS);
        bytes += p.build().len() as u64;
    }
    forward(
        &mut dp,
        &Packet::udp(sa(CLIENT, 40012), udp_vip()),
        &UDP_BACKENDS,
    );
    let tcp = dp.stats(TCP_ID);
    assert_eq!((tcp.packets, tcp.bytes), (packets.len() as u64, bytes));
    assert_eq!(dp.stats(UDP_ID).packets, 1);
    assert_eq!(dp.stats(9).packets, 0);
}

#[test]
fn direct_connection_reusing_a_vip_tuple_is_not_reverse_nated() {
    let mut dp = datapath();
    let client = sa(CLIENT, 40100);
    let backend = forward(&mut dp, &Packet::tcp(client, tcp_vip()), &TCP_BACKENDS);
    let with_flags = |a, b, flags| Packet::tcp(a, b).tcp_flags(flags).build();
    let syn_ack = packet::TCP_SYN | packet::TCP_ACK;
    // While the VIP connection lives, a non-SYN packet straight to the
    // backend leaves its reply entry alone: replies still come from the VIP.
    let ack = with_flags(client, backend, packet::TCP_ACK);
    assert_eq!(dp.run(&ack), (TC_ACT_OK, ack));
    let (_, out) = dp.run_egress(&with_flags(backend, client, syn_ack));
    assert_eq!(packet::src(&out), tcp_vip(), "reply through the VIP");

    // A new connection from the same client port straight to the backend...
    let direct_syn = with_flags(client, backend, packet::TCP_SYN);
    assert_eq!(dp.run(&direct_syn), (TC_ACT_OK, direct_syn));
    // ...gets the backend's answer as the backend sent it.
    let answer = with_flags(backend, client, syn_ack);
    assert_eq!(
        dp.run_egress(&answer),
        (TC_ACT_OK, answer),
        "stale reply entry used"
    );
    assert!(dp
        .conntrack()
        .iter()
        .all(|(_, e)| e.direction == CT_FORWARD));
}

// ------------------------------------------------------ session affinity

fn tcp_key() -> ServiceKey {
    ServiceKey {
        addr: addr_to_net(TCP_VIP),
        port: port_to_net(TCP_PORT),
        proto: PROTO_TCP,
        scope: SCOPE_CLUSTER_IP,
    }
}

fn affinity_of(dp: &mut Datapath, client: Ipv4Addr) -> AffinityValue {
    let key = AffinityKey {
        service_id: TCP_ID,
        client_addr: addr_to_net(client),
    };
    dp.affinity()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .expect("an affinity entry")
}

/// The backend of `TCP_BACKENDS` with the given backend id.
fn backend_with_id(id: u32) -> SocketAddrV4 {
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
        let backends: BTreeMap<SocketAddrV4, usize> =
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
fn hashed_backend(syn: &Packet) -> SocketAddrV4 {
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
    let before: Vec<SocketAddrV4> = clients
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
        service_id: TCP_ID,
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
fn a_pod_reaching_itself_through_its_service_sees_the_vip_as_the_client() {
    let mut dp = Datapath::load();
    let pod = sa(ip(10, 0, 2, 1), 8080);
    let vip = sa(ip(10, 96, 0, 70), 80);
    dp.add_service(
        *vip.ip(),
        vip.port(),
        PROTO_TCP,
        7,
        &[(*pod.ip(), pod.port())],
    );
    let client = sa(*pod.ip(), 40000);
    for flags in [packet::TCP_SYN, packet::TCP_ACK] {
        // Out of the pod to the VIP, back in from the VIP (same port) to
        // its server: the pod must not see its own address as the source.
        let request = Packet::tcp(client, vip).tcp_flags(flags);
        let (verdict, out) = dp.run(&request.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "straight back into the pod");
        packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
        let stand_in = sa(*vip.ip(), client.port());
        let back_in = Packet {
            src_mac: request.dst_mac,
            dst_mac: request.src_mac,
            ..request.clone()
        };
        assert_eq!(out, back_in.with_src(stand_in).with_dst(pod).build());
        // The server's answer goes to the stand-in; the client gets it from the VIP.
        let answer = Packet::tcp(pod, stand_in).tcp_flags(packet::TCP_SYN | packet::TCP_ACK);
        let (verdict, out) = dp.run(&answer.build());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{e}"));
        let back_in = Packet {
            src_mac: answer.dst_mac,
            dst_mac: answer.src_mac,
            ..answer.clone()
        };
        assert_eq!(out, back_in.with_src(vip).with_dst(client).build());
    }
    assert_eq!(dp.conntrack().len(), 2);
}

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

#[test]
fn a_load_balancer_address_keeps_its_source_ranges_for_pods_too() {
    let mut dp = datapath();
    let lb = sa(ip(192, 168, 60, 10), 80);
    let key = ServiceKey {
        addr: addr_to_net(*lb.ip()),
        port: port_to_net(lb.port()),
        proto: PROTO_TCP,
        scope: SCOPE_CLUSTER_IP,
    };
    dp.add_frontend(
        key,
        9,
        SERVICE_SOURCE_RANGES,
        &[(TCP_BACKENDS[0].0, TCP_BACKENDS[0].1, false)],
    );
    dp.allow_source(9, ip(10, 0, 1, 0), 24);
    let (verdict, out) = dp.run(&Packet::tcp(sa(CLIENT, 44000), lb).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(packet::dst(&out), sa(TCP_BACKENDS[0].0, TCP_BACKENDS[0].1));
    let outsider = Packet::tcp(sa(ip(10, 0, 7, 5), 44000), lb).build();
    assert_eq!(dp.run(&outsider).0, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::SourceRange), 1);
}
