//! The cookie of the agent's network namespace (the node's), which the
//! socket hooks compare each socket's with: only the node's own sockets are
//! translated there, pods' are left to the tc programs.
//!
//! Since Linux 5.14 a socket option gives it (`SO_NETNS_COOKIE`). Before,
//! it is learnt: a cgroup `sock_create` program (`proxy-ebpf`'s
//! `netns_cookie`) is attached for a moment to the agent's own cgroup, the
//! agent opens a marker socket, and the program records the cookie of the
//! namespace that socket was made in.

use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::Array,
    programs::{CgroupAttachMode, CgroupSock},
    EbpfLoader,
};

use crate::ebpf_object::NETNS_COOKIE_OBJECT;

#[derive(Debug, thiserror::Error)]
pub enum NetnsCookieError {
    #[error("reading {0}: {1}")]
    Read(&'static str, io::Error),
    #[error("this process's cgroup is under no cgroup2 mount it can see")]
    NoCgroup,
    #[error("the cookie-learning program: {0}")]
    Program(String),
    #[error("the marker socket: {0}")]
    Socket(io::Error),
    #[error("the marker socket's creation was not seen")]
    NotSeen,
    #[error("locking {0}: {1}")]
    Lock(PathBuf, io::Error),
}

/// Where learners take turns: every learner's program sees every marker
/// socket made in its cgroup, so two agents learning at once (agents in
/// several network namespaces of one node, as the test suites run them)
/// could each record the other's namespace. A file lock serialises them;
/// each detaches its program before it lets the next one in.
fn learners_lock_path() -> PathBuf {
    let run = Path::new("/run");
    let dir = if run.is_dir() {
        run.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join("kxdp-netns-cookie.lock")
}

/// Holds the learners' lock until dropped (closing the file releases it,
/// as does the process's exit).
fn take_learners_lock() -> Result<fs::File, NetnsCookieError> {
    let path = learners_lock_path();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NetnsCookieError::Lock(path.clone(), e))?;
    // SAFETY: flock on a descriptor this function owns; a holder keeps it
    // for one socket's creation, and the kernel releases it at exit.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(NetnsCookieError::Lock(path, io::Error::last_os_error()));
    }
    Ok(file)
}

fn socket(kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The cookie from `SO_NETNS_COOKIE` (Linux 5.14); ENOPROTOOPT before.
pub fn from_socket_option() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = socket(libc::SOCK_DGRAM, 0)?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The directories of the cgroup `/proc/self/cgroup` names (`cgroup`)
/// under each cgroup2 mount of `mountinfo` (`/proc/self/mountinfo`) whose
/// root holds it, in mount order.
fn own_cgroup_dirs(cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            if filesystem.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = mount.split_whitespace().skip(3);
            let (root, point) = (fields.next()?, fields.next()?);
            let unescape = |s: &str| s.replace("\\040", " ");
            let below = Path::new(path).strip_prefix(unescape(root)).ok()?;
            Some(Path::new(&unescape(point)).join(below))
        })
        .collect()
}

/// This process's cgroup, opened under the first of its cgroup2 mounts
/// that is still there: another program's mount (a test's private one)
/// may be gone by the time it is opened.
fn open_own_cgroup() -> Result<fs::File, NetnsCookieError> {
    let read =
        |path: &'static str| fs::read_to_string(path).map_err(|e| NetnsCookieError::Read(path, e));
    own_cgroup_dirs(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)
        .iter()
        .find_map(|dir| fs::File::open(dir).ok().filter(|_| dir.is_dir()))
        .ok_or(NetnsCookieError::NoCgroup)
}

/// Learns the cookie with the `netns_cookie` program attached to this
/// process's cgroup while it opens the marker socket (UDP-Lite).
pub fn learn() -> Result<u64, NetnsCookieError> {
    let program_error = |e: &dyn std::fmt::Debug| NetnsCookieError::Program(format!("{e:?}"));
    // Declared before `ebpf`, so released after the program is detached.
    let _turn = take_learners_lock()?;
    // Opened once it is this learner's turn, which may have been a while.
    let cgroup = open_own_cgroup()?;
    let mut ebpf = EbpfLoader::new()
        .load(NETNS_COOKIE_OBJECT)
        .map_err(|e| program_error(&e))?;
    let program: &mut CgroupSock = ebpf
        .program_mut("learn_netns_cookie")
        .ok_or_else(|| program_error(&"not in the object"))?
        .try_into()
        .map_err(|e| program_error(&e))?;
    super::load_program(|| program.load()).map_err(|e| program_error(&e))?;
    // A link: beside whatever else is attached there (links always are);
    // detached when `ebpf` drops.
    program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| program_error(&e))?;
    drop(socket(libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE).map_err(NetnsCookieError::Socket)?);
    let cookies: Array<_, u64> = ebpf
        .map("NETNS_COOKIE")
        .ok_or_else(|| program_error(&"no NETNS_COOKIE map"))?
        .try_into()
        .map_err(|e| program_error(&e))?;
    match cookies.get(&0, 0).map_err(|e| program_error(&e))? {
        0 => Err(NetnsCookieError::NotSeen),
        cookie => Ok(cookie),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_found_under_a_mount_whose_root_holds_it() {
        let cgroup = "0::/system.slice/kxdp.service\n";
        let mountinfo = "\
22 1 0:21 / /proc rw - proc proc rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
41 30 0:26 /system.slice /mnt/my\\040cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            own_cgroup_dirs(cgroup, mountinfo),
            [
                PathBuf::from("/sys/fs/cgroup/system.slice/kxdp.service"),
                PathBuf::from("/mnt/my cg/kxdp.service")
            ]
        );
        // Only a mount of a subtree holding it.
        let subtree_only = "41 30 0:26 /system.slice /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dirs(cgroup, subtree_only),
            [PathBuf::from("/mnt/my cg/kxdp.service")]
        );
        let elsewhere = "41 30 0:26 /user.slice /mnt/u rw - cgroup2 cgroup2 rw\n";
        assert!(own_cgroup_dirs(cgroup, elsewhere).is_empty());
        // cgroup v1 only: no "0::" line.
        assert!(own_cgroup_dirs("1:cpu:/x\n", mountinfo).is_empty());
    }

    #[test]
    fn both_ways_give_this_namespace_s_cookie() {
        let learnt = learn().expect("learning the cookie (needs root)");
        assert_ne!(learnt, 0);
        // Where the socket option exists, both agree.
        if let Ok(told) = from_socket_option() {
            assert_eq!(learnt, told);
        }
    }
}
