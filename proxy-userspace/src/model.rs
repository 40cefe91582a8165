//! The typed, validated view of Services and their endpoints (DESIGN.md §1).
//! Invalid objects are rejected here, with a reason, and never reach the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::{
    api::core::v1::{Service, ServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use proxy_common::maps::{PROTO_TCP, PROTO_UDP};

use crate::source::{Objects, Rejection, RejectionKind};

/// Label by which another proxy claims a Service (kube-proxy skips those too).
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
use crate::source::SERVICE_NAME_LABEL;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' protocol field; absent means TCP.
    fn parse(field: Option<&str>) -> Result<Self, String> {
        match field.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            other => Err(format!("protocol {other} is not supported yet")),
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

/// One port of a Service with the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortModel {
    /// The port's name ("" for an unnamed single port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Ready backends, sorted and unique.
    pub backends: Vec<SocketAddrV4>,
}

/// A Service the dataplane proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortModel>,
}

#[derive(Debug, Default)]
pub struct Model {
    /// Sorted by namespace/name.
    pub services: Vec<ServiceModel>,
    pub rejections: Vec<Rejection>,
}

/// A port as EndpointSlices and Endpoints publish it.
struct EndpointPortModel {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// The endpoints of one EndpointSlice or Endpoints subset.
#[derive(Default)]
struct EndpointGroup {
    ports: Vec<EndpointPortModel>,
    ready: Vec<Ipv4Addr>,
}

fn qualified(namespace: Option<&String>, name: Option<&String>) -> String {
    format!(
        "{}/{}",
        namespace.map_or("default", String::as_str),
        name.map_or("", String::as_str)
    )
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

/// Endpoint groups by "namespace/service".
fn endpoint_groups(
    objects: &Objects,
    rejections: &mut Vec<Rejection>,
) -> BTreeMap<String, Vec<EndpointGroup>> {
    let mut groups: BTreeMap<String, Vec<EndpointGroup>> = BTreeMap::new();
    for slice in &objects.endpoint_slices {
        let meta = &slice.metadata;
        let object = format!(
            "EndpointSlice {}",
            qualified(meta.namespace.as_ref(), meta.name.as_ref())
        );
        let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            rejections.push(Rejection::new(
                object,
                RejectionKind::MissingServiceLabel,
                format!("no {SERVICE_NAME_LABEL} label"),
            ));
            continue;
        };
        // IPv6 and FQDN slices are not proxied yet.
        if slice.address_type != "IPv4" {
            continue;
        }
        let mut group = EndpointGroup::default();
        for port in slice.ports.iter().flatten() {
            let parsed = Protocol::parse(port.protocol.as_deref()).and_then(|protocol| {
                let number = port
                    .port
                    .and_then(port_number)
                    .ok_or("port missing or out of range")?;
                Ok(EndpointPortModel {
                    name: port.name.clone().unwrap_or_default(),
                    protocol,
                    port: number,
                })
            });
            match parsed {
                Ok(p) => group.ports.push(p),
                Err(reason) => rejections.push(Rejection::new(
                    object.clone(),
                    RejectionKind::InvalidDocument,
                    reason,
                )),
            }
        }
        for endpoint in &slice.endpoints {
            // A missing `ready` condition means ready (API contract).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            // Addresses are fungible; consumers use the first (as kube-proxy does).
            let Some(first) = endpoint.addresses.first() else {
                continue;
            };
            match endpoint_address(first) {
                Ok(addr) if ready => group.ready.push(addr),
                Ok(_) => {}
                Err(reason) => rejections.push(Rejection::new(
                    object.clone(),
                    RejectionKind::InvalidDocument,
                    reason,
                )),
            }
        }
        groups
            .entry(qualified(meta.namespace.as_ref(), Some(service)))
            .or_default()
            .push(group);
    }
    for endpoints in &objects.endpoints {
        let meta = &endpoints.metadata;
        let key = qualified(meta.namespace.as_ref(), meta.name.as_ref());
        // The API server mirrors Endpoints into slices; slices win.
        if groups.contains_key(&key) {
            continue;
        }
        let object = format!("Endpoints {key}");
        let mut subsets = Vec::new();
        for subset in endpoints.subsets.iter().flatten() {
            let mut group = EndpointGroup::default();
            for port in subset.ports.iter().flatten() {
                let parsed = Protocol::parse(port.protocol.as_deref()).and_then(|protocol| {
                    let number = port_number(port.port).ok_or("port out of range")?;
                    Ok(EndpointPortModel {
                        name: port.name.clone().unwrap_or_default(),
                        protocol,
                        port: number,
                    })
                });
                match parsed {
                    Ok(p) => group.ports.push(p),
                    Err(reason) => rejections.push(Rejection::new(
                        object.clone(),
                        RejectionKind::InvalidDocument,
                        reason,
                    )),
                }
            }
            for address in subset.addresses.iter().flatten() {
                match endpoint_address(&address.ip) {
                    Ok(addr) => group.ready.push(addr),
                    Err(reason) => rejections.push(Rejection::new(
                        object.clone(),
                        RejectionKind::InvalidDocument,
                        reason,
                    )),
                }
            }
            subsets.push(group);
        }
        groups.insert(key, subsets);
    }
    groups
}

/// The IPv4 cluster IPs of a Service, `Ok(None)` if it is not proxied
/// (headless, ExternalName, owned by another proxy).
fn cluster_ips(service: &Service) -> Result<Option<Vec<Ipv4Addr>>, String> {
    let spec = service.spec.as_ref().ok_or("no spec")?;
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
            // IPv6 families are accepted but not proxied yet.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return Err(format!("clusterIP '{text}' is not an IP address")),
        }
    }
    if ips.is_empty() {
        return Err("no IPv4 clusterIP".to_string());
    }
    Ok(Some(ips.into_iter().collect()))
}

fn service_port(port: &ServicePort) -> Result<(String, Protocol, u16), String> {
    let name = port.name.clone().unwrap_or_default();
    let number =
        port_number(port.port).ok_or_else(|| format!("port {} is out of range", port.port))?;
    if let Some(IntOrString::Int(target)) = port.target_port {
        port_number(target).ok_or_else(|| format!("targetPort {target} is out of range"))?;
    }
    let protocol = Protocol::parse(port.protocol.as_deref())?;
    Ok((name, protocol, number))
}

/// Builds the model from whatever a source delivered.
pub fn build(objects: &Objects) -> Model {
    let mut rejections = Vec::new();
    let groups = endpoint_groups(objects, &mut rejections);
    let mut services = Vec::new();
    for service in &objects.services {
        let meta = &service.metadata;
        let key = qualified(meta.namespace.as_ref(), meta.name.as_ref());
        let reject = |reason: String| {
            Rejection::new(
                format!("Service {key}"),
                RejectionKind::InvalidDocument,
                reason,
            )
        };
        let ips = match cluster_ips(service) {
            Ok(Some(ips)) => ips,
            Ok(None) => continue,
            Err(reason) => {
                rejections.push(reject(reason));
                continue;
            }
        };
        let declared = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        let ports: Result<Vec<_>, String> = declared
            .iter()
            .copied()
            .flatten()
            .map(service_port)
            .collect();
        let ports = match ports {
            Ok(ports) => ports,
            Err(reason) => {
                rejections.push(reject(reason));
                continue;
            }
        };
        let service_groups = groups.get(&key).map(Vec::as_slice).unwrap_or_default();
        let ports = ports
            .into_iter()
            .map(|(name, protocol, port)| {
                // Each Service port is served by the endpoint port of the same
                // name; its number may differ from slice to slice.
                let backends: BTreeSet<SocketAddrV4> = service_groups
                    .iter()
                    .flat_map(|group| {
                        let target = group
                            .ports
                            .iter()
                            .find(|p| p.name == name && p.protocol == protocol);
                        target
                            .into_iter()
                            .flat_map(|t| group.ready.iter().map(|a| SocketAddrV4::new(*a, t.port)))
                    })
                    .collect();
                ServicePortModel {
                    name,
                    protocol,
                    port,
                    backends: backends.into_iter().collect(),
                }
            })
            .collect();
        services.push(ServiceModel {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            cluster_ips: ips,
            ports,
        });
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Model {
        services,
        rejections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::{parse_stream, Loaded};

    fn model(yaml: &str) -> Model {
        let mut loaded = Loaded::default();
        parse_stream("test.yaml", yaml, &mut loaded);
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        build(&loaded.objects)
    }

    fn backends(port: &ServicePortModel) -> Vec<String> {
        port.backends.iter().map(ToString::to_string).collect()
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
        let m = model(&format!(
            "{SERVICE}{}{}",
            slice("web-a", "- {addresses: [10.244.1.2], conditions: {ready: true}}\n- {addresses: [10.244.1.3], conditions: {ready: false}}\n"),
            slice("web-b", "- {addresses: [10.244.2.2]}\n- {addresses: [10.244.1.2]}\n"),
        ));
        assert!(m.rejections.is_empty(), "{:?}", m.rejections);
        let service = &m.services[0];
        assert_eq!(
            (service.namespace.as_str(), service.name.as_str()),
            ("shop", "web")
        );
        assert_eq!(
            service.cluster_ips,
            ["10.96.0.10".parse::<Ipv4Addr>().unwrap()]
        );
        let http = &service.ports[0];
        assert_eq!(
            (http.name.as_str(), http.protocol, http.port),
            ("http", Protocol::Tcp, 80)
        );
        // not-ready 10.244.1.3 is out; the duplicate 10.244.1.2 appears once.
        assert_eq!(backends(http), ["10.244.1.2:8080", "10.244.2.2:8080"]);
        let dns = &service.ports[1];
        assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 53));
        assert_eq!(backends(dns), ["10.244.1.2:5353", "10.244.2.2:5353"]);
    }

    #[test]
    fn legacy_endpoints_serve_only_when_no_slice_exists() {
        let endpoints = "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: web, namespace: shop}\n\
            subsets:\n- addresses: [{ip: 192.168.7.7}]\n  notReadyAddresses: [{ip: 192.168.7.8}]\n  \
            ports: [{name: http, port: 9090}]\n";
        let m = model(&format!("{SERVICE}{endpoints}"));
        assert_eq!(backends(&m.services[0].ports[0]), ["192.168.7.7:9090"]);
        assert!(m.services[0].ports[1].backends.is_empty());
        let m = model(&format!(
            "{SERVICE}{endpoints}{}",
            slice("web-a", "- {addresses: [10.244.1.2]}\n")
        ));
        assert_eq!(backends(&m.services[0].ports[0]), ["10.244.1.2:8080"]);
    }

    #[test]
    fn headless_external_name_and_foreign_services_are_not_proxied() {
        let m = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: headless}\nspec: {clusterIP: None, ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: other, labels: {service.kubernetes.io/service-proxy-name: foo}}\n\
             spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n",
        );
        assert!(m.services.is_empty());
        assert!(m.rejections.is_empty(), "{:?}", m.rejections);
    }

    #[test]
    fn invalid_objects_are_rejected_with_reason_and_others_survive() {
        let m = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-ip}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-port}\nspec: {clusterIP: 10.96.0.4, ports: [{port: 70000}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-target}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80, targetPort: 0}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: sctp}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80, protocol: SCTP}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: no-ip}\nspec: {ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: good-1, labels: {kubernetes.io/service-name: good}}\naddressType: IPv4\n\
             ports: [{port: 8080}]\nendpoints:\n- {addresses: [127.0.0.1]}\n- {addresses: [169.254.1.1]}\n\
             - {addresses: [224.0.0.5]}\n- {addresses: [not-an-ip]}\n- {addresses: [10.1.2.3]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: orphan}\naddressType: IPv4\nendpoints: []\n",
        );
        let names: Vec<_> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(backends(&m.services[0].ports[0]), ["10.1.2.3:8080"]);
        let reasons: Vec<String> = m.rejections.iter().map(ToString::to_string).collect();
        let expect = [
            "EndpointSlice default/good-1: endpoint address 127.0.0.1",
            "EndpointSlice default/good-1: endpoint address 169.254.1.1",
            "EndpointSlice default/good-1: endpoint address 224.0.0.5",
            "EndpointSlice default/good-1: endpoint address 'not-an-ip'",
            "EndpointSlice default/orphan: no kubernetes.io/service-name label",
            "Service default/bad-ip: clusterIP '10.96.0.300' is not an IP address",
            "Service default/bad-port: port 70000 is out of range",
            "Service default/bad-target: targetPort 0 is out of range",
            "Service default/sctp: protocol SCTP is not supported yet",
            "Service default/no-ip: no IPv4 clusterIP",
        ];
        assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
        for (reason, prefix) in reasons.iter().zip(expect) {
            assert!(
                reason.starts_with(prefix),
                "{reason} does not start with {prefix}"
            );
        }
    }

    #[test]
    fn dual_stack_keeps_ipv4_and_ignores_ipv6_slices() {
        let m = model(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
             spec: {clusterIP: 10.96.0.9, clusterIPs: [10.96.0.9, 'fd00::9'], ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\n\
             ports: [{port: 8080}]\nendpoints: [{addresses: ['fd00::1']}]\n",
        );
        assert!(m.rejections.is_empty(), "{:?}", m.rejections);
        assert_eq!(m.services[0].cluster_ips.len(), 1);
        assert!(m.services[0].ports[0].backends.is_empty());
    }
}
