//! The agent killed (SIGKILL: no chance to tidy up) in the middle of its
//! first full sync of 50,000 frontends from the API server: the maps it
//! leaves hold no half-written frontend (each one there has its Maglev
//! table and every backend the table names), and the next agent finishes
//! the sync: every frontend, exactly as the API has it, served.

use std::time::{Duration, Instant};

use kxdp_testbed::{
    agent::Agent, fake_apiserver::FakeApiServer, patience, scenario::EchoScenario,
    served::read_served,
};
use proxy_userspace::dataplane::maps::BpfMaps;
use serde_json::{json, Value};

const NAMESPACE: &str = "bulk";
const PORTS: u16 = 5;

/// `$KXDP_KILL_SERVICES` (the VM suites' smaller count), else 10,000.
fn service_count() -> usize {
    std::env::var("KXDP_KILL_SERVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

fn vip(i: usize) -> std::net::Ipv4Addr {
    (u32::from(std::net::Ipv4Addr::new(10, 100, 0, 1)) + i as u32).into()
}

/// Two made-up endpoints of Service `i`, none shared.
fn backends(i: usize) -> [std::net::Ipv4Addr; 2] {
    let first = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + 2 * i as u32;
    [first.into(), (first + 1).into()]
}

fn service(i: usize) -> Value {
    let ports: Vec<Value> = (0..PORTS)
        .map(|p| json!({"name": format!("p{p}"), "port": 80 + p, "protocol": "TCP", "targetPort": 8080}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "clusterIP": vip(i).to_string(),
                 "clusterIPs": [vip(i).to_string()], "ports": ports}
    })
}

fn slice(i: usize, endpoints: &[std::net::Ipv4Addr]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|b| json!({"addresses": [b.to_string()], "conditions": {"ready": true}}))
        .collect();
    let ports: Vec<Value> = (0..PORTS)
        .map(|p| json!({"name": format!("p{p}"), "port": 8080, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-1"), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    })
}

#[test]
fn an_agent_killed_mid_sync_leaves_no_half_frontend_and_the_next_finishes() {
    let services = service_count();
    let frontends = services * PORTS as usize;
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("scenario");
    // Service 0 is served by the scenario's real backends.
    let slices = (0..services)
        .map(|i| match i {
            0 => slice(0, &s.backends),
            _ => slice(i, &backends(i)),
        })
        .collect();
    let server = FakeApiServer::start(
        Some(&s.node.node_netns),
        (0..services).map(service).collect(),
        slices,
    )
    .expect("API");
    let flags = [
        "--kubeconfig".as_ref(),
        server.kubeconfig().as_os_str(),
        "--node-name".as_ref(),
        "node-a".as_ref(),
    ];
    let pin_path = s.node.pin_path();

    // Killed as soon as its sync's first frontends are in.
    let mut agent = Agent::start_with(&s.node, &flags).expect("agent");
    agent
        .wait_for(&["maps ready"], 1, Duration::from_secs(30))
        .unwrap();
    let maps = BpfMaps::open_pinned(&pin_path).expect("the pinned maps");
    let deadline = Instant::now() + patience(Duration::from_secs(60));
    let any_frontend = || {
        let count = maps.count("FRONTENDS", 1).expect("a counted map");
        count.expect("counting FRONTENDS").entries > 0
    };
    while !any_frontend() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Dropping an Agent SIGKILLs it.
    drop(agent);
    let left = read_served(&pin_path).expect("reading the maps");
    eprintln!(
        "killed with {} of {frontends} frontends in the maps",
        left.frontends.len()
    );
    assert!(
        !left.frontends.is_empty() && left.frontends.len() < frontends,
        "not killed mid-sync: {} of {frontends} frontends",
        left.frontends.len()
    );
    assert!(left.broken.is_empty(), "half-written: {:?}", left.broken);
    // What is there is what the API says.
    for ((address, port, _), frontend) in &left.frontends {
        let i = (u32::from(match address {
            std::net::IpAddr::V4(v4) => *v4,
            std::net::IpAddr::V6(v6) => panic!("an IPv6 frontend {v6}"),
        }) - u32::from(vip(0))) as usize;
        let wanted = match i {
            0 => s.backends.clone(),
            _ => backends(i).to_vec(),
        };
        let wanted: std::collections::BTreeSet<std::net::IpAddr> =
            wanted.into_iter().map(Into::into).collect();
        assert_eq!(frontend.backends, wanted, "{address}:{port}");
    }

    // The next agent adopts the maps and finishes the sync.
    let mut agent = Agent::start_with(&s.node, &flags).expect("agent");
    agent
        .wait_for(&["synced", "full=true"], 1, Duration::from_secs(60))
        .unwrap();
    let done = read_served(&pin_path).expect("reading the maps");
    assert!(done.broken.is_empty(), "half-written: {:?}", done.broken);
    assert_eq!(done.frontends.len(), frontends);
    for i in [0, 1, services / 2, services - 1] {
        for port in 80..80 + PORTS {
            let frontend = &done.frontends[&(vip(i).into(), port, "pod")];
            assert_eq!(frontend.backends.len(), 2, "svc-{i}:{port}");
        }
    }
    agent
        .wait_for(
            &["attached"],
            2 * s.node.pods.len(),
            Duration::from_secs(10),
        )
        .unwrap();
    let body = s.http_get(&format!("{}:80", vip(0)));
    assert!(
        body.as_ref().is_ok_and(|b| b.starts_with("backend=")),
        "through svc-0 after the restart: {body:?}"
    );
    agent.stop().unwrap();
}
