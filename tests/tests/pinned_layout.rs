//! An agent refuses maps pinned by a kxdp version that laid them out
//! differently, instead of adopting them and letting the programs read past
//! their values.

use std::{os::fd::AsFd as _, path::Path};

use kxdp_testbed::{
    datapath::TEST_ARENA_ENTRIES,
    privileged::{require_root, PrivateBpffs},
};
use proxy_userspace::{
    dataplane::{
        bpf_syscall::{self, MapSpec},
        probe, Dataplane, DataplaneError,
    },
    features::Loadout,
};

fn loadout() -> Loadout {
    probe::this_kernel(false).expect("probing the kernel").1
}

/// Pins a hash map with the given key and value sizes at `path`.
fn pin_hash_map(path: &Path, key_size: u32, value_size: u32) {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let map = bpf_syscall::map_create(&MapSpec {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries: 16,
        flags: 0,
        inner_map: None,
    })
    .unwrap_or_else(|e| panic!("BPF_MAP_CREATE: {e}"));
    // The pin keeps the map when `map` closes.
    bpf_syscall::obj_pin(map.as_fd(), path).unwrap_or_else(|e| panic!("BPF_OBJ_PIN: {e}"));
}

#[test]
fn maps_pinned_with_another_layout_are_refused_with_advice() {
    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-layout-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    // A FRONTENDS map of another layout: 8-byte values.
    pin_hash_map(&pin_path.join("FRONTENDS"), 8, 8);
    let error = match Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false) {
        Ok(_) => panic!("a FRONTENDS map of another layout was adopted"),
        Err(e) => e,
    };
    assert!(
        matches!(error, DataplaneError::PinnedLayout { pinned: (8, 8), .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("FRONTENDS") && message.contains("kxdp unload"),
        "{message}"
    );
}

/// Maps of earlier layouts (`SELECTION`, the slot table before Maglev;
/// `MAGLEV` and `MAGLEV_IDS`, the Maglev tables as an array of maps before
/// the arena; `NEXT_HOPS`, the next hops as a hash map before `HOP_CACHE`)
/// lose their pins once a new agent's object is loaded (programs
/// still running keep their maps until replaced), and `kxdp unload`
/// removes them with everything else.
#[test]
fn the_pins_of_an_earlier_layout_go_at_load_and_at_unload() {
    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-retired-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    let retired = ["SELECTION", "MAGLEV", "MAGLEV_IDS", "NEXT_HOPS"];
    let pin_all = || {
        pin_hash_map(&pin_path.join("SELECTION"), 8, 4);
        pin_array_of_maps(&pin_path.join("MAGLEV"));
        pin_hash_map(&pin_path.join("MAGLEV_IDS"), 4, 4);
        pin_hash_map(&pin_path.join("NEXT_HOPS"), 12, 16);
    };
    pin_all();
    drop(
        Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false)
            .expect("a retired map is no obstacle"),
    );
    for name in retired {
        assert!(!pin_path.join(name).exists(), "{name} is still pinned");
    }
    assert!(pin_path.join("MAGLEV_ARENA").exists());
    // Pinned again (an old agent started meanwhile): unload removes them.
    pin_all();
    proxy_userspace::commands::unload::run(&pin_path).expect("unload");
    assert!(!pin_path.exists(), "unload left {}", pin_path.display());
}

/// Pins an array of maps (the old `MAGLEV`) at `path`.
fn pin_array_of_maps(path: &Path) {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
    let inner = bpf_syscall::map_create(&MapSpec {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 4,
        flags: 0,
        inner_map: None,
    })
    .unwrap();
    let outer = bpf_syscall::map_create(&MapSpec {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 4,
        flags: 0,
        inner_map: Some(inner.as_fd()),
    })
    .unwrap();
    bpf_syscall::obj_pin(outer.as_fd(), path).unwrap_or_else(|e| panic!("BPF_OBJ_PIN: {e}"));
}

/// Earlier versions pinned the frontends as `SERVICES`: an upgraded agent
/// adopts that map under its new name, entries (and so frontend ids) kept,
/// and `kxdp unload` removes a leftover old pin too.
#[test]
fn a_map_an_earlier_version_pinned_under_another_name_is_adopted() {
    use aya::maps::{HashMap, Map, MapData};
    use proxy_common::maps::{FrontendKey, FrontendValue, SCOPE_POD};
    use proxy_userspace::dataplane::maps::FRONTENDS;

    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-renamed-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    let (key_size, value_size) = (
        size_of::<FrontendKey>() as u32,
        size_of::<FrontendValue>() as u32,
    );
    let old = pin_path.join("SERVICES");
    pin_hash_map(&old, key_size, value_size);
    let key = FrontendKey {
        addr: 0x0a60_000a,
        port: 80u16.to_be(),
        proto: 6,
        scope: SCOPE_POD,
    };
    let value = FrontendValue {
        id: 42,
        ..FrontendValue::default()
    };
    let open = |path: &Path| {
        MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .and_then(HashMap::<MapData, FrontendKey, FrontendValue>::try_from)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    open(&old).insert(key, value, 0).unwrap();

    drop(
        Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false)
            .expect("the old pin is adopted"),
    );
    assert!(!old.exists(), "the old name is gone");
    assert_eq!(open(&pin_path.join(FRONTENDS)).get(&key, 0).unwrap(), value);

    // Both names present (an old agent started again meanwhile): the new
    // one is kept, and unload removes both.
    pin_hash_map(&old, key_size, value_size);
    drop(
        Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false)
            .expect("loads beside a leftover"),
    );
    assert_eq!(open(&pin_path.join(FRONTENDS)).get(&key, 0).unwrap(), value);
    proxy_userspace::commands::unload::run(&pin_path).expect("unload");
    assert!(!pin_path.exists(), "unload left {}", pin_path.display());
}

#[test]
fn backends_an_earlier_version_kept_in_a_hash_map_are_copied_with_their_ids() {
    use aya::maps::{Array, Map, MapData};
    use proxy_common::maps::BackendValue;
    use proxy_userspace::dataplane::maps::{BACKENDS, BACKEND_SLOTS};

    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-backends-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    let old = pin_path.join(BACKENDS);
    pin_hash_map(&old, 4, size_of::<BackendValue>() as u32);
    let backends = [
        (
            3u32,
            BackendValue {
                addr: 0x0200_f40a,
                port: 8080u16.to_be(),
                flags: 1,
                _pad: 0,
            },
        ),
        (
            15,
            BackendValue {
                addr: 0x0300_f40a,
                port: 53u16.to_be(),
                flags: 0,
                _pad: 0,
            },
        ),
    ];
    let hash = bpf_syscall::obj_get(&old).unwrap();
    for (id, value) in &backends {
        // SAFETY: the map's key is a u32 and its value a BackendValue.
        unsafe { bpf_syscall::map_update_elem(hash.as_fd(), id, value) }.unwrap();
    }
    drop(hash);

    drop(
        Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false)
            .expect("the old backends are adopted"),
    );
    assert!(!old.exists(), "the hash map's pin is retired");
    let slots: Array<MapData, BackendValue> = MapData::from_pin(pin_path.join(BACKEND_SLOTS))
        .and_then(Map::from_map_data)
        .and_then(Array::try_from)
        .unwrap();
    for (id, value) in &backends {
        assert_eq!(slots.get(id, 0).unwrap(), *value, "backend {id}");
    }
    assert_eq!(slots.get(&4, 0).unwrap(), BackendValue::default());

    // A later start (the array pinned) copies nothing again.
    pin_hash_map(&old, 4, size_of::<BackendValue>() as u32);
    let hash = bpf_syscall::obj_get(&old).unwrap();
    let stale = BackendValue {
        addr: 0x0900_f40a,
        port: 1u16.to_be(),
        flags: 0,
        _pad: 0,
    };
    // SAFETY: as above.
    unsafe { bpf_syscall::map_update_elem(hash.as_fd(), &3u32, &stale) }.unwrap();
    drop(hash);
    drop(Dataplane::load(&pin_path, &loadout(), TEST_ARENA_ENTRIES, false).expect("loads"));
    assert_eq!(slots.get(&3, 0).unwrap(), backends[0].1);
    proxy_userspace::commands::unload::run(&pin_path).expect("unload");
}
