//! Namespace suite: real TCP and UDP through a ClusterIP in a mini node
//! (client pod + two backend pods), with the real `kxdp agent`.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kxdp_testbed::{
    agent::{kxdp_bin, Agent},
    manifests::{allocated_cluster_ip, echo_endpoint_slice, ECHO_SERVICE},
    netns::{run, MiniNode},
};

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    node: MiniNode,
    manifests: PathBuf,
    vip: Ipv4Addr,
    backends: [Ipv4Addr; 2],
}

/// Node with pods client (1), b1 (2), b2 (3) serving HTTP 8080 / UDP 5353.
fn setup() -> Setup {
    let mut node = MiniNode::new().expect("mini node");
    node.add_pod("client", 1).expect("client pod");
    for (name, index) in [("b1", 2), ("b2", 3)] {
        node.add_pod(name, index).expect("backend pod");
        let netns = node.pod(name).netns.clone();
        let mut peer = node.command(&netns, env!("CARGO_BIN_EXE_kxdp-peer"));
        peer.args(["serve", "--name", name, "--tcp", "8080", "--udp", "5353"])
            .stdout(Stdio::piped());
        let child = node.spawn(peer).expect("backend server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "backend {name} did not start");
    }
    let manifests = std::env::temp_dir().join(format!("{}-manifests", node.prefix));
    fs::create_dir_all(&manifests).unwrap();
    fs::write(manifests.join("service.yaml"), ECHO_SERVICE).unwrap();
    let backends = [node.pod("b1").ip, node.pod("b2").ip];
    write_slice(&manifests, &[(backends[0], true), (backends[1], true)]);
    Setup {
        vip: allocated_cluster_ip(ECHO_SERVICE),
        node,
        manifests,
        backends,
    }
}

fn write_slice(dir: &std::path::Path, endpoints: &[(Ipv4Addr, bool)]) {
    // Write then rename, as kubectl and editors do, so the agent never reads half a file.
    let tmp = dir.join(".slice.tmp");
    fs::write(&tmp, echo_endpoint_slice(endpoints)).unwrap();
    fs::rename(tmp, dir.join("slice.yaml")).unwrap();
}

/// One HTTP GET from the client pod through the VIP; the backend's answer.
fn http_get(s: &Setup) -> Result<String, String> {
    let output = s
        .node
        .command(&s.node.pod("client").netns, "curl")
        .args(["-sS", "--max-time", "3", &format!("http://{}:80/", s.vip)])
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

fn udp_query(s: &Setup, payload: &str) -> Result<String, String> {
    let output = s
        .node
        .command(&s.node.pod("client").netns, env!("CARGO_BIN_EXE_kxdp-peer"))
        .args(["udp-query", &format!("{}:53", s.vip), payload, "2000"])
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Counts answers per backend over `n` requests; every request must succeed.
fn spread(s: &Setup, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let body =
            http_get(s).unwrap_or_else(|e| panic!("request {i} through {} failed: {e}", s.vip));
        let backend = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        *seen.entry(backend).or_insert(0) += 1;
    }
    seen
}

fn kxdp(s: &Setup, args: &[&str]) -> String {
    let mut command = s.node.command(&s.node.node_netns, kxdp_bin());
    command.args(args).arg("--pin-path").arg(s.node.pin_path());
    String::from_utf8_lossy(&run(&mut command).expect("kxdp command").stdout).into_owned()
}

#[test]
fn tcp_and_udp_reach_both_backends_through_the_cluster_ip() {
    let s = setup();
    let mut agent = Agent::start(&s.node, &s.manifests).unwrap();
    agent.wait_for(&["attached"], 3, WAIT).unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();

    let seen = spread(&s, 30);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["backend=b1", "backend=b2"],
        "{seen:?}"
    );
    // ClusterIP traffic from a pod keeps the client's address.
    let body = http_get(&s).unwrap();
    assert!(
        body.contains(&format!("client={}:", s.node.pod("client").ip)),
        "{body}"
    );

    let reply = udp_query(&s, "hello").expect("UDP through the VIP");
    // The reply comes from the VIP and service port, served by a backend.
    assert!(
        reply.starts_with(&format!("from={}:53 backend=b", s.vip)),
        "{reply}"
    );
    assert!(reply.ends_with("payload=hello"), "{reply}");

    let table = kxdp(&s, &["services"]);
    let http_row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}:80/TCP", s.vip)))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        http_row.contains(&format!("{}:8080", s.backends[0]))
            && http_row.contains(&format!("{}:8080", s.backends[1])),
        "{http_row}"
    );
    let packets: u64 = http_row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(packets >= 31 * 3, "every request is counted: {http_row}");
    assert!(table.contains(&format!("{}:53/UDP", s.vip)), "{table}");
}

#[test]
fn a_backend_that_turns_not_ready_leaves_rotation() {
    let s = setup();
    let mut agent = Agent::start(&s.node, &s.manifests).unwrap();
    agent.wait_for(&["attached"], 3, WAIT).unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();
    assert_eq!(spread(&s, 20).len(), 2);

    write_slice(
        &s.manifests,
        &[(s.backends[0], true), (s.backends[1], false)],
    );
    agent.wait_for(&["synced"], 2, WAIT).unwrap();
    let seen = spread(&s, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["backend=b1"], "{seen:?}");
}

#[test]
fn datapath_outlives_the_agent_until_unload() {
    let s = setup();
    let mut agent = Agent::start(&s.node, &s.manifests).unwrap();
    agent.wait_for(&["attached"], 3, WAIT).unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();
    http_get(&s).expect("through the agent");

    let started = Instant::now();
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exits cleanly on SIGTERM: {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    http_get(&s).expect("the datapath keeps serving with the agent stopped");

    // A new agent adopts the pinned links and maps: nothing is rewritten.
    let mut agent = Agent::start(&s.node, &s.manifests).unwrap();
    agent.wait_for(&["adopted pinned link"], 3, WAIT).unwrap();
    agent
        .wait_for(&["synced", "written=0", "deleted=0"], 1, WAIT)
        .unwrap();
    assert_eq!(spread(&s, 10).values().sum::<usize>(), 10);
    agent.stop().unwrap();

    let out = kxdp(&s, &["unload"]);
    assert!(out.contains("detached 3 links, removed 6 maps"), "{out}");
    assert!(!s.node.pin_path().exists(), "unload leaves no pins");
    let tc = s
        .node
        .exec_ok(&s.node.node_netns, &["bpftool", "net"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Ok(listing) = tc {
        assert!(!listing.contains("pod_ingress"), "{listing}");
    }
    assert!(
        http_get(&s).is_err(),
        "with the datapath gone the VIP answers nothing"
    );
    let _ = Command::new("rm").arg("-rf").arg(&s.manifests).status();
}
