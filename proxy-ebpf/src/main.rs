//! kxdp datapath: Kubernetes Service translation in eBPF.
//!
//! One module per concern (DESIGN.md §2); `pod_ingress` and `pod_egress` are
//! the tcx programs on the host side of every pod interface (packets leaving
//! and entering the pod) and read top to bottom as the path a packet takes.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod lookup;
mod maps;
mod nat;
mod object_runtime;
mod parse;
mod pod_egress;
mod pod_ingress;
mod select;
mod stats;
