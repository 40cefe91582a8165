//! `kxdp services`: what the datapath serves, read from the pinned maps.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use anyhow::Context as _;
use proxy_common::maps::{
    addr_from_net, drop_reason, port_from_net, verdict, BackendValue, BACKEND_LOCAL, SCOPE_NODE,
    SERVICE_AFFINITY_CLIENT_IP, SERVICE_EMPTY_DROP, SERVICE_SNAT_REMOTE, SERVICE_SOURCE_RANGES,
};

use crate::{
    dataplane::maps::BpfMaps,
    sync::{frontend_text, MapContents},
};

/// One row of the table.
struct Row {
    frontend: String,
    /// "pod" (cluster IPs, reached from pods) or "node" (from outside).
    scope: &'static str,
    /// Policy flags: Local drop, SNAT to remote backends, source ranges.
    policy: String,
    id: u32,
    /// ClientIP affinity timeout in seconds, if the service has affinity.
    affinity: Option<u32>,
    backends: Vec<String>,
    packets: u64,
    bytes: u64,
}

fn rows(contents: &MapContents, maps: &BpfMaps) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (key, value) in &contents.services {
        // Each backend once, in address order, however many slots it holds.
        let members: BTreeSet<u32> = match value.table_size {
            0 => BTreeSet::new(),
            _ => contents.tables.get(&value.id).map_or_else(
                || [u32::MAX].into(),
                |slots| slots.iter().copied().collect(),
            ),
        };
        let mut found: Vec<Option<BackendValue>> = members
            .iter()
            .map(|id| contents.backends.get(id).copied())
            .collect();
        found.sort_by_key(|b| b.map(|b| (addr_from_net(b.addr), port_from_net(b.port))));
        let backends = found
            .into_iter()
            .map(|backend| match backend {
                Some(b) => format!(
                    "{}:{}{}",
                    addr_from_net(b.addr),
                    port_from_net(b.port),
                    if b.flags & BACKEND_LOCAL != 0 {
                        "(local)"
                    } else {
                        ""
                    }
                ),
                None => "<missing>".to_string(),
            })
            .collect();
        let stats = maps.service_stats(value.id)?;
        let policy: Vec<&str> = [
            (SERVICE_EMPTY_DROP, "local"),
            (SERVICE_SNAT_REMOTE, "snat"),
            (SERVICE_SOURCE_RANGES, "ranges"),
        ]
        .into_iter()
        .filter(|(bit, _)| value.flags & bit != 0)
        .map(|(_, label)| label)
        .collect();
        rows.push(Row {
            frontend: frontend_text(key),
            scope: if key.scope == SCOPE_NODE {
                "node"
            } else {
                "pod"
            },
            policy: if policy.is_empty() {
                "-".to_string()
            } else {
                policy.join(",")
            },
            id: value.id,
            affinity: (value.flags & SERVICE_AFFINITY_CLIENT_IP != 0)
                .then_some(value.affinity_timeout),
            backends,
            packets: stats.packets,
            bytes: stats.bytes,
        });
    }
    Ok(rows)
}

/// Counters under the table.
struct Totals {
    no_backend_drops: u64,
    rejected_tcp: u64,
    rejected_udp: u64,
}

fn render(rows: &[Row], totals: &Totals) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|r| r.frontend.len())
        .max()
        .unwrap_or(0)
        .max("FRONTEND".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<5}  {:<17}  {:>5}  {:<15}  {:>10}  {:>12}  BACKENDS",
        "FRONTEND", "SCOPE", "POLICY", "ID", "AFFINITY", "PACKETS", "BYTES"
    );
    for row in rows {
        let backends = if row.backends.is_empty() {
            "<none>".to_string()
        } else {
            row.backends.join(",")
        };
        let affinity = row
            .affinity
            .map_or_else(|| "-".to_string(), |secs| format!("ClientIP/{secs}s"));
        let _ = writeln!(
            out,
            "{:<width$}  {:<5}  {:<17}  {:>5}  {affinity:<15}  {:>10}  {:>12}  {backends}",
            row.frontend, row.scope, row.policy, row.id, row.packets, row.bytes
        );
    }
    let _ = writeln!(
        out,
        "{} frontends; {} packets dropped for want of a backend; {} TCP resets and {} ICMP \
         unreachables sent for Services without endpoints",
        rows.len(),
        totals.no_backend_drops,
        totals.rejected_tcp,
        totals.rejected_udp
    );
    out
}

pub fn run(pin_path: &Path) -> anyhow::Result<()> {
    let maps = BpfMaps::open_pinned(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let contents = maps.read_contents()?;
    let rows = rows(&contents, &maps)?;
    let totals = Totals {
        no_backend_drops: maps.drops(drop_reason::NO_BACKEND)?,
        rejected_tcp: maps.verdicts(verdict::REJECTED_TCP)?,
        rejected_udp: maps.verdicts(verdict::REJECTED_UDP)?,
    };
    print!("{}", render(&rows, &totals));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_frontends_backends_and_counters() {
        let rows = [
            Row {
                frontend: "10.96.0.10:80/TCP".into(),
                scope: "pod",
                policy: "-".into(),
                id: 0,
                affinity: Some(10_800),
                backends: vec!["10.244.0.2:8080(local)".into(), "10.244.0.3:8080".into()],
                packets: 12,
                bytes: 960,
            },
            Row {
                frontend: "192.168.1.10:30053/UDP".into(),
                scope: "node",
                policy: "local,ranges".into(),
                id: 1,
                affinity: None,
                backends: vec![],
                packets: 0,
                bytes: 0,
            },
        ];
        let totals = Totals {
            no_backend_drops: 3,
            rejected_tcp: 4,
            rejected_udp: 5,
        };
        let table = render(&rows, &totals);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("FRONTEND"));
        assert!(
            lines[1].starts_with("10.96.0.10:80/TCP")
                && lines[1].contains(" pod ")
                && lines[1].contains("ClientIP/10800s")
                && lines[1].ends_with("12           960  10.244.0.2:8080(local),10.244.0.3:8080"),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("<none>"));
        assert!(
            lines[2].starts_with("192.168.1.10:30053/UDP  node   local,ranges"),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[3],
            "2 frontends; 3 packets dropped for want of a backend; 4 TCP resets and 5 ICMP \
             unreachables sent for Services without endpoints"
        );
    }
}
