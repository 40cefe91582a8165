//! The plan: the frontends the dataplane must serve and their backends,
//! derived from the Service models without I/O (docs/ARCHITECTURE.md, "Data flow"). It is kept
//! per Service, so a change to one Service names exactly the frontends it
//! touches; `sync` turns those into map entries.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
};

use proxy_common::sizes;

use crate::{
    cidr::IpCidr,
    model::types::{Backend, ExternalAddr, Protocol, ServiceModel, ServicePortModel, ServiceType},
    source::{Rejection, RejectionKind, ServiceName},
};

/// Where a frontend is reached from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendScope {
    /// From pods (tc on pod interfaces): cluster IPs, and external addresses
    /// short-circuited to the Service as kube-proxy does.
    Pod,
    /// From outside through a NIC (XDP): node ports, external addresses.
    Node,
}

/// What the datapath matches on: (address, port, protocol, scope), in
/// the frontends map of the address's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: FrontendScope,
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = SocketAddr::new(self.addr, self.port);
        write!(f, "{socket}/{}", self.protocol)?;
        match self.scope {
            FrontendScope::Pod => Ok(()),
            FrontendScope::Node => f.write_str(" (node)"),
        }
    }
}

/// The node facts node frontends depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Addresses NodePorts answer on (already filtered by
    /// `--nodeport-addresses`), of both families.
    pub addresses: Vec<IpAddr>,
    /// Node ports outside it are refused, as the API server would have.
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for NodeFacts {
    /// No address yet, and Kubernetes' default range.
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            node_port_range: 30_000..=32_767,
        }
    }
}

/// Which of its Service's addresses a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NodePort,
}

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServiceName,
    pub port_name: String,
    /// The Service's port (a node port frontend listens on its node port).
    pub service_port: u16,
    /// The port's node port, if it has one in the range.
    pub node_port: Option<u16>,
    pub service_type: ServiceType,
    pub reached: Reached,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// In selection order, of the frontend's family.
    pub backends: Vec<Backend>,
    /// Kept for the connections they have, chosen for no new one; of the
    /// frontend's family.
    pub draining: Vec<Backend>,
    pub affinity_timeout: Option<u32>,
    /// With no backend, drop silently instead of rejecting: a traffic policy
    /// `Local` on a Service whose endpoints all run elsewhere.
    pub empty_drop: bool,
    /// SNAT flows to backends on other nodes (`externalTrafficPolicy:
    /// Cluster` on a node frontend), so replies come back through this node.
    pub snat_remote: bool,
    /// Only these clients may use the frontend (`loadBalancerSourceRanges`
    /// of its family on a LoadBalancer ingress IP; empty: nobody); `None`:
    /// everyone.
    pub source_ranges: Option<Vec<IpCidr>>,
}

/// A `healthCheckNodePort` the agent must answer on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheck {
    pub port: u16,
    pub service: ServiceName,
    /// Distinct endpoints of the Service on this node.
    pub local_endpoints: usize,
}

/// What the maps have room for: frontends and distinct backends over both
/// families (each is one id space).
#[derive(Clone, Copy, Debug)]
pub struct Room {
    pub frontends: usize,
    pub backends: usize,
}

impl Default for Room {
    fn default() -> Self {
        Self {
            frontends: sizes::MAX_FRONTENDS as usize,
            backends: sizes::MAX_BACKENDS as usize,
        }
    }
}

/// The desired state, kept per Service. A Service is in it whole or not at
/// all: one whose frontends or backends would not fit in the maps' [`Room`]
/// waits, reported, and its earlier version (if any) stays.
#[derive(Debug, Default)]
pub struct Plan {
    /// Boxed: a tree node holds eleven entries, and a model inline made
    /// each node 2.5 KiB, most of it in nodes' spare room.
    services: BTreeMap<ServiceName, Box<ServiceModel>>,
    room: Room,
    /// How many admitted Services name each backend (serving or draining).
    backend_users: HashMap<SocketAddr, u32>,
    /// Services (or new versions of them) that did not fit, newest version.
    waiting: BTreeMap<ServiceName, Box<ServiceModel>>,
    /// Room was freed since waiting Services were last tried.
    room_freed: bool,
    /// Every Service claiming a frontend, sorted; the first by namespace/name
    /// serves it. A Vec: nearly every frontend has one claimant, and a set
    /// would allocate a whole tree node for it.
    claims: BTreeMap<FrontendAddr, Vec<ServiceName>>,
    node: NodeFacts,
}

/// What a batch of Service changes did to the plan.
#[derive(Debug, Default)]
pub struct PlanChange {
    /// Frontends whose desired content may differ now.
    pub frontends: BTreeSet<FrontendAddr>,
    /// Frontends a Service claims but another Service already serves, and
    /// node ports outside the node port range.
    pub rejections: Vec<Rejection>,
}

/// How a frontend reaches its Service.
enum Via<'a> {
    ClusterIp,
    /// An external address, from a pod: kube-proxy short-circuits it to the
    /// Service with every endpoint.
    ExternalFromPod(&'a ExternalAddr),
    External(&'a ExternalAddr),
    NodePort,
    /// A node address and node port, from a pod: every endpoint, as for
    /// external addresses.
    NodePortFromPod,
}

fn pod_key(addr: IpAddr, port: u16, protocol: Protocol) -> FrontendAddr {
    FrontendAddr {
        addr,
        port,
        protocol,
        scope: FrontendScope::Pod,
    }
}

fn node_key(addr: IpAddr, port: u16, protocol: Protocol) -> FrontendAddr {
    FrontendAddr {
        addr,
        port,
        protocol,
        scope: FrontendScope::Node,
    }
}

/// The node port of `port` if it lies in the range.
fn node_port(port: &ServicePortModel, node: &NodeFacts) -> Option<u16> {
    port.node_port.filter(|p| node.node_port_range.contains(p))
}

/// The frontends one Service claims: each cluster IP and external address ×
/// each port, and each node address × each node port, from pods and (but
/// the cluster IPs) from outside. Only in the families it has a cluster IP
/// of, as kube-proxy's proxier of each family sees only those Services (an
/// IPv4-only Service's IPv6 external IPs and IPv6 node addresses are left
/// out).
fn keys_of(service: &ServiceModel, node: &NodeFacts) -> BTreeSet<FrontendAddr> {
    let served = |addr: &IpAddr| {
        service
            .cluster_ips
            .iter()
            .any(|ip| ip.is_ipv4() == addr.is_ipv4())
    };
    let mut keys = BTreeSet::new();
    for port in &service.ports {
        let (number, protocol) = (port.port, port.protocol);
        for addr in &service.cluster_ips {
            keys.insert(pod_key(*addr, number, protocol));
        }
        for external in service.external_addrs.iter().filter(|e| served(&e.addr)) {
            keys.insert(pod_key(external.addr, number, protocol));
            keys.insert(node_key(external.addr, number, protocol));
        }
        if let Some(node_port) = node_port(port, node) {
            for addr in node.addresses.iter().filter(|a| served(a)) {
                keys.insert(pod_key(*addr, node_port, protocol));
                keys.insert(node_key(*addr, node_port, protocol));
            }
        }
    }
    keys
}

/// What a Service's new version does to the entries of one kind the maps
/// hold: `held` now, `added` by it, `freed` from its old version.
struct Growth {
    held: usize,
    added: usize,
    freed: usize,
}

impl Growth {
    /// Why it does not fit in `room`, if it takes the count past it (or
    /// further past): its `own` entries of `what`.
    fn past(&self, room: usize, own: usize, what: &str) -> Option<String> {
        let total = self.held + self.added - self.freed;
        (total > room && self.added > self.freed).then(|| {
            format!("no room: its {own} {what} would make {total}, past the {room} the maps hold")
        })
    }
}

/// The frontends and backends one version of a Service wants.
#[derive(Default)]
struct Wanted {
    keys: BTreeSet<FrontendAddr>,
    backends: BTreeSet<SocketAddr>,
}

impl Wanted {
    fn of(service: &ServiceModel, node: &NodeFacts) -> Self {
        Self {
            keys: keys_of(service, node),
            backends: backends_of(service),
        }
    }
}

/// Every backend `service` names, serving or draining, of both families.
fn backends_of(service: &ServiceModel) -> BTreeSet<SocketAddr> {
    service
        .ports
        .iter()
        .flat_map(|p| p.backends.iter().chain(&p.draining))
        .map(|b| b.addr)
        .collect()
}

/// One rejection per node port outside the range; the other ports serve.
fn node_port_rejections(service: &ServiceModel, node: &NodeFacts) -> Vec<Rejection> {
    let range = &node.node_port_range;
    service
        .ports
        .iter()
        .filter_map(|port| {
            let node_port = port.node_port.filter(|p| !range.contains(p))?;
            Some(Rejection::new(
                format!("Service {}", service.name),
                RejectionKind::InvalidPort,
                format!(
                    "port {} nodePort {node_port} is outside the node port range {}-{}",
                    if port.name.is_empty() {
                        port.port.to_string()
                    } else {
                        port.name.clone()
                    },
                    range.start(),
                    range.end()
                ),
            ))
        })
        .collect()
}

/// The port of `service` behind `key` and how the key reaches it.
fn route<'a>(
    service: &'a ServiceModel,
    key: &FrontendAddr,
    node: &NodeFacts,
) -> Option<(&'a ServicePortModel, Via<'a>)> {
    let external = service.external_addrs.iter().find(|e| e.addr == key.addr);
    let service_port = service
        .ports
        .iter()
        .find(|p| p.port == key.port && p.protocol == key.protocol);
    match key.scope {
        FrontendScope::Pod if service.cluster_ips.contains(&key.addr) => {
            Some((service_port?, Via::ClusterIp))
        }
        FrontendScope::Pod => match (external, service_port) {
            (Some(external), Some(port)) => Some((port, Via::ExternalFromPod(external))),
            _ => node_port_of(service, key, node).map(|p| (p, Via::NodePortFromPod)),
        },
        FrontendScope::Node => match (external, service_port) {
            (Some(external), Some(port)) => Some((port, Via::External(external))),
            _ => node_port_of(service, key, node).map(|p| (p, Via::NodePort)),
        },
    }
}

/// The port of `service` whose node port `key` names on a node address.
fn node_port_of<'a>(
    service: &'a ServiceModel,
    key: &FrontendAddr,
    node: &NodeFacts,
) -> Option<&'a ServicePortModel> {
    if !node.addresses.contains(&key.addr) {
        return None;
    }
    service
        .ports
        .iter()
        .find(|p| node_port(p, node) == Some(key.port) && p.protocol == key.protocol)
}

/// The backends of `addr`'s family: a frontend is served by its own
/// family's EndpointSlices only.
fn of_family(backends: &[Backend], addr: IpAddr) -> Vec<Backend> {
    backends
        .iter()
        .filter(|b| b.addr.is_ipv4() == addr.is_ipv4())
        .copied()
        .collect()
}

/// Only the local backends under a `Local` traffic policy, all otherwise.
fn policy_backends(backends: Vec<Backend>, local: bool) -> (Vec<Backend>, bool) {
    if !local {
        return (backends, false);
    }
    let local_only = backends.iter().filter(|b| b.local).copied().collect();
    // Endpoints elsewhere but none here: drop. None at all: reject.
    (local_only, !backends.is_empty())
}

impl Plan {
    /// An empty plan for maps with `room`.
    pub fn with_room(room: Room) -> Self {
        Self {
            room,
            ..Self::default()
        }
    }

    /// Puts the model of Service `name` (`None`: nothing to proxy) into the
    /// plan and records the frontends it touches in `change`. A Service
    /// that would not fit waits, with a rejection saying so.
    pub fn set(
        &mut self,
        name: &ServiceName,
        service: Option<ServiceModel>,
        change: &mut PlanChange,
    ) {
        self.waiting.remove(name);
        let Some(service) = service else {
            self.put(name, None, Wanted::default(), change);
            return;
        };
        if self.services.get(name).map(|s| &**s) == Some(&service) {
            return;
        }
        let wanted = Wanted::of(&service, &self.node);
        match self.no_room_for(name, &wanted) {
            Some(reason) => {
                change.rejections.push(Rejection::new(
                    format!("Service {name}"),
                    RejectionKind::NoRoom,
                    reason,
                ));
                self.waiting.insert(name.clone(), Box::new(service));
            }
            None => self.put(name, Some(service), wanted, change),
        }
    }

    /// Admits the waiting Services that fit now, in name order; call it
    /// after the sync that freed their room, so the maps have it too.
    pub fn admit_waiting(&mut self, change: &mut PlanChange) {
        if !std::mem::take(&mut self.room_freed) {
            return;
        }
        let names: Vec<ServiceName> = self.waiting.keys().cloned().collect();
        for name in names {
            let Some(service) = self.waiting.remove(&name) else {
                continue;
            };
            let wanted = Wanted::of(&service, &self.node);
            match self.no_room_for(&name, &wanted) {
                Some(_) => {
                    self.waiting.insert(name, service);
                }
                None => self.put(&name, Some(*service), wanted, change),
            }
        }
    }

    /// Whether Services wait for room that may have been freed.
    pub fn may_admit(&self) -> bool {
        self.room_freed && !self.waiting.is_empty()
    }

    /// The Services waiting for room.
    pub fn waiting(&self) -> impl Iterator<Item = &ServiceName> {
        self.waiting.keys()
    }

    /// Why a version of `name` that wants `wanted` would not fit in place of
    /// the version the plan holds, if it would not: it may not take the
    /// frontends or backends past the room (nor further past, if already
    /// there).
    fn no_room_for(&self, name: &ServiceName, wanted: &Wanted) -> Option<String> {
        // Fits even if nothing it wants were there yet: the usual case,
        // decided without the old version's entries.
        if self.claims.len() + wanted.keys.len() <= self.room.frontends
            && self.backend_users.len() + wanted.backends.len() <= self.room.backends
        {
            return None;
        }
        let old = self.services.get(name);
        let old_keys = old.map(|s| keys_of(s, &self.node)).unwrap_or_default();
        let frontends = Growth {
            held: self.claims.len(),
            added: wanted
                .keys
                .iter()
                .filter(|k| !self.claims.contains_key(k))
                .count(),
            freed: old_keys
                .difference(&wanted.keys)
                .filter(|k| self.claims.get(k).is_some_and(|c| c.len() == 1))
                .count(),
        };
        let old_backends = old.map(|s| backends_of(s)).unwrap_or_default();
        let backends = Growth {
            held: self.backend_users.len(),
            added: wanted
                .backends
                .iter()
                .filter(|b| !self.backend_users.contains_key(b))
                .count(),
            freed: old_backends
                .difference(&wanted.backends)
                .filter(|b| self.backend_users.get(b) == Some(&1))
                .count(),
        };
        frontends
            .past(self.room.frontends, wanted.keys.len(), "frontends")
            .or_else(|| backends.past(self.room.backends, wanted.backends.len(), "backends"))
    }

    /// Puts `service` (which fits; it wants `wanted`) in, or with `None`
    /// takes `name` out, keeping the backends' users and the claims.
    fn put(
        &mut self,
        name: &ServiceName,
        service: Option<ServiceModel>,
        wanted: Wanted,
        change: &mut PlanChange,
    ) {
        for backend in &wanted.backends {
            *self.backend_users.entry(*backend).or_default() += 1;
        }
        let old = match service {
            Some(service) => self.services.insert(name.clone(), Box::new(service)),
            None => self.services.remove(name),
        };
        for backend in old.iter().flat_map(|old| backends_of(old)) {
            if let Some(users) = self.backend_users.get_mut(&backend) {
                *users -= 1;
                if *users == 0 {
                    self.backend_users.remove(&backend);
                    self.room_freed = true;
                }
            }
        }
        let old_keys = old.map(|s| keys_of(&s, &self.node)).unwrap_or_default();
        let before = self.claims.len();
        self.reclaim(name, old_keys, wanted.keys, true, change);
        self.room_freed |= self.claims.len() < before;
    }

    /// Replaces the node facts; every Service with node ports gets its
    /// frontends recomputed.
    pub fn set_node_facts(&mut self, node: NodeFacts, change: &mut PlanChange) {
        if self.node == node {
            return;
        }
        let affected: Vec<(ServiceName, BTreeSet<FrontendAddr>)> = self
            .services
            .iter()
            .filter(|(_, s)| s.ports.iter().any(|p| p.node_port.is_some()))
            .map(|(name, s)| (name.clone(), keys_of(s, &self.node)))
            .collect();
        self.node = node;
        // The model is the same: frontends kept keep their content.
        for (name, old_keys) in affected {
            let new_keys = self
                .services
                .get(&name)
                .map(|s| keys_of(s, &self.node))
                .unwrap_or_default();
            self.reclaim(&name, old_keys, new_keys, false, change);
        }
    }

    pub fn node_facts(&self) -> &NodeFacts {
        &self.node
    }

    /// Moves the claims of `name` from `old_keys` to `new_keys`, what it
    /// claims now; `touch_kept`: the frontends in both may have new content.
    fn reclaim(
        &mut self,
        name: &ServiceName,
        old_keys: BTreeSet<FrontendAddr>,
        new_keys: BTreeSet<FrontendAddr>,
        touch_kept: bool,
        change: &mut PlanChange,
    ) {
        if let Some(service) = self.services.get(name) {
            change
                .rejections
                .extend(node_port_rejections(service, &self.node));
        }
        for key in old_keys.difference(&new_keys) {
            if let Some(claimants) = self.claims.get_mut(key) {
                claimants.retain(|claimant| claimant != name);
                if claimants.is_empty() {
                    self.claims.remove(key);
                }
            }
            change.frontends.insert(*key);
        }
        for key in new_keys {
            if !touch_kept && old_keys.contains(&key) {
                continue;
            }
            // Almost always one claimant: no room reserved for more.
            let claimants = self
                .claims
                .entry(key)
                .or_insert_with(|| Vec::with_capacity(1));
            if let Err(at) = claimants.binary_search(name) {
                claimants.insert(at, name.clone());
            }
            if let Some(owner) = claimants.first() {
                for loser in claimants.iter().skip(1) {
                    change.rejections.push(Rejection::new(
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
        self.waiting.retain(|name, _| keep(name));
        let gone: Vec<ServiceName> = self.services.keys().filter(|n| !keep(n)).cloned().collect();
        for name in gone {
            self.set(&name, None, change);
        }
    }

    /// The Service serving `key`, if any.
    pub fn owner(&self, key: &FrontendAddr) -> Option<&ServiceName> {
        self.claims.get(key)?.first()
    }

    /// What `key` should do, if any Service claims it.
    pub fn frontend(&self, key: &FrontendAddr) -> Option<Frontend> {
        let owner = self.claims.get(key)?.first()?;
        let service = self.services.get(owner)?;
        let (port, via) = route(service, key, &self.node)?;
        let backends = of_family(&port.backends, key.addr);
        let (backends, empty_drop) = match via {
            Via::ClusterIp => policy_backends(backends, service.internal_policy_local),
            Via::ExternalFromPod(_) | Via::NodePortFromPod => (backends, false),
            Via::External(_) | Via::NodePort => {
                policy_backends(backends, service.external_policy_local)
            }
        };
        // kube-proxy checks the ranges at the load balancer's address for
        // every client, pods included; a family's frontend checks that
        // family's ranges (none listed: nobody of the family gets in).
        let source_ranges = match via {
            Via::External(external) | Via::ExternalFromPod(external) if external.load_balancer => {
                service.source_ranges.as_ref().map(|ranges| {
                    ranges
                        .iter()
                        .filter(|r| r.is_ipv4() == key.addr.is_ipv4())
                        .copied()
                        .collect()
                })
            }
            _ => None,
        };
        let reached = match via {
            Via::ClusterIp => Reached::ClusterIp,
            Via::External(e) | Via::ExternalFromPod(e) if e.load_balancer => {
                Reached::LoadBalancerIp
            }
            Via::External(_) | Via::ExternalFromPod(_) => Reached::ExternalIp,
            Via::NodePort | Via::NodePortFromPod => Reached::NodePort,
        };
        Some(Frontend {
            service: owner.clone(),
            port_name: port.name.clone(),
            service_port: port.port,
            node_port: node_port(port, &self.node),
            service_type: service.service_type,
            reached,
            external_policy_local: service.external_policy_local,
            internal_policy_local: service.internal_policy_local,
            backends,
            draining: of_family(&port.draining, key.addr),
            affinity_timeout: service.affinity_timeout,
            empty_drop,
            snat_remote: key.scope == FrontendScope::Node && !service.external_policy_local,
            source_ranges,
        })
    }

    /// The health checks to serve: each Service with `externalTrafficPolicy:
    /// Local` and a `healthCheckNodePort`, by port, counting the distinct
    /// local endpoint addresses of both families.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let mut checks: Vec<HealthCheck> = self
            .services
            .values()
            .filter(|s| s.external_policy_local)
            .filter_map(|s| {
                let local: BTreeSet<IpAddr> = s
                    .ports
                    .iter()
                    .flat_map(|p| &p.backends)
                    .filter(|b| b.local)
                    .map(|b| b.addr.ip())
                    .collect();
                Some(HealthCheck {
                    port: s.health_check_node_port?,
                    service: s.name.clone(),
                    local_endpoints: local.len(),
                })
            })
            .collect();
        checks.sort();
        checks
    }

    /// Every frontend, in key order.
    pub fn frontend_keys(&self) -> impl Iterator<Item = &FrontendAddr> {
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
    use crate::model::types::ServicePortModel;

    fn service(ns: &str, name: &str, ip: &str, ports: &[(u16, Protocol, &[&str])]) -> ServiceModel {
        ServiceModel {
            service_type: ServiceType::ClusterIp,
            name: ServiceName::new(ns, name),
            cluster_ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(port, protocol, backends)| ServicePortModel {
                    name: format!("p{port}"),
                    protocol: *protocol,
                    port: *port,
                    node_port: None,
                    backends: backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.parse().unwrap(),
                            local: false,
                        })
                        .collect(),
                    draining: Vec::new(),
                })
                .collect(),
            affinity_timeout: None,
            external_addrs: vec![],
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            source_ranges: None,
        }
    }

    fn key(addr: &str, port: u16, protocol: Protocol) -> FrontendAddr {
        pod_key(addr.parse().unwrap(), port, protocol)
    }

    fn node(addr: &str, port: u16) -> FrontendAddr {
        node_key(addr.parse().unwrap(), port, Protocol::Tcp)
    }

    fn set(plan: &mut Plan, service: ServiceModel) -> PlanChange {
        let mut change = PlanChange::default();
        let name = service.name.clone();
        plan.set(&name, Some(service), &mut change);
        change
    }

    const TCP: Protocol = Protocol::Tcp;

    /// Which frontends of Service `ip` the plan has, by port.
    fn ports_of(plan: &Plan, ip: &str) -> Vec<u16> {
        let ip: IpAddr = ip.parse().unwrap();
        plan.frontend_keys()
            .filter(|k| k.addr == ip)
            .map(|k| k.port)
            .collect()
    }

    #[test]
    fn a_service_that_does_not_fit_waits_whole_and_is_named() {
        let mut plan = Plan::with_room(Room {
            frontends: 3,
            backends: 100,
        });
        set(
            &mut plan,
            service(
                "a",
                "first",
                "10.96.0.1",
                &[
                    (80, TCP, &["10.244.0.1:80"]),
                    (443, TCP, &["10.244.0.1:443"]),
                ],
            ),
        );
        let change = set(
            &mut plan,
            service(
                "a",
                "second",
                "10.96.0.2",
                &[
                    (80, TCP, &["10.244.0.2:80"]),
                    (443, TCP, &["10.244.0.2:443"]),
                ],
            ),
        );
        // One frontend would fit, not both: neither is planned.
        assert_eq!(ports_of(&plan, "10.96.0.2"), Vec::<u16>::new());
        assert!(change.frontends.is_empty(), "{change:?}");
        assert_eq!(change.rejections.len(), 1, "{:?}", change.rejections);
        let rejection = &change.rejections[0];
        assert_eq!(
            (rejection.object.as_str(), rejection.kind),
            ("Service a/second", RejectionKind::NoRoom)
        );
        assert!(
            rejection
                .reason
                .contains("frontends would make 4, past the 3"),
            "{rejection}"
        );
        assert_eq!(
            plan.waiting().map(ToString::to_string).collect::<Vec<_>>(),
            ["a/second"]
        );

        // Room freed: admitted at the next round, not in the change that
        // freed it (the maps free the room only when that change is synced).
        let mut change = PlanChange::default();
        plan.set(&ServiceName::new("a", "first"), None, &mut change);
        assert_eq!(ports_of(&plan, "10.96.0.2"), Vec::<u16>::new());
        assert!(plan.may_admit());
        let mut change = PlanChange::default();
        plan.admit_waiting(&mut change);
        assert_eq!(ports_of(&plan, "10.96.0.2"), [80, 443]);
        assert_eq!(change.frontends.len(), 2);
        assert!(!plan.may_admit());
        assert_eq!(plan.waiting().count(), 0);
    }

    #[test]
    fn a_service_growing_past_the_room_keeps_its_version_and_a_deleted_one_stops_waiting() {
        let mut plan = Plan::with_room(Room {
            frontends: 10,
            backends: 2,
        });
        set(
            &mut plan,
            service(
                "a",
                "web",
                "10.96.0.1",
                &[(80, TCP, &["10.244.0.1:80", "10.244.0.2:80"])],
            ),
        );
        // A third backend does not fit: the two-backend version stays.
        let change = set(
            &mut plan,
            service(
                "a",
                "web",
                "10.96.0.1",
                &[(
                    80,
                    TCP,
                    &["10.244.0.1:80", "10.244.0.2:80", "10.244.0.3:80"],
                )],
            ),
        );
        assert_eq!(change.rejections[0].kind, RejectionKind::NoRoom);
        assert!(
            change.rejections[0]
                .reason
                .contains("backends would make 3, past the 2"),
            "{:?}",
            change.rejections
        );
        let web = plan.frontend(&key("10.96.0.1", 80, TCP)).unwrap();
        assert_eq!(web.backends.len(), 2);
        // Shrinking always fits; it also takes it off the waiting list.
        set(
            &mut plan,
            service("a", "web", "10.96.0.1", &[(80, TCP, &["10.244.0.1:80"])]),
        );
        assert_eq!(plan.waiting().count(), 0);
        // A Service that waits and is then deleted waits no more.
        set(
            &mut plan,
            service(
                "a",
                "big",
                "10.96.0.2",
                &[(80, TCP, &["10.244.0.7:80", "10.244.0.8:80"])],
            ),
        );
        assert_eq!(plan.waiting().count(), 1);
        plan.set(
            &ServiceName::new("a", "big"),
            None,
            &mut PlanChange::default(),
        );
        assert_eq!(plan.waiting().count(), 0);
        // Services sharing backends count them once.
        let change = set(
            &mut plan,
            service("a", "twin", "10.96.0.3", &[(80, TCP, &["10.244.0.1:80"])]),
        );
        assert!(change.rejections.is_empty(), "{:?}", change.rejections);
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
        assert!(change.rejections.is_empty());
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
        assert_eq!(change.rejections.len(), 1);
        assert_eq!(change.rejections[0].object, "Service b/dns");
        assert_eq!(change.rejections[0].kind, RejectionKind::FrontendConflict);
        assert!(change.rejections[0]
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

    const NODE_A: &str = "192.168.1.10";
    const NODE_B: &str = "192.168.1.11";

    fn node_facts(addresses: &[&str]) -> NodeFacts {
        NodeFacts {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ..NodeFacts::default()
        }
    }

    /// A LoadBalancer `shop/web` on 10.96.0.10: port 80 (nodePort 30080)
    /// and 81 (nodePort 40000, outside the range), one local and one remote
    /// endpoint, ingress IP 192.0.2.10 and externalIP 198.51.100.7.
    fn load_balancer() -> ServiceModel {
        let mut web = service(
            "shop",
            "web",
            "10.96.0.10",
            &[
                (80, Protocol::Tcp, &["10.244.1.2:8080", "10.244.2.2:8080"]),
                (81, Protocol::Tcp, &[]),
            ],
        );
        web.ports[0].backends[0].local = true;
        web.ports[0].node_port = Some(30080);
        web.ports[1].node_port = Some(40000);
        web.external_addrs = vec![
            ExternalAddr {
                addr: "192.0.2.10".parse().unwrap(),
                load_balancer: true,
            },
            ExternalAddr {
                addr: "198.51.100.7".parse().unwrap(),
                load_balancer: false,
            },
        ];
        web.source_ranges = Some(vec!["203.0.113.0/24".parse().unwrap()]);
        web
    }

    fn planned(service: ServiceModel, addresses: &[&str]) -> (Plan, PlanChange) {
        let mut plan = Plan::default();
        let mut change = PlanChange::default();
        plan.set_node_facts(node_facts(addresses), &mut change);
        let name = service.name.clone();
        plan.set(&name, Some(service), &mut change);
        (plan, change)
    }

    fn backend_addrs(frontend: &Frontend) -> Vec<String> {
        frontend
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    #[test]
    fn node_frontends_come_from_node_addresses_and_external_addresses() {
        let (plan, change) = planned(load_balancer(), &[NODE_A, NODE_B]);
        let keys: BTreeSet<_> = plan.frontend_keys().copied().collect();
        let expected: BTreeSet<_> = [
            key("10.96.0.10", 80, Protocol::Tcp),
            key("10.96.0.10", 81, Protocol::Tcp),
            key("192.0.2.10", 80, Protocol::Tcp),
            key("192.0.2.10", 81, Protocol::Tcp),
            key("198.51.100.7", 80, Protocol::Tcp),
            key("198.51.100.7", 81, Protocol::Tcp),
            node("192.0.2.10", 80),
            node("192.0.2.10", 81),
            node("198.51.100.7", 80),
            node("198.51.100.7", 81),
            node(NODE_A, 30080),
            node(NODE_B, 30080),
            // Pods reach node ports on node addresses too.
            key(NODE_A, 30080, Protocol::Tcp),
            key(NODE_B, 30080, Protocol::Tcp),
        ]
        .into();
        assert_eq!(keys, expected, "no node frontend for nodePort 40000");
        // From a pod, a node port uses every endpoint whatever the policy.
        let from_pod = plan.frontend(&key(NODE_A, 30080, Protocol::Tcp)).unwrap();
        assert!(!from_pod.snat_remote && !from_pod.empty_drop);
        assert_eq!(from_pod.source_ranges, None);
        assert_eq!(change.frontends, expected);
        assert_eq!(change.rejections.len(), 1, "{:?}", change.rejections);
        let rejection = &change.rejections[0];
        assert_eq!(rejection.kind, RejectionKind::InvalidPort);
        assert_eq!(
            rejection.to_string(),
            "Service shop/web: port p81 nodePort 40000 is outside the node port range 30000-32767"
        );
        assert_eq!(
            node(NODE_A, 30080).to_string(),
            "192.168.1.10:30080/TCP (node)"
        );
    }

    #[test]
    fn cluster_policy_serves_every_backend_and_snats_node_frontends() {
        let (plan, _) = planned(load_balancer(), &[NODE_A]);
        for key in [node(NODE_A, 30080), node("198.51.100.7", 80)] {
            let frontend = plan.frontend(&key).unwrap();
            assert_eq!(
                backend_addrs(&frontend),
                ["10.244.1.2:8080", "10.244.2.2:8080"]
            );
            assert!(frontend.snat_remote && !frontend.empty_drop, "{key}");
            assert_eq!(frontend.source_ranges, None, "{key}: not an ingress IP");
        }
        let cluster_ip = plan
            .frontend(&key("10.96.0.10", 80, Protocol::Tcp))
            .unwrap();
        assert!(!cluster_ip.snat_remote && !cluster_ip.empty_drop);
        assert_eq!(cluster_ip.backends.len(), 2);
    }

    #[test]
    fn source_ranges_guard_only_load_balancer_ingress_addresses() {
        let (plan, _) = planned(load_balancer(), &[NODE_A]);
        let ranges = Some(vec!["203.0.113.0/24".parse().unwrap()]);
        let ingress = plan.frontend(&node("192.0.2.10", 80)).unwrap();
        assert_eq!(ingress.source_ranges, ranges);
        // From pods too, as kube-proxy.
        let from_pod = plan
            .frontend(&key("192.0.2.10", 80, Protocol::Tcp))
            .unwrap();
        assert_eq!(from_pod.source_ranges, ranges);
        assert_eq!(
            plan.frontend(&node(NODE_A, 30080)).unwrap().source_ranges,
            None
        );
    }

    #[test]
    fn local_policies_keep_local_backends_and_drop_when_none_is_here() {
        let mut web = load_balancer();
        web.external_policy_local = true;
        web.internal_policy_local = true;
        let (plan, _) = planned(web.clone(), &[NODE_A]);
        for key in [
            node(NODE_A, 30080),
            node("192.0.2.10", 80),
            key("10.96.0.10", 80, Protocol::Tcp),
        ] {
            let frontend = plan.frontend(&key).unwrap();
            assert_eq!(backend_addrs(&frontend), ["10.244.1.2:8080"], "{key}");
            assert!(frontend.empty_drop && !frontend.snat_remote, "{key}");
        }
        // From a pod, an external address short-circuits to every endpoint.
        let from_pod = plan
            .frontend(&key("192.0.2.10", 80, Protocol::Tcp))
            .unwrap();
        assert_eq!(from_pod.backends.len(), 2);
        assert!(!from_pod.empty_drop);
        // Endpoints only elsewhere: drop. No endpoint at all: reject.
        web.ports[0].backends.retain(|b| !b.local);
        let (plan, _) = planned(web, &[NODE_A]);
        let remote_only = plan.frontend(&node(NODE_A, 30080)).unwrap();
        assert!(remote_only.backends.is_empty() && remote_only.empty_drop);
        let none = plan.frontend(&node("192.0.2.10", 81)).unwrap();
        assert!(none.backends.is_empty() && !none.empty_drop);
    }

    #[test]
    fn new_node_addresses_recompute_only_services_with_node_ports() {
        let mut plan = Plan::default();
        let mut change = PlanChange::default();
        plan.set_node_facts(node_facts(&[NODE_A]), &mut change);
        for model in [
            load_balancer(),
            service("a", "plain", "10.96.0.1", &[(80, Protocol::Tcp, &[])]),
        ] {
            let name = model.name.clone();
            plan.set(&name, Some(model), &mut change);
        }
        let mut change = PlanChange::default();
        plan.set_node_facts(node_facts(&[NODE_B]), &mut change);
        assert_eq!(
            change.frontends.into_iter().collect::<Vec<_>>(),
            [
                key(NODE_A, 30080, Protocol::Tcp),
                node(NODE_A, 30080),
                key(NODE_B, 30080, Protocol::Tcp),
                node(NODE_B, 30080)
            ]
        );
        assert!(plan.frontend(&node(NODE_A, 30080)).is_none());
        assert!(plan.frontend(&node(NODE_B, 30080)).is_some());
        // The same facts again: nothing to do.
        let mut change = PlanChange::default();
        plan.set_node_facts(node_facts(&[NODE_B]), &mut change);
        assert!(change.frontends.is_empty());
    }

    #[test]
    fn type_change_to_cluster_ip_removes_every_node_frontend() {
        let (mut plan, _) = planned(load_balancer(), &[NODE_A]);
        let cluster_ip = service(
            "shop",
            "web",
            "10.96.0.10",
            &[(80, Protocol::Tcp, &["10.244.1.2:8080"])],
        );
        let change = set(&mut plan, cluster_ip);
        assert_eq!(
            plan.frontend_keys().copied().collect::<Vec<_>>(),
            [key("10.96.0.10", 80, Protocol::Tcp)]
        );
        assert!(change.frontends.contains(&node(NODE_A, 30080)));
        assert!(change.frontends.contains(&node("192.0.2.10", 80)));
    }

    #[test]
    fn health_checks_count_local_endpoints_of_local_policy_services() {
        let mut web = load_balancer();
        web.external_policy_local = true;
        web.health_check_node_port = Some(32000);
        // The same pod behind two ports counts once.
        web.ports[1].backends = vec![web.ports[0].backends[0]];
        let mut cluster = service("a", "cluster", "10.96.0.1", &[(80, Protocol::Tcp, &[])]);
        cluster.health_check_node_port = Some(32001);
        let (mut plan, _) = planned(web.clone(), &[NODE_A]);
        set(&mut plan, cluster);
        assert_eq!(
            plan.health_checks(),
            [HealthCheck {
                port: 32000,
                service: ServiceName::new("shop", "web"),
                local_endpoints: 1
            }]
        );
        web.ports
            .iter_mut()
            .for_each(|p| p.backends.retain(|b| !b.local));
        set(&mut plan, web);
        assert_eq!(plan.health_checks()[0].local_endpoints, 0);
    }

    /// `load_balancer()` made dual-stack: cluster IP fd00:10:96::a too,
    /// an IPv6 endpoint of each node beside the IPv4 ones, an IPv6 ingress
    /// IP, and IPv4 source ranges only.
    fn dual_stack() -> ServiceModel {
        let mut web = load_balancer();
        web.cluster_ips.push("fd00:10:96::a".parse().unwrap());
        for (addr, local) in [
            ("[fd00:10:244::5]:8080", true),
            ("[fd00:10:244::6]:8080", false),
        ] {
            web.ports[0].backends.push(Backend {
                addr: addr.parse().unwrap(),
                local,
            });
        }
        web.ports[0].draining.push(Backend {
            addr: "[fd00:10:244::7]:8080".parse().unwrap(),
            local: false,
        });
        web.external_addrs.push(ExternalAddr {
            addr: "fd00:192::10".parse().unwrap(),
            load_balancer: true,
        });
        web
    }

    const NODE_A6: &str = "fd00:192:168::10";

    #[test]
    fn each_family_s_frontends_are_served_by_that_family_s_backends_only() {
        let (plan, change) = planned(dual_stack(), &[NODE_A, NODE_A6]);
        assert!(
            change.rejections.len() == 1,
            "only nodePort 40000: {:?}",
            change.rejections
        );
        let v6 = [
            key("fd00:10:96::a", 80, Protocol::Tcp),
            node("fd00:192::10", 80),
            key("fd00:192::10", 80, Protocol::Tcp),
            node(NODE_A6, 30080),
            key(NODE_A6, 30080, Protocol::Tcp),
        ];
        for key in v6 {
            let frontend = plan.frontend(&key).unwrap_or_else(|| panic!("{key}"));
            assert_eq!(
                backend_addrs(&frontend),
                ["[fd00:10:244::5]:8080", "[fd00:10:244::6]:8080"],
                "{key}"
            );
            let draining: Vec<String> = frontend
                .draining
                .iter()
                .map(|b| b.addr.to_string())
                .collect();
            assert_eq!(draining, ["[fd00:10:244::7]:8080"], "{key}");
        }
        let v4 = plan.frontend(&node(NODE_A, 30080)).unwrap();
        assert_eq!(backend_addrs(&v4), ["10.244.1.2:8080", "10.244.2.2:8080"]);
        assert!(v4.draining.is_empty());
        assert_eq!(
            node(NODE_A6, 30080).to_string(),
            "[fd00:192:168::10]:30080/TCP (node)"
        );
    }

    #[test]
    fn local_policy_and_snat_apply_per_family() {
        let mut web = dual_stack();
        web.external_policy_local = true;
        web.ports[0]
            .backends
            .retain(|b| b.addr.is_ipv6() || !b.local);
        let (plan, _) = planned(web, &[NODE_A, NODE_A6]);
        let v6 = plan.frontend(&node(NODE_A6, 30080)).unwrap();
        assert_eq!(backend_addrs(&v6), ["[fd00:10:244::5]:8080"]);
        assert!(v6.empty_drop && !v6.snat_remote);
        // No local IPv4 endpoint: the IPv4 frontend drops, whatever the
        // local IPv6 one.
        let v4 = plan.frontend(&node(NODE_A, 30080)).unwrap();
        assert!(v4.backends.is_empty() && v4.empty_drop);
        // No IPv6 endpoint at all: the IPv6 frontend rejects, whatever the
        // IPv4 ones; Cluster policy SNATs in both families.
        let mut web = dual_stack();
        web.ports[0].backends.retain(|b| b.addr.is_ipv4());
        let (plan, _) = planned(web, &[NODE_A, NODE_A6]);
        let v6 = plan.frontend(&node(NODE_A6, 30080)).unwrap();
        assert!(v6.backends.is_empty() && !v6.empty_drop && v6.snat_remote);
        assert_eq!(
            plan.frontend(&node(NODE_A, 30080)).unwrap().backends.len(),
            2
        );
    }

    #[test]
    fn source_ranges_apply_per_family_and_a_family_without_ranges_lets_nobody_in() {
        let (plan, _) = planned(dual_stack(), &[NODE_A]);
        let v4 = plan.frontend(&node("192.0.2.10", 80)).unwrap();
        assert_eq!(
            v4.source_ranges,
            Some(vec!["203.0.113.0/24".parse().unwrap()])
        );
        let v6 = plan.frontend(&node("fd00:192::10", 80)).unwrap();
        assert_eq!(
            v6.source_ranges,
            Some(vec![]),
            "IPv4 ranges only: no IPv6 client"
        );
        let mut web = dual_stack();
        web.source_ranges = Some(vec![
            "203.0.113.0/24".parse().unwrap(),
            "fd00:203::/32".parse().unwrap(),
        ]);
        let (plan, _) = planned(web, &[NODE_A]);
        let v6 = plan
            .frontend(&key("fd00:192::10", 80, Protocol::Tcp))
            .unwrap();
        assert_eq!(
            v6.source_ranges,
            Some(vec!["fd00:203::/32".parse().unwrap()])
        );
        let v4 = plan.frontend(&node("192.0.2.10", 80)).unwrap();
        assert_eq!(
            v4.source_ranges,
            Some(vec!["203.0.113.0/24".parse().unwrap()])
        );
    }

    #[test]
    fn a_single_stack_service_claims_no_frontend_of_the_other_family() {
        let mut web = load_balancer();
        web.external_addrs.push(ExternalAddr {
            addr: "fd00:192::10".parse().unwrap(),
            load_balancer: true,
        });
        let (plan, _) = planned(web, &[NODE_A, NODE_A6]);
        assert!(
            plan.frontend_keys().all(|k| k.addr.is_ipv4()),
            "{:?}",
            plan.frontend_keys().collect::<Vec<_>>()
        );
        // An IPv6-only one: IPv6 node addresses only.
        let mut v6_only = dual_stack();
        v6_only.cluster_ips.retain(|ip| ip.is_ipv6());
        let (plan, _) = planned(v6_only, &[NODE_A, NODE_A6]);
        assert!(plan.frontend(&node(NODE_A6, 30080)).is_some());
        assert!(plan.frontend(&node(NODE_A, 30080)).is_none());
        assert!(plan.frontend_keys().all(|k| k.addr.is_ipv6()));
    }

    #[test]
    fn health_checks_count_distinct_local_endpoints_of_both_families() {
        let mut web = dual_stack();
        web.external_policy_local = true;
        web.health_check_node_port = Some(32000);
        // The IPv6 local endpoint behind a second port counts once.
        web.ports[1].backends = vec![web.ports[0].backends[2]];
        let (plan, _) = planned(web, &[NODE_A]);
        // 10.244.1.2 and fd00:10:244::5.
        assert_eq!(plan.health_checks()[0].local_endpoints, 2);
    }
}
