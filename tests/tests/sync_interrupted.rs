//! The agent killed (SIGKILL: no chance to tidy up) in the middle of its
//! first full sync of 50,000 frontends from the API server: the maps it
//! leaves hold no half-written frontend (each one there has its Maglev
//! table and every backend the table names), and the next agent finishes
//! the sync: every frontend, exactly as the API has it, served.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use kxdp_testbed::{
    agent::Agent,
    api_objects::{count_from_env, nth_address, service, slice},
    fake_apiserver::FakeApiServer,
    patience,
    scenario::EchoScenario,
    served::read_served,
};
use proxy_userspace::dataplane::maps::BpfMaps;

const NAMESPACE: &str = "bulk";
const PORTS: [u16; 5] = [80, 81, 82, 83, 84];

fn vip(i: usize) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 100, 0, 1), i)
}

/// Two made-up endpoints of Service `i`, none shared.
fn backends(i: usize) -> [Ipv4Addr; 2] {
    let first = nth_address(Ipv4Addr::new(10, 128, 0, 0), 2 * i);
    [first, nth_address(first, 1)]
}

#[test]
fn an_agent_killed_mid_sync_leaves_no_half_frontend_and_the_next_finishes() {
    // `$KXDP_KILL_SERVICES`: the VM suites' smaller count.
    let services = count_from_env("KXDP_KILL_SERVICES", 10_000);
    let frontends = services * PORTS.len();
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("scenario");
    // Service 0 is served by the scenario's real backends.
    let name = |i: usize| format!("svc-{i}");
    let slices = (0..services)
        .map(|i| match i {
            0 => slice(NAMESPACE, &name(0), &s.backends, &PORTS, 8080),
            _ => slice(NAMESPACE, &name(i), &backends(i), &PORTS, 8080),
        })
        .collect();
    let server = FakeApiServer::start(
        Some(&s.node.node_netns),
        (0..services)
            .map(|i| service(NAMESPACE, &name(i), vip(i), &PORTS))
            .collect(),
        slices,
    )
    .expect("API");
    let pin_path = s.node.pin_path();

    // Killed as soon as its sync's first frontends are in.
    let mut agent = Agent::start_with_api(&s.node, &server).expect("agent");
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
            IpAddr::V4(v4) => *v4,
            IpAddr::V6(v6) => panic!("an IPv6 frontend {v6}"),
        }) - u32::from(vip(0))) as usize;
        let wanted = match i {
            0 => s.backends.clone(),
            _ => backends(i).to_vec(),
        };
        let wanted: BTreeSet<IpAddr> = wanted.into_iter().map(Into::into).collect();
        assert_eq!(frontend.backends, wanted, "{address}:{port}");
    }

    // The next agent adopts the maps and finishes the sync.
    let mut agent = Agent::start_with_api(&s.node, &server).expect("agent");
    agent
        .wait_for(&["synced", "full=true"], 1, Duration::from_secs(60))
        .unwrap();
    let done = read_served(&pin_path).expect("reading the maps");
    assert!(done.broken.is_empty(), "half-written: {:?}", done.broken);
    assert_eq!(done.frontends.len(), frontends);
    for i in [0, 1, services / 2, services - 1] {
        for port in PORTS {
            let frontend = &done.frontends[&(vip(i).into(), port, "pod")];
            assert_eq!(frontend.backends.len(), 2, "svc-{i}:{port}");
        }
    }
    agent
        .wait_attached(&s.node, Duration::from_secs(10))
        .unwrap();
    s.http_backend(&format!("{}:80", vip(0)))
        .expect("through svc-0 after the restart");
    agent.stop().unwrap();
}
