//! The agent against a Kubernetes API server (a local stand-in speaking
//! list/watch over HTTP): `kxdp agent --kubeconfig` lists Services and
//! EndpointSlices with kube-proxy's selectors and serves them in the mini
//! node, marking this node's endpoints local.

use std::{collections::BTreeSet, time::Duration};

use kxdp_testbed::{agent::Agent, fake_apiserver::FakeApiServer, scenario::EchoScenario};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);
const VIP: &str = "10.96.200.10";

#[test]
fn agent_serves_what_it_lists_from_the_api_server() {
    let s = EchoScenario::new(2, env!("CARGO_BIN_EXE_kxdp-peer").into()).expect("echo scenario");
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1"},
        "spec": {"type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    });
    let endpoint = |ip: String, node: &str| {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": true, "serving": true, "terminating": false}})
    };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "default", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [endpoint(s.backends[0].to_string(), "node-a"),
                      endpoint(s.backends[1].to_string(), "node-b")]
    });
    let server = FakeApiServer::start(Some(&s.node.node_netns), vec![service], vec![slice])
        .expect("fake API server");
    let mut agent = Agent::start_with_api(&s.node, &server).expect("agent");
    agent.wait_attached(&s.node, WAIT).unwrap();
    agent.wait_for(&["synced", "full=true"], 1, WAIT).unwrap();

    let mut answered = BTreeSet::new();
    for _ in 0..20 {
        let body = s
            .http_get(&format!("{VIP}:80"))
            .expect("through the ClusterIP");
        answered.insert(
            body.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["backend=b1", "backend=b2"]
    );

    let served = s.served(&format!("{VIP}:80/TCP"), "pod");
    let local = |backend: &std::net::Ipv4Addr| {
        served["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["address"] == backend.to_string() && b["local"] == true)
    };
    assert!(local(&s.backends[0]), "{served}");
    assert!(!local(&s.backends[1]), "{served}");

    // The watch asks for what kube-proxy asks for.
    let requests = server.requests();
    let asked = |path: &str, selectors: &[&str]| {
        requests
            .iter()
            .any(|r| r.contains(path) && selectors.iter().all(|s| r.contains(s)))
    };
    assert!(
        asked(
            "/api/v1/services?",
            &[
                "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name",
                "fieldSelector=spec.clusterIP%21%3DNone"
            ]
        ),
        "{requests:#?}"
    );
    assert!(
        asked(
            "/apis/discovery.k8s.io/v1/endpointslices?",
            &["labelSelector=%21service.kubernetes.io%2Fheadless"]
        ),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "the agent keeps watching: {requests:#?}"
    );
    agent.stop().unwrap();
}
