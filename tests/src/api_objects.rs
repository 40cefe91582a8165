//! Services and EndpointSlices as the API server serves them (JSON), for
//! the suites that run the agent against [`crate::fake_apiserver`]: a
//! ClusterIP Service with TCP ports named `p<port>`, and its one slice of
//! ready endpoints on node `node-a` (the agent's `--node-name` there).

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// The node the suites' agents run as.
pub const NODE_NAME: &str = "node-a";

/// Service `namespace/name` on `vip` with TCP `ports`.
pub fn service(namespace: &str, name: &str, vip: Ipv4Addr, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "clusterIP": vip.to_string(),
                 "clusterIPs": [vip.to_string()], "ports": ports}
    })
}

/// The slice `<service>-1` of `endpoints`, each of the Service's `ports`
/// served on `target`.
pub fn slice(
    namespace: &str,
    service: &str,
    endpoints: &[Ipv4Addr],
    ports: &[u16],
    target: u16,
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|b| {
            json!({"addresses": [b.to_string()], "nodeName": NODE_NAME,
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": target, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    })
}

/// `$var` as a count, else `default`: the VM suites run smaller ones.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The `offset`th address after `first`.
pub fn nth_address(first: Ipv4Addr, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first) + offset as u32)
}
