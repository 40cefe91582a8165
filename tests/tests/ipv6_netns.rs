//! Namespace suite over IPv6: real TCP and UDP through an IPv6 and a
//! dual-stack ClusterIP in a mini node whose pods are dual-stack, with the
//! real `kxdp agent`: per packet (pods outside the hooked cgroup), through
//! the socket hooks (pods and host processes inside it, IPv4-mapped
//! addresses included), rejects without endpoints, an IPv6 connection
//! across an agent restart, and a dual-stack LoadBalancer Service reached
//! from outside the node over IPv6 through the NIC program (NodePort,
//! ingress IP, external IP).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use kxdp_testbed::{
    datapath::back_date_affinity6,
    manifests::{endpoint_slice, Endpoint, ServiceManifest, SLICE_CONTROLLER},
    scenario::EchoScenario,
};

const WAIT: Duration = Duration::from_secs(10);
const HOOKED: &str = "reach ClusterIPs through the socket hooks";

fn vip6() -> Ipv6Addr {
    "fd00:10:96::a".parse().unwrap()
}

/// The echo scenario with `echo` dual-stack on `vip6()`.
fn dual_stack() -> EchoScenario {
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    s.make_dual_stack(vip6()).unwrap();
    s
}

fn target(port: u16) -> String {
    SocketAddr::new(vip6().into(), port).to_string()
}

/// `NAME` of an answer `backend=NAME ...`.
fn backend_of(answer: &str) -> String {
    let first = answer.split_whitespace().next().unwrap_or_default();
    first.strip_prefix("backend=").unwrap_or(first).to_string()
}

#[test]
fn pods_reach_both_backends_of_a_dual_stack_cluster_ip_in_each_family_per_packet() {
    let s = dual_stack();
    let _agent = s.start_agent().unwrap();
    let client6 = s.node.pod("client").ip6.unwrap();

    let mut seen = BTreeSet::new();
    for i in 0..24 {
        let body = s
            .http_get(&target(80))
            .unwrap_or_else(|e| panic!("request {i} to {}: {e}", target(80)));
        // Translated per packet, the client keeps its own address.
        assert!(body.contains(&format!(" client=[{client6}]:")), "{body}");
        seen.insert(backend_of(&body));
    }
    assert_eq!(seen, BTreeSet::from(["b1".into(), "b2".into()]));

    let reply = s.udp_query(&target(53), "hello").expect("UDP over IPv6");
    // The answer comes from the VIP and the service port.
    assert!(
        reply.starts_with(&format!("from={} backend=b", target(53))),
        "{reply}"
    );
    assert!(reply.ends_with("payload=hello"), "{reply}");

    // The IPv4 family of the same Service, at the same time.
    let body = s.http_get(&format!("{}:80", s.vip)).expect("IPv4 too");
    let client4 = s.node.pod("client").ip;
    assert!(body.contains(&format!(" client={client4}:")), "{body}");

    // `kxdp services` lists the IPv6 frontend with the packets it counted.
    let (_, packets) = counts(&s, &target(80));
    assert!(packets > 24, "{packets} packets");
}

/// (sockets, packets) `kxdp services` shows for pod-scope TCP `frontend`
/// (`ADDR:PORT`).
fn counts(s: &EchoScenario, frontend: &str) -> (u64, u64) {
    let served = s.served(&format!("{frontend}/TCP"), "pod");
    (
        served["sockets"].as_u64().unwrap(),
        served["packets"].as_u64().unwrap(),
    )
}

#[test]
fn pods_and_host_processes_reach_an_ipv6_cluster_ip_through_the_socket_hooks() {
    let s = dual_stack();
    let mut agent = s.start_agent().unwrap();
    agent.wait_for(&[HOOKED], 1, WAIT).unwrap();
    let url = format!("http://{}/", target(80));
    let curl = ["-gsS", "--max-time", "3", url.as_str()];

    let mut seen = BTreeSet::new();
    for i in 0..16 {
        let body = s
            .from_client_in_cgroup("curl", &curl)
            .unwrap_or_else(|e| panic!("pod request {i}: {e}"));
        seen.insert(backend_of(&body));
    }
    assert_eq!(seen, BTreeSet::from(["b1".into(), "b2".into()]));

    // The node's own processes: connect6 rewrites their sockets.
    let in_node = |url: &str| {
        let argv = ["curl", "-gsS", "--max-time", "3", url];
        let out = s.node.cgroup.output(&s.node.node_netns, &argv).unwrap();
        assert!(
            out.status.success(),
            "{url} from the node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = in_node(&url);
    assert!(body.starts_with("backend=b"), "{body}");
    // An IPv6 socket to the IPv4-mapped ClusterIP reaches the IPv4 Service.
    let mapped = format!("http://[::ffff:{}]:80/", s.vip);
    let body = in_node(&mapped);
    assert!(body.starts_with("backend=b"), "{body}");

    // Datagrams from a hooked pod: their answers name the VIP
    // (recvmsg6), also to a socket that asked for the mapped IPv4 VIP
    // (sendmsg4 balances its datagrams, recvmsg6 names the VIP back).
    let peer = env!("CARGO_BIN_EXE_kxdp-peer");
    let reply = s
        .from_client_in_cgroup(peer, &["udp-query", &target(53), "hi", "2000"])
        .expect("UDP over IPv6 through the hooks");
    assert!(
        reply.starts_with(&format!("from={} backend=b", target(53))),
        "{reply}"
    );
    let mapped_udp = format!("[::ffff:{}]:53", s.vip);
    let reply = s
        .from_client_in_cgroup(peer, &["udp-query", &mapped_udp, "hi", "2000"])
        .expect("UDP to the mapped VIP through the hooks");
    assert!(
        reply.starts_with(&format!("from={mapped_udp} backend=b")),
        "{reply}"
    );

    // Every one of those connections went by the hooks: sockets counted,
    // no packet translated; the mapped one on the IPv4 frontend.
    assert_eq!(counts(&s, &target(80)), (17, 0));
    assert_eq!(counts(&s, &format!("{}:80", s.vip)), (1, 0));
}

#[test]
fn an_ipv6_cluster_ip_without_endpoints_refuses_tcp_and_udp_at_once() {
    let s = EchoScenario::new(1, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    // IPv6 only, and its only slice is IPv4: no IPv6 endpoint at all.
    s.write_echo_service(&[vip6().into()]).unwrap();
    let _agent = s.start_agent().unwrap();

    let err = s
        .http_get_within(&target(80), Duration::from_secs(2))
        .expect_err("nothing serves it");
    // Refused, not timed out, and by the datapath's RST.
    assert!(err.contains("Couldn't connect"), "{err}");
    let peer = env!("CARGO_BIN_EXE_kxdp-peer");
    let probe = s
        .from_pod("client", peer, &["udp-probe", &target(53), "2000"])
        .expect("an answer or an ICMPv6 error");
    assert_eq!(probe, "refused", "ICMPv6 port unreachable");
    let table = s.kxdp(&["services"]).unwrap();
    let footer = table.lines().last().unwrap_or_default();
    assert!(
        footer.contains(" 1 TCP resets and 1 ICMP unreachables sent"),
        "{footer}"
    );
}

#[test]
fn an_ipv6_connection_survives_the_agent_killed_and_replaced() {
    let exchanges = (kxdp_testbed::patience(Duration::from_secs(5)).as_millis() / 100) as usize;
    const KILL_AFTER: usize = 10;
    let mut s =
        EchoScenario::new(1, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    let netns = s.node.pod("b1").netns.clone();
    s.start_peer(&netns, &["echo-lines", "--name", "b1", "--tcp", "7007"])
        .unwrap();
    // `echo` on IPv6 alone, its port 80 to the line server.
    s.write_echo_service(&[vip6().into()]).unwrap();
    let slice = endpoint_slice(
        "echo",
        "echo-v6x9k",
        SLICE_CONTROLLER,
        &[("80-8080", "TCP", 7007)],
        &[Endpoint::ready(s.backends_ip6()[0])],
    );
    s.write_manifest("slice6.yaml", &slice).unwrap();
    let agent = s.start_agent().unwrap();
    let (answers, _agent) = s.chat_across_agent_restart(agent, &target(80), exchanges, KILL_AFTER);
    let expected: Vec<String> = (1..=exchanges).map(|n| format!("{n} backend=b1")).collect();
    assert_eq!(answers, expected);
}

/// `n` HTTP GETs from namespace `netns` to `target`, every one answered:
/// the (backend, client address and port it saw) of each.
fn answers_from(
    s: &EchoScenario,
    netns: &str,
    target: &str,
    n: usize,
) -> Vec<(String, SocketAddr)> {
    let url = format!("http://{target}/");
    (0..n)
        .map(|i| {
            let body = s
                .from_netns(netns, "curl", &["-gsS", "--max-time", "3", &url])
                .unwrap_or_else(|e| panic!("GET {target} #{i}: {e}"));
            let client = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("client="))
                .unwrap_or_else(|| panic!("no client= in {body:?}"));
            (backend_of(&body), client.parse().unwrap())
        })
        .collect()
}

/// The mini node's name, when a test gives its agent one.
const NODE: &str = "node-a";

#[test]
fn outside_clients_reach_a_dual_stack_load_balancer_over_ipv6_through_the_nic_program() {
    let mut s = dual_stack();
    let outside = s.node.add_external_host("outside", 77).unwrap();
    // The node's address on the outside link, where NodePorts answer.
    let mut segments = outside.ip6.segments();
    segments[7] = 1;
    let node6 = Ipv6Addr::from(segments);
    let ingress6: Ipv6Addr = "fd00:c0a8:88::10".parse().unwrap();
    let external6: Ipv6Addr = "fd00:c0a8:89::10".parse().unwrap();
    let cluster_ips: [IpAddr; 2] = [
        Ipv4Addr::new(10, 96, 0, 60).into(),
        "fd00:10:96::60".parse::<Ipv6Addr>().unwrap().into(),
    ];
    let service = ServiceManifest::loadbalancer_web_lb(
        Ipv4Addr::new(10, 96, 0, 60),
        [30080, 30053],
        Ipv4Addr::new(192, 168, 88, 10),
    )
    .cluster_ips(&cluster_ips)
    .load_balancer_ingress(&[Ipv4Addr::new(192, 168, 88, 10).into(), ingress6.into()])
    .external_ips(&[external6]);
    s.write_manifest("web-lb.yaml", &service.to_yaml()).unwrap();
    let ports = [("80-8080", "TCP", 8080), ("53-5353", "UDP", 5353)];
    let slice = |name: &str, endpoints: Vec<Endpoint>| {
        endpoint_slice("web-lb", name, SLICE_CONTROLLER, &ports, &endpoints)
    };
    // The backends run on this node (the agent's `--node-name`).
    let local = |addr: IpAddr| Endpoint::ready(addr).on(NODE);
    let v4 = s.backends.iter().map(|&b| local(b.into())).collect();
    let v6 = s
        .backends_ip6()
        .into_iter()
        .map(|b| local(b.into()))
        .collect();
    s.write_manifest("web-lb-v4.yaml", &slice("web-lb-4xk2p", v4))
        .unwrap();
    s.write_manifest("web-lb-v6.yaml", &slice("web-lb-6m9qz", v6))
        .unwrap();
    let mut agent = s
        .start_agent_with(
            &["--nic", &outside.node_interface, "--node-name", NODE],
            WAIT,
        )
        .unwrap();
    agent.wait_for(&["attached XDP"], 1, WAIT).unwrap();

    let both = BTreeSet::from(["b1".to_string(), "b2".to_string()]);
    for target in [
        SocketAddr::new(node6.into(), 30080),
        SocketAddr::new(ingress6.into(), 80),
        SocketAddr::new(external6.into(), 80),
    ] {
        let seen = answers_from(&s, &outside.netns, &target.to_string(), 24);
        let backends: BTreeSet<String> = seen.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(backends, both, "{target}: {seen:?}");
        // Local backends: the client's own address reaches them.
        let clients: BTreeSet<IpAddr> = seen.iter().map(|(_, c)| c.ip()).collect();
        assert_eq!(clients, BTreeSet::from([outside.ip6.into()]), "{target}");
    }
    // UDP, answered from the address and port the client used.
    for target in [
        SocketAddr::new(node6.into(), 30053),
        SocketAddr::new(ingress6.into(), 53),
    ] {
        let target = target.to_string();
        let reply = s
            .udp_query_from(&outside.netns, &target, "over-v6")
            .unwrap_or_else(|e| panic!("UDP {target}: {e}"));
        assert!(reply.starts_with(&format!("from={target} ")), "{reply}");
        assert!(reply.ends_with("payload=over-v6"), "{reply}");
    }
    // The IPv4 family of the same Service, at the same time.
    let seen = answers_from(&s, &outside.netns, "192.168.77.1:30080", 4);
    assert!(seen.iter().all(|(_, c)| c.ip() == outside.ip), "{seen:?}");
}

#[test]
fn a_backend_reaching_its_own_ipv6_service_gets_the_vip_as_its_client() {
    let s = dual_stack();
    let _agent = s.start_agent().unwrap();
    let url = format!("http://{}/", target(80));
    // Until b1 picks itself: with two backends, 24 misses is a 2^-24 chance.
    let answers: Vec<String> = (0..24)
        .map(|i| {
            s.from_pod("b1", "curl", &["-gsS", "--max-time", "3", &url])
                .unwrap_or_else(|e| panic!("request {i} from b1: {e}"))
        })
        .collect();
    let to_itself: Vec<&String> = answers.iter().filter(|a| backend_of(a) == "b1").collect();
    assert!(!to_itself.is_empty(), "b1 never chose itself: {answers:?}");
    // Hairpin: the VIP stands in for b1, which would drop its own address.
    for answer in to_itself {
        assert!(
            answer.contains(&format!(" client=[{}]:", vip6())),
            "{answer}"
        );
    }
}

#[test]
fn an_ipv6_client_keeps_its_backend_until_its_affinity_lapses() {
    let s = EchoScenario::new(3, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    s.make_dual_stack(vip6()).unwrap();
    let sticky = ServiceManifest::echo(&[s.vip.into(), vip6().into()]).client_ip_affinity(30);
    s.write_manifest("service.yaml", &sticky.to_yaml()).unwrap();
    let _agent = s.start_agent().unwrap();
    let burst = |n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|i| {
                let body = s
                    .http_get(&target(80))
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                backend_of(&body)
            })
            .collect()
    };
    // Each burst sticks to one backend; between bursts the client's entry
    // is made 31 s old, so the next is balanced afresh: with 3 backends,
    // 24 bursts on one is a 1e-11 chance.
    let mut chosen = BTreeSet::new();
    for round in 0..24 {
        let backends = burst(5);
        assert_eq!(backends.len(), 1, "burst {round}: {backends:?}");
        chosen.extend(backends);
        let aged = back_date_affinity6(&s.node.pin_path(), 31).unwrap();
        assert_eq!(aged, 1, "one IPv6 client, one entry");
        if chosen.len() > 1 {
            break;
        }
    }
    assert!(chosen.len() > 1, "never moved: {chosen:?}");
    // Just inside the timeout, the client stays.
    let before = burst(1);
    back_date_affinity6(&s.node.pin_path(), 29).unwrap();
    assert_eq!(burst(3), before);
}
