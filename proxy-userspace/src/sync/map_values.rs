//! Map-value translation: the plan's frontends and backends as the
//! proxy-common keys and values the datapath reads.

use std::net::IpAddr;

use proxy_common::{
    addr::addr6_to_net,
    maps::{
        addr_to_net, port_to_net, BackendValueOf, FrontendKeyOf, FrontendLabel, FrontendValue,
        BACKEND_LOCAL, FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE,
        FRONTEND_SOURCE_RANGES, LABEL_POLICY_EXTERNAL_LOCAL, LABEL_POLICY_INTERNAL_LOCAL,
        LABEL_TYPE_CLUSTER_IP, LABEL_TYPE_LOAD_BALANCER, LABEL_TYPE_NODE_PORT,
        LABEL_VIA_CLUSTER_IP, LABEL_VIA_EXTERNAL_IP, LABEL_VIA_LOAD_BALANCER_IP,
        LABEL_VIA_NODE_PORT, SCOPE_NODE, SCOPE_POD,
    },
};

use super::{
    entries::{BackendMapValue, FrontendMapKey},
    store::RangeEntry,
};
use crate::{
    maglev::{self, Member},
    model::types::{Backend, ServiceType},
    plan::{Frontend, FrontendAddr, FrontendScope, Reached},
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

/// The `FRONTEND_LABELS` value of a frontend: its Service's names, port
/// and kind, for the CLI.
pub fn frontend_label(frontend: &Frontend) -> FrontendLabel {
    let service_type = match frontend.service_type {
        ServiceType::ClusterIp => LABEL_TYPE_CLUSTER_IP,
        ServiceType::NodePort => LABEL_TYPE_NODE_PORT,
        ServiceType::LoadBalancer => LABEL_TYPE_LOAD_BALANCER,
    };
    let via = match frontend.reached {
        Reached::ClusterIp => LABEL_VIA_CLUSTER_IP,
        Reached::ExternalIp => LABEL_VIA_EXTERNAL_IP,
        Reached::LoadBalancerIp => LABEL_VIA_LOAD_BALANCER_IP,
        Reached::NodePort => LABEL_VIA_NODE_PORT,
    };
    let policies = [
        (frontend.external_policy_local, LABEL_POLICY_EXTERNAL_LOCAL),
        (frontend.internal_policy_local, LABEL_POLICY_INTERNAL_LOCAL),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |bits, (_, bit)| bits | bit);
    FrontendLabel {
        namespace: padded(&frontend.service.namespace),
        name: padded(&frontend.service.name),
        port_name: padded(&frontend.port_name),
        service_port: frontend.service_port,
        node_port: frontend.node_port.unwrap_or(0),
        terminating: u16::try_from(frontend.draining.len()).unwrap_or(u16::MAX),
        service_type,
        via,
        policies,
        _pad: [0; 3],
    }
}

/// `text` NUL-padded to `N` bytes, cut on a character boundary if longer
/// (Kubernetes' names fit; a longer one from a manifest still shows).
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
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
