//! Kubernetes API source: watches Services and EndpointSlices with kube-proxy's
//! filters, keeps them in their compact forms ([`objects`](super::objects),
//! [`store`]) and reports, per update, which Services changed.
//!
//! The first update, and the one after every relist, is [`Scope::Full`] and
//! waits for both lists to be complete, so a restart never programs a partial
//! view. Between relists, watch events only name the Services they touch;
//! their objects are read back from the store when the update is built.

use std::{
    borrow::Cow,
    collections::BTreeSet,
    env,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{stream::BoxStream, FutureExt, Stream, StreamExt};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, NamespaceResourceScope};
use kube::{
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        utils::Backoff as _,
        utils::ResetTimerBackoff,
        watcher::{self, Event, ExponentialBackoff},
    },
    Api, Client, Config, Resource,
};
use serde::{Deserialize, Deserializer};
use tracing::warn;

use self::store::{Kept, Key, SliceIndex};
use super::{
    group,
    objects::{EndpointSlice, Meta, Object, Service},
    Objects, Scope, ServiceObjects, Update,
};

mod packed;
mod store;

/// kube-proxy skips Services claimed by another proxy implementation...
const SERVICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// ...and headless Services, which have no virtual IP to program.
const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";
/// Slices of headless Services carry this label; kube-proxy ignores them too.
const SLICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/headless";

/// Most events folded into one update, so a long burst still yields updates.
const MAX_BATCH: usize = 4096;

/// First retry delay after a watch or list fails.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest retry delay before jitter, which adds up to as much again: an
/// API server back from an outage is found within 4 s (client-go's 30 s cap
/// left a node on stale Services for up to a minute), and the jitter spreads
/// the nodes' relists over those seconds.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A watcher that has run this long without an error starts its delays over.
const RETRY_RESET: Duration = Duration::from_secs(120);

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

/// An object as kube's watcher decodes it: the watcher reads the resource
/// version it resumes from in `meta`; the source keeps only `object`, the
/// compact form decoded straight from the API server's JSON.
#[derive(Clone, Debug)]
struct Watched<K> {
    meta: ObjectMeta,
    object: K,
}

impl<'de, K: Deserialize<'de> + Object> Deserialize<'de> for Watched<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = K::deserialize(deserializer)?;
        let meta = ObjectMeta {
            resource_version: object.metadata_mut().resource_version.take(),
            ..ObjectMeta::default()
        };
        Ok(Self { meta, object })
    }
}

impl Resource for Watched<Service> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Service".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "services".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

impl Resource for Watched<EndpointSlice> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "EndpointSlice".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "discovery.k8s.io".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "endpointslices".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// One item from either watch stream. Boxed because a Service event is about
/// twice the size of a slice event; the allocation is cheap next to decoding.
enum Observed {
    Service(Box<watcher::Result<Event<Watched<Service>>>>),
    Slice(Box<watcher::Result<Event<Watched<EndpointSlice>>>>),
}

/// Services and EndpointSlices from the API server, as [`Update`]s.
pub struct KubernetesSource {
    /// Both watch streams, merged.
    observed: BoxStream<'static, Observed>,
    services: Kept<Service>,
    slices: Kept<EndpointSlice>,
    slice_index: SliceIndex,
    /// Whether each kind is completely listed: false from a watcher's
    /// `Init` until its `InitDone`.
    services_listed: bool,
    slices_listed: bool,
    /// A Full update is owed: nothing was reported yet, or a relist finished.
    full_due: bool,
    /// Whether the first Full update went out; changes are absorbed until then.
    reported: bool,
    /// Services touched by watch events since the last update.
    dirty: BTreeSet<Key>,
    /// Slices applied without the service-name label since the last update,
    /// to be reported as rejections.
    unlabelled: BTreeSet<Key>,
}

/// The delays between a watcher's retries: exponential from [`RETRY_FIRST`]
/// to [`RETRY_MAX`], each plus up to as much again at random.
fn retry_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(delays), RETRY_RESET)
}

/// `events` with a delay after each error before the watcher is asked for
/// more ([`retry_backoff`]; the error itself comes at once), the delays
/// starting over after every event. An answer of 410 Gone (the version a
/// watch resumed from is no longer kept: after an API server restart, a
/// long outage or a compaction) shows the server is back: the relist it
/// calls for starts at once, not after the longest delay an outage led up
/// to. A second 410 in a row waits as any error does.
fn with_retries<K: Send + 'static>(
    events: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
) -> impl Stream<Item = watcher::Result<Event<K>>> {
    struct Retries {
        delays: ResetTimerBackoff<ExponentialBackoff>,
        /// Owed before the next item is asked for.
        wait: Option<Duration>,
        last_gone: bool,
    }
    let retries = Retries {
        delays: retry_backoff(),
        wait: None,
        last_gone: false,
    };
    futures::stream::unfold(
        (events.boxed(), retries),
        |(mut events, mut retries)| async move {
            if let Some(wait) = retries.wait.take() {
                tokio::time::sleep(wait).await;
            }
            let item = events.next().await?;
            let gone = item.as_ref().err().is_some_and(is_gone);
            match &item {
                Ok(_) => retries.delays.reset(),
                Err(_) if gone && !retries.last_gone => retries.delays.reset(),
                Err(_) => retries.wait = retries.delays.next(),
            }
            retries.last_gone = gone;
            Some((item, (events, retries)))
        },
    )
}

fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

impl KubernetesSource {
    /// Starts nothing yet: the watches begin when [`next`](Self::next) is
    /// first awaited.
    pub fn new(client: Client) -> Self {
        let service_config = watcher::Config::default()
            .labels(SERVICE_LABEL_SELECTOR)
            .fields(SERVICE_FIELD_SELECTOR);
        let slice_config = watcher::Config::default().labels(SLICE_LABEL_SELECTOR);
        // The backoff delays the retry after each error, so an unreachable
        // API server is not hammered while the last known state keeps serving.
        let service_events =
            with_retries(watcher::watcher(Api::all(client.clone()), service_config))
                .map(|item| Observed::Service(Box::new(item)));
        let slice_events = with_retries(watcher::watcher(Api::all(client), slice_config))
            .map(|item| Observed::Slice(Box::new(item)));
        Self {
            observed: futures::stream::select(service_events, slice_events).boxed(),
            services: Kept::default(),
            slices: Kept::default(),
            slice_index: SliceIndex::default(),
            services_listed: false,
            slices_listed: false,
            full_due: true,
            reported: false,
            dirty: BTreeSet::new(),
            unlabelled: BTreeSet::new(),
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

    fn observe_service(&mut self, event: Event<Watched<Service>>) {
        match event {
            Event::Init => {
                self.services_listed = false;
                self.services.begin_relist();
            }
            Event::InitApply(service) => {
                self.services.insert(&service.object);
            }
            Event::InitDone => {
                // Services deleted while the watch was away sent no event.
                self.services.end_relist();
                self.services_listed = true;
                self.full_due = true;
            }
            Event::Apply(service) => {
                self.dirty.insert(Key::of(&service.object.metadata));
                self.services.insert(&service.object);
            }
            Event::Delete(service) => {
                self.dirty.insert(Key::of(&service.object.metadata));
                self.services.remove(&service.object.metadata);
            }
        }
    }

    fn observe_slice(&mut self, event: Event<Watched<EndpointSlice>>) {
        match event {
            Event::Init => {
                self.slices_listed = false;
                self.slices.begin_relist();
            }
            Event::InitApply(slice) => {
                self.keep_slice(&slice.object);
            }
            Event::InitDone => {
                // Slices that went away meanwhile sent no event.
                for gone in self.slices.end_relist() {
                    self.slice_index.unfile(&gone.metadata);
                }
                self.slices_listed = true;
                self.full_due = true;
            }
            Event::Apply(slice) => {
                let key = Key::of(&slice.object.metadata);
                match Key::owner(&slice.object.metadata) {
                    Some(owner) => {
                        self.dirty.insert(owner);
                    }
                    None => {
                        self.unlabelled.insert(key);
                    }
                }
                // A slice whose label changed leaves its former Service too.
                if let Some(previous) = self.keep_slice(&slice.object) {
                    self.dirty.extend(Key::owner(&previous));
                }
            }
            Event::Delete(slice) => {
                let removed = self.slices.remove(&slice.object.metadata);
                if let Some(removed) = &removed {
                    self.slice_index.unfile(&removed.metadata);
                    self.dirty.extend(Key::owner(&removed.metadata));
                }
                self.dirty.extend(Key::owner(&slice.object.metadata));
            }
        }
    }

    /// Keeps `slice` and files it under its Service; returns the metadata of
    /// the version it replaced.
    fn keep_slice(&mut self, slice: &EndpointSlice) -> Option<Meta> {
        let previous = self.slices.meta(&Key::of(&slice.metadata));
        self.slice_index.refile(previous.as_ref(), &slice.metadata);
        self.slices.insert(slice);
        previous
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
        // While one watcher relists, changes seen by the other still go out,
        // read from the objects kept so far: each is as recent as the
        // source knows it, and the Full update at the relist's end settles
        // what the relist changed.
        if !self.reported || (self.dirty.is_empty() && self.unlabelled.is_empty()) {
            return None;
        }
        Some(self.changed_update())
    }

    /// Every kept object, shared with the store, never copied.
    fn full_update(&self) -> Update {
        let objects = Objects {
            services: self.services.sorted(),
            endpoint_slices: self.slices.sorted(),
            endpoints: Vec::new(),
        };
        let (services, rejections) = group(objects);
        Update {
            scope: Scope::Full,
            services,
            rejections,
        }
    }

    /// The dirty Services with their slices, read from the store through the
    /// index; plus the unlabelled slices, which [`group`] rejects.
    fn changed_update(&mut self) -> Update {
        let dirty = std::mem::take(&mut self.dirty);
        let unlabelled = std::mem::take(&mut self.unlabelled);
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for key in &dirty {
            services.extend(self.services.get(key).map(Arc::new));
            for slice in self.slice_index.slices_of(key) {
                slices.extend(self.slices.get(&slice).map(Arc::new));
            }
        }
        // A slice relabelled or deleted later in the same batch is no orphan.
        for key in &unlabelled {
            slices.extend(
                self.slices
                    .get(key)
                    .filter(|slice| slice.metadata.labels.service_name.is_none())
                    .map(Arc::new),
            );
        }
        // Slices in namespace/name order, as in a Full update.
        slices.sort_by_cached_key(|slice| Key::of(&slice.metadata));
        let objects = Objects {
            services,
            endpoint_slices: slices,
            endpoints: Vec::new(),
        };
        let (mut grouped, rejections) = group(objects);
        // A deleted Service without slices still needs its entry, empty.
        for key in dirty {
            grouped.entry(key).or_insert_with(ServiceObjects::default);
        }
        Update {
            scope: Scope::Changed,
            services: grouped,
            rejections,
        }
    }
}

#[cfg(test)]
mod mock_api;

#[cfg(test)]
mod tests {
    //! Runs the source against a scripted API server. The clock is paused:
    //! it jumps ahead whenever every task waits, so watcher backoffs cost
    //! nothing and "nothing happens for a second" is a real quiescence check.

    use serde_json::Value;

    use super::{
        mock_api::{event, gone, service, slice, MockApi, Reply, Resource},
        *,
    };
    use crate::source::{objects::IpText, RejectionKind, ServiceName};

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

    fn cluster_ip(objects: &ServiceObjects) -> Option<String> {
        let ip = objects.service.as_ref()?.spec.as_ref()?.cluster_ip.as_ref();
        ip.map(ToString::to_string)
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
        assert_eq!(cluster_ip(web).as_deref(), Some("10.96.0.10"));
        assert_eq!(slice_names(web), ["web-abc", "web-def"]);
        assert!(web.endpoints.is_none());
        let dns = objects(&update, "kube-system", "dns");
        assert_eq!(cluster_ip(dns).as_deref(), Some("10.96.0.53"));
        assert_eq!(slice_names(dns), ["dns-xyz"]);
        let api_objects = objects(&update, "default", "api");
        assert_eq!(cluster_ip(api_objects).as_deref(), Some("10.96.0.20"));
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
        assert_eq!(cluster_ip(web).as_deref(), Some("10.96.0.11"));
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
        assert_eq!(cluster_ip(db).as_deref(), Some("10.96.0.30"));
        assert_eq!(slice_names(db), ["db-abc"]);
        let api_slices = &objects(&update, "default", "api").slices;
        let address = &api_slices[0].endpoints[0].address;
        assert_eq!(address, &Some(IpText::new("10.244.2.2")));
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

    #[tokio::test]
    async fn retries_come_within_four_seconds_however_long_the_outage() {
        let mut delays = retry_backoff();
        let taken: Vec<Duration> = delays.by_ref().take(40).collect();
        assert!(
            taken[0] >= RETRY_FIRST && taken[0] <= 2 * RETRY_FIRST,
            "{taken:?}"
        );
        assert!(taken.iter().all(|d| *d <= 2 * RETRY_MAX), "{taken:?}");
        // Past the doubling, every delay is at least the cap.
        assert!(taken[3..].iter().all(|d| *d >= RETRY_MAX), "{taken:?}");
        delays.reset();
        let after_reset = delays.next().unwrap();
        assert!(after_reset <= 2 * RETRY_FIRST, "{after_reset:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_answer_after_an_outage_relists_at_once() {
        let failure = |code| {
            Err(watcher::Error::WatchError(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        // Refused four times, then 410 Gone twice, then a relist.
        let items: Vec<watcher::Result<Event<()>>> = vec![
            failure(503),
            failure(503),
            failure(503),
            failure(503),
            failure(410),
            Ok(Event::Init),
            failure(410),
            failure(410),
            Ok(Event::InitDone),
        ];
        let start = tokio::time::Instant::now();
        let at: Vec<Duration> = with_retries(futures::stream::iter(items))
            .map(|_| start.elapsed())
            .collect()
            .await;
        let waited: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // The failures wait, longer and longer up to the cap.
        assert!(waited[..4].iter().all(|w| *w >= RETRY_FIRST), "{waited:?}");
        assert!(waited[3] >= RETRY_MAX, "{waited:?}");
        // The first 410 shows the server back: the relist comes at once.
        assert_eq!(waited[4], Duration::ZERO, "{waited:?}");
        // A 410 after an event, likewise; a second in a row waits.
        assert_eq!(waited[6], Duration::ZERO, "{waited:?}");
        assert!(waited[7] >= RETRY_FIRST, "{waited:?}");
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
        assert_eq!(cluster_ip(web).as_deref(), Some("10.96.0.11"));
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

    #[tokio::test(start_paused = true)]
    async fn relists_replace_what_is_kept_without_doubling_it() {
        let (mut api, mut source) = started(
            vec![
                service("default", "web", "10.96.0.10", "7"),
                service("default", "old", "10.96.0.40", "8"),
                service("default", "api", "10.96.0.20", "9"),
            ],
            vec![
                slice("default", "web-abc", Some("web"), "10.244.1.5", "17"),
                slice("default", "old-abc", Some("old"), "10.244.1.6", "18"),
                slice("default", "api-abc", Some("api"), "10.244.1.7", "19"),
            ],
        )
        .await;

        // While the watch was away "old" went and "web" changed: the Service
        // watch learns its version is gone and lists everything again.
        api.reply(
            Resource::Services,
            Reply::Watch {
                from: "10",
                events: vec![gone()],
            },
        );
        api.reply(
            Resource::Services,
            Reply::List {
                version: "30",
                items: vec![
                    service("default", "web", "10.96.0.11", "25"),
                    service("default", "api", "10.96.0.20", "9"),
                ],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Full);
        assert_eq!(
            names(&update),
            ["default/api", "default/old", "default/web"]
        );
        assert!(objects(&update, "default", "old").service.is_none());
        let web = objects(&update, "default", "web");
        assert_eq!(cluster_ip(web).as_deref(), Some("10.96.0.11"));
        assert_eq!((source.services.len(), source.slices.len()), (2, 3));

        // The same for slices: old-abc went, web-abc moved to api.
        api.reply(
            Resource::Slices,
            Reply::Watch {
                from: "20",
                events: vec![gone()],
            },
        );
        api.reply(
            Resource::Slices,
            Reply::List {
                version: "31",
                items: vec![
                    slice("default", "web-abc", Some("api"), "10.244.1.5", "26"),
                    slice("default", "api-abc", Some("api"), "10.244.1.7", "19"),
                ],
            },
        );
        let update = api.update(&mut source).await;
        assert_eq!(update.scope, Scope::Full);
        assert_eq!(names(&update), ["default/api", "default/web"]);
        assert_eq!(
            slice_names(objects(&update, "default", "api")),
            ["api-abc", "web-abc"]
        );
        assert!(objects(&update, "default", "web").slices.is_empty());
        assert_eq!((source.services.len(), source.slices.len()), (2, 2));
        api.assert_quiet(&mut source).await;
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
}
