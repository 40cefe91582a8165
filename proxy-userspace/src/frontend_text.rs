//! How a service map key reads to people: the frontend and scope columns of
//! `kxdp services`, the metrics' labels, and the agent's messages.

use std::net::SocketAddr;

use proxy_common::maps::SCOPE_NODE;

use crate::sync::entries::FrontendMapKey;

/// Where a map key's frontend is reached from, as `kxdp services` and the
/// metrics name it.
pub fn scope_label(key: &FrontendMapKey) -> &'static str {
    if key.scope() == SCOPE_NODE {
        "node"
    } else {
        "pod"
    }
}

/// `VIP:port/proto` of a map key (`[VIP]:port/proto` for IPv6), for
/// messages and tables.
pub fn frontend_text(key: &FrontendMapKey) -> String {
    let proto = crate::model::types::Protocol::from_ip_proto(key.proto())
        .map_or_else(|| key.proto().to_string(), |p| p.to_string());
    format!("{}/{proto}", SocketAddr::new(key.addr(), key.port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::types::Protocol,
        plan::{FrontendAddr, FrontendScope},
        sync::map_values::frontend_key,
    };

    fn text(addr: &str, scope: FrontendScope) -> (String, &'static str) {
        let key = frontend_key(&FrontendAddr {
            addr: addr.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scope,
        });
        (frontend_text(&key), scope_label(&key))
    }

    #[test]
    fn reads_as_address_port_and_protocol_in_either_family() {
        assert_eq!(
            text("10.96.0.10", FrontendScope::Pod),
            ("10.96.0.10:80/TCP".to_string(), "pod")
        );
        assert_eq!(
            text("fd00:10:96::a", FrontendScope::Node),
            ("[fd00:10:96::a]:80/TCP".to_string(), "node")
        );
    }
}
