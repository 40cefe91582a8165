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
//!
//! Both families: the `*4` hooks for IPv4 sockets, the `*6` hooks for IPv6
//! ones, where an IPv4-mapped address (`::ffff:10.96.0.10`, a dual-stack
//! socket reaching an IPv4 Service) is balanced as the IPv4 frontend it
//! names and the backend written back mapped. (A datagram of an IPv6
//! socket to a mapped address reaches `sendmsg4`, which the kernel runs
//! for it instead of `sendmsg6`; its answers come back through
//! `recvmsg6`, mapped.)

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use proxy_common::{
    addr::Addr6,
    hash::mix,
    kernel::FEATURE_SOCK_ADDR_SET_RETVAL,
    maps::{
        FrontendValue, SockAffinityKey, SockRevNatValueOf, Verdict, FRONTEND_EMPTY_DROP,
        FRONTEND_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
    },
};

use crate::{
    family::Family,
    kernel, lookup,
    maps::{SOCK_AFFINITY, SOCK_STATS},
    monitor,
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
    to_backend4(&ctx, Call::Connect)
}

/// Unconnected UDP: each datagram sent to a ClusterIP.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend4(&ctx, Call::Send)
}

/// UDP replies: the source the process sees.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_backend4(&ctx);
    // recvmsg hooks may not fail the call.
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_backend4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    to_backend6(&ctx, Call::Connect)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend6(&ctx, Call::Send)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_backend6(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    from_backend6(&ctx);
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

/// The IPv6 address in the context, a word at a time as the kernel allows.
#[inline(always)]
fn user_addr6(ctx: &SockAddrContext) -> (Addr6, u16) {
    let mut addr = [0; 4];
    // SAFETY: as for `user_addr`.
    unsafe {
        for (i, word) in addr.iter_mut().enumerate() {
            *word = core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip6[i]);
        }
        let port = core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port);
        (addr, port as u16)
    }
}

#[inline(always)]
fn set_user_addr6(ctx: &SockAddrContext, addr: Addr6, port: u16) {
    // SAFETY: as for `set_user_addr`.
    unsafe {
        for (i, word) in addr.iter().enumerate() {
            core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip6[i], *word);
        }
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, port as u32);
    }
}

/// `::ffff:0:0/96`, network order: the IPv4 address an IPv6 socket names.
#[inline(always)]
fn v4_mapped(addr: Addr6) -> Option<u32> {
    (addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff_u32.to_be()).then_some(addr[3])
}

#[inline(always)]
fn mapped(addr: u32) -> Addr6 {
    [0, 0, 0xffff_u32.to_be(), addr]
}

/// The socket's protocol, if the hooks balance it. Not SCTP: Linux runs no
/// connect or sendmsg hook for an SCTP socket (`sctp_inet_connect`,
/// `sctp_sendmsg`), only getpeername, whose answer is the address the
/// socket really connected to; a pod's SCTP is balanced by its packets on
/// tc instead.
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

#[inline(always)]
fn to_backend4(ctx: &SockAddrContext, call: Call) -> i32 {
    let (vip, port) = user_addr(ctx);
    to_backend(ctx, call, vip, port, |addr, port| {
        set_user_addr(ctx, addr, port)
    })
}

#[inline(always)]
fn to_backend6(ctx: &SockAddrContext, call: Call) -> i32 {
    let (vip, port) = user_addr6(ctx);
    match v4_mapped(vip) {
        Some(vip) => to_backend(ctx, call, vip, port, |addr, port| {
            set_user_addr6(ctx, mapped(addr), port)
        }),
        None => to_backend(ctx, call, vip, port, |addr, port| {
            set_user_addr6(ctx, addr, port)
        }),
    }
}

/// connect / sendmsg to (`vip`, `port`): if a frontend, pick a backend for
/// this socket, point the socket at it (`point`) and remember the frontend
/// for the way back.
#[inline(always)]
fn to_backend<F: Family>(
    ctx: &SockAddrContext,
    call: Call,
    vip: F,
    port: u16,
    point: impl FnOnce(F, u16),
) -> i32 {
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
    let Some(frontend) = lookup::pod_frontend_at(vip, port, proto) else {
        return PROCEED;
    };
    if !from_host && left_to_packets(&frontend, proto, call) {
        return PROCEED;
    }
    if frontend.table_size == 0 {
        stats::count_reject(frontend.id);
        monitor::socket_refused(frontend.id, proto, (vip, port));
        return refuse();
    }
    let cookie = cookie(ctx);
    let hash = socket_hash(cookie, port);
    let client = || SockAffinityKey {
        frontend_id: frontend.id,
        _pad: 0,
        netns_cookie: netns,
    };
    let Ok(Selected::<F> { backend, .. }) = select::choose(&frontend, hash, &SOCK_AFFINITY, client)
    else {
        return refuse();
    };
    let revnat_key = F::sock_revnat_key(cookie, backend.addr, backend.port);
    let revnat = SockRevNatValueOf { vip, port, _pad: 0 };
    // Fail closed: never send a socket where its replies cannot be named
    // back.
    if F::sock_revnat()
        .insert(revnat_key, revnat, BPF_ANY as u64)
        .is_err()
    {
        return refuse();
    }
    count_socket(frontend.id);
    point(backend.addr, backend.port);
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
fn from_backend4(ctx: &SockAddrContext) {
    let (addr, port) = user_addr(ctx);
    if let Some(frontend) = asked_for(ctx, addr, port) {
        set_user_addr(ctx, frontend.vip, frontend.port);
    }
}

#[inline(always)]
fn from_backend6(ctx: &SockAddrContext) {
    let (addr, port) = user_addr6(ctx);
    match v4_mapped(addr) {
        Some(addr) => {
            if let Some(frontend) = asked_for(ctx, addr, port) {
                set_user_addr6(ctx, mapped(frontend.vip), frontend.port);
            }
        }
        None => {
            if let Some(frontend) = asked_for(ctx, addr, port) {
                set_user_addr6(ctx, frontend.vip, frontend.port);
            }
        }
    }
}

/// The frontend this socket asked for when it was pointed at `backend`.
#[inline(always)]
fn asked_for<F: Family>(
    ctx: &SockAddrContext,
    backend: F,
    port: u16,
) -> Option<SockRevNatValueOf<F>> {
    let key = F::sock_revnat_key(cookie(ctx), backend, port);
    // SAFETY: the value is copied out at once.
    unsafe { F::sock_revnat().get(key).copied() }
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
