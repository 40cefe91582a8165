//! Socket-level load balancing: cgroup hooks rewrite the address a socket
//! connects (or sends a datagram) to from a frontend to a backend, once per
//! connect instead of per packet, and rewrite the peer back to the frontend
//! where the process can see it (`getpeername`, the source of UDP replies),
//! as Cilium's socket-LB does. Host processes (and hostNetwork pods) need
//! it: their packets never pass the tc programs on pod interfaces. Pods'
//! processes in the hooked cgroup get it too with `--socket-lb all` (the
//! agent sets [`SOCKET_LB_PODS`]): their connections then cost nothing per
//! packet on their interfaces.
//!
//! The rules are the per-packet path's: the same frontends (pod scope),
//! Maglev table, `sessionAffinity: ClientIP` (keyed by the socket's network
//! namespace, as there is no source address yet at connect time), and
//! refusal without endpoints. What a socket cannot decide as the tc path
//! would is left to it, for pods, by not translating: a frontend with
//! `loadBalancerSourceRanges` (the client's address is known only in its
//! packets), a traffic policy `Local` without local endpoints (dropped, as
//! kube-proxy does, not refused), and connected UDP (no hook sees its later
//! datagrams, so a socket pointed at a backend that leaves would stay
//! pointed at it; per packet, a datagram whose backend left is balanced
//! afresh).

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
    maps::{
        FrontendValue, SockAffinityKey, SockRevNatKey, SockRevNatValue, Verdict,
        FRONTEND_EMPTY_DROP, FRONTEND_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
    },
};

use crate::{
    kernel, lookup,
    maps::{SOCK_AFFINITY, SOCK_REVNAT, SOCK_STATS},
    select::{self, Selected},
    stats,
};

/// The cookie of the node's network namespace (the agent's), whose sockets
/// are always translated. 0, what a failed read leaves, matches none.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// Non-zero: sockets of every other network namespace (pods) are
/// translated too (`--socket-lb all`).
#[unsafe(no_mangle)]
static SOCKET_LB_PODS: u32 = 0;

/// Let the syscall go on (with whatever was rewritten).
const PROCEED: i32 = 1;
/// Fail the syscall: EPERM, or the error set with `bpf_set_retval`.
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, Call::Connect)
}

/// Unconnected UDP: each datagram sent to a ClusterIP.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, Call::Send)
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

/// The call a hook runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Connect,
    /// A datagram of an unconnected socket.
    Send,
}

/// connect / sendmsg to a frontend: pick a backend for this socket, point
/// the socket at it and remember the frontend for the way back.
#[inline(always)]
fn to_backend(ctx: &SockAddrContext, call: Call) -> i32 {
    // SAFETY: a sock_addr context is a valid argument for this helper; the
    // globals are read as the loader set them.
    let (netns, from_host, pods) = unsafe {
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        (
            netns,
            netns == core::ptr::read_volatile(&HOST_NETNS_COOKIE),
            core::ptr::read_volatile(&SOCKET_LB_PODS) != 0,
        )
    };
    if !from_host && !pods {
        return PROCEED;
    }
    let Some(proto) = protocol(ctx) else {
        return PROCEED;
    };
    let (vip, port) = user_addr(ctx);
    let Some(frontend) = lookup::pod_frontend_at(vip, port, proto) else {
        return PROCEED;
    };
    if !from_host && left_to_packets(&frontend, proto, call) {
        return PROCEED;
    }
    if frontend.table_size == 0 {
        return refuse();
    }
    let cookie = cookie(ctx);
    let hash = socket_hash(cookie, port);
    let client = || SockAffinityKey {
        frontend_id: frontend.id,
        _pad: 0,
        netns_cookie: netns,
    };
    let Ok(Selected { backend, .. }) = select::choose(&frontend, hash, &SOCK_AFFINITY, client)
    else {
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
    count_socket(frontend.id);
    set_user_addr(ctx, backend.addr, backend.port);
    PROCEED
}

/// What a pod's socket leaves to the per-packet path (see the module's
/// comment): source ranges, a `Local` policy's drop, connected UDP.
#[inline(always)]
fn left_to_packets(frontend: &FrontendValue, proto: u8, call: Call) -> bool {
    frontend.flags & FRONTEND_SOURCE_RANGES != 0
        || (frontend.table_size == 0 && frontend.flags & FRONTEND_EMPTY_DROP != 0)
        || (proto == PROTO_UDP && call == Call::Connect)
}

#[inline(always)]
fn count_socket(frontend_id: u32) {
    if let Some(count) = SOCK_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *count += 1 };
    }
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
    stats::count_verdict(Verdict::RefusedSocket);
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
