//! The typed, validated view of one Service and its endpoints (docs/ARCHITECTURE.md, "Data flow").
//! Invalid objects are rejected here, with a reason, and never reach the maps.
//! Every source feeds this module, so each Kubernetes rule lives here once:
//! the Service's in `service.rs`, the endpoints' in `endpoints.rs`; [`build`]
//! assembles them into the [`types`].

mod endpoints;
mod service;
#[cfg(test)]
pub(crate) mod test_yaml;
pub mod types;

use crate::source::{
    objects::{Service, ServicePort},
    Rejection, RejectionKind, ServiceName, ServiceObjects,
};

use self::{
    endpoints::{endpoints_groups, port_backends, slice_group, EndpointGroup},
    service::{
        affinity_timeout, cluster_ips, external_addrs, policy_local, service_port, source_ranges,
    },
    types::{Built, Node, ServiceModel, ServicePortModel, ServiceType},
};

/// A port field's value as a port number; `None` for 0 or out of range.
fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// A Service port as its manifest names it: `port 99/SCTP "sctp"`.
fn port_label(port: &ServicePort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("port {}/{protocol} {name:?}", port.port),
        None => format!("port {}/{protocol}", port.port),
    }
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
    let Some(cluster_ips) = cluster_ips(service, spec)? else {
        return Ok(None);
    };
    let type_ = spec.type_.as_deref();
    let load_balancer = type_ == Some("LoadBalancer");
    let node_ports = load_balancer || type_ == Some("NodePort");
    // A port that cannot be served costs that port alone, as in kube-proxy.
    let mut ports: Vec<ServicePortModel> = Vec::new();
    for port in spec.ports.iter().flatten() {
        match service_port(port, node_ports) {
            Ok(model) => ports.push(model),
            Err((kind, reason)) => built.rejections.push(Rejection::new(
                format!("Service {name}"),
                kind,
                format!(
                    "{reason} ({}): that port is skipped, the others are served",
                    port_label(port)
                ),
            )),
        }
    }
    let affinity_timeout = affinity_timeout(spec)?;
    let external_addrs = external_addrs(spec, service, load_balancer)?;
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
        source_ranges(spec)?
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
    // Kept in the plan for as long as the Service lives: no room for ports
    // it does not have (collecting reserves four).
    ports.shrink_to_fit();
    let service_type = if load_balancer {
        ServiceType::LoadBalancer
    } else if node_ports {
        ServiceType::NodePort
    } else {
        ServiceType::ClusterIp
    };
    Ok(Some(ServiceModel {
        name: name.clone(),
        service_type,
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
    use super::*;
    use crate::model::test_yaml::{backends, model_all};

    #[test]
    fn invalid_objects_are_rejected_with_reason_and_others_survive() {
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-ip}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-port}\nspec: {clusterIP: 10.96.0.4, ports: [{port: 70000}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-target}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80, targetPort: 0}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: icmp}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80, protocol: ICMP}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: no-ip}\nspec: {ports: [{port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: good-1, labels: {kubernetes.io/service-name: good}}\naddressType: IPv4\n\
             ports: [{port: 8080}, {port: 8081, protocol: ICMP}]\nendpoints:\n- {addresses: [127.0.0.1]}\n- {addresses: [169.254.1.1]}\n\
             - {addresses: [224.0.0.5]}\n- {addresses: [not-an-ip]}\n- {addresses: [10.1.2.3]}\n- {addresses: ['fd00:10:244::5']}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: good-2, labels: {kubernetes.io/service-name: good}}\naddressType: IPv6\n\
             ports: [{port: 8080}]\nendpoints:\n- {addresses: ['::1']}\n- {addresses: ['::']}\n- {addresses: ['fe80::1']}\n\
             - {addresses: ['ff02::1']}\n- {addresses: ['::ffff:10.1.2.4']}\n- {addresses: [10.1.2.5]}\n- {addresses: ['fd00:10:244::6']}\n",
        );
        // A Service whose only port cannot be served is proxied on none.
        let proxied: Vec<_> = built
            .values()
            .filter_map(|b| b.service.as_ref())
            .filter(|s| !s.ports.is_empty())
            .collect();
        assert_eq!(proxied.len(), 1);
        assert_eq!(proxied[0].name.name, "good");
        // An IPv4 Service: the IPv6 slice's endpoint is kept in the model,
        // and no frontend of the Service is of its family (plan).
        assert_eq!(
            backends(&proxied[0].ports[0]),
            ["10.1.2.3:8080", "[fd00:10:244::6]:8080"]
        );
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
                "EndpointSlice default/good-1: protocol ICMP",
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
            (
                InvalidAddress,
                "EndpointSlice default/good-1: endpoint address fd00:10:244::5 is IPv6 in an addressType IPv4 slice",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address ::1 is loopback",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address :: is loopback, link-local, multicast, unspecified",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address fe80::1 is",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address ff02::1 is",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address ::ffff:10.1.2.4 is loopback, link-local, multicast, unspecified or IPv4-mapped",
            ),
            (
                InvalidAddress,
                "EndpointSlice default/good-2: endpoint address 10.1.2.5 is IPv4 in an addressType IPv6 slice",
            ),
            (
                UnsupportedProtocol,
                "Service default/icmp: protocol ICMP is not TCP, UDP or SCTP",
            ),
            (NoClusterIp, "Service default/no-ip: no clusterIP"),
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
    fn a_port_that_cannot_be_served_costs_only_that_port() {
        // The `dns` Service a new user tried: DNS over TCP and UDP, and an
        // SCTP port beside them; then a port out of range.
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\n\
             spec:\n  clusterIP: 10.96.0.10\n  ports:\n  \
             - {name: dns-tcp, port: 53, protocol: TCP}\n  \
             - {name: dns, port: 53, protocol: UDP}\n  \
             - {name: sctp, port: 99, protocol: SCTP}\n  \
             - {port: 70000}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: dns-1, labels: {kubernetes.io/service-name: dns}}\naddressType: IPv4\n\
             ports: [{name: dns-tcp, port: 53, protocol: TCP}, {name: dns, port: 53, protocol: UDP}, \
             {name: sctp, port: 99, protocol: SCTP}]\n\
             endpoints: [{addresses: [10.244.1.5]}]\n",
        );
        let dns = &built[&ServiceName::new("default", "dns")];
        let model = dns.service.as_ref().expect("the Service is proxied");
        use crate::model::types::Protocol;
        let served: Vec<(u16, Protocol)> =
            model.ports.iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(
            served,
            [
                (53, Protocol::Tcp),
                (53, Protocol::Udp),
                (99, Protocol::Sctp)
            ]
        );
        assert!(model.ports.iter().all(|p| p.backends.len() == 1));
        let reasons: Vec<(RejectionKind, String)> = dns
            .rejections
            .iter()
            .map(|r| (r.kind, r.to_string()))
            .collect();
        assert_eq!(
            reasons,
            [(
                RejectionKind::InvalidPort,
                "Service default/dns: port 70000 is out of range (port 70000/TCP): \
                     that port is skipped, the others are served"
                    .to_string()
            ),]
        );
    }

    #[test]
    fn a_dual_stack_service_takes_the_endpoints_of_both_families_slices() {
        // `kubectl create service clusterip web --tcp=80:8080`, made dual-stack.
        let built = model_all(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {app: web}}\n\
             spec:\n  clusterIP: 10.96.0.9\n  clusterIPs: [10.96.0.9, 'fd00:10:96::9']\n  \
             ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: PreferDualStack\n  \
             ports:\n  - {name: 80-8080, port: 80, protocol: TCP, targetPort: 8080}\n  \
             selector: {app: web}\n  type: ClusterIP\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-v4, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\n\
             ports: [{name: 80-8080, port: 8080}]\nendpoints: [{addresses: [10.244.1.5], nodeName: node-a}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\n\
             ports: [{name: 80-8080, port: 8080}]\nendpoints: [{addresses: ['fd00:10:244::5'], nodeName: node-a}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: v6-only}\n\
             spec: {clusterIP: 'fd00:10:96::10', ipFamilies: [IPv6], ports: [{port: 80}]}\n",
        );
        let web = &built[&ServiceName::new("default", "web")];
        assert!(web.rejections.is_empty(), "{:?}", web.rejections);
        let service = web.service.as_ref().unwrap();
        let cluster_ips: Vec<String> = service
            .cluster_ips
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(cluster_ips, ["10.96.0.9", "fd00:10:96::9"]);
        assert_eq!(
            backends(&service.ports[0]),
            ["10.244.1.5:8080 local", "[fd00:10:244::5]:8080 local"]
        );
        let v6 = built[&ServiceName::new("default", "v6-only")]
            .service
            .as_ref()
            .unwrap();
        assert_eq!(
            v6.cluster_ips,
            ["fd00:10:96::10".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
