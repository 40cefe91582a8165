//! What `kxdp services` shows: the frontends the maps hold, grouped by the
//! Service their label names, each Service with its addresses and ports as
//! `kubectl get svc` gives them. Pure: the maps are read in `mod.rs`.

use std::{collections::BTreeMap, net::IpAddr};

use proxy_common::maps::{
    FrontendLabel, FrontendValue, FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_SNAT_REMOTE,
    FRONTEND_SOURCE_RANGES, LABEL_POLICY_EXTERNAL_LOCAL, LABEL_POLICY_INTERNAL_LOCAL,
    LABEL_TYPE_CLUSTER_IP, LABEL_TYPE_LOAD_BALANCER, LABEL_TYPE_NODE_PORT, LABEL_VIA_CLUSTER_IP,
    LABEL_VIA_EXTERNAL_IP, LABEL_VIA_LOAD_BALANCER_IP, LABEL_VIA_NODE_PORT, SCOPE_NODE,
};

use crate::{
    frontend_text::{frontend_text, scope_label},
    model::types::Protocol,
    sync::entries::{BackendMapValue, FrontendMapKey},
};

/// A frontend's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Sockets the socket hooks sent to a backend (connects, unconnected
    /// UDP datagrams): their packets are not translated, nor counted.
    pub sockets: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets answered as refused, and sockets refused: no endpoints.
    pub rejects: u64,
}

/// A backend in a frontend's table.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    /// Runs on this node.
    pub local: bool,
}

impl Backend {
    pub fn of(value: &BackendMapValue) -> Self {
        Self {
            address: value.addr(),
            port: value.port(),
            local: value.flags() & proxy_common::maps::BACKEND_LOCAL != 0,
        }
    }
}

/// One frontend of a Service.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    pub frontend: String,
    /// "pod" (reached from pods) or "node" (from outside, through a NIC).
    pub scope: &'static str,
    /// Which of the Service's addresses it is: "clusterIP", "externalIP",
    /// "loadBalancerIP" or "nodePort"; "" without a label.
    pub via: &'static str,
    pub port_name: String,
    /// The traffic policy in force ("Cluster" or "Local"; none without a
    /// label), then "snat" (remote backends are SNATed) and "ranges"
    /// (`loadBalancerSourceRanges` apply).
    pub policy: Vec<&'static str>,
    pub id: u32,
    /// ClientIP affinity timeout in seconds, if the Service has affinity.
    pub affinity_timeout_seconds: Option<u32>,
    /// The backends new flows are balanced over; `null` for a backend id
    /// the maps name but do not hold.
    pub backends: Vec<Option<Backend>>,
    /// Terminating endpoints kept for their connections only.
    pub terminating: u16,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(skip)]
    key: FrontendMapKey,
}

impl Frontend {
    pub fn of(
        key: &FrontendMapKey,
        value: &FrontendValue,
        backends: Vec<Option<Backend>>,
        counters: Counters,
    ) -> Self {
        let flags = value.flags;
        Self {
            frontend: frontend_text(key),
            scope: scope_label(key),
            via: "",
            port_name: String::new(),
            policy: policy_flags(flags).collect(),
            id: value.id,
            affinity_timeout_seconds: (flags & FRONTEND_AFFINITY_CLIENT_IP != 0)
                .then_some(value.affinity_timeout),
            backends,
            terminating: 0,
            counters,
            key: *key,
        }
    }

    /// Backends on this node.
    pub fn local(&self) -> usize {
        self.backends.iter().flatten().filter(|b| b.local).count()
    }
}

fn policy_flags(flags: u32) -> impl Iterator<Item = &'static str> {
    [
        (FRONTEND_SNAT_REMOTE, "snat"),
        (FRONTEND_SOURCE_RANGES, "ranges"),
    ]
    .into_iter()
    .filter(move |(bit, _)| flags & bit != 0)
    .map(|(_, word)| word)
}

/// A Service and its frontends.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// "" for frontends without a label (written by an agent before labels).
    pub namespace: String,
    pub name: String,
    /// "ClusterIP", "NodePort" or "LoadBalancer"; "" without a label.
    #[serde(rename = "type")]
    pub service_type: &'static str,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    /// External IPs and LoadBalancer ingress IPs.
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<IpAddr>,
    /// As kubectl writes them: `80:30080/TCP`, `53/UDP`.
    pub ports: Vec<String>,
    pub frontends: Vec<Frontend>,
}

/// Counters of the whole node, under the table.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub no_backend_drops: u64,
    pub rejected_tcp: u64,
    pub rejected_udp: u64,
    pub refused_sockets: u64,
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn type_name(service_type: u8) -> &'static str {
    match service_type {
        LABEL_TYPE_CLUSTER_IP => "ClusterIP",
        LABEL_TYPE_NODE_PORT => "NodePort",
        LABEL_TYPE_LOAD_BALANCER => "LoadBalancer",
        _ => "?",
    }
}

fn via_name(via: u8) -> &'static str {
    match via {
        LABEL_VIA_CLUSTER_IP => "clusterIP",
        LABEL_VIA_EXTERNAL_IP => "externalIP",
        LABEL_VIA_LOAD_BALANCER_IP => "loadBalancerIP",
        LABEL_VIA_NODE_PORT => "nodePort",
        _ => "?",
    }
}

/// The traffic policy a frontend applies: the internal one on a cluster
/// IP, the external one from outside; from a pod, an external address or
/// node port reaches every endpoint (as kube-proxy's short-circuit).
fn traffic_policy(label: &FrontendLabel, key: &FrontendMapKey) -> &'static str {
    let local = match label.via {
        LABEL_VIA_CLUSTER_IP => label.policies & LABEL_POLICY_INTERNAL_LOCAL != 0,
        _ if key.scope() == SCOPE_NODE => label.policies & LABEL_POLICY_EXTERNAL_LOCAL != 0,
        _ => false,
    };
    if local {
        "Local"
    } else {
        "Cluster"
    }
}

/// (namespace, name) of a Service.
type ServiceId = (String, String);
/// (Service port, node port, protocol) of a frontend, for `PORT(S)`.
type PortOf = (u16, u16, u8);

/// The frontends grouped by Service, Services by namespace and name, each
/// Service's frontends in key order; unlabelled frontends in one group
/// with no name, first.
pub fn by_service(frontends: Vec<(Option<FrontendLabel>, Frontend)>) -> Vec<Service> {
    let mut ports: BTreeMap<ServiceId, Vec<PortOf>> = BTreeMap::new();
    let mut services: BTreeMap<ServiceId, Service> = BTreeMap::new();
    for (label, mut frontend) in frontends {
        let id = label.map_or_else(Default::default, |l| (text(&l.namespace), text(&l.name)));
        let service = services.entry(id.clone()).or_insert_with(|| Service {
            namespace: id.0.clone(),
            name: id.1.clone(),
            service_type: label.map_or("", |l| type_name(l.service_type)),
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            ports: Vec::new(),
            frontends: Vec::new(),
        });
        if let Some(label) = label {
            frontend.via = via_name(label.via);
            frontend.port_name = text(&label.port_name);
            frontend.terminating = label.terminating;
            frontend
                .policy
                .insert(0, traffic_policy(&label, &frontend.key));
            let addr = frontend.key.addr();
            match label.via {
                LABEL_VIA_CLUSTER_IP => service.cluster_ips.push(addr),
                LABEL_VIA_EXTERNAL_IP | LABEL_VIA_LOAD_BALANCER_IP => {
                    service.external_ips.push(addr)
                }
                _ => {}
            }
            let port = (label.service_port, label.node_port, frontend.key.proto());
            ports.entry(id).or_default().push(port);
        }
        service.frontends.push(frontend);
    }
    for (id, service) in &mut services {
        for addrs in [&mut service.cluster_ips, &mut service.external_ips] {
            // IPv4 first, as the maps' order of families.
            addrs.sort_by_key(|a| (a.is_ipv6(), *a));
            addrs.dedup();
        }
        let mut of_service = ports.remove(id).unwrap_or_default();
        of_service.sort_unstable();
        of_service.dedup();
        service.ports = of_service.iter().map(|p| port_text(*p)).collect();
    }
    services.into_values().collect()
}

fn port_text((port, node_port, proto): PortOf) -> String {
    let proto = Protocol::from_ip_proto(proto).map_or_else(|| proto.to_string(), |p| p.to_string());
    match node_port {
        0 => format!("{port}/{proto}"),
        node_port => format!("{port}:{node_port}/{proto}"),
    }
}

/// The Services of `namespace` (`None`: every namespace, unlabelled
/// frontends too), only the one called `name` if given; a name matching
/// none is an error.
pub fn select(
    services: Vec<Service>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Vec<Service>> {
    let shown: Vec<Service> = services
        .into_iter()
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .filter(|s| name.is_none_or(|n| s.name == n))
        .collect();
    match (name, namespace) {
        (Some(name), Some(namespace)) if shown.is_empty() => {
            anyhow::bail!("no Service {name} in namespace {namespace} is served here")
        }
        (Some(name), None) if shown.is_empty() => {
            anyhow::bail!("no Service {name} in any namespace is served here")
        }
        _ => Ok(shown),
    }
}
