//! The two-node topology on its own, without kxdp: the underlay, the routes
//! between pod CIDRs, the settings XDP tests rely on, and the cleanup. Later
//! NodePort / LoadBalancer suites can then blame kxdp, not the plumbing.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use kxdp_testbed::{
    netns::exec_ok,
    two_node::{NodeId, TwoNode, EXT_IP, LB_INGRESS_IP, POD_HTTP_PORT},
};

/// Every network namespace whose name starts with `prefix-`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// Asserts checksum offloads are off on every veth of `netns`; how many.
fn assert_offloads_off(netns: &str) -> usize {
    let links = exec_ok(netns, &["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let mut count = 0;
    for line in links.lines() {
        // "7: name@if8: <...> ..."
        let dev = line.split(": ").nth(1).unwrap().split('@').next().unwrap();
        let features = exec_ok(netns, &["ethtool", "-k", dev]).unwrap();
        let features = String::from_utf8_lossy(&features.stdout);
        for feature in ["rx-checksumming: off", "tx-checksumming: off"] {
            assert!(features.contains(feature), "{dev} in {netns}: {features}");
        }
        count += 1;
    }
    count
}

#[test]
fn ext_nodes_and_pods_reach_each_other_and_nothing_outlives_the_topology() {
    let started = Instant::now();
    let mut t = TwoNode::new().expect("two-node topology");
    let a1 = t.add_pod(NodeId::A, "a1", 2).unwrap();
    let b1 = t.add_pod(NodeId::B, "b1", 2).unwrap();
    assert_eq!(
        (a1.to_string(), b1.to_string()),
        ("10.1.1.2".into(), "10.1.2.2".into())
    );
    // Servers in the node namespaces themselves, i.e. on the NICs.
    for (node, name) in [(NodeId::A, "host-a"), (NodeId::B, "host-b")] {
        let ns = t.netns(node).to_string();
        t.start_peer(
            &ns,
            &["serve", "--name", name, "--tcp", "8080", "--udp", "5353"],
        )
        .unwrap();
    }
    let built = started.elapsed();

    // ext reaches both NICs over the bridge, TCP and UDP, unNATed.
    for (node, name) in [(NodeId::A, "host-a"), (NodeId::B, "host-b")] {
        let body = t.ext_http_get(&format!("{}:8080", node.nic_ip())).unwrap();
        assert_eq!(
            body.split_whitespace().next(),
            Some(format!("backend={name}").as_str())
        );
        assert!(body.contains(&format!("client={EXT_IP}:")), "{body}");
        let reply = t
            .ext_udp_query(&format!("{}:5353", node.nic_ip()), "ping")
            .unwrap();
        assert!(
            reply.starts_with(&format!(
                "from={}:5353 backend={name} client={EXT_IP}:",
                node.nic_ip()
            )),
            "{reply}"
        );
    }
    let (status, body) = t
        .ext_http_status(&format!("{}:8080", NodeId::B.nic_ip()))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("backend=host-b"), "{body}");

    // Each node reaches the other's pods over the underlay route; the pod
    // sees the node's NIC address.
    let wait = Duration::from_secs(3);
    for (from, pod, ip) in [(NodeId::A, "b1", b1), (NodeId::B, "a1", a1)] {
        let body = t
            .curl(t.netns(from), &format!("{ip}:{POD_HTTP_PORT}"), wait)
            .unwrap_or_else(|e| panic!("{} to pod {pod}: {e}", from.name()));
        assert!(
            body.starts_with(&format!("backend={pod} client={}:", from.nic_ip())),
            "{body}"
        );
    }
    // Pod to pod across nodes, both ways, with pod addresses kept.
    for (from, to, from_ip, to_ip) in [("a1", "b1", a1, b1), ("b1", "a1", b1, a1)] {
        let body = t
            .curl(
                &t.pod(from).netns,
                &format!("{to_ip}:{POD_HTTP_PORT}"),
                wait,
            )
            .unwrap_or_else(|e| panic!("pod {from} to pod {to}: {e}"));
        assert!(
            body.starts_with(&format!("backend={to} client={from_ip}:")),
            "{body}"
        );
    }

    // Without kxdp the LoadBalancer IP is routed to node A, which has nothing there.
    let lb = format!("{LB_INGRESS_IP}:80");
    t.ext_connect_refused_at_once(&lb).unwrap();

    // What XDP tests rely on: an XDP program on node A's bridge port (so
    // XDP_TX frames are delivered at once), rp_filter off in the nodes,
    // checksum offloads off on every veth end.
    let port = t.nic_bridge_port(NodeId::A);
    let link = exec_ok(&t.lan, &["ip", "-d", "link", "show", &port]).unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "no XDP program on {port}"
    );
    for node in [NodeId::A, NodeId::B] {
        for conf in ["all", "default", "eth0"] {
            let key = format!("net.ipv4.conf.{conf}.rp_filter");
            let value = exec_ok(t.netns(node), &["sysctl", "-n", &key]).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&value.stdout).trim(),
                "0",
                "{key} in {}",
                node.name()
            );
        }
    }
    let mut veths = 0;
    for ns in [&t.lan, &t.ext, t.netns(NodeId::A), t.netns(NodeId::B)] {
        veths += assert_offloads_off(ns);
    }
    for pod in &t.pods {
        veths += assert_offloads_off(&pod.netns);
    }
    // 3 bridge ports + 3 NICs, 2 pods × 2 ends.
    assert_eq!(veths, 10);

    let prefix = t.prefix.clone();
    let (pins, manifests) = (t.pin_path(), t.manifests.clone());
    assert_eq!(namespaces_of(&prefix).len(), 6);
    drop(t);
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(
        !pins.parent().unwrap().exists(),
        "the private bpffs is gone"
    );
    assert!(!manifests.exists());
    eprintln!("built in {built:?}, whole test {:?}", started.elapsed());
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    let built = std::panic::catch_unwind(|| {
        let mut t = TwoNode::new().expect("two-node topology");
        t.add_pod(NodeId::B, "b1", 2).unwrap();
        let prefix = t.prefix.clone();
        assert_eq!(namespaces_of(&prefix).len(), 5);
        std::panic::panic_any(prefix);
    });
    let prefix = built.expect_err("the closure panics");
    let prefix = prefix.downcast_ref::<String>().expect("the prefix");
    assert_eq!(namespaces_of(prefix), Vec::<String>::new());
}
