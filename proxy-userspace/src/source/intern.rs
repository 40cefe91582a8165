//! Interned names: the same namespace, node, port name or field value held
//! by tens of thousands of objects is one allocation shared by all of them.
//!
//! The table is process-wide because objects are decoded inside serde (by
//! kube's watcher, by the manifest reader), where no source state reaches.
//! [`prune`] drops the names no object holds any more; the agent calls it
//! after each full sync, when the update's objects are gone and only what
//! a source keeps still holds names.

use std::{
    borrow::Borrow,
    fmt,
    ops::Deref,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use foldhash::{HashSet, HashSetExt as _};
use serde::{de, Deserialize, Deserializer};

/// A shared, immutable string; equal names are the same allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

/// The table's entry: hashed and compared as the text, so a `&str` finds it.
#[derive(PartialEq, Eq, Hash)]
struct Entry(Arc<str>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0
    }
}

static TABLE: Mutex<Option<HashSet<Entry>>> = Mutex::new(None);

fn table() -> MutexGuard<'static, Option<HashSet<Entry>>> {
    // The table holds no invariant a panicking holder could break.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Name {
    pub fn new(text: &str) -> Self {
        let mut table = table();
        let table = table.get_or_insert_with(HashSet::new);
        if let Some(entry) = table.get(text) {
            return Self(Arc::clone(&entry.0));
        }
        let shared: Arc<str> = Arc::from(text);
        table.insert(Entry(Arc::clone(&shared)));
        Self(shared)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Forgets the names only the table still holds (their objects are gone).
pub fn prune() {
    if let Some(table) = table().as_mut() {
        table.retain(|entry| Arc::strong_count(&entry.0) > 1);
        table.shrink_to_fit();
    }
}

/// Whether the table holds `text`.
#[cfg(test)]
fn interned(text: &str) -> bool {
    table().as_ref().is_some_and(|t| t.contains(text))
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Name;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Name, E> {
                Ok(Name::new(text))
            }
        }
        // Any value, as `objects::read_str` asks: a number is refused.
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation_until_pruned() {
        let a = Name::new("kxdp-intern-test-a");
        let b: Name = serde_json::from_str("\"kxdp-intern-test-a\"").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(&*a, "kxdp-intern-test-a");
        drop((a, b));
        assert!(interned("kxdp-intern-test-a"));
        prune();
        assert!(!interned("kxdp-intern-test-a"));
    }
}
