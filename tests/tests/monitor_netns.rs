//! Namespace suite: `kxdp monitor` streams what curl provokes from a pod
//! (per packet): a Service without endpoints answered with a RST (reject),
//! and a LoadBalancer address whose `loadBalancerSourceRanges` leave the
//! client out (source_range drop), each named by frontend and Service;
//! new flows with their backend on request; and its filters. Needs root.

use std::{net::Ipv4Addr, time::Duration};

use kxdp_testbed::{
    manifests::{endpoint_slice, service, Endpoint, ServiceManifest, SLICE_CONTROLLER},
    scenario::{EchoScenario, Monitor},
};

const WAIT: Duration = Duration::from_secs(10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 70);
const INGRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);

/// The echo Services, a Service `empty` without endpoints and the
/// LoadBalancer `web-lb` open to 10.200.3.0/24 only (the client pod is
/// 10.200.1.2).
fn scenario() -> EchoScenario {
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    let empty = service(
        "empty",
        "ClusterIP",
        EMPTY_VIP,
        Some("nothing"),
        &["{name: http, port: 80, protocol: TCP, targetPort: 8080}"],
    );
    s.write_manifest("empty.yaml", &empty).unwrap();
    let endpoints: Vec<Endpoint> = s.backends.iter().map(|b| Endpoint::ready(*b)).collect();
    let web = ServiceManifest::loadbalancer_web_lb(
        Ipv4Addr::new(10, 96, 100, 62),
        [30080, 30053],
        INGRESS,
    )
    .source_ranges(&["10.200.3.0/24"]);
    let slice = endpoint_slice(
        "web-lb",
        "web-lb-q8w2e",
        SLICE_CONTROLLER,
        &[("80-8080", "TCP", 8080)],
        &endpoints,
    );
    s.write_manifest("web-lb.yaml", &format!("{}---\n{slice}", web.to_yaml()))
        .unwrap();
    s
}

/// `kxdp monitor ARGS -o json` on the node, listening.
fn monitor(s: &EchoScenario, args: &[&str]) -> Monitor {
    let mut all = args.to_vec();
    all.extend(["-o", "json", "--seconds", "30"]);
    s.monitor(&all).unwrap()
}

/// The monitor's next event, within the wait.
fn next(monitor: &Monitor) -> serde_json::Value {
    let line = monitor.next_line(WAIT).expect("an event");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// No event within a second.
fn quiet(monitor: &Monitor) -> bool {
    monitor.next_line(Duration::from_secs(1)).is_none()
}

#[test]
fn monitor_reports_the_reject_and_the_source_range_drop_curl_provokes() {
    let s = scenario();
    let _agent = s.start_agent().unwrap();
    let monitor = monitor(&s, &[]);
    let refused = s.http_get(&format!("{EMPTY_VIP}:80")).unwrap_err();
    assert!(refused.contains("Couldn't connect"), "{refused}");
    let reject = next(&monitor);
    assert_eq!(reject["kind"], "reject", "{reject}");
    assert_eq!(
        reject["frontend"],
        format!("{EMPTY_VIP}:80/TCP"),
        "{reject}"
    );
    assert_eq!(reject["service"], "default/empty", "{reject}");
    assert!(
        reject["source"]
            .as_str()
            .unwrap()
            .starts_with("10.200.1.2:"),
        "{reject}"
    );

    let dropped = s.http_get_within(&format!("{INGRESS}:80"), Duration::from_secs(1));
    assert!(dropped.is_err(), "{dropped:?}");
    let drop = next(&monitor);
    assert_eq!(
        (&drop["kind"], &drop["reason"]),
        (&"drop".into(), &"source_range".into()),
        "{drop}"
    );
    assert_eq!(drop["frontend"], format!("{INGRESS}:80/TCP"), "{drop}");
    assert_eq!(drop["service"], "default/web-lb", "{drop}");
    assert_eq!(drop["destination"], format!("{INGRESS}:80"), "{drop}");

    // A served request is no event: new flows only when asked for.
    s.http_get(&format!("{}:80", s.vip)).unwrap();
    assert!(quiet(&monitor), "an event for a served request");
}

#[test]
fn monitor_shows_new_flows_on_request_and_filters_by_reason_service_and_address() {
    let s = scenario();
    let _agent = s.start_agent().unwrap();
    let flows = monitor(&s, &["--new-flows", "--service", "default/echo"]);
    let answer = s.http_get(&format!("{}:80", s.vip)).unwrap();
    let flow = next(&flows);
    assert_eq!(flow["kind"], "new_flow", "{flow}");
    assert_eq!(flow["service"], "default/echo", "{flow}");
    let backend = flow["backend"].as_str().unwrap().to_string();
    // The backend the flow was sent to is the one that answered.
    let named = s
        .backends
        .iter()
        .position(|b| backend.starts_with(&format!("{b}:")))
        .unwrap_or_else(|| panic!("{backend} is no backend"));
    assert!(
        answer.starts_with(&format!("backend=b{}", named + 1)),
        "{answer} from {backend}"
    );
    drop(flows);

    let only_ranges = monitor(&s, &["--reason", "source_range", "--address", "10.200.1.2"]);
    let _ = s.http_get(&format!("{EMPTY_VIP}:80"));
    let _ = s.http_get_within(&format!("{INGRESS}:80"), Duration::from_secs(1));
    let drop = next(&only_ranges);
    assert_eq!(drop["reason"], "source_range", "{drop}");
    assert!(quiet(&only_ranges), "the reject was filtered out");
}
