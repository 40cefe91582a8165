//! Pod interfaces: the agent attaches `pod_ingress` (tcx ingress) to every
//! interface matching the `--pod-interfaces` globs, including ones created
//! later, and pins each link under `<pin path>/links` so the program stays
//! attached when the agent stops. A restarted agent swaps its program into the
//! pinned links atomically (bpf_link_update), so no packet is missed.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};
use tracing::{info, warn};

use super::{LINKS_DIR, POD_INGRESS};

/// A network interface of the agent's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub index: u32,
    pub name: String,
}

/// The interfaces of this network namespace (netlink-backed, so it is right
/// even where /sys shows another namespace).
pub fn list_interfaces() -> io::Result<Vec<Interface>> {
    // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut interfaces = Vec::new();
    let mut entry = head;
    // SAFETY: walk until the terminating entry; names are NUL-terminated.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            interfaces.push(Interface {
                index: (*entry).if_index,
                name,
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(interfaces)
}

/// `pod_ingress-<ifindex>-<name>`: the index tells a re-created interface of
/// the same name from the old one.
fn pin_name(interface: &Interface) -> String {
    format!("{POD_INGRESS}-{}-{}", interface.index, interface.name)
}

fn parse_pin_name(file: &str) -> Option<Interface> {
    let rest = file.strip_prefix(POD_INGRESS)?.strip_prefix('-')?;
    let (index, name) = rest.split_once('-')?;
    Some(Interface {
        index: index.parse().ok()?,
        name: name.to_string(),
    })
}

/// Links pinned under `links_dir`, by interface.
pub fn pinned_links(links_dir: &Path) -> io::Result<BTreeMap<Interface, PathBuf>> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut links = BTreeMap::new();
    for entry in entries {
        let path = entry?.path();
        if let Some(interface) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(parse_pin_name)
        {
            links.insert(interface, path);
        }
    }
    Ok(links)
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("invalid interface pattern '{0}': {1}")]
    Pattern(String, glob::PatternError),
    #[error("cannot list interfaces: {0}")]
    List(io::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("attach to {0}: {1}")]
    Attach(String, String),
}

/// Keeps `pod_ingress` attached to the interfaces matching the patterns.
pub struct PodInterfaces {
    patterns: Vec<glob::Pattern>,
    links_dir: PathBuf,
    attached: BTreeMap<u32, Interface>,
}

impl PodInterfaces {
    pub fn new(patterns: &[String], pin_path: &Path) -> Result<Self, AttachError> {
        let patterns = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| AttachError::Pattern(p.clone(), e)))
            .collect::<Result<_, _>>()?;
        let links_dir = pin_path.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|e| AttachError::Io(links_dir.clone(), e))?;
        Ok(Self {
            patterns,
            links_dir,
            attached: BTreeMap::new(),
        })
    }

    pub fn attached(&self) -> impl Iterator<Item = &Interface> {
        self.attached.values()
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// Attaches to new matching interfaces, adopts links a previous agent
    /// pinned, and drops the pins of interfaces that are gone. Failures on one
    /// interface are logged and retried at the next call.
    pub fn reconcile(&mut self, program: &mut SchedClassifier) -> Result<(), AttachError> {
        let wanted: Vec<Interface> = list_interfaces()
            .map_err(AttachError::List)?
            .into_iter()
            .filter(|i| self.matches(&i.name))
            .collect();
        let pinned = pinned_links(&self.links_dir)
            .map_err(|e| AttachError::Io(self.links_dir.clone(), e))?;
        for (interface, path) in &pinned {
            if !wanted.contains(interface) {
                // The interface is gone (its link with it) or no longer matches:
                // dropping the pin releases the link.
                info!(interface = %interface.name, "detaching from interface that is gone or no longer matches");
                if let Err(e) = fs::remove_file(path) {
                    warn!(path = %path.display(), error = %e, "cannot remove link pin");
                }
            }
        }
        self.attached.retain(|index, interface| {
            wanted
                .iter()
                .any(|w| w.index == *index && w.name == interface.name)
        });
        for interface in wanted {
            if self.attached.contains_key(&interface.index) {
                continue;
            }
            let path = self.links_dir.join(pin_name(&interface));
            let result = if pinned.contains_key(&interface) {
                adopt(program, &path)
            } else {
                attach(program, &interface, &path)
            };
            match result {
                Ok(how) => {
                    info!(interface = %interface.name, ifindex = interface.index, hook = "tcx ingress", "{how}");
                    self.attached.insert(interface.index, interface);
                }
                Err(e) => {
                    warn!(interface = %interface.name, error = %e, "cannot attach; will retry")
                }
            }
        }
        Ok(())
    }
}

/// Swaps our program into a link pinned by an earlier agent.
fn adopt(program: &mut SchedClassifier, path: &Path) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(path.display().to_string(), e);
    let link = PinnedLink::from_pin(path).map_err(|e| fail(e.to_string()))?;
    let link =
        SchedClassifierLink::try_from(FdLink::from(link)).map_err(|e| fail(e.to_string()))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| fail(e.to_string()))?;
    // The pin keeps the link alive; our handle can go.
    drop(program.take_link(id).map_err(|e| fail(e.to_string()))?);
    Ok("attached: adopted pinned link, program replaced atomically")
}

fn attach(
    program: &mut SchedClassifier,
    interface: &Interface,
    path: &Path,
) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(interface.name.clone(), e);
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = program
        .attach_with_options(&interface.name, TcAttachType::Ingress, options)
        .map_err(|e| fail(e.to_string()))?;
    let link = FdLink::try_from(program.take_link(id).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    link.pin(path).map_err(|e| fail(e.to_string()))?;
    Ok("attached")
}

/// `bpf(2)` with a zeroed attribute block whose leading bytes are `fields`.
fn bpf_call(cmd: libc::c_long, fields: &[u64]) -> io::Result<i64> {
    let mut attr = [0u64; 16];
    attr[..fields.len()].copy_from_slice(fields);
    // SAFETY: attr is a valid, fully initialised bpf_attr-sized buffer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Detaches the link pinned at `path` now, whoever else holds it, then
/// removes the pin. Merely unpinning would leave the detach to an RCU
/// callback, after `kxdp unload` has returned.
fn detach_pinned(path: &Path) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = bpf_call(BPF_OBJ_GET, &[c_path.as_ptr() as u64])?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // A link whose interface is gone is detached already: nothing to do.
    let _ = bpf_call(BPF_LINK_DETACH, &[fd.as_raw_fd() as u64]);
    fs::remove_file(path)
}

/// Detaches every pinned link under `links_dir` (for `kxdp unload`).
pub fn detach_all(links_dir: &Path) -> io::Result<usize> {
    let links = pinned_links(links_dir)?;
    for path in links.values() {
        detach_pinned(path)?;
    }
    Ok(links.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_even_with_dashes_in_names() {
        let interface = Interface {
            index: 42,
            name: "veth-pod-1".into(),
        };
        assert_eq!(pin_name(&interface), "pod_ingress-42-veth-pod-1");
        assert_eq!(parse_pin_name(&pin_name(&interface)), Some(interface));
        assert_eq!(parse_pin_name("SERVICES"), None);
        assert_eq!(parse_pin_name("pod_ingress-x-eth0"), None);
    }

    #[test]
    fn lists_loopback() {
        let interfaces = list_interfaces().unwrap();
        assert!(interfaces.iter().any(|i| i.name == "lo"), "{interfaces:?}");
    }
}
