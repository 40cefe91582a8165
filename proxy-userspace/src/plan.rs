//! The plan: a pure function from the model to the frontends the dataplane
//! must serve and their backends. No I/O, no ids: `sync` turns it into map
//! entries.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::{
    model::{Model, Protocol},
    source::Rejection,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// "namespace/name" of the Service, and the port's name.
    pub service: String,
    pub port_name: String,
    /// In selection order.
    pub backends: Vec<SocketAddrV4>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Frontends claimed by two Services: the first by namespace/name keeps it.
    pub conflicts: Vec<Rejection>,
}

pub fn plan(model: &Model) -> Plan {
    let mut plan = Plan::default();
    for service in &model.services {
        let qualified = format!("{}/{}", service.namespace, service.name);
        for addr in &service.cluster_ips {
            for port in &service.ports {
                let key = FrontendKey {
                    addr: *addr,
                    port: port.port,
                    protocol: port.protocol,
                };
                if let Some(owner) = plan.frontends.get(&key) {
                    plan.conflicts.push(Rejection::new(
                        format!("Service {qualified}"),
                        crate::source::RejectionKind::FrontendConflict,
                        format!("{key} is already served by Service {}", owner.service),
                    ));
                    continue;
                }
                plan.frontends.insert(
                    key,
                    Frontend {
                        service: qualified.clone(),
                        port_name: port.name.clone(),
                        backends: port.backends.clone(),
                    },
                );
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceModel, ServicePortModel};

    fn service(ns: &str, name: &str, ip: &str, ports: &[(u16, Protocol, &[&str])]) -> ServiceModel {
        ServiceModel {
            namespace: ns.into(),
            name: name.into(),
            cluster_ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(port, protocol, backends)| ServicePortModel {
                    name: format!("p{port}"),
                    protocol: *protocol,
                    port: *port,
                    backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
                })
                .collect(),
        }
    }

    fn key(addr: &str, port: u16, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            addr: addr.parse().unwrap(),
            port,
            protocol,
        }
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
        let plan = plan(&Model {
            services: vec![web],
            rejections: vec![],
        });
        let keys: Vec<_> = plan.frontends.keys().copied().collect();
        assert_eq!(
            keys,
            [
                key("10.96.0.10", 53, Protocol::Udp),
                key("10.96.0.10", 80, Protocol::Tcp),
                key("10.96.0.11", 53, Protocol::Udp),
                key("10.96.0.11", 80, Protocol::Tcp),
            ]
        );
        let http = &plan.frontends[&key("10.96.0.10", 80, Protocol::Tcp)];
        assert_eq!(http.service, "shop/web");
        assert_eq!(http.port_name, "p80");
        assert_eq!(http.backends, ["10.244.1.2:8080".parse().unwrap()]);
        assert!(plan.frontends[&key("10.96.0.10", 53, Protocol::Udp)]
            .backends
            .is_empty());
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn same_port_number_on_tcp_and_udp_are_distinct_and_duplicates_conflict() {
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
        let plan = plan(&Model {
            services: vec![a, b],
            rejections: vec![],
        });
        assert_eq!(plan.frontends.len(), 2);
        assert_eq!(
            plan.frontends[&key("10.96.0.10", 53, Protocol::Udp)].service,
            "a/dns"
        );
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].object, "Service b/dns");
        assert!(plan.conflicts[0]
            .reason
            .contains("10.96.0.10:53/UDP is already served by Service a/dns"));
    }

    #[test]
    fn empty_model_plans_nothing() {
        assert_eq!(plan(&Model::default()), Plan::default());
    }
}
