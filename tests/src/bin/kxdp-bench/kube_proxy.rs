//! kube-proxy baselines: the rulesets kube-proxy writes in its iptables and
//! nftables modes for a set of ClusterIP Services, generated here so the
//! benchmarks can load them with the same tools kube-proxy uses
//! (`iptables-restore`, `nft -f`) and compare them with kxdp in one run.
//!
//! Structure follows kube-proxy's proxier (pkg/proxy/iptables and
//! pkg/proxy/nftables): a top-level dispatch (KUBE-SERVICES rules / the
//! `service-ips` verdict map), one chain per service port that picks an
//! endpoint at random (`statistic --mode random` / `numgen random`), and one
//! chain per endpoint that marks hairpin traffic for masquerade and DNATs.
//! Left out, because ClusterIP traffic with endpoints never reaches them:
//! NodePort, LoadBalancer, external IP, firewall and health-check rules,
//! session affinity (`recent`), the mangle canary chains and the nfacct
//! counters. Chain names carry a 16- (iptables) or 8-character (nftables)
//! base32 hash as kube-proxy's do; kube-proxy hashes with SHA-256, this
//! module with FNV-1a (only uniqueness matters).

use std::{fmt::Write as _, net::SocketAddrV4};

use super::*;

/// One ClusterIP Service port and its ready endpoints.
pub(crate) struct KpService {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) port_name: String,
    pub(crate) cluster_ip: Ipv4Addr,
    pub(crate) port: u16,
    /// "tcp" or "udp", as both tools spell it.
    pub(crate) protocol: &'static str,
    pub(crate) endpoints: Vec<SocketAddrV4>,
}

impl KpService {
    /// `namespace/name:port`, kube-proxy's ServicePortName.
    fn port_name_text(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// What both modes need besides the Services.
pub(crate) struct KpConfig {
    /// kube-proxy's `--cluster-cidr`: traffic from outside it to a
    /// ClusterIP is masqueraded.
    pub(crate) cluster_cidr: &'static str,
    /// The service CIDR (nftables mode drops traffic to unallocated IPs in it).
    pub(crate) service_cidr: &'static str,
}

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(seed, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `len` (≤ 25) base32 characters (RFC 4648 alphabet) of a hash of `text`.
fn hash32(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let high = fnv1a(text.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let low = fnv1a(text.as_bytes(), high);
    let bits = (u128::from(high) << 64) | u128::from(low);
    (0..len)
        .map(|i| char::from(ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// iptables mode: the complete `iptables-restore` input of a full sync
/// (filter and nat tables, built-in chain jumps included).
pub(crate) fn iptables_ruleset(services: &[KpService], config: &KpConfig) -> String {
    let mut out = String::with_capacity(services.len() * 2_500 + 4_096);
    out.push_str(IPTABLES_FILTER);
    out.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        writeln!(out, ":{chain} - [0:0]").expect("write to String");
    }
    for service in services {
        writeln!(out, ":{} - [0:0]", svc_chain(service)).expect("write to String");
        for endpoint in &service.endpoints {
            writeln!(out, ":{} - [0:0]", sep_chain(service, endpoint)).expect("write to String");
        }
    }
    out.push_str(IPTABLES_NAT_FIXED);
    out.push_str(&kube_services_rules(services));
    for service in services {
        out.push_str(&service_rules(service, config));
    }
    out.push_str("COMMIT\n");
    out
}

/// iptables mode: the `iptables-restore --noflush` input kube-proxy writes
/// when one endpoint of `service` changed from `old` to what `service` now
/// holds. Since kube-proxy 1.26 a partial sync rewrites only the changed
/// Service's chains, but always the whole KUBE-SERVICES dispatch chain.
pub(crate) fn iptables_endpoint_change(
    services: &[KpService],
    changed: usize,
    old: &SocketAddrV4,
    config: &KpConfig,
) -> String {
    let service = &services[changed];
    let mut out = String::with_capacity(services.len() * 200 + 4_096);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n");
    writeln!(out, ":{} - [0:0]", svc_chain(service)).expect("write to String");
    // Declaring a chain flushes it: the old endpoint's chain must be empty
    // before `-X` can delete it.
    for endpoint in service.endpoints.iter().chain([old]) {
        writeln!(out, ":{} - [0:0]", sep_chain(service, endpoint)).expect("write to String");
    }
    out.push_str(&kube_services_rules(services));
    out.push_str(&service_rules(service, config));
    writeln!(out, "-X {}", sep_chain(service, old)).expect("write to String");
    out.push_str("COMMIT\n");
    out
}

fn svc_chain(service: &KpService) -> String {
    let key = format!("{}{}", service.port_name_text(), service.protocol);
    format!("KUBE-SVC-{}", hash32(&key, 16))
}

fn sep_chain(service: &KpService, endpoint: &SocketAddrV4) -> String {
    let key = format!("{}{}{endpoint}", service.port_name_text(), service.protocol);
    format!("KUBE-SEP-{}", hash32(&key, 16))
}

/// KUBE-SERVICES: one rule per Service port (matched in order, the reason
/// iptables mode slows down as Services are added), then the NodePort jump.
fn kube_services_rules(services: &[KpService]) -> String {
    let mut out = String::with_capacity(services.len() * 170 + 200);
    for s in services {
        writeln!(
            out,
            "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j {chain}",
            ip = s.cluster_ip,
            proto = s.protocol,
            name = s.port_name_text(),
            port = s.port,
            chain = svc_chain(s),
        )
        .expect("write to String");
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out
}

/// The Service's KUBE-SVC chain (masquerade rule, then endpoint i taken with
/// probability 1/(n-i)) and its KUBE-SEP chains.
fn service_rules(s: &KpService, config: &KpConfig) -> String {
    let name = s.port_name_text();
    let mut out = String::with_capacity(s.endpoints.len() * 400 + 300);
    let svc = svc_chain(s);
    writeln!(
        out,
        "-A {svc} ! -s {cidr} -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j KUBE-MARK-MASQ",
        cidr = config.cluster_cidr,
        ip = s.cluster_ip,
        proto = s.protocol,
        port = s.port,
    )
    .expect("write to String");
    let n = s.endpoints.len();
    for (i, endpoint) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, endpoint);
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "-A {svc} -m comment --comment \"{name} -> {endpoint}\"{statistic} -j {sep}"
        )
        .expect("write to String");
    }
    for endpoint in &s.endpoints {
        let sep = sep_chain(s, endpoint);
        writeln!(
            out,
            "-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {endpoint}",
            ip = endpoint.ip(),
            proto = s.protocol,
        )
        .expect("write to String");
    }
    out
}

/// The filter table as kube-proxy leaves it when every Service has
/// endpoints: its chains exist and are jumped to, most stay empty.
const IPTABLES_FILTER: &str = r#"*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;

/// The nat rules that do not depend on the Services.
const IPTABLES_NAT_FIXED: &str = r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
"#;

/// nftables mode: the `nft -f` input of a full sync: table `ip kube-proxy`
/// with the `service-ips` verdict map (one lookup whatever the number of
/// Services), a chain per Service port choosing an endpoint with
/// `numgen random` (for the Services `numgen` accepts; the others go to
/// their first endpoint, see `Proxy::ruleset`), and a chain per endpoint.
pub(crate) fn nftables_ruleset(
    services: &[KpService],
    numgen: &dyn Fn(&KpService) -> bool,
    config: &KpConfig,
) -> String {
    let mut out = String::with_capacity(services.len() * 2_000 + 4_096);
    // kube-proxy creates the table, then flushes it, in one transaction.
    out.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\nflush table ip kube-proxy\n");
    out.push_str("table ip kube-proxy {\n");
    if services.is_empty() {
        out.push_str("  set cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n");
    } else {
        out.push_str(
            "  set cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; elements = {",
        );
        let ips: BTreeSet<Ipv4Addr> = services.iter().map(|s| s.cluster_ip).collect();
        push_joined(&mut out, ips.iter().map(|ip| ip.to_string()));
        out.push_str(" } ; }\n");
    }
    out.push_str(&NFTABLES_FIXED.replace("SERVICE_CIDR", config.service_cidr));
    // Chains before the map that names them.
    for s in services {
        out.push_str(&nft_service_chain(s, numgen(s), config));
        for endpoint in &s.endpoints {
            out.push_str(&nft_endpoint_chain(s, endpoint));
        }
    }
    out.push_str("  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ;");
    if !services.is_empty() {
        out.push_str(" elements = {");
        push_joined(
            &mut out,
            services.iter().map(|s| {
                format!(
                    "{} . {} . {} : goto {}",
                    s.cluster_ip,
                    s.protocol,
                    s.port,
                    nft_service_chain_name(s)
                )
            }),
        );
        out.push_str(" } ;");
    }
    out.push_str(" }\n");
    out.push_str(NFTABLES_DISPATCH);
    out.push_str("}\n");
    out
}

/// nftables mode: the transaction kube-proxy sends when endpoint `old` of
/// `service` was replaced by `new` (already in `service`): the new endpoint
/// chain, the Service chain rewritten, the old endpoint chain deleted.
/// Nothing else is touched.
pub(crate) fn nftables_endpoint_change(
    service: &KpService,
    old: &SocketAddrV4,
    new: &SocketAddrV4,
    config: &KpConfig,
) -> String {
    let mut out = String::new();
    let chain = nft_endpoint_chain_name(service, new);
    writeln!(out, "add chain ip kube-proxy {chain}").expect("write to String");
    for rule in nft_endpoint_rules(service, new) {
        writeln!(out, "add rule ip kube-proxy {chain} {rule}").expect("write to String");
    }
    let svc = nft_service_chain_name(service);
    writeln!(out, "flush chain ip kube-proxy {svc}").expect("write to String");
    for rule in nft_service_rules(service, true, config) {
        writeln!(out, "add rule ip kube-proxy {svc} {rule}").expect("write to String");
    }
    writeln!(
        out,
        "delete chain ip kube-proxy {}",
        nft_endpoint_chain_name(service, old)
    )
    .expect("write to String");
    out
}

/// `ns/name/proto/port`, the readable tail of kube-proxy's nftables chain names.
fn nft_service_tail(s: &KpService) -> String {
    format!("{}/{}/{}/{}", s.namespace, s.name, s.protocol, s.port_name)
}

fn nft_service_chain_name(s: &KpService) -> String {
    let tail = nft_service_tail(s);
    format!("service-{}-{tail}", hash32(&tail, 8))
}

fn nft_endpoint_chain_name(s: &KpService, endpoint: &SocketAddrV4) -> String {
    let tail = format!(
        "{}__{}/{}",
        nft_service_tail(s),
        endpoint.ip(),
        endpoint.port()
    );
    format!("endpoint-{}-{tail}", hash32(&tail, 8))
}

/// The Service chain: hairpin masquerade mark, then the endpoint pick
/// (kube-proxy's inline `numgen` verdict map, or with `numgen` false a
/// plain `goto` to the first endpoint).
fn nft_service_rules(s: &KpService, numgen: bool, config: &KpConfig) -> Vec<String> {
    let dispatch = if numgen {
        let mut pick = format!("numgen random mod {} vmap {{", s.endpoints.len());
        push_joined(
            &mut pick,
            s.endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto {}", nft_endpoint_chain_name(s, e))),
        );
        pick.push_str(" }");
        pick
    } else {
        format!("goto {}", nft_endpoint_chain_name(s, &s.endpoints[0]))
    };
    vec![
        format!(
            "ip daddr {} {} dport {} ip saddr != {} jump mark-for-masquerade",
            s.cluster_ip, s.protocol, s.port, config.cluster_cidr
        ),
        dispatch,
    ]
}

fn nft_endpoint_rules(s: &KpService, endpoint: &SocketAddrV4) -> Vec<String> {
    vec![
        format!("ip saddr {} jump mark-for-masquerade", endpoint.ip()),
        format!("meta l4proto {} dnat to {endpoint}", s.protocol),
    ]
}

fn nft_chain_block(name: &str, rules: &[String]) -> String {
    let mut out = format!("  chain {name} {{\n");
    for rule in rules {
        writeln!(out, "    {rule}").expect("write to String");
    }
    out.push_str("  }\n");
    out
}

fn nft_service_chain(s: &KpService, numgen: bool, config: &KpConfig) -> String {
    nft_chain_block(
        &nft_service_chain_name(s),
        &nft_service_rules(s, numgen, config),
    )
}

fn nft_endpoint_chain(s: &KpService, endpoint: &SocketAddrV4) -> String {
    nft_chain_block(
        &nft_endpoint_chain_name(s, endpoint),
        &nft_endpoint_rules(s, endpoint),
    )
}

fn push_joined(out: &mut String, items: impl Iterator<Item = String>) {
    for (i, item) in items.enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(&item);
    }
}

/// The sets, maps and chains of kube-proxy's table that do not depend on
/// the ClusterIP Services (the NodePort/firewall/no-endpoint ones stay empty).
const NFTABLES_FIXED: &str = r#"  set nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
  map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
  map no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
  map firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
  map service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
  chain firewall-check {
    ip daddr . meta l4proto . th dport vmap @firewall-ips
  }
  chain mark-for-masquerade {
    meta mark set meta mark | 0x4000
  }
  chain masquerading {
    meta mark & 0x4000 == 0 return
    meta mark set meta mark ^ 0x4000
    masquerade fully-random
  }
  chain service-endpoints-check {
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }
  chain nodeport-endpoints-check {
    ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
  }
  chain cluster-ips-check {
    ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
    ip daddr SERVICE_CIDR drop comment "Drop traffic to unallocated ClusterIPs"
  }
"#;

/// The base chains and the `services` dispatch chain, after the maps they read.
const NFTABLES_DISPATCH: &str = r#"  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
    ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
  }
  chain filter-prerouting {
    type filter hook prerouting priority -110 ;
    ct state new jump firewall-check
  }
  chain filter-input {
    type filter hook input priority -110 ;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }
  chain filter-forward {
    type filter hook forward priority -110 ;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain filter-output {
    type filter hook output priority -110 ;
    ct state new jump service-endpoints-check
    ct state new jump firewall-check
  }
  chain filter-output-post-dnat {
    type filter hook output priority -90 ;
    ct state new jump cluster-ips-check
  }
  chain nat-prerouting {
    type nat hook prerouting priority -100 ;
    jump services
  }
  chain nat-output {
    type nat hook output priority -100 ;
    jump services
  }
  chain nat-postrouting {
    type nat hook postrouting priority 100 ;
    jump masquerading
  }
"#;

/// Loads `input` into network namespace `netns` with `program ARGS` reading
/// it on stdin; the wall time of the whole command in milliseconds.
pub(crate) fn load_rules(netns: &str, program: &[&str], input: &str) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {program:?} in {netns}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    ensure!(
        output.status.success(),
        "{program:?} in {netns} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(ms)
}

/// The rules of `service`'s own chain as `proxy`'s tool lists them.
pub(crate) fn list_service_rules(
    proxy: Proxy,
    netns: &str,
    service: &KpService,
) -> anyhow::Result<String> {
    let (svc_iptables, svc_nft) = (svc_chain(service), nft_service_chain_name(service));
    let command: Vec<&str> = match proxy {
        Proxy::IptablesNft => vec!["iptables-nft", "-t", "nat", "-S", &svc_iptables],
        Proxy::IptablesLegacy => vec!["iptables-legacy", "-t", "nat", "-S", &svc_iptables],
        Proxy::Nftables => vec!["nft", "list", "chain", "ip", "kube-proxy", &svc_nft],
        Proxy::None | Proxy::Kxdp | Proxy::KxdpPerPacket => bail!("{} has no rules", proxy.label()),
    };
    let output = kxdp_testbed::netns::run(
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(&command),
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Removes every iptables and nftables rule from `netns` (iptables here is
/// the nft backend, so both live in the nftables ruleset).
pub(crate) fn flush_rules(netns: &str) -> anyhow::Result<()> {
    kxdp_testbed::netns::run(
        Command::new("ip").args(["netns", "exec", netns, "nft", "flush", "ruleset"]),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(i: usize, endpoints: usize) -> KpService {
        KpService {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10 + i as u8),
            port: 80,
            protocol: "tcp",
            endpoints: (0..endpoints)
                .map(|e| SocketAddrV4::new(Ipv4Addr::new(10, 128, i as u8, e as u8 + 1), 8080))
                .collect(),
        }
    }

    const CONFIG: KpConfig = KpConfig {
        cluster_cidr: "10.200.0.0/16",
        service_cidr: "10.96.0.0/12",
    };

    fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn iptables_dispatches_each_service_then_picks_endpoints_uniformly() {
        let services = [service(0, 3), service(1, 1)];
        let text = iptables_ruleset(&services, &CONFIG);
        let dispatch = lines_with(&text, "-A KUBE-SERVICES -d ");
        assert_eq!(dispatch.len(), 2);
        assert!(dispatch[0].contains("-d 10.96.0.10/32 -p tcp"));
        assert!(dispatch[0].contains("--dport 80 -j KUBE-SVC-"));
        // The NodePort jump is the last rule of KUBE-SERVICES.
        let last = lines_with(&text, "-A KUBE-SERVICES").pop().expect("rules");
        assert!(last.ends_with("-j KUBE-NODEPORTS"));
        // Endpoint i of n is taken with probability 1/(n-i): 1/3, 1/2, rest.
        let svc = svc_chain(&services[0]);
        let picks = lines_with(&text, &format!("-A {svc} -m comment"));
        assert_eq!(picks.len(), 3);
        assert!(picks[0].contains("--probability 0.3333333333"));
        assert!(picks[1].contains("--probability 0.5000000000"));
        assert!(!picks[2].contains("statistic"));
        assert_eq!(lines_with(&text, "-j DNAT --to-destination").len(), 4);
        assert!(text.contains("-j DNAT --to-destination 10.128.0.3:8080"));
        assert_eq!(text.matches("COMMIT").count(), 2);
        // Every chain a rule jumps to is declared.
        for line in text.lines().filter(|l| l.starts_with("-A")) {
            let target = line.rsplit("-j ").next().expect("target");
            let chain = target.split(' ').next().expect("chain");
            if chain.starts_with("KUBE-") {
                assert!(
                    text.contains(&format!(":{chain} - [0:0]")),
                    "{chain} undeclared"
                );
            }
        }
    }

    #[test]
    fn iptables_change_rewrites_dispatch_and_one_service_and_deletes_the_old_endpoint() {
        let mut services = vec![service(0, 2), service(1, 2)];
        let old = services[1].endpoints[0];
        services[1].endpoints[0] = SocketAddrV4::new(Ipv4Addr::new(10, 129, 0, 1), 8080);
        let text = iptables_endpoint_change(&services, 1, &old, &CONFIG);
        assert!(!text.contains("*filter"));
        assert_eq!(lines_with(&text, "-A KUBE-SERVICES -d ").len(), 2);
        assert_eq!(
            lines_with(&text, &format!("-A {}", svc_chain(&services[0]))).len(),
            0
        );
        assert!(text.contains("-j DNAT --to-destination 10.129.0.1:8080"));
        assert!(text.contains(&format!("-X {}\n", sep_chain(&services[1], &old))));
    }

    #[test]
    fn nftables_maps_every_service_and_numgens_over_its_endpoints() {
        let services = [service(0, 3), service(1, 1), service(2, 2)];
        let text = nftables_ruleset(&services, &|s| s.name != "svc-2", &CONFIG);
        assert!(text.contains(&format!(
            "10.96.0.10 . tcp . 80 : goto {}",
            nft_service_chain_name(&services[0])
        )));
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains("numgen random mod 1 vmap"));
        // A Service without numgen goes to its first endpoint.
        assert!(!text.contains("numgen random mod 2"));
        assert!(text.contains(&format!(
            "    goto {}\n",
            nft_endpoint_chain_name(&services[2], &services[2].endpoints[0])
        )));
        assert_eq!(lines_with(&text, "dnat to").len(), 6);
        assert!(text.contains("elements = { 10.96.0.10, 10.96.0.11, 10.96.0.12 }"));
        assert!(text.contains("ip daddr 10.96.0.0/12 drop"));
        // Each chain is defined once.
        let chains = lines_with(&text, "  chain ");
        let unique: BTreeSet<_> = chains.iter().collect();
        assert_eq!(unique.len(), chains.len());
    }

    #[test]
    fn nftables_change_touches_only_the_changed_service() {
        let mut s = service(4, 2);
        let old = s.endpoints[1];
        let new = SocketAddrV4::new(Ipv4Addr::new(10, 129, 0, 9), 8080);
        s.endpoints[1] = new;
        let text = nftables_endpoint_change(&s, &old, &new, &CONFIG);
        assert!(text.contains(&format!(
            "flush chain ip kube-proxy {}",
            nft_service_chain_name(&s)
        )));
        assert_eq!(lines_with(&text, "dnat to").len(), 1);
        assert!(text.contains("dnat to 10.129.0.9:8080"));
        assert!(text.contains(&format!("goto {}", nft_endpoint_chain_name(&s, &new))));
        assert!(text.ends_with(&format!(
            "delete chain ip kube-proxy {}\n",
            nft_endpoint_chain_name(&s, &old)
        )));
        assert!(!text.contains("svc-0"));
    }

    #[test]
    fn chain_names_are_stable_and_distinct() {
        let (a, b) = (service(0, 1), service(1, 1));
        assert_eq!(svc_chain(&a), svc_chain(&service(0, 1)));
        assert_ne!(svc_chain(&a), svc_chain(&b));
        assert_eq!(svc_chain(&a).len(), "KUBE-SVC-".len() + 16);
        assert_ne!(
            sep_chain(&a, &a.endpoints[0]),
            sep_chain(&b, &b.endpoints[0])
        );
    }
}
