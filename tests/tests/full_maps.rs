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
    api_objects::{nth_address, service, slice},
    fake_apiserver::FakeApiServer,
    patience,
    scenario::EchoScenario,
    served::{read_served, Served},
};
use proxy_common::sizes::MAX_FRONTENDS;

const NAMESPACE: &str = "bulk";
const PORTS: [u16; 5] = [80, 81, 82, 83, 84];
/// Services of five frontends each, 93 past what the map holds.
const SERVICES: usize = 13_200;
const METRICS: &str = "127.0.0.1:10249";

fn vip(i: usize) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 100, 0, 1), i)
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
    let (code, text) = s.get_from_node(METRICS, "/metrics", Duration::from_secs(20));
    assert_eq!(code, 200, "/metrics: {text}");
    text
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
    let name = |i: usize| format!("svc-{i}");
    let fake = |i: usize| nth_address(Ipv4Addr::new(10, 128, 0, 0), i);
    let slices = (0..SERVICES)
        .map(|i| match i {
            0 => slice(NAMESPACE, &name(0), &s.backends, &PORTS, 8080),
            _ => slice(NAMESPACE, &name(i), &[fake(i)], &PORTS, 8080),
        })
        .collect();
    let server = FakeApiServer::start(
        Some(&s.node.node_netns),
        (0..SERVICES)
            .map(|i| service(NAMESPACE, &name(i), vip(i), &PORTS))
            .collect(),
        slices,
    )
    .expect("API");
    let mut agent = Agent::start_with_api(&s.node, &server).expect("agent");
    agent
        .wait_for(&["synced", "full=true"], 1, Duration::from_secs(60))
        .unwrap();

    // The Services go in by name until the next would not fit.
    let mut by_name: Vec<usize> = (0..SERVICES).collect();
    by_name.sort_by_key(|i| format!("svc-{i}"));
    let fitting = MAX_FRONTENDS as usize / PORTS.len();
    let waiting: BTreeSet<usize> = by_name[fitting..].iter().copied().collect();
    assert_eq!(waiting.len(), 93);
    let served = read_served(&s.node.pin_path()).expect("the maps");
    assert!(served.broken.is_empty(), "{:?}", served.broken);
    let ports = ports_served(&served);
    assert!(
        ports.values().all(|n| *n == PORTS.len()),
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
        .wait_attached(&s.node, Duration::from_secs(10))
        .unwrap();
    s.http_backend(&format!("{}:80", vip(0)))
        .expect("through a Service that fits");

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
        let done = waiting.iter().all(|i| ports.get(i) == Some(&(PORTS.len())))
            && deleted.iter().all(|i| !ports.contains_key(i));
        if done || Instant::now() > deadline {
            break (served, ports);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (served, ports) = settled;
    assert!(served.broken.is_empty(), "{:?}", served.broken);
    assert!(
        ports.values().all(|n| *n == PORTS.len()),
        "a Service served in part"
    );
    for i in &waiting {
        assert_eq!(ports.get(i), Some(&(PORTS.len())), "svc-{i} went in");
    }
    assert_eq!(ports.len(), SERVICES - deleted.len());
    assert_eq!(waiting_in_metrics(&metrics(&s)), BTreeSet::new());
    agent.stop().unwrap();
}
