//! What the Kubernetes source keeps between events: every Service and
//! EndpointSlice packed into one allocation of bytes ([`packed`](super::packed)),
//! and which slices belong to which Service. A change or a full update
//! unpacks the objects it needs; they are dropped once modelled.
//!
//! Every entry of a table begins with its key, namespace and name, so the
//! tables hold the entries alone: no key objects, no names kept apart.
//! A relist marks what it lists in the entries themselves and, when it is
//! complete, drops what it did not list (deleted while the watch was
//! away), so a relist never holds a second copy of the state.

use std::{hash::BuildHasher, marker::PhantomData, sync::Arc};

use hashbrown::HashTable;
use tracing::error;

use super::packed::{put_str, Pack, Reader};
use crate::source::{
    objects::{Meta, Name, Object},
    ServiceName,
};

/// Namespace and name of a kept object, or of the Service a slice names.
pub(super) type Key = ServiceName;

/// Entries that begin with their key (namespace, name), found by it.
struct Keyed {
    entries: HashTable<Box<[u8]>>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Keyed {
    fn default() -> Self {
        Self {
            entries: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// The key an entry begins with, and the bytes after it.
fn split_key(entry: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut reader = Reader::new(entry);
    let namespace = reader.str()?;
    let name = reader.str()?;
    Some((namespace, name, reader.rest()))
}

fn begin_entry(namespace: &str, name: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(namespace.len() + name.len() + 64);
    put_str(&mut entry, namespace);
    put_str(&mut entry, name);
    entry
}

impl Keyed {
    fn hash(hasher: &foldhash::fast::RandomState, namespace: &str, name: &str) -> u64 {
        hasher.hash_one((namespace, name))
    }

    fn hash_entry(hasher: &foldhash::fast::RandomState, entry: &[u8]) -> u64 {
        // Every entry was written by `begin_entry`; an empty key stands in
        // for one that could not be read, which no lookup then finds.
        let (namespace, name, _) = split_key(entry).unwrap_or(("", "", &[]));
        Self::hash(hasher, namespace, name)
    }

    fn is(entry: &[u8], namespace: &str, name: &str) -> bool {
        split_key(entry).is_some_and(|(ns, n, _)| ns == namespace && n == name)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&[u8]> {
        let hash = Self::hash(&self.hasher, namespace, name);
        self.entries
            .find(hash, |entry| Self::is(entry, namespace, name))
            .map(|entry| &**entry)
    }

    /// Keeps `entry` in place of the one with the same key.
    fn put(&mut self, entry: Box<[u8]>) {
        let Some((namespace, name, _)) = split_key(&entry) else {
            return;
        };
        let hash = Self::hash(&self.hasher, namespace, name);
        let hasher = &self.hasher;
        match self.entries.entry(
            hash,
            |kept| Self::is(kept, namespace, name),
            |kept| Self::hash_entry(hasher, kept),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut kept) => *kept.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(entry);
            }
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<Box<[u8]>> {
        let hash = Self::hash(&self.hasher, namespace, name);
        let found = self
            .entries
            .find_entry(hash, |entry| Self::is(entry, namespace, name));
        found.ok().map(|entry| entry.remove().0)
    }

    fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        self.entries
            .shrink_to_fit(|entry| Self::hash_entry(hasher, entry));
    }
}

/// An object entry: key, whether the running relist listed it, the object
/// packed (its metadata first).
const LISTED: usize = 0;

/// The objects of one kind, by key.
pub(super) struct Kept<K> {
    objects: Keyed,
    /// A relist is under way: objects kept now are marked as listed.
    relisting: bool,
    kind: PhantomData<fn() -> K>,
}

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Self {
            objects: Keyed::default(),
            relisting: false,
            kind: PhantomData,
        }
    }
}

impl<K: Object + Pack> Kept<K> {
    /// The object of `key`, unpacked.
    pub(super) fn get(&self, key: &Key) -> Option<K> {
        self.objects
            .get(&key.namespace, &key.name)
            .and_then(unpack::<K>)
    }

    /// The metadata of the object of `key`, unpacked alone.
    pub(super) fn meta(&self, key: &Key) -> Option<Meta> {
        let entry = self.objects.get(&key.namespace, &key.name)?;
        let (namespace, name, mut object) = split_object(entry)?;
        let mut meta = Meta::unpack(&mut object)?;
        restore_key(&mut meta, namespace, name);
        Some(meta)
    }

    /// Keeps `object` in place of the one of the same key.
    pub(super) fn insert(&mut self, object: &K) {
        let key = Key::of(object.metadata());
        let mut entry = begin_entry(&key.namespace, &key.name);
        entry.push(u8::from(self.relisting));
        object.pack(&mut entry);
        self.objects.put(entry.into_boxed_slice());
    }

    /// Drops the object described by `meta`; returns it.
    pub(super) fn remove(&mut self, meta: &Meta) -> Option<K> {
        let key = Key::of(meta);
        let entry = self.objects.remove(&key.namespace, &key.name)?;
        unpack(&entry)
    }

    /// A relist starts (again): what it does not list by [`Self::end_relist`]
    /// is gone.
    pub(super) fn begin_relist(&mut self) {
        self.relisting = true;
        for entry in self.objects.entries.iter_mut() {
            set_listed(entry, false);
        }
    }

    /// The relist is complete: drops and returns the objects it did not list.
    pub(super) fn end_relist(&mut self) -> Vec<K> {
        if !std::mem::take(&mut self.relisting) {
            return Vec::new();
        }
        let mut gone = Vec::new();
        self.objects.entries.retain(|entry| {
            if listed(entry) {
                set_listed(entry, false);
                true
            } else {
                gone.extend(unpack::<K>(entry));
                false
            }
        });
        self.objects.shrink_to_fit();
        gone
    }

    /// Every object, unpacked, in namespace/name order so updates (slice
    /// order, rejections) do not depend on hash order.
    pub(super) fn sorted(&self) -> Vec<Arc<K>> {
        let mut entries: Vec<(&str, &str, &[u8])> = self
            .objects
            .entries
            .iter()
            .filter_map(|entry| split_key(entry).map(|(ns, name, _)| (ns, name, &**entry)))
            .collect();
        entries.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        entries
            .into_iter()
            .filter_map(|(_, _, entry)| unpack(entry).map(Arc::new))
            .collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.objects.entries.len()
    }
}

/// An object entry's key, and its packed object (past the listed flag).
fn split_object(entry: &[u8]) -> Option<(&str, &str, Reader<'_>)> {
    let (namespace, name, rest) = split_key(entry)?;
    Some((namespace, name, Reader::new(rest.get(LISTED + 1..)?)))
}

/// Where an object entry's listed flag is.
fn flag_at(entry: &[u8]) -> Option<usize> {
    let (_, _, rest) = split_key(entry)?;
    Some(entry.len() - rest.len() + LISTED)
}

fn listed(entry: &[u8]) -> bool {
    flag_at(entry).and_then(|at| entry.get(at)) == Some(&1)
}

fn set_listed(entry: &mut [u8], listed: bool) {
    if let Some(flag) = flag_at(entry).and_then(|at| entry.get_mut(at)) {
        *flag = u8::from(listed);
    }
}

/// Puts back the name and namespace a packed [`Meta`] leaves to the key.
fn restore_key(meta: &mut Meta, namespace: &str, name: &str) {
    meta.namespace = Some(Name::new(namespace));
    meta.name = Some(Name::new(name));
}

/// The object an entry holds, its name and namespace from the key. Entries
/// are only ever written by [`Kept::insert`], so a failure is a bug; it is
/// reported and the object left out rather than the agent stopped.
fn unpack<K: Object + Pack>(entry: &[u8]) -> Option<K> {
    let unpacked = split_object(entry).and_then(|(namespace, name, mut packed)| {
        let mut object = K::unpack(&mut packed)?;
        restore_key(object.metadata_mut(), namespace, name);
        Some(object)
    });
    if unpacked.is_none() {
        error!(
            entry = ?split_key(entry).map(|(ns, name, _)| format!("{ns}/{name}")),
            "a kept Kubernetes object could not be unpacked (a bug in kxdp); it is left out"
        );
    }
    unpacked
}

/// Which slices belong to which Service, kept up to date from the events so
/// a Service's slices are found without scanning every slice. A slice lives
/// in its Service's namespace, so a name is enough: an entry is the
/// Service's key followed by its slices' names, sorted.
#[derive(Default)]
pub(super) struct SliceIndex {
    services: Keyed,
}

impl SliceIndex {
    /// Moves the slice described by `meta` from the Service `previous` (the
    /// metadata of its kept version, if any) to the one its label names now
    /// (if any).
    pub(super) fn refile(&mut self, previous: Option<&Meta>, meta: &Meta) {
        if let Some(previous) = previous {
            self.unfile(previous);
        }
        let (Some(owner), Some(name)) = (Key::owner(meta), &meta.name) else {
            return;
        };
        let mut names = self.names(&owner);
        if let Err(at) = names.binary_search_by(|n| n.as_str().cmp(name)) {
            names.insert(at, name.to_string());
            self.store(&owner, &names);
        }
    }

    pub(super) fn unfile(&mut self, meta: &Meta) {
        let (Some(owner), Some(name)) = (Key::owner(meta), &meta.name) else {
            return;
        };
        let mut names = self.names(&owner);
        let before = names.len();
        names.retain(|n| *n != **name);
        if names.len() != before {
            self.store(&owner, &names);
        }
    }

    /// The keys of the slices filed under `service`.
    pub(super) fn slices_of(&self, service: &Key) -> Vec<Key> {
        self.names(service)
            .into_iter()
            .map(|name| Key {
                namespace: service.namespace.clone(),
                name: Name::new(&name),
            })
            .collect()
    }

    fn names(&self, service: &Key) -> Vec<String> {
        let Some(entry) = self.services.get(&service.namespace, &service.name) else {
            return Vec::new();
        };
        let Some((_, _, rest)) = split_key(entry) else {
            return Vec::new();
        };
        let mut reader = Reader::new(rest);
        std::iter::from_fn(|| reader.str().map(str::to_string)).collect()
    }

    fn store(&mut self, service: &Key, names: &[String]) {
        if names.is_empty() {
            self.services.remove(&service.namespace, &service.name);
            return;
        }
        let mut entry = begin_entry(&service.namespace, &service.name);
        for name in names {
            put_str(&mut entry, name);
        }
        self.services.put(entry.into_boxed_slice());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::objects::{EndpointSlice, Service};

    fn service(namespace: &str, name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn slice(name: &str, owner: Option<&str>) -> EndpointSlice {
        let labels = owner.map_or(json!({}), |o| json!({"kubernetes.io/service-name": o}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap()
    }

    fn key(namespace: &str, name: &str) -> Key {
        Key {
            namespace: Name::new(namespace),
            name: Name::new(name),
        }
    }

    fn cluster_ip(service: &Service) -> String {
        service
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_ref()
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_object_comes_back_with_its_key_and_is_replaced_in_place() {
        let mut kept = Kept::<Service>::default();
        kept.insert(&service("shop", "web", "10.96.0.1"));
        kept.insert(&service("shop", "web", "10.96.0.2"));
        kept.insert(&service("other", "web", "10.96.0.3"));
        assert_eq!(kept.len(), 2);
        let web = kept.get(&key("shop", "web")).unwrap();
        assert_eq!(web.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(web.metadata.name.as_deref(), Some("web"));
        assert_eq!(cluster_ip(&web), "10.96.0.2");
        let meta = kept.meta(&key("other", "web")).unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("other"));
        assert!(kept.get(&key("shop", "nope")).is_none());
        let removed = kept.remove(&web.metadata).unwrap();
        assert_eq!(cluster_ip(&removed), "10.96.0.2");
        assert!(kept.get(&key("shop", "web")).is_none());
        let names: Vec<String> = kept
            .sorted()
            .iter()
            .map(|s| s.metadata.namespace.as_deref().unwrap().to_string())
            .collect();
        assert_eq!(names, ["other"]);
    }

    #[test]
    fn a_relist_drops_what_it_did_not_list_and_only_that() {
        let mut kept = Kept::<Service>::default();
        for name in ["a", "b", "c"] {
            kept.insert(&service("shop", name, "10.96.0.1"));
        }
        // A relist interrupted by another: the first one's marks do not
        // count for the second.
        kept.begin_relist();
        kept.insert(&service("shop", "a", "10.96.0.1"));
        kept.begin_relist();
        kept.insert(&service("shop", "b", "10.96.0.9"));
        let gone: Vec<String> = kept
            .end_relist()
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap().to_string())
            .collect();
        assert_eq!(gone.len(), 2);
        assert!(gone.contains(&"a".to_string()) && gone.contains(&"c".to_string()));
        assert_eq!(
            cluster_ip(&kept.get(&key("shop", "b")).unwrap()),
            "10.96.0.9"
        );
        assert!(kept.end_relist().is_empty(), "no relist under way");
        // The marks are cleared: the next relist that lists nothing drops b.
        kept.begin_relist();
        assert_eq!(kept.end_relist().len(), 1);
        assert_eq!(kept.len(), 0);
    }

    #[test]
    fn the_slice_index_follows_a_slice_between_services() {
        let mut index = SliceIndex::default();
        let first = slice("web-1", Some("web"));
        let second = slice("web-2", Some("web"));
        index.refile(None, &second.metadata);
        index.refile(None, &first.metadata);
        let names = |index: &SliceIndex, service: &str| -> Vec<String> {
            index
                .slices_of(&key("shop", service))
                .iter()
                .map(|k| k.name.to_string())
                .collect()
        };
        assert_eq!(names(&index, "web"), ["web-1", "web-2"]);
        // Relabelled to another Service, then its label removed.
        let moved = slice("web-2", Some("api"));
        index.refile(Some(&second.metadata), &moved.metadata);
        assert_eq!(names(&index, "web"), ["web-1"]);
        assert_eq!(names(&index, "api"), ["web-2"]);
        let unlabelled = slice("web-2", None);
        index.refile(Some(&moved.metadata), &unlabelled.metadata);
        assert!(names(&index, "api").is_empty());
        index.unfile(&first.metadata);
        assert!(names(&index, "web").is_empty());
        assert_eq!(index.services.entries.len(), 0, "empty entries go");
    }
}
