//! Service match: is this packet addressed to a frontend we serve?

use proxy_common::maps::{ServiceKey, ServiceValue, SCOPE_CLUSTER_IP};

use crate::{maps::SERVICES, parse::Ipv4Flow};

/// The ClusterIP service the packet is addressed to, if any.
#[inline(always)]
pub fn cluster_ip_service(flow: &Ipv4Flow) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        scope: SCOPE_CLUSTER_IP,
    };
    // SAFETY: the value is copied out at once.
    unsafe { SERVICES.get(key).copied() }
}
