//! What the Kubernetes source keeps between events: one compact object per
//! Service and per EndpointSlice, and which slices belong to which Service.
//!
//! A relist updates the kept objects in place and, when it is complete,
//! drops those it did not list (deleted while the watch was away), so a
//! relist never holds a second copy of the state.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::source::{
    objects::{EndpointSlice, Meta, Name, Object},
    ServiceName,
};

/// Namespace and name of a kept object, or of the Service a slice names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    pub(super) namespace: Name,
    pub(super) name: Name,
}

impl Key {
    /// The key of the object described by `meta`, named as
    /// [`ServiceName::of`] names it.
    pub(super) fn of(meta: &Meta) -> Self {
        Self::new(meta, meta.name.clone())
    }

    /// The Service `slice` belongs to, from its label.
    pub(super) fn owner(slice: &EndpointSlice) -> Option<Self> {
        let service = slice.metadata.labels.service_name.clone()?;
        Some(Self::new(&slice.metadata, Some(service)))
    }

    fn new(meta: &Meta, name: Option<Name>) -> Self {
        Self {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| Name::new("default")),
            name: name.unwrap_or_else(|| Name::new("")),
        }
    }

    pub(super) fn service_name(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.name)
    }
}

/// The objects of one kind, by key.
pub(super) struct Kept<K> {
    objects: HashMap<Key, Arc<K>>,
    /// The keys listed since the watcher began a relist; `None` outside one.
    listed: Option<HashSet<Key>>,
}

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            listed: None,
        }
    }
}

impl<K: Object> Kept<K> {
    pub(super) fn get(&self, key: &Key) -> Option<&Arc<K>> {
        self.objects.get(key)
    }

    /// Keeps `object` in place of the one of the same key; returns that one.
    pub(super) fn insert(&mut self, object: K) -> Option<Arc<K>> {
        let key = Key::of(object.metadata());
        if let Some(listed) = &mut self.listed {
            listed.insert(key.clone());
        }
        self.objects.insert(key, Arc::new(object))
    }

    pub(super) fn remove(&mut self, meta: &Meta) -> Option<Arc<K>> {
        self.objects.remove(&Key::of(meta))
    }

    /// A relist starts (again): what it does not list by [`Self::end_relist`]
    /// is gone.
    pub(super) fn begin_relist(&mut self) {
        self.listed = Some(HashSet::new());
    }

    /// The relist is complete: drops and returns the objects it did not list.
    pub(super) fn end_relist(&mut self) -> Vec<Arc<K>> {
        let Some(listed) = self.listed.take() else {
            return Vec::new();
        };
        let gone: Vec<Key> = self
            .objects
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        let removed = gone
            .iter()
            .filter_map(|key| self.objects.remove(key))
            .collect();
        self.objects.shrink_to_fit();
        removed
    }

    /// Every object, shared, in namespace/name order so updates (slice
    /// order, rejections) do not depend on hash order.
    pub(super) fn sorted(&self) -> Vec<Arc<K>> {
        let mut objects: Vec<(&Key, &Arc<K>)> = self.objects.iter().collect();
        objects.sort_unstable_by(|a, b| a.0.cmp(b.0));
        objects.into_iter().map(|(_, o)| Arc::clone(o)).collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.objects.len()
    }
}

/// Which slices belong to which Service, kept up to date from the events so
/// a Service's slices are found without scanning every slice. A slice lives
/// in its Service's namespace, so a name is enough.
#[derive(Default)]
pub(super) struct SliceIndex {
    slices: HashMap<Key, Vec<Name>>,
}

impl SliceIndex {
    /// Moves `slice` from the Service `previous` (if any) to the one its
    /// label names now (if any).
    pub(super) fn refile(&mut self, previous: Option<&EndpointSlice>, slice: &EndpointSlice) {
        if let Some(previous) = previous {
            self.unfile(previous);
        }
        let (Some(owner), Some(name)) = (Key::owner(slice), &slice.metadata.name) else {
            return;
        };
        let names = self.slices.entry(owner).or_default();
        if let Err(at) = names.binary_search(name) {
            names.insert(at, name.clone());
        }
    }

    pub(super) fn unfile(&mut self, slice: &EndpointSlice) {
        let (Some(owner), Some(name)) = (Key::owner(slice), &slice.metadata.name) else {
            return;
        };
        if let Some(names) = self.slices.get_mut(&owner) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.slices.remove(&owner);
            }
        }
    }

    pub(super) fn slices_of<'a>(&'a self, service: &'a Key) -> impl Iterator<Item = Key> + 'a {
        self.slices
            .get(service)
            .into_iter()
            .flatten()
            .map(|name| Key {
                namespace: service.namespace.clone(),
                name: name.clone(),
            })
    }
}
