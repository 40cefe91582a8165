//! Host-originated traffic (processes on the node, hostNetwork pods): their
//! packets never pass the tc programs on pod interfaces, so the translation
//! happens at the socket, as Cilium's socket-LB does. cgroup hooks rewrite
//! the address a socket connects (or sends a datagram) to from a ClusterIP to
//! a backend, once per connect instead of per packet, and rewrite the peer
//! back to the ClusterIP where the process can see it (`getpeername`, the
//! source of UDP replies).
//!
//! Only sockets of the node's network namespace are translated (the agent
//! sets [`HOST_NETNS_COOKIE`] at load time): pods are served by the tc
//! programs on their interfaces, with session affinity and counters, even
//! when their processes are in the hooked cgroup (the cgroup2 root by
//! default holds every process on the node).
//!
//! Per socket, not per client: there is no client address yet at connect
//! time, so `sessionAffinity: ClientIP` is not honoured here.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use proxy_common::{
    hash::mix,
    kernel::FEATURE_SOCK_ADDR_SET_RETVAL,
    maps::{FrontendKey, SockRevNatKey, SockRevNatValue, PROTO_TCP, PROTO_UDP, SCOPE_POD},
};

use crate::{
    kernel,
    maps::{BACKENDS, FRONTENDS, SOCK_REVNAT},
    select::table_entry,
};

/// The cookie of the network namespace whose sockets are translated: the
/// agent's (the node's). 0, what a failed read leaves, matches none.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// Let the syscall go on (with whatever was rewritten).
const PROCEED: i32 = 1;
/// Fail the syscall: EPERM, or the error set with `bpf_set_retval`.
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

/// Unconnected UDP: each datagram sent to a ClusterIP.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

/// UDP replies: the source the process sees.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    // recvmsg hooks may not fail the call.
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    PROCEED
}

/// The address in the context, network order: the kernel reads and writes
/// these fields as whole 32-bit words (the port in the low 16 bits), so each
/// is accessed on its own, volatile, never merged with its neighbours.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> (u32, u16) {
    // SAFETY: the context pointer is valid for the program run.
    unsafe {
        let addr = core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip4);
        let port = core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port);
        (addr, port as u16)
    }
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, addr: u32, port: u16) {
    // SAFETY: as above; these fields are writable in connect, sendmsg,
    // recvmsg and getpeername hooks.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, addr);
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, port as u32);
    }
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: as above.
    let proto = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).protocol) };
    match proto as u8 {
        PROTO_TCP => Some(PROTO_TCP),
        PROTO_UDP => Some(PROTO_UDP),
        _ => None,
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a sock_addr context is a valid argument for this helper.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// connect / sendmsg to a ClusterIP: pick a backend for this socket, point
/// the socket at it and remember the ClusterIP for the way back.
#[inline(always)]
fn to_backend(ctx: &SockAddrContext) -> i32 {
    // SAFETY: a sock_addr context is a valid argument for this helper; the
    // global is read as the loader set it.
    let in_host_netns = unsafe {
        bpf_get_netns_cookie(ctx.as_ptr()) == core::ptr::read_volatile(&HOST_NETNS_COOKIE)
    };
    if !in_host_netns {
        return PROCEED;
    }
    let Some(proto) = protocol(ctx) else {
        return PROCEED;
    };
    let (vip, port) = user_addr(ctx);
    let key = FrontendKey {
        addr: vip,
        port,
        proto,
        scope: SCOPE_POD,
    };
    // SAFETY: the value is copied out at once.
    let Some(frontend) = (unsafe { FRONTENDS.get(key).copied() }) else {
        return PROCEED;
    };
    if frontend.table_size == 0 {
        return refuse();
    }
    let cookie = cookie(ctx);
    let Some((backend_id, _)) = table_entry(frontend.id, socket_hash(cookie, port)) else {
        return refuse();
    };
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id).copied() }) else {
        return refuse();
    };
    let revnat_key = SockRevNatKey {
        cookie,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: 0,
    };
    let revnat = SockRevNatValue { vip, port, _pad: 0 };
    // Fail closed: never send a socket where its replies cannot be named
    // back.
    if SOCK_REVNAT
        .insert(revnat_key, revnat, BPF_ANY as u64)
        .is_err()
    {
        return refuse();
    }
    set_user_addr(ctx, backend.addr, backend.port);
    PROCEED
}

/// recvmsg / getpeername: a backend this socket was pointed at shows as the
/// ClusterIP it asked for.
#[inline(always)]
fn from_backend(ctx: &SockAddrContext) {
    let (addr, port) = user_addr(ctx);
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        backend_addr: addr,
        backend_port: port,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(frontend) = unsafe { SOCK_REVNAT.get(key).copied() } {
        set_user_addr(ctx, frontend.vip, frontend.port);
    }
}

/// A frontend without backends: the connect fails with ECONNREFUSED, as a
/// TCP RST would make it (a UDP send fails the same way). Kernels before
/// 6.1 cannot set the error from these hooks: there it is EPERM, as with
/// Cilium's socket-LB on such kernels.
#[inline(always)]
fn refuse() -> i32 {
    if kernel::has(FEATURE_SOCK_ADDR_SET_RETVAL) {
        // SAFETY: plain helper call; the kernel keeps EPERM if it fails.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
    REFUSE
}

/// Spreads sockets over the slots: the cookie is unique per socket, so one
/// socket keeps its backend (a UDP socket sending many datagrams) while
/// sockets spread.
#[inline(always)]
fn socket_hash(cookie: u64, port: u16) -> u32 {
    let h = mix(cookie as u32 ^ 0x9e37_79b9);
    mix(h ^ (cookie >> 32) as u32 ^ ((port as u32) << 16))
}
