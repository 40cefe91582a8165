//! How a service map key reads to people: the frontend and scope columns of
//! `kxdp services`, the metrics' labels, and the agent's messages.

use proxy_common::maps::{FrontendKey, SCOPE_NODE};

/// Where a map key's frontend is reached from, as `kxdp services` and the
/// metrics name it.
pub fn scope_label(key: &FrontendKey) -> &'static str {
    if key.scope == SCOPE_NODE {
        "node"
    } else {
        "pod"
    }
}

/// `VIP:port/proto` of a map key, for messages and tables.
pub fn frontend_text(key: &FrontendKey) -> String {
    let proto = crate::model::types::Protocol::from_ip_proto(key.proto)
        .map_or_else(|| key.proto.to_string(), |p| p.to_string());
    format!(
        "{}:{}/{proto}",
        proxy_common::maps::addr_from_net(key.addr),
        proxy_common::maps::port_from_net(key.port)
    )
}
