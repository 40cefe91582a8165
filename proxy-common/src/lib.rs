//! Map types shared by the eBPF programs and the userspace agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on
//! the layout byte for byte; with the `user` feature, `bytemuck::Pod` is derived,
//! which refuses to compile if a hidden padding byte sneaks in.
//!
//! Addresses and ports are kept in network byte order, exactly as they sit in
//! the packet, so the datapath never swaps bytes.
#![no_std]

pub mod addr;
pub mod crc32c;
pub mod csum;
pub mod hash;
pub mod kernel;
pub mod lb;
pub mod maps;
pub mod reject;
pub mod sctp;
pub mod sizes;
