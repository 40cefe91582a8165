//! Harness for packet tests: loads the real kxdp object, gives typed access to
//! its maps and runs `pod_ingress`, `pod_egress` or `nic_ingress` on a frame
//! through `BPF_PROG_TEST_RUN`.
//!
//! The object's maps are pinned by name, so each `Datapath` mounts its own
//! private bpffs: parallel tests never share maps and nothing outlives a test.
//! The maps the agent writes are written by the agent's own code (the map
//! values of `sync::map_values`, the `BpfMaps` store, the Maglev table
//! writer), so a test also proves both sides agree on their layout; the
//! maps the datapath writes (conntrack, affinity) are read and, to set up
//! a state, written directly.
//! Privileged: without root and BPF this panics, it never skips.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf, EbpfLoader,
};
use proxy_common::{
    addr::addr6_to_net,
    kernel::clock_s,
    maps::{
        addr_to_net, hop_slot, port_roles, port_to_net, AffinityKey, AffinityValue, CtEntry,
        CtEntry6, DropReason, FlowKey, FlowKey6, FrontendKey, FrontendKey6, FrontendStats, NextHop,
        SockAffinityKey, Verdict, FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_EMPTY_DROP,
        FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, SCOPE_POD,
    },
};
use proxy_userspace::{
    cidr::IpCidr,
    dataplane::{
        bpf_syscall, load_program, maglev_arena::MAGLEV_ARENA, maps::BpfMaps, probe, KXDP_FEATURES,
    },
    ebpf_object::KXDP_OBJECT,
    maglev,
    model::types::{Backend, ServiceType},
    plan::{Frontend, Reached},
    source::ServiceName,
    sync::{
        entries::{BackendMapValue, FrontendMapKey},
        map_values::{backend_value, frontend_value, member, range_entries},
        store::{MapContents, MapStore, RangeEntry, TableSpec},
    },
};

use crate::{
    packet,
    privileged::{require_root, PrivateBpffs},
};

/// Entries of a test's Maglev arena (1 MiB): room for hundreds of tables,
/// without 64 MiB of kernel memory per test (the benchmarks, with
/// thousands of Services, load the agent's default).
pub const TEST_ARENA_ENTRIES: u32 = 1 << 17;

/// tc verdicts (linux/pkt_cls.h).
/// The program on packets leaving a pod (DNAT).
pub const POD_INGRESS: &str = "pod_ingress";
/// The program on packets entering a pod (reverse NAT).
pub const POD_EGRESS: &str = "pod_egress";
/// The program on packets arriving at a NIC (NodePort, external addresses).
pub const NIC_INGRESS: &str = "nic_ingress";
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdicts (linux/bpf.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Room the program may add to a frame (a reject reply grows small ones).
const OUT_SLACK: usize = 256;

/// The XDP context of a test run: a `frame_len`-byte frame arriving on
/// interface `ifindex` (struct xdp_md: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex).
pub fn xdp_md(frame_len: usize, ifindex: u32) -> Vec<u8> {
    [0, frame_len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// Now on the datapath's clock (`proxy_common::kernel::clock_s`), which
/// stamps conntrack, affinity and SNAT entries.
pub fn datapath_now_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    clock_s(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The moment `secs` seconds ago on the datapath's clock, for entries a
/// test back-dates. The clock starts far from zero, so this moment exists
/// even on a machine booted a minute ago.
pub fn datapath_s_ago(secs: u32) -> u32 {
    datapath_now_s() - secs
}

/// A tc test run's context: struct __sk_buff up to ifindex (the eleventh
/// u32: the interface the skb is on, which every kernel from 5.10 lets a
/// test run set); the kernel zeroes the rest.
fn skb_context(ifindex: u32) -> Vec<u8> {
    let mut ctx = [0u32; 11];
    ctx[10] = ifindex;
    ctx.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// The loopback interface's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// One BPF_PROG_TEST_RUN of `prog` on `frame` (with context `ctx`):
/// (verdict, frame as the program left it).
fn test_run_once<P>(prog: &P, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    try_test_run(prog, frame, ctx).unwrap_or_else(|| {
        panic!(
            "BPF_PROG_TEST_RUN on a {}-byte frame: the kernel refused the context",
            frame.len()
        )
    })
}

/// As [`test_run_once`], or `None` when the kernel refuses to take a
/// context for this program type (EINVAL; an XDP context before 5.15).
fn try_test_run<P>(prog: &P, frame: &[u8], ctx: Option<&[u8]>) -> Option<(u32, Vec<u8>)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        repeat: 1,
        ..Default::default()
    });
    let result = match result {
        Ok(result) => result,
        Err(ProgramError::SyscallError(e))
            if ctx.is_some() && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            return None;
        }
        Err(e) => panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e:#?}", frame.len()),
    };
    out.truncate(result.data_size_out as usize);
    Some((result.return_value, out))
}

/// A backend as the packet tests write it: address, port, on this node?
pub type TestBackend = (Ipv4Addr, u16, bool);
/// An IPv6 backend as the packet tests write it: address, port, on this node?
pub type TestBackend6 = (Ipv6Addr, u16, bool);

fn fail(what: impl std::fmt::Display) -> ! {
    panic!("packet tests need root and BPF: {what}")
}

/// The loaded datapath. Field order matters: the maps drop before `_mount`.
pub struct Datapath {
    ebpf: Ebpf,
    /// The agent's store over the maps it writes.
    maps: BpfMaps,
    /// What each frontend was written from: (id, the plan's frontend).
    frontends: StdHashMap<FrontendMapKey, (u32, Frontend)>,
    /// The backends written, by id (ids are one space over both families).
    backends: StdHashMap<u32, BackendMapValue>,
    /// The NIC addresses written, by interface index.
    nic_addrs: StdHashMap<u32, Vec<IpAddr>>,
    /// `PORT_ROLES` as written, by word: every port any frontend or
    /// backend was written with keeps its role (extra bits cost only a
    /// lookup).
    port_roles: StdHashMap<u32, u64>,
    /// NIC frames ran on the loopback standing in for the NIC (the
    /// kernel's BPF_PROG_TEST_RUN takes no XDP context before 5.15).
    nic_on_loopback: bool,
    /// NICs' MAC addresses as read (with `ip`, a process each), by index.
    nic_macs: StdHashMap<u32, [u8; 6]>,
    _mount: PrivateBpffs,
}

/// A test backend of either family as the plan holds it.
fn plan_backend(addr: impl Into<IpAddr>, port: u16, local: bool) -> Backend {
    Backend {
        addr: SocketAddr::new(addr.into(), port),
        local,
    }
}

/// A plan frontend as the tests describe one: `FRONTEND_*` bits (the
/// datapath's vocabulary) and backends; the agent's code turns it back into
/// the map value.
fn plan_frontend(flags: u32, backends: Vec<Backend>) -> Frontend {
    Frontend {
        service: ServiceName {
            namespace: "test".into(),
            name: "packet-test".into(),
        },
        port_name: String::new(),
        service_port: 80,
        node_port: None,
        service_type: ServiceType::ClusterIp,
        reached: Reached::ClusterIp,
        external_policy_local: false,
        internal_policy_local: false,
        backends,
        draining: Vec::new(),
        // Kubernetes' default timeout; `set_affinity` sets another.
        affinity_timeout: (flags & FRONTEND_AFFINITY_CLIENT_IP != 0).then_some(10_800),
        empty_drop: flags & FRONTEND_EMPTY_DROP != 0,
        snat_remote: flags & FRONTEND_SNAT_REMOTE != 0,
        // The ranges themselves come with `allow_source`.
        source_ranges: (flags & FRONTEND_SOURCE_RANGES != 0).then(Vec::new),
    }
}

/// The key of a ClusterIP frontend (`SCOPE_POD`).
pub fn pod_key(vip: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: addr_to_net(vip),
        port: port_to_net(port),
        proto,
        scope: SCOPE_POD,
    }
}

/// The key of an IPv6 ClusterIP frontend (`SCOPE_POD`), in `FRONTENDS6`.
pub fn pod_key6(vip: Ipv6Addr, port: u16, proto: u8) -> FrontendKey6 {
    FrontendKey6 {
        addr: addr6_to_net(vip),
        port: port_to_net(port),
        proto,
        scope: SCOPE_POD,
    }
}

/// `BPF_MAP_TYPE_HASH`.
const BPF_MAP_TYPE_HASH: u32 = 1;

impl Datapath {
    /// Loads the object with its maps pinned in a fresh private bpffs.
    pub fn load() -> Self {
        Self::load_with_arena(TEST_ARENA_ENTRIES)
    }

    /// [`Self::load`] with a Maglev arena of `arena_entries`.
    pub fn load_with_arena(arena_entries: u32) -> Self {
        require_root("packet tests");
        let mount = PrivateBpffs::new("kxdp-packet-test").unwrap_or_else(|e| fail(e));
        Self::load_in(mount, arena_entries, None)
    }

    /// [`Self::load`] with `CONNTRACK` of `entries` (`None`: its own size)
    /// and `refusing`: a plain hash map instead of the LRU, pinned before
    /// the object loads (the loader adopts a map pinned under its name). A
    /// full one refuses inserts where the LRU would evict, to show the
    /// datapath failing closed when an insert fails.
    pub fn load_with_conntrack(entries: u32, refusing: bool) -> Self {
        require_root("packet tests");
        let mount = PrivateBpffs::new("kxdp-packet-test").unwrap_or_else(|e| fail(e));
        if refusing {
            let spec = bpf_syscall::MapSpec {
                map_type: BPF_MAP_TYPE_HASH,
                key_size: std::mem::size_of::<FlowKey>() as u32,
                value_size: std::mem::size_of::<CtEntry>() as u32,
                max_entries: entries,
                flags: 0,
                inner_map: None,
            };
            let map = bpf_syscall::map_create(&spec)
                .unwrap_or_else(|e| fail(format!("creating a plain CONNTRACK: {e}")));
            bpf_syscall::obj_pin(map.as_fd(), &mount.path().join("CONNTRACK"))
                .unwrap_or_else(|e| fail(format!("pinning it: {e}")));
        }
        Self::load_in(mount, TEST_ARENA_ENTRIES, Some(entries))
    }

    fn load_in(mount: PrivateBpffs, arena_entries: u32, conntrack_entries: Option<u32>) -> Self {
        // Loaded for this kernel as the agent loads it.
        let (_, loadout) = probe::this_kernel(false).unwrap_or_else(|e| fail(e));
        let mut loader = EbpfLoader::new();
        if let Some(entries) = conntrack_entries {
            loader.map_max_entries("CONNTRACK", entries);
        }
        let mut ebpf = loader
            .default_map_pin_directory(mount.path())
            .map_max_entries(MAGLEV_ARENA, arena_entries)
            .override_global(KXDP_FEATURES, &loadout.datapath_bits, true)
            .load(KXDP_OBJECT)
            .unwrap_or_else(|e| fail(format!("loading the kxdp object: {e:#?}")));
        for name in [POD_INGRESS, POD_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| fail(format!("no {name} program in the object")))
                .try_into()
                .unwrap_or_else(|e| fail(format!("{name} is not a classifier: {e}")));
            load_program(|| prog.load())
                .unwrap_or_else(|e| fail(format!("verifier rejected {name}: {e:#?}")));
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(NIC_INGRESS)
            .unwrap_or_else(|| fail("no nic_ingress program in the object"))
            .try_into()
            .unwrap_or_else(|e| fail(format!("nic_ingress is not XDP: {e}")));
        load_program(|| xdp.load())
            .unwrap_or_else(|e| fail(format!("verifier rejected nic_ingress: {e:#?}")));
        let maps = BpfMaps::from_ebpf(&mut ebpf).unwrap_or_else(|e| fail(format!("maps: {e}")));
        Datapath {
            ebpf,
            maps,
            frontends: StdHashMap::new(),
            backends: StdHashMap::new(),
            nic_addrs: StdHashMap::new(),
            port_roles: StdHashMap::new(),
            nic_on_loopback: false,
            nic_macs: StdHashMap::new(),
            _mount: mount,
        }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"));
        HashMap::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e}"))
    }

    /// Backend ids are derived from the service id so services never share
    /// them: up to this many backends a frontend, and ids within
    /// `BACKEND_SLOTS` for the benchmarks' 20,000 frontends.
    pub const BACKENDS_PER_FRONTEND: usize = 24;

    pub fn backend_id(frontend_id: u32, index: usize) -> u32 {
        assert!(
            index < Self::BACKENDS_PER_FRONTEND,
            "backend {index} of one frontend"
        );
        frontend_id * Self::BACKENDS_PER_FRONTEND as u32 + index as u32 + 1
    }

    /// Writes a ClusterIP service the way sync does: backends, then the
    /// Maglev table, then the service entry (table size M; 0 means no backend).
    /// Calling it again for the same service replaces its backends.
    pub fn add_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        id: u32,
        backends: &[(Ipv4Addr, u16)],
    ) {
        let backends: Vec<TestBackend> = backends.iter().map(|&(a, p)| (a, p, false)).collect();
        self.add_frontend(pod_key(vip, port, proto), id, 0, &backends);
    }

    /// [`Self::add_service`] for an IPv6 ClusterIP: its entry in
    /// `FRONTENDS6`, its backends in `BACKEND_SLOTS6` (backend ids as
    /// [`Self::backend_id`] gives them, one space with IPv4's).
    pub fn add_service6(
        &mut self,
        vip: Ipv6Addr,
        port: u16,
        proto: u8,
        id: u32,
        backends: &[(Ipv6Addr, u16)],
    ) {
        let backends: Vec<TestBackend6> = backends.iter().map(|&(a, p)| (a, p, false)).collect();
        self.add_frontend6(pod_key6(vip, port, proto), id, 0, &backends);
    }

    /// Writes a ClusterIP service (either family) over backends already
    /// written (by id, of the same family), as sync does for a frontend
    /// sharing another's backends.
    pub fn add_service_over(
        &mut self,
        vip: impl Into<IpAddr>,
        port: u16,
        proto: u8,
        id: u32,
        backend_ids: &[u32],
    ) {
        let key: FrontendMapKey = match vip.into() {
            IpAddr::V4(vip) => pod_key(vip, port, proto).into(),
            IpAddr::V6(vip) => pod_key6(vip, port, proto).into(),
        };
        let frontend = plan_frontend(0, Vec::new());
        let table_size = self.write_table(id, backend_ids);
        self.write_frontend(key, id, frontend, table_size);
    }

    /// Writes any frontend (`key` with its scope, `flags` as `FRONTEND_*`)
    /// the way [`Self::add_service`] does.
    pub fn add_frontend(
        &mut self,
        key: FrontendKey,
        id: u32,
        flags: u32,
        backends: &[TestBackend],
    ) {
        let backends = backends
            .iter()
            .map(|&(addr, port, local)| plan_backend(addr, port, local))
            .collect();
        self.add_frontend_of(key.into(), id, flags, backends);
    }

    /// [`Self::add_frontend`] for an IPv6 frontend (`FrontendKey6`, scope
    /// and all) over IPv6 backends.
    pub fn add_frontend6(
        &mut self,
        key: FrontendKey6,
        id: u32,
        flags: u32,
        backends: &[TestBackend6],
    ) {
        let backends = backends
            .iter()
            .map(|&(addr, port, local)| plan_backend(addr, port, local))
            .collect();
        self.add_frontend_of(key.into(), id, flags, backends);
    }

    /// [`Self::add_frontend`] for a frontend of either family over backends
    /// of its family (address, port, on this node?).
    pub fn add_frontend_any(
        &mut self,
        key: impl Into<FrontendMapKey>,
        id: u32,
        flags: u32,
        backends: &[(IpAddr, u16, bool)],
    ) {
        let backends = backends
            .iter()
            .map(|&(addr, port, local)| plan_backend(addr, port, local))
            .collect();
        self.add_frontend_of(key.into(), id, flags, backends);
    }

    /// Writes frontend `key` of either family over `backends` (of its
    /// family) as sync does: port roles, backends, table, entry.
    fn add_frontend_of(
        &mut self,
        key: FrontendMapKey,
        id: u32,
        flags: u32,
        backends: Vec<Backend>,
    ) {
        let frontend = plan_frontend(flags, backends);
        let ids: Vec<u32> = (0..frontend.backends.len())
            .map(|i| Self::backend_id(id, i))
            .collect();
        let values: Vec<(u32, BackendMapValue)> = ids
            .iter()
            .zip(&frontend.backends)
            .map(|(&backend_id, backend)| (backend_id, backend_value(backend)))
            .collect();
        for (_, backend) in &values {
            self.give_role(port_roles::BACKEND, backend.port());
        }
        let role = if key.scope() == SCOPE_POD {
            port_roles::POD_FRONTEND
        } else {
            port_roles::NODE_FRONTEND
        };
        self.give_role(role, key.port());
        let failed = self.maps.put_backends(&values);
        assert!(failed.is_empty(), "write backends: {failed:?}");
        self.backends.extend(values);
        let table_size = self.write_table(id, &ids);
        self.write_frontend(key, id, frontend, table_size);
    }

    /// Sets `port`'s bit for `role` in `PORT_ROLES`, as sync does before
    /// writing what uses it.
    pub fn give_role(&mut self, role: u32, port: u16) {
        let (word, bit) = port_roles::position(role, port);
        let bits = self.port_roles.entry(word).or_insert(0);
        *bits |= bit;
        let failed = self.maps.put_port_roles(&[(word, *bits)]);
        assert!(failed.is_empty(), "write port roles: {failed:?}");
    }

    /// Writes the entry of frontend `key` as sync does.
    fn write_frontend(
        &mut self,
        key: FrontendMapKey,
        id: u32,
        frontend: Frontend,
        table_size: u32,
    ) {
        for range in range_entries(&frontend, id) {
            self.maps
                .put_source_range(&range)
                .expect("write source range");
        }
        let failed = self
            .maps
            .put_frontends(&[(key, frontend_value(&frontend, id, table_size))]);
        assert!(failed.is_empty(), "write frontend: {failed:?}");
        self.frontends.insert(key, (id, frontend));
    }

    fn frontend(&self, key: &FrontendMapKey) -> (u32, Frontend) {
        self.frontends.get(key).cloned().expect("frontend written")
    }

    /// A loaded program ([`POD_INGRESS`], [`POD_EGRESS`]), for callers that
    /// drive BPF_PROG_TEST_RUN themselves (the benchmarks repeat and time it).
    pub fn program(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .expect("program loaded")
            .try_into()
            .expect("classifier")
    }

    /// A loaded program, for callers that attach it to an interface (the
    /// real-traffic benchmark).
    pub fn program_mut(&mut self, name: &str) -> &mut aya::programs::Program {
        self.ebpf.program_mut(name).expect("program loaded")
    }

    /// Turns on `sessionAffinity: ClientIP` with `timeout` seconds for the
    /// frontend `key` (`FrontendKey` or `FrontendKey6`), which must exist.
    pub fn set_affinity(&mut self, key: impl Into<FrontendMapKey>, timeout: u32) {
        let key = key.into();
        let (id, mut frontend) = self.frontend(&key);
        frontend.affinity_timeout = Some(timeout);
        let table_size = self.table(id).len() as u32;
        self.write_frontend(key, id, frontend, table_size);
    }

    /// Points frontend `key` (service `id`) at `backend_ids` (already in
    /// `BACKENDS`) with a new Maglev table, as sync does when its backends
    /// change; backend ids stay as they are. Either family's key.
    pub fn set_backends(&mut self, key: impl Into<FrontendMapKey>, id: u32, backend_ids: &[u32]) {
        let key = key.into();
        let (_, frontend) = self.frontend(&key);
        let table_size = self.write_table(id, backend_ids);
        self.write_frontend(key, id, frontend, table_size);
    }

    /// Makes a new table for service `id` over `backend_ids` live and
    /// leaves the service entry as it was (sync rewrites the entry
    /// afterwards).
    pub fn replace_table(&mut self, id: u32, backend_ids: &[u32]) {
        self.write_table(id, backend_ids);
    }

    /// Builds and writes the Maglev table of service `id` over `backend_ids`
    /// as sync does (none: no table); returns its size.
    fn write_table(&mut self, id: u32, backend_ids: &[u32]) -> u32 {
        let members: Vec<maglev::Member> = backend_ids
            .iter()
            .map(|backend_id| member(&self.backends[backend_id], *backend_id))
            .collect();
        if members.is_empty() {
            self.maps.delete_table(id).expect("remove table");
            return 0;
        }
        let size = maglev::table_size(members.len(), maglev::DEFAULT_MAX_TABLE_SIZE);
        let spec = TableSpec::new(size, backend_ids.to_vec());
        self.maps
            .put_table(id, &spec, || maglev::build(&members, size).into())
            .expect("write table");
        size
    }

    /// The Maglev table of service `id` as the datapath reads it.
    pub fn table(&self, id: u32) -> Vec<u32> {
        self.maps
            .tables()
            .get(id)
            .expect("read table")
            .unwrap_or_default()
    }

    /// Drops the maps and opens them again from their pins, as a restarted
    /// agent does (the arena's allocator rebuilt from what it holds).
    pub fn reopen_maps(&mut self) {
        self.maps = BpfMaps::open_pinned(self._mount.path())
            .unwrap_or_else(|e| fail(format!("reopening the pinned maps: {e}")));
    }

    /// Every table the maps hold, as a restarted agent reads them.
    pub fn table_specs(&self) -> std::collections::BTreeMap<u32, TableSpec> {
        self.contents().tables
    }

    /// Everything the agent-written maps of both families hold, as a
    /// restarted agent reads them.
    pub fn contents(&self) -> MapContents {
        self.maps.read_contents().expect("read the maps")
    }

    /// Where the table of service `id` starts in the arena (0: none).
    pub fn table_block(&self, id: u32) -> u32 {
        self.maps.tables().block_of(id).expect("read the index")
    }

    /// Every session-affinity entry.
    pub fn affinity(&mut self) -> Vec<(AffinityKey, AffinityValue)> {
        let map = self.hash::<AffinityKey, AffinityValue>("AFFINITY");
        map.iter().map(|r| r.expect("read affinity")).collect()
    }

    /// Writes one session-affinity entry, as if the datapath had made it.
    pub fn insert_affinity(&mut self, key: AffinityKey, value: AffinityValue) {
        self.hash::<AffinityKey, AffinityValue>("AFFINITY")
            .insert(key, value, 0)
            .expect("insert affinity");
    }

    /// Tells the programs a monitor listens for `bits` (`MONITOR_*`; 0:
    /// nobody), as `kxdp monitor` does.
    pub fn set_monitor(&mut self, bits: u32) {
        let map = self.ebpf.map_mut("MONITOR").expect("no map MONITOR");
        let mut monitor: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(map).expect("MONITOR is an array");
        monitor.set(0, bits, 0).expect("write MONITOR");
    }

    /// The address flows of its family arriving on NIC `ifindex` are
    /// SNATed to.
    pub fn set_nic_addr(&mut self, ifindex: u32, addr: impl Into<IpAddr>) {
        let addr = addr.into();
        self.maps
            .put_nic_addr(ifindex, addr)
            .expect("write NIC address");
        self.nic_addrs.entry(ifindex).or_default().push(addr);
    }

    /// Lets clients in `prefix/len` (either family: `SOURCE_RANGES` or
    /// `SOURCE_RANGES6`) use frontend `frontend_id` (loadBalancerSourceRanges).
    pub fn allow_source(&mut self, frontend_id: u32, prefix: impl Into<IpAddr>, len: u32) {
        let len = u8::try_from(len).expect("a prefix length");
        let cidr = IpCidr::new(prefix.into(), len).expect("a valid prefix");
        self.maps
            .put_source_range(&RangeEntry { frontend_id, cidr })
            .expect("write source range");
    }

    /// The loaded `nic_ingress`, for callers that drive BPF_PROG_TEST_RUN themselves.
    pub fn nic_program(&self) -> &Xdp {
        self.ebpf
            .program(NIC_INGRESS)
            .expect("program loaded")
            .try_into()
            .expect("XDP")
    }

    /// Deletes the entry of frontend `key` (either family), as sync does
    /// when its Service goes (its table and backends stay).
    pub fn remove_frontend(&mut self, key: impl Into<FrontendMapKey>) {
        let key = key.into();
        self.maps.delete_frontend(&key).expect("remove frontend");
        self.frontends.remove(&key);
    }

    /// Deletes a backend (either family), as sync does once no service
    /// lists it.
    pub fn remove_backend(&mut self, id: u32) {
        let held = self.backends.remove(&id).expect("a backend written");
        self.maps.delete_backend(id, &held).expect("remove backend");
    }

    /// Writes one conntrack entry directly, as if the datapath had made it.
    pub fn insert_conntrack(&mut self, key: FlowKey, entry: CtEntry) {
        self.hash::<FlowKey, CtEntry>("CONNTRACK")
            .insert(key, entry, 0)
            .expect("insert conntrack");
    }

    /// [`Self::insert_conntrack`] for an IPv6 flow.
    pub fn insert_conntrack6(&mut self, key: FlowKey6, entry: CtEntry6) {
        self.hash::<FlowKey6, CtEntry6>("CONNTRACK6")
            .insert(key, entry, 0)
            .expect("insert conntrack");
    }

    /// The next hops the NIC program learnt, on any CPU.
    pub fn next_hops(&mut self) -> Vec<NextHop> {
        let map = self.hop_cache();
        let mut hops = Vec::new();
        for slot in 0..map.len() {
            for hop in map.get(&slot, 0).expect("read HOP_CACHE").iter() {
                if hop.ifindex != 0 && !hops.contains(hop) {
                    hops.push(*hop);
                }
            }
        }
        hops
    }

    /// Writes one next hop directly, in its slot on every CPU, as if the
    /// NIC program had learnt it.
    pub fn insert_next_hop(&mut self, hop: NextHop) {
        let mut map = self.hop_cache();
        let copies = aya::util::nr_cpus().expect("possible CPUs");
        let values = PerCpuValues::try_from(vec![hop; copies]).expect("per-CPU values");
        map.set(hop_slot(hop.dst, hop.src, hop.ifindex), values, 0)
            .expect("write next hop");
    }

    fn hop_cache(&mut self) -> PerCpuArray<&mut MapData, NextHop> {
        let map = self.ebpf.map_mut("HOP_CACHE").expect("no map HOP_CACHE");
        PerCpuArray::try_from(map).expect("HOP_CACHE is a per-CPU array")
    }

    /// How many conntrack entries there are, of both families.
    pub fn conntrack_len(&mut self) -> usize {
        let v4 = self.hash::<FlowKey, CtEntry>("CONNTRACK").keys().count();
        let v6 = self.hash::<FlowKey6, CtEntry6>("CONNTRACK6").keys().count();
        v4 + v6
    }

    /// Removes every conntrack entry, of both families.
    pub fn clear_conntrack(&mut self) {
        let mut map = self.hash::<FlowKey, CtEntry>("CONNTRACK");
        // Collect first: deleting while iterating would skip keys.
        let keys: Vec<FlowKey> = map.keys().map(|k| k.expect("read key")).collect();
        for key in keys {
            map.remove(&key).expect("remove conntrack entry");
        }
        let mut map = self.hash::<FlowKey6, CtEntry6>("CONNTRACK6");
        let keys: Vec<FlowKey6> = map.keys().map(|k| k.expect("read key")).collect();
        for key in keys {
            map.remove(&key).expect("remove conntrack entry");
        }
    }

    /// Every conntrack entry, for tests that look at flow state.
    pub fn conntrack(&mut self) -> Vec<(FlowKey, CtEntry)> {
        let map = self.hash::<FlowKey, CtEntry>("CONNTRACK");
        map.iter().map(|r| r.expect("read conntrack")).collect()
    }

    /// Every IPv6 conntrack entry.
    pub fn conntrack6(&mut self) -> Vec<(FlowKey6, CtEntry6)> {
        let map = self.hash::<FlowKey6, CtEntry6>("CONNTRACK6");
        map.iter().map(|r| r.expect("read conntrack")).collect()
    }

    /// The directions (`CT_FORWARD`, `CT_REPLY`) of every conntrack entry
    /// of both families.
    pub fn conntrack_directions(&mut self) -> Vec<u8> {
        let v4 = self.conntrack().into_iter().map(|(_, e)| e.direction);
        let v6 = self.conntrack6().into_iter().map(|(_, e)| e.direction);
        v4.chain(v6).collect()
    }

    /// Where the maps are pinned (this datapath's own bpffs mount), for
    /// readers of the pins such as `kxdp trace`'s.
    pub fn pin_path(&self) -> &std::path::Path {
        self._mount.path()
    }

    /// Runs `pod_ingress` (a packet leaving a pod) once on `frame`:
    /// (verdict, frame as the program left it).
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_program(POD_INGRESS, frame)
    }

    /// Runs `pod_ingress` once on `frame` as if it came in on interface
    /// `ifindex` of the calling thread's network namespace.
    pub fn run_from(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.run_program_in(POD_INGRESS, frame, Some(&skb_context(ifindex)))
    }

    /// Runs `pod_egress` (a packet entering a pod) once on `frame`.
    pub fn run_egress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_program(POD_EGRESS, frame)
    }

    /// Runs `nic_ingress` once on `frame` as if it arrived on interface
    /// `ifindex` of the calling thread's network namespace.
    ///
    /// Before Linux 5.15 a test run takes no XDP context (EINVAL): the frame
    /// arrives on the namespace's loopback interface instead, so `ifindex`'s
    /// address is written for the loopback too, and a frame the FIB sends
    /// out of `ifindex` is redirected there rather than sent back. The
    /// FIB writes the egress interface's own MAC as the frame's source, so
    /// a redirect with `ifindex`'s MAC as its source is what a kernel
    /// taking the context gives as XDP_TX, and is read as that.
    pub fn run_nic(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        // Borrowed from the object alone, so the maps stay writable below.
        let prog: &Xdp = self
            .ebpf
            .program(NIC_INGRESS)
            .expect("program loaded")
            .try_into()
            .expect("XDP");
        let context = xdp_md(frame.len(), ifindex);
        if !self.nic_on_loopback {
            if let Some(run) = try_test_run(prog, frame, Some(&context)) {
                return run;
            }
        }
        // A kernel that refused the context once refuses it always.
        self.nic_on_loopback = true;
        for &addr in self.nic_addrs.get(&ifindex).into_iter().flatten() {
            self.maps
                .put_nic_addr(LOOPBACK_IFINDEX, addr)
                .expect("write NIC address");
        }
        let (verdict, out) = test_run_once(prog, frame, None);
        let mac = *self
            .nic_macs
            .entry(ifindex)
            .or_insert_with(|| crate::nic_netns::mac_of(ifindex));
        let sent_from_ifindex = out.get(6..12) == Some(&mac[..]);
        match verdict {
            XDP_REDIRECT if sent_from_ifindex => (XDP_TX, out),
            _ => (verdict, out),
        }
    }

    /// Runs `pod_ingress` (on interface `ifindex`) or `pod_egress` once on
    /// `frame`, or `None` when the kernel refuses the frame itself (EINVAL:
    /// too short for its type), for callers that send malformed frames.
    pub fn try_run_pod(
        &mut self,
        name: &str,
        frame: &[u8],
        ifindex: u32,
    ) -> Option<(u32, Vec<u8>)> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .expect("program loaded")
            .try_into()
            .expect("classifier");
        try_test_run(prog, frame, Some(&skb_context(ifindex)))
    }

    /// As [`Self::run_nic`], or `None` when the kernel refuses the frame.
    pub fn try_run_nic(&mut self, frame: &[u8], ifindex: u32) -> Option<(u32, Vec<u8>)> {
        if frame.len() < packet::ETH_HLEN {
            // Refused before any context is read, on every kernel (a
            // refusal would otherwise be taken for one of the context).
            return None;
        }
        Some(self.run_nic(frame, ifindex))
    }

    /// Whether NIC frames ran on the loopback instead of the NIC (see
    /// [`Self::run_nic`]): a packet sent back out then leaves by redirect.
    pub fn nic_on_loopback(&self) -> bool {
        self.nic_on_loopback
    }

    /// Verdicts counted for `verdict`, summed over CPUs.
    pub fn verdicts(&self, verdict: Verdict) -> u64 {
        self.maps.verdicts(verdict.index()).expect("read VERDICTS")
    }

    fn run_program(&mut self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_program_in(name, frame, None)
    }

    fn run_program_in(&mut self, name: &str, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .expect("program loaded")
            .try_into()
            .expect("classifier");
        test_run_once(prog, frame, ctx)
    }

    /// Drops counted for `reason`, summed over CPUs.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.maps.drops(reason.index()).expect("read DROPS")
    }

    /// Packets (and sockets) refused for want of endpoints, of a frontend.
    pub fn rejects(&self, frontend_id: u32) -> u64 {
        self.maps
            .frontend_rejects(frontend_id)
            .expect("read REJECTS")
    }

    /// Packet and byte counters of a service, summed over CPUs.
    pub fn stats(&self, frontend_id: u32) -> FrontendStats {
        self.maps.frontend_stats(frontend_id).expect("read STATS")
    }
}

/// Back-dates every `sessionAffinity: ClientIP` entry of the datapath
/// pinned under `pin_path` by `secs` seconds, as if each client's last
/// connection were that much older: a test outlasts an affinity timeout
/// without waiting for it. The number of entries changed.
pub fn back_date_affinity(pin_path: &std::path::Path, secs: u32) -> anyhow::Result<usize> {
    back_date::<AffinityKey>(pin_path, "AFFINITY", secs)
}

/// [`back_date_affinity`] for IPv6 clients' entries (`AFFINITY6`).
pub fn back_date_affinity6(pin_path: &std::path::Path, secs: u32) -> anyhow::Result<usize> {
    back_date::<proxy_common::maps::AffinityKey6>(pin_path, "AFFINITY6", secs)
}

/// [`back_date_affinity`] for the socket hooks' entries (`SOCK_AFFINITY`).
pub fn back_date_sock_affinity(pin_path: &std::path::Path, secs: u32) -> anyhow::Result<usize> {
    back_date::<SockAffinityKey>(pin_path, "SOCK_AFFINITY", secs)
}

fn back_date<K: aya::Pod>(
    pin_path: &std::path::Path,
    map: &str,
    secs: u32,
) -> anyhow::Result<usize> {
    let mut map = MapData::from_pin(pin_path.join(map))
        .and_then(Map::from_map_data)
        .and_then(HashMap::<MapData, K, AffinityValue>::try_from)?;
    let entries: Vec<(K, AffinityValue)> = map.iter().collect::<Result<_, _>>()?;
    for (key, mut value) in entries.iter().copied() {
        value.last_used -= secs;
        map.insert(key, value, 0)?;
    }
    Ok(entries.len())
}
