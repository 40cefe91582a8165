//! Namespace suite: the `dns` Service a new user tried, with ports 53/TCP,
//! 53/UDP and 99/SCTP (to 9999 on the backends: a port rewrite), through
//! its ClusterIP from a pod and its NodePort from a host outside, with the
//! real agent. Its TCP and UDP ports are served on every kernel (the first
//! test). Real SCTP associations need SCTP in the kernel, which this
//! machine's lacks and Debian's cloud kernels build as a module: those
//! tests are ignored here and run in the VMs, which load `sctp` (`cargo
//! xtask vm-test`; `cargo xtask test` runs them on 5.10). Needs root;
//! fails, never skips, without.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use kxdp_testbed::{
    agent::Agent,
    manifests::{endpoint_slice, service, Endpoint, SLICE_CONTROLLER},
    netns::ExternalHost,
    scenario::EchoScenario,
};

const WAIT: Duration = Duration::from_secs(10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
/// A Service whose SCTP port has no endpoints.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 54);
const SCTP_NODE_PORT: u16 = 30099;
/// Longest an SCTP query may take: an ABORT or an answer comes at once.
const QUERY_MS: &str = "3000";

/// Two backends serving HTTP (8080), UDP (5353) and SCTP (9999), the `dns`
/// Service over them and the empty one, a host outside, and the agent
/// with the NIC towards it.
fn scenario() -> (EchoScenario, ExternalHost, Agent) {
    let peer = env!("CARGO_BIN_EXE_kxdp-peer");
    let mut s = EchoScenario::new(2, peer.into()).expect("echo scenario");
    let outside = s.node.add_external_host("outside", 77).unwrap();
    let ports = [
        "{name: 53-8080, port: 53, protocol: TCP, targetPort: 8080, nodePort: 30053}",
        "{name: 53-5353, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}",
        "{name: 99-9999, port: 99, protocol: SCTP, targetPort: 9999, nodePort: 30099}",
    ];
    let dns = service("dns", "NodePort", VIP, None, &ports);
    s.write_manifest("dns.yaml", &dns).unwrap();
    let endpoints: Vec<Endpoint> = s.backends.iter().map(|&b| Endpoint::ready(b)).collect();
    let slice = endpoint_slice(
        "dns",
        "dns-x7k2p",
        SLICE_CONTROLLER,
        &[
            ("53-8080", "TCP", 8080),
            ("53-5353", "UDP", 5353),
            ("99-9999", "SCTP", 9999),
        ],
        &endpoints,
    );
    s.write_manifest("dns-slice.yaml", &slice).unwrap();
    let empty = service(
        "empty",
        "ClusterIP",
        EMPTY_VIP,
        None,
        &["{name: sctp, port: 99, protocol: SCTP, targetPort: 9999}"],
    );
    s.write_manifest("empty.yaml", &empty).unwrap();
    let agent = s
        .start_agent_with(&["--nic", &outside.node_interface], WAIT)
        .unwrap();
    (s, outside, agent)
}

fn start_sctp_servers(s: &mut EchoScenario) {
    for i in 1..=s.backends.len() {
        let name = format!("b{i}");
        let netns = s.node.pod(&name).netns.clone();
        let serve = ["sctp-serve", "--name", &name, "--sctp", "9999"];
        s.start_peer(&netns, &serve).unwrap();
    }
}

fn peer() -> &'static str {
    env!("CARGO_BIN_EXE_kxdp-peer")
}

/// One SCTP association from `netns` to `target`: the backend's answer
/// (`backend=NAME client=ADDR:PORT`) or `refused`.
fn sctp_query(s: &EchoScenario, netns: &str, target: &str) -> String {
    s.from_netns(netns, peer(), &["sctp-query", target, QUERY_MS])
        .unwrap_or_else(|e| panic!("SCTP to {target}: {e}"))
}

/// The backends answering `n` associations from the client pod.
fn sctp_backends(s: &EchoScenario, target: &str, n: usize) -> BTreeSet<String> {
    let client = s.node.pod("client").netns.clone();
    (0..n)
        .map(|_| {
            let answer = sctp_query(s, &client, target);
            let backend = answer.split_whitespace().next().unwrap_or_default();
            assert!(backend.starts_with("backend="), "{answer:?}");
            backend.to_string()
        })
        .collect()
}

#[test]
fn the_dns_services_tcp_and_udp_ports_are_served_beside_its_sctp_port() {
    let (s, _outside, _agent) = scenario();
    let http = s.http_get(&format!("{VIP}:53")).expect("53/TCP");
    assert!(http.starts_with("backend=b"), "{http}");
    let udp = s.udp_query(&format!("{VIP}:53"), "hello").expect("53/UDP");
    assert!(
        udp.starts_with(&format!("from={VIP}:53 backend=b")),
        "{udp}"
    );
    // The SCTP port is a frontend of its own, of the pods' and the node's.
    let sctp = s.served(&format!("{VIP}:99/SCTP"), "pod");
    assert_eq!(
        sctp["backends"].as_array().map(Vec::len),
        Some(2),
        "{sctp:#}"
    );
    s.served(&format!("192.168.77.1:{SCTP_NODE_PORT}/SCTP"), "node");
}

#[test]
#[ignore = "needs SCTP in the kernel: runs in the VMs (cargo xtask vm-test)"]
fn sctp_reaches_both_backends_through_the_cluster_ip_with_its_port_rewritten() {
    let (mut s, _outside, _agent) = scenario();
    start_sctp_servers(&mut s);
    let target = format!("{VIP}:99");
    assert_eq!(
        sctp_backends(&s, &target, 12),
        ["backend=b1", "backend=b2"].map(String::from).into(),
        "associations spread over both backends"
    );
    // The backend sees the pod's own address.
    let (netns, ip) = (s.node.pod("client").netns.clone(), s.node.pod("client").ip);
    let answer = sctp_query(&s, &netns, &target);
    assert!(answer.contains(&format!("client={ip}:")), "{answer}");
    // With CRC offload on the veths the checksum is left to be computed
    // after the rewrite (zero through the datapath); the associations
    // still complete (each answer is checked to be a backend's).
    s.node.set_offloads(true).unwrap();
    assert!(!sctp_backends(&s, &target, 4).is_empty());
}

#[test]
#[ignore = "needs SCTP in the kernel: runs in the VMs (cargo xtask vm-test)"]
fn sctp_reaches_the_nodeport_from_outside_snated_and_an_empty_service_aborts() {
    let (mut s, outside, _agent) = scenario();
    start_sctp_servers(&mut s);
    let answer = sctp_query(
        &s,
        &outside.netns,
        &format!("192.168.77.1:{SCTP_NODE_PORT}"),
    );
    assert!(answer.starts_with("backend=b"), "{answer}");
    // The endpoints name no node, so they are served as another node's
    // would be: SNATed to the node's address on that link (both ports
    // rewritten in one checksum update), the answer translated back.
    assert!(answer.contains("client=192.168.77.1:"), "{answer}");
    // No endpoints: an ABORT, so connect fails at once instead of
    // retrying its INIT for minutes.
    let client = s.node.pod("client").netns.clone();
    assert_eq!(
        sctp_query(&s, &client, &format!("{EMPTY_VIP}:99")),
        "refused"
    );
}
