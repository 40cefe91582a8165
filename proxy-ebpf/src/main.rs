//! kxdp datapath: Kubernetes Service translation in eBPF.
//!
//! One module per concern (DESIGN.md §2); `pod_ingress` and `pod_egress` are
//! the tcx programs on the host side of every pod interface (packets leaving
//! and entering the pod), `nic_ingress` the XDP program on the node's NICs;
//! each reads top to bottom as the path a packet takes. `socket_lb` holds
//! the cgroup socket hooks that translate host-originated connections.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod forward;
mod kernel;
mod lookup;
mod maps;
mod nat;
mod nic_ingress;
mod object_runtime;
mod parse;
mod pod_egress;
mod pod_ingress;
mod reject;
mod select;
mod snat;
mod socket_lb;
mod stats;
