//! NodePort, LoadBalancer and external IPs through node A's NIC over IPv6,
//! with the real agent on the dual-stack two-node topology (`two_node`), in
//! two of the three modes: an IPv6-only (SingleStack IPv6) Service and a
//! dual-stack one, whose IPv4 family is checked at the same time (the
//! IPv4-only mode is `nodeport_netns`). Backends answer with the client
//! address they saw, so SNAT to node A's IPv6 address and client address
//! preservation are visible. Real TCP and UDP. Needs root; fails, never
//! skips, without.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use kxdp_testbed::{
    agent::Agent,
    manifests::{endpoint_slice, Endpoint, EndpointPort, ServiceManifest, SLICE_CONTROLLER},
    two_node::{ipv6_twin, NodeId, TwoNode, EXTERNAL_IP, EXT_IP, LB_INGRESS_IP},
};

const WAIT: Duration = Duration::from_secs(10);
const NO_ANSWER: Duration = Duration::from_secs(1);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 10);
const WEB_NODE_PORT: u16 = 30080;
/// `web-lb`'s node ports (TCP 80, UDP 53) and its health-check port.
const LB_NODE_PORTS: [u16; 2] = [30081, 30053];
const HEALTH_CHECK_PORT: u16 = 32000;

/// Which families the Service has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ipv6Only,
    DualStack,
}

impl Mode {
    /// The Service's ClusterIPs, the primary first.
    fn cluster_ips(self) -> Vec<IpAddr> {
        let v6 = ipv6_twin(CLUSTER_IP).into();
        match self {
            Mode::Ipv6Only => vec![v6],
            Mode::DualStack => vec![CLUSTER_IP.into(), v6],
        }
    }

    /// The families the Service serves: `false` IPv4, `true` IPv6.
    fn families(self) -> Vec<bool> {
        match self {
            Mode::Ipv6Only => vec![true],
            Mode::DualStack => vec![false, true],
        }
    }
}

/// `addr` in the family `v6` says: itself, or its IPv6 twin.
fn in_family(addr: Ipv4Addr, v6: bool) -> IpAddr {
    if v6 {
        ipv6_twin(addr).into()
    } else {
        addr.into()
    }
}

fn target(addr: Ipv4Addr, port: u16, v6: bool) -> String {
    SocketAddr::new(in_family(addr, v6), port).to_string()
}

/// A topology with pod `a1` on node A and `b1` on node B.
fn topology() -> TwoNode {
    let mut t = TwoNode::new().expect("two-node topology");
    t.add_pod(NodeId::A, "a1", 2).unwrap();
    t.add_pod(NodeId::B, "b1", 2).unwrap();
    t
}

/// The Service `web` (NodePort) or `web-lb` as `mode` makes it, and its
/// EndpointSlices (one per family) over pods `on` (`a1`, `b1`).
fn write_service(t: &TwoNode, mode: Mode, service: ServiceManifest, name: &str, on: &[&str]) {
    let service = service.cluster_ips(&mode.cluster_ips());
    t.write_manifest("service.yaml", &service.to_yaml())
        .unwrap();
    write_slices(t, mode, name, on);
}

fn write_slices(t: &TwoNode, mode: Mode, name: &str, on: &[&str]) {
    let ports: &[EndpointPort] = if name == "web" {
        &[("80-8080", "TCP", 8080)]
    } else {
        &[("80-8080", "TCP", 8080), ("53-5353", "UDP", 5353)]
    };
    for v6 in [false, true] {
        let file = format!("slice-{}.yaml", if v6 { "v6" } else { "v4" });
        if !mode.families().contains(&v6) {
            continue;
        }
        let endpoints: Vec<Endpoint> = on
            .iter()
            .map(|pod| {
                let node = if pod.starts_with('a') {
                    "node-a"
                } else {
                    "node-b"
                };
                let pod = t.pod(pod);
                let addr: IpAddr = if v6 {
                    pod.ip6.unwrap().into()
                } else {
                    pod.ip.into()
                };
                Endpoint::ready(addr).on(node)
            })
            .collect();
        let slice_name = format!("{name}-{}", if v6 { "v6k2p" } else { "v4k2p" });
        let slice = endpoint_slice(name, &slice_name, SLICE_CONTROLLER, ports, &endpoints);
        t.write_manifest(&file, &slice).unwrap();
    }
}

fn web_lb() -> ServiceManifest {
    ServiceManifest::loadbalancer_web_lb(CLUSTER_IP, LB_NODE_PORTS, LB_INGRESS_IP)
        .load_balancer_ingress(&[LB_INGRESS_IP.into(), ipv6_twin(LB_INGRESS_IP).into()])
}

fn start_agent(t: &TwoNode) -> Agent {
    t.start_agent_attached(WAIT).unwrap()
}

fn apply(agent: &mut Agent, change: impl FnOnce()) {
    agent.synced_after(change, WAIT).unwrap();
}

fn answers(t: &TwoNode, target: &str, n: usize) -> BTreeSet<(String, IpAddr)> {
    t.ext_answers(target, n)
}

fn backends(seen: BTreeSet<(String, IpAddr)>) -> BTreeSet<String> {
    seen.into_iter().map(|(backend, _)| backend).collect()
}

fn nodeport_with_policy_cluster_reaches_local_and_remote_backends(mode: Mode) {
    let t = topology();
    write_service(
        &t,
        mode,
        ServiceManifest::nodeport_web(CLUSTER_IP),
        "web",
        &["a1", "b1"],
    );
    let _agent = start_agent(&t);
    for v6 in mode.families() {
        let node_a = in_family(NodeId::A.nic_ip(), v6);
        let seen = answers(&t, &target(NodeId::A.nic_ip(), WEB_NODE_PORT, v6), 30);
        // The local pod sees the client itself; the remote one sees node A,
        // which SNATed the flow (to its address of the family).
        assert_eq!(
            seen,
            BTreeSet::from([("a1".into(), in_family(EXT_IP, v6)), ("b1".into(), node_a)]),
            "{mode:?}, IPv6: {v6}"
        );
    }
}

#[test]
fn ipv6_only_nodeport_with_policy_cluster_reaches_local_and_remote_backends() {
    nodeport_with_policy_cluster_reaches_local_and_remote_backends(Mode::Ipv6Only);
}

#[test]
fn dual_stack_nodeport_with_policy_cluster_reaches_local_and_remote_backends() {
    nodeport_with_policy_cluster_reaches_local_and_remote_backends(Mode::DualStack);
}

fn load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp(mode: Mode) {
    let t = topology();
    let external: [IpAddr; 2] = [EXTERNAL_IP.into(), ipv6_twin(EXTERNAL_IP).into()];
    write_service(
        &t,
        mode,
        web_lb().external_ips(&external),
        "web-lb",
        &["a1", "b1"],
    );
    let _agent = start_agent(&t);
    let both = BTreeSet::from(["a1".to_string(), "b1".to_string()]);
    for v6 in mode.families() {
        for target in [
            target(LB_INGRESS_IP, 80, v6),
            target(EXTERNAL_IP, 80, v6),
            target(NodeId::A.nic_ip(), LB_NODE_PORTS[0], v6),
        ] {
            assert_eq!(
                backends(answers(&t, &target, 20)),
                both,
                "{mode:?}: {target}"
            );
        }
        // UDP, and the reply comes from the address and port the client used.
        for target in [target(LB_INGRESS_IP, 53, v6), target(EXTERNAL_IP, 53, v6)] {
            for i in 0..4 {
                let reply = t
                    .ext_udp_query(&target, &format!("q{i}"))
                    .unwrap_or_else(|e| panic!("UDP {target}: {e}"));
                assert!(reply.starts_with(&format!("from={target} ")), "{reply}");
                assert!(reply.ends_with(&format!("payload=q{i}")), "{reply}");
            }
        }
    }
}

#[test]
fn ipv6_only_load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp() {
    load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp(Mode::Ipv6Only);
}

#[test]
fn dual_stack_load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp() {
    load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp(Mode::DualStack);
}

fn policy_local_keeps_the_client_address_and_serves_health_checks(mode: Mode) {
    let t = topology();
    let service = web_lb().local_traffic(Some(HEALTH_CHECK_PORT));
    write_service(&t, mode, service, "web-lb", &["a1", "b1"]);
    let mut agent = start_agent(&t);
    // Endpoints of the Service across its families, as kube-proxy counts.
    let local = mode.families().len();
    for v6 in mode.families() {
        for target in [
            target(LB_INGRESS_IP, 80, v6),
            target(NodeId::A.nic_ip(), LB_NODE_PORTS[0], v6),
        ] {
            assert_eq!(
                answers(&t, &target, 12),
                BTreeSet::from([("a1".into(), in_family(EXT_IP, v6))]),
                "{mode:?}: {target}"
            );
        }
        // The health check answers on the node's address of each family.
        let health = target(NodeId::A.nic_ip(), HEALTH_CHECK_PORT, v6);
        let (status, body) = t.ext_http_status(&health).unwrap();
        assert_eq!(status, 200, "{health}: {body}");
        assert!(
            body.contains(&format!("\"localEndpoints\":{local}")),
            "{body}"
        );
    }
    // Only node B has endpoints now: node A drops, never forwards to B.
    apply(&mut agent, || write_slices(&t, mode, "web-lb", &["b1"]));
    for v6 in mode.families() {
        let answer = t.ext_http_get_within(&target(LB_INGRESS_IP, 80, v6), NO_ANSWER);
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("timed out")),
            "{answer:?}"
        );
        let health = target(NodeId::A.nic_ip(), HEALTH_CHECK_PORT, v6);
        let (status, body) = t.ext_http_status(&health).unwrap();
        assert_eq!(status, 503, "{health}: {body}");
    }
}

#[test]
fn ipv6_only_policy_local_keeps_the_client_address_and_serves_health_checks() {
    policy_local_keeps_the_client_address_and_serves_health_checks(Mode::Ipv6Only);
}

#[test]
fn dual_stack_policy_local_keeps_the_client_address_and_serves_health_checks() {
    policy_local_keeps_the_client_address_and_serves_health_checks(Mode::DualStack);
}

#[test]
fn an_ipv6_service_without_endpoints_is_refused_at_once() {
    let t = topology();
    write_service(&t, Mode::Ipv6Only, web_lb(), "web-lb", &[]);
    let _agent = start_agent(&t);
    for target in [
        target(NodeId::A.nic_ip(), LB_NODE_PORTS[0], true),
        target(LB_INGRESS_IP, 80, true),
    ] {
        // A TCP RST over IPv6.
        t.ext_connect_refused_at_once(&target).unwrap();
    }
    let probe = t.ext_udp_probe(&target(LB_INGRESS_IP, 53, true));
    assert_eq!(probe.as_deref(), Ok("refused"), "ICMPv6 port unreachable");
}

#[test]
fn ipv6_source_ranges_keep_outside_clients_off_the_load_balancer_address() {
    let t = topology();
    // Both nodes' pods: fd00:a01:1::/64 and fd00:a01:2::/64.
    let pods_only = ipv6_twin(Ipv4Addr::new(10, 1, 0, 0));
    let ranges = |extra: &[String]| {
        let mut all = vec![format!("{pods_only}/32")];
        all.extend_from_slice(extra);
        web_lb().source_ranges(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    write_service(&t, Mode::Ipv6Only, ranges(&[]), "web-lb", &["a1"]);
    let mut agent = start_agent(&t);
    let lb = target(LB_INGRESS_IP, 80, true);
    let answer = t.ext_http_get_within(&lb, NO_ANSWER);
    assert!(
        answer.as_ref().is_err_and(|e| e.contains("timed out")),
        "{answer:?}"
    );
    let ext = in_family(EXT_IP, true);
    // The ranges guard the load balancer's address, not the NodePort.
    let nodeport = target(NodeId::A.nic_ip(), LB_NODE_PORTS[0], true);
    assert_eq!(
        answers(&t, &nodeport, 3),
        BTreeSet::from([("a1".into(), ext)])
    );
    let lan: Ipv6Addr = ipv6_twin(Ipv4Addr::new(192, 168, 50, 0));
    apply(&mut agent, || {
        let service = ranges(&[format!("{lan}/64")]).cluster_ips(&Mode::Ipv6Only.cluster_ips());
        t.write_manifest("service.yaml", &service.to_yaml())
            .unwrap()
    });
    assert_eq!(answers(&t, &lb, 3), BTreeSet::from([("a1".into(), ext)]));
}
