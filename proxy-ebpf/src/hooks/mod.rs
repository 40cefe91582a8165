//! The programs, one file per hook, each reading top to bottom as the path
//! a packet takes; the concerns they use (parsing, the load-balancing core,
//! conntrack, NAT, forwarding, reject, counters) sit beside this folder.

pub mod nic_ingress;
pub mod pod_egress;
pub mod pod_ingress;
pub mod socket_lb;
