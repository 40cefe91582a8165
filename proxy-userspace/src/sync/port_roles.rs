//! The `PORT_ROLES` bits the datapath checks before its hash lookups: a
//! port has a role's bit while some frontend (of that scope) or backend
//! uses it. Counted per (role, port) as the mirror gains and loses
//! frontends and backends; published in two steps so that no packet skips
//! a lookup it needed: bits are added before the entries that need them
//! are written ([`PortRoles::additions`]), and taken away only after the
//! sync has removed what used them ([`PortRoles::changes`]).

use std::collections::{BTreeSet, HashMap};

use proxy_common::maps::{
    port_roles::{self, BACKEND, NODE_FRONTEND, POD_FRONTEND},
    SCOPE_NODE,
};

use super::{
    entries::{BackendMapValue, FrontendMapKey},
    store::MapContents,
};

#[derive(Debug)]
pub struct PortRoles {
    /// Users of each (role, port) with at least one.
    counts: HashMap<(u32, u16), u32>,
    /// The bits the counts give, by word.
    wanted: Vec<u64>,
    /// The words as last written to the map.
    published: Vec<u64>,
    /// Words where `wanted` and `published` may differ.
    dirty: BTreeSet<u32>,
}

impl Default for PortRoles {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
            wanted: vec![0; port_roles::WORDS as usize],
            published: vec![0; port_roles::WORDS as usize],
            dirty: BTreeSet::new(),
        }
    }
}

/// A frontend's role and port; the roles are shared by both families.
fn frontend_role(key: &FrontendMapKey) -> (u32, u16) {
    let role = if key.scope() == SCOPE_NODE {
        NODE_FRONTEND
    } else {
        POD_FRONTEND
    };
    (role, key.port())
}

fn backend_role(backend: &BackendMapValue) -> (u32, u16) {
    (BACKEND, backend.port())
}

impl PortRoles {
    /// The roles of what adopted maps hold. What the map itself holds is
    /// not known: every word with a bit is written at the first publish.
    pub fn of(contents: &MapContents) -> Self {
        let mut roles = Self::default();
        for key in contents.frontends.keys() {
            roles.add_frontend(key);
        }
        for (_, backend) in contents.backends.iter() {
            roles.add_backend(&backend);
        }
        roles
    }

    pub fn add_frontend(&mut self, key: &FrontendMapKey) {
        self.add(frontend_role(key));
    }

    pub fn remove_frontend(&mut self, key: &FrontendMapKey) {
        self.remove(frontend_role(key));
    }

    pub fn add_backend(&mut self, backend: &BackendMapValue) {
        self.add(backend_role(backend));
    }

    pub fn remove_backend(&mut self, backend: &BackendMapValue) {
        self.remove(backend_role(backend));
    }

    fn add(&mut self, (role, port): (u32, u16)) {
        let count = self.counts.entry((role, port)).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.flip(role, port, true);
        }
    }

    fn remove(&mut self, (role, port): (u32, u16)) {
        let Some(count) = self.counts.get_mut(&(role, port)) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&(role, port));
            self.flip(role, port, false);
        }
    }

    fn flip(&mut self, role: u32, port: u16, on: bool) {
        let (word, bit) = port_roles::position(role, port);
        let slot = &mut self.wanted[word as usize];
        *slot = if on { *slot | bit } else { *slot & !bit };
        self.dirty.insert(word);
    }

    /// Words to write so the map has every wanted bit, keeping the bits
    /// still in use by what the maps hold: written before the entries
    /// that need the new bits.
    pub fn additions(&self) -> Vec<(u32, u64)> {
        self.dirty
            .iter()
            .map(|&w| (w, self.published[w as usize] | self.wanted[w as usize]))
            .filter(|&(w, value)| value != self.published[w as usize])
            .collect()
    }

    /// Words to write so the map holds exactly the wanted bits: written
    /// once the sync has removed what no longer uses them.
    pub fn changes(&self) -> Vec<(u32, u64)> {
        self.dirty
            .iter()
            .map(|&w| (w, self.wanted[w as usize]))
            .filter(|&(w, value)| value != self.published[w as usize])
            .collect()
    }

    /// Records that `words` were written; a word left out of a failed write
    /// stays dirty for the next sync.
    pub fn written(&mut self, words: &[(u32, u64)]) {
        for &(w, value) in words {
            self.published[w as usize] = value;
            if value == self.wanted[w as usize] {
                self.dirty.remove(&w);
            }
        }
    }

    /// Whether `port` has `role`'s bit in the map as last written.
    #[cfg(test)]
    pub fn published(&self, role: u32, port: u16) -> bool {
        let (word, bit) = port_roles::position(role, port);
        self.published[word as usize] & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::maps::{
        port_to_net, BackendValue, BackendValue6, FrontendKey, FrontendKey6, SCOPE_POD,
    };

    use super::*;

    fn key(port: u16, scope: u8) -> FrontendMapKey {
        FrontendMapKey::V4(FrontendKey {
            addr: 0x0a60_0001,
            port: port_to_net(port),
            proto: 6,
            scope,
        })
    }

    fn key6(port: u16, scope: u8) -> FrontendMapKey {
        FrontendMapKey::V6(FrontendKey6 {
            addr: [0xfd, 0, 0, 0x0a00_0000],
            port: port_to_net(port),
            proto: 6,
            scope,
        })
    }

    fn backend(port: u16) -> BackendMapValue {
        BackendMapValue::V4(BackendValue {
            addr: 0x0af4_0002,
            port: port_to_net(port),
            flags: 0,
            _pad: 0,
        })
    }

    fn backend6(port: u16) -> BackendMapValue {
        BackendMapValue::V6(BackendValue6 {
            addr: [0xfd, 0, 0, 0x0500_0000],
            port: port_to_net(port),
            flags: 0,
            _pad: 0,
        })
    }

    /// Writes what the sync writes at its end.
    fn publish_changes(roles: &mut PortRoles) {
        let words = roles.changes();
        roles.written(&words);
    }

    /// Writes what the sync writes before its entries.
    fn publish_additions(roles: &mut PortRoles) {
        let words = roles.additions();
        roles.written(&words);
    }

    #[test]
    fn a_port_keeps_its_bit_while_anything_uses_it() {
        let mut roles = PortRoles::default();
        roles.add_backend(&backend(8080));
        roles.add_backend(&backend(8080));
        publish_changes(&mut roles);
        assert!(roles.published(BACKEND, 8080));
        roles.remove_backend(&backend(8080));
        assert!(roles.changes().is_empty(), "one backend still uses it");
        roles.remove_backend(&backend(8080));
        publish_changes(&mut roles);
        assert!(!roles.published(BACKEND, 8080));
    }

    #[test]
    fn both_families_share_a_port_bit_until_the_last_user_leaves() {
        let mut roles = PortRoles::default();
        roles.add_frontend(&key(80, SCOPE_POD));
        roles.add_frontend(&key6(80, SCOPE_POD));
        roles.add_backend(&backend6(8080));
        publish_changes(&mut roles);
        assert!(roles.published(POD_FRONTEND, 80));
        assert!(roles.published(BACKEND, 8080));
        roles.remove_frontend(&key(80, SCOPE_POD));
        publish_changes(&mut roles);
        assert!(
            roles.published(POD_FRONTEND, 80),
            "the IPv6 frontend uses it"
        );
        roles.remove_frontend(&key6(80, SCOPE_POD));
        roles.remove_backend(&backend6(8080));
        publish_changes(&mut roles);
        assert!(!roles.published(POD_FRONTEND, 80) && !roles.published(BACKEND, 8080));
    }

    #[test]
    fn frontends_count_in_their_scope_and_backends_apart() {
        let mut roles = PortRoles::default();
        roles.add_frontend(&key(80, SCOPE_POD));
        roles.add_frontend(&key(30080, SCOPE_NODE));
        publish_changes(&mut roles);
        assert!(roles.published(POD_FRONTEND, 80));
        assert!(!roles.published(NODE_FRONTEND, 80));
        assert!(roles.published(NODE_FRONTEND, 30080));
        assert!(!roles.published(BACKEND, 80));
    }

    #[test]
    fn additions_keep_bits_still_in_use_until_the_changes() {
        let mut roles = PortRoles::default();
        roles.add_frontend(&key(80, SCOPE_POD));
        publish_changes(&mut roles);
        // One sync: port 80's frontend goes, port 81's comes (same word).
        roles.remove_frontend(&key(80, SCOPE_POD));
        roles.add_frontend(&key(81, SCOPE_POD));
        publish_additions(&mut roles);
        assert!(roles.published(POD_FRONTEND, 80), "cleared before removal");
        assert!(roles.published(POD_FRONTEND, 81), "not set before writing");
        publish_changes(&mut roles);
        assert!(!roles.published(POD_FRONTEND, 80));
        assert!(roles.published(POD_FRONTEND, 81));
        assert!(roles.changes().is_empty() && roles.additions().is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_word_to_the_next_sync() {
        let mut roles = PortRoles::default();
        roles.add_backend(&backend(53));
        assert_eq!(roles.changes().len(), 1);
        roles.written(&[]);
        assert_eq!(roles.changes().len(), 1);
    }

    #[test]
    fn adopted_maps_give_their_roles_to_the_first_publish() {
        let mut contents = MapContents::default();
        contents.frontends.insert(
            key(443, SCOPE_POD),
            proxy_common::maps::FrontendValue {
                id: 1,
                table_size: 0,
                flags: 0,
                affinity_timeout: 0,
            },
        );
        contents.backends.insert(1, backend(8443));
        let mut roles = PortRoles::of(&contents);
        publish_additions(&mut roles);
        assert!(roles.published(POD_FRONTEND, 443));
        assert!(roles.published(BACKEND, 8443));
    }
}
