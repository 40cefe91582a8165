//! Manifests the suites and the demo feed to the agent: the Service comes
//! from a kubectl-written fixture; EndpointSlices are written the way the
//! EndpointSlice controller writes them.

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
