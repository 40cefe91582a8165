//! An agent refuses maps pinned by a kxdp version that laid them out
//! differently, instead of adopting them and letting the programs read past
//! their values.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use kxdp_testbed::privileged::{require_root, PrivateBpffs};
use proxy_userspace::{
    dataplane::{probe, Dataplane, DataplaneError},
    features::Loadout,
};

fn loadout() -> Loadout {
    probe::this_kernel(false).expect("probing the kernel").1
}

/// `bpf(2)` with a zeroed attribute block starting with `words`.
fn bpf(cmd: libc::c_long, words: &[u64]) -> i64 {
    let mut attr = [0u64; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: attr is a valid, fully initialised bpf_attr-sized buffer.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(&attr)) }
}

/// Pins a hash map with the given key and value sizes at `path`.
fn pin_hash_map(path: &Path, key_size: u32, value_size: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u64 = 1;
    let fd = bpf(
        BPF_MAP_CREATE,
        &[
            BPF_MAP_TYPE_HASH | (u64::from(key_size) << 32),
            u64::from(value_size) | (16 << 32),
        ],
    );
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let rc = bpf(BPF_OBJ_PIN, &[c_path.as_ptr() as u64, fd as u64]);
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: fd came from BPF_MAP_CREATE above and is ours; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn maps_pinned_with_another_layout_are_refused_with_advice() {
    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-layout-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    // The SERVICES map of an older kxdp: 8-byte values.
    pin_hash_map(&pin_path.join("SERVICES"), 8, 8);
    let error = match Dataplane::load(&pin_path, &loadout(), false) {
        Ok(_) => panic!("an old SERVICES map was adopted"),
        Err(e) => e,
    };
    assert!(
        matches!(error, DataplaneError::PinnedLayout { pinned: (8, 8), .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("SERVICES") && message.contains("kxdp unload"),
        "{message}"
    );
}

/// An earlier version's slot table (`SELECTION`, before Maglev) is left
/// alone by a new agent and removed by `kxdp unload` with everything else.
#[test]
fn unload_removes_maps_an_earlier_version_pinned() {
    require_root("the pinned-layout test");
    let mount = PrivateBpffs::new("kxdp-retired-test").unwrap();
    let pin_path = mount.path().join("kxdp");
    std::fs::create_dir_all(&pin_path).unwrap();
    pin_hash_map(&pin_path.join("SELECTION"), 8, 4);
    drop(Dataplane::load(&pin_path, &loadout(), false).expect("a retired map is no obstacle"));
    proxy_userspace::commands::unload::run(&pin_path).expect("unload");
    assert!(!pin_path.exists(), "unload left {}", pin_path.display());
}
