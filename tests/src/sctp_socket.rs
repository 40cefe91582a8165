//! SCTP sockets, one-to-one style (`SOCK_STREAM`, RFC 6458 §4), for the
//! namespace suites: std has none, but such a socket reads, writes,
//! accepts and names its peer as a TCP one does, so it is handed out as
//! std's TCP types once made.

use std::{
    io,
    mem::size_of,
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const IPPROTO_SCTP: libc::c_int = 132;

fn socket(ipv6: bool) -> io::Result<OwnedFd> {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: a plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `addr` as a `sockaddr_in`/`sockaddr_in6` and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// An SCTP listener on `port` of both families (`::`), or of IPv4 alone
/// where the namespace has no IPv6.
pub fn listen(port: u16) -> io::Result<TcpListener> {
    let bound = |ipv6: bool, addr: SocketAddr| -> io::Result<OwnedFd> {
        let fd = socket(ipv6)?;
        let (storage, len) = sockaddr(addr);
        // SAFETY: a valid address of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a plain syscall on our descriptor.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    };
    let fd = bound(true, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .or_else(|_| bound(false, SocketAddr::from(([0, 0, 0, 0], port))))?;
    Ok(TcpListener::from(fd))
}

/// An SCTP association to `target`, within `timeout`: an ABORT in answer
/// fails it with `ConnectionRefused`, silence with `TimedOut`.
pub fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = socket(target.is_ipv6())?;
    let raw = fd.as_raw_fd();
    // SAFETY: plain fcntl calls on our descriptor.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let (storage, len) = sockaddr(target);
    // SAFETY: a valid address of `len` bytes.
    if unsafe { libc::connect(raw, (&raw const storage).cast(), len) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
        let mut poll = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut poll, 1, millis) } {
            0 => return Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
        let mut error: libc::c_int = 0;
        let mut error_len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int-sized option into an int.
        let got = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut error).cast(),
                &mut error_len,
            )
        };
        if got != 0 {
            return Err(io::Error::last_os_error());
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(raw, libc::F_SETFL, flags) };
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}
