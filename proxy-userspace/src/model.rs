//! The typed, validated view of one Service and its endpoints (DESIGN.md §1).
//! Invalid objects are rejected here, with a reason, and never reach the maps.
//! Every source feeds this module, so each Kubernetes rule lives here once.

use std::{
    collections::BTreeSet,
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

use crate::source::{Rejection, RejectionKind, ServiceName, ServiceObjects};

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
    /// Serving backends, sorted and unique.
    pub backends: Vec<Backend>,
}

/// A Service the dataplane proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub name: ServiceName,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortModel>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
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

fn service_port(port: &ServicePort) -> Result<(String, Protocol, u16), (RejectionKind, String)> {
    let name = port.name.clone().unwrap_or_default();
    let invalid = |reason| (RejectionKind::InvalidPort, reason);
    let number = port_number(port.port)
        .ok_or_else(|| invalid(format!("port {} is out of range", port.port)))?;
    if let Some(IntOrString::Int(target)) = port.target_port {
        port_number(target)
            .ok_or_else(|| invalid(format!("targetPort {target} is out of range")))?;
    }
    let protocol = Protocol::parse(port.protocol.as_deref())?;
    Ok((name, protocol, number))
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
fn port_backends(groups: &[EndpointGroup], name: &str, protocol: Protocol) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
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
            if endpoint.ready {
                ready.insert(backend);
            } else if endpoint.serving && endpoint.terminating {
                terminating.insert(backend);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
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
    let ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .map(service_port)
        .collect::<Result<_, _>>()?;
    let affinity_timeout = affinity_timeout(spec)?;
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
    let ports = ports
        .into_iter()
        .map(|(port_name, protocol, port)| ServicePortModel {
            backends: port_backends(&groups, &port_name, protocol),
            name: port_name,
            protocol,
            port,
        })
        .collect();
    Ok(Some(ServiceModel {
        name: name.clone(),
        cluster_ips,
        ports,
        affinity_timeout,
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

    #[test]
    fn endpoints_without_a_service_build_nothing() {
        let built = model_all(&slice("web-a", "- {addresses: [10.244.1.2]}\n"));
        let b = &built[&ServiceName::new("shop", "web")];
        assert!(b.service.is_none() && b.rejections.is_empty());
    }
}
