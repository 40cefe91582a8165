//! The fuzzer's frames: flows to the frontends (new and continuing),
//! replies, SNAT returns, traffic for nothing, and mutations of them —
//! truncation at any offset, wrong length fields, IPv4 options, IPv6
//! extension headers, VLAN tags, fragments (first and later), TCP flag
//! combinations, zero and wrong checksums, small TTLs, ICMP errors, bytes
//! flipped, random bytes. The model reads whatever comes out of this, so
//! nothing here needs to know what a mutation does.

use std::net::{IpAddr, SocketAddr};

use proxy_common::maps::{PROTO_TCP, PROTO_UDP};

use super::{
    model::{Model, Program, Tuple},
    parse::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    rng::Rng,
    world::Scope,
};
use crate::{
    nic_netns,
    packet::{Packet, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, L4},
};

/// Client ports come from a small pool, so flows repeat and the tables
/// stay far from full.
const CLIENT_PORTS: usize = 300;

/// The links' MTU (the namespace's veths).
const MTU: usize = 1500;

fn client_port(rng: &mut Rng) -> u16 {
    40_000 + rng.below(CLIENT_PORTS) as u16
}

fn flags(rng: &mut Rng) -> u8 {
    let any = rng.byte();
    *rng.pick(&[
        TCP_SYN,
        TCP_SYN,
        TCP_ACK,
        TCP_ACK,
        TCP_ACK | 0x08,
        TCP_FIN | TCP_ACK,
        TCP_RST,
        TCP_RST | TCP_ACK,
        TCP_SYN | TCP_ACK,
        TCP_SYN | TCP_FIN,
        0,
        any,
    ])
}

fn same_family(addrs: &[IpAddr], like: IpAddr) -> Vec<IpAddr> {
    addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == like.is_ipv4())
        .collect()
}

/// A packet of `proto` from `src` to `dst`.
fn packet(rng: &mut Rng, proto: u8, src: SocketAddr, dst: SocketAddr) -> Packet {
    let mut p = match proto {
        PROTO_TCP => Packet::tcp(src, dst).tcp_flags(flags(rng)),
        _ => Packet::udp(src, dst),
    };
    let payload_len = match rng.below(10) {
        0 => 0,
        1 => 1 + rng.below(1400),
        _ => rng.below(64),
    };
    p.payload = (0..payload_len).map(|_| rng.byte()).collect();
    p
}

/// A flow to a frontend of `scope`, from one of its clients.
fn to_frontend(rng: &mut Rng, model: &Model, scope: Scope) -> Packet {
    let world = &model.world;
    let services: Vec<_> = world.services.iter().filter(|s| s.scope == scope).collect();
    let s = *rng.pick(&services);
    let clients = match scope {
        Scope::Pod => same_family(&world.pod_clients, s.vip.ip()),
        Scope::Node => same_family(&world.nic_clients, s.vip.ip()),
    };
    let client = SocketAddr::new(*rng.pick(&clients), client_port(rng));
    let mut p = packet(rng, s.proto, client, s.vip);
    if rng.chance(10) {
        // The frontend's address, another port or protocol.
        let proto = if rng.chance(50) { PROTO_TCP } else { PROTO_UDP };
        let port = rng.below(65536) as u16;
        p = packet(rng, proto, client, SocketAddr::new(s.vip.ip(), port));
    }
    p
}

/// A packet of a flow the model has seen, in the direction of `tuples`.
fn of_known(rng: &mut Rng, tuples: &[Tuple]) -> Packet {
    let t = *rng.pick(tuples);
    packet(rng, t.proto, t.src, t.dst)
}

/// Between addresses that are neither frontends nor their clients.
fn stranger(rng: &mut Rng, model: &Model) -> Packet {
    let a = *rng.pick(&model.world.strangers);
    let others = same_family(&model.world.strangers, a);
    let b = *rng.pick(&others);
    let proto = if rng.chance(50) { PROTO_TCP } else { PROTO_UDP };
    let port = |rng: &mut Rng| {
        let any = rng.below(65536) as u16;
        *rng.pick(&[53, 80, 8080, 30080, 61_234, any])
    };
    let (sp, dp) = (port(rng), port(rng));
    packet(rng, proto, SocketAddr::new(a, sp), SocketAddr::new(b, dp))
}

/// A packet as it arrives from the client at the NIC.
fn at_nic(p: Packet) -> Packet {
    Packet {
        src_mac: nic_netns::CLIENT_MAC,
        dst_mac: nic_netns::NIC_MAC,
        ..p
    }
}

/// A base packet for `program`.
fn base(rng: &mut Rng, model: &Model, program: Program) -> Packet {
    let known = |rng: &mut Rng, forward: bool| {
        let list = if forward {
            model.recent_forward.tuples()
        } else {
            model.recent_reply.tuples()
        };
        (!list.is_empty()).then(|| of_known(rng, list))
    };
    let roll = rng.below(100);
    let p = match program {
        Program::PodIngress => match roll {
            0..40 => Some(to_frontend(rng, model, Scope::Pod)),
            40..55 => known(rng, true),
            55..75 => known(rng, false),
            75..85 => known(rng, false).map(|p| {
                // A new connection the other way (past every frontend).
                Packet::tcp(p.dst, p.src)
            }),
            _ => None,
        },
        Program::PodEgress => match roll {
            0..60 => known(rng, false),
            60..75 => Some(to_frontend(rng, model, Scope::Pod)),
            _ => None,
        },
        Program::NicIngress => match roll {
            0..45 => Some(at_nic(to_frontend(rng, model, Scope::Node))),
            45..60 => known(rng, true).map(at_nic),
            60..80 => known(rng, false).map(at_nic),
            _ => None,
        },
    };
    p.unwrap_or_else(|| stranger(rng, model))
}

/// Header-level mutations, made before the frame is built.
fn mutate_packet(rng: &mut Rng, mut p: Packet) -> Packet {
    if rng.chance(8) {
        p.vlan = Some(rng.below(4095) as u16 + 1);
    }
    if rng.chance(3) {
        p.ttl = rng.below(3) as u8;
    }
    if p.src.is_ipv4() {
        if rng.chance(5) {
            let words = 1 + rng.below(10);
            let mut options = vec![1u8; words * 4]; // NOPs
            if rng.chance(50) {
                options[..4].copy_from_slice(&[0x94, 0x04, 0, 0]); // router alert
            }
            p.ip_options = options;
        }
        if rng.chance(5) {
            p.frag = *rng.pick(&[0x2000, 0x0001, 0x2010, 0x4000, 0x0000, 0x8000]);
        }
    } else if rng.chance(10) {
        for _ in 0..1 + rng.below(5) {
            let (kind, body) = match rng.below(5) {
                0 => (IPV6_HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]),
                1 => (
                    IPV6_DEST_OPTS,
                    vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                2 => (IPV6_ROUTING, vec![0, rng.below(2) as u8, 0, 0, 0, 0]),
                3 => (IPV6_FRAGMENT, vec![0, 0, 0, 0, 0, 7]),
                _ => (IPV6_FRAGMENT, vec![rng.byte(), rng.byte(), 0, 0, 0, 7]),
            };
            p = p.ipv6_ext(kind, &body);
        }
    }
    if matches!(p.l4, L4::Udp { .. }) && rng.chance(5) {
        p = p.no_udp_checksum();
    }
    if rng.chance(2) {
        // An ICMP (ICMPv6) port unreachable quoting the flow, instead of it.
        let (proto, kind) = if p.src.is_ipv4() { (1, 3) } else { (58, 1) };
        let quoted = p.build();
        let l3 = 14 + if p.vlan.is_some() { 4 } else { 0 };
        p.l4 = L4::Other { proto };
        p.payload = vec![kind, if proto == 1 { 3 } else { 4 }, 0, 0, 0, 0, 0, 0];
        p.payload
            .extend_from_slice(&quoted[l3..quoted.len().min(l3 + 48)]);
    }
    p
}

/// Byte-level mutations of a built frame.
fn mutate_bytes(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    if rng.chance(10) {
        let cut = rng.below(f.len() + 1);
        f.truncate(cut);
    }
    if rng.chance(10) && !f.is_empty() {
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(f.len().min(96));
            f[i] ^= 1 << rng.below(8);
        }
    }
    if rng.chance(5) && f.len() > 2 {
        // The L4 checksum (where there is one; else any word) wrong or zero.
        let i = match parse::parse(&f) {
            Some(p) => p.csum_off(),
            None => rng.below(f.len() - 1),
        };
        let v = if rng.chance(50) { 0 } else { rng.byte() };
        f[i] = v;
        f[i + 1] = v;
    }
    if rng.chance(3) {
        // An IP length field (IPv4 total length, IPv6 payload length) wrong.
        if let Some((l3, v6)) = parse::l3(&f) {
            let off = l3 + if v6 { 4 } else { 2 };
            if off + 1 < f.len() {
                f[off] = rng.byte();
                f[off + 1] = rng.byte();
            }
        }
    }
    f
}

/// One frame for `program`.
pub fn frame(rng: &mut Rng, model: &Model, program: Program) -> Vec<u8> {
    if rng.chance(2) {
        let len = 15 + rng.below(120);
        let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if rng.chance(70) {
            // Random bytes behind a real EtherType get further.
            let et = *rng.pick(&[[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00], [0x08, 0x06]]);
            f[12..14].copy_from_slice(&et);
        }
        return f;
    }
    let mut p = base(rng, model, program);
    if rng.chance(40) {
        p = mutate_packet(rng, p);
    }
    // A frame fits the MTU of the link it arrived on: cut the payload to
    // 1,500 bytes of IP packet.
    let l2 = 14 + if p.vlan.is_some() { 4 } else { 0 };
    let excess = p.build().len().saturating_sub(l2 + MTU);
    let keep = p.payload.len().saturating_sub(excess);
    p.payload.truncate(keep);
    let f = p.build();
    if rng.chance(30) {
        mutate_bytes(rng, f)
    } else {
        f
    }
}
