//! Namespace suite: socket-level load balancing. Host processes (in the
//! node's network namespace) and, with `--socket-lb all` (the default),
//! pods' processes reach Services through the cgroup socket hooks, which
//! send each socket straight to a backend. The hooks attach to the test's
//! own cgroup (`MiniNode::cgroup`), never the machine's root; clients join
//! it before they exec. (The other suites run their pod clients outside it:
//! they test the per-packet path.)

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    process::{Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use proxy_userspace::{dataplane::probe, features::Feature};

use kxdp_testbed::{
    agent::{Agent, AgentHost},
    cgroup::TestCgroup,
    datapath::back_date_sock_affinity,
    manifests::{endpoint_slice, service, Endpoint, ServiceManifest, SLICE_CONTROLLER},
    netns::exec_ok,
    scenario::EchoScenario,
};

const WAIT: Duration = Duration::from_secs(10);
const HOOKED: &str = "reach ClusterIPs through the socket hooks";

fn scenario() -> EchoScenario {
    EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario")
}

fn start(s: &EchoScenario) -> Agent {
    let mut agent = s.start_agent().unwrap();
    agent.wait_for(&[HOOKED], 1, WAIT).unwrap();
    agent
}

/// Runs `argv` in the node namespace inside the hooked cgroup.
fn in_cgroup(s: &EchoScenario, argv: &[&str]) -> Output {
    s.node.cgroup.output(&s.node.node_netns, argv).unwrap()
}

fn stdout(output: &Output) -> Result<String, String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

fn host_curl(s: &EchoScenario, extra: &[&str]) -> Result<String, String> {
    let url = format!("http://{}:80/", s.vip);
    let mut argv = vec!["curl", "-sS", "--max-time", "3"];
    argv.extend_from_slice(extra);
    argv.push(&url);
    stdout(&in_cgroup(s, &argv))
}

#[test]
fn host_processes_reach_both_backends_through_the_cluster_ip_and_see_the_vip() {
    let s = scenario();
    let _agent = start(&s);

    let mut seen = BTreeSet::new();
    for i in 0..24 {
        let body = host_curl(&s, &[]).unwrap_or_else(|e| panic!("request {i} from the node: {e}"));
        // The backend sees the node (its address on the pod's link).
        assert!(body.contains(" client=10.200."), "{body}");
        seen.insert(body.split_whitespace().next().unwrap().to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["backend=b1", "backend=b2"]
    );

    // getpeername: curl reports the VIP and service port as the peer.
    let peer = host_curl(
        &s,
        &["-o", "/dev/null", "-w", "%{remote_ip}:%{remote_port}"],
    )
    .unwrap();
    assert_eq!(peer, format!("{}:80", s.vip));

    // UDP: the reply appears to come from the VIP and service port.
    let peer_bin = env!("CARGO_BIN_EXE_kxdp-peer");
    let target = format!("{}:53", s.vip);
    let reply = stdout(&in_cgroup(
        &s,
        &[peer_bin, "udp-query", &target, "hello", "2000"],
    ))
    .expect("UDP from the node through the VIP");
    assert!(
        reply.starts_with(&format!("from={}:53 backend=b", s.vip)),
        "{reply}"
    );
    assert!(reply.ends_with("payload=hello"), "{reply}");
}

#[test]
fn the_hooks_are_scoped_to_their_cgroup() {
    let s = scenario();
    let _agent = start(&s);
    host_curl(&s, &[]).expect("inside the cgroup");
    // Same namespace, outside the cgroup: the VIP is not translated, and
    // the node has no route to it.
    let url = format!("http://{}:80/", s.vip);
    let outside = exec_ok(
        &s.node.node_netns,
        &["curl", "-sS", "--max-time", "2", &url],
    );
    assert!(
        outside.is_err(),
        "translated outside the cgroup: {outside:?}"
    );
}

/// Takes every endpoint of the echo Service out of service and waits for
/// the sync; what a refused connect then fails with: ECONNREFUSED, as a TCP
/// RST would give (curl -v names it), or EPERM where the kernel cannot set
/// the hook's error (before 6.1).
fn without_endpoints(s: &EchoScenario, agent: &mut Agent) -> &'static str {
    s.write_slice(&[(s.backends[0], false), (s.backends[1], false)])
        .unwrap();
    agent.wait_for(&["synced"], 2, WAIT).unwrap();
    let (probed, _) = probe::this_kernel(false).expect("probing the kernel");
    if probed.has(Feature::SockAddrSetRetval) {
        "Connection refused"
    } else {
        "Operation not permitted"
    }
}

#[test]
fn a_cluster_ip_without_backends_refuses_host_connections() {
    let s = scenario();
    let mut agent = start(&s);
    let expected = without_endpoints(&s, &mut agent);
    let err = host_curl(&s, &["-v"]).unwrap_err();
    assert!(err.contains(expected), "{err}");
}

#[test]
fn a_restarted_agent_adopts_the_socket_hooks_and_unload_removes_them() {
    let s = scenario();
    let agent = start(&s);
    host_curl(&s, &[]).expect("through the first agent");
    agent.stop().unwrap();
    host_curl(&s, &[]).expect("the hooks stay with the agent stopped");

    let mut agent = start(&s);
    agent.wait_for(&["socket hook adopted"], 4, WAIT).unwrap();
    assert_eq!(agent.count(&["socket hook installed"]), 0);
    host_curl(&s, &[]).expect("through the adopted hooks");
    agent.stop().unwrap();

    let out = s.kxdp(&["unload"]).unwrap();
    // Every map the object pins (the per-CPU scratch maps are not pinned).
    let maps = proxy_userspace::dataplane::maps::ALL.len();
    assert!(
        out.contains(&format!("detached 14 links, removed {maps} maps")),
        "{out}"
    );
    assert!(host_curl(&s, &[]).is_err(), "no hooks after unload");
}

/// (sockets, packets) the datapath counted for the echo HTTP frontend.
fn http_counts(s: &EchoScenario) -> (u64, u64) {
    let served = s.served(&format!("{}:80/TCP", s.vip), "pod");
    (
        served["sockets"].as_u64().unwrap(),
        served["packets"].as_u64().unwrap(),
    )
}

/// Runs `argv` in pod `pod` inside the hooked cgroup.
fn in_pod_cgroup(s: &EchoScenario, pod: &str, argv: &[&str]) -> Result<String, String> {
    stdout(&s.node.cgroup.output(&s.node.pod(pod).netns, argv).unwrap())
}

fn pod_curl(s: &EchoScenario, pod: &str, url: &str, extra: &[&str]) -> Result<String, String> {
    let mut argv = vec!["curl", "-sS", "--max-time", "3"];
    argv.extend_from_slice(extra);
    argv.push(url);
    in_pod_cgroup(s, pod, &argv)
}

/// `NAME` of an answer `backend=NAME ...`.
fn backend_of(answer: &str) -> String {
    let first = answer.split_whitespace().next().unwrap_or_default();
    first.strip_prefix("backend=").unwrap_or(first).to_string()
}

/// The backends answering `n` GETs of `url` from `pod`, each of which must
/// see the pod's own address as its client.
fn pod_backends(s: &EchoScenario, pod: &str, url: &str, n: usize) -> BTreeSet<String> {
    let ip = s.node.pod(pod).ip;
    (0..n)
        .map(|i| {
            let body = pod_curl(s, pod, url, &[])
                .unwrap_or_else(|e| panic!("request {i} from {pod}: {e}"));
            assert!(body.contains(&format!(" client={ip}:")), "{body}");
            backend_of(&body)
        })
        .collect()
}

fn agent_with(s: &EchoScenario, socket_lb: &str) -> Agent {
    let flags: [&OsStr; 4] = [
        "--manifests".as_ref(),
        s.manifests.as_os_str(),
        "--socket-lb".as_ref(),
        socket_lb.as_ref(),
    ];
    let mut agent = Agent::start_with(&s.node, &flags).unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();
    agent.wait_attached(&s.node, WAIT).unwrap();
    agent
}

#[test]
fn pods_in_the_hooked_cgroup_connect_straight_to_a_backend() {
    let s = scenario();
    let _agent = start(&s);
    let url = format!("http://{}:80/", s.vip);
    let before = http_counts(&s);
    assert_eq!(
        pod_backends(&s, "client", &url, 24),
        ["b1", "b2"].map(String::from).into()
    );
    // getpeername: the pod sees the VIP and service port as its peer.
    let peer = pod_curl(
        &s,
        "client",
        &url,
        &["-o", "/dev/null", "-w", "%{remote_ip}:%{remote_port}"],
    )
    .unwrap();
    assert_eq!(peer, format!("{}:80", s.vip));
    // Every connect counted once; not one packet translated on the way.
    let (sockets, packets) = http_counts(&s);
    assert_eq!((sockets - before.0, packets), (25, before.1));

    // Unconnected UDP: each datagram sent to a backend, the answer seen
    // from the VIP.
    let peer_bin = env!("CARGO_BIN_EXE_kxdp-peer");
    let target = format!("{}:53", s.vip);
    let reply = in_pod_cgroup(
        &s,
        "client",
        &[peer_bin, "udp-query", &target, "hi", "2000"],
    )
    .expect("UDP from the pod through the VIP");
    assert!(
        reply.starts_with(&format!("from={}:53 backend=b", s.vip)),
        "{reply}"
    );
    assert!(reply.contains(" client=10.200.1.2:"), "{reply}");
    assert!(reply.ends_with(" payload=hi"), "{reply}");
    assert_eq!(s.served(&format!("{}:53/UDP", s.vip), "pod")["sockets"], 1);
}

#[test]
fn with_socket_lb_host_pods_are_left_to_the_pod_programs() {
    let s = scenario();
    let mut agent = agent_with(&s, "host");
    agent
        .wait_for(&[HOOKED, "sockets=\"host processes\""], 1, WAIT)
        .unwrap();
    let before = http_counts(&s);
    // A pod's process in the hooked cgroup (as under the default, the
    // cgroup2 root): its network namespace is not the node's, so the socket
    // hooks leave it and tc translates (and counts) its packets.
    let url = format!("http://{}:80/", s.vip);
    let body = pod_curl(&s, "client", &url, &[]).expect("from the pod");
    assert!(body.contains("client=10.200.1.2:"), "{body}");
    let (sockets, packets) = http_counts(&s);
    assert_eq!(sockets, before.0, "the socket hooks took a pod's connect");
    assert!(packets > before.1, "tc did not see the connection");
    // Host processes still go through the hooks.
    host_curl(&s, &[]).expect("from the node");
    assert_eq!(http_counts(&s).0, before.0 + 1);
}

#[test]
fn with_socket_lb_off_the_hooks_are_detached_and_pods_use_the_pod_programs() {
    let s = scenario();
    let agent = start(&s);
    host_curl(&s, &[]).expect("through the hooks");
    agent.stop().unwrap();
    let mut agent = agent_with(&s, "off");
    agent
        .wait_for(&["socket hooks detached", "detached=8"], 1, WAIT)
        .unwrap();
    assert!(host_curl(&s, &[]).is_err(), "the node still translated");
    let url = format!("http://{}:80/", s.vip);
    let before = http_counts(&s);
    pod_curl(&s, "client", &url, &[]).expect("from the pod, per packet");
    let (sockets, packets) = http_counts(&s);
    assert_eq!(sockets, before.0);
    assert!(packets > before.1, "tc did not see the connection");
}

#[test]
fn a_pod_choosing_itself_reaches_itself() {
    let s = scenario();
    let _agent = start(&s);
    // From backend b1: both backends answer, b1 too, each seeing b1's own
    // address (the socket simply connects to its own pod).
    let url = format!("http://{}:80/", s.vip);
    assert_eq!(
        pod_backends(&s, "b1", &url, 24),
        ["b1", "b2"].map(String::from).into()
    );
}

#[test]
fn a_service_without_endpoints_refuses_a_pods_connect() {
    let s = scenario();
    let mut agent = start(&s);
    let expected = without_endpoints(&s, &mut agent);
    let url = format!("http://{}:80/", s.vip);
    let err = pod_curl(&s, "client", &url, &["-v"]).unwrap_err();
    assert!(err.contains(expected), "{err}");
    let summary = s.kxdp(&["services"]).unwrap();
    assert!(summary.contains(" and 1 socket calls refused"), "{summary}");
}

#[test]
fn a_pods_socket_leaves_source_ranges_and_a_local_policys_drop_to_the_pod_programs() {
    let s = scenario();
    let endpoints: Vec<Endpoint> = s.backends.iter().map(|b| Endpoint::ready(*b)).collect();
    // A load balancer address open to b2's subnet only.
    let ingress = Ipv4Addr::new(192, 168, 77, 10);
    let web = ServiceManifest::loadbalancer_web_lb(
        Ipv4Addr::new(10, 96, 100, 62),
        [30080, 30053],
        ingress,
    )
    .source_ranges(&["10.200.3.0/24"]);
    let web_slice = endpoint_slice(
        "web-lb",
        "web-lb-q8w2e",
        SLICE_CONTROLLER,
        &[("80-8080", "TCP", 8080)],
        &endpoints,
    );
    s.write_manifest("web-lb.yaml", &format!("{}---\n{web_slice}", web.to_yaml()))
        .unwrap();
    // internalTrafficPolicy: Local, and no endpoint on this node (the agent
    // has no node name: none is local).
    let elsewhere_vip = Ipv4Addr::new(10, 96, 100, 63);
    let ports = ["{name: http, port: 80, protocol: TCP, targetPort: 8080}"];
    let elsewhere = service(
        "elsewhere",
        "ClusterIP",
        elsewhere_vip,
        Some("elsewhere"),
        &ports,
    ) + "  internalTrafficPolicy: Local\n";
    let elsewhere_slice = endpoint_slice(
        "elsewhere",
        "elsewhere-7tq4z",
        SLICE_CONTROLLER,
        &[("http", "TCP", 8080)],
        &endpoints,
    );
    s.write_manifest(
        "elsewhere.yaml",
        &format!("{elsewhere}---\n{elsewhere_slice}"),
    )
    .unwrap();
    let _agent = start(&s);
    let quick = ["--max-time", "1"];

    // The client pod (10.200.1.2) is outside the ranges: its packets are
    // dropped, as per packet, not its connect refused.
    let lb_url = format!("http://{ingress}:80/");
    let outside = pod_curl(&s, "client", &lb_url, &quick).unwrap_err();
    assert!(outside.contains("timed out"), "{outside}");
    // b2 (10.200.3.2) is inside: served, per packet (where it chooses
    // itself, hairpinned: it sees the address it asked for as its client).
    for i in 0..3 {
        let body = pod_curl(&s, "b2", &lb_url, &[]).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(body.starts_with("backend=b"), "{body}");
    }
    let lb_frontend = format!("{ingress}:80/TCP");
    let served = s.served(&lb_frontend, "pod");
    assert_eq!(served["sockets"], 0, "{served}");
    assert!(served["packets"].as_u64().unwrap() > 0, "{served}");

    // A Local policy without a local endpoint drops too.
    let dropped =
        pod_curl(&s, "client", &format!("http://{elsewhere_vip}:80/"), &quick).unwrap_err();
    assert!(dropped.contains("timed out"), "{dropped}");
}

#[test]
fn client_ip_affinity_holds_per_pod_through_the_socket_hooks() {
    let s = scenario();
    let vip = Ipv4Addr::new(10, 96, 100, 61);
    s.write_sticky_service(vip).unwrap();
    let _agent = start(&s);
    let url = format!("http://{vip}:80/");
    let pin_path = s.node.pin_path();
    // Each burst sticks to one backend; between bursts the pod's entry is
    // made 31 s old, so the next burst is balanced afresh and the pod moves
    // within a few (24 bursts on one of 2 backends: a 2^-23 chance).
    let mut chosen = BTreeSet::new();
    for burst in 0..24 {
        let backends = pod_backends(&s, "client", &url, 4);
        assert_eq!(backends.len(), 1, "burst {burst}: {backends:?}");
        chosen.extend(backends);
        assert_eq!(back_date_sock_affinity(&pin_path, 31).unwrap(), 1);
        if chosen.len() > 1 {
            break;
        }
    }
    assert!(chosen.len() > 1, "never moved: {chosen:?}");
    // Within the timeout the pod stays; another pod has an entry of its own.
    let here = pod_backends(&s, "client", &url, 1);
    back_date_sock_affinity(&pin_path, 29).unwrap();
    assert_eq!(pod_backends(&s, "client", &url, 3), here);
    pod_backends(&s, "b1", &url, 1);
    assert_eq!(back_date_sock_affinity(&pin_path, 0).unwrap(), 2);
}

#[test]
fn a_pods_connected_udp_socket_moves_when_its_backend_leaves() {
    // 100 ms apart: 10 s, far longer than the test needs.
    const DATAGRAMS: usize = 100;
    let mut s = scenario();
    let mut agent = start(&s);
    let peer_bin = env!("CARGO_BIN_EXE_kxdp-peer");
    let target = format!("{}:53", s.vip);
    let mut session = s.node.cgroup.command(
        &s.node.pod("client").netns,
        &[
            peer_bin,
            "udp-session",
            &target,
            &DATAGRAMS.to_string(),
            "100",
        ],
    );
    session.stdout(Stdio::piped());
    let out = s.node.spawn(session).unwrap().stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(WAIT).expect("the session went silent");
    let first = next();
    let (_, backend) = first
        .split_once(" backend=")
        .unwrap_or_else(|| panic!("{first}"));
    let stays = usize::from(backend == "b1");
    let stays_name = format!("b{}", stays + 1);
    let before = agent.count(&["synced"]);
    s.write_slice(&[(s.backends[stays], true)]).unwrap();
    agent.wait_for(&["synced"], before + 1, WAIT).unwrap();
    // The same socket's datagrams go to the remaining backend from now on
    // (a datagram or two may still have been in flight).
    let moved = (0..DATAGRAMS)
        .map(|_| next())
        .find(|line| line.ends_with(&format!(" backend={stays_name}")));
    assert!(moved.is_some(), "the socket never moved to {stays_name}");
    let after: Vec<String> = (0..5).map(|_| next()).collect();
    assert!(
        after
            .iter()
            .all(|l| l.ends_with(&format!(" backend={stays_name}"))),
        "{after:?}"
    );
}

#[test]
fn an_agent_given_another_cgroup_moves_the_hooks_there() {
    let s = scenario();
    let agent = start(&s);
    agent.stop().unwrap();
    let other = TestCgroup::new(&format!("{}-other", s.node.prefix)).unwrap();
    let host = AgentHost {
        netns: &s.node.node_netns,
        pod_interfaces: &s.node.pod_interface_glob(),
        pin_path: &s.node.pin_path(),
        cgroup_path: other.path(),
    };
    let mut agent =
        Agent::start_on(&host, &["--manifests".as_ref(), s.manifests.as_os_str()]).unwrap();
    agent.wait_for(&[HOOKED], 1, WAIT).unwrap();
    assert_eq!(agent.count(&["socket hook pinned on another cgroup"]), 8);
    assert_eq!(agent.count(&["socket hook installed on cgroup"]), 8);
    let url = format!("http://{}:80/", s.vip);
    let curl = ["curl", "-sS", "--max-time", "2", &url];
    let moved = other.output(&s.node.node_netns, &curl).unwrap();
    assert!(moved.status.success(), "not translated in the new cgroup");
    assert!(
        host_curl(&s, &[]).is_err(),
        "still translated in the old cgroup"
    );
    agent.stop().unwrap();
    s.kxdp(&["unload"]).unwrap();
}
