//! What the datapath needs from the kernel beyond the oldest one it runs on
//! (Linux 5.10), as bits of the `KXDP_FEATURES` global the agent sets at
//! load time from its probes, and the datapath's clock.
//!
//! Each bit switches a branch of the object: the global sits in frozen
//! read-only data, so the verifier knows its value and drops the branch not
//! taken, helper calls the kernel does not have included.

/// `bpf_ktime_get_coarse_ns` (Linux 5.11): stamp conntrack, affinity and
/// SNAT entries from the coarse clock. Without it: `bpf_ktime_get_ns`, the
/// same seconds read a little more dearly.
pub const FEATURE_KTIME_COARSE: u32 = 1 << 0;
/// `bpf_set_retval` in cgroup `sock_addr` programs (Linux 6.1): a connect
/// to a Service without endpoints fails with ECONNREFUSED. Without it: with
/// EPERM, the error a refusing cgroup program gives.
pub const FEATURE_SOCK_ADDR_SET_RETVAL: u32 = 1 << 1;

/// Where the datapath's clock (whole seconds, `u32`) starts at boot: the
/// kernel's monotonic clock plus this. Entries are stamped with it; starting
/// far from zero lets an age of hours or days (and a test's back-dated
/// entry) be written on a machine booted a minute ago. It wraps after
/// 130 years of uptime.
pub const CLOCK_START_S: u32 = 1 << 24;

/// The datapath's clock for a reading of the kernel's monotonic clock in
/// nanoseconds.
#[inline(always)]
pub const fn clock_s(monotonic_ns: u64) -> u32 {
    (monotonic_ns / 1_000_000_000) as u32 + CLOCK_START_S
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_far_from_zero_and_counts_seconds() {
        assert_eq!(clock_s(0), CLOCK_START_S);
        assert_eq!(clock_s(999_999_999), CLOCK_START_S);
        assert_eq!(clock_s(7_200_000_000_000), CLOCK_START_S + 7_200);
        // Two hours back is there a second after boot.
        assert!(clock_s(1_000_000_000).checked_sub(7_200).is_some());
    }
}
