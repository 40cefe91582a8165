//! The agent mounts bpffs at /sys/fs/bpf when nothing is mounted there, and
//! `kxdp services` then finds the maps at the default pin path. Runs in a
//! private mount namespace (`unshare -m`), so the host's mounts are untouched
//! and the pins vanish with the namespace.

use std::process::Command;

use kxdp_testbed::{
    agent::kxdp_bin, cgroup::TestCgroup, manifests::ECHO_SERVICE, privileged::require_root,
};

/// Inside the private namespace: unmount any bpffs, start the agent (bounded
/// by `timeout`), wait (bounded) for its maps, list services, stop it.
const SCRIPT: &str = r#"
set -u
umount /sys/fs/bpf 2>/dev/null
mountpoint -q /sys/fs/bpf && { echo "bpffs still mounted"; exit 3; }
timeout 20 "$KXDP" agent --manifests "$MANIFESTS" --pod-interfaces 'kxdp-no-such-if*' --rescan-ms 100 --cgroup-path "$CGROUP" 2>"$LOG" &
agent=$!
for _ in $(seq 1 200); do grep -q "synced" "$LOG" && break; sleep 0.05; done
"$KXDP" services
status=$?
kill -TERM "$agent"; wait "$agent"
mountpoint -q /sys/fs/bpf && echo "bpffs mounted"
exit $status
"#;

#[test]
fn agent_mounts_bpffs_and_services_reads_the_default_pin_path() {
    require_root("the bpffs test");
    let dir = std::env::temp_dir().join(format!("kxdp-bpffs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let service = ECHO_SERVICE.replace("spec:\n", "spec:\n  clusterIP: 10.96.7.7\n");
    std::fs::write(dir.join("service.yaml"), service).unwrap();
    let log = dir.join("agent.log");
    // The agent runs in the host's network namespace: its socket hooks go
    // on a cgroup of ours, never the machine's root.
    let cgroup = TestCgroup::new("kxdp-bpffs-test").unwrap();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .env("KXDP", kxdp_bin())
        .env("MANIFESTS", &dir)
        .env("LOG", &log)
        .env("CGROUP", cgroup.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{stdout}\n{}\n{agent_log}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        agent_log.contains("bpffs is not mounted; mounting it at /sys/fs/bpf"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("pin_path=/sys/fs/bpf/kxdp"),
        "{agent_log}"
    );
    assert!(
        stdout.contains("10.96.7.7:80/TCP") && stdout.contains("10.96.7.7:53/UDP"),
        "{stdout}"
    );
    assert!(stdout.contains("bpffs mounted"), "{stdout}");
}
