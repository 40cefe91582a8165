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

/// The address family a pod path is measured in: the same paths, the same
/// roles of addresses, in either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// `addr` in the family's test network: IPv4 as is, IPv6 as
    /// fd00::<the IPv4 address's bytes>.
    fn addr(self, addr: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => addr.into(),
            Family::V6 => {
                let [a, b, c, d] = addr.octets();
                let words = [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])];
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, words[0], words[1]).into()
            }
        }
    }

    pub(crate) fn at(self, v4: SocketAddrV4) -> SocketAddr {
        SocketAddr::new(self.addr(*v4.ip()), v4.port())
    }

    pub(crate) fn client(self, port: u16) -> SocketAddr {
        self.at(client(port))
    }

    pub(crate) fn vip(self) -> SocketAddr {
        self.at(VIP)
    }

    pub(crate) fn backend(self) -> SocketAddr {
        self.at(BACKEND)
    }

    /// A row's label in this family: IPv4's as it always was.
    pub(crate) fn label(self, label: &str) -> String {
        match self {
            Family::V4 => label.to_string(),
            Family::V6 => format!("IPv6 {label}"),
        }
    }
}

/// `frame` padded to the Ethernet minimum (IPv6 frames are longer already).
pub(crate) fn pad(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < FRAME_LEN {
        frame.resize(FRAME_LEN, 0);
    }
    frame
}

/// A minimum-size TCP SYN frame.
pub(crate) fn syn(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    pad(Packet::tcp(src, dst).payload(b"").build())
}

/// A minimum-size TCP frame with `flags`.
pub(crate) fn tcp_with_flags(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    flags: u8,
) -> Vec<u8> {
    pad(Packet::tcp(src, dst).payload(b"").tcp_flags(flags).build())
}

/// A minimum-size TCP SYN-ACK frame (what a backend answers).
pub(crate) fn syn_ack(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    tcp_with_flags(src, dst, TCP_SYN | TCP_ACK)
}

/// An SCTP INIT frame (66 bytes: over the Ethernet minimum already).
pub(crate) fn sctp_init(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Vec<u8> {
    Packet::sctp(src, dst).build()
}

/// An SCTP frame of one DATA chunk whose value is `value_len` bytes, padded
/// to the Ethernet minimum. Its verification tag is arbitrary: the datapath
/// does not read it.
pub(crate) fn sctp_data(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    value_len: usize,
) -> Vec<u8> {
    let value: Vec<u8> = (0..value_len).map(|i| i as u8).collect();
    pad(Packet::sctp(src, dst)
        .sctp_chunk(SCTP_DATA, 0x2468_ace0)
        .payload(&value)
        .build())
}
