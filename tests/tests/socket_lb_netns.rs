//! Namespace suite: host-originated traffic (processes in the node's network
//! namespace) reaching a ClusterIP through the cgroup socket hooks. The
//! hooks attach to the test's own cgroup (`MiniNode::cgroup`), never the
//! machine's root; clients join it before they exec.

use std::{collections::BTreeSet, process::Output, time::Duration};

use proxy_userspace::{dataplane::probe, features::Feature};

use kxdp_testbed::{
    agent::{Agent, AgentHost},
    cgroup::TestCgroup,
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

#[test]
fn a_cluster_ip_without_backends_refuses_host_connections() {
    let s = scenario();
    let mut agent = start(&s);
    s.write_slice(&[(s.backends[0], false), (s.backends[1], false)])
        .unwrap();
    agent.wait_for(&["synced"], 2, WAIT).unwrap();
    // ECONNREFUSED at connect, as a TCP RST would give (curl -v names it);
    // EPERM where the kernel cannot set the hook's error (before 6.1).
    let (probed, _) = probe::this_kernel(false).expect("probing the kernel");
    let expected = if probed.has(Feature::SockAddrSetRetval) {
        "Connection refused"
    } else {
        "Operation not permitted"
    };
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
    assert!(out.contains("detached 10 links, removed 12 maps"), "{out}");
    assert!(host_curl(&s, &[]).is_err(), "no hooks after unload");
}

/// Packets the datapath counted for the echo HTTP frontend (`kxdp services`).
fn http_packets(s: &EchoScenario) -> u64 {
    let table = s.kxdp(&["services"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let column = header.iter().position(|h| *h == "PACKETS").unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}:80/TCP", s.vip)))
        .unwrap_or_else(|| panic!("{table}"));
    row.split_whitespace().nth(column).unwrap().parse().unwrap()
}

#[test]
fn pods_in_the_hooked_cgroup_are_left_to_the_pod_programs() {
    let s = scenario();
    let _agent = start(&s);
    let before = http_packets(&s);
    // A pod's process in the hooked cgroup (as under the default, the
    // cgroup2 root): its network namespace is not the node's, so the socket
    // hooks leave it and tc translates (and counts) its packets.
    let url = format!("http://{}:80/", s.vip);
    let output = s.node.cgroup.output(
        &s.node.pod("client").netns,
        &["curl", "-sS", "--max-time", "3", &url],
    );
    let body = stdout(&output.unwrap()).expect("from the pod");
    assert!(body.contains("client=10.200.1.2:"), "{body}");
    assert!(http_packets(&s) > before, "tc did not see the connection");
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
    assert_eq!(agent.count(&["socket hook pinned on another cgroup"]), 4);
    assert_eq!(agent.count(&["socket hook installed on cgroup"]), 4);
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
