//! `kxdp services` output: a table in kubectl's manner (each Service's
//! row, then its frontends' rows under it), the wide table, or the same
//! document as JSON or YAML with stable field names.

use std::{fmt::Write as _, net::SocketAddr};

use super::view::{Frontend, Service, Totals};
use crate::cli::ListOutput;

pub fn render(
    services: &[Service],
    totals: &Totals,
    output: ListOutput,
    all_namespaces: bool,
) -> anyhow::Result<String> {
    let document = || serde_json::json!({ "services": services, "totals": totals });
    Ok(match output {
        ListOutput::Table => table(services, totals, false, all_namespaces),
        ListOutput::Wide => table(services, totals, true, all_namespaces),
        ListOutput::Json => format!("{:#}\n", document()),
        ListOutput::Yaml => serde_norway::to_string(&document())?,
    })
}

/// Cells padded to their column's width (numbers to the right), two
/// spaces apart, trailing spaces trimmed.
fn columns(rows: &[Vec<String>], numeric: &[bool]) -> Vec<String> {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let width = widths[c];
                if numeric.get(c).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>width$}");
                } else {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn or_none(items: Vec<String>, none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(",")
    }
}

fn service_row(service: &Service, all_namespaces: bool) -> Vec<String> {
    let unknown = |text: &str| {
        if text.is_empty() {
            "<unlabelled>".to_string()
        } else {
            text.to_string()
        }
    };
    let external_none = if service.service_type == "LoadBalancer" {
        "<pending>"
    } else {
        "<none>"
    };
    let mut row = vec![
        unknown(&service.name),
        unknown(service.service_type),
        or_none(
            service.cluster_ips.iter().map(|a| a.to_string()).collect(),
            "<none>",
        ),
        or_none(
            service.external_ips.iter().map(|a| a.to_string()).collect(),
            external_none,
        ),
        or_none(service.ports.clone(), "<none>"),
    ];
    if all_namespaces {
        row.insert(0, unknown(&service.namespace));
    }
    row
}

const FRONTEND_HEADER: [&str; 10] = [
    "FRONTEND",
    "SCOPE",
    "VIA",
    "POLICY",
    "READY",
    "LOCAL",
    "TERMINATING",
    "PACKETS",
    "BYTES",
    "REJECTS",
];
const FRONTEND_NUMERIC: [bool; 14] = [
    false, false, false, false, true, true, true, true, true, true, true, false, true, false,
];
const WIDE_HEADER: [&str; 4] = ["ID", "AFFINITY", "SOCKETS", "BACKENDS"];

fn frontend_row(frontend: &Frontend, wide: bool) -> Vec<String> {
    let dash = |text: String| if text.is_empty() { "-".into() } else { text };
    let mut row = vec![
        frontend.frontend.clone(),
        frontend.scope.to_string(),
        dash(frontend.via.to_string()),
        dash(frontend.policy.join(",")),
        frontend.backends.len().to_string(),
        frontend.local().to_string(),
        frontend.terminating.to_string(),
        frontend.counters.packets.to_string(),
        frontend.counters.bytes.to_string(),
        frontend.counters.rejects.to_string(),
    ];
    if wide {
        let backends: Vec<String> = frontend
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
        row.extend([
            frontend.id.to_string(),
            frontend
                .affinity_timeout_seconds
                .map_or_else(|| "-".to_string(), |secs| format!("ClientIP/{secs}s")),
            frontend.counters.sockets.to_string(),
            or_none(backends, "<none>"),
        ]);
    }
    row
}

fn table(services: &[Service], totals: &Totals, wide: bool, all_namespaces: bool) -> String {
    let mut service_rows = vec![{
        let mut header = vec!["NAME", "TYPE", "CLUSTER-IP(S)", "EXTERNAL-IP(S)", "PORT(S)"];
        if all_namespaces {
            header.insert(0, "NAMESPACE");
        }
        header.into_iter().map(String::from).collect()
    }];
    service_rows.extend(services.iter().map(|s| service_row(s, all_namespaces)));
    let mut frontend_rows = vec![{
        let mut header: Vec<String> = FRONTEND_HEADER.iter().map(|h| h.to_string()).collect();
        if wide {
            header.extend(WIDE_HEADER.iter().map(|h| h.to_string()));
        }
        header
    }];
    for service in services {
        frontend_rows.extend(service.frontends.iter().map(|f| frontend_row(f, wide)));
    }
    let service_lines = columns(&service_rows, &[]);
    let frontend_lines = columns(&frontend_rows, &FRONTEND_NUMERIC);
    let mut out = String::new();
    if services.is_empty() {
        out.push_str("No Services served here.\n");
    } else {
        let _ = writeln!(out, "{}", service_lines[0]);
        let mut next_frontend = 1;
        for (service, line) in services.iter().zip(&service_lines[1..]) {
            let _ = writeln!(out, "{line}");
            let _ = writeln!(out, "  {}", frontend_lines[0]);
            for frontend_line in &frontend_lines[next_frontend..][..service.frontends.len()] {
                let _ = writeln!(out, "  {frontend_line}");
            }
            next_frontend += service.frontends.len();
        }
    }
    let frontends: usize = services.iter().map(|s| s.frontends.len()).sum();
    let _ = writeln!(
        out,
        "{} Services, {frontends} frontends. On this node: {} packets dropped for want of a \
         backend; {} TCP resets and {} ICMP unreachables sent and {} socket calls refused for \
         Services without endpoints",
        services.len(),
        totals.no_backend_drops,
        totals.rejected_tcp,
        totals.rejected_udp,
        totals.refused_sockets
    );
    out
}
