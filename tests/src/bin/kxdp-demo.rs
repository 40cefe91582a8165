//! `cargo xtask demo`: a mini node built from network namespaces, the real
//! `kxdp agent`, and a client pod talking to a Service's ClusterIP.

use kxdp_testbed::{
    manifests::ECHO_SERVICE,
    scenario::{peer_bin, EchoScenario},
};

fn main() -> anyhow::Result<()> {
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
    print!("{}", s.kxdp(&["services"])?);

    println!("\nStopping the agent (the datapath stays attached) and unloading:");
    let status = agent.stop()?;
    println!("  agent exited: {status}");
    print!("  {}", s.kxdp(&["unload"])?);
    println!("\nDone: namespaces, links and pins are cleaned up.");
    Ok(())
}
