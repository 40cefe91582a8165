//! `kxdp trace` output: one line per step, or one JSON document.

use std::{fmt::Write as _, net::SocketAddr};

use proxy_common::maps::{
    FrontendLabel, CT_CLOSING, CT_FROM_NIC, CT_HAIRPIN, CT_SNAT, FRONTEND_AFFINITY_CLIENT_IP,
    FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES,
};
use serde_json::{json, Value};

use super::{
    request::Via,
    walk::{Choice, Chosen, Entry, Found, Outcome, Translation, Walk},
};
use crate::{
    frontend_text::{frontend_text, scope_label},
    model::types::Protocol,
};

fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn service_of(label: &FrontendLabel) -> String {
    let port = text_of(&label.port_name);
    let port = if port.is_empty() {
        label.service_port.to_string()
    } else {
        format!("{port} ({})", label.service_port)
    };
    format!(
        "{}/{} port {port}",
        text_of(&label.namespace),
        text_of(&label.name)
    )
}

fn flag_words(flags: u8) -> Vec<&'static str> {
    [
        (CT_SNAT, "snat"),
        (CT_FROM_NIC, "from-nic"),
        (CT_CLOSING, "closing"),
        (CT_HAIRPIN, "hairpin"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, word)| word)
    .collect()
}

fn frontend_rules(found: &Found) -> Vec<&'static str> {
    let flags = found.value.flags;
    [
        (
            FRONTEND_EMPTY_DROP,
            "traffic policy Local: drops when no local endpoint",
        ),
        (FRONTEND_SNAT_REMOTE, "remote backends SNATed"),
        (FRONTEND_SOURCE_RANGES, "loadBalancerSourceRanges"),
        (FRONTEND_AFFINITY_CLIENT_IP, "sessionAffinity ClientIP"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, word)| word)
    .collect()
}

fn hook_name(via: Via) -> &'static str {
    match via {
        Via::Pod => "leaving a pod (tc on its interface)",
        Via::Nic => "arriving on a NIC (XDP)",
        Via::Host => "a socket's connect()/sendmsg() (cgroup socket hooks)",
    }
}

fn reject_reply(walk: &Walk) -> &'static str {
    match (
        walk.request.destination.protocol,
        walk.request.source.addr.is_ipv4(),
    ) {
        (Protocol::Tcp, _) => "TCP RST",
        (Protocol::Sctp, _) => "SCTP ABORT",
        (Protocol::Udp, true) => "ICMP port unreachable",
        (Protocol::Udp, false) => "ICMPv6 port unreachable",
    }
}

fn entry_text(entry: &Entry) -> String {
    let mut text = format!("backend {} (id {})", entry.nat, entry.backend_id);
    let flags = flag_words(entry.flags);
    if !flags.is_empty() {
        let _ = write!(text, ", {}", flags.join(","));
    }
    if let Some(snat) = entry.snat {
        let _ = write!(text, ", SNATed as {snat}");
    }
    text
}

fn choice_text(chosen: &Chosen) -> String {
    let how = match &chosen.choice {
        Choice::Affinity {
            last_used_seconds_ago,
            timeout_seconds,
        } => format!(
            "the client's affinity (last used {last_used_seconds_ago} s ago, timeout \
             {timeout_seconds} s)"
        ),
        Choice::Maglev {
            hash,
            slot,
            table_size,
            member,
        } => {
            format!("Maglev: tuple hash {hash:#010x}, slot {slot} of {table_size}, member {member}")
        }
    };
    format!(
        "{how} → backend {} (id {}{})",
        chosen.backend,
        chosen.backend_id,
        if chosen.local { ", on this node" } else { "" }
    )
}

fn verdict_text(walk: &Walk) -> String {
    match &walk.outcome {
        Outcome::NoFrontend => "passes untouched: no frontend at this address and port".into(),
        Outcome::Reject => format!("rejected: answered with a {}", reject_reply(walk)),
        Outcome::Drop(reason) => format!("dropped: {}", reason.name()),
        Outcome::Translate(Translation::Existing(entry)) => match entry.snat {
            Some(snat) => format!("DNAT to {}, SNAT to {snat} (existing flow)", entry.nat),
            None => format!("DNAT to {} (existing flow)", entry.nat),
        },
        Outcome::Translate(Translation::New(chosen)) => {
            let mut text = format!("DNAT to {}", chosen.backend);
            match chosen.recording {
                "snat" => {
                    let nics: Vec<String> = chosen
                        .snat_to
                        .iter()
                        .map(|(ifindex, addr)| format!("{addr} (ifindex {ifindex})"))
                        .collect();
                    let _ = write!(
                        text,
                        ", SNAT to the arriving NIC's address: {}, port {}-{} (first try {})",
                        nics.join(" or "),
                        proxy_common::maps::SNAT_PORT_MIN,
                        proxy_common::maps::SNAT_PORT_MAX,
                        chosen.snat_first_port.unwrap_or_default()
                    );
                }
                "hairpin" => text.push_str(", from the frontend (the pod is its own backend)"),
                "fromNic" => text.push_str(", replies leave the backend's pod straight out"),
                _ => {}
            }
            text
        }
        Outcome::PerSocket { refused: true, .. } => {
            "refused: connect() fails with ECONNREFUSED (no endpoints)".into()
        }
        Outcome::PerSocket { backends, .. } => format!(
            "decided per socket: connect() (or each sendmsg() of an unconnected UDP socket) is \
             sent to one of {}, by the socket's cookie (or its network namespace's affinity); \
             no tuple tells which",
            backends
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn text(walk: &Walk) -> String {
    let request = &walk.request;
    let mut out = String::new();
    let source = match request.source.port {
        Some(port) => SocketAddr::new(request.source.addr, port).to_string(),
        None => format!("{} (no port: port 0 stands in)", request.source.addr),
    };
    let mut line = |step: &str, what: String| {
        let _ = writeln!(out, "{step:<10} {what}");
    };
    line(
        "packet",
        format!(
            "{source} → {}, {}",
            request.destination,
            hook_name(request.via)
        ),
    );
    let Some(found) = &walk.frontend else {
        line("frontend", "none".into());
        line("verdict", verdict_text(walk));
        return out;
    };
    line(
        "frontend",
        format!(
            "{} ({} scope, id {}, {} slots)",
            frontend_text(&found.key),
            scope_label(&found.key),
            found.value.id,
            found.value.table_size
        ),
    );
    line(
        "service",
        found
            .label
            .as_ref()
            .map_or_else(|| "unlabelled".to_string(), service_of),
    );
    let rules = frontend_rules(found);
    line(
        "rules",
        if rules.is_empty() {
            "none".into()
        } else {
            rules.join("; ")
        },
    );
    if let Some(allowed) = walk.seen.source_ranges {
        let verdict = if allowed { "admitted" } else { "not admitted" };
        line(
            "ranges",
            format!("the client is {verdict} by loadBalancerSourceRanges"),
        );
    }
    if request.via != Via::Host {
        let idle = walk
            .seen
            .conntrack_idle_seconds
            .map_or_else(String::new, |s| format!(", last seen {s} s ago"));
        let conntrack = match (&walk.seen.conntrack, walk.seen.backend_gone) {
            (Some(entry), true) => format!("{}{idle}: its backend is gone", entry_text(entry)),
            (Some(entry), false) => format!("{}{idle}", entry_text(entry)),
            (None, _) => "no entry for the tuple: a new flow".into(),
        };
        line("conntrack", conntrack);
        if let Some(affinity) = &walk.seen.affinity {
            line(
                "affinity",
                format!(
                    "backend id {} (member {}) last used at {}",
                    affinity.backend_id, affinity.member, affinity.last_used
                ),
            );
        }
        if let Outcome::Translate(Translation::New(chosen)) = &walk.outcome {
            line("select", choice_text(chosen));
            if request.source.port.is_none() {
                line(
                    "note",
                    "without a source port the slot is port 0's; a real flow's depends on its port"
                        .into(),
                );
            }
        }
    }
    line("verdict", verdict_text(walk));
    out
}

pub fn json(walk: &Walk) -> Value {
    let request = &walk.request;
    let frontend = walk.frontend.as_ref().map(|found| {
        json!({
            "frontend": frontend_text(&found.key),
            "scope": scope_label(&found.key),
            "id": found.value.id,
            "tableSize": found.value.table_size,
            "rules": frontend_rules(found),
            "service": found.label.as_ref().map(|l| json!({
                "namespace": text_of(&l.namespace),
                "name": text_of(&l.name),
                "port": l.service_port,
                "portName": text_of(&l.port_name),
            })),
        })
    });
    let (action, backend, snat, reason, reply) = match &walk.outcome {
        Outcome::NoFrontend => ("pass", None, None, None, None),
        Outcome::Reject => ("reject", None, None, None, Some(reject_reply(walk))),
        Outcome::Drop(reason) => ("drop", None, None, Some(reason.name()), None),
        Outcome::Translate(Translation::Existing(entry)) => (
            "dnat",
            Some(entry.nat),
            entry.snat.map(|s| json!(s)),
            None,
            None,
        ),
        Outcome::Translate(Translation::New(chosen)) => {
            let snat = (chosen.recording == "snat").then(|| {
                json!({
                    "addresses": chosen.snat_to.iter().map(|(i, a)| json!({"ifindex": i, "address": a})).collect::<Vec<_>>(),
                    "firstPort": chosen.snat_first_port,
                })
            });
            ("dnat", Some(chosen.backend), snat, None, None)
        }
        Outcome::PerSocket { refused: true, .. } => ("refuseSocket", None, None, None, None),
        Outcome::PerSocket { .. } => ("perSocket", None, None, None, None),
    };
    let selection = match &walk.outcome {
        Outcome::Translate(Translation::New(chosen)) => json!(chosen),
        Outcome::PerSocket { backends, .. } => json!({ "candidates": backends }),
        _ => Value::Null,
    };
    json!({
        "source": request.source.addr,
        "sourcePort": request.source.port,
        "destination": request.destination.addr,
        "protocol": request.destination.protocol.to_string(),
        "via": request.via,
        "opensConnection": walk.opens_connection,
        "frontend": frontend,
        "sourceRangesAdmit": walk.seen.source_ranges,
        "conntrack": walk.seen.conntrack,
        "conntrackIdleSeconds": walk.seen.conntrack_idle_seconds,
        "backendGone": walk.seen.backend_gone,
        "selection": selection,
        "verdict": {
            "action": action,
            "backend": backend,
            "snat": snat,
            "reason": reason,
            "reply": reply,
        },
    })
}

#[cfg(test)]
mod tests {
    use proxy_common::maps::{
        addr_to_net, port_to_net, DropReason, FrontendKeyOf, FrontendValue, SCOPE_NODE,
    };

    use super::*;
    use crate::commands::trace::{
        request::{Request, Source},
        walk::Seen,
    };
    use proxy_common::maps::PROTO_TCP;

    fn walk(via: Via, outcome: Outcome, labelled: bool) -> Walk {
        let request = Request::new(
            "192.168.50.100:40000".parse::<Source>().unwrap(),
            "192.168.50.1:30080/tcp".parse().unwrap(),
            via,
        )
        .unwrap();
        let key = FrontendKeyOf {
            addr: addr_to_net("192.168.50.1".parse().unwrap()),
            port: port_to_net(30080),
            proto: PROTO_TCP,
            scope: SCOPE_NODE,
        };
        let mut label = FrontendLabel {
            namespace: [0; 64],
            name: [0; 64],
            port_name: [0; 16],
            service_port: 80,
            node_port: 30080,
            terminating: 0,
            service_type: 2,
            via: 3,
            policies: 0,
            _pad: [0; 3],
        };
        label.namespace[..4].copy_from_slice(b"shop");
        label.name[..3].copy_from_slice(b"web");
        label.port_name[..4].copy_from_slice(b"http");
        Walk {
            request,
            opens_connection: true,
            frontend: Some(Found {
                key: key.into(),
                value: FrontendValue {
                    id: 7,
                    table_size: 251,
                    flags: FRONTEND_SNAT_REMOTE,
                    affinity_timeout: 0,
                },
                label: labelled.then_some(label),
            }),
            seen: Seen::default(),
            outcome,
        }
    }

    fn snat_flow() -> Outcome {
        Outcome::Translate(Translation::New(Chosen {
            backend: "10.1.2.10:8080".parse().unwrap(),
            backend_id: 12,
            local: false,
            choice: Choice::Maglev {
                hash: 0xdead_beef,
                slot: 42,
                table_size: 251,
                member: 1,
            },
            recording: "snat",
            snat_to: vec![(3, "192.168.50.1".parse().unwrap())],
            snat_first_port: Some(61_234),
        }))
    }

    #[test]
    fn a_new_flow_reads_step_by_step() {
        let text = text(&walk(Via::Nic, snat_flow(), true));
        let steps: Vec<&str> = text.lines().collect();
        assert_eq!(
            steps,
            [
                "packet     192.168.50.100:40000 → 192.168.50.1:30080/TCP, arriving on a NIC (XDP)",
                "frontend   192.168.50.1:30080/TCP (node scope, id 7, 251 slots)",
                "service    shop/web port http (80)",
                "rules      remote backends SNATed",
                "conntrack  no entry for the tuple: a new flow",
                "select     Maglev: tuple hash 0xdeadbeef, slot 42 of 251, member 1 → backend \
                 10.1.2.10:8080 (id 12)",
                "verdict    DNAT to 10.1.2.10:8080, SNAT to the arriving NIC's address: \
                 192.168.50.1 (ifindex 3), port 61000-65535 (first try 61234)",
            ]
        );
    }

    #[test]
    fn verdicts_read_plainly_and_json_keeps_its_fields() {
        let cases = [
            (
                Outcome::Reject,
                "verdict    rejected: answered with a TCP RST",
                "reject",
            ),
            (
                Outcome::Drop(DropReason::SourceRange),
                "verdict    dropped: source_range",
                "drop",
            ),
            (
                Outcome::NoFrontend,
                "verdict    passes untouched: no frontend at this address and port",
                "pass",
            ),
        ];
        for (outcome, last, action) in cases {
            let traced = walk(Via::Pod, outcome, false);
            assert_eq!(text(&traced).lines().last(), Some(last));
            assert_eq!(json(&traced)["verdict"]["action"], action);
        }
        let traced = walk(Via::Nic, snat_flow(), true);
        let document = json(&traced);
        let mut fields: Vec<&str> = document
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "backendGone",
                "conntrack",
                "conntrackIdleSeconds",
                "destination",
                "frontend",
                "opensConnection",
                "protocol",
                "selection",
                "source",
                "sourcePort",
                "sourceRangesAdmit",
                "verdict",
                "via"
            ]
        );
        assert_eq!(document["verdict"]["backend"], "10.1.2.10:8080");
        assert_eq!(document["verdict"]["snat"]["firstPort"], 61_234);
        assert_eq!(document["selection"]["choice"]["by"], "maglev");
        assert_eq!(document["frontend"]["service"]["name"], "web");
        assert_eq!(document["via"], "nic");
    }

    #[test]
    fn the_socket_hooks_are_said_to_decide_per_socket() {
        let outcome = Outcome::PerSocket {
            refused: false,
            backends: vec![
                "10.1.2.10:8080".parse().unwrap(),
                "10.1.2.11:8080".parse().unwrap(),
            ],
        };
        let traced = walk(Via::Host, outcome, true);
        let verdict = text(&traced).lines().last().unwrap().to_string();
        assert!(verdict.contains("decided per socket"), "{verdict}");
        assert!(
            verdict.contains("10.1.2.10:8080, 10.1.2.11:8080"),
            "{verdict}"
        );
        assert!(verdict.contains("no tuple tells which"), "{verdict}");
        assert_eq!(json(&traced)["verdict"]["action"], "perSocket");
        let refused = walk(
            Via::Host,
            Outcome::PerSocket {
                refused: true,
                backends: Vec::new(),
            },
            true,
        );
        assert_eq!(json(&refused)["verdict"]["action"], "refuseSocket");
    }
}
