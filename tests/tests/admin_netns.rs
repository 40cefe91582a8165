//! Namespace suite: the agent's admin surface in a mini node. `/readyz`,
//! `/healthz` and `/metrics` answer in the node namespace on their default
//! addresses (kube-proxy's ports), `kxdp status` and `kxdp services`
//! print JSON, and SIGTERM stops the agent at once, cleanly, with the
//! datapath still serving.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use kxdp_testbed::{agent::Agent, scenario::EchoScenario};
use proxy_userspace::{
    dataplane::{probe, sockets::SOCKET_PROGRAMS},
    features::Feature,
};

const WAIT: Duration = Duration::from_secs(10);
const HEALTH: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

fn scenario() -> EchoScenario {
    EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario")
}

/// `GET http://{addr}{path}` from the node namespace: (status code, body);
/// code 0 when nothing answered.
fn get(s: &EchoScenario, addr: &str, path: &str) -> (u16, String) {
    s.get_from_node(addr, path, Duration::from_secs(3))
}

/// Polls `GET addr path` (bounded) until it answers `code`.
fn wait_for_code(s: &EchoScenario, addr: &str, path: &str, code: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, body) = get(s, addr, path);
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {got}, not {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The samples of a scrape: `name{labels}` → value.
fn scrape(s: &EchoScenario) -> BTreeMap<String, f64> {
    let (code, text) = get(s, METRICS, "/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn readiness_follows_the_first_sync_and_metrics_count_the_traffic() {
    let s = scenario();
    // The manifests appear only later: the agent attaches, listens and
    // waits for its first full sync.
    let later: PathBuf = s.manifests.with_extension("later");
    let mut agent = Agent::start(&s.node, &later).unwrap();
    agent.wait_attached(&s.node, WAIT).unwrap();
    let body = wait_for_code(&s, HEALTH, "/readyz", 503);
    let report = json(&body);
    assert_eq!(report["ready"], false, "{report}");
    assert_eq!(report["lastUpdated"], serde_json::Value::Null, "{report}");
    let (code, body) = get(&s, HEALTH, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(scrape(&s)["kxdp_syncs_total"], 0.0);

    std::os::unix::fs::symlink(&s.manifests, &later).unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();
    let report = json(&wait_for_code(&s, HEALTH, "/readyz", 200));
    assert_eq!(report["ready"], true, "{report}");
    assert!(report["lastUpdated"].is_string(), "{report}");

    let vip = format!("{}:80", s.vip);
    let packets = format!(
        "kxdp_frontend_packets_total{{frontend=\"{vip}/TCP\",scope=\"pod\",\
         service_namespace=\"default\",service_name=\"echo\"}}"
    );
    let before = scrape(&s);
    let start = before
        .get(&packets)
        .copied()
        .unwrap_or_else(|| panic!("{packets} missing: {:?}", before.keys().collect::<Vec<_>>()));
    for i in 0..5 {
        s.http_get(&vip)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    let started = Instant::now();
    let after = scrape(&s);
    eprintln!("scrape of 2 frontends took {:?}", started.elapsed());
    // Each connection is at least SYN, ACK, request, FIN from the client.
    assert!(
        after[&packets] >= start + 5.0 * 4.0,
        "{} → {}",
        start,
        after[&packets]
    );
    assert!(after["kxdp_syncs_total"] >= 1.0);
    assert_eq!(after["kxdp_failed_syncs_total"], 0.0);
    assert_eq!(
        after[r#"kxdp_map_entries{map="frontends"}"#], 2.0,
        "TCP and UDP"
    );
    assert_eq!(after[r#"kxdp_map_entries{map="backends"}"#], 4.0);
    assert_eq!(after[r#"kxdp_map_capacity{map="frontends"}"#], 65_536.0);
    // Two tables of two backends (M = 251: 65 entries, a block of 72),
    // in an arena of 64 MiB of 8-byte entries.
    assert_eq!(after[r#"kxdp_map_entries{map="maglev_arena"}"#], 144.0);
    assert_eq!(
        after[r#"kxdp_map_capacity{map="maglev_arena"}"#],
        f64::from(8u32 << 20)
    );
    assert!(
        after[r#"kxdp_conntrack_entries{family="ipv4"}"#] >= 2.0,
        "the connections' entries"
    );
    assert_eq!(after[r#"kxdp_conntrack_entries{family="ipv6"}"#], 0.0);
    for family in ["ipv4", "ipv6"] {
        let capacity = format!("kxdp_conntrack_capacity{{family=\"{family}\"}}");
        assert_eq!(after[&capacity], 524_288.0);
    }
    assert!(after["kxdp_sync_duration_seconds_count"] >= 1.0);
    assert!(after["kxdp_last_successful_sync_timestamp_seconds"] > 1.7e9);
    assert_eq!(
        after[r#"kxdp_dropped_packets_total{reason="no_backend"}"#],
        0.0
    );
    assert_eq!(after["kxdp_scrape_read_errors"], 0.0);

    let status = json(&s.kxdp(&["status", "--output", "json"]).unwrap());
    // The probe's findings, each with what its absence means.
    let (probed, _) = probe::this_kernel(false).expect("probing the kernel");
    let kernel = status["kernel"].as_array().unwrap();
    assert_eq!(kernel.len(), Feature::ALL.len(), "{status}");
    for (feature, present) in &probed.0 {
        let listed = kernel
            .iter()
            .find(|f| f["feature"] == feature.name())
            .unwrap_or_else(|| panic!("{} not listed: {status}", feature.name()));
        assert_eq!(listed["present"], *present, "{status}");
        assert_eq!(listed["since"], feature.first_kernel(), "{status}");
    }
    // Pod programs as tcx links, or as classic tc filters where the kernel
    // has no tcx.
    let pod_mode = if probed.has(Feature::Tcx) {
        "tcx"
    } else {
        "tc"
    };
    let programs = status["programs"].as_array().unwrap();
    for pod in &s.node.pods {
        for program in ["pod_ingress", "pod_egress"] {
            assert!(
                programs.iter().any(|p| p["program"] == program
                    && p["interface"] == pod.host_interface.as_str()
                    && p["mode"] == pod_mode),
                "{program} on {}: {status}",
                pod.host_interface
            );
        }
    }
    assert_eq!(
        programs.iter().filter(|p| p["mode"] == "cgroup").count(),
        SOCKET_PROGRAMS.len(),
        "{status}"
    );
    let maps = status["maps"].as_array().unwrap();
    let frontends = maps.iter().find(|m| m["map"] == "frontends").unwrap();
    assert_eq!(
        (
            frontends["entries"].as_u64(),
            frontends["capacity"].as_u64()
        ),
        (Some(2), Some(65_536))
    );
    let arena = maps.iter().find(|m| m["map"] == "maglev_arena").unwrap();
    assert_eq!(
        (arena["entries"].as_u64(), arena["capacity"].as_u64()),
        (Some(144), Some(8 << 20)),
        "{status}"
    );
    for map in ["conntrack", "conntrack6"] {
        assert!(maps.iter().any(|m| m["map"] == map), "{map}: {status}");
    }
    assert_eq!(status["agent"]["report"]["ready"], true, "{status}");
    assert_eq!(status["agent"]["report"]["version"], status["version"]);

    let http = s.served(&format!("{vip}/TCP"), "pod");
    let mut backends: Vec<String> = http["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    backends.sort();
    let expected: Vec<String> = s.backends.iter().map(|b| b.to_string()).collect();
    assert_eq!(backends, expected);
    assert!(http["packets"].as_u64().unwrap() >= 20, "{http}");

    agent.stop().unwrap();
    std::fs::remove_file(&later).unwrap();
}

#[test]
fn sigterm_stops_the_agent_within_seconds_and_the_datapath_keeps_serving() {
    let s = scenario();
    let vip = format!("{}:80", s.vip);
    let agent = s.start_agent().unwrap();
    wait_for_code(&s, HEALTH, "/readyz", 200);
    s.http_get(&vip).expect("through the agent");

    let started = Instant::now();
    let status = agent.stop().unwrap();
    let took = started.elapsed();
    eprintln!("agent exited {took:?} after SIGTERM");
    assert!(status.success(), "exit status 0 on SIGTERM: {status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&s, HEALTH, "/healthz").0, 0, "the listener is gone");

    s.http_get(&vip)
        .expect("the datapath keeps serving with the agent stopped");
    let status = json(&s.kxdp(&["status", "--output", "json"]).unwrap());
    assert_eq!(
        status["agent"]["report"],
        serde_json::Value::Null,
        "{status}"
    );
    assert!(status["agent"]["error"].is_string(), "{status}");
    assert_eq!(
        status["programs"].as_array().unwrap().len(),
        2 * s.node.pods.len() + SOCKET_PROGRAMS.len(),
        "still attached: {status}"
    );

    s.kxdp(&["unload"]).unwrap();
    assert!(!s.node.pin_path().exists(), "unload leaves no pins");
}

/// An agent told to serve a NIC it cannot attach to is not ready: a
/// rolling update must stop on this node instead of leaving NodePorts
/// unserved. Once the NIC appears, it is attached and the agent is ready.
#[test]
fn a_nic_that_cannot_be_served_keeps_the_agent_unready() {
    let s = scenario();
    let mut agent = Agent::start_with(
        &s.node,
        &[
            "--manifests".as_ref(),
            s.manifests.as_os_str(),
            "--nic".as_ref(),
            "kxdpnic0".as_ref(),
        ],
    )
    .unwrap();
    agent.wait_for(&["synced"], 1, WAIT).unwrap();
    // Several loop rounds (100 ms each) later, still not ready.
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = get(&s, HEALTH, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(get(&s, HEALTH, "/healthz").0, 200);
    s.node
        .exec_ok(
            &s.node.node_netns,
            &[
                "ip", "link", "add", "kxdpnic0", "type", "veth", "peer", "name", "kxdpnic1",
            ],
        )
        .unwrap();
    for end in ["kxdpnic0", "kxdpnic1"] {
        s.node
            .exec_ok(&s.node.node_netns, &["ip", "link", "set", end, "up"])
            .unwrap();
    }
    wait_for_code(&s, HEALTH, "/readyz", 200);
    // veth runs XDP in the driver; `kxdp status` asks the kernel.
    let status = json(&s.kxdp(&["status", "--output", "json"]).unwrap());
    let nic = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == "nic_ingress")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        (&nic["interface"], &nic["xdpMode"]),
        (&"kxdpnic0".into(), &"native".into()),
        "{status}"
    );
    let table = s.kxdp(&["status"]).unwrap();
    assert!(table.contains("xdp native"), "{table}");
}
