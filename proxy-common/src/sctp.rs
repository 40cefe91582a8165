//! What the datapath reads of an SCTP packet (RFC 9260): its common header
//! (ports, verification tag, CRC32c) and the type of its first chunk, no
//! more. Chunks are not interpreted beyond that type, which the
//! load-balancing rules read as they read a TCP segment's flags.

use crate::lb::{TCP_ACK, TCP_RST, TCP_SYN};

/// The common header: ports, verification tag, checksum.
pub const COMMON_HLEN: usize = 12;
/// Where the checksum sits in it.
pub const CHECKSUM_OFF: usize = 8;
/// The common header and the first chunk's header (type, flags, length):
/// what a packet must hold to be read.
pub const MIN_LEN: usize = COMMON_HLEN + 4;

pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_ABORT: u8 = 6;
pub const CHUNK_SHUTDOWN_COMPLETE: u8 = 14;
/// The ABORT chunk's T bit: its verification tag is the receiver's own,
/// reflected (RFC 9260 §3.3.7).
pub const ABORT_T_BIT: u8 = 1;

/// The TCP flags the rules read for a packet whose first chunk is of type
/// `chunk`: an INIT opens an association as a SYN opens a connection (a
/// new flow, balanced afresh); an ABORT or a SHUTDOWN COMPLETE ends it
/// as a RST does (its conntrack entry is marked closing, and it is never
/// answered); any other chunk belongs to an association.
#[inline(always)]
pub const fn as_tcp_flags(chunk: u8) -> u8 {
    match chunk {
        CHUNK_INIT => TCP_SYN,
        CHUNK_ABORT | CHUNK_SHUTDOWN_COMPLETE => TCP_RST,
        _ => TCP_ACK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::Packet;
    use crate::maps::PROTO_SCTP;

    #[test]
    fn only_an_init_opens_an_association() {
        for chunk in 0..=255u8 {
            let packet = Packet {
                proto: PROTO_SCTP,
                tcp_flags: as_tcp_flags(chunk),
            };
            assert_eq!(packet.opens_connection(), chunk == CHUNK_INIT, "{chunk}");
            assert_eq!(
                packet.tcp_flags & TCP_RST != 0,
                chunk == CHUNK_ABORT || chunk == CHUNK_SHUTDOWN_COMPLETE,
                "{chunk}"
            );
        }
    }
}
