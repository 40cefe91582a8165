//! Service match: is this packet addressed to a frontend we serve, and may
//! this client use it?

use aya_ebpf::maps::lpm_trie::Key;
use proxy_common::maps::{ServiceKey, ServiceValue, SourceRange, SCOPE_CLUSTER_IP, SCOPE_NODE};

use crate::{
    maps::{NIC_ADDRS, SERVICES, SOURCE_RANGES},
    parse::Ipv4Flow,
};

#[inline(always)]
fn service(flow: &Ipv4Flow, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        scope,
    };
    // SAFETY: the value is copied out at once.
    unsafe { SERVICES.get(key).copied() }
}

/// The frontend a pod's packet is addressed to (a ClusterIP, or an external
/// address short-circuited to its Service), if any.
#[inline(always)]
pub fn cluster_ip_service(flow: &Ipv4Flow) -> Option<ServiceValue> {
    service(flow, SCOPE_CLUSTER_IP)
}

/// The frontend a packet from outside is addressed to: a NodePort on a node
/// address, a LoadBalancer ingress IP or an external IP.
#[inline(always)]
pub fn node_service(flow: &Ipv4Flow) -> Option<ServiceValue> {
    service(flow, SCOPE_NODE)
}

/// Whether `loadBalancerSourceRanges` of frontend `service_id` admit the client.
#[inline(always)]
pub fn source_allowed(service_id: u32, client: u32) -> bool {
    let key = Key::new(
        64,
        SourceRange {
            service_id_be: service_id.to_be(),
            addr: client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// The address flows arriving on NIC `ifindex` are SNATed to.
#[inline(always)]
pub fn nic_address(ifindex: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { NIC_ADDRS.get(ifindex).copied() }
}
