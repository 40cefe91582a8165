//! `kxdp services`: what the datapath serves, read from the pinned maps.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use proxy_common::maps::{
    addr_from_net, drop_reason, port_from_net, SlotKey, BACKEND_LOCAL, SERVICE_AFFINITY_CLIENT_IP,
};

use crate::{
    dataplane::maps::BpfMaps,
    sync::{frontend_text, MapContents},
};

/// One row of the table.
struct Row {
    frontend: String,
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
        let backends = (0..value.slot_count)
            .map(|slot| {
                let id = contents.selection.get(&SlotKey {
                    service_id: value.id,
                    slot,
                });
                match id.and_then(|id| contents.backends.get(id)) {
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
                }
            })
            .collect();
        let stats = maps.service_stats(value.id)?;
        rows.push(Row {
            frontend: frontend_text(key),
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

fn render(rows: &[Row], no_backend_drops: u64) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|r| r.frontend.len())
        .max()
        .unwrap_or(0)
        .max("FRONTEND".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:<15}  {:>10}  {:>12}  BACKENDS",
        "FRONTEND", "ID", "AFFINITY", "PACKETS", "BYTES"
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
            "{:<width$}  {:>5}  {affinity:<15}  {:>10}  {:>12}  {backends}",
            row.frontend, row.id, row.packets, row.bytes
        );
    }
    let _ = writeln!(
        out,
        "{} frontends; {no_backend_drops} packets dropped for want of a backend",
        rows.len()
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
    print!("{}", render(&rows, maps.drops(drop_reason::NO_BACKEND)?));
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
                id: 0,
                affinity: Some(10_800),
                backends: vec!["10.244.0.2:8080(local)".into(), "10.244.0.3:8080".into()],
                packets: 12,
                bytes: 960,
            },
            Row {
                frontend: "10.96.0.10:53/UDP".into(),
                id: 1,
                affinity: None,
                backends: vec![],
                packets: 0,
                bytes: 0,
            },
        ];
        let table = render(&rows, 3);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("FRONTEND"));
        assert!(
            lines[1].starts_with("10.96.0.10:80/TCP")
                && lines[1].contains("ClientIP/10800s")
                && lines[1].ends_with("12           960  10.244.0.2:8080(local),10.244.0.3:8080"),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("<none>"));
        assert_eq!(
            lines[3],
            "2 frontends; 3 packets dropped for want of a backend"
        );
    }
}
