//! NodePort, LoadBalancer and external IPs through node A's NIC, with the
//! real agent (`--nic eth0`) on a two-node topology (`two_node`): an external
//! client on the LAN, backends on node A and on node B. Real TCP and UDP;
//! backends answer with the client address they saw, so SNAT and client
//! address preservation are visible. Needs root; fails, never skips, without.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use kxdp_testbed::{
    agent::Agent,
    manifests::{endpoint_slice, Endpoint, EndpointPort, ServiceManifest, SLICE_CONTROLLER},
    two_node::{parse_answer, NodeId, TwoNode, EXTERNAL_IP, EXT_IP, LB_INGRESS_IP},
};

const WAIT: Duration = Duration::from_secs(10);
const NO_ANSWER: Duration = Duration::from_secs(1);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 10);
/// `web` (the NodePort fixture) listens here on every node address.
const WEB_NODE_PORT: u16 = 30080;
/// `web-lb`'s node ports (TCP 80, UDP 53) and its health-check port.
const LB_NODE_PORTS: [u16; 2] = [30081, 30053];
const HEALTH_CHECK_PORT: u16 = 32000;

fn node_a() -> Ipv4Addr {
    NodeId::A.nic_ip()
}

/// A topology with pod `a1` on node A and `b1` on node B, the Services'
/// backends, and `c1` on node A, a client.
fn topology() -> TwoNode {
    let mut t = TwoNode::new().expect("two-node topology");
    t.add_pod(NodeId::A, "a1", 2).unwrap();
    t.add_pod(NodeId::B, "b1", 2).unwrap();
    t.add_pod(NodeId::A, "c1", 3).unwrap();
    t
}

/// An EndpointSlice of `service` with the HTTP port (and the DNS one for
/// `web-lb`) over `endpoints`, as the EndpointSlice controller writes it.
fn slice(service: &str, endpoints: &[Endpoint]) -> String {
    let ports: &[EndpointPort] = if service == "web" {
        &[("80-8080", "TCP", 8080)]
    } else {
        &[("80-8080", "TCP", 8080), ("53-5353", "UDP", 5353)]
    };
    endpoint_slice(
        service,
        &format!("{service}-x7k2p"),
        SLICE_CONTROLLER,
        ports,
        endpoints,
    )
}

fn a1(t: &TwoNode) -> Endpoint {
    Endpoint::ready(t.pod("a1").ip).on("node-a")
}

fn b1(t: &TwoNode) -> Endpoint {
    Endpoint::ready(t.pod("b1").ip).on("node-b")
}

fn web_lb() -> ServiceManifest {
    ServiceManifest::loadbalancer_web_lb(CLUSTER_IP, LB_NODE_PORTS, LB_INGRESS_IP)
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

#[test]
fn nodeport_with_policy_cluster_reaches_local_and_remote_backends() {
    let t = topology();
    t.write_manifest(
        "web.yaml",
        &ServiceManifest::nodeport_web(CLUSTER_IP).to_yaml(),
    )
    .unwrap();
    t.write_manifest("slice.yaml", &slice("web", &[a1(&t), b1(&t)]))
        .unwrap();
    let _agent = start_agent(&t);
    let target = format!("{}:{WEB_NODE_PORT}", node_a());
    let seen = answers(&t, &target, 30);
    // The local pod sees the client itself; the remote one sees node A,
    // which SNATed the flow so the reply comes back through it.
    assert_eq!(
        seen,
        BTreeSet::from([("a1".into(), EXT_IP.into()), ("b1".into(), node_a().into())]),
    );
    // A pod on node A reaches the node port too, as itself, on either node.
    let client = t.pod("c1");
    let from_pod: BTreeSet<(String, IpAddr)> = (0..20)
        .map(|_| parse_answer(&t.curl(&client.netns, &target, WAIT).unwrap()))
        .collect();
    assert_eq!(
        from_pod,
        BTreeSet::from([
            ("a1".into(), client.ip.into()),
            ("b1".into(), client.ip.into())
        ]),
    );
}

#[test]
fn load_balancer_and_external_ips_reach_the_service_over_tcp_and_udp() {
    let t = topology();
    let service = web_lb().external_ips(&[EXTERNAL_IP]);
    t.write_manifest("web-lb.yaml", &service.to_yaml()).unwrap();
    t.write_manifest("slice.yaml", &slice("web-lb", &[a1(&t), b1(&t)]))
        .unwrap();
    let _agent = start_agent(&t);
    for target in [
        format!("{LB_INGRESS_IP}:80"),
        format!("{EXTERNAL_IP}:80"),
        format!("{}:{}", node_a(), LB_NODE_PORTS[0]),
    ] {
        let backends: BTreeSet<String> = answers(&t, &target, 20)
            .into_iter()
            .map(|(backend, _)| backend)
            .collect();
        assert_eq!(
            backends,
            BTreeSet::from(["a1".into(), "b1".into()]),
            "{target}"
        );
    }
    // UDP, and the reply comes from the address and port the client used.
    for target in [format!("{LB_INGRESS_IP}:53"), format!("{EXTERNAL_IP}:53")] {
        for i in 0..6 {
            let reply = t
                .ext_udp_query(&target, &format!("q{i}"))
                .unwrap_or_else(|e| panic!("UDP {target}: {e}"));
            assert!(reply.starts_with(&format!("from={target} ")), "{reply}");
            assert!(reply.ends_with(&format!("payload=q{i}")), "{reply}");
        }
    }
    // A load-balancer address is no host: it does not answer ping (the
    // node itself does, so ping works here).
    let ping =
        |addr: Ipv4Addr| t.run_in(&t.ext, "ping", &["-c", "1", "-W", "1", &addr.to_string()]);
    ping(node_a()).expect("the node answers ping");
    let answer = ping(LB_INGRESS_IP);
    assert!(answer.is_err(), "{answer:?}");
}

#[test]
fn policy_local_keeps_the_client_address_and_serves_health_checks() {
    let t = topology();
    let service = web_lb().local_traffic(Some(HEALTH_CHECK_PORT));
    t.write_manifest("web-lb.yaml", &service.to_yaml()).unwrap();
    t.write_manifest("slice.yaml", &slice("web-lb", &[a1(&t), b1(&t)]))
        .unwrap();
    let mut agent = start_agent(&t);
    let health = format!("{}:{HEALTH_CHECK_PORT}", node_a());
    for target in [
        format!("{LB_INGRESS_IP}:80"),
        format!("{}:{}", node_a(), LB_NODE_PORTS[0]),
    ] {
        // Only node A's own endpoint, and it sees the real client.
        assert_eq!(
            answers(&t, &target, 20),
            BTreeSet::from([("a1".into(), EXT_IP.into())]),
            "{target}"
        );
    }
    let (status, body) = t.ext_http_status(&health).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\":1"), "{body}");
    assert!(body.contains("\"name\":\"web-lb\""), "{body}");

    // Only node B has an endpoint now: node A drops (a load balancer would
    // have stopped sending, told by the 503), never forwards to node B.
    apply(&mut agent, || {
        t.write_manifest("slice.yaml", &slice("web-lb", &[b1(&t)]))
            .unwrap()
    });
    let answer = t.ext_http_get_within(&format!("{LB_INGRESS_IP}:80"), NO_ANSWER);
    assert!(
        answer.as_ref().is_err_and(|e| e.contains("timed out")),
        "{answer:?}"
    );
    let (status, body) = t.ext_http_status(&health).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
}

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let t = topology();
    t.write_manifest("web-lb.yaml", &web_lb().to_yaml())
        .unwrap();
    t.write_manifest("slice.yaml", &slice("web-lb", &[]))
        .unwrap();
    let _agent = start_agent(&t);
    for target in [
        format!("{}:{}", node_a(), LB_NODE_PORTS[0]),
        format!("{LB_INGRESS_IP}:80"),
    ] {
        t.ext_connect_refused_at_once(&target).unwrap();
    }
    let probe = t.ext_udp_probe(&format!("{LB_INGRESS_IP}:53"));
    assert_eq!(probe.as_deref(), Ok("refused"), "ICMP port unreachable");
}

#[test]
fn source_ranges_keep_outside_clients_off_the_load_balancer_address() {
    let t = topology();
    let only_pods = web_lb().source_ranges(&["10.0.0.0/8"]);
    t.write_manifest("web-lb.yaml", &only_pods.to_yaml())
        .unwrap();
    t.write_manifest("slice.yaml", &slice("web-lb", &[a1(&t)]))
        .unwrap();
    let mut agent = start_agent(&t);
    let lb = format!("{LB_INGRESS_IP}:80");
    let answer = t.ext_http_get_within(&lb, NO_ANSWER);
    assert!(
        answer.as_ref().is_err_and(|e| e.contains("timed out")),
        "{answer:?}"
    );
    // The ranges guard the load balancer's address, not the NodePort.
    assert_eq!(
        answers(&t, &format!("{}:{}", node_a(), LB_NODE_PORTS[0]), 3),
        BTreeSet::from([("a1".into(), EXT_IP.into())])
    );
    apply(&mut agent, || {
        let lan = web_lb().source_ranges(&["10.0.0.0/8", "192.168.50.0/24"]);
        t.write_manifest("web-lb.yaml", &lan.to_yaml()).unwrap()
    });
    assert_eq!(
        answers(&t, &lb, 3),
        BTreeSet::from([("a1".into(), EXT_IP.into())])
    );
}
