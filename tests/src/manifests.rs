//! Manifests the suites and the demo feed to the agent: the Service comes
//! from a kubectl-written fixture; EndpointSlices are written the way the
//! EndpointSlice controller writes them. Builders below write other Services
//! with a fixed clusterIP, and endpoints as controllers or people write them.

use std::net::Ipv4Addr;

use proxy_userspace::{
    cidr::Ipv4Cidr,
    source::{cluster_ip, manifest},
};

/// The `echo` Service (TCP 80 → 8080, UDP 53 → 5353), as kubectl wrote it.
pub const ECHO_SERVICE: &str = include_str!("../fixtures/echo-service.yaml");
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The ClusterIP the agent will allocate for a manifest without one.
pub fn allocated_cluster_ip(service_yaml: &str) -> Ipv4Addr {
    let mut loaded = manifest::Loaded::default();
    manifest::parse_stream("fixture", service_yaml, &mut loaded);
    let cidr: Ipv4Cidr = SERVICE_CIDR.parse().expect("valid CIDR");
    cluster_ip::allocate(&mut loaded.objects.services, cidr);
    let spec = loaded.objects.services[0].spec.as_ref().expect("spec");
    spec.cluster_ip
        .as_deref()
        .expect("allocated")
        .parse()
        .expect("IPv4")
}

/// An EndpointSlice for `echo` with `(address, ready)` endpoints.
pub fn echo_endpoint_slice(endpoints: &[(Ipv4Addr, bool)]) -> String {
    let mut yaml = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-abcde\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: echo\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n\
         addressType: IPv4\nports:\n- name: 80-8080\n  port: 8080\n  protocol: TCP\n- name: 53-5353\n  port: 5353\n  protocol: UDP\nendpoints:\n",
    );
    for (addr, ready) in endpoints {
        yaml.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}\n"
        ));
    }
    yaml
}

/// `managed-by` of slices the EndpointSlice controller writes.
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// A Service `default/NAME` of `type_` with an explicit `cluster_ip`,
/// selecting pods labelled `app: <selector>` (`None`: no selector, its
/// endpoints are written by hand); `ports` are `spec.ports` items as YAML
/// flow mappings.
pub fn service(
    name: &str,
    type_: &str,
    cluster_ip: Ipv4Addr,
    selector: Option<&str>,
    ports: &[&str],
) -> String {
    let selector = selector.map_or_else(String::new, |app| format!("  selector: {{app: {app}}}\n"));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: {type_}\n  clusterIP: {cluster_ip}\n{selector}  ports: [{}]\n",
        ports.join(", ")
    )
}

/// An ExternalName Service `default/NAME`: a DNS alias, nothing to proxy.
pub fn external_name_service(name: &str, external_name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{type: ExternalName, externalName: {external_name}}}\n"
    )
}

/// A port of an EndpointSlice or Endpoints subset: name, protocol, number.
pub type EndpointPort<'a> = (&'a str, &'a str, u16);

/// `ports` as the items of a YAML flow sequence.
fn port_items(ports: &[EndpointPort]) -> String {
    let items: Vec<String> = ports
        .iter()
        .map(|(name, protocol, port)| {
            format!("{{name: {name}, port: {port}, protocol: {protocol}}}")
        })
        .collect();
    items.join(", ")
}

/// An endpoint address with its EndpointSlice conditions.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    pub fn ready(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Running but failing its readiness probe.
    pub fn not_ready(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            ready: false,
            serving: false,
            terminating: false,
        }
    }

    /// Shutting down; `serving` while it still passes its readiness probe.
    pub fn terminating(addr: Ipv4Addr, serving: bool) -> Self {
        Self {
            addr,
            ready: false,
            serving,
            terminating: true,
        }
    }
}

/// An EndpointSlice `default/SLICE` for Service `service`, labelled as
/// kube-proxy selects them, managed by `managed_by`.
pub fn endpoint_slice(
    service: &str,
    slice: &str,
    managed_by: &str,
    ports: &[EndpointPort],
    endpoints: &[Endpoint],
) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: {service}\n    endpointslice.kubernetes.io/managed-by: {managed_by}\n\
         addressType: IPv4\nports: [{}]\nendpoints:\n",
        port_items(ports)
    );
    for e in endpoints {
        yaml.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.addr, e.ready, e.serving, e.terminating
        ));
    }
    yaml
}

/// Legacy `Endpoints` for Service `default/SERVICE`: one subset, every
/// address ready.
pub fn legacy_endpoints(service: &str, addresses: &[Ipv4Addr], ports: &[EndpointPort]) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("{{ip: {a}}}")).collect();
    format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {service}, namespace: default}}\n\
         subsets:\n- addresses: [{}]\n  ports: [{}]\n",
        addresses.join(", "),
        port_items(ports)
    )
}
