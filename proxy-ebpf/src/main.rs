//! kxdp datapath: Kubernetes Service translation in eBPF.
//!
//! The programs, one per hook, are in `hooks/`: `pod_ingress` and
//! `pod_egress` are the tcx programs on the host side of every pod
//! interface (packets leaving and entering the pod), `nic_ingress` the XDP
//! program on the node's NICs, `socket_lb` the cgroup socket hooks for
//! host-originated connections. Beside them, one module per concern; the
//! packet hooks decide through the load-balancing core (`lb`, over
//! `proxy_common::lb`). docs/ARCHITECTURE.md maps it all.
#![no_std]
#![no_main]
// The BPF target has atomic loads and stores only; a shared counter
// needs the atomic add the instruction set has (`stats::count_reject`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod conntrack;
mod family;
mod forward;
mod hooks;
mod kernel;
mod lb;
mod lookup;
mod maps;
mod monitor;
mod nat;
mod object_runtime;
mod parse;
mod reject;
mod select;
mod snat;
mod stats;
