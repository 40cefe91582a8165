//! Every raw `bpf(2)` call kxdp makes, one typed wrapper per command: what
//! aya 0.14 has no call for (batch map operations, link update and detach,
//! pinning a classic tc filter's program, a link's info) and the feature
//! probes' minimal maps, programs and links. Everything else goes through aya.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// A `union bpf_attr` of 128 bytes, zero but for the fields set: the
/// kernel takes a larger block than its own if the rest is zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn u32(mut self, offset: usize, value: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn fd(self, offset: usize, fd: BorrowedFd<'_>) -> Self {
        self.u32(offset, fd.as_raw_fd() as u32)
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(bytes)
    }
}

/// `bpf(2)` of `cmd` on `attr`; the call's (non-negative) result.
///
/// # Safety
///
/// Every address in `attr` points to memory valid for what `cmd` does
/// there (reads, or writes of the sizes the kernel takes from `attr` and
/// from the object) until the call returns.
unsafe fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is an initialised buffer of the length passed; the
    // addresses in it are the caller's to vouch for.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size_of::<Attr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A command's result that is a new descriptor, now ours.
fn owned_fd(fd: i64) -> OwnedFd {
    // SAFETY: the kernel handed this new descriptor to us and nothing else
    // holds it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A map for `BPF_MAP_CREATE`, without name or BTF.
pub struct MapSpec<'a> {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// The template of the inner maps of an array (or hash) of maps.
    pub inner_map: Option<BorrowedFd<'a>>,
}

/// `BPF_MAP_CREATE`: a new map.
pub fn map_create(spec: &MapSpec<'_>) -> io::Result<OwnedFd> {
    let attr = Attr::new()
        .u32(0, spec.map_type)
        .u32(4, spec.key_size)
        .u32(8, spec.value_size)
        .u32(12, spec.max_entries)
        .u32(16, spec.flags);
    let mut attr = match spec.inner_map {
        Some(inner) => attr.fd(20, inner),
        None => attr,
    };
    // SAFETY: the attribute holds numbers and a descriptor, no address.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.map(owned_fd)
}

/// `BPF_MAP_UPDATE_ELEM` of `key` with `value` (`BPF_ANY`).
///
/// # Safety
///
/// `K` and `V` are the map's key and value sizes.
pub unsafe fn map_update_elem<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = Attr::new()
        .fd(0, map)
        .u64(8, std::ptr::from_ref(key) as u64)
        .u64(16, std::ptr::from_ref(value) as u64);
    // SAFETY: the kernel reads a key and a value of the map's sizes, which
    // are `K`'s and `V`'s (the caller's word); both outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// The `BPF_MAP_*_BATCH` attribute for `keys` and `values` of `map`,
/// from the start of the map, with `out_batch` for the position reached.
fn batch_attr<K, V>(
    map: BorrowedFd<'_>,
    keys: *const K,
    values: *const V,
    count: usize,
    out_batch: &mut u32,
) -> Attr {
    Attr::new()
        .u64(8, std::ptr::from_mut(out_batch) as u64)
        .u64(16, keys as u64)
        .u64(24, values as u64)
        .u32(32, count as u32)
        .fd(36, map)
}

/// The count field of a batch command, which the kernel sets to the
/// elements it handled.
const BATCH_COUNT: usize = 32;

/// `BPF_MAP_UPDATE_BATCH`: `keys[i]` set to `values[i]` (for a per-CPU
/// map, to the `i`-th run of one value per possible CPU); how many the
/// kernel handled.
///
/// # Safety
///
/// `K` and `V` are the map's key and value sizes (for a per-CPU map, `V`
/// is its value rounded up to 8 bytes).
pub unsafe fn map_update_batch<K, V>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<usize> {
    assert!(
        values.len() == keys.len() || (!keys.is_empty() && values.len().is_multiple_of(keys.len())),
        "one value (per CPU) per key"
    );
    let mut out_batch = 0u32;
    let mut attr = batch_attr(
        map,
        keys.as_ptr(),
        values.as_ptr(),
        keys.len(),
        &mut out_batch,
    );
    // SAFETY: the kernel reads `count` keys and values of the map's sizes,
    // which are `K`'s and `V`'s (times the CPUs of a per-CPU map: the
    // caller's word), from slices of that length; `out_batch` is a `u32`;
    // all outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    Ok(attr.get_u32(BATCH_COUNT) as usize)
}

/// `BPF_MAP_LOOKUP_BATCH` into `keys` and `values`, from the start of the
/// map or after the batch that gave the token `after`: how many the kernel
/// read, and the token to go on from (`None`: the map's end was reached).
///
/// # Safety
///
/// `V` is the map's value size (the keys, `u32`, its key size, as the
/// tokens of an array's batches are).
pub unsafe fn map_lookup_batch<V>(
    map: BorrowedFd<'_>,
    after: Option<u32>,
    keys: &mut [u32],
    values: &mut [V],
) -> io::Result<(usize, Option<u32>)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut out_batch = 0u32;
    let in_batch = after.unwrap_or(0);
    let mut attr = batch_attr(
        map,
        keys.as_mut_ptr(),
        values.as_mut_ptr(),
        keys.len(),
        &mut out_batch,
    );
    if after.is_some() {
        attr = attr.u64(0, std::ptr::from_ref(&in_batch) as u64);
    }
    // SAFETY: the kernel writes at most `count` keys and values of the
    // map's sizes, which are `u32`'s and `V`'s (the caller's word), into
    // slices of that length, reads a `u32` token from `in_batch` and writes
    // one into `out_batch`; all outlive the call and nothing else borrows
    // them meanwhile.
    let more = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => return Err(e),
    };
    Ok((
        attr.get_u32(BATCH_COUNT) as usize,
        more.then_some(out_batch),
    ))
}

/// `BPF_PROG_LOAD` of a GPL program of `prog_type` (expecting
/// `attach_type`) made of `insns`, without BTF or verifier log.
pub fn prog_load(prog_type: u32, attach_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new()
        .u32(0, prog_type)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(68, attach_type);
    // SAFETY: the kernel reads `insns.len()` instructions of 8 bytes from
    // `insns` and a NUL-terminated license; both outlive the call.
    unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.map(owned_fd)
}

/// `BPF_OBJ_PIN`: pins the map, program or link `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = Attr::new().u64(0, path.as_ptr() as u64).fd(8, fd);
    // SAFETY: the kernel reads the NUL-terminated `path`, which outlives
    // the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// `BPF_OBJ_GET`: the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = Attr::new().u64(0, path.as_ptr() as u64);
    // SAFETY: the kernel reads the NUL-terminated `path`, which outlives
    // the call.
    unsafe { bpf(BPF_OBJ_GET, &mut attr) }.map(owned_fd)
}

/// `BPF_OBJ_GET_INFO_BY_FD`: the kernel's `bpf_*_info` of `fd`, as much of
/// it as fits `info`.
pub fn obj_get_info_by_fd(fd: BorrowedFd<'_>, info: &mut [u64]) -> io::Result<()> {
    let mut attr = Attr::new()
        .fd(0, fd)
        .u32(4, size_of_val(info) as u32)
        .u64(8, info.as_mut_ptr() as u64);
    // SAFETY: the kernel writes at most the length passed into `info`,
    // which outlives the call and nothing else borrows meanwhile.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map(drop)
}

/// `BPF_LINK_CREATE` of `prog` on `target` (an ifindex, for tcx) at
/// `attach_type`.
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new().fd(0, prog).u32(4, target).u32(8, attach_type);
    // SAFETY: the attribute holds numbers and a descriptor, no address.
    unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.map(owned_fd)
}

/// `BPF_LINK_UPDATE`: `link` runs `prog` from now on, with no moment
/// without a program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new().fd(0, link).fd(4, prog);
    // SAFETY: the attribute holds descriptors, no address.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// `BPF_LINK_DETACH`: detaches `link` now, whoever else holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new().fd(0, link);
    // SAFETY: the attribute holds a descriptor, no address.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr) }.map(drop)
}
