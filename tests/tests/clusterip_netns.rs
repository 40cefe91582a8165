//! Namespace suite: real TCP and UDP through a ClusterIP in a mini node
//! (client pod + two backend pods), with the real `kxdp agent`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kxdp_testbed::{
    agent::{pod_hook_adopted, Agent},
    scenario::EchoScenario,
};

const WAIT: Duration = Duration::from_secs(10);

fn scenario() -> EchoScenario {
    EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario")
}

/// Counts answers per backend over `n` requests; every request must succeed.
fn spread(s: &EchoScenario, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let body = s
            .http_get(&format!("{}:80", s.vip))
            .unwrap_or_else(|e| panic!("request {i} through {} failed: {e}", s.vip));
        let backend = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        *seen.entry(backend).or_insert(0) += 1;
    }
    seen
}

#[test]
fn tcp_and_udp_reach_both_backends_through_the_cluster_ip() {
    let s = scenario();
    let _agent = s.start_agent().unwrap();

    let seen = spread(&s, 30);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["backend=b1", "backend=b2"],
        "{seen:?}"
    );
    // ClusterIP traffic from a pod keeps the client's address.
    let body = s.http_get(&format!("{}:80", s.vip)).unwrap();
    assert!(
        body.contains(&format!("client={}:", s.node.pod("client").ip)),
        "{body}"
    );

    let reply = s
        .udp_query(&format!("{}:53", s.vip), "hello")
        .expect("UDP through the VIP");
    // The reply comes from the VIP and service port, served by a backend.
    assert!(
        reply.starts_with(&format!("from={}:53 backend=b", s.vip)),
        "{reply}"
    );
    assert!(reply.ends_with("payload=hello"), "{reply}");

    let http = s.served(&format!("{}:80/TCP", s.vip), "pod");
    let listed: Vec<&str> = http["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    for backend in &s.backends {
        assert!(listed.contains(&backend.to_string().as_str()), "{http}");
    }
    let packets = http["packets"].as_u64().unwrap();
    assert!(packets >= 31 * 3, "every request is counted: {http}");
    s.served(&format!("{}:53/UDP", s.vip), "pod");
}

#[test]
fn a_backend_that_turns_not_ready_leaves_rotation_and_bad_manifests_hurt_nobody() {
    let s = scenario();
    let mut agent = s.start_agent().unwrap();
    assert_eq!(spread(&s, 20).len(), 2);

    s.write_slice(&[(s.backends[0], true), (s.backends[1], false)])
        .unwrap();
    agent.wait_for(&["synced"], 2, WAIT).unwrap();
    let seen = spread(&s, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["backend=b1"], "{seen:?}");

    // A broken document and an invalid Service are reported by name and
    // skipped; the echo Service keeps working.
    std::fs::write(
        s.manifests.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad-port, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.50, ports: [{port: 70000}]}\n---\nkind: [unclosed\n",
    )
    .unwrap();
    agent.wait_for(&["synced"], 3, WAIT).unwrap();
    assert_eq!(
        agent.count(&[
            "skipping invalid object",
            "Service shop/bad-port",
            "port 70000 is out of range"
        ]),
        1
    );
    assert_eq!(
        agent.count(&["skipping invalid object", "broken.yaml:6", "not valid YAML"]),
        1
    );
    assert_eq!(spread(&s, 5).len(), 1);
}

#[test]
fn interfaces_that_appear_later_are_attached() {
    let mut s = scenario();
    let mut agent = s.start_agent().unwrap();
    s.node.add_pod("late", 9).unwrap();
    agent
        .wait_for(&["attached", &s.node.pod("late").host_interface], 2, WAIT)
        .unwrap();
    let body = s
        .from_pod(
            "late",
            "curl",
            &["-sS", "--max-time", "3", &format!("http://{}:80/", s.vip)],
        )
        .unwrap();
    assert!(
        body.starts_with("backend=b") && body.contains("client=10.200.9.2:"),
        "{body}"
    );
}

#[test]
fn datapath_outlives_the_agent_until_unload() {
    let s = scenario();
    let vip = format!("{}:80", s.vip);
    let agent = s.start_agent().unwrap();
    s.http_get(&vip).expect("through the agent");

    let started = Instant::now();
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exits cleanly on SIGTERM: {status}");
    assert!(started.elapsed() < kxdp_testbed::patience(Duration::from_secs(5)));
    s.http_get(&vip)
        .expect("the datapath keeps serving with the agent stopped");
    // The CLI names the Services from the pins alone.
    let listed = s.kxdp(&["services"]).unwrap();
    let echo = listed.lines().find(|l| l.starts_with("echo "));
    let echo: Vec<&str> = echo
        .unwrap_or_else(|| panic!("{listed}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        echo,
        [
            "echo",
            "ClusterIP",
            &s.vip.to_string(),
            "<none>",
            "53/UDP,80/TCP"
        ]
    );

    // An unknown Service is one line, and a failure.
    let unknown = s.kxdp(&["services", "nope"]).unwrap_err().to_string();
    assert!(
        unknown.contains(
            "(exit status: 1): kxdp: no Service nope in namespace default is served here"
        ),
        "{unknown}"
    );

    // A new agent adopts the pinned links and maps: nothing is rewritten.
    let mut agent = s.start_agent().unwrap();
    agent.wait_for(&[pod_hook_adopted()], 6, WAIT).unwrap();
    agent.wait_for(&["socket hook adopted"], 4, WAIT).unwrap();
    agent
        .wait_for(&["synced", "written=0", "deleted=0"], 1, WAIT)
        .unwrap();
    assert_eq!(spread(&s, 10).values().sum::<usize>(), 10);
    agent.stop().unwrap();

    let out = s.kxdp(&["unload"]).unwrap();
    // Every map the object pins (the per-CPU scratch maps are not pinned).
    let maps = proxy_userspace::dataplane::maps::ALL.len();
    assert!(
        out.contains(&format!("detached 14 links, removed {maps} maps")),
        "{out}"
    );
    assert!(!s.node.pin_path().exists(), "unload leaves no pins");
    assert!(
        s.http_get(&vip).is_err(),
        "with the datapath gone the VIP answers nothing"
    );
}

#[test]
fn a_pod_can_reach_a_backend_directly_on_a_port_it_used_for_the_vip() {
    let s = scenario();
    let _agent = s.start_agent().unwrap();
    // One ephemeral port only: every connection of the client uses 45000,
    // which the kernel allows while the 4-tuples differ.
    let client = s.node.pod("client").netns.clone();
    let range = [
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_local_port_range=45000 45000",
    ];
    s.node.exec_ok(&client, &range).unwrap();
    let curl = |target: String| {
        let url = format!("http://{target}/");
        s.from_pod("client", "curl", &["-sS", "--max-time", "3", &url])
    };
    let body = curl(format!("{}:80", s.vip)).expect("through the VIP");
    assert!(body.contains("client=10.200.1.2:45000"), "{body}");
    // Same client port, straight to each backend: replies must not be
    // mistaken for replies of the earlier VIP connection.
    for backend in &s.backends {
        let body =
            curl(format!("{backend}:8080")).unwrap_or_else(|e| panic!("direct to {backend}: {e}"));
        assert!(body.contains("client=10.200.1.2:45000"), "{body}");
    }
}

#[test]
fn a_backend_pod_reaches_its_own_service_even_when_it_is_chosen() {
    let s = scenario();
    let _agent = s.start_agent().unwrap();
    let url = format!("http://{}:80/", s.vip);
    let answers: Vec<String> = (0..16)
        .map(|i| {
            s.from_pod("b1", "curl", &["-sS", "--max-time", "3", &url])
                .unwrap_or_else(|e| panic!("request {i} from b1: {e}"))
        })
        .collect();
    // Chosen about half the time; then it sees the VIP as its client.
    let to_itself: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("backend=b1 "))
        .collect();
    assert!(!to_itself.is_empty(), "{answers:?}");
    for answer in to_itself {
        assert!(answer.contains(&format!(" client={}:", s.vip)), "{answer}");
    }
}

/// `--pod-attach tc`: the pod programs as classic tc filters (the path
/// kernels without tcx take): pods reach the ClusterIP over TCP and UDP, a
/// restarted agent swaps its program into the same filters, and unload
/// deletes them.
#[test]
fn classic_tc_filters_serve_pods_and_survive_a_restart_until_unload() {
    let s = scenario();
    let flags = [
        "--manifests".as_ref(),
        s.manifests.as_os_str(),
        "--pod-attach".as_ref(),
        "tc".as_ref(),
    ];
    let mut agent = Agent::start_with(&s.node, &flags).unwrap();
    let hooks = 2 * s.node.pods.len();
    agent
        .wait_for(&["attached (classic tc)"], hooks, WAIT)
        .unwrap();
    assert_eq!(
        agent.count(&["interfaces: attached"]),
        agent.count(&["interfaces: attached (classic tc)"]),
        "no tcx link was made"
    );
    let filters = |pod: &str, direction: &str| {
        let dev = &s.node.pod(pod).host_interface;
        let out = s
            .node
            .exec_ok(
                &s.node.node_netns,
                &["tc", "filter", "show", "dev", dev, direction],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for direction in ["ingress", "egress"] {
        let shown = filters("client", direction);
        assert!(
            shown.contains("bpf") && shown.contains("direct-action"),
            "{direction}: {shown}"
        );
    }
    assert_eq!(spread(&s, 20).len(), 2, "both backends through the filters");
    let reply = s.udp_query(&format!("{}:53", s.vip), "hi").unwrap();
    assert!(reply.starts_with(&format!("from={}:53 ", s.vip)), "{reply}");

    agent.stop().unwrap();
    let mut agent = Agent::start_with(&s.node, &flags).unwrap();
    agent
        .wait_for(&["filter's program replaced in place"], hooks, WAIT)
        .unwrap();
    assert_eq!(spread(&s, 10).values().sum::<usize>(), 10);
    agent.stop().unwrap();

    s.kxdp(&["unload"]).unwrap();
    for direction in ["ingress", "egress"] {
        let shown = filters("client", direction);
        assert!(!shown.contains("bpf"), "{direction} after unload: {shown}");
    }
    assert!(s.http_get(&format!("{}:80", s.vip)).is_err());
}

/// With veth offloads on, a pod's TCP segments reach its interface as GSO
/// packets whose linear part holds only their headers; the per-packet path
/// (`--socket-lb host`) parses and translates them as they are, and the
/// bulk stream through the ClusterIP arrives whole.
#[test]
fn a_bulk_stream_through_the_cluster_ip_per_packet_with_veth_offloads_on() {
    const SINK_PORT: u16 = 5001;
    let sink_vip = std::net::Ipv4Addr::new(10, 96, 0, 50);
    let mut s = scenario();
    s.add_sink_service(sink_vip, SINK_PORT).unwrap();
    s.node.set_offloads(true).unwrap();
    let _agent = s.start_agent_with(&["--socket-lb", "host"], WAIT).unwrap();

    let target = format!("{sink_vip}:{SINK_PORT}");
    let line = s
        .from_pod(
            "client",
            env!("CARGO_BIN_EXE_kxdp-peer"),
            &["stream", &target, "500"],
        )
        .unwrap_or_else(|e| panic!("stream through {target}: {e}"));
    let bytes: u64 = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    assert!(bytes >= 10 << 20, "{line}");

    let frontend = s.served(&format!("{target}/TCP"), "pod");
    let (packets, counted) = (
        frontend["packets"].as_u64().unwrap(),
        frontend["bytes"].as_u64().unwrap(),
    );
    // Translated per packet, and in segments larger than the MTU: GSO.
    assert!(packets > 0, "{frontend}");
    assert!(counted / packets > 1500, "{frontend}");
}
