//! `kxdp services`: what the datapath serves, read from the pinned maps, as
//! a table or as JSON.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use proxy_common::maps::{
    DropReason, Verdict, BACKEND_LOCAL, FRONTEND_AFFINITY_CLIENT_IP, FRONTEND_EMPTY_DROP,
    FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES,
};

use crate::{
    cli::Output,
    dataplane::maps::BpfMaps,
    frontend_text::{frontend_text, scope_label},
    sync::{entries::BackendMapValue, store::MapContents},
};

/// A backend of a frontend.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Backend {
    address: IpAddr,
    port: u16,
    /// Runs on this node.
    local: bool,
}

/// One frontend: a row of the table, an element of the JSON list.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    frontend: String,
    /// "pod" (cluster IPs, reached from pods) or "node" (from outside).
    scope: &'static str,
    /// Policy flags: Local drop, SNAT to remote backends, source ranges.
    policy: Vec<&'static str>,
    id: u32,
    /// ClientIP affinity timeout in seconds, if the service has affinity.
    affinity_timeout_seconds: Option<u32>,
    /// `null` for a backend id the maps name but do not hold.
    backends: Vec<Option<Backend>>,
    /// Sockets the socket hooks sent to a backend (connects, unconnected
    /// UDP datagrams): their packets are not translated, nor counted.
    sockets: u64,
    packets: u64,
    bytes: u64,
}

fn rows(contents: &MapContents, maps: &BpfMaps) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (key, value) in &contents.frontends {
        // Each backend once, in address order, however many slots it holds.
        let members: BTreeSet<u32> = match value.table_size {
            0 => BTreeSet::new(),
            _ => contents.tables.get(&value.id).map_or_else(
                || [u32::MAX].into(),
                |table| table.members.iter().copied().collect(),
            ),
        };
        let mut found: Vec<Option<BackendMapValue>> = members
            .iter()
            .map(|id| contents.backends.get(*id))
            .collect();
        found.sort_by_key(|b| b.map(|b| (b.addr(), b.port())));
        let backends = found
            .into_iter()
            .map(|backend| {
                backend.map(|b| Backend {
                    address: b.addr(),
                    port: b.port(),
                    local: b.flags() & BACKEND_LOCAL != 0,
                })
            })
            .collect();
        let stats = maps.frontend_stats(value.id)?;
        let sockets = maps.frontend_sockets(value.id)?;
        let policy = [
            (FRONTEND_EMPTY_DROP, "local"),
            (FRONTEND_SNAT_REMOTE, "snat"),
            (FRONTEND_SOURCE_RANGES, "ranges"),
        ]
        .into_iter()
        .filter(|(bit, _)| value.flags & bit != 0)
        .map(|(_, label)| label)
        .collect();
        rows.push(Row {
            frontend: frontend_text(key),
            scope: scope_label(key),
            policy,
            id: value.id,
            affinity_timeout_seconds: (value.flags & FRONTEND_AFFINITY_CLIENT_IP != 0)
                .then_some(value.affinity_timeout),
            backends,
            sockets,
            packets: stats.packets,
            bytes: stats.bytes,
        });
    }
    Ok(rows)
}

/// Counters under the table.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    no_backend_drops: u64,
    rejected_tcp: u64,
    rejected_udp: u64,
    refused_sockets: u64,
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
        "{:<width$}  {:<5}  {:<17}  {:>5}  {:<15}  {:>8}  {:>10}  {:>12}  BACKENDS",
        "FRONTEND", "SCOPE", "POLICY", "ID", "AFFINITY", "SOCKETS", "PACKETS", "BYTES"
    );
    for row in rows {
        let backends = if row.backends.is_empty() {
            "<none>".to_string()
        } else {
            let text: Vec<String> = row
                .backends
                .iter()
                .map(|backend| match backend {
                    Some(b) => format!(
                        "{}{}",
                        SocketAddr::new(b.address, b.port),
                        if b.local { "(local)" } else { "" }
                    ),
                    None => "<missing>".to_string(),
                })
                .collect();
            text.join(",")
        };
        let policy = if row.policy.is_empty() {
            "-".to_string()
        } else {
            row.policy.join(",")
        };
        let affinity = row
            .affinity_timeout_seconds
            .map_or_else(|| "-".to_string(), |secs| format!("ClientIP/{secs}s"));
        let _ = writeln!(
            out,
            "{:<width$}  {:<5}  {policy:<17}  {:>5}  {affinity:<15}  {:>8}  {:>10}  {:>12}  {backends}",
            row.frontend, row.scope, row.id, row.sockets, row.packets, row.bytes
        );
    }
    let _ = writeln!(
        out,
        "{} frontends; {} packets dropped for want of a backend; {} TCP resets and {} ICMP \
         unreachables sent and {} socket calls refused for Services without endpoints",
        rows.len(),
        totals.no_backend_drops,
        totals.rejected_tcp,
        totals.rejected_udp,
        totals.refused_sockets
    );
    out
}

/// The JSON document: field names are kept stable for scripts.
fn render_json(rows: &[Row], totals: &Totals) -> String {
    let document = serde_json::json!({ "frontends": rows, "totals": totals });
    format!("{document:#}\n")
}

pub fn run(pin_path: &Path, output: Output) -> anyhow::Result<()> {
    let maps = BpfMaps::open_pinned(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let contents = maps.read_contents()?;
    let rows = rows(&contents, &maps)?;
    let totals = Totals {
        no_backend_drops: maps.drops(DropReason::NoBackend.index())?,
        rejected_tcp: maps.verdicts(Verdict::RejectedTcp.index())?,
        rejected_udp: maps.verdicts(Verdict::RejectedUdp.index())?,
        refused_sockets: maps.verdicts(Verdict::RefusedSocket.index())?,
    };
    match output {
        Output::Table => print!("{}", render(&rows, &totals)),
        Output::Json => print!("{}", render_json(&rows, &totals)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                frontend: "10.96.0.10:80/TCP".into(),
                scope: "pod",
                policy: vec![],
                id: 0,
                affinity_timeout_seconds: Some(10_800),
                backends: vec![
                    Some(backend("10.244.0.2", true)),
                    Some(backend("10.244.0.3", false)),
                ],
                sockets: 7,
                packets: 12,
                bytes: 960,
            },
            Row {
                frontend: "192.168.1.10:30053/UDP".into(),
                scope: "node",
                policy: vec!["local", "ranges"],
                id: 1,
                affinity_timeout_seconds: None,
                backends: vec![],
                sockets: 0,
                packets: 0,
                bytes: 0,
            },
            Row {
                frontend: "[fd00:10:96::a]:80/TCP".into(),
                scope: "pod",
                policy: vec![],
                id: 2,
                affinity_timeout_seconds: None,
                backends: vec![Some(backend("fd00:10:244::5", false))],
                sockets: 0,
                packets: 0,
                bytes: 0,
            },
        ]
    }

    fn backend(address: &str, local: bool) -> Backend {
        Backend {
            address: address.parse().unwrap(),
            port: 8080,
            local,
        }
    }

    fn totals() -> Totals {
        Totals {
            no_backend_drops: 3,
            rejected_tcp: 4,
            rejected_udp: 5,
            refused_sockets: 6,
        }
    }

    #[test]
    fn json_has_stable_field_names() {
        let mut rows = rows();
        rows[1].backends.push(None);
        let json: serde_json::Value = serde_json::from_str(&render_json(&rows, &totals())).unwrap();
        assert_eq!(
            json["frontends"][0],
            serde_json::json!({
                "frontend": "10.96.0.10:80/TCP",
                "scope": "pod",
                "policy": [],
                "id": 0,
                "affinityTimeoutSeconds": 10800,
                "backends": [
                    {"address": "10.244.0.2", "port": 8080, "local": true},
                    {"address": "10.244.0.3", "port": 8080, "local": false},
                ],
                "sockets": 7,
                "packets": 12,
                "bytes": 960,
            })
        );
        assert_eq!(
            json["frontends"][1]["policy"],
            serde_json::json!(["local", "ranges"])
        );
        assert_eq!(
            json["frontends"][1]["affinityTimeoutSeconds"],
            serde_json::Value::Null
        );
        assert_eq!(json["frontends"][1]["backends"], serde_json::json!([null]));
        assert_eq!(
            json["totals"],
            serde_json::json!({
                "noBackendDrops": 3,
                "rejectedTcp": 4,
                "rejectedUdp": 5,
                "refusedSockets": 6
            })
        );
    }

    #[test]
    fn table_lists_frontends_backends_and_counters() {
        let rows = rows();
        let table = render(&rows, &totals());
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("FRONTEND"));
        assert!(
            lines[1].starts_with("10.96.0.10:80/TCP")
                && lines[1].contains(" pod ")
                && lines[1].contains("ClientIP/10800s")
                && lines[1].ends_with(
                    "7          12           960  10.244.0.2:8080(local),10.244.0.3:8080"
                ),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("<none>"));
        assert!(
            lines[2].starts_with("192.168.1.10:30053/UDP  node   local,ranges"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("[fd00:10:96::a]:80/TCP")
                && lines[3].ends_with("  [fd00:10:244::5]:8080"),
            "{}",
            lines[3]
        );
        assert_eq!(
            lines[4],
            "3 frontends; 3 packets dropped for want of a backend; 4 TCP resets and 5 ICMP \
             unreachables sent and 6 socket calls refused for Services without endpoints"
        );
    }
}
