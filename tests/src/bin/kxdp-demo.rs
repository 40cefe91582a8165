//! `cargo xtask demo`: a mini node built from network namespaces, the real
//! `kxdp agent`, and a client pod talking to a Service's ClusterIP; then two
//! nodes and an external client reaching a LoadBalancer Service through
//! node A's NIC (XDP).

use std::net::Ipv4Addr;

use kxdp_testbed::{
    manifests::{endpoint_slice, Endpoint, ServiceManifest, ECHO_SERVICE, SLICE_CONTROLLER},
    scenario::{peer_bin, EchoScenario},
    two_node::{NodeId, TwoNode, LB_INGRESS_IP},
};

fn main() -> anyhow::Result<()> {
    cluster_ip()?;
    load_balancer()
}

fn cluster_ip() -> anyhow::Result<()> {
    println!("== kxdp demo: a ClusterIP Service served by eBPF ==\n");
    let s = EchoScenario::new(2, peer_bin())?;
    println!("Mini node: namespace {} with pods", s.node.node_netns);
    for pod in &s.node.pods {
        println!(
            "  {:<7} {:<12} host interface {}",
            pod.name, pod.ip, pod.host_interface
        );
    }
    println!("\nService manifest (written by kubectl, no clusterIP):\n");
    for line in ECHO_SERVICE.lines().filter(|l| !l.starts_with('#')) {
        println!("    {line}");
    }
    println!(
        "\nStarting `kxdp agent` (tcx on every pod interface; it allocates clusterIP {})\n",
        s.vip
    );
    let agent = s.start_agent()?;

    println!("\nHTTP from the client pod to http://{}:80/ (TCP):", s.vip);
    for i in 1..=6 {
        match s.http_get(&format!("{}:80", s.vip)) {
            Ok(body) => println!("  request {i}: {body}"),
            Err(e) => anyhow::bail!("request {i} failed: {e}"),
        }
    }
    println!("\nUDP from the client pod to {}:53:", s.vip);
    match s.udp_query(&format!("{}:53", s.vip), "hello") {
        Ok(reply) => println!("  {reply}"),
        Err(e) => anyhow::bail!("UDP query failed: {e}"),
    }

    println!("\n`kxdp services`:\n");
    print!("{}", s.kxdp(&["services", "-A"])?);

    let client = s.node.pod("client").ip;
    let (source, target) = (format!("{client}:40000"), format!("{}:80/tcp", s.vip));
    println!("\n`kxdp trace {source} {target}` (a new flow from the client pod):\n");
    print!("{}", s.kxdp(&["trace", &source, &target])?);

    println!("\n`kxdp monitor --new-flows --count 1` while the client asks once more:\n");
    let monitor = s.monitor(&["--new-flows", "--count", "1", "--seconds", "10"])?;
    s.http_get(&format!("{}:80", s.vip))
        .map_err(anyhow::Error::msg)?;
    print!("{}", monitor.finish()?);

    println!("\nStopping the agent (the datapath stays attached) and unloading:");
    let status = agent.stop()?;
    println!("  agent exited: {status}");
    print!("  {}", s.kxdp(&["unload"])?);
    println!("\nDone: namespaces, links and pins are cleaned up.");
    Ok(())
}

fn load_balancer() -> anyhow::Result<()> {
    println!("\n== kxdp demo: a LoadBalancer Service served in XDP on the NIC ==\n");
    let mut t = TwoNode::new()?;
    let a1 = t.add_pod(NodeId::A, "a1", 2)?;
    let b1 = t.add_pod(NodeId::B, "b1", 2)?;
    println!(
        "External client 192.168.50.100 and two nodes on one LAN: node A {} (pod a1 {a1}, the agent on eth0), node B {} (pod b1 {b1})",
        NodeId::A.nic_ip(),
        NodeId::B.nic_ip()
    );
    let service = ServiceManifest::loadbalancer_web_lb(
        Ipv4Addr::new(10, 96, 50, 10),
        [30081, 30053],
        LB_INGRESS_IP,
    );
    t.write_manifest("web-lb.yaml", &service.to_yaml())?;
    let endpoints = [
        Endpoint::ready(a1).on("node-a"),
        Endpoint::ready(b1).on("node-b"),
    ];
    let ports = [("80-8080", "TCP", 8080), ("53-5353", "UDP", 5353)];
    let slice = endpoint_slice(
        "web-lb",
        "web-lb-x7k2p",
        SLICE_CONTROLLER,
        &ports,
        &endpoints,
    );
    t.write_manifest("slice.yaml", &slice)?;
    println!("Service web-lb (kubectl-written, with nodePorts 30081/30053 and ingress {LB_INGRESS_IP} as a cloud controller sets them), endpoints a1 and b1\n");
    let mut agent = t.start_agent(&[])?;
    agent.wait_for(&["attached XDP"], 1, std::time::Duration::from_secs(10))?;

    println!("\nHTTP from the external client (each backend names the client address it saw):");
    for (what, target) in [
        ("load balancer", format!("{LB_INGRESS_IP}:80")),
        ("NodePort", format!("{}:30081", NodeId::A.nic_ip())),
    ] {
        for i in 1..=4 {
            match t.ext_http_get(&target) {
                Ok(body) => println!("  {what} {target}, request {i}: {body}"),
                Err(e) => anyhow::bail!("{what} request {i} failed: {e}"),
            }
        }
    }
    println!("  (a1 sees the client itself; b1, on node B, sees node A, which SNATed the flow)");
    println!("\nUDP from the external client to {LB_INGRESS_IP}:53:");
    match t.ext_udp_query(&format!("{LB_INGRESS_IP}:53"), "hello") {
        Ok(reply) => println!("  {reply}"),
        Err(e) => anyhow::bail!("UDP query failed: {e}"),
    }
    println!("\n`kxdp services` on node A:\n");
    let pins = t.pin_path();
    let pins = pins.to_string_lossy();
    let kxdp = kxdp_testbed::agent::kxdp_bin();
    let table = t.run_in(
        t.netns(NodeId::A),
        &kxdp,
        &["services", "-A", "--pin-path", &pins],
    );
    print!("{}", table.map_err(anyhow::Error::msg)?);
    let status = agent.stop()?;
    println!("\nAgent stopped ({status}); unloading:");
    let out = t.run_in(t.netns(NodeId::A), &kxdp, &["unload", "--pin-path", &pins]);
    println!("  {}", out.map_err(anyhow::Error::msg)?);
    println!("\nDone: namespaces, links and pins are cleaned up.");
    Ok(())
}
