//! Pod interfaces: the agent attaches `pod_ingress` (tcx ingress) and
//! `pod_egress` (tcx egress) to every interface matching the `--pod-interfaces` globs, including ones created
//! later, and pins each link under `<pin path>/links` so the program stays
//! attached when the agent stops. A restarted agent swaps its program into the
//! pinned links atomically (bpf_link_update), so no packet is missed.
//!
//! Kernels before 6.6 have no tcx: there the programs go in as classic tc
//! filters of a `clsact` qdisc, at kxdp's own priority and handle. A filter
//! is no link and cannot be pinned; it stays without the agent anyway, so
//! the pin under `links/` (prefixed `tc-`) is the program itself, a record
//! telling a restarted agent to replace the filter's program in place and
//! `kxdp unload` to delete the filter.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CStr,
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, Link, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    LinkOrder, SchedClassifier,
};
use tracing::{info, warn};

use super::{
    attach_plan::{self, Action, Present},
    bpf_syscall, Dataplane, PodHook, LINKS_DIR, POD_HOOKS,
};

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

/// `<program>-<ifindex>-<name>`: the index tells a re-created interface of
/// the same name from the old one.
fn pin_name(hook: PodHook, interface: &Interface) -> String {
    format!("{}-{}-{}", hook.program, interface.index, interface.name)
}

/// Pin names of classic tc filters start with this.
const TC_PIN_PREFIX: &str = "tc-";
/// kxdp's classic tc filters: a priority of their own (a high number, so they
/// run after filters others put first, as tcx's default order does), handle 1.
const TC_PRIORITY: u16 = 0x6b78;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

fn tc_pin_name(hook: PodHook, interface: &Interface) -> String {
    format!("{TC_PIN_PREFIX}{}", pin_name(hook, interface))
}

/// Whether the pin at `path` records a classic tc filter.
pub fn is_tc_pin(path: &Path) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(TC_PIN_PREFIX))
}

fn parse_pin_name(file: &str) -> Option<(PodHook, Interface)> {
    let file = file.strip_prefix(TC_PIN_PREFIX).unwrap_or(file);
    POD_HOOKS.into_iter().find_map(|hook| {
        let rest = file.strip_prefix(hook.program)?.strip_prefix('-')?;
        let (index, name) = rest.split_once('-')?;
        let interface = Interface {
            index: index.parse().ok()?,
            name: name.to_string(),
        };
        Some((hook, interface))
    })
}

/// The links pinned under `links_dir` whose file name `parse` recognises,
/// by what it makes of the name.
pub(super) fn pinned_links_named<K: Ord>(
    links_dir: &Path,
    parse: impl Fn(&str) -> Option<K>,
) -> io::Result<BTreeMap<K, PathBuf>> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut links = BTreeMap::new();
    for entry in entries {
        let path = entry?.path();
        if let Some(key) = path.file_name().and_then(|f| f.to_str()).and_then(&parse) {
            links.insert(key, path);
        }
    }
    Ok(links)
}

/// Links pinned under `links_dir`, by hook and interface.
pub fn pinned_links(links_dir: &Path) -> io::Result<BTreeMap<(PodHook, Interface), PathBuf>> {
    pinned_links_named(links_dir, parse_pin_name)
}

/// Deletes kxdp's classic tc filter of `hook` on `interface`, if the
/// interface is still there (the filter goes with it otherwise).
fn detach_tc(hook: PodHook, interface: &Interface) -> io::Result<()> {
    if !list_interfaces()?.contains(interface) {
        return Ok(());
    }
    let link =
        SchedClassifierLink::attached(&interface.name, hook.attach, TC_PRIORITY, TC_HANDLE, None)?;
    link.detach().map_err(io::Error::other)
}

/// Detaches what the pin at `path` holds on `interface`: the link, or the
/// classic tc filter; then removes the pin.
fn detach_pod_pin(hook: PodHook, interface: &Interface, path: &Path) -> io::Result<()> {
    if is_tc_pin(path) {
        detach_tc(hook, interface)?;
        fs::remove_file(path)
    } else {
        detach_pinned(path)
    }
}

/// Detaches every link under `links_dir` whose name `parse` recognises;
/// how many.
pub(super) fn detach_named<K: Ord>(
    links_dir: &Path,
    parse: impl Fn(&str) -> Option<K>,
) -> io::Result<usize> {
    let links = pinned_links_named(links_dir, parse)?;
    for path in links.values() {
        detach_pinned(path)?;
    }
    Ok(links.len())
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

/// Keeps both pod programs attached to the interfaces matching the patterns.
pub struct PodInterfaces {
    patterns: Vec<glob::Pattern>,
    links_dir: PathBuf,
    /// Attached or adopted by this agent.
    attached: BTreeSet<(PodHook, Interface)>,
    /// Classic tc filters instead of tcx links: asked for, or the kernel
    /// has no tcx (`features::Feature::Tcx`).
    classic_tc: bool,
}

impl PodInterfaces {
    /// `classic_tc`: attach classic tc filters from the start.
    pub fn new(
        patterns: &[String],
        pin_path: &Path,
        classic_tc: bool,
    ) -> Result<Self, AttachError> {
        let patterns = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| AttachError::Pattern(p.clone(), e)))
            .collect::<Result<_, _>>()?;
        let links_dir = pin_path.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|e| AttachError::Io(links_dir.clone(), e))?;
        Ok(Self {
            patterns,
            links_dir,
            attached: BTreeSet::new(),
            classic_tc,
        })
    }

    /// Interfaces with at least one program attached.
    pub fn attached(&self) -> BTreeSet<&Interface> {
        self.attached
            .iter()
            .map(|(_, interface)| interface)
            .collect()
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// Attaches to new matching interfaces, adopts links a previous agent
    /// pinned, and drops the pins of interfaces that are gone
    /// (`attach_plan`). Failures on one interface are logged and retried at
    /// the next call.
    pub fn reconcile(&mut self, dataplane: &mut Dataplane) -> Result<(), AttachError> {
        let interfaces: Vec<Interface> = list_interfaces()
            .map_err(AttachError::List)?
            .into_iter()
            .filter(|i| self.matches(&i.name))
            .collect();
        let pinned = pinned_links(&self.links_dir)
            .map_err(|e| AttachError::Io(self.links_dir.clone(), e))?;
        let present = pinned
            .keys()
            .map(|key| (key.clone(), Present::Pinned))
            .chain(self.attached.iter().map(|key| (key.clone(), Present::Ours)))
            .collect();
        let wanted = POD_HOOKS
            .into_iter()
            .flat_map(|hook| interfaces.iter().map(move |i| (hook, i.clone())));
        for action in attach_plan::plan(wanted, &present) {
            let (key, adopting) = match action {
                Action::Detach(key) => {
                    self.detach(&key, pinned.get(&key));
                    continue;
                }
                Action::Adopt(key) => (key, true),
                Action::Attach(key) => (key, false),
            };
            let (hook, interface) = &key;
            let program = dataplane
                .program(*hook)
                .map_err(|e| AttachError::Attach(hook.program.to_string(), e.to_string()))?;
            let result = match pinned.get(&key) {
                Some(path) if adopting && is_tc_pin(path) => {
                    adopt_tc(program, *hook, interface, path)
                }
                Some(path) if adopting => adopt(program, path),
                _ => self.attach(program, *hook, interface),
            };
            match result {
                Ok(how) => {
                    info!(interface = %interface.name, ifindex = interface.index, program = hook.program, hook = ?hook.attach, "{how}");
                    self.attached.insert(key);
                }
                Err(e) => {
                    warn!(interface = %interface.name, program = hook.program, error = %e, "cannot attach; will retry")
                }
            }
        }
        Ok(())
    }

    /// Forgets `hook` on `interface` (gone or no longer matching) and drops
    /// its pin, if any: the link goes with it.
    fn detach(&mut self, key: &(PodHook, Interface), pin: Option<&PathBuf>) {
        self.attached.remove(key);
        let Some(path) = pin else { return };
        let (hook, interface) = key;
        info!(interface = %interface.name, program = hook.program, "detaching from interface that is gone or no longer matches");
        let removed = if is_tc_pin(path) {
            detach_pod_pin(*hook, interface, path)
        } else {
            fs::remove_file(path)
        };
        if let Err(e) = removed {
            warn!(path = %path.display(), error = %e, "cannot remove link pin");
        }
    }

    /// Attaches with tcx, or as a classic tc filter where the kernel has no
    /// tcx or `--pod-attach tc` asked for it.
    fn attach(
        &self,
        program: &mut SchedClassifier,
        hook: PodHook,
        interface: &Interface,
    ) -> Result<&'static str, AttachError> {
        if self.classic_tc {
            let path = self.links_dir.join(tc_pin_name(hook, interface));
            attach_tc(program, hook, interface, &path)
        } else {
            let path = self.links_dir.join(pin_name(hook, interface));
            attach(program, hook, interface, &path)
        }
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
    hook: PodHook,
    interface: &Interface,
    path: &Path,
) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(interface.name.clone(), e);
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = program
        .attach_with_options(&interface.name, hook.attach, options)
        .map_err(|e| fail(e.to_string()))?;
    let link = FdLink::try_from(program.take_link(id).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    link.pin(path).map_err(|e| fail(e.to_string()))?;
    Ok("attached")
}

/// Adds kxdp's classic tc filter of `hook` on `interface` (and the
/// interface's clsact qdisc if it has none) and pins the program at `path`
/// as its record.
fn attach_tc(
    program: &mut SchedClassifier,
    hook: PodHook,
    interface: &Interface,
    path: &Path,
) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(interface.name.clone(), e);
    match tc::qdisc_add_clsact(&interface.name) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        other => other.map_err(|e| fail(format!("adding the clsact qdisc: {e}")))?,
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: TC_PRIORITY,
        handle: TC_HANDLE,
        classid: None,
    });
    let id = program
        .attach_with_options(&interface.name, hook.attach, options)
        .map_err(|e| fail(e.to_string()))?;
    keep_filter(program, id, path).map_err(fail)?;
    Ok("attached (classic tc)")
}

/// Replaces the program of the classic tc filter an earlier agent added.
fn adopt_tc(
    program: &mut SchedClassifier,
    hook: PodHook,
    interface: &Interface,
    path: &Path,
) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(interface.name.clone(), e);
    let link =
        SchedClassifierLink::attached(&interface.name, hook.attach, TC_PRIORITY, TC_HANDLE, None)
            .map_err(|e| fail(e.to_string()))?;
    // A filter of the same priority and handle is changed in place.
    let id = program
        .attach_to_link(link)
        .map_err(|e| fail(e.to_string()))?;
    fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
    keep_filter(program, id, path).map_err(fail)?;
    Ok("attached (classic tc): filter's program replaced in place")
}

/// Leaves the filter `id` in the kernel when the agent stops, and pins the
/// program at `path` as its record.
fn keep_filter(
    program: &mut SchedClassifier,
    id: aya::programs::tc::SchedClassifierLinkId,
    path: &Path,
) -> Result<(), String> {
    let link = program.take_link(id).map_err(|e| e.to_string())?;
    // Dropping a filter's link deletes the filter; it must outlive the agent
    // (it holds nothing but numbers).
    std::mem::forget(link);
    let fd = program.fd().map_err(|e| e.to_string())?;
    bpf_syscall::obj_pin(fd.as_fd(), path).map_err(|e| format!("pinning {}: {e}", path.display()))
}

/// Detaches the link pinned at `path` now, whoever else holds it, then
/// removes the pin. Merely unpinning would leave the detach to an RCU
/// callback, after `kxdp unload` has returned.
pub(super) fn detach_pinned(path: &Path) -> io::Result<()> {
    let link = bpf_syscall::obj_get(path)?;
    // A link whose interface is gone is detached already: nothing to do.
    let _ = bpf_syscall::link_detach(link.as_fd());
    fs::remove_file(path)
}

/// Detaches every pinned pod link and classic tc filter under `links_dir`
/// (for `kxdp unload`).
pub fn detach_all(links_dir: &Path) -> io::Result<usize> {
    let pinned = pinned_links(links_dir)?;
    for ((hook, interface), path) in &pinned {
        detach_pod_pin(*hook, interface, path)?;
    }
    Ok(pinned.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{POD_EGRESS, POD_INGRESS};

    #[test]
    fn pin_names_round_trip_even_with_dashes_in_names() {
        let interface = Interface {
            index: 42,
            name: "veth-pod-1".into(),
        };
        assert_eq!(
            pin_name(POD_INGRESS, &interface),
            "pod_ingress-42-veth-pod-1"
        );
        assert_eq!(pin_name(POD_EGRESS, &interface), "pod_egress-42-veth-pod-1");
        for hook in POD_HOOKS {
            let parsed = parse_pin_name(&pin_name(hook, &interface));
            assert_eq!(parsed, Some((hook, interface.clone())));
        }
        assert_eq!(parse_pin_name("SERVICES"), None);
        assert_eq!(parse_pin_name("pod_ingress-x-eth0"), None);
    }

    #[test]
    fn lists_loopback() {
        let interfaces = list_interfaces().unwrap();
        assert!(interfaces.iter().any(|i| i.name == "lo"), "{interfaces:?}");
    }
}
