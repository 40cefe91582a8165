//! `/metrics`: the datapath's counters, read from the pinned maps at scrape
//! time, and the agent's sync counters, in the Prometheus text format. A
//! scrape reads one per-CPU counter per frontend and walks the
//! connection-tracking keys up to a cap, so it stays bounded; a failed read
//! leaves its series out and is counted, never fatal.

use std::{path::Path, sync::atomic::AtomicU64, time::SystemTime};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use proxy_common::{
    maps::{DropReason, Verdict, SCOPE_NODE},
    sizes,
};
use tracing::warn;

use crate::{
    dataplane::{
        fill::{self, Conntrack, Count, CONNTRACK_COUNT_CAP},
        maglev_arena::MAGLEV_ARENA,
        maps::{BpfMaps, AGENT_WRITTEN},
    },
    frontend_text::{frontend_text, scope_label},
    model::types::Protocol,
    pipeline::{Counters, Pipeline},
    plan::{FrontendAddr, FrontendScope},
    source::RejectionKind,
    sync::entries::FrontendMapKey,
};

/// One frontend's counters and who it belongs to.
#[derive(Debug, Default)]
pub struct FrontendSample {
    /// `VIP:port/proto`.
    pub frontend: String,
    /// `pod` or `node`, as `kxdp services` says.
    pub scope: &'static str,
    /// Empty when no Service claims it (adopted from an earlier agent).
    pub namespace: String,
    pub name: String,
    /// Sockets the socket hooks sent to a backend.
    pub sockets: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Entries and capacity of one map.
#[derive(Debug)]
pub struct MapSample {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

/// Everything one scrape reports but the sync histogram.
#[derive(Debug, Default)]
pub struct Sample {
    pub frontends: Vec<FrontendSample>,
    pub drops: Vec<(String, u64)>,
    pub rejects: Vec<(&'static str, u64)>,
    pub maps: Vec<MapSample>,
    /// Per connection-tracking map (`CONNTRACK`, `CONNTRACK6`): entries
    /// and capacity.
    pub conntrack: Vec<(&'static str, Count, u32)>,
    pub syncs: u64,
    pub failed_syncs: u64,
    pub rejected_objects: Vec<(&'static str, u64)>,
    /// Services left out until the maps have room: (namespace, name).
    pub waiting_for_room: Vec<(String, String)>,
    /// Seconds since the epoch.
    pub last_successful_sync: Option<f64>,
    /// Map reads that failed during this scrape.
    pub read_errors: u64,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

fn gauge_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The text of one scrape. Counter names get `_total` from the encoder.
pub fn render(sample: &Sample, sync_seconds: &Histogram) -> String {
    let mut registry = Registry::default();
    let frontend_labels = |f: &FrontendSample| -> Labels {
        vec![
            ("frontend", f.frontend.clone()),
            ("scope", f.scope.to_string()),
            ("service_namespace", f.namespace.clone()),
            ("service_name", f.name.clone()),
        ]
    };
    counter_family(
        &mut registry,
        "kxdp_frontend_packets",
        "Packets translated to a backend, per frontend.",
        sample
            .frontends
            .iter()
            .map(|f| (frontend_labels(f), f.packets)),
    );
    counter_family(
        &mut registry,
        "kxdp_frontend_sockets",
        "Sockets the socket hooks sent to a backend (connects, unconnected UDP datagrams), \
         per frontend; their packets are not counted above.",
        sample
            .frontends
            .iter()
            .map(|f| (frontend_labels(f), f.sockets)),
    );
    counter_family(
        &mut registry,
        "kxdp_frontend_bytes",
        "Bytes translated to a backend, per frontend.",
        sample
            .frontends
            .iter()
            .map(|f| (frontend_labels(f), f.bytes)),
    );
    counter_family(
        &mut registry,
        "kxdp_dropped_packets",
        "Packets the datapath dropped, by reason.",
        sample
            .drops
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.clone())], *n)),
    );
    counter_family(
        &mut registry,
        "kxdp_rejected_packets",
        "Packets to a Service without endpoints answered with a TCP RST or an ICMP port unreachable, \
         and socket calls to one refused by the socket hooks (reply=socket_refused).",
        sample
            .rejects
            .iter()
            .map(|(reply, n)| (vec![("reply", reply.to_string())], *n)),
    );
    gauge_family(
        &mut registry,
        "kxdp_map_entries",
        "Entries in each map the agent writes.",
        sample
            .maps
            .iter()
            .map(|m| (vec![("map", m.map.to_lowercase())], to_i64(m.entries))),
    );
    gauge_family(
        &mut registry,
        "kxdp_map_capacity",
        "Capacity (max_entries) of each map the agent writes.",
        sample
            .maps
            .iter()
            .map(|m| (vec![("map", m.map.to_lowercase())], i64::from(m.capacity))),
    );
    if !sample.conntrack.is_empty() {
        let family = |map: &str| vec![("family", fill::conntrack_family(map).to_string())];
        gauge_family(
            &mut registry,
            "kxdp_conntrack_entries",
            &format!(
                "Connection-tracking entries (two per connection) per IP family, counted at \
                 scrape time up to {CONNTRACK_COUNT_CAP}: at that value there are at least as many."
            ),
            sample
                .conntrack
                .iter()
                .map(|(map, count, _)| (family(map), i64::from(count.entries))),
        );
        gauge_family(
            &mut registry,
            "kxdp_conntrack_capacity",
            "Capacity of the connection-tracking table of each IP family (LRU: the oldest \
             entries go when full).",
            sample
                .conntrack
                .iter()
                .map(|(map, _, capacity)| (family(map), i64::from(*capacity))),
        );
    }
    gauge_family(
        &mut registry,
        "kxdp_service_waiting_for_room",
        "1 for each Service left out, whole, because its frontends or backends would not fit \
         in the maps; it is written once they have room.",
        sample.waiting_for_room.iter().map(|(namespace, name)| {
            let labels = vec![
                ("service_namespace", namespace.clone()),
                ("service_name", name.clone()),
            ];
            (labels, 1)
        }),
    );
    registry.register(
        "kxdp_sync_duration_seconds",
        "Time one sync took, from a source update to the maps written.",
        sync_seconds.clone(),
    );
    counter(
        &mut registry,
        "kxdp_syncs",
        "Syncs of the maps with the Services.",
        sample.syncs,
    );
    counter(
        &mut registry,
        "kxdp_failed_syncs",
        "Syncs that left map entries unwritten (retried).",
        sample.failed_syncs,
    );
    counter_family(
        &mut registry,
        "kxdp_rejected_objects",
        "Kubernetes objects skipped as invalid, by reason.",
        sample
            .rejected_objects
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], *n)),
    );
    if let Some(seconds) = sample.last_successful_sync {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(seconds);
        registry.register(
            "kxdp_last_successful_sync_timestamp_seconds",
            "When the last sync that wrote every entry ended, in seconds since the epoch.",
            gauge,
        );
    }
    gauge(
        &mut registry,
        "kxdp_scrape_read_errors",
        "Map reads that failed during this scrape (their series are left out).",
        to_i64(sample.read_errors),
    );
    gauge_family(
        &mut registry,
        "kxdp_build_info",
        "The agent's version.",
        [(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)],
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// The plan's key of a map key, to find the Service that owns it.
fn frontend_addr(key: &FrontendMapKey) -> Option<FrontendAddr> {
    Some(FrontendAddr {
        addr: key.addr(),
        port: key.port(),
        protocol: Protocol::from_ip_proto(key.proto())?,
        scope: if key.scope() == SCOPE_NODE {
            FrontendScope::Node
        } else {
            FrontendScope::Pod
        },
    })
}

/// The agent's metrics state: the sync histogram, and what it opened once
/// to read at every scrape.
pub struct Telemetry {
    sync_seconds: Histogram,
    syncs_seen: u64,
    /// `max_entries` of the agent-written maps (fixed once pinned).
    capacities: Vec<(&'static str, u32)>,
    /// The tables and their capacities (`CONNTRACK`'s, `CONNTRACK6`'s).
    conntrack: Option<(Conntrack, [u32; 2])>,
}

impl Telemetry {
    /// Opens what scrapes read under `pin_path`; what cannot be opened is
    /// logged and left out of the metrics.
    pub fn new(pin_path: &Path) -> Self {
        let capacities = AGENT_WRITTEN
            .into_iter()
            .filter_map(|map| {
                fill::capacity(pin_path, map)
                    .inspect_err(|e| warn!(error = %e, "no capacity metric for this map"))
                    .ok()
                    .map(|capacity| (map, capacity))
            })
            .collect();
        let conntrack = Conntrack::open(pin_path)
            .and_then(|ct| {
                let capacity = |map| fill::capacity(pin_path, map);
                Ok((
                    ct,
                    [capacity(fill::CONNTRACK)?, capacity(fill::CONNTRACK6)?],
                ))
            })
            .inspect_err(|e| warn!(error = %e, "no conntrack metrics"))
            .ok();
        Self {
            // 0.5 ms to about 16 s.
            sync_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            syncs_seen: 0,
            capacities,
            conntrack,
        }
    }

    /// Records the sync `counters` count since the last call (call after
    /// each sync).
    pub fn observe(&mut self, counters: &Counters) {
        if counters.syncs > self.syncs_seen {
            self.syncs_seen = counters.syncs;
            self.sync_seconds
                .observe(counters.last_sync_duration.as_secs_f64());
        }
    }

    /// The text of a scrape, read now.
    pub fn scrape(&self, pipeline: &Pipeline, maps: &BpfMaps) -> String {
        render(&self.sample(pipeline, maps), &self.sync_seconds)
    }

    fn sample(&self, pipeline: &Pipeline, maps: &BpfMaps) -> Sample {
        let mut sample = Sample::default();
        let mut failed = |what: &str, e: &dyn std::fmt::Display| {
            sample.read_errors += 1;
            tracing::debug!(what, error = %e, "metrics read failed");
        };
        let contents = pipeline.contents();
        let mut frontends = Vec::with_capacity(contents.frontends.len());
        for (key, value) in &contents.frontends {
            let stats = match maps.frontend_stats(value.id) {
                Ok(stats) => stats,
                Err(e) => {
                    failed("stats", &e);
                    continue;
                }
            };
            let sockets = match maps.frontend_sockets(value.id) {
                Ok(sockets) => sockets,
                Err(e) => {
                    failed("socket stats", &e);
                    continue;
                }
            };
            let owner = frontend_addr(key).and_then(|k| pipeline.plan().owner(&k));
            frontends.push(FrontendSample {
                frontend: frontend_text(key),
                scope: scope_label(key),
                namespace: owner.map(|o| o.namespace.to_string()).unwrap_or_default(),
                name: owner.map(|o| o.name.to_string()).unwrap_or_default(),
                sockets,
                packets: stats.packets,
                bytes: stats.bytes,
            });
        }
        let mut drops = Vec::new();
        // A counter of a reason this agent does not know (another
        // object's) is still reported, as `code_N`.
        for index in 0..sizes::DROP_REASONS {
            let known = DropReason::ALL.iter().find(|r| r.index() == index);
            match maps.drops(index) {
                Ok(n) if known.is_some() || n > 0 => drops.push((
                    known.map_or_else(|| format!("code_{index}"), |r| r.name().to_string()),
                    n,
                )),
                Ok(_) => {}
                Err(e) => failed("drops", &e),
            }
        }
        let mut rejects = Vec::new();
        for verdict in Verdict::ALL {
            match maps.verdicts(verdict.index()) {
                Ok(n) => rejects.push((verdict.name(), n)),
                Err(e) => failed("verdicts", &e),
            }
        }
        let mut maps_sample: Vec<MapSample> = self
            .capacities
            .iter()
            .map(|&(map, capacity)| MapSample {
                map,
                // What the syncs wrote: exact, and free to know.
                entries: match map {
                    crate::dataplane::maps::FRONTENDS => contents.frontends.len(),
                    crate::dataplane::maps::BACKENDS => contents.backends.len(),
                    _ => contents.source_ranges.len(),
                } as u64,
                capacity,
            })
            .collect();
        // The arena's entries in live blocks: its fill, as the other maps'.
        let (used, total) = maps.tables().usage();
        maps_sample.push(MapSample {
            map: MAGLEV_ARENA,
            entries: used,
            capacity: u32::try_from(total).unwrap_or(u32::MAX),
        });
        let conntrack = self
            .conntrack
            .as_ref()
            .and_then(|(ct, capacities)| {
                ct.count()
                    .inspect_err(|e| failed("conntrack", e))
                    .ok()
                    .map(|counts| {
                        counts
                            .into_iter()
                            .zip(capacities)
                            .map(|((map, count), capacity)| (map, count, *capacity))
                            .collect()
                    })
            })
            .unwrap_or_default();
        let counters = pipeline.counters();
        Sample {
            frontends,
            drops,
            rejects,
            maps: maps_sample,
            conntrack,
            syncs: counters.syncs,
            failed_syncs: counters.failed_syncs,
            rejected_objects: RejectionKind::ALL
                .iter()
                .map(|kind| {
                    let n = counters.rejected.get(kind).copied().unwrap_or_default();
                    (kind.as_str(), n)
                })
                .collect(),
            waiting_for_room: pipeline
                .plan()
                .waiting()
                .map(|name| (name.namespace.to_string(), name.name.to_string()))
                .collect(),
            last_successful_sync: counters.last_successful_sync.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64())
            }),
            read_errors: sample.read_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The text format's samples: `name{labels}` → value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    fn sample() -> Sample {
        Sample {
            frontends: vec![FrontendSample {
                frontend: "10.96.0.10:80/TCP".into(),
                scope: "pod",
                namespace: "shop".into(),
                name: "web".into(),
                sockets: 7,
                packets: 12,
                bytes: 960,
            }],
            drops: vec![("no_backend".into(), 3), ("code_15".into(), 1)],
            rejects: vec![("tcp_rst", 4), ("icmp_port_unreachable", 5)],
            maps: vec![MapSample {
                map: "FRONTENDS",
                entries: 2,
                capacity: 65_536,
            }],
            conntrack: vec![
                (
                    "CONNTRACK",
                    Count {
                        entries: 6,
                        complete: true,
                    },
                    524_288,
                ),
                (
                    "CONNTRACK6",
                    Count {
                        entries: 2,
                        complete: true,
                    },
                    524_288,
                ),
            ],
            syncs: 7,
            failed_syncs: 1,
            rejected_objects: vec![("invalid_port", 2)],
            waiting_for_room: vec![("shop".into(), "big".into())],
            last_successful_sync: Some(1_700_000_000.5),
            read_errors: 0,
        }
    }

    #[test]
    fn every_series_has_its_name_labels_and_value() {
        let histogram = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        histogram.observe(0.003);
        histogram.observe(0.2);
        let text = render(&sample(), &histogram);
        let series = parse(&text);
        let frontend = r#"frontend="10.96.0.10:80/TCP",scope="pod",service_namespace="shop",service_name="web""#;
        for (name, value) in [
            (format!("kxdp_frontend_packets_total{{{frontend}}}"), 12.0),
            (format!("kxdp_frontend_sockets_total{{{frontend}}}"), 7.0),
            (format!("kxdp_frontend_bytes_total{{{frontend}}}"), 960.0),
            (
                r#"kxdp_dropped_packets_total{reason="no_backend"}"#.into(),
                3.0,
            ),
            (
                r#"kxdp_dropped_packets_total{reason="code_15"}"#.into(),
                1.0,
            ),
            (
                r#"kxdp_rejected_packets_total{reply="tcp_rst"}"#.into(),
                4.0,
            ),
            (
                r#"kxdp_rejected_packets_total{reply="icmp_port_unreachable"}"#.into(),
                5.0,
            ),
            (r#"kxdp_map_entries{map="frontends"}"#.into(), 2.0),
            (r#"kxdp_map_capacity{map="frontends"}"#.into(), 65_536.0),
            (r#"kxdp_conntrack_entries{family="ipv4"}"#.into(), 6.0),
            (r#"kxdp_conntrack_entries{family="ipv6"}"#.into(), 2.0),
            (
                r#"kxdp_conntrack_capacity{family="ipv4"}"#.into(),
                524_288.0,
            ),
            (
                r#"kxdp_conntrack_capacity{family="ipv6"}"#.into(),
                524_288.0,
            ),
            ("kxdp_syncs_total".into(), 7.0),
            ("kxdp_failed_syncs_total".into(), 1.0),
            (
                r#"kxdp_rejected_objects_total{reason="invalid_port"}"#.into(),
                2.0,
            ),
            (
                r#"kxdp_service_waiting_for_room{service_namespace="shop",service_name="big"}"#
                    .into(),
                1.0,
            ),
            (
                "kxdp_last_successful_sync_timestamp_seconds".into(),
                1_700_000_000.5,
            ),
            ("kxdp_sync_duration_seconds_count".into(), 2.0),
            (
                r#"kxdp_sync_duration_seconds_bucket{le="0.004"}"#.into(),
                1.0,
            ),
            (
                r#"kxdp_sync_duration_seconds_bucket{le="+Inf"}"#.into(),
                2.0,
            ),
            ("kxdp_scrape_read_errors".into(), 0.0),
            (
                format!(
                    "kxdp_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                ),
                1.0,
            ),
        ] {
            assert_eq!(series.get(&name), Some(&value), "{name} in\n{text}");
        }
        assert!(
            text.contains("# TYPE kxdp_frontend_packets_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("up to {CONNTRACK_COUNT_CAP}")),
            "{text}"
        );
        assert!(text.contains("# TYPE kxdp_sync_duration_seconds histogram\n"));
    }

    #[test]
    fn before_the_first_sync_there_is_no_timestamp() {
        let sample = Sample {
            last_successful_sync: None,
            conntrack: Vec::new(),
            ..sample()
        };
        let text = render(&sample, &Histogram::new([1.0]));
        let series = parse(&text);
        assert!(!series
            .keys()
            .any(|k| k.starts_with("kxdp_last_successful_sync")));
        assert!(!series.keys().any(|k| k.starts_with("kxdp_conntrack")));
        assert_eq!(series["kxdp_syncs_total"], 7.0);
    }

    #[test]
    fn map_keys_find_their_frontend() {
        let key = FrontendMapKey::V4(proxy_common::maps::FrontendKey {
            addr: proxy_common::maps::addr_to_net("10.96.0.10".parse().unwrap()),
            port: proxy_common::maps::port_to_net(80),
            proto: proxy_common::maps::PROTO_UDP,
            scope: SCOPE_NODE,
        });
        let frontend = frontend_addr(&key).unwrap();
        assert_eq!(frontend.to_string(), "10.96.0.10:80/UDP (node)");
        assert_eq!(crate::sync::map_values::frontend_key(&frontend), key);
        let key6 = FrontendMapKey::V6(proxy_common::maps::FrontendKey6 {
            addr: proxy_common::addr::addr6_to_net("fd00:10:96::a".parse().unwrap()),
            port: proxy_common::maps::port_to_net(53),
            proto: proxy_common::maps::PROTO_UDP,
            scope: proxy_common::maps::SCOPE_POD,
        });
        let frontend = frontend_addr(&key6).unwrap();
        assert_eq!(frontend.to_string(), "[fd00:10:96::a]:53/UDP");
        assert_eq!(crate::sync::map_values::frontend_key(&frontend), key6);
    }
}
