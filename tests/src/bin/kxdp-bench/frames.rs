//! Part 1: the test frames, addresses and flow keys.

use super::*;

pub(crate) const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

pub(crate) const CLIENT: Ipv4Addr = ip(10, 0, 1, 5);
pub(crate) const VIP: SocketAddrV4 = SocketAddrV4::new(ip(10, 96, 0, 10), 80);
pub(crate) const BACKEND: SocketAddrV4 = SocketAddrV4::new(ip(10, 0, 2, 1), 8080);
pub(crate) const NOT_A_SERVICE: SocketAddrV4 = SocketAddrV4::new(ip(10, 0, 9, 9), 80);
/// Not a Service either, on a port no frontend or backend uses: the port
/// filter (`PORT_ROLES`) spares it every lookup.
pub(crate) const NO_SERVICE_PORT: SocketAddrV4 = SocketAddrV4::new(ip(10, 0, 9, 9), 5201);
/// Frame length: Ethernet + IPv4 + TCP with no payload is 54 bytes; padded
/// to the Ethernet minimum of 60 (64 on the wire with the FCS).
pub(crate) const FRAME_LEN: usize = 60;
/// Room for the output frame; nothing here grows packets.
pub(crate) const OUT_SLACK: usize = 256;
pub(crate) const XDP_PASS: u32 = 2;

pub(crate) fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

pub(crate) fn pad(mut frame: Vec<u8>) -> Vec<u8> {
    assert!(frame.len() <= FRAME_LEN);
    frame.resize(FRAME_LEN, 0);
    frame
}

/// A minimum-size TCP SYN frame.
pub(crate) fn syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    pad(Packet::tcp(src, dst).payload(b"").build())
}

/// A minimum-size TCP frame with `flags`.
pub(crate) fn tcp_with_flags(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    pad(Packet::tcp(src, dst).payload(b"").tcp_flags(flags).build())
}

/// A minimum-size TCP SYN-ACK frame (what a backend answers).
pub(crate) fn syn_ack(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    tcp_with_flags(src, dst, TCP_SYN | TCP_ACK)
}

pub(crate) fn flow_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: addr_to_net(*src.ip()),
        dst_addr: addr_to_net(*dst.ip()),
        src_port: port_to_net(src.port()),
        dst_port: port_to_net(dst.port()),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}
