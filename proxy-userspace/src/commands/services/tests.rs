//! `kxdp services` from kubectl's manifests to its output: the fixture's
//! Services go through the model, the plan and the syncer into a fake
//! store, are read back as the command reads the pinned maps, and printed.

use std::collections::BTreeMap;

use proxy_common::maps::FrontendLabel;

use super::{read, render::render, view, FrontendFacts};
use crate::{
    cli::ListOutput,
    maglev,
    model::test_yaml::model_all,
    plan::{NodeFacts, Plan, PlanChange},
    sync::{fake::FakeStore, store::MapContents, Syncer},
};

use super::view::{Counters, Service, Totals};

/// The fake store's labels, and counters that differ per frontend (its
/// id: packets, ten bytes each, a reject per frontend without backends).
struct Facts<'a> {
    labels: &'a BTreeMap<u32, FrontendLabel>,
    contents: &'a MapContents,
}

impl FrontendFacts for Facts<'_> {
    fn label(&self, frontend_id: u32) -> anyhow::Result<Option<FrontendLabel>> {
        Ok(self.labels.get(&frontend_id).copied())
    }
    fn counters(&self, frontend_id: u32) -> anyhow::Result<Counters> {
        let empty = self
            .contents
            .frontends
            .values()
            .any(|v| v.id == frontend_id && v.table_size == 0);
        Ok(Counters {
            sockets: 0,
            packets: u64::from(frontend_id),
            bytes: 10 * u64::from(frontend_id),
            rejects: u64::from(empty),
        })
    }
}

/// The fixture's Services, served on a node with address 192.168.1.10.
fn services() -> Vec<Service> {
    let yaml = include_str!("../../../../tests/fixtures/kubectl-services-shop.yaml");
    let mut plan = Plan::default();
    let mut change = PlanChange::default();
    let node = NodeFacts {
        addresses: vec!["192.168.1.10".parse().unwrap()],
        ..NodeFacts::default()
    };
    plan.set_node_facts(node, &mut change);
    for (name, built) in model_all(yaml) {
        assert!(built.rejections.is_empty(), "{:?}", built.rejections);
        plan.set(&name, built.service, &mut change);
    }
    let mut store = FakeStore::default();
    let mut syncer = Syncer::adopt(MapContents::default(), maglev::DEFAULT_MAX_TABLE_SIZE);
    let report = syncer.reconcile(&plan, &mut store);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let facts = Facts {
        labels: &store.labels,
        contents: &store.maps,
    };
    view::by_service(read(&store.maps, &facts).unwrap())
}

fn totals() -> Totals {
    Totals {
        no_backend_drops: 3,
        rejected_tcp: 4,
        rejected_udp: 5,
        refused_sockets: 6,
    }
}

fn lines(output: ListOutput, namespace: Option<&str>, name: Option<&str>) -> Vec<String> {
    let shown = view::select(services(), namespace, name).unwrap();
    let text = render(&shown, &totals(), output, namespace.is_none()).unwrap();
    text.lines().map(str::to_string).collect()
}

#[test]
fn services_are_grouped_by_name_with_kubectl_s_columns() {
    let all = lines(ListOutput::Table, None, None);
    let services: Vec<&String> = all.iter().filter(|l| !l.starts_with("  ")).collect();
    assert_eq!(
        services[..3],
        [
            "NAMESPACE  NAME  TYPE          CLUSTER-IP(S)             EXTERNAL-IP(S)  PORT(S)",
            "default    dns   ClusterIP     10.96.0.53                <none>          53/TCP",
            "shop       web   LoadBalancer  10.96.0.10,fd00:10:96::a  192.168.60.10   80:30080/TCP,443:30443/TCP",
        ],
        "{all:#?}"
    );
    assert!(
        services[3].starts_with("2 Services, 13 frontends."),
        "{all:#?}"
    );
    // Only the default namespace, as kubectl: no NAMESPACE column.
    let default = lines(ListOutput::Table, Some("default"), None);
    assert_eq!(
        default[0],
        "NAME  TYPE       CLUSTER-IP(S)  EXTERNAL-IP(S)  PORT(S)"
    );
    assert_eq!(
        default[1],
        "dns   ClusterIP  10.96.0.53     <none>          53/TCP"
    );
    assert_eq!(
        default[2].split_whitespace().collect::<Vec<_>>(),
        [
            "FRONTEND",
            "SCOPE",
            "VIA",
            "POLICY",
            "READY",
            "LOCAL",
            "TERMINATING",
            "PACKETS",
            "BYTES",
            "REJECTS"
        ]
    );
    let dns = default[3].split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        dns[..7],
        [
            "10.96.0.53:53/TCP",
            "pod",
            "clusterIP",
            "Cluster",
            "0",
            "0",
            "0"
        ]
    );
    assert_eq!(
        dns[9], "1",
        "a frontend without endpoints counts its rejects"
    );
}

#[test]
fn each_frontend_shows_its_address_kind_policy_and_backends() {
    let web = lines(ListOutput::Table, Some("shop"), Some("web"));
    let row = |frontend: &str, scope: &str| -> Vec<String> {
        web.iter()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|cells| cells.first().map(String::as_str) == Some(frontend) && cells[1] == scope)
            .unwrap_or_else(|| panic!("no row {frontend} {scope} in {web:#?}"))
    };
    // Cluster IPs: the family's ready endpoints, one of them local; the
    // terminating one kept for its connections.
    assert_eq!(
        row("10.96.0.10:80/TCP", "pod")[2..7],
        ["clusterIP", "Cluster", "2", "1", "1"]
    );
    assert_eq!(
        row("[fd00:10:96::a]:443/TCP", "pod")[2..7],
        ["clusterIP", "Cluster", "1", "0", "0"]
    );
    // From outside: SNAT to the remote backend.
    assert_eq!(
        row("192.168.60.10:80/TCP", "node")[2..5],
        ["loadBalancerIP", "Cluster,snat", "2"]
    );
    assert_eq!(
        row("192.168.1.10:30443/TCP", "node")[2..5],
        ["nodePort", "Cluster,snat", "2"]
    );
    // 4 cluster IP frontends, 4 of the ingress IP and 4 of the node port
    // (pod and node scope each), IPv4 only for the node address.
    let frontends = web
        .iter()
        .filter(|l| l.starts_with("  ") && !l.contains("FRONTEND"));
    assert_eq!(frontends.count(), 12);
}

#[test]
fn the_wide_table_adds_ids_affinity_sockets_and_backends() {
    let web = lines(ListOutput::Wide, Some("shop"), Some("web"));
    assert!(
        web[2]
            .trim_end()
            .ends_with("REJECTS  ID  AFFINITY  SOCKETS  BACKENDS"),
        "{web:#?}"
    );
    let row = web
        .iter()
        .find(|l| l.trim_start().starts_with("10.96.0.10:80/TCP"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[cells.len() - 3..],
        ["-", "0", "10.244.1.2:8080(local),10.244.2.2:8080"],
        "{row}"
    );
}

#[test]
fn json_and_yaml_have_stable_field_names() {
    let shown = view::select(services(), Some("shop"), Some("web")).unwrap();
    let json = render(&shown, &totals(), ListOutput::Json, false).unwrap();
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    let web = &document["services"][0];
    assert_eq!(web["namespace"], "shop");
    assert_eq!(web["name"], "web");
    assert_eq!(web["type"], "LoadBalancer");
    assert_eq!(
        web["clusterIPs"],
        serde_json::json!(["10.96.0.10", "fd00:10:96::a"])
    );
    assert_eq!(web["externalIPs"], serde_json::json!(["192.168.60.10"]));
    assert_eq!(
        web["ports"],
        serde_json::json!(["80:30080/TCP", "443:30443/TCP"])
    );
    let first = &web["frontends"][0];
    let fields: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "affinityTimeoutSeconds",
            "backends",
            "bytes",
            "frontend",
            "id",
            "packets",
            "policy",
            "portName",
            "rejects",
            "scope",
            "sockets",
            "terminating",
            "via"
        ]
    );
    assert_eq!(first["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(first["portName"], "80-8080");
    assert_eq!(
        first["backends"][0],
        serde_json::json!({"address": "10.244.1.2", "port": 8080, "local": true})
    );
    assert_eq!(document["totals"]["rejectedTcp"], 4);
    let yaml = render(&shown, &totals(), ListOutput::Yaml, false).unwrap();
    let from_yaml: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, document, "the same document in YAML");
}

#[test]
fn an_unknown_service_is_a_one_line_error() {
    let missing = view::select(services(), Some("default"), Some("web")).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no Service web in namespace default is served here"
    );
    let anywhere = view::select(services(), None, Some("nope")).unwrap_err();
    assert_eq!(
        anywhere.to_string(),
        "no Service nope in any namespace is served here"
    );
    // A namespace with nothing served is no error: an empty list.
    let none = lines(ListOutput::Table, Some("empty"), None);
    assert_eq!(none[0], "No Services served here.");
}
