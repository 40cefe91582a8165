//! Kubernetes API source: watches Services and EndpointSlices with kube-proxy's
//! filters, caches them in reflector stores and reports, per update, which
//! Services changed.
//!
//! The first update, and the one after every relist, is [`Scope::Full`] and
//! waits for both lists to be complete, so a restart never programs a partial
//! view. Between relists, watch events only name the Services they touch;
//! their objects are read back from the stores when the update is built.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    env,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{stream::BoxStream, FutureExt, StreamExt};
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Config,
};
use tracing::warn;

use super::{group, Objects, Scope, ServiceName, ServiceObjects, Update};

/// kube-proxy skips Services claimed by another proxy implementation...
const SERVICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// ...and headless Services, which have no virtual IP to program.
const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";
/// Slices of headless Services carry this label; kube-proxy ignores them too.
const SLICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/headless";

/// Most events folded into one update, so a long burst still yields updates.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("cannot load the in-cluster configuration: {0}")]
    InCluster(#[from] InClusterError),
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Whether this process runs in a pod, where the API server is announced
/// through these variables.
pub fn in_cluster_environment() -> bool {
    env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && env::var_os("KUBERNETES_SERVICE_PORT").is_some()
}

/// A client for the cluster described by `kubeconfig` (its current context),
/// or, without one, for the cluster this pod runs in.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| KubeError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// One item from either watch stream. Boxed because a Service event is about
/// twice the size of a slice event; the allocation is cheap next to decoding.
enum Observed {
    Service(Box<watcher::Result<Event<Service>>>),
    Slice(Box<watcher::Result<Event<EndpointSlice>>>),
}

/// Services and EndpointSlices from the API server, as [`Update`]s.
pub struct KubernetesSource {
    /// Both watch streams, merged. Polling them also fills the stores.
    observed: BoxStream<'static, Observed>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    slice_index: SliceIndex,
    /// Whether each store holds a complete list: false from a watcher's
    /// `Init` until its `InitDone`.
    services_listed: bool,
    slices_listed: bool,
    /// A Full update is owed: nothing was reported yet, or a relist finished.
    full_due: bool,
    /// Whether the first Full update went out; changes are absorbed until then.
    reported: bool,
    /// Services touched by watch events since the last update.
    dirty: BTreeSet<ServiceName>,
    /// Slices applied without the service-name label since the last update,
    /// to be reported as rejections.
    unlabelled: HashSet<ObjectRef<EndpointSlice>>,
}

impl KubernetesSource {
    /// Starts nothing yet: the watches begin when [`next`](Self::next) is
    /// first awaited.
    pub fn new(client: Client) -> Self {
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let service_config = watcher::Config::default()
            .labels(SERVICE_LABEL_SELECTOR)
            .fields(SERVICE_FIELD_SELECTOR);
        let slice_config = watcher::Config::default().labels(SLICE_LABEL_SELECTOR);
        // The backoff delays the retry after each error, so an unreachable
        // API server is not hammered while the last known state keeps serving.
        let service_events = reflector::reflector(
            services_writer,
            watcher::watcher(Api::<Service>::all(client.clone()), service_config)
                .default_backoff()
                .modify(|service: &mut Service| trim_meta(&mut service.metadata)),
        )
        .map(|item| Observed::Service(Box::new(item)));
        let slice_events = reflector::reflector(
            slices_writer,
            watcher::watcher(Api::<EndpointSlice>::all(client), slice_config)
                .default_backoff()
                .modify(trim_slice),
        )
        .map(|item| Observed::Slice(Box::new(item)));
        Self {
            observed: futures::stream::select(service_events, slice_events).boxed(),
            services,
            slices,
            slice_index: SliceIndex::default(),
            services_listed: false,
            slices_listed: false,
            full_due: true,
            reported: false,
            dirty: BTreeSet::new(),
            unlabelled: HashSet::new(),
        }
    }

    /// Waits for the next change. Events that are ready together are folded
    /// into one update.
    ///
    /// Cancel-safe: events already taken are kept for the next call.
    /// Watcher errors are logged and retried, never returned. The watch
    /// streams do not end (the watcher retries forever); if they ever did,
    /// this would wait forever rather than report an empty cluster.
    pub async fn next(&mut self) -> Update {
        loop {
            let Some(first) = self.observed.next().await else {
                warn!("Kubernetes watch streams ended; no further updates");
                return futures::future::pending().await;
            };
            self.observe(first);
            for _ in 1..MAX_BATCH {
                match self.observed.next().now_or_never() {
                    Some(Some(observed)) => self.observe(observed),
                    _ => break,
                }
            }
            if let Some(update) = self.take_update() {
                return update;
            }
        }
    }

    fn observe(&mut self, observed: Observed) {
        match observed {
            Observed::Service(item) => match *item {
                Ok(event) => self.observe_service(event),
                Err(error) => {
                    warn!(%error, "Service watch failed; keeping the last known state while retrying");
                }
            },
            Observed::Slice(item) => match *item {
                Ok(event) => self.observe_slice(event),
                Err(error) => {
                    warn!(%error, "EndpointSlice watch failed; keeping the last known state while retrying");
                }
            },
        }
    }

    fn observe_service(&mut self, event: Event<Service>) {
        match event {
            Event::Init => self.services_listed = false,
            Event::InitApply(_) => {}
            Event::InitDone => {
                self.services_listed = true;
                self.full_due = true;
            }
            Event::Apply(service) | Event::Delete(service) => {
                self.dirty.insert(ServiceName::of(&service.metadata));
            }
        }
    }

    fn observe_slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => self.slices_listed = false,
            Event::InitApply(_) => {}
            Event::InitDone => {
                // The list replaced the store wholesale: slices that went
                // away or changed label meanwhile sent no event, so the index
                // starts over from the store.
                self.slice_index = SliceIndex::from_slices(&self.slices.state());
                self.slices_listed = true;
                self.full_due = true;
            }
            Event::Apply(slice) => {
                self.dirty.extend(self.slice_index.file(&slice));
                match ServiceName::of_slice(&slice) {
                    Some(service) => {
                        self.dirty.insert(service);
                    }
                    None => {
                        self.unlabelled.insert(object_ref(&slice.metadata));
                    }
                }
            }
            Event::Delete(slice) => {
                self.dirty.extend(self.slice_index.unfile(&slice.metadata));
                self.dirty.extend(ServiceName::of_slice(&slice));
            }
        }
    }

    /// The update owed for what was observed so far, if one can go out.
    fn take_update(&mut self) -> Option<Update> {
        if self.full_due && self.services_listed && self.slices_listed {
            self.full_due = false;
            self.reported = true;
            self.dirty.clear();
            self.unlabelled.clear();
            return Some(self.full_update());
        }
        // While one watcher relists, changes seen by the other still go out:
        // a relisting store keeps its old contents until `InitDone`, so they
        // agree with what was last reported.
        if !self.reported || (self.dirty.is_empty() && self.unlabelled.is_empty()) {
            return None;
        }
        Some(self.changed_update())
    }

    fn full_update(&self) -> Update {
        let objects = Objects {
            services: sorted(self.services.state()),
            endpoint_slices: sorted(self.slices.state()),
            endpoints: Vec::new(),
        };
        let (services, rejections) = group(objects);
        Update {
            scope: Scope::Full,
            services,
            rejections,
        }
    }

    /// The dirty Services with their slices, read from the stores through the
    /// index; plus the unlabelled slices, which [`group`] rejects.
    fn changed_update(&mut self) -> Update {
        let dirty = std::mem::take(&mut self.dirty);
        let unlabelled = std::mem::take(&mut self.unlabelled);
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for name in &dirty {
            let service_ref = ObjectRef::new(&name.name).within(&name.namespace);
            services.extend(self.services.get(&service_ref));
            for slice_name in self.slice_index.slices_of(name) {
                let slice_ref = ObjectRef::new(slice_name).within(&name.namespace);
                slices.extend(self.slices.get(&slice_ref));
            }
        }
        // A slice relabelled or deleted later in the same batch is no orphan.
        for slice_ref in &unlabelled {
            slices.extend(
                self.slices
                    .get(slice_ref)
                    .filter(|slice| ServiceName::of_slice(slice).is_none()),
            );
        }
        let objects = Objects {
            services: sorted(services),
            endpoint_slices: sorted(slices),
            endpoints: Vec::new(),
        };
        let (mut grouped, rejections) = group(objects);
        // A deleted Service without slices still needs its entry, empty.
        for name in dirty {
            grouped.entry(name).or_insert_with(ServiceObjects::default);
        }
        Update {
            scope: Scope::Changed,
            services: grouped,
            rejections,
        }
    }
}

/// Drops metadata the model never reads before it reaches a store: with tens
/// of thousands of objects, managed fields and annotations such as
/// `last-applied-configuration` would be most of the agent's memory.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// Keeps of each endpoint what the model reads (addresses, conditions,
/// nodeName); target references, hints and topology are per-endpoint weight.
fn trim_slice(slice: &mut EndpointSlice) {
    trim_meta(&mut slice.metadata);
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
        endpoint.hostname = None;
        endpoint.zone = None;
    }
}

/// Which slices belong to which Service, kept up to date from watch events so
/// a Service's slices are found without scanning every slice.
#[derive(Default)]
struct SliceIndex {
    /// Slice names per Service; a slice lives in its Service's namespace.
    slices: HashMap<ServiceName, BTreeSet<String>>,
    /// The Service each slice is filed under, to unfile it when its label
    /// changes or it is deleted (the event only carries the new object).
    owners: HashMap<ObjectRef<EndpointSlice>, ServiceName>,
}

impl SliceIndex {
    fn from_slices(slices: &[Arc<EndpointSlice>]) -> Self {
        let mut index = Self::default();
        for slice in slices {
            index.file(slice);
        }
        index
    }

    /// Files `slice` under the Service its label names, if any. Returns the
    /// Service it was filed under before.
    fn file(&mut self, slice: &EndpointSlice) -> Option<ServiceName> {
        let previous = self.unfile(&slice.metadata);
        if let (Some(service), Some(name)) = (ServiceName::of_slice(slice), &slice.metadata.name) {
            self.slices
                .entry(service.clone())
                .or_default()
                .insert(name.clone());
            self.owners.insert(object_ref(&slice.metadata), service);
        }
        previous
    }

    /// Forgets the slice described by `meta`; returns the Service it was
    /// filed under.
    fn unfile(&mut self, meta: &ObjectMeta) -> Option<ServiceName> {
        let service = self.owners.remove(&object_ref(meta))?;
        if let Some(names) = self.slices.get_mut(&service) {
            names.remove(meta.name.as_deref().unwrap_or_default());
            if names.is_empty() {
                self.slices.remove(&service);
            }
        }
        Some(service)
    }

    fn slices_of(&self, service: &ServiceName) -> impl Iterator<Item = &str> {
        self.slices
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// The store key of the object described by `meta`. Built by hand because
/// `ObjectRef::from_obj` panics on a nameless object.
fn object_ref<K>(meta: &ObjectMeta) -> ObjectRef<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    let mut key = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    key.namespace = meta.namespace.clone();
    key
}

/// Owned copies of store objects in namespace/name order, so updates (slice
/// order, rejections) do not depend on hash order.
fn sorted<K>(objects: Vec<Arc<K>>) -> Vec<K>
where
    K: kube::Resource + Clone,
{
    let mut objects: Vec<K> = objects.iter().map(|object| K::clone(object)).collect();
    objects.sort_by(|a, b| namespaced_name(a).cmp(&namespaced_name(b)));
    objects
}

fn namespaced_name<K: kube::Resource>(object: &K) -> (Option<&str>, Option<&str>) {
    let meta = object.meta();
    (meta.namespace.as_deref(), meta.name.as_deref())
}

#[cfg(test)]
mod mock_api;

#[cfg(test)]
mod tests {
    //! Runs the source against a scripted API server. The clock is paused:
    //! it jumps ahead whenever every task waits, so watcher backoffs cost
    //! nothing and "nothing happens for a second" is a real quiescence check.

    use serde_json::{json, Value};

    use super::{
        mock_api::{event, gone, service, slice, MockApi, Reply, Resource},
        *,
    };
    use crate::source::{RejectionKind, SERVICE_NAME_LABEL};

    fn names(update: &Update) -> Vec<String> {
        update.services.keys().map(ToString::to_string).collect()
    }

    fn objects<'a>(update: &'a Update, namespace: &str, name: &str) -> &'a ServiceObjects {
        update
            .services
            .get(&ServiceName::new(namespace, name))
            .unwrap_or_else(|| panic!("{namespace}/{name} missing from {:?}", names(update)))
    }

    fn slice_names(objects: &ServiceObjects) -> Vec<&str> {
        objects
            .slices
            .iter()
            .filter_map(|slice| slice.metadata.name.as_deref())
            .collect()
    }

    fn cluster_ip(objects: &ServiceObjects) -> Option<&str> {
        objects
            .service
            .as_ref()?
            .spec
            .as_ref()?
            .cluster_ip
            .as_deref()
    }

    /// The update's only rejection is the unlabelled slice `object`.
    fn assert_only_unlabelled(update: &Update, object: &str) {
        assert_eq!(update.rejections.len(), 1, "{:?}", update.rejections);
        assert_eq!(update.rejections[0].object, object);
        assert_eq!(
            update.rejections[0].kind,
            RejectionKind::MissingServiceLabel
        );
    }

    /// Services web, api and db, with slices for web and api only.
    async fn started_with_web_api_db() -> (MockApi, KubernetesSource) {
        started(
            vec![
                service("default", "web", "10.96.0.10", "7"),
                service("default", "api", "10.96.0.20", "8"),
                service("default", "db", "10.96.0.30", "9"),
            ],
            vec![
                slice("default", "web-abc", Some("web"), "10.244.1.5", "18"),
                slice("default", "api-abc", Some("api"), "10.244.1.6", "19"),
            ],
        )
        .await
    }

    /// A source whose first, Full, update has been taken, with Services listed
    /// at resource version 10 and slices at 20.
    async fn started(services: Vec<Value>, slices: Vec<Value>) -> (MockApi, KubernetesSource) {
        let (mut api, client) = MockApi::start();
        let mut source = KubernetesSource::new(client);
        api.reply(
            Resource::Services,
            Reply::List {
                version: "10",
                items: services,
            },
        );
        api.reply(
            Resource::Slices,
            Reply::List {
                version: "20",
                items: slices,
            },
        );
        assert_eq!(api.update(&mut source).await.scope, Scope::Full);
        (api, source)
    }

    #[tokio::test(start_paused = true)]
    async fn first_update_is_full_and_waits_for_both_lists() {
        let (mut api, client) = MockApi::start();
        let mut source = KubernetesSource::new(client);
        let services = vec![
            service("default", "web", "10.96.0.10", "8"),
            service("kube-system", "dns", "10.96.0.53", "9"),
        ];
        api.reply(
            Resource::Services,
            Reply::List {
                version: "10",
                items: services,
            },
        );
        let added = service("default", "api", "10.96.0.20", "11");
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![event("ADDED", added)],
            },
        );
        // Services are listed and even changed, but slices are not listed yet.
        api.assert_quiet(&mut source).await;

        let slices = vec![
            slice("default", "web-abc", Some("web"), "10.244.1.5", "17"),
            slice("default", "web-def", Some("web"), "10.244.2.7", "18"),
            slice("kube-system", "dns-xyz", Some("dns"), "10.244.1.9", "19"),
            slice("default", "stray", None, "10.244.3.3", "20"),
        ];
        api.reply(
            Resource::Slices,
            Reply::List {
                version: "20",
                items: slices,
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Full);
        assert_eq!(
            names(&update),
            ["default/api", "default/web", "kube-system/dns"]
        );
        let web = objects(&update, "default", "web");
        assert_eq!(cluster_ip(web), Some("10.96.0.10"));
        assert_eq!(slice_names(web), ["web-abc", "web-def"]);
        assert!(web.endpoints.is_none());
        let dns = objects(&update, "kube-system", "dns");
        assert_eq!(cluster_ip(dns), Some("10.96.0.53"));
        assert_eq!(slice_names(dns), ["dns-xyz"]);
        let api_objects = objects(&update, "default", "api");
        assert_eq!(cluster_ip(api_objects), Some("10.96.0.20"));
        assert!(api_objects.slices.is_empty());
        assert_only_unlabelled(&update, "EndpointSlice default/stray");

        // Everything was in that update; the watches are now idle.
        api.assert_quiet(&mut source).await;
    }

    #[tokio::test(start_paused = true)]
    async fn added_and_modified_objects_name_only_their_services() {
        let (mut api, mut source) = started_with_web_api_db().await;

        let modified = service("default", "web", "10.96.0.11", "11");
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![event("MODIFIED", modified)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/web"]);
        let web = objects(&update, "default", "web");
        assert_eq!(cluster_ip(web), Some("10.96.0.11"));
        assert_eq!(slice_names(web), ["web-abc"]);

        // A burst arriving together becomes one update.
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "20",
                events: vec![
                    event(
                        "ADDED",
                        slice("default", "db-abc", Some("db"), "10.244.2.1", "21"),
                    ),
                    event(
                        "MODIFIED",
                        slice("default", "api-abc", Some("api"), "10.244.2.2", "22"),
                    ),
                    event(
                        "ADDED",
                        slice("default", "orphan", None, "10.244.2.3", "23"),
                    ),
                ],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/api", "default/db"]);
        let db = objects(&update, "default", "db");
        assert_eq!(cluster_ip(db), Some("10.96.0.30"));
        assert_eq!(slice_names(db), ["db-abc"]);
        let api_slices = &objects(&update, "default", "api").slices;
        let addresses = &api_slices[0].endpoints[0].addresses;
        assert_eq!(addresses, &["10.244.2.2"]);
        assert_only_unlabelled(&update, "EndpointSlice default/orphan");

        api.assert_quiet(&mut source).await;
    }

    #[tokio::test(start_paused = true)]
    async fn slice_moving_between_services_dirties_both() {
        let (mut api, mut source) = started_with_web_api_db().await;

        let moved = slice("default", "web-abc", Some("api"), "10.244.1.5", "21");
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "20",
                events: vec![event("MODIFIED", moved)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/api", "default/web"]);
        let web = objects(&update, "default", "web");
        assert!(web.service.is_some());
        assert!(web.slices.is_empty());
        assert_eq!(
            slice_names(objects(&update, "default", "api")),
            ["api-abc", "web-abc"]
        );

        // Losing its label, the slice leaves its Service and is rejected.
        let unlabelled = slice("default", "web-abc", None, "10.244.1.5", "22");
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "21",
                events: vec![event("MODIFIED", unlabelled)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(names(&update), ["default/api"]);
        assert_eq!(slice_names(objects(&update, "default", "api")), ["api-abc"]);
        assert_only_unlabelled(&update, "EndpointSlice default/web-abc");
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_service_comes_without_its_object() {
        let (mut api, mut source) = started(
            vec![
                service("default", "web", "10.96.0.10", "8"),
                service("default", "db", "10.96.0.30", "9"),
            ],
            vec![slice("default", "db-abc", Some("db"), "10.244.2.1", "19")],
        )
        .await;

        let deleted = service("default", "db", "10.96.0.30", "11");
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![event("DELETED", deleted)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/db"]);
        let db = objects(&update, "default", "db");
        assert!(db.service.is_none());
        // The slice outlives its Service until the controller removes it.
        assert_eq!(slice_names(db), ["db-abc"]);

        let deleted = slice("default", "db-abc", Some("db"), "10.244.2.1", "21");
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "20",
                events: vec![event("DELETED", deleted)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/db"]);
        let db = objects(&update, "default", "db");
        assert!(db.service.is_none());
        assert!(db.slices.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn broken_watch_resumes_then_relists_without_the_deleted_service() {
        let (mut api, mut source) = started(
            vec![
                service("default", "web", "10.96.0.10", "8"),
                service("default", "old", "10.96.0.40", "9"),
            ],
            vec![slice("default", "web-abc", Some("web"), "10.244.1.5", "19")],
        )
        .await;

        // One event, then the connection drops.
        let modified = service("default", "web", "10.96.0.11", "11");
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![event("MODIFIED", modified)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/web"]);

        // The watcher resumes from the last version seen, is refused, retries
        // after a backoff, and learns that version is gone: it lists again.
        // "old" was deleted while nobody watched.
        api.reply(Resource::Services, Reply::Refuse { from: "11" });
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "11",
                events: vec![gone()],
            },
        );
        api.reply(
            Resource::Services,
            Reply::List {
                version: "16",
                items: vec![service("default", "web", "10.96.0.11", "11")],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Full);
        assert_eq!(names(&update), ["default/web"]);
        let web = objects(&update, "default", "web");
        assert_eq!(cluster_ip(web), Some("10.96.0.11"));
        assert_eq!(slice_names(web), ["web-abc"]);

        api.assert_quiet(&mut source).await;
    }

    #[tokio::test(start_paused = true)]
    async fn gone_watch_relists_and_rebuilds_the_slice_index() {
        let (mut api, mut source) = started(
            vec![
                service("default", "web", "10.96.0.10", "8"),
                service("default", "api", "10.96.0.20", "9"),
            ],
            vec![
                slice("default", "web-abc", Some("web"), "10.244.1.5", "18"),
                slice("default", "web-def", Some("web"), "10.244.1.6", "19"),
            ],
        )
        .await;

        let added = slice("default", "api-abc", Some("api"), "10.244.2.1", "21");
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "20",
                events: vec![event("ADDED", added), gone()],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/api"]);

        // Meanwhile web-def went away and web-abc moved to api.
        api.reply(
            Resource::Slices,
            Reply::List {
                version: "30",
                items: vec![
                    slice("default", "api-abc", Some("api"), "10.244.2.1", "21"),
                    slice("default", "web-abc", Some("api"), "10.244.1.5", "27"),
                ],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Full);
        assert_eq!(names(&update), ["default/api", "default/web"]);
        assert!(objects(&update, "default", "web").slices.is_empty());
        assert_eq!(
            slice_names(objects(&update, "default", "api")),
            ["api-abc", "web-abc"]
        );

        // A later change to web finds its slices through the rebuilt index:
        // none, so the moved slice does not drag api into the update.
        let modified = service("default", "web", "10.96.0.12", "31");
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![event("MODIFIED", modified)],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Changed);
        assert_eq!(names(&update), ["default/web"]);
        assert!(objects(&update, "default", "web").slices.is_empty());
    }

    #[tokio::test]
    async fn kubeconfig_gives_a_client_for_its_current_context() {
        let path = env::temp_dir().join(format!("kxdp-kubeconfig-{}", std::process::id()));
        let kubeconfig = r#"
apiVersion: v1
kind: Config
current-context: test
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
contexts:
- name: test
  context:
    cluster: test
    user: test
    namespace: kxdp-system
users:
- name: test
  user:
    token: not-a-real-token
"#;
        std::fs::write(&path, kubeconfig).expect("write kubeconfig");
        let result = client(Some(&path)).await;
        std::fs::remove_file(&path).expect("remove kubeconfig");
        let client = result.expect("client from kubeconfig");
        assert_eq!(client.default_namespace(), "kxdp-system");
    }

    #[tokio::test]
    async fn kubeconfig_errors_name_the_path() {
        let path = Path::new("/nonexistent/kxdp/kubeconfig");
        let Err(error) = client(Some(path)).await else {
            panic!("a missing kubeconfig gave a client");
        };
        assert!(matches!(error, KubeError::Kubeconfig { .. }), "{error:?}");
        assert!(error.to_string().contains("/nonexistent/kxdp/kubeconfig"));
    }

    #[test]
    fn stores_keep_only_what_the_model_reads() {
        let mut slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {
                "name": "web-abcde", "namespace": "shop",
                "labels": {SERVICE_NAME_LABEL: "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kube-controller-manager"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{
                "addresses": ["10.244.1.2"], "nodeName": "node-a", "hostname": "web-0", "zone": "z1",
                "conditions": {"ready": false, "serving": true, "terminating": true},
                "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop", "uid": "p"},
                "hints": {"forZones": [{"name": "z1"}]}
            }]
        }))
        .unwrap();
        trim_slice(&mut slice);
        let meta = &slice.metadata;
        assert!(meta.annotations.is_none() && meta.managed_fields.is_none());
        assert!(meta.owner_references.is_none());
        assert_eq!(
            ServiceName::of_slice(&slice),
            Some(ServiceName::new("shop", "web"))
        );
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.addresses, ["10.244.1.2"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let conditions = endpoint.conditions.as_ref().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert!(endpoint.target_ref.is_none() && endpoint.hints.is_none());
        assert!(endpoint.hostname.is_none() && endpoint.zone.is_none());
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
    }
}
