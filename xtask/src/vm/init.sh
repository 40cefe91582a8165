#!/bin/busybox sh
# PID 1 of the kxdp test VM (`cargo xtask vm-test`): mounts what the suites
# expect of a host, runs what /run.sh says (every suite under /suites, or
# with --bench the benchmark), prints one result line and powers off. The
# xtask reads the result line; no line means failure.
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
# Under emulation (TCG) everything is many times slower: the suites' bounds
# on waiting (for the agent's sync, a server's start) grow fivefold.
export KXDP_TEST_PATIENCE=5
# The fuzzing suite's frames a program: its run is one test-run syscall and
# a model step a frame, which emulation slows most; the host runs 50,000
# and `cargo xtask fuzz` a million.
export KXDP_FUZZ_FRAMES=20000
# The control-plane fault suites' Services (the host: 10,000 each) and
# changes a second (the host: 100): what they check does not depend on
# them, and emulation slows the agent's syncs and the suites' readings of
# the maps ten to twenty times.
export KXDP_FAULT_SERVICES=2000
export KXDP_FAULT_RATE=20
export KXDP_KILL_SERVICES=2000
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# No tmpfs on /tmp: the initramfs is writable already, and the programs the
# suites start sit at their build paths, which may be under /tmp.
ip link set lo up
echo "kxdp-vm: booted $(uname -r)"
# The xtask's KVM probe only needs to know that the kernel gets this far.
if grep -qw kxdp.probe /proc/cmdline; then
    poweroff -f
fi
status=0
# Modules the kernel builds as modules, numbered so that each comes after
# those it depends on.
for module in /lib/modules/*.ko; do
    [ -e "$module" ] || continue
    insmod "$module" || status=1
done
run_suite() {
    suite=$1
    shift
    echo "kxdp-vm: running $suite $*"
    "/suites/$suite" "$@" || status=1
}
. /run.sh
echo "kxdp-vm: exit status $status"
poweroff -f
