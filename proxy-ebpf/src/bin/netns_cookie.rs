//! Learns the cookie of the agent's network namespace on kernels without
//! `SO_NETNS_COOKIE` (before 5.14): the agent attaches this program to its
//! own cgroup for a moment and opens one UDP-Lite socket, an AF_INET
//! socket nothing else on a node opens, whose creation this program
//! records. The socket hooks then translate sockets of that namespace only.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock, macros::map, maps::Array,
    programs::SockContext, EbpfContext as _,
};

const AF_INET: u32 = 2;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_UDPLITE: u32 = 136;

/// Entry 0: the cookie of the namespace the marker socket was made in.
#[map]
static NETNS_COOKIE: Array<u64> = Array::with_max_entries(1, 0);

#[cgroup_sock(sock_create)]
pub fn learn_netns_cookie(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program run; each field
    // is read as a 32-bit word of its own, as the verifier requires.
    let (family, kind, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.sock).family),
            core::ptr::read_volatile(&raw const (*ctx.sock).type_),
            core::ptr::read_volatile(&raw const (*ctx.sock).protocol),
        )
    };
    if (family, kind, protocol) == (AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE) {
        // SAFETY: a sock context is a valid argument for this helper.
        let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        if let Some(slot) = NETNS_COOKIE.get_ptr_mut(0) {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { *slot = cookie };
        }
    }
    // Never refuse a socket.
    1
}

#[path = "../object_runtime.rs"]
mod object_runtime;
