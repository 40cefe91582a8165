//! The Service rules: a Service's fields read as Kubernetes and kube-proxy
//! read them (cluster IPs, ports, external addresses, traffic policies,
//! source ranges, session affinity), each invalid value a rejection.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    port_number,
    types::{ExternalAddr, Protocol, ServicePortModel},
};
use crate::{
    cidr::IpCidr,
    source::{
        objects::{IpText, Service, ServicePort, ServiceSpec},
        RejectionKind,
    },
};
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset, and its bound.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// An address field's address, or the rejection naming `field`.
fn read_ip(ip: &IpText, field: &str) -> Result<IpAddr, (RejectionKind, String)> {
    ip.addr().ok_or_else(|| {
        (
            RejectionKind::InvalidAddress,
            format!("{field} '{ip}' is not an IP address"),
        )
    })
}

/// An `ipFamilies` entry as the family test of an address.
fn family_is_ipv4(family: &str) -> Result<bool, (RejectionKind, String)> {
    match family {
        "IPv4" => Ok(true),
        "IPv6" => Ok(false),
        other => Err((
            RejectionKind::InvalidIpFamily,
            format!("ipFamilies entry {other} is not IPv4 or IPv6"),
        )),
    }
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The cluster IPs of a Service, primary first, `Ok(None)` if it is not
/// proxied (headless, ExternalName, owned by another proxy). As the API
/// server validates them: `clusterIP` is `clusterIPs[0]`, one address per
/// family, `clusterIPs[i]` of family `ipFamilies[i]`, and both families
/// under `RequireDualStack`.
pub(super) fn cluster_ips(
    service: &Service,
    spec: &ServiceSpec,
) -> Result<Option<Vec<IpAddr>>, (RejectionKind, String)> {
    let other_proxy = service.metadata.labels.service_proxy_name;
    if spec.type_.as_deref() == Some("ExternalName") || other_proxy {
        return Ok(None);
    }
    let family_error = |reason: String| (RejectionKind::InvalidIpFamily, reason);
    let listed: &[IpText] = match (spec.cluster_ips.as_deref(), spec.cluster_ip.as_ref()) {
        (Some(ips), _) if !ips.is_empty() => ips,
        (_, Some(ip)) => std::slice::from_ref(ip),
        _ => &[],
    };
    if let (Some(ip), Some(first)) = (&spec.cluster_ip, listed.first()) {
        if ip != first {
            return Err((
                RejectionKind::InvalidAddress,
                format!("clusterIP '{ip}' is not clusterIPs[0] '{first}'"),
            ));
        }
    }
    if listed
        .iter()
        .any(|ip| matches!(ip, IpText::Other(text) if &**text == "None"))
    {
        return Ok(None);
    }
    let ips: Vec<IpAddr> = listed
        .iter()
        .map(|ip| read_ip(ip, "clusterIP"))
        .collect::<Result<_, _>>()?;
    if let [first, second, ..] = ips[..] {
        if ips.len() > 2 || first.is_ipv4() == second.is_ipv4() {
            return Err(family_error(format!(
                "clusterIPs {} hold more than one address of a family",
                ips.iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if !families.is_empty() {
        if ips.len() > families.len() {
            return Err(family_error(format!(
                "{} clusterIPs for ipFamilies [{}]",
                ips.len(),
                families
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for (ip, family) in ips.iter().zip(families) {
            if family_is_ipv4(family)? != ip.is_ipv4() {
                return Err(family_error(format!(
                    "clusterIP {ip} is {}, not ipFamilies' {family}",
                    family_name(*ip)
                )));
            }
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") if ips.len() == 2 => {}
        Some("RequireDualStack") => {
            return Err(family_error(format!(
                "ipFamilyPolicy RequireDualStack with {} clusterIP",
                ips.len()
            )))
        }
        Some(other) => {
            return Err(family_error(format!(
                "ipFamilyPolicy {other} is not SingleStack, PreferDualStack or RequireDualStack"
            )))
        }
    }
    if ips.is_empty() {
        return Err((RejectionKind::NoClusterIp, "no clusterIP".to_string()));
    }
    Ok(Some(ips))
}

/// A Service port without its backends; `node_ports` says whether the
/// Service type has node ports at all.
pub(super) fn service_port(
    port: &ServicePort,
    node_ports: bool,
) -> Result<ServicePortModel, (RejectionKind, String)> {
    let name = port.name.as_deref().unwrap_or_default().to_string();
    let invalid = |reason| (RejectionKind::InvalidPort, reason);
    let number = port_number(port.port)
        .ok_or_else(|| invalid(format!("port {} is out of range", port.port)))?;
    if let Some(target) = port.target_port {
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
pub(super) fn external_addrs(
    spec: &ServiceSpec,
    service: &Service,
    load_balancer: bool,
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
    let mut addrs: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for (ip, field, load_balancer) in listed {
        *addrs.entry(read_ip(ip, field)?).or_default() |= load_balancer;
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
pub(super) fn policy_local(
    field: &str,
    value: Option<&str>,
) -> Result<bool, (RejectionKind, String)> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err((
            RejectionKind::InvalidTrafficPolicy,
            format!("{field} {other} is not Cluster or Local"),
        )),
    }
}

/// The `loadBalancerSourceRanges` of both families; an invalid entry
/// rejects the Service, since serving it without the entry would let
/// everyone in.
pub(super) fn source_ranges(
    spec: &ServiceSpec,
) -> Result<Option<Vec<IpCidr>>, (RejectionKind, String)> {
    let Some(listed) = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|l| !l.is_empty())
    else {
        return Ok(None);
    };
    let mut ranges = BTreeSet::new();
    for text in listed {
        let cidr = IpCidr::parse_lenient(text.trim()).map_err(|e| {
            (
                RejectionKind::InvalidAddress,
                format!("loadBalancerSourceRanges entry {e}"),
            )
        })?;
        ranges.insert(cidr);
    }
    Ok(Some(ranges.into_iter().collect()))
}

pub(super) fn affinity_timeout(spec: &ServiceSpec) -> Result<Option<u32>, (RejectionKind, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_yaml::{model, model_all};

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

    fn spec(fields: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}], {fields}}}\n")
    }

    fn ips(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn cluster_ips_of_both_families_are_kept_primary_first() {
        let dual = "clusterIP: 'fd00:10:96::a', clusterIPs: ['fd00:10:96::a', 10.96.0.10], \
                    ipFamilies: [IPv6, IPv4], ipFamilyPolicy: RequireDualStack";
        assert_eq!(
            model(&spec(dual)).cluster_ips,
            ips(&["fd00:10:96::a", "10.96.0.10"])
        );
        let v6_only = "clusterIP: 'fd00:10:96::a', ipFamilies: [IPv6], ipFamilyPolicy: SingleStack";
        assert_eq!(model(&spec(v6_only)).cluster_ips, ips(&["fd00:10:96::a"]));
        // PreferDualStack where only one family was allocated; no ipFamilies
        // (an older object or a hand-written manifest): no family check.
        let preferred =
            "clusterIPs: [10.96.0.10], ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack";
        assert_eq!(model(&spec(preferred)).cluster_ips, ips(&["10.96.0.10"]));
        let unlabelled = "clusterIPs: [10.96.0.10, 'fd00:10:96::a']";
        assert_eq!(model(&spec(unlabelled)).cluster_ips.len(), 2);
        // Headless in either family's list.
        let headless = "clusterIP: None, clusterIPs: [None], ipFamilies: [IPv6]";
        let built = model_all(&spec(headless)).into_values().next().unwrap();
        assert!(built.service.is_none() && built.rejections.is_empty());
    }

    #[test]
    fn cluster_ips_disagreeing_with_their_families_are_rejected_by_name() {
        use RejectionKind::{InvalidAddress, InvalidIpFamily};
        let cases = [
            (
                "clusterIP: 'fd00:10:96::a', ipFamilies: [IPv4]",
                InvalidIpFamily,
                "clusterIP fd00:10:96::a is IPv6, not ipFamilies' IPv4",
            ),
            (
                "clusterIPs: [10.96.0.10, 'fd00:10:96::a'], ipFamilies: [IPv6, IPv4]",
                InvalidIpFamily,
                "clusterIP 10.96.0.10 is IPv4, not ipFamilies' IPv6",
            ),
            (
                "clusterIPs: [10.96.0.10, 10.96.0.11], ipFamilies: [IPv4, IPv4]",
                InvalidIpFamily,
                "clusterIPs 10.96.0.10, 10.96.0.11 hold more than one address of a family",
            ),
            (
                "clusterIPs: [10.96.0.10, 'fd00:10:96::a', 10.96.0.11]",
                InvalidIpFamily,
                "clusterIPs 10.96.0.10, fd00:10:96::a, 10.96.0.11 hold more than one",
            ),
            (
                "clusterIPs: [10.96.0.10, 'fd00:10:96::a'], ipFamilies: [IPv4]",
                InvalidIpFamily,
                "2 clusterIPs for ipFamilies [IPv4]",
            ),
            (
                "clusterIP: 10.96.0.10, ipFamilies: [IPv4, IPv6], ipFamilyPolicy: RequireDualStack",
                InvalidIpFamily,
                "ipFamilyPolicy RequireDualStack with 1 clusterIP",
            ),
            (
                "clusterIP: 10.96.0.10, ipFamilyPolicy: Sometimes",
                InvalidIpFamily,
                "ipFamilyPolicy Sometimes is not",
            ),
            (
                "clusterIP: 10.96.0.10, ipFamilies: [IPv5]",
                InvalidIpFamily,
                "ipFamilies entry IPv5 is not IPv4 or IPv6",
            ),
            (
                "clusterIP: 10.96.0.10, clusterIPs: [10.96.0.11]",
                InvalidAddress,
                "clusterIP '10.96.0.10' is not clusterIPs[0] '10.96.0.11'",
            ),
            (
                "clusterIPs: ['fd00:10:96::zz']",
                InvalidAddress,
                "clusterIP 'fd00:10:96::zz' is not an IP address",
            ),
        ];
        for (fields, kind, reason) in cases {
            let built = model_all(&spec(fields)).into_values().next().unwrap();
            assert!(built.service.is_none(), "{fields}");
            assert_eq!(built.rejections.len(), 1, "{fields}");
            assert_eq!(built.rejections[0].kind, kind, "{fields}");
            let text = built.rejections[0].to_string();
            let prefix = format!("Service default/web: {reason}");
            assert!(
                text.starts_with(&prefix),
                "{text} does not start with {prefix}"
            );
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

    /// A LoadBalancer as the API server and a cloud controller leave it.
    const LOAD_BALANCER: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalIPs: [198.51.100.7, 'fd00::7']\n  \
        externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  \
        loadBalancerSourceRanges: [' 203.0.113.77/24', 192.0.2.0/25, 'fd00:203::77/32']\n  ports:\n  \
        - {name: http, port: 80, targetPort: 8080, nodePort: 30080}\n  \
        - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}\n\
        status:\n  loadBalancer:\n    ingress:\n    - {ip: 192.0.2.10, ipMode: VIP}\n    \
        - {ip: 198.51.100.7}\n    - {hostname: lb.example.com}\n    - {ip: 192.0.2.11, ipMode: Proxy}\n    \
        - {ip: 'fd00:192::10'}\n";

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
        let service = built.service.unwrap();
        let node_ports: Vec<_> = service.ports.iter().map(|p| p.node_port).collect();
        assert_eq!(node_ports, [Some(30080), Some(30053)]);
        // An address both external and ingress is a LoadBalancer address;
        // hostname-only and ipMode Proxy ingress are not served here.
        assert_eq!(
            service.external_addrs,
            [
                external("192.0.2.10", true),
                external("198.51.100.7", true),
                external("fd00::7", false),
                external("fd00:192::10", true)
            ]
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
        assert_eq!(ranges, ["192.0.2.0/25", "203.0.113.0/24", "fd00:203::/32"]);
    }

    #[test]
    fn source_ranges_of_one_family_restrict_and_an_empty_list_does_not() {
        let yaml = LOAD_BALANCER.replace(
            "[' 203.0.113.77/24', 192.0.2.0/25, 'fd00:203::77/32']",
            "['fd00:203::/32']",
        );
        // Kept as listed: the plan gives the IPv4 frontends none of them,
        // so no IPv4 client gets in.
        assert_eq!(
            model(&yaml).source_ranges,
            Some(vec!["fd00:203::/32".parse().unwrap()])
        );
        let yaml = LOAD_BALANCER.replace(
            "loadBalancerSourceRanges: [' 203.0.113.77/24', 192.0.2.0/25, 'fd00:203::77/32']",
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
        let external_ips = [external("198.51.100.7", false), external("fd00::7", false)];
        assert_eq!(service.external_addrs, external_ips);
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
        assert_eq!(service.external_addrs, external_ips);
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
            // A bad port costs that port; here the Service's only one.
            let served = built.service.as_ref().is_some_and(|s| !s.ports.is_empty());
            assert!(!served, "{extra}");
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
}
