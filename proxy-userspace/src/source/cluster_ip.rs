//! ClusterIP allocation for manifests. `kubectl create service … -o yaml`
//! writes no `clusterIP`: the API server allocates one. The manifest source
//! plays that part so hand-fed manifests work as they would on a cluster.
//!
//! The address is derived from namespace/name (stable across restarts and
//! unrelated edits), probing forward on collision; addresses set explicitly
//! always win.

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr, sync::Arc};

use tracing::info;

use super::objects::{IpText, Service, ServiceSpec};
use crate::cidr::IpCidr;

/// `--service-cidr`: one block per family, the first one's family the
/// default of a Service that names none (as the API server's
/// `--service-cluster-ip-range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCidrs {
    first: IpCidr,
    second: Option<IpCidr>,
}

impl ServiceCidrs {
    /// The block of the family `ipv4` says, if one was given.
    fn of_family(&self, ipv4: bool) -> Option<IpCidr> {
        [Some(self.first), self.second]
            .into_iter()
            .flatten()
            .find(|c| c.is_ipv4() == ipv4)
    }
}

impl FromStr for ServiceCidrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let cidrs: Vec<IpCidr> = s
            .split(',')
            .map(|c| c.trim().parse())
            .collect::<Result<_, _>>()?;
        match cidrs[..] {
            [first] => Ok(Self {
                first,
                second: None,
            }),
            [first, second] if first.is_ipv4() != second.is_ipv4() => Ok(Self {
                first,
                second: Some(second),
            }),
            _ => Err(format!(
                "'{s}' is not one CIDR, or two of different families"
            )),
        }
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first)?;
        match self.second {
            Some(second) => write!(f, ",{second}"),
            None => Ok(()),
        }
    }
}

/// The cluster IP fields of a Service, both.
fn listed_ips(spec: &ServiceSpec) -> impl Iterator<Item = &IpText> {
    spec.cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
}

fn wants_allocation(service: &Service) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    let is_external_name = spec.type_.as_deref() == Some("ExternalName");
    let has_ip = listed_ips(spec).any(|ip| !matches!(ip, IpText::Other(text) if text.is_empty()));
    !is_external_name && !has_ip
}

/// The families to allocate for, in order, as the API server picks them:
/// `ipFamilies` if given, else the first block's family; a second family
/// (the other one, unless `ipFamilies` names it) under `PreferDualStack`
/// and `RequireDualStack`, where a block of it was given. `None` for an
/// `ipFamilies` entry that names no family (the model rejects it).
fn families(spec: &ServiceSpec, cidrs: &ServiceCidrs) -> Option<Vec<bool>> {
    let named: Vec<bool> = spec
        .ip_families
        .iter()
        .flatten()
        .map(|family| match family.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let primary = named.first().copied().unwrap_or(cidrs.first.is_ipv4());
    let dual = matches!(
        spec.ip_family_policy.as_deref(),
        Some("PreferDualStack" | "RequireDualStack")
    ) || named.len() > 1;
    let mut wanted = vec![primary];
    if dual {
        wanted.push(named.get(1).copied().unwrap_or(!primary));
    }
    Some(wanted)
}

/// FNV-1a: a fixed, dependency-free hash so allocations never change between builds.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A free address of `cidr` for the Service `key`, taken.
fn take_free(cidr: IpCidr, key: &str, taken: &mut BTreeSet<IpAddr>) -> Option<IpAddr> {
    // Network address, the first host (the `kubernetes` Service by
    // convention) and the last address (IPv4's broadcast) are never
    // handed out.
    let size = 1u128.checked_shl(cidr.host_bits()).unwrap_or(u128::MAX);
    let usable = size.saturating_sub(3);
    let start = u128::from(fnv1a(key)) % usable.max(1);
    let addr = (0..usable)
        .map(|probe| cidr.nth(2 + (start + probe) % usable))
        .find(|addr| !taken.contains(addr))?;
    taken.insert(addr);
    Some(addr)
}

/// Gives every Service without a clusterIP one from `cidrs`, one per
/// family it asks for (see [`families`]). Returns how many Services got
/// one; a Service whose block is full is left without (the model then
/// rejects it with a reason).
pub fn allocate(services: &mut [Arc<Service>], cidrs: ServiceCidrs) -> usize {
    let mut taken: BTreeSet<IpAddr> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(listed_ips)
        .filter_map(IpText::addr)
        .collect();
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
        let Some(spec) = services[index].spec.as_ref() else {
            continue;
        };
        let ips: Vec<IpAddr> = families(spec, &cidrs)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ipv4| take_free(cidrs.of_family(ipv4)?, &key, &mut taken))
            .collect();
        let Some(first) = ips.first() else { continue };
        info!(service = %key, cluster_ip = %first, cluster_ips = ?ips, "allocated clusterIPs (the manifest has none)");
        // The manifest source holds the only reference: no copy is made.
        if let Some(spec) = Arc::make_mut(&mut services[index]).spec.as_mut() {
            spec.cluster_ip = Some((*first).into());
            spec.cluster_ips = Some(ips.iter().map(|ip| (*ip).into()).collect());
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

    fn cidrs(text: &str) -> ServiceCidrs {
        text.parse().unwrap()
    }

    #[test]
    fn allocates_stable_unique_addresses_inside_the_block() {
        let cidr: IpCidr = "10.96.0.0/24".parse().unwrap();
        let mut services: Vec<_> = (0..50)
            .map(|i| service(&format!("svc-{i}"), None, None))
            .collect();
        assert_eq!(allocate(&mut services, cidrs("10.96.0.0/24")), 50);
        let ips: BTreeSet<_> = services.iter().map(|s| ip(s).unwrap()).collect();
        assert_eq!(ips.len(), 50);
        for addr in &ips {
            let addr: std::net::Ipv4Addr = addr.parse().unwrap();
            assert!(cidr.contains(addr.into()));
            assert!(![0, 1, 255].contains(&addr.octets()[3]));
        }
        // The same input gives the same answer, whatever the order.
        let mut again: Vec<_> = (0..50)
            .rev()
            .map(|i| service(&format!("svc-{i}"), None, None))
            .collect();
        allocate(&mut again, cidrs("10.96.0.0/24"));
        let by_name = |v: &[Arc<Service>], n: &str| {
            ip(v.iter()
                .find(|s| s.metadata.name.as_deref() == Some(n))
                .unwrap())
        };
        assert_eq!(by_name(&services, "svc-7"), by_name(&again, "svc-7"));
    }

    #[test]
    fn explicit_headless_and_external_name_are_left_alone() {
        let mut services = vec![
            service("explicit", Some("10.96.0.2"), None),
            service("headless", Some("None"), None),
            service("ext", None, Some("ExternalName")),
            service("new", None, None),
            service("no-room", None, None),
        ];
        // A /30 has one usable address, .2, and it is taken.
        assert_eq!(allocate(&mut services, cidrs("10.96.0.0/30")), 0);
        assert_eq!(ip(&services[0]).as_deref(), Some("10.96.0.2"));
        assert_eq!(ip(&services[1]).as_deref(), Some("None"));
        assert_eq!(ip(&services[2]), None);
        assert_eq!(ip(&services[3]), None);
    }

    /// A Service with `ipFamilies` and `ipFamilyPolicy` as given.
    fn with_families(name: &str, families: &[&str], policy: Option<&str>) -> Arc<Service> {
        let mut s = service(name, None, None);
        let spec = Arc::make_mut(&mut s).spec.as_mut().unwrap();
        if !families.is_empty() {
            spec.ip_families = Some(families.iter().map(|f| (*f).into()).collect());
        }
        spec.ip_family_policy = policy.map(Into::into);
        s
    }

    fn ips(s: &Service) -> Vec<String> {
        let spec = s.spec.as_ref().unwrap();
        spec.cluster_ips
            .iter()
            .flatten()
            .map(|ip| ip.to_string())
            .collect()
    }

    #[test]
    fn service_cidrs_take_one_block_per_family() {
        assert_eq!(
            cidrs("10.96.0.0/12,fd00:10:96::/112").to_string(),
            "10.96.0.0/12,fd00:10:96::/112"
        );
        assert_eq!(cidrs("fd00:10:96::/112").to_string(), "fd00:10:96::/112");
        for bad in [
            "10.96.0.0/12,10.97.0.0/16",
            "10.96.0.0/12,fd00:10:96::/112,fd00:10:97::/112",
            "10.96.0.1/12",
            "",
        ] {
            assert!(bad.parse::<ServiceCidrs>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn families_follow_ip_families_and_the_policy_as_the_api_server_does() {
        let both = cidrs("10.96.0.0/24,fd00:10:96::/112");
        let mut services = vec![
            with_families("default-family", &[], None),
            with_families("v6", &["IPv6"], Some("SingleStack")),
            with_families("prefer", &[], Some("PreferDualStack")),
            with_families("v6-first", &["IPv6", "IPv4"], Some("RequireDualStack")),
        ];
        assert_eq!(allocate(&mut services, both), 4);
        let families = |s: &Service| -> Vec<bool> {
            ips(s)
                .iter()
                .map(|ip| ip.parse::<IpAddr>().unwrap().is_ipv4())
                .collect()
        };
        assert_eq!(families(&services[0]), [true], "the first block's family");
        assert_eq!(families(&services[1]), [false]);
        assert_eq!(families(&services[2]), [true, false]);
        assert_eq!(families(&services[3]), [false, true]);
        for s in &services {
            assert_eq!(ip(s), ips(s).first().cloned(), "clusterIP is clusterIPs[0]");
            for addr in ips(s) {
                let addr: IpAddr = addr.parse().unwrap();
                let block = both.of_family(addr.is_ipv4()).unwrap();
                assert!(block.contains(addr), "{addr} outside {block}");
            }
        }
        // Dual-stack asked for, one block given: that family only (the
        // model rejects RequireDualStack so left with a reason).
        let mut services = vec![with_families("require", &[], Some("RequireDualStack"))];
        allocate(&mut services, cidrs("fd00:10:96::/112"));
        assert_eq!(ips(&services[0]).len(), 1);
        assert!(ips(&services[0])[0].starts_with("fd00:10:96::"));
        // A Service whose clusterIPs are set is left alone.
        let mut listed = with_families("listed", &[], None);
        Arc::make_mut(&mut listed)
            .spec
            .as_mut()
            .unwrap()
            .cluster_ips = Some([IpText::new("fd00:10:96::7")].into());
        let mut services = vec![listed];
        assert_eq!(allocate(&mut services, both), 0);
    }
}
