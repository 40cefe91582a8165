//! Socket-level load balancing: the cgroup socket hooks of both families
//! (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4` and their `6`
//! twins) attached to one cgroup (by default
//! the root of the cgroup2 hierarchy: every process on the node), each link
//! pinned under `<pin path>/links/<program>-cgroup` so the hooks outlive the
//! agent. A restarted agent swaps its programs into the pinned links
//! (bpf_link_update); a link to another cgroup than the one asked for now is
//! detached and replaced.

use std::{
    fs, io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};
use tracing::info;

use super::{bpf_syscall, interfaces::detach_pinned, Dataplane, DataplaneError, LINKS_DIR};

/// The socket programs of the eBPF object.
pub const SOCKET_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
    "sock_connect6",
    "sock_sendmsg6",
    "sock_recvmsg6",
    "sock_getpeername6",
];

/// Global of the object: the node's network namespace, whose sockets are
/// always translated.
pub const HOST_NETNS_COOKIE: &str = "HOST_NETNS_COOKIE";
/// Global of the object: non-zero to translate every other network
/// namespace's sockets too (`--socket-lb all`).
pub const SOCKET_LB_PODS: &str = "SOCKET_LB_PODS";

/// `<program>-cgroup`.
fn pin_name(program: &str) -> String {
    format!("{program}-cgroup")
}

#[derive(Debug, thiserror::Error)]
pub enum SocketHookError {
    #[error("no cgroup2 mount in /proc/mounts; give --cgroup-path")]
    NoCgroup2,
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}")]
    Program(#[from] DataplaneError),
    #[error("{program} on cgroup {cgroup}: {reason}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        reason: String,
    },
}

/// The first cgroup2 mount point listed in `mounts` (`/proc/mounts` format).
fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // Spaces in mount points are written as \040.
        (fstype == "cgroup2").then(|| PathBuf::from(target.replace("\\040", " ")))
    })
}

/// Where `--cgroup-path` points by default: the cgroup2 mount point.
pub fn default_cgroup_path() -> Result<PathBuf, SocketHookError> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| SocketHookError::Io("/proc/mounts".into(), e))?;
    cgroup2_mount_in(&mounts).ok_or(SocketHookError::NoCgroup2)
}

/// The cgroup id a pinned cgroup link is attached to (`bpf_link_info`:
/// type, id, prog_id, then the cgroup id at byte 16).
fn link_cgroup_id(link: &OwnedFd) -> io::Result<u64> {
    let mut info = [0u64; 8];
    bpf_syscall::obj_get_info_by_fd(link.as_fd(), &mut info)?;
    Ok(info[2])
}

/// Points the pinned link at `program` (BPF_LINK_UPDATE): no moment without
/// a hook.
fn update_link(link: &OwnedFd, program: &CgroupSockAddr) -> io::Result<()> {
    let program = program.fd().map_err(io::Error::other)?;
    bpf_syscall::link_update(link.as_fd(), program.as_fd())
}

/// Attaches (or adopts) every socket hook on the cgroup at `cgroup`.
pub fn attach(
    dataplane: &mut Dataplane,
    cgroup: &Path,
    pin_path: &Path,
) -> Result<(), SocketHookError> {
    let links_dir = pin_path.join(LINKS_DIR);
    fs::create_dir_all(&links_dir).map_err(|e| SocketHookError::Io(links_dir.clone(), e))?;
    let dir = fs::File::open(cgroup).map_err(|e| SocketHookError::Io(cgroup.into(), e))?;
    // On cgroup2 a cgroup's id is its directory's inode number.
    let cgroup_id = dir
        .metadata()
        .map_err(|e| SocketHookError::Io(cgroup.into(), e))?
        .ino();
    for name in SOCKET_PROGRAMS {
        let fail = |reason: String| SocketHookError::Attach {
            program: name,
            cgroup: cgroup.into(),
            reason,
        };
        let program = dataplane.socket_program(name)?;
        let path = links_dir.join(pin_name(name));
        if path.exists() {
            let link = bpf_syscall::obj_get(&path).map_err(|e| fail(e.to_string()))?;
            if link_cgroup_id(&link).map_err(|e| fail(e.to_string()))? == cgroup_id {
                update_link(&link, program).map_err(|e| fail(e.to_string()))?;
                info!(program = name, cgroup = %cgroup.display(), "socket hook adopted: program replaced in its pinned link");
                continue;
            }
            info!(
                program = name,
                "socket hook pinned on another cgroup; moving it"
            );
            drop(link);
            detach_pinned(&path).map_err(|e| fail(e.to_string()))?;
        }
        let id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| fail(e.to_string()))?;
        let link = FdLink::try_from(program.take_link(id).map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?;
        link.pin(&path).map_err(|e| fail(e.to_string()))?;
        info!(program = name, cgroup = %cgroup.display(), pin = %path.display(), "socket hook installed on cgroup");
    }
    Ok(())
}

/// The socket programs whose links are pinned under `links_dir`.
pub fn pinned(links_dir: &Path) -> Vec<&'static str> {
    SOCKET_PROGRAMS
        .into_iter()
        .filter(|name| links_dir.join(pin_name(name)).exists())
        .collect()
}

/// Detaches every pinned socket hook under `links_dir` (for `kxdp unload`).
pub fn detach_all(links_dir: &Path) -> io::Result<usize> {
    let mut detached = 0;
    for name in SOCKET_PROGRAMS {
        let path = links_dir.join(pin_name(name));
        match detach_pinned(&path) {
            Ok(()) => detached += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn pin_names_are_per_program() {
        assert_eq!(pin_name(SOCKET_PROGRAMS[0]), "sock_connect4-cgroup");
    }
}
