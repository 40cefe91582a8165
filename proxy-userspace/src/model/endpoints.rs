//! Endpoint reading: EndpointSlices and legacy Endpoints become groups of
//! ports and endpoint states, and each Service port picks its serving and
//! draining backends from them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use super::{
    port_number,
    types::{Backend, Built, Node, Protocol},
};
use crate::source::{
    objects::{self, EndpointSlice, Endpoints, IpText},
    Rejection, RejectionKind, ServiceName,
};

/// A port as EndpointSlices and Endpoints publish it.
struct EndpointPort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// An endpoint address with the conditions that decide whether it serves.
struct EndpointState {
    addr: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// The endpoints of one EndpointSlice or Endpoints subset, sharing ports.
#[derive(Default)]
pub(super) struct EndpointGroup {
    ports: Vec<EndpointPort>,
    endpoints: Vec<EndpointState>,
}

/// Whether an address is one no endpoint may have: loopback, link-local,
/// unspecified, multicast (IPv4: link-local multicast only) or, in IPv6,
/// an IPv4-mapped address.
fn unusable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(addr) => {
            let link_local_multicast = addr.octets()[..3] == [224, 0, 0];
            addr.is_loopback()
                || addr.is_link_local()
                || link_local_multicast
                || addr.is_unspecified()
        }
        IpAddr::V6(addr) => {
            addr.is_loopback()
                || addr.is_unspecified()
                || addr.is_unicast_link_local()
                || addr.is_multicast()
                || addr.to_ipv4_mapped().is_some()
        }
    }
}

/// Why an endpoint address cannot be a backend, if it cannot. `ipv4`: the
/// family its slice holds (`None`: legacy Endpoints, either family).
fn endpoint_address(ip: &IpText, ipv4: Option<bool>) -> Result<IpAddr, String> {
    let Some(addr) = ip.addr() else {
        return Err(format!("endpoint address '{ip}' is not an IP address"));
    };
    if ipv4.is_some_and(|ipv4| ipv4 != addr.is_ipv4()) {
        let (is, slice) = if addr.is_ipv4() {
            ("IPv4", "IPv6")
        } else {
            ("IPv6", "IPv4")
        };
        return Err(format!(
            "endpoint address {addr} is {is} in an addressType {slice} slice"
        ));
    }
    if unusable(addr) {
        return Err(format!(
            "endpoint address {addr} is loopback, link-local, multicast, unspecified or IPv4-mapped"
        ));
    }
    Ok(addr)
}

fn endpoint_port(port: &objects::EndpointPort) -> Result<EndpointPort, (RejectionKind, String)> {
    let protocol = Protocol::parse(port.protocol.as_deref())?;
    let number = port.port.and_then(port_number).ok_or((
        RejectionKind::InvalidPort,
        "port missing or out of range".to_string(),
    ))?;
    Ok(EndpointPort {
        name: port.name.as_deref().unwrap_or_default().to_string(),
        protocol,
        port: number,
    })
}

/// Reads the ports and addresses of one object, recording each one skipped.
struct GroupReader<'a> {
    object: String,
    /// The family the object holds: `Some(true)` IPv4, `Some(false)` IPv6,
    /// `None` either (legacy Endpoints).
    ipv4: Option<bool>,
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

    fn address(&mut self, ip: &IpText) -> Option<IpAddr> {
        endpoint_address(ip, self.ipv4)
            .map_err(|reason| self.reject(RejectionKind::InvalidAddress, reason))
            .ok()
    }
}

pub(super) fn slice_group(
    slice: &EndpointSlice,
    node: &Node,
    built: &mut Built,
) -> Option<EndpointGroup> {
    let ipv4 = match slice.address_type.as_deref().unwrap_or_default() {
        "IPv4" => true,
        "IPv6" => false,
        // FQDN slices are deprecated and never proxied.
        _ => return None,
    };
    let mut reader = GroupReader {
        object: format!("EndpointSlice {}", ServiceName::of(&slice.metadata)),
        ipv4: Some(ipv4),
        built,
    };
    let mut group = EndpointGroup::default();
    for port in slice.ports.iter().flatten() {
        reader.port(&mut group, endpoint_port(port));
    }
    for endpoint in &slice.endpoints {
        let Some(addr) = endpoint.address.as_ref().and_then(|a| reader.address(a)) else {
            continue;
        };
        let conditions = endpoint.conditions.unwrap_or_default();
        // API contract: unknown readiness means ready, unknown serving means
        // "as ready", unknown terminating means not terminating.
        let ready = conditions.ready.unwrap_or(true);
        group.endpoints.push(EndpointState {
            addr,
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
            local: node.is_local(endpoint.node_name.as_deref()),
        });
    }
    Some(group)
}

pub(super) fn endpoints_groups(
    endpoints: &Endpoints,
    node: &Node,
    built: &mut Built,
) -> Vec<EndpointGroup> {
    let mut reader = GroupReader {
        object: format!("Endpoints {}", ServiceName::of(&endpoints.metadata)),
        ipv4: None,
        built,
    };
    let mut groups = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let mut group = EndpointGroup::default();
        for port in subset.ports.iter().flatten() {
            reader.port(&mut group, endpoint_port(port));
        }
        // Legacy Endpoints list only ready addresses as serving.
        for address in subset.addresses.iter().flatten() {
            if let Some(addr) = reader.address(&address.ip) {
                group.endpoints.push(EndpointState {
                    addr,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: node.is_local(address.node_name.as_deref()),
                });
            }
        }
        groups.push(group);
    }
    groups
}

/// The backends of one Service port: the endpoint port of the same name in
/// each group (its number may differ from group to group, which is how a
/// named targetPort resolves per pod). Ready endpoints serve; when none is
/// ready, serving terminating ones do, so a rollout's last pods keep working.
/// Returns (serving, draining): every other listed endpoint drains.
/// An address listed more than once (slices overlap while the control
/// plane moves endpoints between them) is one backend, as its first
/// listing says, as kube-proxy takes it: two listings disagreeing on the
/// node were two backends of one address, which the Maglev table counted
/// twice.
pub(super) fn port_backends(
    groups: &[EndpointGroup],
    name: &str,
    protocol: Protocol,
) -> (Vec<Backend>, Vec<Backend>) {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    let mut listed = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for group in groups {
        let Some(target) = group
            .ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
        else {
            continue;
        };
        for endpoint in &group.endpoints {
            let addr = SocketAddr::new(endpoint.addr, target.port);
            if !addresses.insert(addr) {
                continue;
            }
            let backend = Backend {
                addr,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_yaml::{backends, model, model_all};

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
            ["10.96.0.10".parse::<IpAddr>().unwrap()]
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

    /// The libFuzzer target `api_objects`' find: one address on two nodes
    /// made two backends, and a Maglev table of both.
    #[test]
    fn an_address_listed_twice_is_one_backend_as_first_listed() {
        let service = model(&format!(
            "{SERVICE}{}{}",
            slice("web-a", "- {addresses: [10.244.2.2], nodeName: node-a}\n"),
            slice(
                "web-b",
                "- {addresses: [10.244.2.2], nodeName: node-b}\n- {addresses: [10.244.2.3], conditions: {ready: false}}\n- {addresses: [10.244.2.3]}\n"
            ),
        ));
        assert_eq!(backends(&service.ports[0]), ["10.244.2.2:8080 local"]);
        assert!(service.ports[0]
            .draining
            .iter()
            .any(|b| b.addr.ip().to_string() == "10.244.2.3"));
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
    fn endpoints_without_a_service_build_nothing() {
        let built = model_all(&slice("web-a", "- {addresses: [10.244.1.2]}\n"));
        let b = &built[&ServiceName::new("shop", "web")];
        assert!(b.service.is_none() && b.rejections.is_empty());
    }
}
