//! NICs: the agent attaches `nic_ingress` (XDP) to each `--nic` interface,
//! in native (driver) mode where the driver supports it and generic (skb)
//! mode otherwise, and pins each link under
//! `<pin path>/links/nic_ingress-<ifindex>-<name>`, as the pod links are, so
//! the program outlives the agent and a restarted agent swaps its program in
//! atomically. It also keeps `NIC_ADDRS` and `NIC_ADDRS6` holding the
//! address of each family each NIC SNATs flows to remote backends to.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpMode},
    Xdp,
};
use tracing::{info, warn};

use super::{
    attach_plan::{self, Action, Present},
    interfaces::{detach_named, list_interfaces, pinned_links_named, AttachError, Interface},
    maps::BpfMaps,
    Dataplane, LINKS_DIR,
};
use crate::{source::node_addresses::NicAddrs, sync::store::StoreError};

/// The XDP program of the eBPF object.
pub const NIC_PROGRAM: &str = "nic_ingress";

/// `nic_ingress-<ifindex>-<name>`, like the pod links' pins.
fn pin_name(interface: &Interface) -> String {
    format!("{NIC_PROGRAM}-{}-{}", interface.index, interface.name)
}

fn parse_pin_name(file: &str) -> Option<Interface> {
    let rest = file.strip_prefix(NIC_PROGRAM)?.strip_prefix('-')?;
    let (index, name) = rest.split_once('-')?;
    Some(Interface {
        index: index.parse().ok()?,
        name: name.to_string(),
    })
}

/// NIC links pinned under `links_dir`.
pub fn pinned_links(links_dir: &Path) -> io::Result<BTreeMap<Interface, PathBuf>> {
    pinned_links_named(links_dir, parse_pin_name)
}

/// Detaches every pinned NIC link under `links_dir` (for `kxdp unload`).
pub fn detach_all(links_dir: &Path) -> io::Result<usize> {
    detach_named(links_dir, parse_pin_name)
}

/// The writes that bring one family's NIC addresses from `current` to
/// `wanted`: entries to put, then ifindexes to delete.
fn addr_changes<A: Copy + PartialEq>(
    current: &BTreeMap<u32, A>,
    wanted: &BTreeMap<u32, A>,
) -> (Vec<(u32, A)>, Vec<u32>) {
    let puts = wanted
        .iter()
        .filter(|(index, addr)| current.get(index) != Some(addr))
        .map(|(index, addr)| (*index, *addr))
        .collect();
    let deletes = current
        .keys()
        .filter(|index| !wanted.contains_key(index))
        .copied()
        .collect();
    (puts, deletes)
}

/// Brings `NIC_ADDRS` and `NIC_ADDRS6` to `wanted`, logging each change.
pub fn sync_addrs(maps: &mut BpfMaps, wanted: &NicAddrs) -> Result<(), StoreError> {
    let current = maps.nic_addrs()?;
    sync_family(maps, &current.v4, &wanted.v4, false)?;
    sync_family(maps, &current.v6, &wanted.v6, true)
}

fn sync_family<A: Copy + PartialEq + Display + Into<std::net::IpAddr>>(
    maps: &mut BpfMaps,
    current: &BTreeMap<u32, A>,
    wanted: &BTreeMap<u32, A>,
    v6: bool,
) -> Result<(), StoreError> {
    let (puts, deletes) = addr_changes(current, wanted);
    for (index, addr) in puts {
        maps.put_nic_addr(index, addr.into())?;
        info!(ifindex = index, %addr, "NIC SNAT address set");
    }
    for index in deletes {
        maps.delete_nic_addr(index, v6)?;
        info!(
            ifindex = index,
            family = if v6 { "IPv6" } else { "IPv4" },
            "NIC SNAT address removed"
        );
    }
    Ok(())
}

/// Keeps `nic_ingress` attached to the NICs named by `--nic`.
pub struct Nics {
    names: Vec<String>,
    links_dir: PathBuf,
    attached: BTreeSet<Interface>,
    /// NICs reported missing, so the warning comes once, not every tick.
    missing: BTreeSet<String>,
}

impl Nics {
    pub fn new(names: &[String], pin_path: &Path) -> Result<Self, AttachError> {
        let links_dir = pin_path.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|e| AttachError::Io(links_dir.clone(), e))?;
        Ok(Self {
            names: names.to_vec(),
            links_dir,
            attached: BTreeSet::new(),
            missing: BTreeSet::new(),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether every NIC named by `--nic` has the program attached.
    pub fn all_attached(&self) -> bool {
        self.names
            .iter()
            .all(|name| self.attached.iter().any(|i| &i.name == name))
    }

    pub fn attached(&self) -> &BTreeSet<Interface> {
        &self.attached
    }

    /// Attaches to each named NIC not attached yet, adopting links a
    /// previous agent pinned, and drops the pins of NICs that are gone,
    /// re-created or no longer named (`attach_plan`). A missing NIC or a failed attach is
    /// logged and retried at the next call.
    pub fn reconcile(&mut self, dataplane: &mut Dataplane) -> Result<(), AttachError> {
        let interfaces = list_interfaces().map_err(AttachError::List)?;
        let wanted: Vec<&Interface> = interfaces
            .iter()
            .filter(|i| self.names.contains(&i.name))
            .collect();
        for name in &self.names {
            let found = wanted.iter().any(|i| &i.name == name);
            if !found && self.missing.insert(name.clone()) {
                warn!(interface = %name, "NIC not found; will attach when it appears");
            } else if found {
                self.missing.remove(name);
            }
        }
        let pinned = pinned_links(&self.links_dir)
            .map_err(|e| AttachError::Io(self.links_dir.clone(), e))?;
        let present = pinned
            .keys()
            .map(|interface| (interface.clone(), Present::Pinned))
            .chain(self.attached.iter().map(|i| (i.clone(), Present::Ours)))
            .collect();
        for action in attach_plan::plan(wanted.into_iter().cloned(), &present) {
            let (interface, adopting) = match action {
                Action::Detach(interface) => {
                    self.detach(&interface, pinned.get(&interface));
                    continue;
                }
                Action::Adopt(interface) => (interface, true),
                Action::Attach(interface) => (interface, false),
            };
            let program = nic_program(dataplane)?;
            let path = self.links_dir.join(pin_name(&interface));
            let result = if adopting {
                adopt(program, &path).map(|()| "as pinned")
            } else {
                attach(program, &interface, &path)
            };
            match result {
                Ok(mode) => {
                    info!(interface = %interface.name, ifindex = interface.index, mode, "attached XDP");
                    accept_local(&interface.name);
                    self.attached.insert(interface);
                }
                Err(e) => {
                    warn!(interface = %interface.name, error = %e, "cannot attach XDP; will retry")
                }
            }
        }
        Ok(())
    }

    /// Forgets `interface` (gone, re-created or no longer named) and drops
    /// its pin, if any: the link goes with it.
    fn detach(&mut self, interface: &Interface, pin: Option<&PathBuf>) {
        self.attached.remove(interface);
        let Some(path) = pin else { return };
        info!(interface = %interface.name, ifindex = interface.index, "detaching XDP from NIC that is gone or no longer named");
        if let Err(e) = fs::remove_file(path) {
            warn!(path = %path.display(), error = %e, "cannot remove link pin");
        }
    }
}

/// The XDP program for NICs.
fn nic_program(dataplane: &mut Dataplane) -> Result<&mut Xdp, AttachError> {
    dataplane
        .nic_program()
        .map_err(|e| AttachError::Attach(NIC_PROGRAM.to_string(), e.to_string()))
}

/// Lets NIC `name` take packets whose source is a node address. The XDP
/// program hands a translated packet to the stack when the FIB has no
/// neighbour entry for its next hop yet (the stack then resolves it); SNATed
/// to this node, or answering from a NodePort, its source is this node's
/// own address, which the stack drops as spoofed unless `accept_local` is on.
fn accept_local(name: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/accept_local");
    match fs::write(&path, "1") {
        Ok(()) => {
            info!(interface = %name, "accept_local on: translated packets the XDP program leaves to the stack come from a node address")
        }
        Err(e) => {
            warn!(interface = %name, error = %e, "cannot set accept_local; the first packets towards an unresolved neighbour will be dropped")
        }
    }
}

/// Swaps our program into a link pinned by an earlier agent.
fn adopt(program: &mut Xdp, path: &Path) -> Result<(), AttachError> {
    let fail = |e: String| AttachError::Attach(path.display().to_string(), e);
    let link = PinnedLink::from_pin(path).map_err(|e| fail(e.to_string()))?;
    let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| fail(e.to_string()))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| fail(e.to_string()))?;
    // The pin keeps the link alive; our handle can go.
    drop(program.take_link(id).map_err(|e| fail(e.to_string()))?);
    Ok(())
}

/// Attaches in native mode, falling back to generic mode; returns the mode.
fn attach(
    program: &mut Xdp,
    interface: &Interface,
    path: &Path,
) -> Result<&'static str, AttachError> {
    let fail = |e: String| AttachError::Attach(interface.name.clone(), e);
    let (id, mode) = match program.attach_to_if_index(interface.index, XdpMode::Driver) {
        Ok(id) => (id, "native"),
        Err(native) => {
            // Generic XDP runs after GRO, whose merged TCP packets carry
            // partial checksums the program cannot tell from full ones.
            warn!(interface = %interface.name, error = %native, "native XDP unavailable; trying generic mode: turn GRO off on this interface (ethtool -K IFACE gro off), or merged TCP packets get wrong checksums");
            let id = program
                .attach_to_if_index(interface.index, XdpMode::Skb)
                .map_err(|e| fail(format!("native: {native}; generic: {e}")))?;
            (id, "generic")
        }
    };
    // Only a bpf_link can be pinned; kernels before 5.9 attach through
    // netlink and are not supported.
    let link = FdLink::try_from(program.take_link(id).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    link.pin(path).map_err(|e| fail(e.to_string()))?;
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_and_skip_pod_links() {
        let nic = Interface {
            index: 2,
            name: "enp0s1-a".into(),
        };
        assert_eq!(pin_name(&nic), "nic_ingress-2-enp0s1-a");
        assert_eq!(parse_pin_name(&pin_name(&nic)), Some(nic));
        assert_eq!(parse_pin_name("pod_ingress-2-veth0"), None);
        assert_eq!(parse_pin_name("nic_ingress-x-eth0"), None);
    }

    #[test]
    fn nic_address_changes_put_new_and_changed_and_delete_the_rest() {
        let addr = |a: &str| a.parse::<std::net::Ipv4Addr>().unwrap();
        let current = BTreeMap::from([
            (2, addr("192.168.1.10")),
            (3, addr("10.0.0.5")),
            (4, addr("10.0.1.1")),
        ]);
        let wanted = BTreeMap::from([
            (2, addr("192.168.1.10")),
            (3, addr("10.0.0.6")),
            (5, addr("10.0.2.1")),
        ]);
        let (puts, deletes) = addr_changes(&current, &wanted);
        assert_eq!(puts, [(3, addr("10.0.0.6")), (5, addr("10.0.2.1"))]);
        assert_eq!(deletes, [4]);
        assert_eq!(addr_changes(&wanted, &wanted), (vec![], vec![]));
    }

    #[test]
    fn pinned_nic_links_are_found_among_other_pins() {
        let dir = std::env::temp_dir().join(format!("kxdp-nic-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for file in ["nic_ingress-2-eth0", "pod_ingress-7-veth1", "other"] {
            fs::write(dir.join(file), "").unwrap();
        }
        let links = pinned_links(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            links.keys().collect::<Vec<_>>(),
            [&Interface {
                index: 2,
                name: "eth0".into()
            }]
        );
        assert!(
            pinned_links(&dir).unwrap().is_empty(),
            "no directory, no links"
        );
    }
}
