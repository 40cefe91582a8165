//! The reference model of the datapath: what each program must do with a
//! frame, given the frontends (`World`) and the connections the model has
//! seen opened. Written from the rules in docs/ARCHITECTURE.md ("The
//! load-balancing core", the hooks table) and Kubernetes' semantics, not
//! from the eBPF code: a frame is read by `parse.rs`, the rules are applied
//! to the model's own state, and the output the program gave is checked
//! against what the rules allow. Where the rules leave a choice (which
//! backend a new flow gets, which SNAT port), the program's choice is read
//! off its output, checked against what was allowed, and remembered.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use proxy_common::maps::{
    DropReason, PROTO_TCP, PROTO_UDP, SNAT_CLOSED_REUSE_S, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SNAT_TCP_REUSE_S, SNAT_UDP_REUSE_S,
};

use super::{
    checks,
    parse::{self, Parsed},
    world::{self, Scope, World},
};
use crate::{
    datapath::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX},
    nic_netns,
};

/// The program a frame runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    PodIngress,
    PodEgress,
    NicIngress,
}

impl Program {
    pub const ALL: [Program; 3] = [Program::PodIngress, Program::PodEgress, Program::NicIngress];

    pub fn name(self) -> &'static str {
        match self {
            Program::PodIngress => "pod_ingress",
            Program::PodEgress => "pod_egress",
            Program::NicIngress => "nic_ingress",
        }
    }

    fn pass(self) -> u32 {
        match self {
            Program::NicIngress => XDP_PASS,
            _ => TC_ACT_OK,
        }
    }

    fn drop(self) -> u32 {
        match self {
            Program::NicIngress => XDP_DROP,
            _ => TC_ACT_SHOT,
        }
    }

    /// An answer sent back where the request came from.
    fn bounce(self) -> u32 {
        match self {
            Program::NicIngress => XDP_TX,
            _ => TC_ACT_REDIRECT,
        }
    }
}

/// A connection's 5-tuple, as a packet in one direction carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

impl Tuple {
    fn of(p: &Parsed) -> Self {
        Tuple {
            src: p.src,
            dst: p.dst,
            proto: p.proto,
        }
    }
}

/// How a connection was recorded (core rule 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A pod to a frontend: replies get the frontend back on their way in.
    Plain,
    /// A pod that got itself as backend: it sees the frontend as source.
    Hairpin,
    /// From a NIC to a backend on this node.
    FromNic,
    /// From a NIC to another node's backend, SNATed to the node: `node`
    /// is the address and port the flow leaves from.
    Snat { node: SocketAddr },
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    /// The client's direction: to `backend`.
    Forward {
        service: usize,
        backend: SocketAddr,
        kind: Kind,
        closing: bool,
        last: u32,
    },
    /// The backend's direction: comes from `frontend`, goes to `client`.
    Reply {
        frontend: SocketAddr,
        client: SocketAddr,
        kind: Kind,
        closing: bool,
        last: u32,
    },
}

/// What the model counted, to compare with the datapath's counters.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    /// Frontend id → (packets, bytes) translated through it.
    pub frontends: HashMap<u32, (u64, u64)>,
    /// Drops by reason (`DropReason::index`).
    pub drops: HashMap<u32, u64>,
    /// Frontend id → packets refused for want of endpoints (answered or
    /// not).
    pub rejects: HashMap<u32, u64>,
}

pub struct Model {
    pub world: World,
    conntrack: HashMap<Tuple, Entry>,
    /// (frontend index, client address) → backend.
    affinity: HashMap<(usize, IpAddr), SocketAddr>,
    pub counts: Counts,
    /// How often each rule decided a frame: what the run exercised.
    pub seen: BTreeMap<&'static str, u64>,
    /// Tuples of recent entries, for the generator to answer and continue.
    pub recent_forward: Recent,
    pub recent_reply: Recent,
}

/// The latest tuples of one direction (a ring: the oldest goes first).
#[derive(Default)]
pub struct Recent {
    tuples: Vec<Tuple>,
    next: usize,
}

/// How many recent tuples the generator may pick from.
const RECENT: usize = 512;

impl Recent {
    fn push(&mut self, t: Tuple) {
        if self.tuples.len() < RECENT {
            self.tuples.push(t);
        } else {
            self.tuples[self.next] = t;
            self.next = (self.next + 1) % RECENT;
        }
    }

    pub fn tuples(&self) -> &[Tuple] {
        &self.tuples
    }
}

impl Model {
    pub fn new(world: World) -> Self {
        Model {
            world,
            conntrack: HashMap::new(),
            affinity: HashMap::new(),
            counts: Counts::default(),
            seen: BTreeMap::new(),
            recent_forward: Recent::default(),
            recent_reply: Recent::default(),
        }
    }

    /// Entries the model holds (two per connection).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.len()
    }

    /// Checks a frame the kernel refused to run (too short for its type)
    /// is no flow: a refused flow would be a frame the fuzzer never tried.
    pub fn refused(&self, input: &[u8]) -> Result<(), String> {
        match parse::parse(input) {
            None => Ok(()),
            Some(p) => Err(format!("the kernel refused a flow: {} → {}", p.src, p.dst)),
        }
    }

    /// Checks that `program` turning `input` into (`verdict`, `out`) is
    /// what the rules allow, and learns what it chose. `now`: the
    /// datapath's clock, in seconds.
    pub fn step(
        &mut self,
        program: Program,
        input: &[u8],
        verdict: u32,
        out: &[u8],
        now: u32,
    ) -> Result<(), String> {
        let Some(p) = parse::parse(input) else {
            self.saw("no flow");
            return untouched(program.pass(), input, verdict, out);
        };
        match program {
            Program::PodIngress => self.pod_ingress(&p, input, verdict, out, now),
            Program::PodEgress => self.pod_egress(&p, input, verdict, out),
            Program::NicIngress => self.nic_ingress(&p, input, verdict, out, now),
        }
    }

    fn pod_ingress(
        &mut self,
        p: &Parsed,
        input: &[u8],
        verdict: u32,
        out: &[u8],
        now: u32,
    ) -> Result<(), String> {
        let program = Program::PodIngress;
        if let Some(service) = self.frontend(p, Scope::Pod) {
            return self.balance(program, service, p, input, verdict, out, now);
        }
        if p.opens() {
            // A connection past every frontend: no earlier connection's
            // reply entry may translate its replies.
            let stale = Tuple {
                src: p.dst,
                dst: p.src,
                proto: p.proto,
            };
            if let Some(Entry::Reply { .. }) = self.conntrack.get(&stale) {
                self.conntrack.remove(&stale);
            }
            self.saw("passed: a connection past the frontends");
            return untouched(TC_ACT_OK, input, verdict, out);
        }
        let Some(Entry::Reply {
            frontend,
            client,
            kind,
            ..
        }) = self.conntrack.get(&Tuple::of(p)).copied()
        else {
            self.saw("passed: no frontend, no reply entry");
            return untouched(TC_ACT_OK, input, verdict, out);
        };
        self.saw(match kind {
            Kind::Plain => "pod: a reply to a pod (left to pod_egress)",
            Kind::Hairpin => "pod: a hairpin reply",
            Kind::FromNic => "pod: a reply to a NIC client",
            Kind::Snat { .. } => "pod: a reply to a SNATed NIC client",
        });
        match kind {
            Kind::Plain => untouched(TC_ACT_OK, input, verdict, out),
            Kind::Hairpin => {
                let expected = checks::Rewrite::new(input, p)
                    .source(frontend)
                    .destination(client)
                    .swap_macs();
                expected.check(TC_ACT_REDIRECT, verdict, out)
            }
            Kind::FromNic | Kind::Snat { .. } => {
                // Out of the NIC, as the NIC program would send it, past
                // the stack (which would take the node's address as source
                // for a spoof).
                let mut expected = checks::Rewrite::new(input, p).source(frontend);
                if matches!(kind, Kind::Snat { .. }) {
                    expected = expected.destination(client);
                }
                let ttl = input[p.ttl_off()];
                if ttl <= 1 || !world::routed_out_of_nic(client.ip()) {
                    return expected.check(TC_ACT_OK, verdict, out);
                }
                expected.hop().check(TC_ACT_REDIRECT, verdict, out)
            }
        }
    }

    fn pod_egress(
        &mut self,
        p: &Parsed,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<(), String> {
        match self.conntrack.get(&Tuple::of(p)) {
            Some(&Entry::Reply { frontend, .. }) => {
                self.saw("pod egress: reverse NAT");
                checks::Rewrite::new(input, p)
                    .source(frontend)
                    .check(TC_ACT_OK, verdict, out)
            }
            _ => {
                self.saw("passed: no reply entry");
                untouched(TC_ACT_OK, input, verdict, out)
            }
        }
    }

    fn nic_ingress(
        &mut self,
        p: &Parsed,
        input: &[u8],
        verdict: u32,
        out: &[u8],
        now: u32,
    ) -> Result<(), String> {
        let program = Program::NicIngress;
        let tuple = Tuple::of(p);
        if let Some(&Entry::Reply {
            frontend,
            client,
            kind: Kind::Snat { .. },
            ..
        }) = self.conntrack.get(&tuple)
        {
            self.touch(&tuple, p, now);
            self.saw("nic: a SNATed reply");
            let expected = checks::Rewrite::new(input, p)
                .source(frontend)
                .destination(client);
            return xdp_forward(expected, input, p, client.ip(), verdict, out);
        }
        // Only a port some node frontend has is looked at (core rule 1);
        // there, conntrack first: a live entry carries its flow.
        if !self.world.node_frontend_port(p.dst.port()) {
            self.saw("passed: not a node frontend's port");
            return untouched(XDP_PASS, input, verdict, out);
        }
        if let Some(&Entry::Forward {
            service,
            backend,
            kind,
            closing,
            ..
        }) = self.conntrack.get(&tuple)
        {
            let carried = !p.opens() || matches!(kind, Kind::Snat { .. }) && !closing;
            if carried {
                self.saw("nic: carried by conntrack");
                self.touch(&tuple, p, now);
                self.count(service, input.len());
                return self.translate_nic(p, input, backend, kind, verdict, out);
            }
        }
        match self.frontend(p, Scope::Node) {
            Some(service) => self.balance(program, service, p, input, verdict, out, now),
            None => {
                self.saw("passed: no frontend, no entry");
                untouched(XDP_PASS, input, verdict, out)
            }
        }
    }

    fn frontend(&self, p: &Parsed, scope: Scope) -> Option<usize> {
        self.world.frontend(p.dst, p.proto, scope)
    }

    fn count(&mut self, service: usize, len: usize) {
        let id = self.world.services[service].id;
        let c = self.counts.frontends.entry(id).or_default();
        c.0 += 1;
        c.1 += len as u64;
    }

    fn saw(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn dropped(
        &mut self,
        program: Program,
        reason: DropReason,
        verdict: u32,
    ) -> Result<(), String> {
        self.saw(match reason {
            DropReason::SourceRange => "drop: source range",
            DropReason::NoLocalBackend => "drop: no local backend",
            DropReason::RejectFailed => "drop: refusal not built (tag, options)",
            DropReason::NoBackend => "drop: a RST not answered",
            other => unreachable!("the model drops for no {other:?}"),
        });
        *self.counts.drops.entry(reason.index()).or_default() += 1;
        expect_verdict(program.drop(), verdict, &format!("a drop ({reason:?})"))
    }

    /// Records that a packet of the SNATed flow at `tuple` passed, and a
    /// FIN or RST.
    fn touch(&mut self, tuple: &Tuple, p: &Parsed, now: u32) {
        if let Some(
            Entry::Forward {
                kind: Kind::Snat { .. },
                closing,
                last,
                ..
            }
            | Entry::Reply {
                kind: Kind::Snat { .. },
                closing,
                last,
                ..
            },
        ) = self.conntrack.get_mut(tuple)
        {
            *last = now;
            *closing |= p.closes();
        }
    }

    /// A packet to frontend `service` (core rules 2 to 7).
    #[allow(clippy::too_many_arguments)]
    fn balance(
        &mut self,
        program: Program,
        service: usize,
        p: &Parsed,
        input: &[u8],
        verdict: u32,
        out: &[u8],
        now: u32,
    ) -> Result<(), String> {
        let tuple = Tuple::of(p);
        if program == Program::PodIngress {
            if let Some(&Entry::Forward { backend, kind, .. }) = self.conntrack.get(&tuple) {
                if !p.opens() {
                    self.saw("pod: carried by conntrack");
                    self.count(service, input.len());
                    return self.translate_pod(p, input, backend, kind, verdict, out);
                }
            }
        }
        let s = self.world.services[service].clone();
        if !s.admits(p.src.ip()) {
            return self.dropped(program, DropReason::SourceRange, verdict);
        }
        if s.backends.is_empty() {
            if s.empty_drop {
                return self.dropped(program, DropReason::NoLocalBackend, verdict);
            }
            return self.refuse(program, service, p, input, verdict, out);
        }
        // A new flow: any backend, or the one its client has (affinity).
        let Some(translated) = parse::parse(out) else {
            return Err(format!(
                "a new flow to {} must be translated, verdict {verdict}",
                s.vip
            ));
        };
        let chosen = translated.dst;
        let Some(&(backend, local)) = s.backends.iter().find(|(b, _)| *b == chosen) else {
            return Err(format!("{chosen} is no backend of {}", s.vip));
        };
        if s.affinity {
            let held = self
                .affinity
                .entry((service, p.src.ip()))
                .or_insert(backend);
            if *held != backend {
                return Err(format!(
                    "affinity: {} had {held}, got {backend}",
                    p.src.ip()
                ));
            }
        }
        let kind = match program {
            Program::NicIngress if local || !s.snat_remote => Kind::FromNic,
            Program::NicIngress => {
                let node = translated.src;
                self.snat_port_allowed(node, backend, p.proto, now)?;
                Kind::Snat { node }
            }
            _ if backend.ip() == p.src.ip() => Kind::Hairpin,
            _ => Kind::Plain,
        };
        self.saw(match kind {
            Kind::Plain => "new flow: pod",
            Kind::Hairpin => "new flow: pod, hairpin",
            Kind::FromNic => "new flow: NIC, local backend",
            Kind::Snat { .. } => "new flow: NIC, SNAT",
        });
        if s.affinity {
            self.saw("new flow: with affinity");
        }
        self.record(service, p, backend, kind, now);
        self.count(service, input.len());
        match program {
            Program::NicIngress => self.translate_nic(p, input, backend, kind, verdict, out),
            _ => self.translate_pod(p, input, backend, kind, verdict, out),
        }
    }

    /// A packet to a frontend without endpoints is refused (core rule 4):
    /// answered in place when its headers are the plain ones the answer is
    /// built over (no 802.1Q tag in the frame, no IPv4 options, no IPv6
    /// extension headers), else dropped; a RST is never answered (RFC 9293
    /// §3.10.7.1).
    fn refuse(
        &mut self,
        program: Program,
        service: usize,
        p: &Parsed,
        input: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<(), String> {
        let id = self.world.services[service].id;
        *self.counts.rejects.entry(id).or_default() += 1;
        let plain_ip = if p.is_v4() { 20 } else { 40 };
        if p.l3 != 14 || p.l4 != p.l3 + plain_ip {
            return self.dropped(program, DropReason::RejectFailed, verdict);
        }
        if p.proto == PROTO_TCP && p.flags & parse::TCP_RST != 0 {
            return self.dropped(program, DropReason::NoBackend, verdict);
        }
        self.saw(if p.proto == PROTO_TCP {
            "refused: RST"
        } else {
            "refused: port unreachable"
        });
        checks::rejected(program.bounce(), input, p, verdict, out)
    }

    /// Whether the datapath could give a new flow to `backend` the node's
    /// end `node`: an address of the NIC, a port of the SNAT range no live
    /// connection holds.
    fn snat_port_allowed(
        &mut self,
        node: SocketAddr,
        backend: SocketAddr,
        proto: u8,
        now: u32,
    ) -> Result<(), String> {
        let node_addr: IpAddr = match node {
            SocketAddr::V4(_) => nic_netns::NODE_ADDR.into(),
            SocketAddr::V6(_) => nic_netns::NODE_ADDR6.into(),
        };
        if node.ip() != node_addr || !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&node.port()) {
            return Err(format!("SNAT to {node}: not the node's address and range"));
        }
        let reply = Tuple {
            src: backend,
            dst: node,
            proto,
        };
        let (client, frontend, closing, last) = match self.conntrack.get(&reply) {
            None => return Ok(()),
            Some(&Entry::Reply {
                client,
                frontend,
                closing,
                last,
                kind: Kind::Snat { .. },
            }) => (client, frontend, closing, last),
            Some(other) => {
                return Err(format!(
                    "SNAT port {node} taken over another connection's entry {other:?}"
                ))
            }
        };
        let forward = Tuple {
            src: client,
            dst: frontend,
            proto,
        };
        let (forward_closing, forward_last) = match self.conntrack.get(&forward) {
            Some(&Entry::Forward {
                kind: Kind::Snat { node: n },
                closing,
                last,
                ..
            }) if n == node => (closing, last),
            // Its flow is gone or holds another port: the port is free.
            _ => return Ok(()),
        };
        let limit = if closing || forward_closing {
            SNAT_CLOSED_REUSE_S
        } else if proto == PROTO_UDP {
            SNAT_UDP_REUSE_S
        } else {
            SNAT_TCP_REUSE_S
        };
        // Reclaimed once idle past the limit; the model's clock is read a
        // moment after the program's, so up to a second later.
        let last = last.max(forward_last);
        if now.saturating_sub(last) < limit {
            return Err(format!(
                "SNAT port {node} taken from a live flow of {client} (idle {} s)",
                now.saturating_sub(last)
            ));
        }
        // Reclaimed: the old client's next packet opens a flow of its own.
        self.conntrack.remove(&forward);
        Ok(())
    }

    /// Both entries of a new connection (the reply first: fail closed).
    fn record(&mut self, service: usize, p: &Parsed, backend: SocketAddr, kind: Kind, now: u32) {
        let s = &self.world.services[service];
        let (reply_dst, client) = match kind {
            Kind::Snat { node } => (node, p.src),
            Kind::Hairpin => (SocketAddr::new(s.vip.ip(), p.src.port()), p.src),
            _ => (p.src, p.src),
        };
        let reply = Tuple {
            src: backend,
            dst: reply_dst,
            proto: p.proto,
        };
        let entry = Entry::Reply {
            frontend: s.vip,
            client,
            kind,
            closing: false,
            last: now,
        };
        self.conntrack.insert(reply, entry);
        let forward = Tuple::of(p);
        self.conntrack.insert(
            forward,
            Entry::Forward {
                service,
                backend,
                kind,
                closing: false,
                last: now,
            },
        );
        self.recent_reply.push(reply);
        self.recent_forward.push(forward);
    }

    fn translate_pod(
        &self,
        p: &Parsed,
        input: &[u8],
        backend: SocketAddr,
        kind: Kind,
        verdict: u32,
        out: &[u8],
    ) -> Result<(), String> {
        let expected = checks::Rewrite::new(input, p).destination(backend);
        match kind {
            Kind::Hairpin => {
                // The frontend's address stands in for the pod.
                expected
                    .source(SocketAddr::new(p.dst.ip(), p.src.port()))
                    .swap_macs()
                    .check(TC_ACT_REDIRECT, verdict, out)
            }
            _ => expected.check(TC_ACT_OK, verdict, out),
        }
    }

    fn translate_nic(
        &self,
        p: &Parsed,
        input: &[u8],
        backend: SocketAddr,
        kind: Kind,
        verdict: u32,
        out: &[u8],
    ) -> Result<(), String> {
        let expected = checks::Rewrite::new(input, p).destination(backend);
        match kind {
            Kind::Snat { node } => {
                xdp_forward(expected.source(node), input, p, backend.ip(), verdict, out)
            }
            _ => expected.check(XDP_PASS, verdict, out),
        }
    }
}

/// A translated frame the NIC program sends on: out of the NIC it came in
/// on, to the next hop, its TTL spent, where the FIB knows the way and the
/// TTL allows; otherwise to the stack as translated.
fn xdp_forward(
    expected: checks::Rewrite,
    input: &[u8],
    p: &Parsed,
    to: IpAddr,
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    if input[p.ttl_off()] <= 1 || !world::has_neighbour(to) {
        return expected.check(XDP_PASS, verdict, out);
    }
    let next_hop =
        if to == IpAddr::from(nic_netns::CLIENT) || to == IpAddr::from(nic_netns::CLIENT6) {
            nic_netns::CLIENT_MAC
        } else {
            nic_netns::OTHER_NODE_MAC
        };
    expected
        .macs(next_hop, nic_netns::NIC_MAC)
        .hop()
        .check(XDP_TX, verdict, out)
}

fn expect_verdict(want: u32, got: u32, what: &str) -> Result<(), String> {
    if want == got {
        Ok(())
    } else {
        Err(format!("{what}: verdict {got}, expected {want}"))
    }
}

fn untouched(verdict_wanted: u32, input: &[u8], verdict: u32, out: &[u8]) -> Result<(), String> {
    expect_verdict(verdict_wanted, verdict, "passed untouched")?;
    if out != input {
        return Err(format!(
            "must pass untouched, first difference at byte {:?}",
            input.iter().zip(out).position(|(a, b)| a != b)
        ));
    }
    Ok(())
}
