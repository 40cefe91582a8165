//! One `kxdp monitor` event: decoded from the ring buffer's record, told
//! apart by the filters, printed as a line or a JSON object (pure).

use std::net::{IpAddr, SocketAddr};

use proxy_common::{
    addr::addr6_from_net,
    maps::{
        addr_from_net, port_from_net, DropReason, MonitorEvent, EVENT_DROP, EVENT_NEW_FLOW,
        EVENT_REJECT, EVENT_SOCKET_REFUSED,
    },
};
use serde_json::{json, Value};

use crate::model::types::Protocol;

/// What `--reason` takes besides drop reasons' names.
pub const KINDS: [&str; 3] = ["reject", "socket_refused", "new_flow"];

/// An event with what the maps say of its frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// "drop", "reject", "socket_refused" or "new_flow".
    pub kind: &'static str,
    /// A drop's reason (`DropReason::name`).
    pub reason: Option<&'static str>,
    /// `None` for a socket's (the hooks see no source).
    pub source: Option<SocketAddr>,
    pub destination: SocketAddr,
    pub protocol: String,
    pub backend: Option<SocketAddr>,
    pub frontend_id: u32,
    /// The frontend's key as text, if the maps still hold it.
    pub frontend: Option<String>,
    /// NAMESPACE/NAME of its Service, if labelled.
    pub service: Option<String>,
    /// Events the rate limit left out on the sending CPU before this one.
    pub suppressed: u32,
}

fn address(family: u8, words: [u32; 4]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(addr6_from_net(words))
    } else {
        IpAddr::V4(addr_from_net(words[0]))
    }
}

impl Event {
    /// The record's event; `None` for a record of no known kind.
    pub fn decode(record: &MonitorEvent) -> Option<Self> {
        let at =
            |words, port: u16| SocketAddr::new(address(record.family, words), port_from_net(port));
        let kind = match record.kind {
            EVENT_DROP => "drop",
            EVENT_REJECT => "reject",
            EVENT_NEW_FLOW => "new_flow",
            EVENT_SOCKET_REFUSED => "socket_refused",
            _ => return None,
        };
        let reason = (record.kind == EVENT_DROP).then(|| {
            DropReason::ALL
                .iter()
                .find(|r| r.index() == u32::from(record.reason))
                .map_or("unknown", |r| r.name())
        });
        let protocol = Protocol::from_ip_proto(record.proto)
            .map_or_else(|| record.proto.to_string(), |p| p.to_string());
        Some(Self {
            kind,
            reason,
            source: (record.kind != EVENT_SOCKET_REFUSED)
                .then(|| at(record.src_addr, record.src_port)),
            destination: at(record.dst_addr, record.dst_port),
            protocol,
            backend: (record.kind == EVENT_NEW_FLOW)
                .then(|| at(record.backend_addr, record.backend_port)),
            frontend_id: record.frontend_id,
            frontend: None,
            service: None,
            suppressed: record.suppressed,
        })
    }

    /// The word `--reason` matches: a drop's reason, else the kind.
    pub fn reason_word(&self) -> &'static str {
        self.reason.unwrap_or(self.kind)
    }

    /// `HH:MM:SS.mmm` (UTC, of `unix_ms`), then the event.
    pub fn line(&self, unix_ms: u64) -> String {
        let secs = unix_ms / 1000 % 86_400;
        let time = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            unix_ms % 1000
        );
        let source = self
            .source
            .map_or_else(|| "socket".to_string(), |s| s.to_string());
        let mut line = format!(
            "{time}  {:<14}  {:<20}  {source} → {}/{}",
            self.kind,
            self.reason.unwrap_or("-"),
            self.destination,
            self.protocol
        );
        if let Some(backend) = self.backend {
            line.push_str(&format!(" → {backend}"));
        }
        line.push_str(&format!(
            "  frontend {} {}",
            self.frontend
                .clone()
                .unwrap_or_else(|| format!("id {}", self.frontend_id)),
            self.service.as_deref().unwrap_or("(unlabelled)")
        ));
        line
    }

    pub fn json(&self, unix_ms: u64) -> Value {
        json!({
            "unixMs": unix_ms,
            "kind": self.kind,
            "reason": self.reason,
            "source": self.source,
            "destination": self.destination,
            "protocol": self.protocol,
            "backend": self.backend,
            "frontendId": self.frontend_id,
            "frontend": self.frontend,
            "service": self.service,
            "suppressed": self.suppressed,
        })
    }
}

/// What `--service`, `--reason` and `--address` let through (each empty:
/// everything).
#[derive(Debug, Default)]
pub struct Filter {
    pub services: Vec<String>,
    pub reasons: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

impl Filter {
    /// Refuses a reason no event has.
    pub fn new(
        services: Vec<String>,
        reasons: Vec<String>,
        addresses: Vec<IpAddr>,
    ) -> anyhow::Result<Self> {
        for reason in &reasons {
            let known = KINDS.contains(&reason.as_str())
                || DropReason::ALL.iter().any(|r| r.name() == reason);
            if !known {
                let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
                anyhow::bail!(
                    "--reason {reason}: no event has it (one of {}, {})",
                    KINDS.join(", "),
                    names.join(", ")
                );
            }
        }
        Ok(Self {
            services,
            reasons,
            addresses,
        })
    }

    pub fn passes(&self, event: &Event) -> bool {
        let service = event.service.as_deref().unwrap_or("");
        let addresses = [event.source, Some(event.destination), event.backend];
        (self.services.is_empty() || self.services.iter().any(|s| s == service))
            && (self.reasons.is_empty() || self.reasons.iter().any(|r| r == event.reason_word()))
            && (self.addresses.is_empty()
                || addresses
                    .iter()
                    .flatten()
                    .any(|a| self.addresses.contains(&a.ip())))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proxy_common::{addr::addr6_to_net, maps::port_to_net};

    use super::*;

    fn words4(addr: Ipv4Addr) -> [u32; 4] {
        [proxy_common::maps::addr_to_net(addr), 0, 0, 0]
    }

    fn record(kind: u8, reason: DropReason) -> MonitorEvent {
        MonitorEvent {
            kind,
            reason: reason.index() as u8,
            family: 4,
            proto: 6,
            frontend_id: 7,
            src_addr: words4(Ipv4Addr::new(10, 200, 1, 2)),
            dst_addr: words4(Ipv4Addr::new(192, 168, 77, 10)),
            backend_addr: words4(Ipv4Addr::new(10, 200, 2, 2)),
            src_port: port_to_net(43210),
            dst_port: port_to_net(80),
            backend_port: port_to_net(8080),
            _pad: 0,
            suppressed: 0,
        }
    }

    fn named(mut event: Event) -> Event {
        event.frontend = Some("192.168.77.10:80/TCP".into());
        event.service = Some("default/web-lb".into());
        event
    }

    #[test]
    fn each_kind_reads_as_one_line() {
        let drop = named(Event::decode(&record(EVENT_DROP, DropReason::SourceRange)).unwrap());
        assert_eq!(
            drop.line(3_723_004),
            "01:02:03.004  drop            source_range          10.200.1.2:43210 → \
             192.168.77.10:80/TCP  frontend 192.168.77.10:80/TCP default/web-lb"
        );
        let flow = Event::decode(&record(EVENT_NEW_FLOW, DropReason::NoBackend)).unwrap();
        assert!(
            flow.line(0)
                .ends_with("→ 192.168.77.10:80/TCP → 10.200.2.2:8080  frontend id 7 (unlabelled)"),
            "{}",
            flow.line(0)
        );
        assert_eq!(flow.reason, None);
        let socket = Event::decode(&record(EVENT_SOCKET_REFUSED, DropReason::NoBackend)).unwrap();
        assert!(
            socket.line(0).contains("  socket → 192.168.77.10:80/TCP"),
            "{}",
            socket.line(0)
        );
        assert_eq!(Event::decode(&record(0, DropReason::NoBackend)), None);
    }

    #[test]
    fn ipv6_addresses_decode_whole() {
        let mut v6 = record(EVENT_REJECT, DropReason::NoBackend);
        v6.family = 6;
        v6.src_addr = addr6_to_net("fd00::1:2".parse().unwrap());
        v6.dst_addr = addr6_to_net("fd00:10:96::a".parse().unwrap());
        let event = Event::decode(&v6).unwrap();
        assert_eq!(event.source, Some("[fd00::1:2]:43210".parse().unwrap()));
        assert_eq!(event.destination, "[fd00:10:96::a]:80".parse().unwrap());
        let _: Ipv6Addr = "fd00::1:2".parse().unwrap();
    }

    #[test]
    fn json_has_stable_field_names() {
        let drop = named(Event::decode(&record(EVENT_DROP, DropReason::SourceRange)).unwrap());
        let json = drop.json(5);
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "backend",
                "destination",
                "frontend",
                "frontendId",
                "kind",
                "protocol",
                "reason",
                "service",
                "source",
                "suppressed",
                "unixMs"
            ]
        );
        assert_eq!(json["reason"], "source_range");
        assert_eq!(json["source"], "10.200.1.2:43210");
    }

    #[test]
    fn filters_take_services_reasons_and_addresses() {
        let drop = named(Event::decode(&record(EVENT_DROP, DropReason::SourceRange)).unwrap());
        let reject = Event::decode(&record(EVENT_REJECT, DropReason::NoBackend)).unwrap();
        let filter = |s: &[&str], r: &[&str], a: &[&str]| {
            Filter::new(
                s.iter().map(|x| x.to_string()).collect(),
                r.iter().map(|x| x.to_string()).collect(),
                a.iter().map(|x| x.parse().unwrap()).collect(),
            )
            .unwrap()
        };
        assert!(filter(&[], &[], &[]).passes(&drop));
        assert!(filter(&["default/web-lb"], &[], &[]).passes(&drop));
        assert!(!filter(&["default/web-lb"], &[], &[]).passes(&reject));
        assert!(filter(&[], &["reject"], &[]).passes(&reject));
        assert!(!filter(&[], &["reject"], &[]).passes(&drop));
        assert!(filter(&[], &["source_range"], &["10.200.1.2"]).passes(&drop));
        assert!(!filter(&[], &[], &["10.9.9.9"]).passes(&drop));
        let unknown = Filter::new(vec![], vec!["bogus".into()], vec![]).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("--reason bogus: no event has it"),
            "{unknown}"
        );
    }
}
