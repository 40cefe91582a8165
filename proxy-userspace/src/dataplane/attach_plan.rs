//! What to do at each hook point the agent keeps a program on, decided
//! without touching the kernel: from the hook points wanted and what kxdp
//! finds there, the attaches, adoptions and detaches. The pod interfaces'
//! (`interfaces.rs`) and the NICs' (`nic.rs`) reconciles carry it out.

use std::collections::BTreeMap;

/// What kxdp finds at a hook point. Programs kxdp did not pin are not
/// seen, so they are left alone: tcx runs ours beside them, and an XDP
/// attach they hold fails and is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Present {
    /// Attached or adopted by this agent: its own program runs there.
    Ours,
    /// Pinned by an earlier agent (a link, or the record of a classic tc
    /// filter): the program of an older object runs there.
    Pinned,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<K> {
    /// Nothing of kxdp's there: attach and pin.
    Attach(K),
    /// Swap this agent's program into what an earlier agent pinned, in
    /// place: no packet passes without a program.
    Adopt(K),
    /// No longer wanted (the interface is gone, re-created, or no longer
    /// matches): drop what is there.
    Detach(K),
}

/// The actions that bring `present` to `wanted`: detaches first, then
/// attaches and adoptions in the order of `wanted`. What this agent
/// attached and still wants needs nothing.
pub fn plan<K: Ord + Clone>(
    wanted: impl IntoIterator<Item = K>,
    present: &BTreeMap<K, Present>,
) -> Vec<Action<K>> {
    let wanted: Vec<K> = wanted.into_iter().collect();
    let detaches = present
        .keys()
        .filter(|key| !wanted.contains(key))
        .cloned()
        .map(Action::Detach);
    let attaches = wanted.iter().filter_map(|key| match present.get(key) {
        None => Some(Action::Attach(key.clone())),
        Some(Present::Pinned) => Some(Action::Adopt(key.clone())),
        Some(Present::Ours) => None,
    });
    detaches.chain(attaches).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hook points as (ifindex, name), like the interfaces' keys.
    type Key = (u32, &'static str);

    fn present(entries: &[(Key, Present)]) -> BTreeMap<Key, Present> {
        entries.iter().copied().collect()
    }

    #[test]
    fn a_new_interface_is_attached() {
        let now = present(&[((2, "eth0"), Present::Ours)]);
        assert_eq!(
            plan([(2, "eth0"), (7, "veth1")], &now),
            [Action::Attach((7, "veth1"))]
        );
        assert_eq!(
            plan([(2, "eth0")], &BTreeMap::new()),
            [Action::Attach((2, "eth0"))]
        );
    }

    #[test]
    fn what_is_ours_and_wanted_needs_nothing() {
        let now = present(&[((2, "eth0"), Present::Ours), ((7, "veth1"), Present::Ours)]);
        assert_eq!(plan([(2, "eth0"), (7, "veth1")], &now), []);
    }

    #[test]
    fn a_gone_interface_is_detached_whoever_attached_it() {
        let now = present(&[
            ((2, "eth0"), Present::Ours),
            ((7, "veth1"), Present::Ours),
            ((8, "veth2"), Present::Pinned),
        ]);
        assert_eq!(
            plan([(2, "eth0")], &now),
            [Action::Detach((7, "veth1")), Action::Detach((8, "veth2"))]
        );
        assert_eq!(plan([], &now).len(), 3, "nothing wanted: all go");
    }

    #[test]
    fn after_a_restart_the_pinned_links_are_adopted() {
        // A new agent has attached nothing itself: every pin holds the
        // program of the object the earlier agent loaded, and adopting
        // replaces it with this agent's, in place.
        let now = present(&[
            ((2, "eth0"), Present::Pinned),
            ((7, "veth1"), Present::Pinned),
        ]);
        assert_eq!(
            plan([(2, "eth0"), (7, "veth1"), (9, "veth3")], &now),
            [
                Action::Adopt((2, "eth0")),
                Action::Adopt((7, "veth1")),
                Action::Attach((9, "veth3")),
            ]
        );
    }

    #[test]
    fn a_re_created_interface_loses_the_old_pin_and_gets_a_new_attach() {
        // Same name, new ifindex: the old pin is for an interface that is gone.
        let now = present(&[((7, "veth1"), Present::Pinned)]);
        assert_eq!(
            plan([(12, "veth1")], &now),
            [Action::Detach((7, "veth1")), Action::Attach((12, "veth1"))]
        );
    }

    #[test]
    fn detaches_come_first_then_the_wanted_order() {
        let now = present(&[((1, "a"), Present::Ours), ((5, "e"), Present::Pinned)]);
        assert_eq!(
            plan([(9, "z"), (5, "e"), (3, "c")], &now),
            [
                Action::Detach((1, "a")),
                Action::Attach((9, "z")),
                Action::Adopt((5, "e")),
                Action::Attach((3, "c")),
            ]
        );
    }
}
