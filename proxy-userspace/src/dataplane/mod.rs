//! The kernel side, seen from userspace: loading the eBPF object, pinning
//! maps and links under the pin path, attaching to interfaces.

pub mod attach_plan;
pub mod batch;
pub mod bpf_syscall;
pub mod bpffs;
pub mod fill;
pub mod interfaces;
pub mod maglev_arena;
pub mod maps;
pub mod netns_cookie;
pub mod nic;
pub mod probe;
pub mod sockets;
pub mod xdp_mode;

use std::path::Path;

use aya::{
    programs::{CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp},
    Ebpf, EbpfLoader,
};

use crate::{cli::SocketLb, ebpf_object::KXDP_OBJECT, features::Loadout};

/// A tcx program on the host side of pod interfaces, and where it hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodHook {
    pub program: &'static str,
    pub attach: TcAttachType,
}

/// Hooks sort by program name (one program per hook).
impl Ord for PodHook {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.program.cmp(other.program)
    }
}

impl PartialOrd for PodHook {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Packets leaving a pod: DNAT to a backend.
pub const POD_INGRESS: PodHook = PodHook {
    program: "pod_ingress",
    attach: TcAttachType::Ingress,
};
/// Packets entering a pod: reverse NAT of replies.
pub const POD_EGRESS: PodHook = PodHook {
    program: "pod_egress",
    attach: TcAttachType::Egress,
};
pub const POD_HOOKS: [PodHook; 2] = [POD_INGRESS, POD_EGRESS];
/// Sub-directory of the pin path holding pinned links.
pub const LINKS_DIR: &str = "links";
/// The object's global of `proxy_common::kernel` feature bits.
pub const KXDP_FEATURES: &str = "KXDP_FEATURES";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("cannot load the eBPF object (are you root, with BPF enabled?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("cannot load program {0}: {1}")]
    Program(&'static str, #[source] ProgramError),
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error(
        "{path} was pinned by another kxdp version (key, value sizes {pinned:?}, this version \
         needs {expected:?}); run `kxdp unload` to replace the dataplane"
    )]
    PinnedLayout {
        path: std::path::PathBuf,
        pinned: (usize, usize),
        expected: (usize, usize),
    },
    #[error("moving {0} (a map an earlier version pinned) to its new name: {1}")]
    RenamePin(std::path::PathBuf, #[source] std::io::Error),
    #[error("the Maglev arena: {0}")]
    Arena(#[source] maglev_arena::ArenaError),
    #[error("copying backend {0} from an earlier version's BACKENDS map: {1}")]
    AdoptBackends(u32, String),
}

/// Unpins the maps of an earlier layout (`maps::RETIRED`): their memory
/// goes once the programs still using them are replaced.
fn remove_retired_pins(pin_path: &Path) {
    for name in maps::RETIRED {
        let path = pin_path.join(name);
        if path.exists() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(
                    map = name,
                    "removed the pin of a map this version no longer uses"
                ),
                Err(e) => {
                    tracing::warn!(map = name, error = %e, "cannot remove the pin of a retired map")
                }
            }
        }
    }
}

/// How many times a program load the kernel interrupted is tried.
const LOAD_ATTEMPTS: usize = 5;

/// Runs `load` again while it fails as `interrupted` says: the verifier
/// gives up with EAGAIN when a signal reaches the loading thread, a
/// transient failure libbpf retries as well.
pub fn retry_interrupted<T, E>(
    mut load: impl FnMut() -> Result<T, E>,
    interrupted: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(e) if interrupted(&e) && attempt < LOAD_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Signals blocked for the calling thread while this lives: the verifier
/// gives up (EAGAIN) when one is pending for the loading thread, and over
/// a program it takes a quarter of a second to check, a busy process (a
/// test binary starting commands on other threads) interrupted every try.
/// Signals that arrive meanwhile are delivered once this is dropped.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> Self {
        // SAFETY: plain libc calls on sets we own; the mask is this
        // thread's alone.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
            Self(previous)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// `program.load()` for aya programs, with signals held off and retried
/// when interrupted all the same.
pub fn load_program(load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let _held = SignalsBlocked::new();
    retry_interrupted(load, |e| {
        let io_error = match e {
            ProgramError::LoadError { io_error, .. } => io_error,
            ProgramError::SyscallError(e) => &e.io_error,
            _ => return false,
        };
        io_error.raw_os_error() == Some(libc::EAGAIN)
    })
}

/// The loaded object: maps pinned (or adopted from a previous agent) under
/// the pin path, programs loaded but not yet attached.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the object for this kernel's `loadout`, with a Maglev arena
    /// of `arena_entries` (a pinned arena keeps its size); `with_nic` also
    /// loads the NIC program (no `--nic`, no XDP).
    pub fn load(
        pin_path: &Path,
        loadout: &Loadout,
        arena_entries: u32,
        with_nic: bool,
    ) -> Result<Self, DataplaneError> {
        bpffs::prepare_pin_path(pin_path)?;
        maps::adopt_renamed_pins(pin_path)?;
        maps::check_pinned_layout(pin_path)?;
        // An earlier version's backends, in a hash map, are copied into the
        // array once it is created, and only then.
        let backends_to_adopt = !pin_path.join(maps::BACKEND_SLOTS).exists();
        // Maps already pinned there are reused as they are: a restarted agent
        // keeps the conntrack table and every service. The probe that
        // gave `loadout` lifted the locked memory limit.
        // The socket hooks always translate sockets of this (the node's)
        // network namespace, and those of every other one (pods) with
        // `--socket-lb all`.
        let socket_hooks = loadout.socket_lb != SocketLb::Off;
        let socket_lb_pods = u32::from(loadout.socket_lb == SocketLb::All);
        let netns_cookie = if !socket_hooks {
            Ok(0)
        } else if loadout.netns_cookie_option {
            netns_cookie::from_socket_option().map_err(|e| e.to_string())
        } else {
            netns_cookie::learn().map_err(|e| e.to_string())
        }
        .inspect_err(|e| tracing::warn!(error = %e, "cannot find the network namespace cookie; host processes will not be translated"))
        .unwrap_or(0);
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .map_max_entries(maglev_arena::MAGLEV_ARENA, arena_entries)
            .override_global(sockets::HOST_NETNS_COOKIE, &netns_cookie, true)
            .override_global(sockets::SOCKET_LB_PODS, &socket_lb_pods, true)
            .override_global(KXDP_FEATURES, &loadout.datapath_bits, true)
            .load(KXDP_OBJECT)?;
        let mut dataplane = Self { ebpf };
        for hook in POD_HOOKS {
            let program = dataplane.program(hook)?;
            load_program(|| program.load())
                .map_err(|e| DataplaneError::Program(hook.program, e))?;
        }
        let socket_programs = if socket_hooks {
            &sockets::SOCKET_PROGRAMS[..]
        } else {
            &[]
        };
        for &name in socket_programs {
            let program = dataplane.socket_program(name)?;
            load_program(|| program.load()).map_err(|e| DataplaneError::Program(name, e))?;
        }
        if with_nic {
            let program = dataplane.nic_program()?;
            load_program(|| program.load())
                .map_err(|e| DataplaneError::Program(nic::NIC_PROGRAM, e))?;
        }
        if backends_to_adopt {
            let adopted = maps::adopt_backends_hash(pin_path)?;
            if adopted > 0 {
                tracing::info!(
                    backends = adopted,
                    "backends an earlier version kept in a hash map copied into BACKEND_SLOTS"
                );
            }
        }
        remove_retired_pins(pin_path);
        Ok(dataplane)
    }

    /// Program `name` of the object as its type `T`.
    fn typed_program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, DataplaneError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self.ebpf.program_mut(name).ok_or(DataplaneError::Program(
            name,
            ProgramError::UnexpectedProgramType,
        ))?;
        program
            .try_into()
            .map_err(|e| DataplaneError::Program(name, e))
    }

    /// The XDP program for NICs.
    pub fn nic_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.typed_program(nic::NIC_PROGRAM)
    }

    /// A cgroup socket hook (`sockets::SOCKET_PROGRAMS`).
    pub fn socket_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut CgroupSockAddr, DataplaneError> {
        self.typed_program(name)
    }

    /// The program behind `hook`.
    pub fn program(&mut self, hook: PodHook) -> Result<&mut SchedClassifier, DataplaneError> {
        self.typed_program(hook.program)
    }

    /// Hands the service maps over to the sync writer.
    pub fn take_maps(&mut self) -> Result<maps::BpfMaps, DataplaneError> {
        maps::BpfMaps::from_ebpf(&mut self.ebpf)
    }
}
