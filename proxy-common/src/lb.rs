//! The load-balancing rules every hook applies to a packet addressed to a
//! frontend, written once: conntrack first (an established flow carries
//! on), then, by the frontend, source ranges, the verdict for a frontend
//! without backends, and a new flow otherwise. Pure: what the
//! rules consult (maps, the chosen hook's way of recording a flow) comes in
//! through [`Lookups`], one implementation per hook and address family, so
//! the rules are unit-tested here on the host and the eBPF programs inline
//! them (docs/ARCHITECTURE.md, "The load-balancing core").

use crate::maps::{
    DropReason, FrontendValue, BACKEND_LOCAL, CT_CLOSING, CT_SNAT, FRONTEND_EMPTY_DROP,
    FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES, PROTO_UDP,
};

/// TCP flags the rules read.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The facts of a packet the rules read, whatever its address family.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub proto: u8,
    /// TCP flags byte; 0 for other protocols.
    pub tcp_flags: u8,
}

impl Packet {
    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// The forward conntrack entry found for a packet's tuple.
pub enum Established<E> {
    None,
    /// Its backend still exists; `flags` are the entry's `CT_*` bits.
    Live {
        entry: E,
        flags: u8,
    },
    /// The backend it names has left every Service (the agent deleted it).
    BackendGone,
}

/// What the rules consult, per hook and address family.
pub trait Lookups {
    /// An existing conntrack entry, where it is kept.
    type Found;
    /// A conntrack entry as the hook translates with it.
    type Entry;
    /// Whether the frontend's `loadBalancerSourceRanges` admit the client.
    fn source_allowed(&self, frontend_id: u32) -> bool;
    /// The forward entry of the packet's tuple.
    fn established(&self) -> Established<Self::Found>;
    /// An entry carries this packet on (and may record its liveness).
    fn keep(&self, found: Self::Found) -> Self::Entry;
    /// Chooses a backend for a new flow and records the flow (both
    /// conntrack entries, reply first), returning its forward entry.
    fn open(&self, frontend: &FrontendValue) -> Result<Self::Entry, DropReason>;
}

/// What to do with a packet to a frontend.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<E> {
    /// Translate it with this forward entry.
    Translate(E),
    /// Answer it as refused (TCP RST, ICMP port unreachable), counted
    /// for the frontend with this id.
    Reject(u32),
}

/// The first rule, before any frontend is looked up.
pub enum First<E, F> {
    /// The packet's flow carries on with this forward entry.
    Carried(E),
    /// Look the packet's frontend up and [`decide`], with what conntrack
    /// found.
    ByFrontend(Established<F>),
}

/// Conntrack first: a packet whose forward entry is live carries on with
/// it, unless it opens a connection the entry does not know to be open.
/// Only SNATed entries know (every packet records a FIN or RST in them,
/// and keeping the entry keeps the flow's SNAT port across a retransmitted
/// SYN); any other entry may be a finished connection's whose tuple the
/// client reuses, so a SYN is balanced as the new connection it is.
///
/// As with kube-proxy's conntrack, the rules of the frontend (its source
/// ranges, its very existence) apply to a connection's first packet: an
/// established flow costs no frontend lookup, and goes on while its backend
/// exists.
#[inline(always)]
pub fn carried<L: Lookups>(lookups: &L, packet: Packet) -> First<L::Entry, L::Found> {
    match lookups.established() {
        Established::Live { entry, flags }
            if !packet.opens_connection() || flags & (CT_SNAT | CT_CLOSING) == CT_SNAT =>
        {
            First::Carried(lookups.keep(entry))
        }
        other => First::ByFrontend(other),
    }
}

/// The rules for `packet`, addressed to `frontend`, which [`carried`] did
/// not carry (`established`: what it found); `Err` drops it for the reason
/// given.
///
/// Once the backend of its entry is gone, a datagram or a SYN is balanced
/// afresh and any other TCP segment is answered with a RST, rather than
/// hang or move mid-stream.
#[inline(always)]
pub fn decide<L: Lookups>(
    lookups: &L,
    frontend: &FrontendValue,
    packet: Packet,
    established: Established<L::Found>,
) -> Result<Decision<L::Entry>, DropReason> {
    if frontend.flags & FRONTEND_SOURCE_RANGES != 0 && !lookups.source_allowed(frontend.id) {
        return Err(DropReason::SourceRange);
    }
    if let Established::BackendGone = established {
        if packet.proto != PROTO_UDP && !packet.opens_connection() {
            return Ok(Decision::Reject(frontend.id));
        }
    }
    if frontend.table_size == 0 {
        // A traffic policy Local without a local endpoint drops, as
        // kube-proxy does; any other frontend without endpoints refuses.
        if frontend.flags & FRONTEND_EMPTY_DROP != 0 {
            return Err(DropReason::NoLocalBackend);
        }
        return Ok(Decision::Reject(frontend.id));
    }
    lookups.open(frontend).map(Decision::Translate)
}

/// Both rules for a packet whose frontend is already known: [`carried`],
/// then [`decide`] by it.
#[inline(always)]
pub fn balance<L: Lookups>(
    lookups: &L,
    frontend: &FrontendValue,
    packet: Packet,
) -> Result<Decision<L::Entry>, DropReason> {
    match carried(lookups, packet) {
        First::Carried(entry) => Ok(Decision::Translate(entry)),
        First::ByFrontend(established) => decide(lookups, frontend, packet, established),
    }
}

/// The hook a packet is seen at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc on a pod interface: a pod's packet to a ClusterIP (or an
    /// external address short-circuited to its Service).
    Pod,
    /// XDP on a NIC: a packet from outside to a node frontend.
    Nic,
}

/// How a new flow is recorded and translated, beyond DNAT to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recording {
    /// DNAT only; replies are reverse-NATed where they enter the client pod.
    Plain,
    /// DNAT only; the local backend's replies leave its pod with the
    /// frontend as source, straight out of the NIC (`CT_FROM_NIC`).
    FromNic,
    /// The pod chose itself: the VIP stands in as the source (`CT_HAIRPIN`).
    Hairpin,
    /// A remote backend behind `externalTrafficPolicy: Cluster`: SNATed to
    /// this node so its replies come back here (`CT_SNAT`).
    Snat,
}

/// How a new flow from `hook` to a backend with `backend_flags`
/// (`BACKEND_*`) is recorded; `backend_is_client`: the backend's address is
/// the packet's source.
#[inline(always)]
pub fn recording(
    hook: Hook,
    frontend: &FrontendValue,
    backend_flags: u8,
    backend_is_client: bool,
) -> Recording {
    match hook {
        Hook::Pod if backend_is_client => Recording::Hairpin,
        Hook::Pod => Recording::Plain,
        Hook::Nic
            if backend_flags & BACKEND_LOCAL == 0 && frontend.flags & FRONTEND_SNAT_REMOTE != 0 =>
        {
            Recording::Snat
        }
        Hook::Nic => Recording::FromNic,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::cell::{Cell, RefCell};
    use std::{vec, vec::Vec};

    use super::*;
    use crate::maps::{FRONTEND_AFFINITY_CLIENT_IP, PROTO_TCP};

    /// Entries are numbers: 1 the existing one, 2 a new one.
    struct Fake {
        allowed: bool,
        established: Cell<Option<Established<u32>>>,
        calls: RefCell<Vec<&'static str>>,
    }

    impl Fake {
        fn new(established: Established<u32>) -> Self {
            Fake {
                allowed: true,
                established: Cell::new(Some(established)),
                calls: RefCell::new(Vec::new()),
            }
        }
    }

    impl Lookups for Fake {
        type Found = u32;
        type Entry = u32;
        fn source_allowed(&self, _: u32) -> bool {
            self.calls.borrow_mut().push("source_allowed");
            self.allowed
        }
        fn established(&self) -> Established<u32> {
            self.calls.borrow_mut().push("established");
            self.established.take().unwrap()
        }
        fn keep(&self, entry: u32) -> u32 {
            self.calls.borrow_mut().push("keep");
            entry
        }
        fn open(&self, _: &FrontendValue) -> Result<u32, DropReason> {
            self.calls.borrow_mut().push("open");
            Ok(2)
        }
    }

    fn frontend(table_size: u32, flags: u32) -> FrontendValue {
        FrontendValue {
            id: 7,
            table_size,
            flags,
            affinity_timeout: 0,
        }
    }

    const SYN: Packet = Packet {
        proto: PROTO_TCP,
        tcp_flags: TCP_SYN,
    };
    const ACK: Packet = Packet {
        proto: PROTO_TCP,
        tcp_flags: TCP_ACK,
    };
    const SYN_ACK: Packet = Packet {
        proto: PROTO_TCP,
        tcp_flags: TCP_SYN | TCP_ACK,
    };
    const DATAGRAM: Packet = Packet {
        proto: PROTO_UDP,
        tcp_flags: 0,
    };

    fn live(flags: u8) -> Established<u32> {
        Established::Live { entry: 1, flags }
    }

    #[test]
    fn source_ranges_are_checked_for_a_new_flow_and_only_when_the_frontend_has_them() {
        let mut fake = Fake::new(Established::None);
        fake.allowed = false;
        let gated = frontend(4, FRONTEND_SOURCE_RANGES);
        assert_eq!(balance(&fake, &gated, SYN), Err(DropReason::SourceRange));
        assert_eq!(*fake.calls.borrow(), vec!["established", "source_allowed"]);
        let open = Fake::new(Established::None);
        assert_eq!(
            balance(&open, &frontend(4, 0), SYN),
            Ok(Decision::Translate(2))
        );
        assert!(!open.calls.borrow().contains(&"source_allowed"));
    }

    #[test]
    fn an_established_flow_keeps_its_entry_without_its_frontend() {
        for packet in [ACK, SYN_ACK, DATAGRAM] {
            for flags in [0, CT_SNAT, CT_SNAT | CT_CLOSING] {
                let fake = Fake::new(live(flags));
                assert!(matches!(carried(&fake, packet), First::Carried(1)));
                assert_eq!(*fake.calls.borrow(), vec!["established", "keep"]);
            }
        }
        // Even once the frontend's source ranges leave the client out.
        let mut fake = Fake::new(live(0));
        fake.allowed = false;
        assert_eq!(
            balance(&fake, &frontend(4, FRONTEND_SOURCE_RANGES), ACK),
            Ok(Decision::Translate(1))
        );
    }

    #[test]
    fn a_syn_reuses_only_an_entry_known_to_be_open() {
        let snat_open = Fake::new(live(CT_SNAT));
        assert_eq!(
            balance(&snat_open, &frontend(4, 0), SYN),
            Ok(Decision::Translate(1))
        );
        for flags in [0, CT_SNAT | CT_CLOSING, crate::maps::CT_FROM_NIC] {
            let fake = Fake::new(live(flags));
            assert_eq!(
                balance(&fake, &frontend(4, 0), SYN),
                Ok(Decision::Translate(2)),
                "flags {flags}"
            );
            assert_eq!(*fake.calls.borrow(), vec!["established", "open"]);
        }
    }

    #[test]
    fn a_flow_whose_backend_is_gone_is_reset_or_balanced_afresh() {
        let fake = Fake::new(Established::BackendGone);
        assert_eq!(
            balance(&fake, &frontend(4, 0), ACK),
            Ok(Decision::Reject(7))
        );
        for packet in [SYN, DATAGRAM] {
            let fake = Fake::new(Established::BackendGone);
            assert_eq!(
                balance(&fake, &frontend(4, 0), packet),
                Ok(Decision::Translate(2))
            );
        }
    }

    #[test]
    fn a_frontend_without_backends_rejects_or_drops_by_policy() {
        for packet in [SYN, ACK, DATAGRAM] {
            let fake = Fake::new(Established::None);
            assert_eq!(
                balance(&fake, &frontend(0, 0), packet),
                Ok(Decision::Reject(7))
            );
            let fake = Fake::new(Established::None);
            assert_eq!(
                balance(
                    &fake,
                    &frontend(0, FRONTEND_EMPTY_DROP | FRONTEND_AFFINITY_CLIENT_IP),
                    packet
                ),
                Err(DropReason::NoLocalBackend)
            );
            assert!(!fake.calls.borrow().contains(&"open"));
        }
        // An established flow goes on while its backend exists.
        let fake = Fake::new(live(0));
        assert_eq!(
            balance(&fake, &frontend(0, 0), ACK),
            Ok(Decision::Translate(1))
        );
    }

    #[test]
    fn a_new_flow_is_opened() {
        let fake = Fake::new(Established::None);
        assert_eq!(
            balance(&fake, &frontend(4, FRONTEND_SOURCE_RANGES), SYN),
            Ok(Decision::Translate(2))
        );
        assert_eq!(
            *fake.calls.borrow(),
            vec!["established", "source_allowed", "open"]
        );
    }

    #[test]
    fn a_new_flow_is_recorded_by_hook_backend_and_policy() {
        use crate::maps::{BACKEND_LOCAL, FRONTEND_SNAT_REMOTE};
        let cluster = frontend(4, FRONTEND_SNAT_REMOTE);
        let local = frontend(4, 0);
        let cases = [
            (Hook::Pod, &cluster, 0, false, Recording::Plain),
            (Hook::Pod, &cluster, BACKEND_LOCAL, false, Recording::Plain),
            (Hook::Pod, &local, BACKEND_LOCAL, true, Recording::Hairpin),
            (Hook::Nic, &cluster, 0, false, Recording::Snat),
            (
                Hook::Nic,
                &cluster,
                BACKEND_LOCAL,
                false,
                Recording::FromNic,
            ),
            (Hook::Nic, &local, 0, false, Recording::FromNic),
            (Hook::Nic, &local, BACKEND_LOCAL, false, Recording::FromNic),
        ];
        for (hook, frontend, backend_flags, is_client, want) in cases {
            assert_eq!(
                recording(hook, frontend, backend_flags, is_client),
                want,
                "{hook:?} {frontend:?} {backend_flags}"
            );
        }
    }
}
