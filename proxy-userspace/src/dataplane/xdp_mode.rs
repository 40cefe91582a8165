//! Whether an interface's XDP program runs in native (driver) or generic
//! (skb) mode, as the kernel reports it over rtnetlink (`IFLA_XDP`): the
//! link pinned for a NIC does not say, and generic mode needs GRO off.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
/// The type bits of an attribute (without the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// How XDP runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum XdpMode {
    None,
    Native,
    Generic,
    Offloaded,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::None => "none",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Offloaded => "offloaded",
        }
    }
}

/// The attributes `(type, payload)` in `bytes`, 4-byte aligned.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some((kind, payload))
    })
}

/// The mode in an `RTM_NEWLINK` message's attributes.
fn mode_in(link_attributes: &[u8]) -> XdpMode {
    let Some((_, xdp)) = attributes(link_attributes).find(|(k, _)| *k == IFLA_XDP) else {
        return XdpMode::None;
    };
    let mut attached = 0;
    let mut program_ids = [false; 3];
    for (kind, payload) in attributes(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => attached = payload.first().copied().unwrap_or(0),
            IFLA_XDP_DRV_PROG_ID => program_ids[0] = true,
            IFLA_XDP_SKB_PROG_ID => program_ids[1] = true,
            IFLA_XDP_HW_PROG_ID => program_ids[2] = true,
            _ => {}
        }
    }
    match attached {
        1 => XdpMode::Native,
        2 => XdpMode::Generic,
        3 => XdpMode::Offloaded,
        // Several at once: the fastest one a program is in.
        4 if program_ids[2] => XdpMode::Offloaded,
        4 if program_ids[0] => XdpMode::Native,
        4 if program_ids[1] => XdpMode::Generic,
        _ => XdpMode::None,
    }
}

/// Asks the kernel for interface `ifindex`'s XDP mode.
pub fn xdp_mode(ifindex: u32) -> io::Result<XdpMode> {
    // SAFETY: plain socket call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = [0u8; NLMSG_HDR_LEN + IFINFOMSG_LEN];
    request[0..4].copy_from_slice(&((NLMSG_HDR_LEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[NLMSG_HDR_LEN] = libc::AF_UNSPEC as u8;
    request[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    // SAFETY: the buffer is valid for its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for its length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let answer = &answer[..got as usize];
    if answer.len() < NLMSG_HDR_LEN {
        return Err(io::Error::other("short rtnetlink answer"));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    let len = (u32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]) as usize)
        .min(answer.len());
    match kind {
        RTM_NEWLINK if len >= NLMSG_HDR_LEN + IFINFOMSG_LEN => {
            Ok(mode_in(&answer[NLMSG_HDR_LEN + IFINFOMSG_LEN..len]))
        }
        NLMSG_ERROR if len >= NLMSG_HDR_LEN + 4 => {
            let errno = i32::from_ne_bytes(
                answer[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            Err(io::Error::from_raw_os_error(-errno))
        }
        _ => Err(io::Error::other("unexpected rtnetlink answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 4) as u16).to_ne_bytes().to_vec();
        out.extend(kind.to_ne_bytes());
        out.extend(payload);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    fn link(xdp: &[Vec<u8>]) -> Vec<u8> {
        let mut out = attr(3, b"eth0\0");
        // Nested flag set, as the kernel sends it.
        out.extend(attr(IFLA_XDP | 0x8000, &xdp.concat()));
        out.extend(attr(4, &1500u32.to_ne_bytes()));
        out
    }

    #[test]
    fn the_attached_mode_is_read_from_the_nested_xdp_attribute() {
        let id = 42u32.to_ne_bytes();
        let cases = [
            (vec![attr(IFLA_XDP_ATTACHED, &[1])], XdpMode::Native),
            (vec![attr(IFLA_XDP_ATTACHED, &[2])], XdpMode::Generic),
            (vec![attr(IFLA_XDP_ATTACHED, &[0])], XdpMode::None),
            (
                vec![
                    attr(IFLA_XDP_ATTACHED, &[4]),
                    attr(IFLA_XDP_SKB_PROG_ID, &id),
                ],
                XdpMode::Generic,
            ),
        ];
        for (xdp, mode) in cases {
            assert_eq!(mode_in(&link(&xdp)), mode);
        }
        assert_eq!(mode_in(&attr(3, b"eth0\0")), XdpMode::None);
    }

    #[test]
    fn truncated_attributes_end_the_walk_without_panicking() {
        let mut bytes = link(&[attr(IFLA_XDP_ATTACHED, &[1])]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(attributes(&bytes).count(), 2);
        assert_eq!(attributes(&[200, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn the_loopback_interface_has_no_xdp_here() {
        // Ifindex 1 is loopback in every network namespace.
        assert_eq!(xdp_mode(1).unwrap(), XdpMode::None);
    }
}
