//! Part 5's traffic source, where the kernel has no pktgen and refuses
//! BPF_PROG_TEST_RUN's live frames (EPERM here): frames written from
//! userspace to an AF_PACKET socket that hands them straight to the
//! device's transmit (PACKET_QDISC_BYPASS), a batch per sendmmsg call. On a
//! veth the frame is then received by its peer on the same CPU, as pktgen
//! would deliver it, and the softirqs that carry it on run as the sender
//! goes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use proxy_common::csum::replace_u16;

use super::*;

/// Frames per sendmmsg call.
pub(crate) const SEND_BATCH: usize = 256;
/// Where the fields a new flow changes sit in an Ethernet + IPv4 (no
/// options) + TCP frame.
const IP_CSUM: usize = 24;
/// The source address's low 16 bits.
const SRC_ADDR_LOW: usize = 28;
const SRC_PORT: usize = 34;
const TCP_CSUM: usize = 50;
/// New flows take source ports from 1024 on, then the next source address.
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 60_000;
/// Source addresses after the template's, in its last byte: a template's
/// source address ends in a byte below 128, so the byte never carries.
const HOSTS: u32 = 128;
/// Tries in a row that send nothing because the device has no room
/// (ENOBUFS), each after yielding the CPU to whatever drains it.
const FULL_RETRIES: u32 = 1_000;

pub(crate) struct FrameSender {
    socket: OwnedFd,
    template: Vec<u8>,
    /// `SEND_BATCH` frames back to back.
    batch: Vec<u8>,
    /// Each frame opens a new flow (a source of its own).
    new_flows: bool,
    /// Frames sent so far: the next new flow's number.
    sent: u32,
}

impl FrameSender {
    /// A sender of `template` (an IPv4 TCP frame) out of `interface`.
    pub(crate) fn open(interface: &str, template: &[u8], new_flows: bool) -> anyhow::Result<Self> {
        ensure!(
            template.len() >= TCP_CSUM + 2,
            "a template holds Ethernet, IPv4 and TCP headers"
        );
        let index = nic_netns::ifindex(interface);
        // SAFETY: plain socket call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just opened and owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address.sll_ifindex = index as i32;
        // SAFETY: the address is a sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            bound == 0,
            "binding to {interface}: {}",
            std::io::Error::last_os_error()
        );
        let on: libc::c_int = 1;
        // SAFETY: an int option of the size given.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        ensure!(
            set == 0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
        Ok(FrameSender {
            socket,
            template: template.to_vec(),
            batch: template.repeat(SEND_BATCH),
            new_flows,
            sent: 0,
        })
    }

    /// Sends `count` frames.
    pub(crate) fn send(&mut self, count: u32) -> anyhow::Result<()> {
        let len = self.template.len();
        let mut left = count as usize;
        while left > 0 {
            let frames = left.min(SEND_BATCH);
            if self.new_flows {
                for (i, frame) in self.batch.chunks_exact_mut(len).take(frames).enumerate() {
                    set_source(frame, &self.template, self.sent.wrapping_add(i as u32));
                }
            }
            let mut iovecs: Vec<libc::iovec> = self
                .batch
                .chunks_exact_mut(len)
                .take(frames)
                .map(|frame| libc::iovec {
                    iov_base: frame.as_mut_ptr().cast(),
                    iov_len: len,
                })
                .collect();
            let mut done = 0;
            let mut full = 0;
            while done < frames {
                let mut headers: Vec<libc::mmsghdr> = iovecs[done..]
                    .iter_mut()
                    .map(|iov| {
                        // SAFETY: an all-zero msghdr is valid (no name, no control).
                        let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        header.msg_hdr.msg_iov = iov;
                        header.msg_hdr.msg_iovlen = 1;
                        header
                    })
                    .collect();
                // SAFETY: every header points at one iovec over a frame of `batch`.
                let n = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        headers.as_mut_ptr(),
                        headers.len() as u32,
                        0,
                    )
                };
                if n < 0 {
                    let error = std::io::Error::last_os_error();
                    full += 1;
                    ensure!(
                        error.raw_os_error() == Some(libc::ENOBUFS) && full < FULL_RETRIES,
                        "sendmmsg: {error}"
                    );
                    std::thread::yield_now();
                    continue;
                }
                full = 0;
                done += n as usize;
            }
            self.sent = self.sent.wrapping_add(frames as u32);
            left -= frames;
        }
        Ok(())
    }
}

/// Gives `frame` (a copy of `template`) the source of new flow `n`, its
/// checksums updated.
fn set_source(frame: &mut [u8], template: &[u8], n: u32) {
    // As the packet holds them: the checksum arithmetic is byte-order blind.
    let word = |at: usize| u16::from_ne_bytes([template[at], template[at + 1]]);
    let (old_port, old_addr) = (word(SRC_PORT), word(SRC_ADDR_LOW));
    let new_port = ((FIRST_PORT + n % PORTS) as u16).to_be();
    let new_addr = (u16::from_be(old_addr) + ((n / PORTS) % HOSTS) as u16).to_be();
    let ip_csum = replace_u16(word(IP_CSUM), old_addr, new_addr);
    let tcp_csum = replace_u16(
        replace_u16(word(TCP_CSUM), old_port, new_port),
        old_addr,
        new_addr,
    );
    for (at, value) in [
        (SRC_PORT, new_port),
        (SRC_ADDR_LOW, new_addr),
        (IP_CSUM, ip_csum),
        (TCP_CSUM, tcp_csum),
    ] {
        frame[at..at + 2].copy_from_slice(&value.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_flows_get_sources_of_their_own_with_valid_checksums() {
        let template = pad(Packet::tcp(client(40_000), VIP)
            .payload(b"")
            .tcp_flags(TCP_SYN)
            .build());
        let mut seen = BTreeSet::new();
        for n in [0, 1, PORTS - 1, PORTS, 3 * PORTS + 17, PORTS * HOSTS - 1] {
            let mut frame = template.clone();
            set_source(&mut frame, &template, n);
            kxdp_testbed::packet::verify_checksums(&frame).unwrap();
            let std::net::SocketAddr::V4(source) = kxdp_testbed::packet::src(&frame) else {
                panic!("an IPv4 frame");
            };
            assert_eq!(u32::from(source.port()), FIRST_PORT + n % PORTS);
            assert_eq!(
                source.ip().octets()[3],
                CLIENT.octets()[3] + (n / PORTS) as u8
            );
            assert!(seen.insert(source), "flow {n} repeats {source}");
        }
    }
}
