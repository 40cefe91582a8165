//! kxdp userspace: the agent that keeps the BPF maps in sync with Kubernetes
//! Services, and the `kxdp` CLI.
//!
//! Data flows source → model → plan → sync → dataplane (docs/ARCHITECTURE.md, "Data flow").

pub mod admin;
pub mod allocator;
pub mod cidr;
pub mod cli;
pub mod commands;
pub mod dataplane;
pub mod ebpf_object;
pub mod features;
pub mod frontend_text;
pub mod health_check;
pub mod http;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod pipeline;
pub mod plan;
pub mod source;
pub mod sync;
