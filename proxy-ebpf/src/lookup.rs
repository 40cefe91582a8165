//! Frontend match: is this packet addressed to a frontend we serve, and may
//! this client use it?

use aya_ebpf::maps::lpm_trie::Key;
use proxy_common::maps::{
    port_roles::{self, BACKEND, NODE_FRONTEND, POD_FRONTEND},
    FrontendKeyOf, FrontendValue, SourceRangeOf, SCOPE_NODE, SCOPE_POD,
};

use crate::{family::Family, maps::PORT_ROLES, parse::Flow};

/// Whether some frontend or backend uses `port` (network order) in `role`
/// (`proxy_common::maps::port_roles`): an array read, inlined, where a
/// lookup that cannot match would hash and probe a table.
#[inline(always)]
fn in_use(role: u32, port: u16) -> bool {
    let (word, bit) = port_roles::position(role, u16::from_be(port));
    PORT_ROLES.get(word).is_some_and(|w| w & bit != 0)
}

/// Whether a packet from `port` (network order) may be a reply to
/// translate: some backend has this port.
#[inline(always)]
pub fn from_backend_port(port: u16) -> bool {
    in_use(BACKEND, port)
}

/// The frontend of `scope` at (`addr`, `port`, `proto`), network order.
#[inline(always)]
fn frontend_at<F: Family>(addr: F, port: u16, proto: u8, scope: u8) -> Option<FrontendValue> {
    let key = FrontendKeyOf {
        addr,
        port,
        proto,
        scope,
    };
    // SAFETY: the value is copied out at once.
    unsafe { F::frontends().get(key).copied() }
}

#[inline(always)]
fn frontend<F: Family>(flow: &Flow<F>, scope: u8) -> Option<FrontendValue> {
    frontend_at(flow.dst_addr, flow.dst_port, flow.proto, scope)
}

/// The pod-scope frontend a socket asks for (the socket hooks).
#[inline(always)]
pub fn pod_frontend_at<F: Family>(addr: F, port: u16, proto: u8) -> Option<FrontendValue> {
    frontend_at(addr, port, proto, SCOPE_POD)
}

/// The frontend a pod's packet is addressed to (a ClusterIP, or an external
/// address short-circuited to its Service), if any.
#[inline(always)]
pub fn pod_frontend<F: Family>(flow: &Flow<F>) -> Option<FrontendValue> {
    frontend(flow, SCOPE_POD)
}

/// Whether some pod-scope frontend has `port` (network order): a packet to
/// another port is no frontend's, nor of a flow through one.
#[inline(always)]
pub fn pod_frontend_port(port: u16) -> bool {
    in_use(POD_FRONTEND, port)
}

/// [`pod_frontend_port`] for node-scope frontends.
#[inline(always)]
pub fn node_frontend_port(port: u16) -> bool {
    in_use(NODE_FRONTEND, port)
}

/// The frontend a packet from outside is addressed to: a NodePort on a node
/// address, a LoadBalancer ingress IP or an external IP.
#[inline(always)]
pub fn node_frontend<F: Family>(flow: &Flow<F>) -> Option<FrontendValue> {
    frontend(flow, SCOPE_NODE)
}

/// Whether `loadBalancerSourceRanges` of frontend `frontend_id` admit the client.
#[inline(always)]
pub fn source_allowed<F: Family>(frontend_id: u32, client: F) -> bool {
    let key = Key::new(
        32 + F::BITS,
        SourceRangeOf {
            frontend_id_be: frontend_id.to_be(),
            addr: client,
        },
    );
    F::source_ranges().get(&key).is_some()
}
