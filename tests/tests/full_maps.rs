//! Full maps, through the agent and the real maps: more Services than the
//! frontends map holds. Those that do not fit are left out whole (never a
//! Service with some of its ports), named in the log and in the metrics,
//! the rest served; once Services are deleted, the waiting ones go in.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use kxdp_testbed::{
    agent::Agent,
    fake_apiserver::FakeApiServer,
    patience,
    scenario::EchoScenario,
    served::{read_served, Served},
};
use proxy_common::sizes::MAX_FRONTENDS;
use serde_json::{json, Value};

const NAMESPACE: &str = "bulk";
const PORTS: u16 = 5;
/// Services of five frontends each, 93 past what the map holds.
const SERVICES: usize = 13_200;
const METRICS: &str = "127.0.0.1:10249";

fn vip(i: usize) -> Ipv4Addr {
    (u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32).into()
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

fn slice(i: usize, endpoints: &[Ipv4Addr]) -> Value {
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

/// How many ports of each Service the maps serve, by Service index.
fn ports_served(served: &Served) -> BTreeMap<usize, usize> {
    let mut ports = BTreeMap::new();
    for (address, _, _) in served.frontends.keys() {
        if let IpAddr::V4(v4) = address {
            let i = (u32::from(*v4) - u32::from(vip(0))) as usize;
            *ports.entry(i).or_default() += 1;
        }
    }
    ports
}

/// `GET http://127.0.0.1:10249/metrics` from the node namespace.
fn metrics(s: &EchoScenario) -> String {
    let output = s
        .node
        .command(&s.node.node_netns, "curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            &format!("http://{METRICS}/metrics"),
        ])
        .output()
        .expect("curl");
    assert!(output.status.success(), "curl: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn waiting_in_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("kxdp_service_waiting_for_room{") && l.ends_with(" 1"))
        .filter_map(|l| {
            let name = l.split("service_name=\"").nth(1)?;
            Some(name.split('"').next()?.to_string())
        })
        .collect()
}

#[test]
fn services_past_the_maps_room_wait_whole_and_go_in_when_room_is_freed() {
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("scenario");
    let fake = |i: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32);
    let slices = (0..SERVICES)
        .map(|i| match i {
            0 => slice(0, &s.backends),
            _ => slice(i, &[fake(i)]),
        })
        .collect();
    let server = FakeApiServer::start(
        Some(&s.node.node_netns),
        (0..SERVICES).map(service).collect(),
        slices,
    )
    .expect("API");
    let mut agent = Agent::start_with(
        &s.node,
        &[
            "--kubeconfig".as_ref(),
            server.kubeconfig().as_os_str(),
            "--node-name".as_ref(),
            "node-a".as_ref(),
        ],
    )
    .expect("agent");
    agent
        .wait_for(&["synced", "full=true"], 1, Duration::from_secs(60))
        .unwrap();

    // The Services go in by name until the next would not fit.
    let mut by_name: Vec<usize> = (0..SERVICES).collect();
    by_name.sort_by_key(|i| format!("svc-{i}"));
    let fitting = MAX_FRONTENDS as usize / PORTS as usize;
    let waiting: BTreeSet<usize> = by_name[fitting..].iter().copied().collect();
    assert_eq!(waiting.len(), 93);
    let served = read_served(&s.node.pin_path()).expect("the maps");
    assert!(served.broken.is_empty(), "{:?}", served.broken);
    let ports = ports_served(&served);
    assert!(
        ports.values().all(|n| *n == PORTS as usize),
        "a Service served in part"
    );
    let absent: BTreeSet<usize> = (0..SERVICES).filter(|i| !ports.contains_key(i)).collect();
    assert_eq!(absent, waiting);

    // Each is named in the log and in the metrics.
    let named = |i: &usize| format!("Service {NAMESPACE}/svc-{i}");
    for i in &waiting {
        assert_eq!(
            agent.count(&[
                "left out until the maps have room",
                &format!("{} ", named(i))
            ]),
            1,
            "{} in the log",
            named(i)
        );
    }
    let expected: BTreeSet<String> = waiting.iter().map(|i| format!("svc-{i}")).collect();
    assert_eq!(waiting_in_metrics(&metrics(&s)), expected);

    // The rest is served.
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
        "{body:?}"
    );

    // A hundred served Services deleted: the waiting ones go in, whole.
    let deleted: Vec<usize> = by_name[1..101].to_vec();
    for i in &deleted {
        server
            .delete("Service", NAMESPACE, &format!("svc-{i}"))
            .unwrap();
        server
            .delete("EndpointSlice", NAMESPACE, &format!("svc-{i}-1"))
            .unwrap();
    }
    let deadline = Instant::now() + patience(Duration::from_secs(20));
    let settled = loop {
        let served = read_served(&s.node.pin_path()).expect("the maps");
        let ports = ports_served(&served);
        let done = waiting
            .iter()
            .all(|i| ports.get(i) == Some(&(PORTS as usize)))
            && deleted.iter().all(|i| !ports.contains_key(i));
        if done || Instant::now() > deadline {
            break (served, ports);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (served, ports) = settled;
    assert!(served.broken.is_empty(), "{:?}", served.broken);
    assert!(
        ports.values().all(|n| *n == PORTS as usize),
        "a Service served in part"
    );
    for i in &waiting {
        assert_eq!(ports.get(i), Some(&(PORTS as usize)), "svc-{i} went in");
    }
    assert_eq!(ports.len(), SERVICES - deleted.len());
    assert_eq!(waiting_in_metrics(&metrics(&s)), BTreeSet::new());
    agent.stop().unwrap();
}
