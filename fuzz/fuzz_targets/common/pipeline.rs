//! What the object targets check of an update, whatever it held: the
//! agent's pipeline (model → plan → sync) takes it into a store in memory
//! without panicking; every rejection names the object and the reason;
//! the maps hold exactly the frontends the plan holds, each whole (its
//! table's members all written backends); the syncer's view of the maps is
//! what it wrote; the same update again writes nothing; and after an
//! update keeping a part of it, all this holds again.

use proxy_userspace::{
    maglev,
    model::types::Node,
    pipeline::Pipeline,
    plan::NodeFacts,
    source::{Scope, Update},
    sync::{fake::FakeStore, map_values::frontend_key, store::MapContents},
};

/// A node with an address of each family, so node ports get frontends.
fn node_facts() -> NodeFacts {
    NodeFacts {
        addresses: vec![
            "192.168.50.1".parse().unwrap(),
            "fd00:50::1".parse().unwrap(),
        ],
        ..NodeFacts::default()
    }
}

/// Runs `make_update(true)` (everything) into the maps, checks them, the
/// same again (nothing written), then `make_update(false)` (a part of it:
/// the sync's diff and removals) and checks them again.
pub fn check(make_update: impl Fn(bool) -> Update) {
    let mut store = FakeStore::default();
    let mut pipeline = Pipeline::new(
        Node {
            name: Some("node-a".into()),
        },
        node_facts(),
        MapContents::default(),
        maglev::DEFAULT_MAX_TABLE_SIZE,
    );
    apply_and_check(&mut pipeline, &mut store, make_update(true));
    let before = store.log.len();
    apply_and_check(&mut pipeline, &mut store, make_update(true));
    assert_eq!(
        store.log[before..],
        [] as [String; 0],
        "the same update again wrote"
    );
    apply_and_check(&mut pipeline, &mut store, make_update(false));
}

fn apply_and_check(pipeline: &mut Pipeline, store: &mut FakeStore, update: Update) {
    let outcome = pipeline.apply(update, store);
    for rejection in &outcome.rejections {
        assert!(
            !rejection.object.is_empty(),
            "a rejection names no object: {rejection:?}"
        );
        assert!(
            !rejection.reason.is_empty(),
            "a rejection gives no reason: {rejection:?}"
        );
    }
    assert!(
        outcome.report.errors.is_empty(),
        "{:?}",
        outcome.report.errors
    );
    let maps = &store.maps;
    let planned: Vec<_> = pipeline.plan().frontend_keys().collect();
    assert_eq!(
        planned.len(),
        maps.frontends.len(),
        "the maps hold the planned frontends, no more"
    );
    for key in planned {
        let value = maps
            .frontends
            .get(&frontend_key(key))
            .unwrap_or_else(|| panic!("frontend {key:?} of the plan is not in the maps"));
        if value.table_size > 0 {
            let table = maps
                .tables
                .get(&value.id)
                .unwrap_or_else(|| panic!("frontend {key:?} has no table"));
            for member in &table.members {
                assert!(
                    maps.backends.contains(*member),
                    "{key:?}: backend {member} missing"
                );
            }
        }
    }
    assert_eq!(
        pipeline.contents(),
        maps,
        "the syncer's view is what it wrote"
    );
}

/// A full update of `objects`, grouped per Service as the sources do.
pub fn full_update(objects: proxy_userspace::source::Objects) -> Update {
    let (services, rejections) = proxy_userspace::source::group(objects);
    Update {
        scope: Scope::Full,
        services,
        rejections,
    }
}
