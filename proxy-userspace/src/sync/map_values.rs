//! Map-value translation: the plan's frontends and backends as the
//! proxy-common keys and values the datapath reads.

use std::net::IpAddr;

use proxy_common::{
    addr::addr6_to_net,
    maps::{
        addr_to_net, port_to_net, BackendValueOf, FrontendKeyOf, FrontendValue, BACKEND_LOCAL,
        FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE,
        FRONTEND_SOURCE_RANGES, SCOPE_NODE, SCOPE_POD,
    },
};

use super::{
    entries::{BackendMapValue, FrontendMapKey},
    store::RangeEntry,
};
use crate::{
    maglev::{self, Member},
    model::types::Backend,
    plan::{Frontend, FrontendAddr, FrontendScope},
};

/// The map key of a frontend, in its family's map.
pub fn frontend_key(frontend: &FrontendAddr) -> FrontendMapKey {
    let port = port_to_net(frontend.port);
    let proto = frontend.protocol.ip_proto();
    let scope = match frontend.scope {
        FrontendScope::Pod => SCOPE_POD,
        FrontendScope::Node => SCOPE_NODE,
    };
    match frontend.addr {
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

/// The `SERVICE_*` bits of a frontend.
fn frontend_flags(frontend: &Frontend) -> u32 {
    [
        (
            frontend.affinity_timeout.is_some(),
            FRONTEND_AFFINITY_CLIENT_IP,
        ),
        (frontend.empty_drop, FRONTEND_EMPTY_DROP),
        (frontend.snat_remote, FRONTEND_SNAT_REMOTE),
        (frontend.source_ranges.is_some(), FRONTEND_SOURCE_RANGES),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |flags, (_, bit)| flags | bit)
}

/// The map value of a backend, in its family's array.
pub fn backend_value(backend: &Backend) -> BackendMapValue {
    let port = port_to_net(backend.addr.port());
    let flags = if backend.local { BACKEND_LOCAL } else { 0 };
    match backend.addr.ip() {
        IpAddr::V4(addr) => BackendMapValue::V4(BackendValueOf {
            addr: addr_to_net(addr),
            port,
            flags,
            _pad: 0,
        }),
        IpAddr::V6(addr) => BackendMapValue::V6(BackendValueOf {
            addr: addr6_to_net(addr),
            port,
            flags,
            _pad: 0,
        }),
    }
}

/// A backend as a Maglev table member: its address and port decide its
/// slots, the same on every node.
pub fn member(value: &BackendMapValue, id: u32) -> Member {
    Member {
        identity: maglev::identity(value.addr(), value.port()),
        id,
    }
}

/// The map value of frontend `id` whose Maglev table has `table_size` slots.
pub fn frontend_value(frontend: &Frontend, id: u32, table_size: u32) -> FrontendValue {
    FrontendValue {
        id,
        table_size,
        flags: frontend_flags(frontend),
        affinity_timeout: frontend.affinity_timeout.unwrap_or(0),
    }
}

/// The `loadBalancerSourceRanges` entries of frontend `id`.
pub fn range_entries(frontend: &Frontend, id: u32) -> impl Iterator<Item = RangeEntry> + '_ {
    frontend
        .source_ranges
        .iter()
        .flatten()
        .map(move |cidr| RangeEntry {
            frontend_id: id,
            cidr: *cidr,
        })
}
