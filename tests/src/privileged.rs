//! What every privileged suite needs: a loud failure when not root, and a
//! private bpffs so parallel tests never share pins and nothing outlives them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

/// Panics (never skips) unless we run as root.
pub fn require_root(suite: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{suite} needs root (BPF, network namespaces): run it through `cargo xtask test` as root"
    );
}

/// Whether this kernel has tcx, as the agent's probe finds it.
pub fn kernel_has_tcx() -> bool {
    let (probed, _) = proxy_userspace::dataplane::probe::this_kernel(false)
        .unwrap_or_else(|e| panic!("probing the kernel: {e}"));
    probed.has(proxy_userspace::features::Feature::Tcx)
}

/// A bpffs mounted on a fresh temporary directory; unmounted and removed on drop.
pub struct PrivateBpffs(PathBuf);

impl PrivateBpffs {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{label}-{}-{n}-bpffs", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()?;
        if !status.success() {
            let _ = std::fs::remove_dir(&dir);
            bail!("mount -t bpf bpf {} failed: {status}", dir.display());
        }
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        // Unmounting drops the pins; maps and links die with their last fd.
        match Command::new("umount").arg(&self.0).status() {
            Ok(s) if s.success() => {
                let _ = std::fs::remove_dir(&self.0);
            }
            other => eprintln!("warning: umount {} failed: {other:?}", self.0.display()),
        }
    }
}
