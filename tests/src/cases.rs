//! Packet tests as data. A [`Case`] is a datapath set-up (frontends with
//! their backends, written the way the agent writes them) and a sequence of
//! [`Step`]s, each a frame through one hook with the verdict and output it
//! must give; at the end, the counters the case must have left. One runner
//! drives every case through BPF_PROG_TEST_RUN on a freshly loaded object
//! and checks each output independently of the datapath's code: the whole
//! expected frame, checksums by `packet`'s own arithmetic, and for NAT
//! nothing but the NAT fields changed. Stateful behaviour is a sequence of
//! steps; a step may change the maps after it ran (`then`).

use std::{
    net::{IpAddr, SocketAddr},
    panic::{catch_unwind, AssertUnwindSafe},
};

use proxy_common::maps::{DropReason, Verdict, CT_REPLY};
use proxy_userspace::sync::entries::FrontendMapKey;

use crate::{
    datapath::Datapath,
    nic_netns,
    packet::{self, Packet},
};

/// Where a frame is run.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// `pod_ingress`: a packet leaving a pod.
    PodIngress,
    /// `pod_egress`: a packet entering a pod.
    PodEgress,
    /// `nic_ingress` on the NIC of the case's private network namespace.
    Nic,
    /// `pod_ingress` on the pod interface of that namespace.
    PodIngressOnPodSide,
}

/// What a step sends.
pub enum Frame {
    Built(Packet),
    /// Bytes no [`Packet`] builds (cut or malformed headers).
    Raw(Vec<u8>),
    /// A packet made from the backend the latest DNAT step chose.
    FromChosen(Box<dyn Fn(SocketAddr) -> Packet + Send>),
}

/// What must come out of a step, besides its verdict.
pub enum Out {
    /// The frame as it went in.
    Untouched,
    /// DNATed to one of these backends: the input with that destination,
    /// only the NAT fields changed.
    Dnat(Vec<SocketAddr>),
    /// DNATed to the backend the latest DNAT step chose.
    DnatAsBefore,
    /// Reverse-NATed: the input with this source, only the NAT fields changed.
    ReverseNat(SocketAddr),
    /// Exactly this frame (checksums verified on their own).
    Exactly(Packet),
    /// The TCP RST answering the input.
    Rst,
    /// The ICMP port unreachable answering the input.
    PortUnreachable,
    /// The SCTP ABORT answering the input.
    Abort,
    /// Dropped, this step counted under this reason (the output frame is
    /// not looked at: a dropped packet has none).
    Dropped(DropReason),
}

pub struct Step {
    pub what: String,
    pub hook: Hook,
    pub frame: Frame,
    pub verdict: u32,
    pub out: Out,
    /// A change of the maps after the step, as the agent would make it.
    pub then: Option<fn(&mut Datapath)>,
}

/// A case on the pod programs alone (no NIC namespace).
pub fn pod_case(
    name: &str,
    frontends: Vec<Frontend>,
    steps: Vec<Step>,
    counts: Vec<Count>,
) -> Case {
    Case {
        name: name.into(),
        frontends,
        nic: false,
        steps,
        counts,
    }
}

/// A case on the NIC program (and the pod programs), in a `nic_netns`.
pub fn nic_case(
    name: &str,
    frontends: Vec<Frontend>,
    steps: Vec<Step>,
    counts: Vec<Count>,
) -> Case {
    Case {
        nic: true,
        ..pod_case(name, frontends, steps, counts)
    }
}

/// A step: packet `p` leaving a pod (`pod_ingress`).
pub fn leaving_pod(what: &str, p: Packet, verdict: u32, expect: Out) -> Step {
    Step::new(what, Hook::PodIngress, Frame::Built(p), verdict, expect)
}

/// A step: `frame` entering a pod (`pod_egress`).
pub fn entering_pod(what: &str, frame: Frame, verdict: u32, expect: Out) -> Step {
    Step::new(what, Hook::PodEgress, frame, verdict, expect)
}

/// A frame made from the backend the latest DNAT step chose.
pub fn from_chosen(make: impl Fn(SocketAddr) -> Packet + Send + 'static) -> Frame {
    Frame::FromChosen(Box::new(make))
}

impl Step {
    pub fn new(what: impl Into<String>, hook: Hook, frame: Frame, verdict: u32, out: Out) -> Self {
        Step {
            what: what.into(),
            hook,
            frame,
            verdict,
            out,
            then: None,
        }
    }

    pub fn then(mut self, change: fn(&mut Datapath)) -> Self {
        self.then = Some(change);
        self
    }
}

/// A frontend of a case's set-up, of either family.
pub struct Frontend {
    pub key: FrontendMapKey,
    pub id: u32,
    /// `FRONTEND_*` bits.
    pub flags: u32,
    /// Backends of the key's family: address, port, on this node?
    pub backends: Vec<(IpAddr, u16, bool)>,
    /// `loadBalancerSourceRanges` (prefix, length).
    pub sources: Vec<(IpAddr, u32)>,
}

/// A counter the case must have left.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    Drops(DropReason, u64),
    Verdicts(Verdict, u64),
    /// Packets and bytes counted for a frontend id.
    Packets(u32, u64),
    Bytes(u32, u64),
    /// Conntrack entries of both families.
    ConntrackEntries(usize),
    /// Conntrack entries of the reply direction, of both families.
    ConntrackReplies(usize),
}

pub struct Case {
    pub name: String,
    pub frontends: Vec<Frontend>,
    /// Runs in a private `nic_netns` with the node's address on its NIC
    /// (needed by [`Hook::Nic`] steps).
    pub nic: bool,
    pub steps: Vec<Step>,
    pub counts: Vec<Count>,
}

/// Runs every case, each on a thread of its own with a fresh datapath, and
/// fails naming every case that failed.
pub fn run(cases: Vec<Case>) {
    let total = cases.len();
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|case| {
            let name = case.name.clone();
            let outcome = std::thread::spawn(move || run_case(case)).join();
            outcome.is_err().then_some(name)
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} packet cases failed: {failed:#?}",
        failed.len()
    );
}

fn run_case(case: Case) {
    let nic = case.nic.then(nic_netns::enter);
    let mut dp = Datapath::load();
    if let Some(nic) = nic {
        dp.set_nic_addr(nic, nic_netns::NODE_ADDR);
        dp.set_nic_addr(nic, nic_netns::NODE_ADDR6);
    }
    for f in &case.frontends {
        dp.add_frontend_any(f.key, f.id, f.flags, &f.backends);
        for &(prefix, len) in &f.sources {
            dp.allow_source(f.id, prefix, len);
        }
    }
    let mut chosen = None;
    for (i, step) in case.steps.iter().enumerate() {
        let context = format!("case {:?}, step {i} ({})", case.name, step.what);
        let result = catch_unwind(AssertUnwindSafe(|| {
            run_step(&mut dp, nic, step, &mut chosen)
        }));
        if let Err(e) = result {
            eprintln!("{context} failed");
            std::panic::resume_unwind(e);
        }
        if let Some(change) = step.then {
            change(&mut dp);
        }
    }
    for count in &case.counts {
        let (got, want) = match *count {
            Count::Drops(reason, n) => (dp.drops(reason), n),
            Count::Verdicts(verdict, n) => (dp.verdicts(verdict), n),
            Count::Packets(id, n) => (dp.stats(id).packets, n),
            Count::Bytes(id, n) => (dp.stats(id).bytes, n),
            Count::ConntrackEntries(n) => (dp.conntrack_directions().len() as u64, n as u64),
            Count::ConntrackReplies(n) => {
                let directions = dp.conntrack_directions();
                let replies = directions.iter().filter(|&&d| d == CT_REPLY).count();
                (replies as u64, n as u64)
            }
        };
        assert_eq!(got, want, "case {:?}: {count:?}", case.name);
    }
}

fn run_step(dp: &mut Datapath, nic: Option<u32>, step: &Step, chosen: &mut Option<SocketAddr>) {
    let packet = match &step.frame {
        Frame::Built(p) => Some(p.clone()),
        Frame::Raw(_) => None,
        Frame::FromChosen(make) => Some(make(chosen.expect("an earlier step chose a backend"))),
    };
    let input = match (&step.frame, &packet) {
        (Frame::Raw(bytes), _) => bytes.clone(),
        (_, Some(p)) => p.build(),
        (_, None) => unreachable!("every other frame is a packet"),
    };
    let dropped_before = match step.out {
        Out::Dropped(reason) => dp.drops(reason),
        _ => 0,
    };
    let (verdict, out) = match step.hook {
        Hook::PodIngress => dp.run(&input),
        Hook::PodEgress => dp.run_egress(&input),
        Hook::Nic => dp.run_nic(&input, nic.expect("a NIC case runs in its nic_netns")),
        Hook::PodIngressOnPodSide => {
            assert!(nic.is_some(), "a NIC case runs in its nic_netns");
            dp.run_from(&input, nic_netns::ifindex(nic_netns::POD_SIDE))
        }
    };
    assert_eq!(verdict, step.verdict, "verdict");
    let translated = |expected: Packet, source: bool| {
        packet::verify_checksums(&out).unwrap_or_else(|e| panic!("output checksums: {e}"));
        assert_only_changed(&input, &out, &nat_fields(&input, source));
        assert_eq!(out, expected.build(), "output frame");
    };
    let packet = || {
        packet
            .clone()
            .expect("this expectation needs a built packet")
    };
    match &step.out {
        Out::Untouched => assert_eq!(out, input, "the frame must pass untouched"),
        Out::Dnat(backends) => {
            let dst = packet::dst(&out);
            assert!(backends.contains(&dst), "{dst} is none of {backends:?}");
            translated(packet().with_dst(dst), false);
            *chosen = Some(dst);
        }
        Out::DnatAsBefore => {
            let before = chosen.expect("an earlier step chose a backend");
            translated(packet().with_dst(before), false);
        }
        Out::ReverseNat(source) => translated(packet().with_src(*source), true),
        Out::Exactly(expected) => {
            packet::verify_checksums(&out).unwrap_or_else(|e| panic!("output checksums: {e}"));
            assert_eq!(out, expected.build(), "output frame");
        }
        Out::Rst => packet::assert_rst_answers(&out, &packet()),
        Out::PortUnreachable => packet::assert_port_unreachable_answers(&out, &input),
        Out::Abort => packet::assert_abort_answers(&out, &packet()),
        Out::Dropped(reason) => assert_eq!(
            dp.drops(*reason),
            dropped_before + 1,
            "one {reason:?} drop counted"
        ),
    }
}

/// Asserts that `out` differs from `input` only inside `fields` (offset, length).
pub fn assert_only_changed(input: &[u8], out: &[u8], fields: &[(usize, usize)]) {
    assert_eq!(input.len(), out.len(), "frame length changed");
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        let allowed = fields
            .iter()
            .any(|&(off, len)| (off..off + len).contains(&i));
        assert!(allowed || a == b, "byte {i} changed: {a:#04x} -> {b:#04x}");
    }
}

/// The fields DNAT (`source == false`) or reverse NAT (`source == true`)
/// may touch: an address, a port, the L4 checksum, and IPv4's header
/// checksum (IPv6 has none).
pub fn nat_fields(frame: &[u8], source: bool) -> Vec<(usize, usize)> {
    let h = packet::parse(frame).expect("parsable input");
    let port = if source { 0 } else { 2 };
    let mut fields = vec![(h.l4_off + port, 2), (h.l4_csum_off(), h.l4_csum_len())];
    if h.src.is_ipv4() {
        let addr = if source {
            packet::IP_SADDR_OFF
        } else {
            packet::IP_DADDR_OFF
        };
        fields.extend([(h.l3_off + addr, 4), (h.l3_off + packet::IP_CSUM_OFF, 2)]);
    } else {
        let addr = if source { 8 } else { 24 };
        fields.push((h.l3_off + addr, 16));
    }
    fields
}
