//! Part 1: `nic_ingress`, a NodePort's first packet of a new flow and a
//! packet of an established one, with a backend on this node and with one
//! on another node, in either family. Run on the NIC of a
//! private namespace (`nic_netns`) whose FIB routes the remote pods via a
//! known neighbour, so the remote path really ends in the FIB lookup and
//! XDP_TX.

use kxdp_testbed::{
    datapath::{xdp_md, XDP_TX},
    nic_netns::{NIC_MAC, NODE_ADDR, NODE_ADDR6, OTHER_NODE_MAC},
};
use proxy_common::maps::{FrontendKey, FrontendKey6, FRONTEND_SNAT_REMOTE, SCOPE_NODE};

use super::*;

const NODE_PORT: u16 = 30080;

/// Frontend `i`: an address in the remote pod network on the NodePort.
fn frontend(family: Family, i: u32) -> SocketAddr {
    family.at(SocketAddrV4::new(
        Ipv4Addr::from(u32::from(ip(10, 1, 2, 1)) + i),
        NODE_PORT,
    ))
}

/// The only backend of frontend `i`: routed via the other node, whether
/// the datapath is told it is local or not.
fn backend(family: Family, i: u32) -> SocketAddr {
    family.at(SocketAddrV4::new(
        Ipv4Addr::from(u32::from(ip(10, 1, 2, 101)) + i),
        8080,
    ))
}

/// The NIC's address of `family`, which remote backends' flows are
/// SNATed to.
fn node_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => NODE_ADDR.into(),
        Family::V6 => NODE_ADDR6.into(),
    }
}

/// Where a NodePort packet comes from: outside, to our NIC (a SYN).
fn from_outside(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    from_outside_flagged(src, dst, TCP_SYN)
}

fn from_outside_flagged(src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    pad(Packet {
        src_mac: OTHER_NODE_MAC,
        dst_mac: NIC_MAC,
        ..Packet::tcp(src, dst).payload(b"").tcp_flags(flags)
    }
    .build())
}

/// The XDP context of `family`'s NodePort frames on NIC `nic`.
fn context(family: Family, nic: u32) -> Vec<u8> {
    let frame = from_outside(family.client(1024), frontend(family, 0));
    xdp_md(frame.len(), nic)
}

/// A datapath whose NIC `nic` serves `frontends` NodePort frontends of
/// `family`, each with one backend, on this node or (`remote`) on another,
/// SNATed.
fn nodeport_datapath(family: Family, remote: bool, frontends: u32, nic: u32) -> Datapath {
    let mut dp = Datapath::load_with_arena(proxy_common::sizes::MAGLEV_ARENA_ENTRIES);
    dp.set_nic_addr(nic, node_addr(family));
    for i in 0..frontends {
        let (frontend, backend) = (frontend(family, i), backend(family, i));
        let key = match frontend.ip() {
            IpAddr::V4(addr) => FrontendMapKey::from(FrontendKey {
                scope: SCOPE_NODE,
                ..pod_key(addr, frontend.port(), PROTO_TCP)
            }),
            IpAddr::V6(addr) => FrontendMapKey::from(FrontendKey6 {
                scope: SCOPE_NODE,
                ..pod_key6(addr, frontend.port(), PROTO_TCP)
            }),
        };
        let backends = [(backend.ip(), backend.port(), !remote)];
        dp.add_frontend_any(key, i + 1, FRONTEND_SNAT_REMOTE, &backends);
    }
    dp
}

/// Checks what `nic_ingress` made of a packet from `client` to frontend
/// `i`: sent on to the other node, SNATed (remote), or DNATed up the stack.
fn expect_translated(
    what: &str,
    (family, remote): (Family, bool),
    timed: &Timed,
    client: SocketAddr,
    i: u32,
    flags: u8,
) -> anyhow::Result<()> {
    let out = &timed.out;
    if remote {
        expect_verdict(what, timed.verdict, XDP_TX)?;
        ensure!(
            out[..12] == [OTHER_NODE_MAC, NIC_MAC].concat(),
            "{what}: not addressed to the other node"
        );
        let h = kxdp_testbed::packet::parse(out).map_err(anyhow::Error::msg)?;
        ensure!(
            h.dst == backend(family, i) && h.src.ip() == node_addr(family),
            "{what}: translated to {} → {}",
            h.src,
            h.dst
        );
        kxdp_testbed::packet::verify_checksums(out).map_err(anyhow::Error::msg)
    } else {
        expect_verdict(what, timed.verdict, XDP_PASS)?;
        expect_frame(
            what,
            out,
            &from_outside_flagged(client, backend(family, i), flags),
        )
    }
}

/// The first packet of a new NodePort flow, one per BPF_PROG_TEST_RUN call
/// (repeat 1), each call from a new client port to one of a few frontends
/// (caches warm). With a local backend that is lookup, selection, two
/// conntrack inserts and the DNAT (XDP_PASS); with a remote one (traffic
/// policy Cluster) also the SNAT port claim, the SNAT, the FIB lookup, the
/// MAC and TTL rewrite and XDP_TX.
///
/// Why not `repeat` > 1 as for the tc paths: for XDP the kernel swaps the
/// program into its dispatcher (synchronize_rcu) before such a run, and the
/// first repetitions after it pay for everything having gone cold: tens of
/// microseconds per call, measured. One repetition per call skips the swap;
/// the empty XDP program is timed the same way for the ratio.
pub(crate) struct NodePortNewFlow {
    pub(crate) dp: Datapath,
    pub(crate) family: Family,
    pub(crate) remote: bool,
    pub(crate) frontends: u32,
    pub(crate) calls: u32,
    pub(crate) next_port: u16,
    pub(crate) ctx: Vec<u8>,
}

impl NodePortNewFlow {
    /// Call from a thread inside `nic_netns`, whose NIC is `nic`.
    pub(crate) fn new(family: Family, remote: bool, frontends: u32, calls: u32, nic: u32) -> Self {
        assert!(calls < 60_000, "client ports must not repeat within a run");
        NodePortNewFlow {
            dp: nodeport_datapath(family, remote, frontends, nic),
            family,
            remote,
            frontends,
            calls,
            next_port: 1024,
            ctx: context(family, nic),
        }
    }

    fn what(&self) -> String {
        self.family.label(if self.remote {
            "NodePort new flow, remote backend"
        } else {
            "NodePort new flow, local backend"
        })
    }

    fn one_call(&mut self, call: u32) -> anyhow::Result<Sample> {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 1024 } else { port + 1 };
        let i = call % self.frontends;
        let client = self.family.client(port);
        let frame = from_outside(client, frontend(self.family, i));
        let timed = time_test_run_in(self.dp.nic_program(), &frame, Some(&self.ctx), 1)?;
        let kind = (self.family, self.remote);
        expect_translated(&self.what(), kind, &timed, client, i, TCP_SYN)?;
        Ok(timed.sample)
    }
}

impl Case for NodePortNewFlow {
    fn run(&mut self) -> anyhow::Result<Sample> {
        self.dp.clear_conntrack();
        let mean = mean_over_calls(self.calls, |call| self.one_call(call))?;
        let entries = self.dp.conntrack_len();
        let want = 2 * self.calls as usize;
        ensure!(
            entries == want,
            "{}: conntrack has {entries} entries after the run, expected {want} (2 per call)",
            self.what()
        );
        expect_no_drops(&self.what(), &self.dp)?;
        Ok(mean)
    }
}

/// A packet of an established NodePort flow (an ACK of the flow a SYN
/// opened at set-up), one per BPF_PROG_TEST_RUN call as for new flows:
/// with a local backend, the conntrack hit and the DNAT (XDP_PASS); with a
/// remote one, also the SNAT, the FIB lookup, the MAC and TTL rewrite and
/// XDP_TX.
pub(crate) struct NodePortEstablished {
    dp: Datapath,
    family: Family,
    remote: bool,
    calls: u32,
    frame: Vec<u8>,
    ctx: Vec<u8>,
}

/// The client port of the established flow.
const ESTABLISHED_PORT: u16 = 50_001;

impl NodePortEstablished {
    /// Call from a thread inside `nic_netns`, whose NIC is `nic`.
    pub(crate) fn new(family: Family, remote: bool, calls: u32, nic: u32) -> anyhow::Result<Self> {
        let dp = nodeport_datapath(family, remote, 1, nic);
        let ctx = context(family, nic);
        let from = family.client(ESTABLISHED_PORT);
        let syn = from_outside(from, frontend(family, 0));
        let opened = time_test_run_in(dp.nic_program(), &syn, Some(&ctx), 1)?;
        let mut case = NodePortEstablished {
            dp,
            family,
            remote,
            calls,
            frame: from_outside_flagged(from, frontend(family, 0), TCP_ACK),
            ctx,
        };
        expect_translated(&case.what(), (family, remote), &opened, from, 0, TCP_SYN)?;
        case.one_call()?;
        Ok(case)
    }

    fn what(&self) -> String {
        self.family.label(if self.remote {
            "NodePort established, remote backend"
        } else {
            "NodePort established, local backend"
        })
    }

    fn one_call(&mut self) -> anyhow::Result<Sample> {
        let timed = time_test_run_in(self.dp.nic_program(), &self.frame, Some(&self.ctx), 1)?;
        let from = self.family.client(ESTABLISHED_PORT);
        let kind = (self.family, self.remote);
        expect_translated(&self.what(), kind, &timed, from, 0, TCP_ACK)?;
        Ok(timed.sample)
    }
}

impl Case for NodePortEstablished {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let mean = mean_over_calls(self.calls, |_| self.one_call())?;
        ensure!(
            self.dp.conntrack_len() == 2,
            "{}: the flow's two conntrack entries are not all there is",
            self.what()
        );
        expect_no_drops(&self.what(), &self.dp)?;
        Ok(mean)
    }
}
