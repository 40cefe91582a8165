//! The load-balancing core's datapath side: what `proxy_common::lb`'s
//! rules consult for a packet of either family (source ranges, the forward
//! conntrack entry, backend selection) and how a new flow is recorded for
//! the hook it was seen at. Every packet hook asks [`balance`].

use proxy_common::{
    lb::{self, Decision, Established, First, Hook, Lookups, Recording},
    maps::{CtEntryOf, DropReason, FrontendValue, CT_FORWARD, CT_FROM_NIC, CT_HAIRPIN, CT_SNAT},
};

use crate::{
    conntrack::{self, PairSlot},
    family::Family,
    lookup, monitor,
    parse::Flow,
    select, snat,
};

struct FlowLookups<'a, F> {
    flow: &'a Flow<F>,
    hook: Hook,
    /// NIC the packet came in on (XDP), for the address a SNAT uses.
    ingress_ifindex: u32,
}

impl<'a, F: Family> FlowLookups<'a, F> {
    #[inline(always)]
    fn new(flow: &'a Flow<F>, hook: Hook, ingress_ifindex: u32) -> Self {
        FlowLookups {
            flow,
            hook,
            ingress_ifindex,
        }
    }
}

impl<F: Family> Lookups for FlowLookups<'_, F> {
    type Found = *mut CtEntryOf<F>;
    type Entry = CtEntryOf<F>;

    #[inline(always)]
    fn source_allowed(&self, frontend_id: u32) -> bool {
        lookup::source_allowed(frontend_id, self.flow.src_addr)
    }

    #[inline(always)]
    fn established(&self) -> Established<*mut CtEntryOf<F>> {
        let Some(found) = conntrack::entry_mut(self.flow, CT_FORWARD) else {
            return Established::None;
        };
        // SAFETY: a map value pointer, valid for this program run.
        let entry = unsafe { &*found };
        if select::backend_still_exists(entry) {
            Established::Live {
                entry: found,
                flags: entry.flags,
            }
        } else {
            Established::BackendGone
        }
    }

    #[inline(always)]
    fn keep(&self, found: *mut CtEntryOf<F>) -> CtEntryOf<F> {
        // SAFETY: a map value pointer, valid for this program run.
        let entry = unsafe { *found };
        if entry.flags & CT_SNAT != 0 {
            snat::touch(found, self.flow);
        }
        entry
    }

    #[inline(always)]
    fn open(&self, frontend: &FrontendValue) -> Result<CtEntryOf<F>, DropReason> {
        let flow = self.flow;
        let chosen = select::select_backend(frontend, flow)?;
        let backend = &chosen.backend;
        let id = frontend.id;
        let mut on_stack = PairSlot::uninit();
        let slot = match self.hook {
            // The NIC program's IPv6 frame has no room left for the pair.
            Hook::Nic => conntrack::scratch_slot()?,
            Hook::Pod => &mut on_stack,
        };
        let entry = match lb::recording(
            self.hook,
            frontend,
            backend.flags,
            backend.addr == flow.src_addr,
        ) {
            Recording::Plain => {
                conntrack::record(flow, conntrack::pair(slot, flow, id, &chosen, 0, None, 0))
            }
            Recording::FromNic => conntrack::record(
                flow,
                conntrack::pair(slot, flow, id, &chosen, CT_FROM_NIC, None, 0),
            ),
            Recording::Hairpin => {
                // The VIP with the client's port stands in as the source.
                let stand_in = (flow.dst_addr, flow.src_port);
                let pair = conntrack::pair(slot, flow, id, &chosen, CT_HAIRPIN, Some(stand_in), 0);
                conntrack::record(flow, pair)
            }
            Recording::Snat => {
                let node_addr =
                    F::nic_address(self.ingress_ifindex).ok_or(DropReason::NoSnatAddress)?;
                snat::create(slot, flow, id, &chosen, &node_addr)
            }
        }?;
        monitor::new_flow(flow, id, (entry.nat_addr, entry.nat_port));
        Ok(entry)
    }
}

/// The core's decision for `flow`, addressed to `frontend`, seen at `hook`
/// (`ingress_ifindex`: the NIC, for XDP): its forward entry, then the
/// frontend's rules. For hooks where most packets on a frontend's port are
/// for no frontend (pod interfaces: with socket-level balancing, pods talk
/// to backends directly), the frontend is looked up first.
#[inline(always)]
pub fn balance<F: Family>(
    flow: &Flow<F>,
    frontend: &FrontendValue,
    hook: Hook,
    ingress_ifindex: u32,
) -> Result<Decision<CtEntryOf<F>>, DropReason> {
    let lookups = FlowLookups::new(flow, hook, ingress_ifindex);
    reported(
        flow,
        frontend.id,
        lb::balance(&lookups, frontend, flow.packet()),
    )
}

/// Tells a listening monitor what the core refused or dropped.
#[inline(always)]
fn reported<F: Family, E>(
    flow: &Flow<F>,
    frontend_id: u32,
    decided: Result<Decision<E>, DropReason>,
) -> Result<Decision<E>, DropReason> {
    match &decided {
        Err(reason) => monitor::dropped(flow, frontend_id, *reason),
        Ok(Decision::Reject(_)) => monitor::rejected(flow, frontend_id),
        Ok(Decision::Translate(_)) => {}
    }
    decided
}

/// [`balance`] with conntrack first, for hooks where nearly every packet on
/// a frontend's port is for one (NICs): a live forward entry carries its
/// flow without the frontend lookup; otherwise `find` gives the frontend,
/// if any (`None`: the packet is not ours). Every forward entry names its
/// frontend, for the counters.
#[inline(always)]
pub fn balance_conntrack_first<F: Family>(
    flow: &Flow<F>,
    hook: Hook,
    ingress_ifindex: u32,
    find: impl FnOnce(&Flow<F>) -> Option<FrontendValue>,
) -> Result<Option<Decision<CtEntryOf<F>>>, DropReason> {
    let lookups = FlowLookups::new(flow, hook, ingress_ifindex);
    let packet = flow.packet();
    match lb::carried(&lookups, packet) {
        First::Carried(entry) => Ok(Some(Decision::Translate(entry))),
        First::ByFrontend(established) => match find(flow) {
            Some(frontend) => {
                let decided = lb::decide(&lookups, &frontend, packet, established);
                reported(flow, frontend.id, decided).map(Some)
            }
            None => Ok(None),
        },
    }
}
