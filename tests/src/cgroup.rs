//! A cgroup of the test's own for the agent's socket hooks: attaching them
//! to the machine's root cgroup would translate every process on it.
//!
//! cgroup2 is mounted afresh on a temporary directory (`ip netns exec`
//! remounts /sys, hiding /sys/fs/cgroup from the agent and the clients), and
//! a child cgroup made there. Processes join it by writing their pid to its
//! `cgroup.procs`. On drop the child is removed once its processes are gone
//! (bounded wait), then the mount.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::netns::command;

pub struct TestCgroup {
    mount: PathBuf,
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{label}-{}-{n}", std::process::id());
        let mount = std::env::temp_dir().join(format!("{unique}-cgroup2"));
        std::fs::create_dir_all(&mount).with_context(|| format!("mkdir {}", mount.display()))?;
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "cgroup2"])
            .arg(&mount)
            .status()?;
        if !status.success() {
            let _ = std::fs::remove_dir(&mount);
            bail!(
                "mount -t cgroup2 cgroup2 {} failed: {status}",
                mount.display()
            );
        }
        let path = mount.join(format!("kxdp-test-{unique}"));
        if let Err(e) = std::fs::create_dir(&path) {
            let _ = Command::new("umount").arg(&mount).status();
            let _ = std::fs::remove_dir(&mount);
            return Err(e).with_context(|| format!("mkdir {}", path.display()));
        }
        Ok(Self { mount, path })
    }

    /// The cgroup's directory, as `--cgroup-path` takes it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `argv` run in `netns` from inside this cgroup (it joins, then execs).
    pub fn command(&self, netns: &str, argv: &[&str]) -> Command {
        let mut command = command(netns, "sh");
        let join = format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            self.path.display()
        );
        command.args(["-c", &join, "sh"]).args(argv);
        command
    }

    /// Runs `argv` in `netns` inside this cgroup; its output whatever the status.
    pub fn output(&self, netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.command(netns, argv);
        command
            .output()
            .with_context(|| format!("spawning {command:?}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // rmdir fails with EBUSY while a process is still in the cgroup.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && self.path.exists() {
            if Instant::now() > deadline {
                eprintln!("warning: cannot remove cgroup {}", self.path.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match Command::new("umount").arg(&self.mount).status() {
            Ok(s) if s.success() => {
                let _ = std::fs::remove_dir(&self.mount);
            }
            other => eprintln!("warning: umount {} failed: {other:?}", self.mount.display()),
        }
    }
}
