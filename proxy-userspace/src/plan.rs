//! The plan: the frontends the dataplane must serve and their backends,
//! derived from the Service models without I/O (DESIGN.md §1). It is kept
//! per Service, so a change to one Service names exactly the frontends it
//! touches; `sync` turns those into map entries.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use crate::{
    model::{Backend, Protocol, ServiceModel},
    source::{Rejection, RejectionKind, ServiceName},
};

/// What the datapath matches on: (VIP, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServiceName,
    pub port_name: String,
    /// In selection order.
    pub backends: Vec<Backend>,
    pub affinity_timeout: Option<u32>,
}

/// The desired state, kept per Service.
#[derive(Debug, Default)]
pub struct Plan {
    services: BTreeMap<ServiceName, ServiceModel>,
    /// Every Service claiming a frontend, sorted; the first by namespace/name
    /// serves it. A Vec: nearly every frontend has one claimant, and a set
    /// would allocate a whole tree node for it.
    claims: BTreeMap<FrontendKey, Vec<ServiceName>>,
}

/// What a batch of Service changes did to the plan.
#[derive(Debug, Default)]
pub struct PlanChange {
    /// Frontends whose desired content may differ now.
    pub frontends: BTreeSet<FrontendKey>,
    /// Frontends a Service claims but another Service already serves.
    pub conflicts: Vec<Rejection>,
}

/// The frontends one Service claims: each cluster IP × each port.
fn keys_of(service: &ServiceModel) -> impl Iterator<Item = FrontendKey> + '_ {
    service.cluster_ips.iter().flat_map(|addr| {
        service.ports.iter().map(|port| FrontendKey {
            addr: *addr,
            port: port.port,
            protocol: port.protocol,
        })
    })
}

impl Plan {
    /// Puts the model of Service `name` (`None`: nothing to proxy) into the
    /// plan and records the frontends it touches in `change`.
    pub fn set(
        &mut self,
        name: &ServiceName,
        service: Option<ServiceModel>,
        change: &mut PlanChange,
    ) {
        let old = match service {
            Some(service) if self.services.get(name) == Some(&service) => return,
            Some(service) => self.services.insert(name.clone(), service),
            None => self.services.remove(name),
        };
        let new_keys: BTreeSet<FrontendKey> = self
            .services
            .get(name)
            .map(|s| keys_of(s).collect())
            .unwrap_or_default();
        for key in old.iter().flat_map(keys_of) {
            if new_keys.contains(&key) {
                continue;
            }
            if let Some(claimants) = self.claims.get_mut(&key) {
                claimants.retain(|claimant| claimant != name);
                if claimants.is_empty() {
                    self.claims.remove(&key);
                }
            }
            change.frontends.insert(key);
        }
        for key in new_keys {
            let claimants = self.claims.entry(key).or_default();
            if let Err(at) = claimants.binary_search(name) {
                claimants.insert(at, name.clone());
            }
            if let Some(owner) = claimants.first() {
                for loser in claimants.iter().skip(1) {
                    change.conflicts.push(Rejection::new(
                        format!("Service {loser}"),
                        RejectionKind::FrontendConflict,
                        format!("{key} is already served by Service {owner}"),
                    ));
                }
            }
            change.frontends.insert(key);
        }
    }

    /// Removes every Service not in `keep` (after a full update).
    pub fn retain(&mut self, keep: impl Fn(&ServiceName) -> bool, change: &mut PlanChange) {
        let gone: Vec<ServiceName> = self.services.keys().filter(|n| !keep(n)).cloned().collect();
        for name in gone {
            self.set(&name, None, change);
        }
    }

    /// What `key` should do, if any Service claims it.
    pub fn frontend(&self, key: &FrontendKey) -> Option<Frontend> {
        let owner = self.claims.get(key)?.first()?;
        let service = self.services.get(owner)?;
        let port = service
            .ports
            .iter()
            .find(|p| p.port == key.port && p.protocol == key.protocol)?;
        Some(Frontend {
            service: owner.clone(),
            port_name: port.name.clone(),
            backends: port.backends.clone(),
            affinity_timeout: service.affinity_timeout,
        })
    }

    /// Every frontend, in key order.
    pub fn frontend_keys(&self) -> impl Iterator<Item = &FrontendKey> {
        self.claims.keys()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn frontend_count(&self) -> usize {
        self.claims.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServicePortModel;

    fn service(ns: &str, name: &str, ip: &str, ports: &[(u16, Protocol, &[&str])]) -> ServiceModel {
        ServiceModel {
            name: ServiceName::new(ns, name),
            cluster_ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(port, protocol, backends)| ServicePortModel {
                    name: format!("p{port}"),
                    protocol: *protocol,
                    port: *port,
                    backends: backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.parse().unwrap(),
                            local: false,
                        })
                        .collect(),
                })
                .collect(),
            affinity_timeout: None,
        }
    }

    fn key(addr: &str, port: u16, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            addr: addr.parse().unwrap(),
            port,
            protocol,
        }
    }

    fn set(plan: &mut Plan, service: ServiceModel) -> PlanChange {
        let mut change = PlanChange::default();
        let name = service.name.clone();
        plan.set(&name, Some(service), &mut change);
        change
    }

    #[test]
    fn every_port_of_every_cluster_ip_becomes_a_frontend() {
        let mut web = service(
            "shop",
            "web",
            "10.96.0.10",
            &[
                (80, Protocol::Tcp, &["10.244.1.2:8080"]),
                (53, Protocol::Udp, &[]),
            ],
        );
        web.cluster_ips.push("10.96.0.11".parse().unwrap());
        web.affinity_timeout = Some(60);
        let mut plan = Plan::default();
        let change = set(&mut plan, web);
        let keys: Vec<_> = plan.frontend_keys().copied().collect();
        let expected = [
            key("10.96.0.10", 53, Protocol::Udp),
            key("10.96.0.10", 80, Protocol::Tcp),
            key("10.96.0.11", 53, Protocol::Udp),
            key("10.96.0.11", 80, Protocol::Tcp),
        ];
        assert_eq!(keys, expected);
        assert_eq!(change.frontends.into_iter().collect::<Vec<_>>(), expected);
        let http = plan
            .frontend(&key("10.96.0.10", 80, Protocol::Tcp))
            .unwrap();
        assert_eq!(http.service, ServiceName::new("shop", "web"));
        assert_eq!(http.port_name, "p80");
        assert_eq!(http.backends[0].addr, "10.244.1.2:8080".parse().unwrap());
        assert_eq!(
            http.affinity_timeout,
            Some(60),
            "affinity reaches every frontend"
        );
        let dns = plan
            .frontend(&key("10.96.0.10", 53, Protocol::Udp))
            .unwrap();
        assert!(dns.backends.is_empty());
        assert!(change.conflicts.is_empty());
    }

    #[test]
    fn a_change_names_only_the_frontends_it_touches() {
        let mut plan = Plan::default();
        set(
            &mut plan,
            service(
                "a",
                "one",
                "10.96.0.1",
                &[(80, Protocol::Tcp, &["10.1.0.1:80"])],
            ),
        );
        set(
            &mut plan,
            service(
                "a",
                "two",
                "10.96.0.2",
                &[(80, Protocol::Tcp, &["10.1.0.2:80"])],
            ),
        );
        // Same model again: nothing to do.
        let change = set(
            &mut plan,
            service(
                "a",
                "one",
                "10.96.0.1",
                &[(80, Protocol::Tcp, &["10.1.0.1:80"])],
            ),
        );
        assert!(change.frontends.is_empty());
        // A new endpoint on one: only its frontend.
        let change = set(
            &mut plan,
            service(
                "a",
                "one",
                "10.96.0.1",
                &[(80, Protocol::Tcp, &["10.1.0.1:80", "10.1.0.3:80"])],
            ),
        );
        assert_eq!(
            change.frontends.into_iter().collect::<Vec<_>>(),
            [key("10.96.0.1", 80, Protocol::Tcp)]
        );
        // A port renumbered: the old frontend goes, the new one comes.
        let change = set(
            &mut plan,
            service("a", "one", "10.96.0.1", &[(8080, Protocol::Tcp, &[])]),
        );
        assert_eq!(
            change.frontends.into_iter().collect::<Vec<_>>(),
            [
                key("10.96.0.1", 80, Protocol::Tcp),
                key("10.96.0.1", 8080, Protocol::Tcp)
            ]
        );
        assert!(plan
            .frontend(&key("10.96.0.1", 80, Protocol::Tcp))
            .is_none());
        // Removing a Service removes its frontends and nothing else.
        let mut change = PlanChange::default();
        plan.set(&ServiceName::new("a", "one"), None, &mut change);
        assert_eq!(
            change.frontends.into_iter().collect::<Vec<_>>(),
            [key("10.96.0.1", 8080, Protocol::Tcp)]
        );
        assert_eq!((plan.service_count(), plan.frontend_count()), (1, 1));
    }

    #[test]
    fn duplicate_frontends_conflict_and_the_next_claimant_takes_over() {
        let a = service(
            "a",
            "dns",
            "10.96.0.10",
            &[(53, Protocol::Tcp, &[]), (53, Protocol::Udp, &[])],
        );
        let b = service(
            "b",
            "dns",
            "10.96.0.10",
            &[(53, Protocol::Udp, &["10.1.1.1:53"])],
        );
        let mut plan = Plan::default();
        set(&mut plan, a);
        let change = set(&mut plan, b);
        assert_eq!(
            plan.frontend_count(),
            2,
            "same port number on TCP and UDP are distinct"
        );
        let udp = key("10.96.0.10", 53, Protocol::Udp);
        assert_eq!(
            plan.frontend(&udp).unwrap().service,
            ServiceName::new("a", "dns")
        );
        assert_eq!(change.conflicts.len(), 1);
        assert_eq!(change.conflicts[0].object, "Service b/dns");
        assert_eq!(change.conflicts[0].kind, RejectionKind::FrontendConflict);
        assert!(change.conflicts[0]
            .reason
            .contains("10.96.0.10:53/UDP is already served by Service a/dns"));
        // When a/dns goes, b/dns serves the frontend it was denied.
        let mut change = PlanChange::default();
        plan.retain(|n| n.namespace == "b", &mut change);
        assert!(change.frontends.contains(&udp));
        let served = plan.frontend(&udp).unwrap();
        assert_eq!(served.service, ServiceName::new("b", "dns"));
        assert_eq!(served.backends.len(), 1);
    }

    #[test]
    fn empty_plan_serves_nothing() {
        let plan = Plan::default();
        assert_eq!(plan.frontend_keys().count(), 0);
        assert!(plan
            .frontend(&key("10.96.0.1", 80, Protocol::Tcp))
            .is_none());
    }
}
