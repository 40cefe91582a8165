//! Asks the kernel which `features::Feature`s it has, the way bpftool's
//! feature probes do: load a minimal program calling the helper (or using
//! the attach type), create a minimal map, or make a call whose error tells
//! an unknown command from a bad argument. Each probe leaves nothing behind.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use super::{
    bpf_syscall::{self, MapSpec},
    netns_cookie,
};
use proxy_common::maps::MAGLEV_ARENA_FLAGS;

use crate::features::{loadout, Feature, Loadout, Probed, TooOld};

const PROG_SCHED_CLS: u32 = 3;
const PROG_CGROUP_SOCK_ADDR: u32 = 18;
const MAP_ARRAY: u32 = 2;

const ATTACH_CONNECT4: u32 = 10;
const ATTACH_SENDMSG4: u32 = 14;
const ATTACH_RECVMSG4: u32 = 19;
const ATTACH_GETPEERNAME4: u32 = 29;
const ATTACH_TCX_INGRESS: u32 = 46;

const HELPER_REDIRECT_NEIGH: i32 = 152;
const HELPER_KTIME_GET_COARSE_NS: i32 = 160;
const HELPER_SET_RETVAL: i32 = 187;

#[derive(Debug, thiserror::Error)]
#[error("cannot probe the kernel's BPF features (are you root, with BPF enabled?): {0}")]
pub struct ProbeError(io::Error);

/// One instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    code as u64 | (dst as u64) << 8 | (imm as u32 as u64) << 32
}
const fn mov64_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, imm)
}
const fn call(helper: i32) -> u64 {
    insn(0x85, 0, helper)
}
const EXIT: u64 = insn(0x95, 0, 0);

/// Loads a GPL program; its descriptor.
fn load(prog_type: u32, attach_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    super::retry_interrupted(
        || bpf_syscall::prog_load(prog_type, attach_type, insns),
        |e| e.raw_os_error() == Some(libc::EAGAIN),
    )
}

/// Whether a program of `prog_type` (for `attach_type`) may call `helper`
/// (with zeroed arguments) and return `ret`.
fn helper_loads(prog_type: u32, attach_type: u32, helper: i32, ret: i32) -> bool {
    let insns = [
        mov64_imm(1, 0),
        mov64_imm(2, 0),
        mov64_imm(3, 0),
        mov64_imm(4, 0),
        call(helper),
        mov64_imm(0, ret),
        EXIT,
    ];
    load(prog_type, attach_type, &insns).is_ok()
}

fn array_map(flags: u32) -> io::Result<OwnedFd> {
    bpf_syscall::map_create(&MapSpec {
        map_type: MAP_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        flags,
        inner_map: None,
    })
}

fn socket_hooks() -> bool {
    [
        ATTACH_CONNECT4,
        ATTACH_SENDMSG4,
        ATTACH_RECVMSG4,
        ATTACH_GETPEERNAME4,
    ]
    .iter()
    .all(|&attach| load(PROG_CGROUP_SOCK_ADDR, attach, &[mov64_imm(0, 1), EXIT]).is_ok())
}

/// An empty batch update of an array: kernels without batch operations do
/// not know the command.
fn map_batch_ops() -> io::Result<bool> {
    let map = array_map(0)?;
    // SAFETY: an array of `u64` values; nothing is passed.
    Ok(unsafe { bpf_syscall::map_update_batch::<u32, u64>(map.as_fd(), &[], &[]) }.is_ok())
}

/// A tcx link to no interface: kernels with tcx look for the interface
/// (ENODEV); older ones do not know the attach type (EINVAL).
fn tcx(classifier: &OwnedFd) -> bool {
    // A link made anyway (it cannot be: there is no interface 0) closes here.
    matches!(
        bpf_syscall::link_create(classifier.as_fd(), 0, ATTACH_TCX_INGRESS),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV)
    )
}

/// Before Linux 5.11 BPF maps and programs are charged to the locked
/// memory limit (since, to the memory cgroup): lifted, as libbpf does, or
/// loading fails with EPERM once a few maps exist.
fn lift_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lift the locked memory limit; on kernels before 5.11 loading may fail");
    }
}

/// Probes every feature, after lifting the locked memory limit for this
/// process's BPF objects (`lift_memlock_limit`). Fails only when not even
/// a plain tc program loads: then nothing could be told apart.
pub fn probe() -> Result<Probed, ProbeError> {
    lift_memlock_limit();
    let classifier = load(PROG_SCHED_CLS, 0, &[mov64_imm(0, 0), EXIT]).map_err(ProbeError)?;
    let found = Feature::ALL
        .iter()
        .map(|&feature| {
            let present = match feature {
                Feature::RedirectNeigh => helper_loads(PROG_SCHED_CLS, 0, HELPER_REDIRECT_NEIGH, 0),
                Feature::MmapableArrays => array_map(MAGLEV_ARENA_FLAGS).is_ok(),
                Feature::MapBatchOps => map_batch_ops().map_err(ProbeError)?,
                Feature::SocketHooks => socket_hooks(),
                Feature::KtimeCoarse => {
                    helper_loads(PROG_SCHED_CLS, 0, HELPER_KTIME_GET_COARSE_NS, 0)
                }
                Feature::SockAddrSetRetval => {
                    helper_loads(PROG_CGROUP_SOCK_ADDR, ATTACH_CONNECT4, HELPER_SET_RETVAL, 1)
                }
                Feature::Tcx => tcx(&classifier),
                Feature::NetnsCookieOption => netns_cookie::from_socket_option().is_ok(),
            };
            Ok((feature, present))
        })
        .collect::<Result<_, ProbeError>>()?;
    Ok(Probed(found))
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    TooOld(#[from] TooOld),
}

/// What this kernel has, and what kxdp loads on it
/// (`features::loadout`); `classic_tc_asked`: `--pod-attach tc`.
pub fn this_kernel(classic_tc_asked: bool) -> Result<(Probed, Loadout), KernelError> {
    let probed = probe()?;
    let loadout = loadout(&probed, classic_tc_asked)?;
    Ok((probed, loadout))
}
