//! bpffs: maps and links are pinned there so they outlive the agent.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs lives by convention; the agent mounts it there when missing.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("pin path {0} is not on a bpffs; mount one (mount -t bpf bpf DIR) or use a path under {DEFAULT_BPFFS}")]
    NotBpffs(PathBuf),
    #[error("cannot mount bpffs at {DEFAULT_BPFFS}: {0}")]
    Mount(io::Error),
    #[error("cannot create pin directory {0}: {1}")]
    CreateDir(PathBuf, io::Error),
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

fn mount_default() -> io::Result<()> {
    let target = CString::new(DEFAULT_BPFFS).expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes sure `pin_path` exists on a bpffs, mounting bpffs at /sys/fs/bpf if
/// the path is under it and nothing is mounted there yet.
pub fn prepare_pin_path(pin_path: &Path) -> Result<(), BpffsError> {
    let existing = pin_path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        if !pin_path.starts_with(DEFAULT_BPFFS) || is_bpffs(Path::new(DEFAULT_BPFFS)) {
            return Err(BpffsError::NotBpffs(pin_path.to_path_buf()));
        }
        tracing::info!("bpffs is not mounted; mounting it at {DEFAULT_BPFFS}");
        mount_default().map_err(BpffsError::Mount)?;
    }
    std::fs::create_dir_all(pin_path).map_err(|e| BpffsError::CreateDir(pin_path.to_path_buf(), e))
}
