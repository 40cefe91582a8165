//! Manifests the suites and the demo feed to the agent: the Service comes
//! from a kubectl-written fixture; EndpointSlices are written the way the
//! EndpointSlice controller writes them. Builders below write other Services
//! with a fixed clusterIP, and endpoints as controllers or people write them.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use proxy_userspace::source::{
    cluster_ip::{self, ServiceCidrs},
    manifest,
    objects::IpText,
};

/// The `echo` Service (TCP 80 → 8080, UDP 53 → 5353), as kubectl wrote it.
pub const ECHO_SERVICE: &str = include_str!("../fixtures/echo-service.yaml");
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// `web`, NodePort 30080 → 8080, as kubectl wrote it.
pub const NODEPORT_WEB: &str = include_str!("../fixtures/kubectl-nodeport-web-30080.yaml");
/// `web-lb`, LoadBalancer 80/TCP → 8080 and 53/UDP → 5353, as kubectl wrote it.
pub const LOADBALANCER_WEB_LB: &str = include_str!("../fixtures/kubectl-loadbalancer-web-lb.yaml");

/// Writes (or replaces) `dir/file`: write, then rename, so an agent never
/// reads half a file. The temporary name is no manifest.
pub fn write_manifest(dir: &Path, file: &str, yaml: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    fs::write(&tmp, yaml)?;
    fs::rename(tmp, dir.join(file))
}

/// The ClusterIP the agent will allocate for a manifest without one.
pub fn allocated_cluster_ip(service_yaml: &str) -> Ipv4Addr {
    let mut loaded = manifest::Loaded::default();
    manifest::parse_stream("fixture", service_yaml, &mut loaded);
    let cidrs: ServiceCidrs = SERVICE_CIDR.parse().expect("valid CIDR");
    cluster_ip::allocate(&mut loaded.objects.services, cidrs);
    let spec = loaded.objects.services[0].spec.as_ref().expect("spec");
    match spec.cluster_ip.as_ref().expect("allocated") {
        IpText::V4(addr) => *addr,
        other => panic!("allocated {other}, not IPv4"),
    }
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

/// A Service read from kubectl output, completed field by field the way the
/// API server (clusterIP, nodePorts, healthCheckNodePort) and a cloud
/// controller (`status.loadBalancer.ingress`) complete it.
pub struct ServiceManifest(Service);

impl ServiceManifest {
    fn from_kubectl(yaml: &str, cluster_ip: Ipv4Addr) -> Self {
        let mut service: Service = serde_norway::from_str(yaml).expect("kubectl fixture");
        spec_of(&mut service).cluster_ip = Some(cluster_ip.to_string());
        Self(service)
    }

    /// `echo` (TCP 80 → 8080, UDP 53 → 5353) on `cluster_ips` (see
    /// [`Self::cluster_ips`]).
    pub fn echo(cluster_ips: &[IpAddr]) -> Self {
        let service: Service = serde_norway::from_str(ECHO_SERVICE).expect("kubectl fixture");
        Self(service).cluster_ips(cluster_ips)
    }

    /// The Service on `cluster_ips`, the first the primary: dual-stack
    /// (`PreferDualStack`) with one of each family, else single-stack,
    /// `ipFamilies` as the API server fills them in.
    pub fn cluster_ips(mut self, cluster_ips: &[IpAddr]) -> Self {
        let spec = spec_of(&mut self.0);
        let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string();
        spec.cluster_ip = cluster_ips.first().map(IpAddr::to_string);
        spec.cluster_ips = Some(cluster_ips.iter().map(IpAddr::to_string).collect());
        spec.ip_families = Some(cluster_ips.iter().map(family).collect());
        let policy = if cluster_ips.len() > 1 {
            "PreferDualStack"
        } else {
            "SingleStack"
        };
        spec.ip_family_policy = Some(policy.into());
        self
    }

    /// `web`: NodePort 30080/TCP → 8080 behind `cluster_ip`.
    pub fn nodeport_web(cluster_ip: Ipv4Addr) -> Self {
        Self::from_kubectl(NODEPORT_WEB, cluster_ip)
    }

    /// `web-lb`: 80/TCP → 8080 and 53/UDP → 5353 behind `cluster_ip`, on
    /// `node_ports` (in port order) and announced at `ingress`.
    pub fn loadbalancer_web_lb(
        cluster_ip: Ipv4Addr,
        node_ports: [u16; 2],
        ingress: Ipv4Addr,
    ) -> Self {
        let mut manifest = Self::from_kubectl(LOADBALANCER_WEB_LB, cluster_ip);
        let ports = spec_of(&mut manifest.0)
            .ports
            .as_mut()
            .expect("fixture ports");
        for (port, node_port) in ports.iter_mut().zip(node_ports) {
            port.node_port = Some(node_port.into());
        }
        manifest.load_balancer_ingress(&[ingress.into()])
    }

    pub fn external_ips<A: Into<IpAddr> + Copy>(mut self, ips: &[A]) -> Self {
        let ips = ips.iter().map(|&ip| ip.into().to_string()).collect();
        spec_of(&mut self.0).external_ips = Some(ips);
        self
    }

    /// `status.loadBalancer.ingress`: the addresses a cloud controller
    /// announced.
    pub fn load_balancer_ingress(mut self, ips: &[IpAddr]) -> Self {
        let ingress = ips
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..Default::default()
            })
            .collect();
        let status = self.0.status.get_or_insert_with(Default::default);
        status
            .load_balancer
            .get_or_insert_with(Default::default)
            .ingress = Some(ingress);
        self
    }

    /// `externalTrafficPolicy: Local`; for a LoadBalancer the API server
    /// also allocates `health_check_node_port`.
    pub fn local_traffic(mut self, health_check_node_port: Option<u16>) -> Self {
        let spec = spec_of(&mut self.0);
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = health_check_node_port.map(i32::from);
        self
    }

    /// `sessionAffinity: ClientIP` with `timeout_seconds`.
    pub fn client_ip_affinity(mut self, timeout_seconds: i32) -> Self {
        let spec = spec_of(&mut self.0);
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
            client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                timeout_seconds: Some(timeout_seconds),
            }),
        });
        self
    }

    /// `loadBalancerSourceRanges`: CIDRs allowed to reach the load balancer.
    pub fn source_ranges(mut self, cidrs: &[&str]) -> Self {
        spec_of(&mut self.0).load_balancer_source_ranges =
            Some(cidrs.iter().map(|c| c.to_string()).collect());
        self
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.0).expect("Service serializes")
    }
}

fn spec_of(service: &mut Service) -> &mut k8s_openapi::api::core::v1::ServiceSpec {
    service.spec.get_or_insert_with(Default::default)
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
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`: the node the pod runs on.
    pub node_name: Option<&'static str>,
}

impl Endpoint {
    pub fn ready(addr: impl Into<IpAddr>) -> Self {
        Self {
            addr: addr.into(),
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
        }
    }

    /// The same endpoint, on node `node`.
    pub fn on(self, node: &'static str) -> Self {
        Self {
            node_name: Some(node),
            ..self
        }
    }

    /// Running but failing its readiness probe.
    pub fn not_ready(addr: impl Into<IpAddr>) -> Self {
        Self {
            addr: addr.into(),
            ready: false,
            serving: false,
            terminating: false,
            node_name: None,
        }
    }

    /// Shutting down; `serving` while it still passes its readiness probe.
    pub fn terminating(addr: impl Into<IpAddr>, serving: bool) -> Self {
        Self {
            addr: addr.into(),
            ready: false,
            serving,
            terminating: true,
            node_name: None,
        }
    }
}

/// An EndpointSlice `default/SLICE` for Service `service`, labelled as
/// kube-proxy selects them, managed by `managed_by`; its `addressType` is
/// its endpoints' family (IPv6 if the first is), one per slice as the
/// controller writes them.
pub fn endpoint_slice(
    service: &str,
    slice: &str,
    managed_by: &str,
    ports: &[EndpointPort],
    endpoints: &[Endpoint],
) -> String {
    let family = match endpoints.first() {
        Some(e) if e.addr.is_ipv6() => "IPv6",
        _ => "IPv4",
    };
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: {service}\n    endpointslice.kubernetes.io/managed-by: {managed_by}\n\
         addressType: {family}\nports: [{}]\nendpoints:\n",
        port_items(ports)
    );
    for e in endpoints {
        yaml.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.addr, e.ready, e.serving, e.terminating
        ));
        if let Some(node) = e.node_name {
            yaml.push_str(&format!("  nodeName: {node}\n"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What kxdp's manifest source makes of `yaml`; nothing may be rejected.
    fn load(yaml: &str) -> manifest::Loaded {
        let mut loaded = manifest::Loaded::default();
        manifest::parse_stream("test.yaml", yaml, &mut loaded);
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        loaded
    }

    #[test]
    fn completed_kubectl_services_keep_every_field() {
        let vip = Ipv4Addr::new(10, 96, 0, 80);
        let ingress = Ipv4Addr::new(192, 168, 60, 10);
        let yaml = ServiceManifest::loadbalancer_web_lb(vip, [30081, 30053], ingress)
            .external_ips(&[Ipv4Addr::new(192, 168, 60, 20)])
            .local_traffic(Some(32000))
            .source_ranges(&["192.168.50.0/24"])
            .to_yaml();
        let loaded = load(&yaml);
        let service = &loaded.objects.services[0];
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.cluster_ip, Some(IpText::new("10.96.0.80")));
        let ports = spec.ports.as_ref().unwrap();
        let node_ports: Vec<_> = ports
            .iter()
            .map(|p| (p.protocol.as_deref(), p.node_port))
            .collect();
        assert_eq!(
            node_ports,
            [(Some("TCP"), Some(30081)), (Some("UDP"), Some(30053))]
        );
        assert_eq!(
            spec.external_ips,
            Some([IpText::new("192.168.60.20")].into())
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.health_check_node_port, Some(32000));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(["192.168.50.0/24".into()].into())
        );
        let status = service
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap();
        assert_eq!(
            status.ingress.as_ref().unwrap()[0].ip,
            Some(IpText::new("192.168.60.10"))
        );

        let loaded = load(&ServiceManifest::nodeport_web(vip).to_yaml());
        let spec = loaded.objects.services[0].spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.cluster_ip, Some(IpText::new("10.96.0.80")));
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30080));
    }

    #[test]
    fn slice_endpoints_carry_their_node() {
        let endpoints = [
            Endpoint::ready(Ipv4Addr::new(10, 1, 1, 2)).on("node-a"),
            Endpoint::ready(Ipv4Addr::new(10, 1, 2, 2)).on("node-b"),
            Endpoint::ready(Ipv4Addr::new(10, 1, 2, 3)),
        ];
        let yaml = endpoint_slice(
            "web",
            "web-abcde",
            SLICE_CONTROLLER,
            &[("80-8080", "TCP", 8080)],
            &endpoints,
        );
        let loaded = load(&yaml);
        let nodes: Vec<_> = loaded.objects.endpoint_slices[0]
            .endpoints
            .iter()
            .map(|e| e.node_name.as_deref())
            .collect();
        assert_eq!(nodes, [Some("node-a"), Some("node-b"), None]);
    }
}
