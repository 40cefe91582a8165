//! The kernel features kxdp uses beyond what every kernel it supports has
//! (Linux 5.10 and newer), what each one's absence means, and what to load
//! given a probe's findings. Pure: `dataplane::probe` asks the kernel.
//!
//! kxdp decides by what loads, never by the kernel's version (a
//! distribution kernel may carry features of a later release). The first
//! kernel named for each is the upstream release that brought it, for the
//! README and for messages.

use proxy_common::kernel::{FEATURE_KTIME_COARSE, FEATURE_SOCK_ADDR_SET_RETVAL};

use crate::cli::SocketLb;

/// A probed kernel feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Feature {
    /// `bpf_redirect_neigh` in tc programs: replies to NodePort clients
    /// leave through the FIB's interface with the neighbour resolved.
    RedirectNeigh,
    /// `BPF_F_MMAPABLE` arrays: the Maglev arena, written through `mmap`.
    MmapableArrays,
    /// `BPF_MAP_UPDATE_BATCH`: a full sync's entries written in few calls.
    MapBatchOps,
    /// The cgroup `sock_addr` hooks of socket-level balancing (connect,
    /// sendmsg, recvmsg and getpeername of each family, the last in 5.8).
    SocketHooks,
    /// `bpf_ktime_get_coarse_ns` in tc and XDP programs.
    KtimeCoarse,
    /// `bpf_set_retval` in cgroup `sock_addr` programs.
    SockAddrSetRetval,
    /// tcx links for the pod programs.
    Tcx,
    /// `SO_NETNS_COOKIE`: the agent reads its network namespace's cookie,
    /// which the socket hooks compare with.
    NetnsCookieOption,
}

impl Feature {
    /// Every feature, in the order they are probed and listed.
    pub const ALL: [Feature; 8] = [
        Feature::RedirectNeigh,
        Feature::MmapableArrays,
        Feature::MapBatchOps,
        Feature::SocketHooks,
        Feature::KtimeCoarse,
        Feature::SockAddrSetRetval,
        Feature::NetnsCookieOption,
        Feature::Tcx,
    ];

    /// Its name in logs and `kxdp status`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::RedirectNeigh => "bpf_redirect_neigh",
            Feature::MmapableArrays => "BPF_F_MMAPABLE",
            Feature::MapBatchOps => "map batch ops",
            Feature::SocketHooks => "cgroup sock_addr hooks",
            Feature::KtimeCoarse => "bpf_ktime_get_coarse_ns",
            Feature::SockAddrSetRetval => "bpf_set_retval in sock_addr",
            Feature::Tcx => "tcx",
            Feature::NetnsCookieOption => "SO_NETNS_COOKIE",
        }
    }

    /// The upstream release that brought it.
    pub fn first_kernel(self) -> &'static str {
        match self {
            Feature::RedirectNeigh => "5.10",
            Feature::MmapableArrays => "5.5",
            Feature::MapBatchOps => "5.6",
            Feature::SocketHooks => "5.8",
            Feature::KtimeCoarse => "5.11",
            Feature::SockAddrSetRetval => "6.1",
            Feature::Tcx => "6.6",
            Feature::NetnsCookieOption => "5.14",
        }
    }

    /// What kxdp does without it.
    pub fn without(self) -> &'static str {
        match self {
            Feature::RedirectNeigh | Feature::MmapableArrays | Feature::MapBatchOps => {
                "required: the datapath cannot load (kxdp needs Linux 5.10 or newer)"
            }
            Feature::SocketHooks => {
                "no socket-level balancing: host processes do not reach ClusterIPs (pods still do)"
            }
            Feature::KtimeCoarse => {
                "entries are stamped from bpf_ktime_get_ns instead (the same seconds, read a little more dearly)"
            }
            Feature::SockAddrSetRetval => {
                "a host process connecting to a Service without endpoints gets EPERM instead of ECONNREFUSED"
            }
            Feature::Tcx => {
                "pod programs are attached as classic tc filters of a clsact qdisc instead of tcx links"
            }
            Feature::NetnsCookieOption => {
                "the node's network namespace cookie is learnt by a program attached for a moment to the agent's own cgroup (needs a cgroup2 mount it can see)"
            }
        }
    }

    fn required(self) -> bool {
        matches!(
            self,
            Feature::RedirectNeigh | Feature::MmapableArrays | Feature::MapBatchOps
        )
    }
}

/// What a probe found: each feature and whether the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Probed(pub Vec<(Feature, bool)>);

impl Probed {
    pub fn has(&self, feature: Feature) -> bool {
        self.0.iter().any(|&(f, present)| f == feature && present)
    }

    pub fn missing(&self) -> impl Iterator<Item = Feature> + '_ {
        self.0.iter().filter(|(_, p)| !p).map(|&(f, _)| f)
    }
}

/// What to load and how, decided from the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loadout {
    /// `KXDP_FEATURES` for the object (`proxy_common::kernel`).
    pub datapath_bits: u32,
    /// Whose sockets the cgroup socket hooks translate (`Off`: the hooks
    /// are not loaded).
    pub socket_lb: SocketLb,
    /// Attach the pod programs as classic tc filters.
    pub classic_tc: bool,
    /// Read the network namespace cookie with `SO_NETNS_COOKIE` (else
    /// learn it).
    pub netns_cookie_option: bool,
}

/// The kernel lacks what every supported kernel has.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("this kernel lacks {}: kxdp needs Linux 5.10 or newer", names(.0))]
pub struct TooOld(pub Vec<Feature>);

fn names(features: &[Feature]) -> String {
    features
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.first_kernel()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The loadout for `probed`; `classic_tc_asked`: `--pod-attach tc`.
pub fn loadout(probed: &Probed, classic_tc_asked: bool) -> Result<Loadout, TooOld> {
    let too_old: Vec<Feature> = probed.missing().filter(|f| f.required()).collect();
    if !too_old.is_empty() {
        return Err(TooOld(too_old));
    }
    let mut datapath_bits = 0;
    if probed.has(Feature::KtimeCoarse) {
        datapath_bits |= FEATURE_KTIME_COARSE;
    }
    if probed.has(Feature::SockAddrSetRetval) {
        datapath_bits |= FEATURE_SOCK_ADDR_SET_RETVAL;
    }
    Ok(Loadout {
        datapath_bits,
        socket_lb: if probed.has(Feature::SocketHooks) {
            SocketLb::All
        } else {
            SocketLb::Off
        },
        classic_tc: classic_tc_asked || !probed.has(Feature::Tcx),
        netns_cookie_option: probed.has(Feature::NetnsCookieOption),
    })
}

impl Loadout {
    /// This loadout with the socket hooks serving whom `--socket-lb` asks,
    /// where the kernel has them.
    pub fn with_socket_lb(self, asked: SocketLb) -> Self {
        match self.socket_lb {
            SocketLb::Off => self,
            _ => Self {
                socket_lb: asked,
                ..self
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(missing: &[Feature]) -> Probed {
        Probed(
            Feature::ALL
                .iter()
                .map(|&f| (f, !missing.contains(&f)))
                .collect(),
        )
    }

    #[test]
    fn a_kernel_with_everything_gets_every_datapath_feature_and_tcx() {
        assert_eq!(
            loadout(&probed(&[]), false),
            Ok(Loadout {
                datapath_bits: FEATURE_KTIME_COARSE | FEATURE_SOCK_ADDR_SET_RETVAL,
                socket_lb: SocketLb::All,
                classic_tc: false,
                netns_cookie_option: true,
            })
        );
        assert!(loadout(&probed(&[]), true).unwrap().classic_tc);
    }

    #[test]
    fn a_5_10_kernel_degrades_the_clock_the_refusal_error_and_the_attach() {
        let on_5_10 = probed(&[
            Feature::KtimeCoarse,
            Feature::SockAddrSetRetval,
            Feature::NetnsCookieOption,
            Feature::Tcx,
        ]);
        assert_eq!(
            loadout(&on_5_10, false),
            Ok(Loadout {
                datapath_bits: 0,
                socket_lb: SocketLb::All,
                classic_tc: true,
                netns_cookie_option: false,
            })
        );
    }

    #[test]
    fn without_socket_hooks_only_they_are_left_out() {
        let out = loadout(&probed(&[Feature::SocketHooks]), false).unwrap();
        assert_eq!(out.socket_lb, SocketLb::Off);
        assert_eq!(out.with_socket_lb(SocketLb::Host).socket_lb, SocketLb::Off);
        assert!(!out.classic_tc);
        assert_ne!(out.datapath_bits, 0);
    }

    #[test]
    fn socket_lb_is_what_was_asked_where_the_kernel_has_the_hooks() {
        let full = loadout(&probed(&[]), false).unwrap();
        for asked in [SocketLb::All, SocketLb::Host, SocketLb::Off] {
            assert_eq!(full.with_socket_lb(asked).socket_lb, asked);
        }
    }

    #[test]
    fn a_kernel_older_than_5_10_is_refused_naming_what_it_lacks() {
        let err = loadout(
            &probed(&[Feature::RedirectNeigh, Feature::KtimeCoarse]),
            false,
        )
        .unwrap_err();
        assert_eq!(err, TooOld(vec![Feature::RedirectNeigh]));
        assert!(err.to_string().contains("bpf_redirect_neigh (5.10)"));
    }

    #[test]
    fn every_feature_is_listed_once_with_a_kernel_and_a_consequence() {
        for (i, f) in Feature::ALL.iter().enumerate() {
            assert!(!Feature::ALL[i + 1..].contains(f), "{f:?} twice");
            assert!(f
                .first_kernel()
                .trim_start_matches('≤')
                .starts_with(['5', '6']));
            assert!(!f.without().is_empty());
        }
    }
}
