//! source → model → plan → sync for each update a source delivers
//! (docs/ARCHITECTURE.md, "Data flow"), plus the counters an operator wants to see. No I/O of its
//! own: the maps come in as a [`MapStore`].

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use foldhash::{HashSet, HashSetExt as _};

use crate::{
    model::{self, types::Node},
    plan::{NodeFacts, Plan, PlanChange},
    source::{Rejection, RejectionKind, Scope, Update},
    sync::{
        store::{MapContents, MapStore},
        SyncReport, Syncer,
    },
};

/// Metrics-ready counters, kept for the agent's lifetime.
#[derive(Debug, Default)]
pub struct Counters {
    pub syncs: u64,
    /// Syncs that left at least one map entry unwritten.
    pub failed_syncs: u64,
    pub rejected: BTreeMap<RejectionKind, u64>,
    pub last_sync_duration: Duration,
    pub last_successful_sync: Option<SystemTime>,
}

/// What one update did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rejections: Vec<Rejection>,
    /// Frontends the update touched (all of them on a reconcile).
    pub frontends_touched: usize,
    pub report: SyncReport,
}

pub struct Pipeline {
    node: Node,
    plan: Plan,
    syncer: Syncer,
    /// Compare every entry on the next sync: at start (adopted maps may hold
    /// anything) and after a sync left entries unwritten.
    reconcile: bool,
    counters: Counters,
}

impl Pipeline {
    /// Starts from the maps as they are (pinned by an earlier agent, or
    /// empty), with the node facts known at start; Maglev tables get at
    /// most `max_table_size` slots.
    pub fn new(node: Node, facts: NodeFacts, adopted: MapContents, max_table_size: u32) -> Self {
        let mut plan = Plan::default();
        plan.set_node_facts(facts, &mut PlanChange::default());
        Self {
            node,
            plan,
            syncer: Syncer::adopt(adopted, max_table_size),
            reconcile: true,
            counters: Counters::default(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Writes the port roles of the adopted maps: at start, before any
    /// program reading them is attached; errors are logged.
    pub fn publish_port_roles(&mut self, store: &mut impl MapStore) {
        for error in self.syncer.publish_port_roles(store) {
            tracing::warn!(%error, "port roles not written; the next sync retries");
        }
    }

    /// What the agent's maps hold as far as the syncs know.
    pub fn contents(&self) -> &MapContents {
        self.syncer.current()
    }

    /// Whether the last sync left something unwritten (a retry is due).
    pub fn needs_retry(&self) -> bool {
        self.reconcile && self.counters.syncs > 0
    }

    /// Brings the maps to what `update` says, touching only the Services in
    /// it (or everything, when a reconcile is due).
    pub fn apply(&mut self, update: Update, store: &mut impl MapStore) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome {
            rejections: update.rejections,
            ..Outcome::default()
        };
        let mut change = PlanChange::default();
        // The Services a full update lists; the plan drops the others.
        let mut listed = (update.scope == Scope::Full).then(HashSet::new);
        // Each Service's objects are dropped once modelled, so a full
        // update's objects are not all held through the sync (from
        // manifests they are the update's alone: the agent's peak at
        // 30,000 Services fell from 130 to 85 MiB).
        for (name, objects) in update.services {
            let built = model::build(&name, &objects, &self.node);
            drop(objects);
            outcome.rejections.extend(built.rejections);
            self.plan.set(&name, built.service, &mut change);
            if let Some(listed) = &mut listed {
                listed.insert(name);
            }
        }
        if let Some(listed) = listed {
            self.plan.retain(|name| listed.contains(name), &mut change);
        }
        outcome.rejections.append(&mut change.rejections);
        for rejection in &outcome.rejections {
            *self.counters.rejected.entry(rejection.kind).or_default() += 1;
        }
        (outcome.frontends_touched, outcome.report) = self.sync(&change, store);
        self.count(started, &outcome.report);
        outcome
    }

    /// Replaces the node facts (node addresses, node port range) and syncs
    /// the node frontends they change; `None` when nothing was synced: the
    /// facts did not change, or no sync happened yet (the first one, a full
    /// reconcile, covers them; syncing a plan without Services before it
    /// would empty adopted maps).
    pub fn set_node_facts(
        &mut self,
        facts: NodeFacts,
        store: &mut impl MapStore,
    ) -> Option<Outcome> {
        if *self.plan.node_facts() == facts {
            return None;
        }
        let started = Instant::now();
        let mut change = PlanChange::default();
        self.plan.set_node_facts(facts, &mut change);
        if self.counters.syncs == 0 {
            return None;
        }
        let mut outcome = Outcome {
            rejections: std::mem::take(&mut change.rejections),
            ..Outcome::default()
        };
        (outcome.frontends_touched, outcome.report) = self.sync(&change, store);
        self.count(started, &outcome.report);
        Some(outcome)
    }

    /// Whether Services wait for room an earlier sync may have freed.
    pub fn may_admit(&self) -> bool {
        self.plan.may_admit()
    }

    /// Admits the waiting Services that fit now and writes them.
    pub fn admit_waiting(&mut self, store: &mut impl MapStore) -> Outcome {
        let started = Instant::now();
        let mut change = PlanChange::default();
        self.plan.admit_waiting(&mut change);
        let mut outcome = Outcome::default();
        (outcome.frontends_touched, outcome.report) = self.sync(&change, store);
        self.count(started, &outcome.report);
        outcome
    }

    /// Retries a sync that left entries unwritten.
    pub fn retry(&mut self, store: &mut impl MapStore) -> SyncReport {
        let started = Instant::now();
        let (_, report) = self.sync(&PlanChange::default(), store);
        self.count(started, &report);
        report
    }

    fn sync(&mut self, change: &PlanChange, store: &mut impl MapStore) -> (usize, SyncReport) {
        let (touched, report) = if self.reconcile {
            let report = self.syncer.reconcile(&self.plan, store);
            (self.plan.frontend_count(), report)
        } else {
            let report = self.syncer.apply(&self.plan, &change.frontends, store);
            (change.frontends.len(), report)
        };
        self.reconcile = !report.errors.is_empty();
        (touched, report)
    }

    fn count(&mut self, started: Instant, report: &SyncReport) {
        self.counters.syncs += 1;
        self.counters.last_sync_duration = started.elapsed();
        if report.errors.is_empty() {
            self.counters.last_successful_sync = Some(SystemTime::now());
        } else {
            self.counters.failed_syncs += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        maglev,
        source::{
            group,
            manifest::{parse_stream, Loaded},
        },
        sync::fake::FakeStore,
    };

    fn update(scope: Scope, yaml: &str) -> Update {
        let mut loaded = Loaded::default();
        parse_stream("test.yaml", yaml, &mut loaded);
        let (services, mut rejections) = group(loaded.objects);
        rejections.splice(0..0, loaded.rejections);
        Update {
            scope,
            services,
            rejections,
        }
    }

    /// A Service `name` at `vip` port 80 → 8080 with `type`, and a slice
    /// holding `endpoints` (YAML flow items).
    fn service(name: &str, vip: &str, type_: &str, endpoints: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{type: {type_}, clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{endpoints}]\n"
        )
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(
            Node::default(),
            NodeFacts::default(),
            MapContents::default(),
            maglev::DEFAULT_MAX_TABLE_SIZE,
        )
    }

    #[test]
    fn a_dual_stack_manifest_fills_the_maps_of_both_families() {
        let mut store = FakeStore::default();
        let mut pipeline = pipeline();
        let yaml = service("web", "10.96.0.9", "ClusterIP", "{addresses: [10.244.0.2]}")
            .replace(
                "clusterIP: 10.96.0.9,",
                "clusterIP: 10.96.0.9, clusterIPs: [10.96.0.9, 'fd00:10:96::9'], ipFamilies: [IPv4, IPv6],",
            )
            + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
               metadata: {name: web-2, labels: {kubernetes.io/service-name: web}}\n\
               addressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: ['fd00:10:244::2']}]\n";
        let outcome = pipeline.apply(update(Scope::Full, &yaml), &mut store);
        assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
        assert!(
            outcome.report.errors.is_empty(),
            "{:?}",
            outcome.report.errors
        );
        let frontends: Vec<String> = store
            .maps
            .frontends
            .keys()
            .map(crate::frontend_text::frontend_text)
            .collect();
        assert_eq!(frontends, ["10.96.0.9:80/TCP", "[fd00:10:96::9]:80/TCP"]);
        let backends: Vec<String> = store
            .maps
            .backends
            .values()
            .map(|b| std::net::SocketAddr::new(b.addr(), b.port()).to_string())
            .collect();
        assert_eq!(backends, ["10.244.0.2:8080", "[fd00:10:244::2]:8080"]);
    }

    #[test]
    fn a_changed_service_touches_only_its_own_entries() {
        let mut store = FakeStore::default();
        let mut pipeline = pipeline();
        let a = service("a", "10.96.0.1", "ClusterIP", "{addresses: [10.244.0.2]}");
        let b = service("b", "10.96.0.2", "ClusterIP", "{addresses: [10.244.0.3]}");
        let outcome = pipeline.apply(update(Scope::Full, &format!("{a}{b}")), &mut store);
        assert_eq!(outcome.frontends_touched, 2);
        assert_eq!(store.maps.frontends.len(), 2);
        store.log.clear();
        let a2 = service(
            "a",
            "10.96.0.1",
            "ClusterIP",
            "{addresses: [10.244.0.2]}, {addresses: [10.244.0.4]}",
        );
        let outcome = pipeline.apply(update(Scope::Changed, &a2), &mut store);
        assert_eq!(outcome.frontends_touched, 1);
        assert_eq!(
            store.log, // Same size: rewritten in place, nothing to commit.
            ["put backend 2", "put table 0"]
        );
        // Service b was not in the update and is still served.
        assert_eq!(store.maps.frontends.len(), 2);
    }

    #[test]
    fn type_switches_and_deletion_leave_no_stale_entries() {
        let mut store = FakeStore::default();
        let mut pipeline = pipeline();
        let endpoints = "{addresses: [10.244.0.2]}";
        for type_ in ["ClusterIP", "NodePort", "LoadBalancer"] {
            pipeline.apply(
                update(Scope::Full, &service("a", "10.96.0.1", type_, endpoints)),
                &mut store,
            );
            assert_eq!(store.maps.frontends.len(), 1, "{type_}");
            assert_eq!(store.maps.backends.len(), 1, "{type_}");
        }
        let external = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n\
                        spec: {type: ExternalName, externalName: example.com}\n";
        pipeline.apply(update(Scope::Full, external), &mut store);
        assert_eq!(
            store.maps,
            MapContents::default(),
            "ExternalName leaves nothing"
        );
        pipeline.apply(
            update(
                Scope::Full,
                &service("a", "10.96.0.1", "ClusterIP", endpoints),
            ),
            &mut store,
        );
        assert_eq!(store.maps.frontends.len(), 1);
        pipeline.apply(update(Scope::Full, ""), &mut store);
        assert_eq!(
            store.maps,
            MapContents::default(),
            "deletion leaves nothing"
        );
        assert_eq!(pipeline.plan().service_count(), 0);
    }

    #[test]
    fn a_pod_that_turns_not_ready_leaves_rotation_in_one_sync() {
        let mut store = FakeStore::default();
        let mut pipeline = pipeline();
        let both = "{addresses: [10.244.0.2]}, {addresses: [10.244.0.3]}";
        pipeline.apply(
            update(Scope::Full, &service("a", "10.96.0.1", "ClusterIP", both)),
            &mut store,
        );
        let one_not_ready =
            "{addresses: [10.244.0.2]}, {addresses: [10.244.0.3], conditions: {ready: false}}";
        pipeline.apply(
            update(
                Scope::Changed,
                &service("a", "10.96.0.1", "ClusterIP", one_not_ready),
            ),
            &mut store,
        );
        let value = store.maps.frontends.values().next().unwrap();
        assert_eq!(value.table_size, 251);
        // Still listed: kept for the connections it has, chosen for no new one.
        assert_eq!(store.maps.backends.len(), 2);
        assert_eq!(
            store.maps.tables[&value.id].members.len(),
            1,
            "one backend serves"
        );
    }

    #[test]
    fn a_restarted_agent_applies_only_the_difference() {
        let mut store = FakeStore::default();
        let a = service("a", "10.96.0.1", "ClusterIP", "{addresses: [10.244.0.2]}");
        let b = service("b", "10.96.0.2", "ClusterIP", "{addresses: [10.244.0.3]}");
        pipeline().apply(update(Scope::Full, &format!("{a}{b}")), &mut store);
        store.log.clear();
        // The agent restarts while b is deleted: the new one adopts the maps.
        let mut restarted = Pipeline::new(
            Node::default(),
            NodeFacts::default(),
            store.maps.clone(),
            maglev::DEFAULT_MAX_TABLE_SIZE,
        );
        let outcome = restarted.apply(update(Scope::Full, &a), &mut store);
        assert!(outcome.report.errors.is_empty());
        assert_eq!(
            store.log,
            [
                "delete service Some(1)",
                "delete table 1",
                "delete backend 1"
            ]
        );
    }

    #[test]
    fn counters_count_syncs_rejections_and_failures_and_a_retry_heals() {
        let mut store = FakeStore {
            fail_backend_puts: true,
            ..FakeStore::default()
        };
        let mut pipeline = pipeline();
        let bad = "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\n\
                   spec: {clusterIP: 10.96.0.9, ports: [{port: 80, protocol: ICMP}]}\n";
        let a = service("a", "10.96.0.1", "ClusterIP", "{addresses: [10.244.0.2]}");
        let outcome = pipeline.apply(update(Scope::Full, &format!("{a}{bad}")), &mut store);
        assert_eq!(outcome.rejections.len(), 1);
        assert!(!outcome.report.errors.is_empty());
        assert!(pipeline.needs_retry());
        let counters = pipeline.counters();
        assert_eq!((counters.syncs, counters.failed_syncs), (1, 1));
        assert_eq!(counters.rejected[&RejectionKind::UnsupportedProtocol], 1);
        assert!(counters.last_successful_sync.is_none());
        store.fail_backend_puts = false;
        let report = pipeline.retry(&mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(!pipeline.needs_retry());
        assert_eq!(store.maps.frontends.len(), 1);
        assert_eq!(
            store.maps.frontends.values().next().unwrap().table_size,
            251
        );
        assert!(pipeline.counters().last_successful_sync.is_some());
    }

    #[test]
    fn node_addresses_bring_node_ports_and_a_new_address_moves_them() {
        let mut store = FakeStore::default();
        let mut pipeline = pipeline();
        // Before the first sync the facts only reach the plan: syncing now
        // would reconcile adopted maps against a plan without Services.
        let empty = NodeFacts {
            node_port_range: 1..=2,
            ..NodeFacts::default()
        };
        assert!(pipeline.set_node_facts(empty, &mut store).is_none());
        assert!(store.log.is_empty());
        let node_port = service("a", "10.96.0.1", "NodePort", "{addresses: [10.244.0.2]}")
            .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30080}");
        pipeline.apply(update(Scope::Full, &node_port), &mut store);
        assert_eq!(store.maps.frontends.len(), 1, "no node address yet");
        let facts = |addr: &str| NodeFacts {
            addresses: vec![addr.parse().unwrap()],
            ..NodeFacts::default()
        };
        let outcome = pipeline
            .set_node_facts(facts("192.168.1.10"), &mut store)
            .unwrap();
        // The node port from outside, and from pods.
        assert_eq!(outcome.frontends_touched, 2);
        let node_keys = |maps: &MapContents| -> Vec<String> {
            maps.frontends
                .keys()
                .filter(|k| k.scope() == proxy_common::maps::SCOPE_NODE)
                .map(crate::frontend_text::frontend_text)
                .collect()
        };
        assert_eq!(node_keys(&store.maps), ["192.168.1.10:30080/TCP"]);
        assert!(pipeline
            .set_node_facts(facts("192.168.1.10"), &mut store)
            .is_none());
        pipeline.set_node_facts(facts("192.168.1.20"), &mut store);
        assert_eq!(node_keys(&store.maps), ["192.168.1.20:30080/TCP"]);
        // Back to ClusterIP: the node frontend goes.
        pipeline.apply(
            update(
                Scope::Full,
                &service("a", "10.96.0.1", "ClusterIP", "{addresses: [10.244.0.2]}"),
            ),
            &mut store,
        );
        assert!(node_keys(&store.maps).is_empty());
        assert_eq!(store.maps.frontends.len(), 1);
    }
}
