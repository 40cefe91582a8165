//! The typed, validated view of one Service and its endpoints (DESIGN.md §1).
//! Invalid objects are rejected here, with a reason, and never reach the maps.
//! Every source feeds this module, so each Kubernetes rule lives here once.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Service, ServicePort, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use proxy_common::maps::{PROTO_TCP, PROTO_UDP};

use crate::{
    cidr::Ipv4Cidr,
    source::{Rejection, RejectionKind, ServiceName, ServiceObjects},
};

/// Label by which another proxy claims a Service (kube-proxy skips those too).
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset, and its bound.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' protocol field; absent means TCP.
    fn parse(field: Option<&str>) -> Result<Self, (RejectionKind, String)> {
        match field.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            other => Err((
                RejectionKind::UnsupportedProtocol,
                format!("protocol {other} is not supported yet"),
            )),
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// One endpoint serving a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// The endpoint runs on this node (its `nodeName` is `--node-name`).
    pub local: bool,
}

/// One port of a Service with the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortModel {
    /// The port's name ("" for an unnamed single port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The port's `nodePort`, for types NodePort and LoadBalancer only (a
    /// LoadBalancer with `allocateLoadBalancerNodePorts: false` has none).
    pub node_port: Option<u16>,
    /// Serving backends, sorted and unique.
    pub backends: Vec<Backend>,
    /// Endpoints still listed but not taking new connections (terminating,
    /// not ready): their existing connections go on. Sorted and unique.
    pub draining: Vec<Backend>,
}

/// An address from outside the cluster network the Service answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExternalAddr {
    pub addr: Ipv4Addr,
    /// A LoadBalancer ingress IP (`loadBalancerSourceRanges` apply), not
    /// only an `externalIP`.
    pub load_balancer: bool,
}

/// A Service the dataplane proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub name: ServiceName,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortModel>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `externalIPs` and LoadBalancer ingress IPs, sorted, one per address.
    pub external_addrs: Vec<ExternalAddr>,
    /// `externalTrafficPolicy: Local` on a Service reachable from outside.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` of a Service with `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges`; `None` lets every client in. `Some` of an
    /// empty list (only IPv6 ranges given) lets no IPv4 client in: dropping a
    /// range must never widen access.
    pub source_ranges: Option<Vec<Ipv4Cidr>>,
}

/// What the model made of one Service's objects.
#[derive(Debug, Default)]
pub struct Built {
    /// `None` when nothing is proxied: absent, headless, ExternalName,
    /// another proxy's, IPv6-only, or rejected.
    pub service: Option<ServiceModel>,
    pub rejections: Vec<Rejection>,
    /// IPv6 addresses or slices were left out (not proxied yet).
    pub ipv6_skipped: bool,
}

/// The node the agent runs on, for telling local endpoints apart.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: Option<String>,
}

impl Node {
    fn is_local(&self, node_name: Option<&String>) -> bool {
        self.name.is_some() && self.name.as_ref() == node_name
    }
}

/// A port as EndpointSlices and Endpoints publish it.
struct EndpointPort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// An endpoint address with the conditions that decide whether it serves.
struct EndpointState {
    addr: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// The endpoints of one EndpointSlice or Endpoints subset, sharing ports.
#[derive(Default)]
struct EndpointGroup {
    ports: Vec<EndpointPort>,
    endpoints: Vec<EndpointState>,
}

fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// Why an endpoint address cannot be a backend, if it cannot.
fn endpoint_address(text: &str) -> Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("endpoint address '{text}' is not an IPv4 address"))?;
    let link_local_multicast = addr.octets()[..3] == [224, 0, 0];
    if addr.is_loopback() || addr.is_link_local() || link_local_multicast || addr.is_unspecified() {
        return Err(format!(
            "endpoint address {addr} is loopback, link-local or unspecified"
        ));
    }
    Ok(addr)
}

fn endpoint_port(
    name: Option<&String>,
    protocol: Option<&str>,
    port: Option<i32>,
) -> Result<EndpointPort, (RejectionKind, String)> {
    let protocol = Protocol::parse(protocol)?;
    let port = port.and_then(port_number).ok_or((
        RejectionKind::InvalidPort,
        "port missing or out of range".to_string(),
    ))?;
    Ok(EndpointPort {
        name: name.cloned().unwrap_or_default(),
        protocol,
        port,
    })
}

/// Reads the ports and addresses of one object, recording each one skipped.
struct GroupReader<'a> {
    object: String,
    built: &'a mut Built,
}

impl GroupReader<'_> {
    fn reject(&mut self, kind: RejectionKind, reason: String) {
        self.built
            .rejections
            .push(Rejection::new(self.object.clone(), kind, reason));
    }

    fn port(
        &mut self,
        group: &mut EndpointGroup,
        port: Result<EndpointPort, (RejectionKind, String)>,
    ) {
        match port {
            Ok(port) => group.ports.push(port),
            Err((kind, reason)) => self.reject(kind, reason),
        }
    }

    fn address(&mut self, text: &str) -> Option<Ipv4Addr> {
        endpoint_address(text)
            .map_err(|reason| self.reject(RejectionKind::InvalidAddress, reason))
            .ok()
    }
}

fn slice_group(slice: &EndpointSlice, node: &Node, built: &mut Built) -> Option<EndpointGroup> {
    match slice.address_type.as_str() {
        "IPv4" => {}
        "IPv6" => {
            built.ipv6_skipped = true;
            return None;
        }
        // FQDN slices are deprecated and never proxied.
        _ => return None,
    }
    let mut reader = GroupReader {
        object: format!("EndpointSlice {}", ServiceName::of(&slice.metadata)),
        built,
    };
    let mut group = EndpointGroup::default();
    for port in slice.ports.iter().flatten() {
        let parsed = endpoint_port(port.name.as_ref(), port.protocol.as_deref(), port.port);
        reader.port(&mut group, parsed);
    }
    for endpoint in &slice.endpoints {
        // Addresses are fungible; consumers use the first (as kube-proxy does).
        let Some(addr) = endpoint.addresses.first().and_then(|a| reader.address(a)) else {
            continue;
        };
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        // API contract: unknown readiness means ready, unknown serving means
        // "as ready", unknown terminating means not terminating.
        let ready = conditions.ready.unwrap_or(true);
        group.endpoints.push(EndpointState {
            addr,
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
            local: node.is_local(endpoint.node_name.as_ref()),
        });
    }
    Some(group)
}

fn endpoints_groups(endpoints: &Endpoints, node: &Node, built: &mut Built) -> Vec<EndpointGroup> {
    let mut reader = GroupReader {
        object: format!("Endpoints {}", ServiceName::of(&endpoints.metadata)),
        built,
    };
    let mut groups = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let mut group = EndpointGroup::default();
        for port in subset.ports.iter().flatten() {
            let parsed = endpoint_port(
                port.name.as_ref(),
                port.protocol.as_deref(),
                Some(port.port),
            );
            reader.port(&mut group, parsed);
        }
        // Legacy Endpoints list only ready addresses as serving.
        for address in subset.addresses.iter().flatten() {
            if let Some(addr) = reader.address(&address.ip) {
                group.endpoints.push(EndpointState {
                    addr,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: node.is_local(address.node_name.as_ref()),
                });
            }
        }
        groups.push(group);
    }
    groups
}

/// The IPv4 cluster IPs of a Service, `Ok(None)` if it is not proxied
/// (headless, ExternalName, owned by another proxy, IPv6 only).
fn cluster_ips(
    service: &Service,
    spec: &ServiceSpec,
    built: &mut Built,
) -> Result<Option<Vec<Ipv4Addr>>, (RejectionKind, String)> {
    let other_proxy = service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL));
    if spec.type_.as_deref() == Some("ExternalName") || other_proxy {
        return Ok(None);
    }
    let listed = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter());
    let mut ips = BTreeSet::new();
    for text in listed {
        if text == "None" {
            return Ok(None);
        }
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ips.insert(ip);
            }
            Ok(IpAddr::V6(_)) => built.ipv6_skipped = true,
            Err(_) => {
                return Err((
                    RejectionKind::InvalidAddress,
                    format!("clusterIP '{text}' is not an IP address"),
                ))
            }
        }
    }
    if ips.is_empty() {
        if built.ipv6_skipped {
            return Ok(None);
        }
        return Err((RejectionKind::NoClusterIp, "no clusterIP".to_string()));
    }
    Ok(Some(ips.into_iter().collect()))
}

/// A Service port without its backends; `node_ports` says whether the
/// Service type has node ports at all.
fn service_port(
    port: &ServicePort,
    node_ports: bool,
) -> Result<ServicePortModel, (RejectionKind, String)> {
    let name = port.name.clone().unwrap_or_default();
    let invalid = |reason| (RejectionKind::InvalidPort, reason);
    let number = port_number(port.port)
        .ok_or_else(|| invalid(format!("port {} is out of range", port.port)))?;
    if let Some(IntOrString::Int(target)) = port.target_port {
        port_number(target)
            .ok_or_else(|| invalid(format!("targetPort {target} is out of range")))?;
    }
    let protocol = Protocol::parse(port.protocol.as_deref())?;
    // 0 or absent: not allocated (yet).
    let node_port = match port.node_port.filter(|p| *p != 0 && node_ports) {
        None => None,
        Some(value) => Some(
            port_number(value)
                .ok_or_else(|| invalid(format!("nodePort {value} is out of range")))?,
        ),
    };
    Ok(ServicePortModel {
        name,
        protocol,
        port: number,
        node_port,
        backends: Vec::new(),
        draining: Vec::new(),
    })
}

/// `externalIPs`, and the ingress IPs of a LoadBalancer that traffic reaches
/// with the IP still as destination (`ipMode: Proxy` ingress delivers to the
/// node itself, so kube-proxy ignores those; hostname-only ingress has no IP).
fn external_addrs(
    spec: &ServiceSpec,
    service: &Service,
    load_balancer: bool,
    built: &mut Built,
) -> Result<Vec<ExternalAddr>, (RejectionKind, String)> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .filter(|_| load_balancer)
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref())
        .map(|ip| (ip, "status.loadBalancer.ingress IP", true));
    let listed = spec
        .external_ips
        .iter()
        .flatten()
        .map(|ip| (ip, "externalIP", false))
        .chain(ingress);
    let mut addrs: BTreeMap<Ipv4Addr, bool> = BTreeMap::new();
    for (text, field, load_balancer) in listed {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => *addrs.entry(addr).or_default() |= load_balancer,
            Ok(IpAddr::V6(_)) => built.ipv6_skipped = true,
            Err(_) => {
                return Err((
                    RejectionKind::InvalidAddress,
                    format!("{field} '{text}' is not an IP address"),
                ))
            }
        }
    }
    Ok(addrs
        .into_iter()
        .map(|(addr, load_balancer)| ExternalAddr {
            addr,
            load_balancer,
        })
        .collect())
}

/// Whether a traffic policy field says `Local` (absent means `Cluster`).
fn policy_local(field: &str, value: Option<&str>) -> Result<bool, (RejectionKind, String)> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err((
            RejectionKind::InvalidTrafficPolicy,
            format!("{field} {other} is not Cluster or Local"),
        )),
    }
}

/// The IPv4 `loadBalancerSourceRanges`; an invalid entry rejects the
/// Service, since serving it without the entry would let everyone in.
fn source_ranges(
    spec: &ServiceSpec,
    built: &mut Built,
) -> Result<Option<Vec<Ipv4Cidr>>, (RejectionKind, String)> {
    let Some(listed) = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|l| !l.is_empty())
    else {
        return Ok(None);
    };
    let mut ranges = BTreeSet::new();
    for text in listed {
        let text = text.trim();
        if text.contains(':') {
            built.ipv6_skipped = true;
            continue;
        }
        let cidr = Ipv4Cidr::parse_lenient(text).map_err(|e| {
            (
                RejectionKind::InvalidAddress,
                format!("loadBalancerSourceRanges entry {e}"),
            )
        })?;
        ranges.insert(cidr);
    }
    Ok(Some(ranges.into_iter().collect()))
}

fn affinity_timeout(spec: &ServiceSpec) -> Result<Option<u32>, (RejectionKind, String)> {
    let invalid = |reason| (RejectionKind::InvalidSessionAffinity, reason);
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(secs) => u32::try_from(secs)
                    .ok()
                    .filter(|s| (1..=MAX_AFFINITY_TIMEOUT).contains(s))
                    .map(Some)
                    .ok_or_else(|| {
                        invalid(format!(
                            "sessionAffinityConfig timeoutSeconds {secs} is not within 1..={MAX_AFFINITY_TIMEOUT}"
                        ))
                    }),
            }
        }
        Some(other) => Err(invalid(format!("sessionAffinity {other} is not supported"))),
    }
}

/// The backends of one Service port: the endpoint port of the same name in
/// each group (its number may differ from group to group, which is how a
/// named targetPort resolves per pod). Ready endpoints serve; when none is
/// ready, serving terminating ones do, so a rollout's last pods keep working.
/// Returns (serving, draining): every other listed endpoint drains.
fn port_backends(
    groups: &[EndpointGroup],
    name: &str,
    protocol: Protocol,
) -> (Vec<Backend>, Vec<Backend>) {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for group in groups {
        let Some(target) = group
            .ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
        else {
            continue;
        };
        for endpoint in &group.endpoints {
            let backend = Backend {
                addr: SocketAddrV4::new(endpoint.addr, target.port),
                local: endpoint.local,
            };
            listed.insert(backend);
            if endpoint.ready {
                ready.insert(backend);
            } else if endpoint.serving && endpoint.terminating {
                terminating.insert(backend);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    let draining = listed.difference(&chosen).copied().collect();
    (chosen.into_iter().collect(), draining)
}

/// Builds the model of the Service `name` from its objects.
pub fn build(name: &ServiceName, objects: &ServiceObjects, node: &Node) -> Built {
    let mut built = Built::default();
    let Some(service) = &objects.service else {
        return built;
    };
    let object = format!("Service {name}");
    match build_service(name, service, objects, node, &mut built) {
        Ok(model) => built.service = model,
        Err((kind, reason)) => built.rejections.push(Rejection::new(object, kind, reason)),
    }
    built
}

fn build_service(
    name: &ServiceName,
    service: &Service,
    objects: &ServiceObjects,
    node: &Node,
    built: &mut Built,
) -> Result<Option<ServiceModel>, (RejectionKind, String)> {
    let spec = service
        .spec
        .as_ref()
        .ok_or((RejectionKind::InvalidDocument, "no spec".to_string()))?;
    let Some(cluster_ips) = cluster_ips(service, spec, built)? else {
        return Ok(None);
    };
    let type_ = spec.type_.as_deref();
    let load_balancer = type_ == Some("LoadBalancer");
    let node_ports = load_balancer || type_ == Some("NodePort");
    let mut ports: Vec<ServicePortModel> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| service_port(p, node_ports))
        .collect::<Result<_, _>>()?;
    let affinity_timeout = affinity_timeout(spec)?;
    let external_addrs = external_addrs(spec, service, load_balancer, built)?;
    // The API server allows Local only where traffic comes from outside.
    let external_policy_local = policy_local(
        "externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    )? && (node_ports || !external_addrs.is_empty());
    let internal_policy_local = policy_local(
        "internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|_| external_policy_local && node_ports)
        .filter(|p| *p != 0)
        .map(|value| {
            port_number(value).ok_or((
                RejectionKind::InvalidPort,
                format!("healthCheckNodePort {value} is out of range"),
            ))
        })
        .transpose()?;
    let source_ranges = if load_balancer {
        source_ranges(spec, built)?
    } else {
        None
    };
    // The API server mirrors Endpoints into slices; slices win.
    let groups: Vec<EndpointGroup> = if objects.slices.is_empty() {
        objects
            .endpoints
            .iter()
            .flat_map(|e| endpoints_groups(e, node, built))
            .collect()
    } else {
        objects
            .slices
            .iter()
            .filter_map(|s| slice_group(s, node, built))
            .collect()
    };
    for port in &mut ports {
        (port.backends, port.draining) = port_backends(&groups, &port.name, port.protocol);
    }
    Ok(Some(ServiceModel {
        name: name.clone(),
        cluster_ips,
        ports,
        affinity_timeout,
        external_addrs,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
        source_ranges,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::source::{
        group,
        manifest::{parse_stream, Loaded},
    };

    /// Builds every Service in `yaml` as this node ("node-a") sees it.
    fn model_all(yaml: &str) -> BTreeMap<ServiceName, Built> {
        let mut loaded = Loaded::default();
        parse_stream("test.yaml", yaml, &mut loaded);
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let (grouped, rejections) = group(loaded.objects);
        assert!(rejections.is_empty(), "{rejections:?}");
        let node = Node {
            name: Some("node-a".into()),
        };
        grouped
            .iter()
            .map(|(name, objects)| (name.clone(), build(name, objects, &node)))
            .collect()
    }

    /// The one proxied Service in `yaml`.
    fn model(yaml: &str) -> ServiceModel {
        let built = model_all(yaml);
        let mut proxied = built.into_values().filter_map(|b| {
            assert!(b.rejections.is_empty(), "{:?}", b.rejections);
            b.service
        });
        let service = proxied.next().expect("a proxied service");
        assert!(proxied.next().is_none());
        service
    }

    fn backends(port: &ServicePortModel) -> Vec<String> {
        port.backends
            .iter()
            .map(|b| format!("{}{}", b.addr, if b.local { " local" } else { "" }))
            .collect()
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  \
        - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n";

    fn slice(name: &str, endpoints: &str) -> String {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
             - {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{endpoints}"
        )
    }

    #[test]
    fn multi_port_service_gets_ready_backends_from_all_slices() {
        let service = model(&format!(
            "{SERVICE}{}{}",
            slice("web-a", "- {addresses: [10.244.1.2], conditions: {ready: true}, nodeName: node-a}\n- {addresses: [10.244.1.3], conditions: {ready: false}}\n"),
            slice("web-b", "- {addresses: [10.244.2.2], nodeName: node-b}\n- {addresses: [10.244.1.2], nodeName: node-a}\n"),
        ));
        assert_eq!(service.name, ServiceName::new("shop", "web"));
        assert_eq!(
            service.cluster_ips,
            ["10.96.0.10".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(service.affinity_timeout, None);
        let http = &service.ports[0];
        assert_eq!(
            (http.name.as_str(), http.protocol, http.port),
            ("http", Protocol::Tcp, 80)
        );
        // not-ready 10.244.1.3 is out; the duplicate 10.244.1.2 appears once;
        // the endpoint on node-a is local.
        assert_eq!(backends(http), ["10.244.1.2:8080 local", "10.244.2.2:8080"]);
        let dns = &service.ports[1];
        assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 53));
        assert_eq!(backends(dns), ["10.244.1.2:5353 local", "10.244.2.2:5353"]);
    }

    #[test]
    fn named_target_port_resolves_per_slice() {
        let service = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: web}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{name: http, port: 9090}, {name: other, port: 7070}]\n\
             endpoints: [{addresses: [10.244.1.3]}]\n",
        );
        assert_eq!(
            backends(&service.ports[0]),
            ["10.244.1.2:8080", "10.244.1.3:9090"]
        );
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let endpoints = "- {addresses: [10.244.1.2], conditions: {ready: false, serving: true, terminating: true}}\n\
             - {addresses: [10.244.1.3], conditions: {ready: false, serving: false, terminating: true}}\n\
             - {addresses: [10.244.1.4], conditions: {ready: false, serving: false}}\n";
        let service = model(&format!("{SERVICE}{}", slice("web-a", endpoints)));
        assert_eq!(
            backends(&service.ports[0]),
            ["10.244.1.2:8080"],
            "serving + terminating only"
        );
        let with_ready = format!("{endpoints}- {{addresses: [10.244.1.5]}}\n");
        let service = model(&format!("{SERVICE}{}", slice("web-a", &with_ready)));
        assert_eq!(
            backends(&service.ports[0]),
            ["10.244.1.5:8080"],
            "a ready one wins"
        );
        // The others keep the connections they have until they leave the slice.
        let draining: Vec<String> = service.ports[0]
            .draining
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(
            draining,
            ["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.4:8080"]
        );
        let none = "- {addresses: [10.244.1.4], conditions: {ready: false}}\n";
        let service = model(&format!("{SERVICE}{}", slice("web-a", none)));
        assert!(service.ports[0].backends.is_empty());
    }

    #[test]
    fn publish_not_ready_addresses_does_not_change_proxying() {
        let with_flag =
            SERVICE.replace("clusterIP:", "publishNotReadyAddresses: true\n  clusterIP:");
        let endpoints = "- {addresses: [10.244.1.2], conditions: {ready: false}}\n- {addresses: [10.244.1.3]}\n";
        let plain = model(&format!("{SERVICE}{}", slice("web-a", endpoints)));
        let flagged = model(&format!("{with_flag}{}", slice("web-a", endpoints)));
        assert_eq!(plain.ports, flagged.ports);
        assert_eq!(backends(&flagged.ports[0]), ["10.244.1.3:8080"]);
    }

    #[test]
    fn legacy_endpoints_serve_only_when_no_slice_exists() {
        let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: web, namespace: shop}\n\
            subsets:\n- addresses: [{ip: 192.168.7.7, nodeName: node-a}]\n  notReadyAddresses: [{ip: 192.168.7.8}]\n  \
            ports: [{name: http, port: 9090}]\n";
        let service = model(&format!("{SERVICE}{endpoints}"));
        assert_eq!(backends(&service.ports[0]), ["192.168.7.7:9090 local"]);
        assert!(service.ports[1].backends.is_empty());
        let service = model(&format!(
            "{SERVICE}{endpoints}{}",
            slice("web-a", "- {addresses: [10.244.1.2]}\n")
        ));
        assert_eq!(backends(&service.ports[0]), ["10.244.1.2:8080"]);
    }

    #[test]
    fn selectorless_service_with_hand_written_slice_reaches_outside_addresses() {
        let service = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: external-service}\n\
             spec: {clusterIP: 10.96.0.20, ports: [{name: https, port: 443, targetPort: 8443}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: external-service-1, labels: {kubernetes.io/service-name: external-service}}\n\
             addressType: IPv4\nports: [{name: https, port: 8443}]\n\
             endpoints: [{addresses: [192.168.50.10]}, {addresses: [192.168.50.11]}]\n",
        );
        assert_eq!(
            backends(&service.ports[0]),
            ["192.168.50.10:8443", "192.168.50.11:8443"]
        );
    }

    #[test]
    fn session_affinity_reaches_the_model_with_its_default_and_bounds() {
        let affinity = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
                 spec: {{clusterIP: 10.96.0.9, ports: [{{port: 80}}], {extra}}}\n"
            )
        };
        assert_eq!(
            model(&affinity("sessionAffinity: ClientIP")).affinity_timeout,
            Some(10_800)
        );
        let configured =
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}";
        assert_eq!(model(&affinity(configured)).affinity_timeout, Some(60));
        assert_eq!(
            model(&affinity("sessionAffinity: None")).affinity_timeout,
            None
        );
        for bad in [
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}",
            "sessionAffinity: Cookie",
        ] {
            let built = model_all(&affinity(bad)).into_values().next().unwrap();
            assert!(built.service.is_none(), "{bad}");
            assert_eq!(
                built.rejections[0].kind,
                RejectionKind::InvalidSessionAffinity,
                "{bad}"
            );
            assert!(built.rejections[0]
                .to_string()
                .starts_with("Service default/web: session"));
        }
    }

    #[test]
    fn headless_external_name_and_foreign_services_are_not_proxied() {
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: headless}\nspec: {clusterIP: None, ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: other, labels: {service.kubernetes.io/service-proxy-name: foo}}\n\
             spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n",
        );
        assert_eq!(built.len(), 3);
        for (name, b) in built {
            assert!(b.service.is_none(), "{name}");
            assert!(b.rejections.is_empty(), "{:?}", b.rejections);
        }
    }

    #[test]
    fn invalid_objects_are_rejected_with_reason_and_others_survive() {
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-ip}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-port}\nspec: {clusterIP: 10.96.0.4, ports: [{port: 70000}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-target}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80, targetPort: 0}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: sctp}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80, protocol: SCTP}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: no-ip}\nspec: {ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: good-1, labels: {kubernetes.io/service-name: good}}\naddressType: IPv4\n\
             ports: [{port: 8080}, {port: 8081, protocol: SCTP}]\nendpoints:\n- {addresses: [127.0.0.1]}\n- {addresses: [169.254.1.1]}\n\
             - {addresses: [224.0.0.5]}\n- {addresses: [not-an-ip]}\n- {addresses: [10.1.2.3]}\n",
        );
        let proxied: Vec<_> = built.values().filter_map(|b| b.service.as_ref()).collect();
        assert_eq!(proxied.len(), 1);
        assert_eq!(proxied[0].name.name, "good");
        assert_eq!(backends(&proxied[0].ports[0]), ["10.1.2.3:8080"]);
        let reasons: Vec<(RejectionKind, String)> = built
            .values()
            .flat_map(|b| &b.rejections)
            .map(|r| (r.kind, r.to_string()))
            .collect();
        use RejectionKind::*;
        let expect = [
            (
                InvalidAddress,
                "Service default/bad-ip: clusterIP '10.96.0.300' is not an IP address",
            ),
            (
                InvalidPort,
                "Service default/bad-port: port 70000 is out of range",
            ),
            (
                InvalidPort,
                "Service default/bad-target: targetPort 0 is out of range",
            ),
            (
                UnsupportedProtocol,
                "EndpointSlice default/good-1: protocol SCTP",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-1: endpoint address 127.0.0.1",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-1: endpoint address 169.254.1.1",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-1: endpoint address 224.0.0.5",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-1: endpoint address 'not-an-ip'",
            ),
            (NoClusterIp, "Service default/no-ip: no clusterIP"),
            (
                UnsupportedProtocol,
                "Service default/sctp: protocol SCTP is not supported yet",
            ),
        ];
        assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
        for ((kind, reason), (want_kind, prefix)) in reasons.iter().zip(expect) {
            assert_eq!(*kind, want_kind, "{reason}");
            assert!(
                reason.starts_with(prefix),
                "{reason} does not start with {prefix}"
            );
        }
    }

    #[test]
    fn dual_stack_keeps_ipv4_and_skips_ipv6() {
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
             spec: {clusterIP: 10.96.0.9, clusterIPs: [10.96.0.9, 'fd00::9'], ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\n\
             ports: [{port: 8080}]\nendpoints: [{addresses: ['fd00::1']}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: v6-only}\n\
             spec: {clusterIP: 'fd00::10', ipFamilies: [IPv6], ports: [{port: 80}]}\n",
        );
        let web = &built[&ServiceName::new("default", "web")];
        assert!(web.rejections.is_empty(), "{:?}", web.rejections);
        assert!(web.ipv6_skipped);
        let service = web.service.as_ref().unwrap();
        assert_eq!(service.cluster_ips.len(), 1);
        assert!(service.ports[0].backends.is_empty());
        let v6 = &built[&ServiceName::new("default", "v6-only")];
        assert!(v6.service.is_none() && v6.rejections.is_empty() && v6.ipv6_skipped);
    }

    /// A LoadBalancer as the API server and a cloud controller leave it.
    const LOAD_BALANCER: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalIPs: [198.51.100.7, 'fd00::7']\n  \
        externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  \
        loadBalancerSourceRanges: [' 203.0.113.77/24', 192.0.2.0/25, '2001:db8::/32']\n  ports:\n  \
        - {name: http, port: 80, targetPort: 8080, nodePort: 30080}\n  \
        - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}\n\
        status:\n  loadBalancer:\n    ingress:\n    - {ip: 192.0.2.10, ipMode: VIP}\n    \
        - {ip: 198.51.100.7}\n    - {hostname: lb.example.com}\n    - {ip: 192.0.2.11, ipMode: Proxy}\n";

    fn external(addr: &str, load_balancer: bool) -> ExternalAddr {
        ExternalAddr {
            addr: addr.parse().unwrap(),
            load_balancer,
        }
    }

    #[test]
    fn load_balancer_has_node_ports_external_addresses_policy_and_ranges() {
        let built = model_all(LOAD_BALANCER).into_values().next().unwrap();
        assert!(built.rejections.is_empty(), "{:?}", built.rejections);
        assert!(built.ipv6_skipped, "IPv6 externalIP and range are skipped");
        let service = built.service.unwrap();
        let node_ports: Vec<_> = service.ports.iter().map(|p| p.node_port).collect();
        assert_eq!(node_ports, [Some(30080), Some(30053)]);
        // An address both external and ingress is a LoadBalancer address;
        // hostname-only and ipMode Proxy ingress are not served here.
        assert_eq!(
            service.external_addrs,
            [external("192.0.2.10", true), external("198.51.100.7", true)]
        );
        assert!(service.external_policy_local);
        assert!(!service.internal_policy_local);
        assert_eq!(service.health_check_node_port, Some(32000));
        let ranges: Vec<String> = service
            .source_ranges
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(ranges, ["192.0.2.0/25", "203.0.113.0/24"]);
    }

    #[test]
    fn only_ipv6_source_ranges_let_no_ipv4_client_in() {
        let yaml = LOAD_BALANCER.replace(
            "[' 203.0.113.77/24', 192.0.2.0/25, '2001:db8::/32']",
            "['2001:db8::/32']",
        );
        assert_eq!(model(&yaml).source_ranges, Some(vec![]));
        let yaml = LOAD_BALANCER.replace(
            "loadBalancerSourceRanges: [' 203.0.113.77/24', 192.0.2.0/25, '2001:db8::/32']",
            "loadBalancerSourceRanges: []",
        );
        assert_eq!(
            model(&yaml).source_ranges,
            None,
            "empty list: no restriction"
        );
    }

    #[test]
    fn type_change_to_cluster_ip_drops_node_and_load_balancer_facts() {
        // A stale status and nodePorts left in a manifest do not survive the type.
        let cluster_ip = LOAD_BALANCER.replace("type: LoadBalancer", "type: ClusterIP");
        let service = model(&cluster_ip);
        assert!(service.ports.iter().all(|p| p.node_port.is_none()));
        assert_eq!(service.external_addrs, [external("198.51.100.7", false)]);
        assert_eq!(service.source_ranges, None);
        assert_eq!(service.health_check_node_port, None);
        assert!(
            service.external_policy_local,
            "externalIPs still come from outside"
        );
        // NodePort: node ports and health check, but no ingress and no ranges.
        let node_port = LOAD_BALANCER.replace("type: LoadBalancer", "type: NodePort");
        let service = model(&node_port);
        assert_eq!(service.ports[0].node_port, Some(30080));
        assert_eq!(service.external_addrs, [external("198.51.100.7", false)]);
        assert_eq!(service.source_ranges, None);
        assert_eq!(service.health_check_node_port, Some(32000));
    }

    #[test]
    fn traffic_policies_apply_only_where_they_mean_something() {
        let service = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
                 spec: {{clusterIP: 10.96.0.9, ports: [{{port: 80, nodePort: 30001}}], {extra}}}\n"
            )
        };
        let plain = model(&service(
            "externalTrafficPolicy: Local, internalTrafficPolicy: Local",
        ));
        assert!(!plain.external_policy_local, "a ClusterIP has no outside");
        assert!(plain.internal_policy_local);
        assert_eq!(plain.ports[0].node_port, None);
        let node_port = model(&service("type: NodePort, externalTrafficPolicy: Local"));
        assert!(node_port.external_policy_local);
        assert_eq!(node_port.health_check_node_port, None, "none allocated");
        let cluster = model(&service(
            "type: NodePort, externalTrafficPolicy: Cluster, healthCheckNodePort: 32000",
        ));
        assert!(!cluster.external_policy_local);
        assert_eq!(cluster.health_check_node_port, None);
        // LoadBalancer without allocated node ports.
        let no_node_ports = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
             spec: {type: LoadBalancer, allocateLoadBalancerNodePorts: false, clusterIP: 10.96.0.9, ports: [{port: 80}]}\n",
        );
        assert_eq!(no_node_ports.ports[0].node_port, None);
    }

    #[test]
    fn invalid_node_facts_reject_the_service_by_name() {
        let cases = [
            (
                "externalIPs: [198.51.100.300]",
                RejectionKind::InvalidAddress,
                "Service default/web: externalIP '198.51.100.300' is not an IP address",
            ),
            (
                "type: LoadBalancer, loadBalancerSourceRanges: [10.0.0.0/40]",
                RejectionKind::InvalidAddress,
                "Service default/web: loadBalancerSourceRanges entry '40' is not a prefix length",
            ),
            (
                "type: LoadBalancer, loadBalancerSourceRanges: [everyone]",
                RejectionKind::InvalidAddress,
                "Service default/web: loadBalancerSourceRanges entry 'everyone' is not a CIDR",
            ),
            (
                "type: NodePort, externalTrafficPolicy: Sometimes",
                RejectionKind::InvalidTrafficPolicy,
                "Service default/web: externalTrafficPolicy Sometimes",
            ),
            (
                "internalTrafficPolicy: Nearby",
                RejectionKind::InvalidTrafficPolicy,
                "Service default/web: internalTrafficPolicy Nearby",
            ),
            (
                "type: NodePort, ports: [{port: 80, nodePort: 70000}]",
                RejectionKind::InvalidPort,
                "Service default/web: nodePort 70000 is out of range",
            ),
        ];
        for (extra, kind, prefix) in cases {
            let yaml = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
                 spec: {{clusterIP: 10.96.0.9, {}}}\n",
                if extra.contains("ports:") {
                    extra.to_string()
                } else {
                    format!("ports: [{{port: 80}}], {extra}")
                }
            );
            let built = model_all(&yaml).into_values().next().unwrap();
            assert!(built.service.is_none(), "{extra}");
            assert_eq!(built.rejections.len(), 1, "{extra}");
            assert_eq!(built.rejections[0].kind, kind, "{extra}");
            let text = built.rejections[0].to_string();
            assert!(
                text.starts_with(prefix),
                "{text} does not start with {prefix}"
            );
        }
        let bad_ingress = LOAD_BALANCER.replace("{ip: 192.0.2.10, ipMode: VIP}", "{ip: not-an-ip}");
        let built = model_all(&bad_ingress).into_values().next().unwrap();
        assert!(built.rejections[0]
            .to_string()
            .starts_with("Service shop/web: status.loadBalancer.ingress IP 'not-an-ip'"));
    }

    #[test]
    fn endpoints_without_a_service_build_nothing() {
        let built = model_all(&slice("web-a", "- {addresses: [10.244.1.2]}\n"));
        let b = &built[&ServiceName::new("shop", "web")];
        assert!(b.service.is_none() && b.rejections.is_empty());
    }
}
