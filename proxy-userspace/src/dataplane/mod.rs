//! The kernel side, seen from userspace: loading the eBPF object, pinning
//! maps and links under the pin path, attaching to interfaces.

pub mod bpffs;
pub mod interfaces;
pub mod maps;

use std::path::Path;

use aya::{programs::SchedClassifier, Ebpf, EbpfLoader};

use crate::ebpf_object::KXDP_OBJECT;

/// Name of the tcx program on the host side of pod interfaces.
pub const POD_INGRESS: &str = "pod_ingress";
/// Sub-directory of the pin path holding pinned links.
pub const LINKS_DIR: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("cannot load the eBPF object (are you root, with BPF enabled?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("cannot load program {POD_INGRESS}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// The loaded object: maps pinned (or adopted from a previous agent) under
/// the pin path, programs loaded but not yet attached.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    pub fn load(pin_path: &Path) -> Result<Self, DataplaneError> {
        bpffs::prepare_pin_path(pin_path)?;
        // Maps already pinned there are reused as they are: a restarted agent
        // keeps the conntrack table and every service.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .load(KXDP_OBJECT)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(POD_INGRESS)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
            .try_into()?;
        program.load()?;
        Ok(Self { ebpf })
    }

    pub fn pod_ingress(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        Ok(self
            .ebpf
            .program_mut(POD_INGRESS)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
            .try_into()?)
    }

    /// Hands the service maps over to the sync writer.
    pub fn take_maps(&mut self) -> Result<maps::BpfMaps, DataplaneError> {
        maps::BpfMaps::from_ebpf(&mut self.ebpf)
    }
}
