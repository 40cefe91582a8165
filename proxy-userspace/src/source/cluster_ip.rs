//! ClusterIP allocation for manifests. `kubectl create service … -o yaml`
//! writes no `clusterIP`: the API server allocates one. The manifest source
//! plays that part so hand-fed manifests work as they would on a cluster.
//!
//! The address is derived from namespace/name (stable across restarts and
//! unrelated edits), probing forward on collision; addresses set explicitly
//! always win.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use tracing::info;

use super::objects::{IpText, Service};
use crate::cidr::Ipv4Cidr;

fn wants_allocation(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    let is_external_name = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let has_ip = spec
        .and_then(|s| s.cluster_ip.as_ref())
        .is_some_and(|ip| !matches!(ip, IpText::Other(text) if text.is_empty()));
    spec.is_some() && !is_external_name && !has_ip
}

/// FNV-1a: a fixed, dependency-free hash so allocations never change between builds.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Gives every Service without a clusterIP one from `cidr`. Returns how many
/// were allocated; when the block is full the rest are left without one (the
/// model then rejects them with a reason).
pub fn allocate(services: &mut [Arc<Service>], cidr: Ipv4Cidr) -> usize {
    let mut taken: BTreeSet<Ipv4Addr> = services
        .iter()
        .filter_map(|s| match s.spec.as_ref()?.cluster_ip.as_ref()? {
            IpText::V4(addr) => Some(*addr),
            IpText::Other(_) => None,
        })
        .collect();
    // Network address, the first host (the `kubernetes` Service by convention)
    // and the broadcast address are never handed out.
    let usable = cidr.size().saturating_sub(3);
    let mut order: Vec<usize> = (0..services.len())
        .filter(|i| wants_allocation(&services[*i]))
        .collect();
    order.sort_by_key(|i| {
        let meta = &services[*i].metadata;
        (meta.namespace.clone(), meta.name.clone())
    });
    let mut allocated = 0;
    for index in order {
        let meta = &services[index].metadata;
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        );
        let start = fnv1a(&key) % usable.max(1);
        let free = (0..usable)
            .map(|probe| cidr.nth(2 + (start + probe) % usable))
            .find(|addr| !taken.contains(addr));
        let Some(addr) = free else { break };
        taken.insert(addr);
        info!(service = %key, cluster_ip = %addr, "allocated clusterIP (the manifest has none)");
        // The manifest source holds the only reference: no copy is made.
        if let Some(spec) = Arc::make_mut(&mut services[index]).spec.as_mut() {
            spec.cluster_ip = Some(IpText::V4(addr));
        }
        allocated += 1;
    }
    allocated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::objects::ServiceSpec;

    fn service(name: &str, cluster_ip: Option<&str>, type_: Option<&str>) -> Arc<Service> {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            cluster_ip: cluster_ip.map(IpText::new),
            type_: type_.map(Into::into),
            ..Default::default()
        });
        Arc::new(s)
    }

    fn ip(s: &Service) -> Option<String> {
        Some(s.spec.as_ref()?.cluster_ip.as_ref()?.to_string())
    }

    #[test]
    fn allocates_stable_unique_addresses_inside_the_block() {
        let cidr: Ipv4Cidr = "10.96.0.0/24".parse().unwrap();
        let mut services: Vec<_> = (0..50)
            .map(|i| service(&format!("svc-{i}"), None, None))
            .collect();
        assert_eq!(allocate(&mut services, cidr), 50);
        let ips: BTreeSet<_> = services.iter().map(|s| ip(s).unwrap()).collect();
        assert_eq!(ips.len(), 50);
        for addr in &ips {
            let addr: Ipv4Addr = addr.parse().unwrap();
            assert!(cidr.contains(addr));
            assert!(![0, 1, 255].contains(&addr.octets()[3]));
        }
        // The same input gives the same answer, whatever the order.
        let mut again: Vec<_> = (0..50)
            .rev()
            .map(|i| service(&format!("svc-{i}"), None, None))
            .collect();
        allocate(&mut again, cidr);
        let by_name = |v: &[Arc<Service>], n: &str| {
            ip(v.iter()
                .find(|s| s.metadata.name.as_deref() == Some(n))
                .unwrap())
        };
        assert_eq!(by_name(&services, "svc-7"), by_name(&again, "svc-7"));
    }

    #[test]
    fn explicit_headless_and_external_name_are_left_alone() {
        let cidr: Ipv4Cidr = "10.96.0.0/30".parse().unwrap();
        let mut services = vec![
            service("explicit", Some("10.96.0.2"), None),
            service("headless", Some("None"), None),
            service("ext", None, Some("ExternalName")),
            service("new", None, None),
            service("no-room", None, None),
        ];
        // A /30 has one usable address, .2, and it is taken.
        assert_eq!(allocate(&mut services, cidr), 0);
        assert_eq!(ip(&services[0]).as_deref(), Some("10.96.0.2"));
        assert_eq!(ip(&services[1]).as_deref(), Some("None"));
        assert_eq!(ip(&services[2]), None);
        assert_eq!(ip(&services[3]), None);
    }
}
