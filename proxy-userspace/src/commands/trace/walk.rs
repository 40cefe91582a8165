//! The walk of `kxdp trace`: a packet taken through the load-balancing
//! core (`proxy_common::lb`) as the program at its hook takes it, with
//! what the core consults read from the pinned maps instead of the
//! program's: the frontend, its source ranges, the forward conntrack entry,
//! the client's affinity and the Maglev slot of the tuple's hash. Nothing
//! is written: a new flow's choice is computed, not recorded.

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{
    addr::{addr6_from_net, addr6_to_net, Addr6},
    hash,
    lb::{self, Decision, Established, First, Hook, Lookups, Packet, Recording, TCP_SYN},
    maps::{
        addr_from_net, addr_to_net, maglev_layout, port_from_net, port_to_net, AffinityKey,
        AffinityKey6, AffinityValue, CtEntryOf, DropReason, FlowKey, FlowKey6, FrontendKeyOf,
        FrontendLabel, FrontendValue, BACKEND_LOCAL, CT_FORWARD, CT_SNAT,
        FRONTEND_AFFINITY_CLIENT_IP, PROTO_UDP, SCOPE_NODE, SCOPE_POD, SNAT_PORT_MAX,
        SNAT_PORT_MIN,
    },
};

use super::request::{Request, Via};
use crate::{
    dataplane::{
        fill::{open_hash, CONNTRACK, CONNTRACK6},
        maps::BpfMaps,
    },
    sync::entries::{BackendMapValue, FrontendMapKey},
};

/// The pinned maps a trace reads.
pub struct TraceMaps {
    maps: BpfMaps,
    conntrack: HashMap<MapData, FlowKey, CtEntryOf<u32>>,
    conntrack6: HashMap<MapData, FlowKey6, CtEntryOf<Addr6>>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    affinity6: HashMap<MapData, AffinityKey6, AffinityValue>,
}

impl TraceMaps {
    pub fn open(pin_path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            maps: BpfMaps::open_pinned(pin_path)?,
            conntrack: open_hash(pin_path, CONNTRACK)?,
            conntrack6: open_hash(pin_path, CONNTRACK6)?,
            affinity: open_hash(pin_path, "AFFINITY")?,
            affinity6: open_hash(pin_path, "AFFINITY6")?,
        })
    }

    /// The conntrack entry keyed by the packet `src` → `dst`.
    fn conntrack_entry(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        proto: u8,
    ) -> anyhow::Result<Option<Entry>> {
        let (sport, dport) = (port_to_net(src.port()), port_to_net(dst.port()));
        let found = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let key = FlowKey {
                    src_addr: addr_to_net(s),
                    dst_addr: addr_to_net(d),
                    src_port: sport,
                    dst_port: dport,
                    proto,
                    _pad: [0; 3],
                };
                absent_is_none(self.conntrack.get(&key, 0))?
                    .map(|e| Entry::of(&e, |a| addr_from_net(a).into()))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let key = FlowKey6 {
                    src_addr: addr6_to_net(s),
                    dst_addr: addr6_to_net(d),
                    src_port: sport,
                    dst_port: dport,
                    proto,
                    _pad: [0; 3],
                };
                absent_is_none(self.conntrack6.get(&key, 0))?
                    .map(|e| Entry::of(&e, |a| addr6_from_net(a).into()))
            }
            _ => None,
        };
        Ok(found)
    }

    fn affinity_entry(
        &self,
        frontend_id: u32,
        client: IpAddr,
    ) -> anyhow::Result<Option<AffinityValue>> {
        Ok(match client {
            IpAddr::V4(addr) => absent_is_none(self.affinity.get(
                &AffinityKey {
                    frontend_id,
                    client_addr: addr_to_net(addr),
                },
                0,
            ))?,
            IpAddr::V6(addr) => absent_is_none(self.affinity6.get(
                &AffinityKey6 {
                    frontend_id,
                    client_addr: addr6_to_net(addr),
                },
                0,
            ))?,
        })
    }

    /// Backend `id` of `addr`'s family, if its slot holds one.
    fn backend(&self, id: u32, family_of: IpAddr) -> anyhow::Result<Option<BackendMapValue>> {
        Ok(self.maps.backend(id, family_of.is_ipv6())?)
    }
}

fn absent_is_none<V>(found: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match found {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A conntrack entry of either family.
#[derive(Clone, Copy, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Forward: the backend. Reply: the frontend.
    pub nat: SocketAddr,
    #[serde(skip)]
    pub direction: u8,
    /// `CT_*` bits.
    pub flags: u8,
    pub frontend_id: u32,
    pub backend_id: u32,
    /// With `CT_SNAT`: the node's address and port the backend sees.
    pub snat: Option<SocketAddr>,
    /// With `CT_SNAT`: when the flow last passed, on the datapath's clock.
    #[serde(skip)]
    pub last_seen: u32,
}

impl Entry {
    fn of<A: Copy>(entry: &CtEntryOf<A>, addr: impl Fn(A) -> IpAddr) -> Self {
        let snat = (entry.flags & CT_SNAT != 0)
            .then(|| SocketAddr::new(addr(entry.snat_addr), port_from_net(entry.snat_port)));
        Self {
            nat: SocketAddr::new(addr(entry.nat_addr), port_from_net(entry.nat_port)),
            direction: entry.direction,
            flags: entry.flags,
            frontend_id: entry.frontend_id,
            backend_id: entry.backend_id,
            snat,
            last_seen: entry.last_seen,
        }
    }
}

/// How a new flow's backend was chosen.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "by")]
pub enum Choice {
    /// The client's `sessionAffinity: ClientIP` entry.
    Affinity {
        last_used_seconds_ago: u32,
        timeout_seconds: u32,
    },
    /// Slot `slot` (the tuple's hash mod the table's size) of the Maglev
    /// table.
    Maglev {
        hash: u32,
        slot: u32,
        table_size: u32,
        member: u32,
    },
}

/// A backend for the flow, and how the flow is recorded.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Chosen {
    pub backend: SocketAddr,
    pub backend_id: u32,
    pub local: bool,
    pub choice: Choice,
    /// Plain, FromNic, Hairpin or Snat (`proxy_common::lb::Recording`).
    pub recording: &'static str,
    /// SNAT: each NIC's address of the family (ifindex, address), and the
    /// first port the flow's hash tries.
    pub snat_to: Vec<(u32, IpAddr)>,
    pub snat_first_port: Option<u16>,
}

/// What the core translates with: an existing flow's entry, or a new
/// flow's choice.
#[derive(Clone, Debug)]
pub enum Translation {
    Existing(Entry),
    New(Chosen),
}

/// What the trace saw on the way, besides the verdict.
#[derive(Debug, Default)]
pub struct Seen {
    pub source_ranges: Option<bool>,
    pub conntrack: Option<Entry>,
    /// Seconds since the entry's flow last passed (SNATed flows record it;
    /// other entries keep no time).
    pub conntrack_idle_seconds: Option<u32>,
    pub backend_gone: bool,
    pub affinity: Option<AffinityValue>,
}

struct MapLookups<'a> {
    maps: &'a TraceMaps,
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
    hook: Hook,
    now: u32,
    seen: RefCell<Seen>,
    /// The first map read that failed: the core's callbacks cannot return it.
    failed: RefCell<Option<anyhow::Error>>,
}

impl MapLookups<'_> {
    fn read<T: Default>(&self, read: anyhow::Result<T>) -> T {
        read.unwrap_or_else(|e| {
            self.failed.borrow_mut().get_or_insert(e);
            T::default()
        })
    }

    /// The Maglev choice for the tuple, as `select.rs` reads the table.
    fn slot_choice(&self, frontend: &FrontendValue) -> anyhow::Result<Option<(u32, u32, Choice)>> {
        let Some(entries) = self.maps.maps.tables().entries(frontend.id)? else {
            return Ok(None);
        };
        let hash = tuple_hash(self.src, self.dst, self.proto);
        let Some(&header) = entries.get(maglev_layout::HEADER as usize) else {
            return Ok(None);
        };
        let (size, capacity) = (header as u32, (header >> 32) as u32);
        if size == 0 {
            return Ok(None);
        }
        let slot = hash % size;
        let lane = entries.get((maglev_layout::slots_start(capacity) + slot / 4) as usize);
        let member = lane.map_or(u32::MAX, |lanes| {
            ((lanes >> ((slot % 4) * 16)) & 0xffff) as u32
        });
        let Some(id) = member_id(&entries, member) else {
            return Ok(None);
        };
        let choice = Choice::Maglev {
            hash,
            slot,
            table_size: size,
            member,
        };
        Ok(Some((id, member, choice)))
    }

    /// The client's affinity entry, if it holds (`select.rs`'s rule).
    fn affinity_choice(&self, frontend: &FrontendValue) -> anyhow::Result<Option<(u32, Choice)>> {
        let Some(remembered) = self.maps.affinity_entry(frontend.id, self.src.ip())? else {
            return Ok(None);
        };
        self.seen.borrow_mut().affinity = Some(remembered);
        let ago = self.now.saturating_sub(remembered.last_used);
        let member = match self.maps.maps.tables().entries(frontend.id)? {
            Some(entries) => member_id(&entries, remembered.member),
            None => None,
        };
        let holds = ago <= frontend.affinity_timeout
            && member == Some(remembered.backend_id)
            && self
                .maps
                .backend(remembered.backend_id, self.src.ip())?
                .is_some();
        Ok(holds.then_some((
            remembered.backend_id,
            Choice::Affinity {
                last_used_seconds_ago: ago,
                timeout_seconds: frontend.affinity_timeout,
            },
        )))
    }

    fn choose(&self, frontend: &FrontendValue) -> anyhow::Result<Result<Chosen, DropReason>> {
        let affinity = if frontend.flags & FRONTEND_AFFINITY_CLIENT_IP != 0 {
            self.affinity_choice(frontend)?
        } else {
            None
        };
        let (id, choice) = match affinity {
            Some(chosen) => chosen,
            None => match self.slot_choice(frontend)? {
                Some((id, _, choice)) => (id, choice),
                None => return Ok(Err(DropReason::StaleSelection)),
            },
        };
        let Some(backend) = self.maps.backend(id, self.src.ip())? else {
            return Ok(Err(DropReason::StaleSelection));
        };
        let backend_addr = SocketAddr::new(backend.addr(), backend.port());
        let recording = lb::recording(
            self.hook,
            frontend,
            backend.flags(),
            backend.addr() == self.src.ip(),
        );
        let (snat_to, snat_first_port) = match recording {
            Recording::Snat => {
                let nics = self.maps.maps.nic_addrs()?;
                let snat_to: Vec<(u32, IpAddr)> = match self.src.ip() {
                    IpAddr::V4(_) => nics.v4.iter().map(|(i, a)| (*i, IpAddr::V4(*a))).collect(),
                    IpAddr::V6(_) => nics.v6.iter().map(|(i, a)| (*i, IpAddr::V6(*a))).collect(),
                };
                if snat_to.is_empty() {
                    return Ok(Err(DropReason::NoSnatAddress));
                }
                let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
                let hash = tuple_hash(self.src, self.dst, self.proto);
                (snat_to, Some(SNAT_PORT_MIN + (hash % span) as u16))
            }
            _ => (Vec::new(), None),
        };
        Ok(Ok(Chosen {
            backend: backend_addr,
            backend_id: id,
            local: backend.flags() & BACKEND_LOCAL != 0,
            choice,
            recording: recording_name(recording),
            snat_to,
            snat_first_port,
        }))
    }
}

fn recording_name(recording: Recording) -> &'static str {
    match recording {
        Recording::Plain => "plain",
        Recording::FromNic => "fromNic",
        Recording::Hairpin => "hairpin",
        Recording::Snat => "snat",
    }
}

/// The backend id at member index `member` of a table's entries.
fn member_id(entries: &[u64], member: u32) -> Option<u32> {
    let capacity = (*entries.get(maglev_layout::HEADER as usize)? >> 32) as u32;
    if member >= capacity {
        return None;
    }
    let ids = *entries.get((maglev_layout::MEMBERS_START + member / 2) as usize)?;
    Some((ids >> ((member % 2) * 32)) as u32)
}

/// The datapath's hash of a tuple: addresses and ports as the packet
/// holds them (network order).
pub fn tuple_hash(src: SocketAddr, dst: SocketAddr, proto: u8) -> u32 {
    let (sport, dport) = (port_to_net(src.port()), port_to_net(dst.port()));
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            hash::flow_hash(addr_to_net(s), addr_to_net(d), sport, dport, proto)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            hash::flow_hash(addr6_to_net(s), addr6_to_net(d), sport, dport, proto)
        }
        _ => 0,
    }
}

impl Lookups for MapLookups<'_> {
    type Found = Entry;
    type Entry = Result<Translation, DropReason>;

    fn source_allowed(&self, frontend_id: u32) -> bool {
        let allowed = self.read(
            self.maps
                .maps
                .source_allowed(frontend_id, self.src.ip())
                .map_err(Into::into),
        );
        self.seen.borrow_mut().source_ranges = Some(allowed);
        allowed
    }

    fn established(&self) -> Established<Entry> {
        let found = self.read(self.maps.conntrack_entry(self.src, self.dst, self.proto));
        let Some(entry) = found.filter(|e| e.direction == CT_FORWARD) else {
            return Established::None;
        };
        {
            let mut seen = self.seen.borrow_mut();
            seen.conntrack = Some(entry);
            seen.conntrack_idle_seconds =
                (entry.last_seen != 0).then(|| self.now.saturating_sub(entry.last_seen));
        }
        // `select::backend_still_exists`: the id's slot holds the backend
        // the entry names.
        let backend = self.read(self.maps.backend(entry.backend_id, self.src.ip()));
        if backend.is_some_and(|b| SocketAddr::new(b.addr(), b.port()) == entry.nat) {
            Established::Live {
                entry,
                flags: entry.flags,
            }
        } else {
            self.seen.borrow_mut().backend_gone = true;
            Established::BackendGone
        }
    }

    fn keep(&self, found: Entry) -> Self::Entry {
        Ok(Translation::Existing(found))
    }

    fn open(&self, frontend: &FrontendValue) -> Result<Self::Entry, DropReason> {
        match self.choose(frontend) {
            Ok(Ok(chosen)) => Ok(Ok(Translation::New(chosen))),
            Ok(Err(reason)) => Err(reason),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                Err(DropReason::StaleSelection)
            }
        }
    }
}

/// What the datapath does with the packet.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// No frontend of the hook's scope: the packet passes untouched.
    NoFrontend,
    Translate(Translation),
    /// Answered as refused: TCP RST or ICMP (ICMPv6) port unreachable.
    Reject,
    Drop(DropReason),
    /// The socket hooks decide per socket, not per tuple.
    PerSocket {
        refused: bool,
        backends: Vec<SocketAddr>,
    },
}

/// A frontend as the trace found it.
#[derive(Clone, Debug)]
pub struct Found {
    pub key: FrontendMapKey,
    pub value: FrontendValue,
    pub label: Option<FrontendLabel>,
}

/// Everything a trace learnt.
#[derive(Debug)]
pub struct Walk {
    pub request: Request,
    /// The packet's TCP flags as traced: a SYN opens a connection (no live
    /// entry), any other segment goes on with one.
    pub opens_connection: bool,
    pub frontend: Option<Found>,
    pub seen: Seen,
    pub outcome: Outcome,
}

fn frontend_key(dst: SocketAddr, proto: u8, scope: u8) -> FrontendMapKey {
    let port = port_to_net(dst.port());
    match dst.ip() {
        IpAddr::V4(addr) => FrontendMapKey::V4(FrontendKeyOf {
            addr: addr_to_net(addr),
            port,
            proto,
            scope,
        }),
        IpAddr::V6(addr) => FrontendMapKey::V6(FrontendKeyOf {
            addr: addr6_to_net(addr),
            port,
            proto,
            scope,
        }),
    }
}

/// Traces `request` against `maps` at `now` on the datapath's clock.
pub fn walk(maps: &TraceMaps, request: Request, now: u32) -> anyhow::Result<Walk> {
    let proto = request.destination.protocol.ip_proto();
    let dst = request.destination.addr;
    // Without a port the tuple has none: port 0 stands in (the slot, and
    // so the backend, of a real flow depends on its port).
    let src = SocketAddr::new(request.source.addr, request.source.port.unwrap_or(0));
    let scope = match request.via {
        Via::Nic => SCOPE_NODE,
        Via::Pod | Via::Host => SCOPE_POD,
    };
    let key = frontend_key(dst, proto, scope);
    let frontend = match maps.maps.frontend(&key)? {
        Some(value) => Some(Found {
            key,
            value,
            label: maps.maps.frontend_label(value.id)?,
        }),
        None => None,
    };
    if request.via == Via::Host {
        return per_socket(maps, request, frontend);
    }
    let hook = match request.via {
        Via::Nic => Hook::Nic,
        _ => Hook::Pod,
    };
    let lookups = MapLookups {
        maps,
        src,
        dst,
        proto,
        hook,
        now,
        seen: RefCell::default(),
        failed: RefCell::default(),
    };
    // The next packet of the tuple: a SYN unless a live entry carries it.
    let live = maps
        .conntrack_entry(src, dst, proto)?
        .is_some_and(|e| e.direction == CT_FORWARD);
    let packet = Packet {
        proto,
        // A connection's first packet or a later one; SCTP's chunks read
        // as these flags (an INIT, a DATA).
        tcp_flags: if proto == PROTO_UDP {
            0
        } else if live {
            lb::TCP_ACK
        } else {
            TCP_SYN
        },
    };
    // Each hook's order (`hooks/pod_ingress.rs`, `hooks/nic_ingress.rs`):
    // the frontend first at a pod, conntrack first at a NIC.
    let decided = match hook {
        Hook::Pod => frontend
            .as_ref()
            .map(|f| lb::balance(&lookups, &f.value, packet)),
        Hook::Nic => match lb::carried(&lookups, packet) {
            First::Carried(entry) => Some(Ok(Decision::Translate(entry))),
            First::ByFrontend(established) => frontend
                .as_ref()
                .map(|f| lb::decide(&lookups, &f.value, packet, established)),
        },
    };
    if let Some(e) = lookups.failed.take() {
        return Err(e);
    }
    let outcome = match decided {
        None => Outcome::NoFrontend,
        Some(Ok(Decision::Translate(Ok(translation)))) => Outcome::Translate(translation),
        Some(Ok(Decision::Translate(Err(reason)))) | Some(Err(reason)) => Outcome::Drop(reason),
        Some(Ok(Decision::Reject(_))) => Outcome::Reject,
    };
    Ok(Walk {
        request,
        opens_connection: packet.opens_connection() || proto == PROTO_UDP && !live,
        frontend,
        seen: lookups.seen.into_inner(),
        outcome,
    })
}

/// The socket hooks: a frontend without backends refuses the socket;
/// otherwise each socket is sent to the backend its cookie's hash (or its
/// network namespace's affinity) picks, which no tuple tells.
fn per_socket(maps: &TraceMaps, request: Request, frontend: Option<Found>) -> anyhow::Result<Walk> {
    let outcome = match &frontend {
        None => Outcome::NoFrontend,
        Some(found) => {
            let mut backends = Vec::new();
            if let Some(entries) = maps.maps.tables().entries(found.value.id)? {
                let capacity = (entries[0] >> 32) as u32;
                for member in 0..capacity {
                    if let Some(id) = member_id(&entries, member) {
                        if let Some(b) = maps.backend(id, request.source.addr)? {
                            backends.push(SocketAddr::new(b.addr(), b.port()));
                        }
                    }
                }
            }
            backends.sort();
            backends.dedup();
            Outcome::PerSocket {
                refused: found.value.table_size == 0,
                backends,
            }
        }
    };
    Ok(Walk {
        request,
        opens_connection: true,
        frontend,
        seen: Seen::default(),
        outcome,
    })
}
