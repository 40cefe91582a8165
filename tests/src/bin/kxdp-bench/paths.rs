//! Part 1: the `pod_ingress` paths, each set up so every repetition takes it.

use super::*;

/// Service `vip` → `backend`, and service `backend` → `vip`, both of
/// protocol `proto`: with both, a translated packet is again addressed to a
/// service, which is what lets a repeated run take the same path every time
/// (see `Established`).
pub(crate) fn two_cycle_datapath(proto: u8, vip: SocketAddr, backend: SocketAddr) -> Datapath {
    let mut dp = Datapath::load_with_arena(proxy_common::sizes::MAGLEV_ARENA_ENTRIES);
    add_service(&mut dp, 1, proto, vip, backend);
    add_service(&mut dp, 2, proto, backend, vip);
    dp
}

/// A ClusterIP service `id` of protocol `proto` on `frontend` with the
/// single `backend`, both of one family.
pub(crate) fn add_service(
    dp: &mut Datapath,
    id: u32,
    proto: u8,
    frontend: impl Into<SocketAddr>,
    backend: impl Into<SocketAddr>,
) {
    let (frontend, backend) = (frontend.into(), backend.into());
    match (frontend.ip(), backend.ip()) {
        (IpAddr::V4(vip), IpAddr::V4(to)) => {
            dp.add_service(vip, frontend.port(), proto, id, &[(to, backend.port())])
        }
        (IpAddr::V6(vip), IpAddr::V6(to)) => {
            dp.add_service6(vip, frontend.port(), proto, id, &[(to, backend.port())])
        }
        _ => panic!("{frontend} → {backend}: one family"),
    }
}

/// Service lookup miss, then conntrack reply lookup miss: the packet (an ACK
/// of an established connection that is not to a service, the bulk of pod
/// traffic) passes unchanged, so every repetition sees the same input.
pub(crate) struct Miss {
    pub(crate) dp: Datapath,
    pub(crate) frame: Vec<u8>,
    pub(crate) repeat: u32,
}

impl Miss {
    /// A packet from a client's port to `dst`, which no frontend has.
    pub(crate) fn new(repeat: u32, dst: SocketAddrV4) -> Self {
        Miss {
            dp: two_cycle_datapath(PROTO_TCP, VIP.into(), BACKEND.into()),
            frame: tcp_with_flags(client(40_002), dst, TCP_ACK),
            repeat,
        }
    }
}

impl Case for Miss {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let timed = time_test_run(self.dp.program(POD_INGRESS), &self.frame, self.repeat)?;
        expect_verdict("miss", timed.verdict, TC_ACT_OK)?;
        expect_frame("miss", &timed.out, &self.frame)?;
        ensure!(
            self.dp.conntrack_len() == 0,
            "miss: conntrack entries appeared"
        );
        expect_no_drops("miss", &self.dp)?;
        Ok(timed.sample)
    }
}

/// What the flows of an established cycle carry.
#[derive(Clone, Copy)]
pub(crate) enum Transport {
    Tcp,
    /// SCTP, its timed DATA chunks holding `data_len` bytes: the CRC32c
    /// update reads the length, not the bytes, so it costs the same at any.
    Sctp {
        data_len: usize,
    },
}

/// The flows an `Established` cycle runs on.
#[derive(Clone, Copy)]
pub(crate) struct Flows {
    pub(crate) transport: Transport,
    /// The backend listens on the service's own port: the DNAT rewrites the
    /// address alone, which leaves SCTP's CRC32c (no pseudo-header) as it is.
    pub(crate) port_kept: bool,
}

impl Flows {
    pub(crate) const TCP: Flows = Flows {
        transport: Transport::Tcp,
        port_kept: false,
    };

    fn proto(self) -> u8 {
        match self.transport {
            Transport::Tcp => PROTO_TCP,
            Transport::Sctp { .. } => PROTO_SCTP,
        }
    }

    fn backend(self, family: Family) -> SocketAddr {
        let backend = family.backend();
        if self.port_kept {
            SocketAddr::new(backend.ip(), family.vip().port())
        } else {
            backend
        }
    }

    /// A flow's first packet (SYN, INIT), which is balanced afresh.
    fn opening(self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        match self.transport {
            Transport::Tcp => syn(src, dst),
            Transport::Sctp { .. } => sctp_init(src, dst),
        }
    }

    /// A later packet of the flow (ACK, DATA), which conntrack carries.
    fn later(self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        match self.transport {
            Transport::Tcp => tcp_with_flags(src, dst, TCP_ACK),
            Transport::Sctp { data_len } => sctp_data(src, dst, data_len),
        }
    }
}

/// Conntrack hit + DNAT + checksums on every repetition: client → VIP is
/// DNATed to client → BACKEND, which is itself a service whose established
/// flow is DNATed back to client → VIP, and so on.
pub(crate) struct Established {
    pub(crate) dp: Datapath,
    pub(crate) to_vip: Vec<u8>,
    pub(crate) to_backend: Vec<u8>,
    pub(crate) repeat: u32,
}

impl Established {
    /// `monitored`: with a `kxdp monitor` listening for every event (drops
    /// and new flows), which the established path must not pay for.
    pub(crate) fn new(
        repeat: u32,
        family: Family,
        flows: Flows,
        monitored: bool,
    ) -> anyhow::Result<Self> {
        let (client, vip, backend) = (family.client(40_000), family.vip(), flows.backend(family));
        let mut dp = two_cycle_datapath(flows.proto(), vip, backend);
        if monitored {
            dp.set_monitor(MONITOR_DROPS | MONITOR_NEW_FLOWS);
        }
        // One opening packet each way opens both flows (forward + reply
        // entries)...
        let (open_to_vip, open_to_backend) =
            (flows.opening(client, vip), flows.opening(client, backend));
        run_once(
            &dp,
            POD_INGRESS,
            "established open (VIP)",
            &open_to_vip,
            &open_to_backend,
        )?;
        run_once(
            &dp,
            POD_INGRESS,
            "established open (backend)",
            &open_to_backend,
            &open_to_vip,
        )?;
        // ...and the timed packets are the flows' later ones: an opening
        // one would be balanced afresh.
        let to_vip = flows.later(client, vip);
        let to_backend = flows.later(client, backend);
        run_once(&dp, POD_INGRESS, "established (VIP)", &to_vip, &to_backend)?;
        run_once(
            &dp,
            POD_INGRESS,
            "established (backend)",
            &to_backend,
            &to_vip,
        )?;
        ensure!(
            dp.conntrack_len() == 4,
            "established: expected 4 conntrack entries"
        );
        Ok(Established {
            dp,
            to_vip,
            to_backend,
            repeat,
        })
    }

    fn packets_counted(&self) -> u64 {
        self.dp.stats(1).packets + self.dp.stats(2).packets
    }
}

impl Case for Established {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let before = self.packets_counted();
        let timed = time_test_run(self.dp.program(POD_INGRESS), &self.to_vip, self.repeat)?;
        expect_verdict("established", timed.verdict, TC_ACT_OK)?;
        let want = cycle_end(&self.to_vip, &self.to_backend, self.repeat);
        expect_frame("established", &timed.out, want)?;
        // A service packet is counted only after a successful DNAT, and no
        // new flow was created: every repetition was a conntrack hit + DNAT.
        let counted = self.packets_counted() - before;
        ensure!(
            counted == u64::from(self.repeat),
            "established: {counted} translated packets counted, expected {}",
            self.repeat
        );
        ensure!(
            self.dp.conntrack_len() == 4,
            "established: new conntrack entries"
        );
        expect_no_drops("established", &self.dp)?;
        Ok(timed.sample)
    }
}

/// The first packet of a new flow on every repetition: services VIP_0 →
/// VIP_1 → … → VIP_K, each with the next one as its only backend, and
/// repeat = K, so repetition i selects a backend for a flow to VIP_i, creates
/// its two conntrack entries and DNATs to VIP_{i+1}. A long chain touches a
/// different service on every repetition (cold map entries); a short one,
/// run many times per sample, keeps the service entries warm.
pub(crate) struct NewFlow {
    pub(crate) dp: Datapath,
    pub(crate) family: Family,
    pub(crate) chain: u32,
    /// BPF_PROG_TEST_RUN calls per sample, each with a new client port.
    pub(crate) calls: u32,
    pub(crate) next_port: u16,
}

pub(crate) fn chain_vip(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from(ip(10, 100, 0, 1)) + i), 80)
}

impl NewFlow {
    /// With `affinity`, every service has ClientIP session affinity: after
    /// the first call, each repetition also finds and checks the client's
    /// affinity entry and refreshes it.
    pub(crate) fn new(chain: u32, calls: u32, affinity: bool, family: Family) -> Self {
        assert!(calls < 60_000, "client ports must not repeat within a run");
        let mut dp = Datapath::load_with_arena(proxy_common::sizes::MAGLEV_ARENA_ENTRIES);
        let vip = |i| family.at(chain_vip(i));
        for i in 0..chain {
            add_service(&mut dp, i + 1, PROTO_TCP, vip(i), vip(i + 1));
            if affinity {
                let key: FrontendMapKey = match vip(i).ip() {
                    IpAddr::V4(addr) => pod_key(addr, 80, PROTO_TCP).into(),
                    IpAddr::V6(addr) => pod_key6(addr, 80, PROTO_TCP).into(),
                };
                dp.set_affinity(key, 10_800);
            }
        }
        NewFlow {
            dp,
            family,
            chain,
            calls,
            next_port: 1024,
        }
    }

    /// A client port not used by the last 60,000 calls.
    fn fresh_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 1024 } else { port + 1 };
        port
    }

    /// One call down the whole chain from a new client port.
    fn one_call(&mut self) -> anyhow::Result<Sample> {
        let port = self.fresh_port();
        let (client, vip) = (self.family.client(port), |i| self.family.at(chain_vip(i)));
        let frame = syn(client, vip(0));
        let timed = time_test_run(self.dp.program(POD_INGRESS), &frame, self.chain)?;
        expect_verdict("new flow", timed.verdict, TC_ACT_OK)?;
        let end = syn(client, vip(self.chain));
        expect_frame("new flow", &timed.out, &end)?;
        Ok(timed.sample)
    }
}

impl Case for NewFlow {
    fn run(&mut self) -> anyhow::Result<Sample> {
        // An empty table each run, so every run inserts into the same state.
        self.dp.clear_conntrack();
        let mean = mean_over_calls(self.calls, |_| self.one_call())?;
        let entries = self.dp.conntrack_len();
        let want = 2 * (self.chain * self.calls) as usize;
        ensure!(
            entries == want,
            "new flow: conntrack has {entries} entries after the run, expected {want} \
             (2 per repetition): not every repetition created a flow"
        );
        expect_no_drops("new flow", &self.dp)?;
        Ok(mean)
    }
}

/// Conntrack reply hit + reverse NAT (`pod_egress`) on every repetition: reply entries
/// written from userspace turn BACKEND → client into VIP → client and
/// VIP → client back into BACKEND → client.
pub(crate) struct Reply {
    pub(crate) dp: Datapath,
    pub(crate) from_backend: Vec<u8>,
    pub(crate) from_vip: Vec<u8>,
    pub(crate) repeat: u32,
}

impl Reply {
    pub(crate) fn new(repeat: u32, family: Family) -> anyhow::Result<Self> {
        let (peer, vip, backend) = (family.client(40_001), family.vip(), family.backend());
        let mut dp = two_cycle_datapath(PROTO_TCP, vip, backend);
        insert_reply(&mut dp, backend, peer, vip);
        insert_reply(&mut dp, vip, peer, backend);
        let from_backend = syn_ack(backend, peer);
        let from_vip = syn_ack(vip, peer);
        // Each step of the cycle, checked once: a repeated run cannot stall.
        run_once(
            &dp,
            POD_EGRESS,
            "reply set-up (backend)",
            &from_backend,
            &from_vip,
        )?;
        run_once(
            &dp,
            POD_EGRESS,
            "reply set-up (VIP)",
            &from_vip,
            &from_backend,
        )?;
        Ok(Reply {
            dp,
            from_backend,
            from_vip,
            repeat,
        })
    }
}

impl Case for Reply {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let timed = time_test_run(self.dp.program(POD_EGRESS), &self.from_backend, self.repeat)?;
        expect_verdict("reply", timed.verdict, TC_ACT_OK)?;
        let want = cycle_end(&self.from_backend, &self.from_vip, self.repeat);
        expect_frame("reply", &timed.out, want)?;
        ensure!(self.dp.conntrack_len() == 2, "reply: conntrack changed");
        expect_no_drops("reply", &self.dp)?;
        Ok(timed.sample)
    }
}

/// The reply entry turning `from` → `to` into `nat` → `to`, as the
/// datapath writes one (frontend 1, its first backend).
fn insert_reply(dp: &mut Datapath, from: SocketAddr, to: SocketAddr, nat: SocketAddr) {
    let (frontend_id, backend_id) = (1, Datapath::backend_id(1, 0));
    let ports = (port_to_net(from.port()), port_to_net(to.port()));
    match (from.ip(), to.ip(), nat.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to), IpAddr::V4(nat_addr)) => dp.insert_conntrack(
            FlowKey {
                src_addr: addr_to_net(from),
                dst_addr: addr_to_net(to),
                src_port: ports.0,
                dst_port: ports.1,
                proto: PROTO_TCP,
                _pad: [0; 3],
            },
            CtEntry {
                nat_addr: addr_to_net(nat_addr),
                nat_port: port_to_net(nat.port()),
                direction: CT_REPLY,
                frontend_id,
                backend_id,
                ..CtEntry::default()
            },
        ),
        (IpAddr::V6(from), IpAddr::V6(to), IpAddr::V6(nat_addr)) => dp.insert_conntrack6(
            FlowKey6 {
                src_addr: addr6_to_net(from),
                dst_addr: addr6_to_net(to),
                src_port: ports.0,
                dst_port: ports.1,
                proto: PROTO_TCP,
                _pad: [0; 3],
            },
            CtEntry6 {
                nat_addr: addr6_to_net(nat_addr),
                nat_port: port_to_net(nat.port()),
                direction: CT_REPLY,
                frontend_id,
                backend_id,
                ..CtEntry6::default()
            },
        ),
        _ => panic!("{from} → {to} as {nat}: one family"),
    }
}
