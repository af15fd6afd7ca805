//! Sockets as the workers see them: listeners inherited from the master and accepted
//! client streams, TCP or Unix, behind one enum each.
//!
//! The master (Python) binds every listener before fork; each worker receives the raw
//! file descriptors and wraps a `dup` of them here, so dropping a Rust listener never
//! closes the socket object the Python side still owns.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, sendmsg, MsgFlags, UnixAddr};

/// A listening socket inherited from the master.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener, with the address it is bound to.
    Tcp(TcpListener, SocketAddr),
    /// A Unix-domain listener.
    Unix(UnixListener),
}

/// Where a client connected from.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP peer: `REMOTE_ADDR` and `REMOTE_PORT`. `host` is the address as text,
    /// made once when the connection is accepted: every request's environ or scope
    /// (and access log line) needs it, and `IpAddr`'s `Display` cost 1.3k
    /// instructions a request (callgrind, asgi hello world).
    Tcp { addr: SocketAddr, host: Arc<str> },
    /// A Unix-socket peer: gunicorn reports an empty `REMOTE_ADDR` and no port, and
    /// always trusts it for forwarded headers.
    Unix,
}

impl Peer {
    pub fn tcp(addr: SocketAddr) -> Peer {
        Peer::Tcp {
            addr,
            host: addr.ip().to_string().into(),
        }
    }

    /// The peer IP, when there is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp { addr, .. } => Some(addr.ip()),
            Peer::Unix => None,
        }
    }

    /// The peer IP as text (`REMOTE_ADDR`), empty for a Unix-socket peer.
    pub fn host(&self) -> &str {
        match self {
            Peer::Tcp { host, .. } => host,
            Peer::Unix => "",
        }
    }
}

/// An accepted client connection.
#[derive(Debug)]
pub enum Stream {
    /// TCP client.
    Tcp(TcpStream),
    /// Unix-socket client.
    Unix(UnixStream),
    /// A socket lent by the gthread I/O loop to a Python thread for one request: the
    /// descriptor stays owned (and registered with the reactor) by the I/O task, which
    /// waits for it to come back. It is non-blocking; reads and writes wait with
    /// `poll(2)` for at most `timeout` each, as `SO_RCVTIMEO`/`SO_SNDTIMEO` would.
    /// Lending instead of moving the socket out of the runtime saves four syscalls a
    /// request (two `ioctl(FIONBIO)`, `epoll_ctl` DEL and ADD: strace, hello world).
    Lent {
        /// The I/O task's descriptor; never closed through this variant.
        fd: RawFd,
        /// The most one read or write waits for the client.
        timeout: Option<Duration>,
    },
    /// No socket: the gthread worker moved it back to its I/O loop, and whatever the
    /// app kept of the request (a leaked `wsgi.input`) now sees a closed connection.
    Detached,
}

impl Listener {
    /// Wraps a duplicate of an inherited listening descriptor. `is_unix` comes from the
    /// master, which knows the family it bound.
    pub fn from_inherited(fd: RawFd, is_unix: bool) -> io::Result<Listener> {
        // SAFETY: `fd` is a listening socket the master bound and keeps open for the
        // whole life of this worker; borrowing it for the duration of `try_clone_to_owned`
        // (a dup) is sound, and the dup is the only descriptor the new listener owns.
        let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        if is_unix {
            let l = UnixListener::from(owned);
            l.set_nonblocking(true)?;
            Ok(Listener::Unix(l))
        } else {
            let l = TcpListener::from(owned);
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            Ok(Listener::Tcp(l, addr))
        }
    }

    /// Accepts one pending connection; `WouldBlock` when another worker won the race.
    /// The returned stream is blocking: the sync worker reads it with timeouts.
    pub fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l, _) => {
                let (s, addr) = l.accept()?;
                s.set_nonblocking(false)?;
                // Responses are written whole (head and body coalesced), so Nagle only
                // adds latency to the final segment; gunicorn sets TCP_NODELAY too.
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), Peer::tcp(addr)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }

    /// How many connections wait in this listener's accept queue, when the kernel says
    /// (TCP only: for a listening socket `tcpi_unacked` is the accept-queue length, the
    /// figure `ss` shows as Recv-Q).
    pub fn queued(&self) -> Option<u32> {
        let Listener::Tcp(l, _) = self else {
            return None;
        };
        tcp_queued(l.as_fd())
    }

    /// `SERVER_NAME` and `SERVER_PORT` as gunicorn derives them: from the listening
    /// socket's address, not the Host header. `None` for Unix sockets, where the Host
    /// header decides.
    pub fn server_name_port(&self) -> Option<(String, String)> {
        match self {
            Listener::Tcp(_, addr) => Some((addr.ip().to_string(), addr.port().to_string())),
            Listener::Unix(_) => None,
        }
    }
}

/// The accept-queue length of a listening TCP socket (see [`Listener::queued`]).
pub fn tcp_queued(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: tcp_info is a plain C struct; all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: `fd` is a live socket for the duration of the borrow; `info` and `len`
    // are valid for writes of the sizes given, as getsockopt requires.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_unacked)
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l, _) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl Stream {
    /// Bounds every blocking read and write, so a client that stops sending or
    /// reading cannot pin the worker forever.
    pub fn set_timeouts(&mut self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Lent { timeout, .. } => {
                *timeout = t;
                Ok(())
            }
            Stream::Detached => Ok(()),
        }
    }

    /// Half-closes the sending side, then discards what the client still sends for a
    /// short while before the caller drops the stream. Closing a socket with unread
    /// input makes the kernel send RST, which can destroy the response still in flight
    /// (gunicorn ≥26 does the same "graceful close").
    pub fn close_gracefully(&mut self) {
        let shut = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            // The I/O loop closes what it lent.
            Stream::Lent { .. } | Stream::Detached => return,
        };
        if shut.is_err() {
            return;
        }
        let _ = self.set_timeouts(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 8192];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

impl Stream {
    /// Sends what the kernel takes right now, without waiting (`MSG_DONTWAIT`, whatever
    /// the socket's blocking mode): `Ok(0)` when the send buffer is full. The gthread
    /// worker's write-behind uses it so a Python thread never waits on a slow reader
    /// while the response still fits its buffer.
    pub fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Lent { fd, .. } => *fd,
            Stream::Detached => return Err(detached()),
        };
        // IOV_MAX is 1024 on Linux; callers pass a handful of buffers.
        let bufs = &bufs[..bufs.len().min(1024)];
        loop {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match sendmsg::<UnixAddr>(fd, bufs, &[], flags, None) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN) => return Ok(0),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Stream {
    /// After `EAGAIN` from a raw syscall on this stream (sendfile): waits until it is
    /// writable again. A lent socket is non-blocking, so `EAGAIN` just means a full
    /// send buffer; a blocking one returns it only when `SO_SNDTIMEO` ran out.
    pub fn wait_writable(&self) -> io::Result<()> {
        match self {
            Stream::Lent { fd, timeout } => wait_ready(*fd, *timeout, PollFlags::POLLOUT),
            _ => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "timed out waiting for the client",
            )),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Lent { fd, .. } => *fd,
            Stream::Detached => -1,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Lent { fd, timeout } => lent_io(*fd, *timeout, PollFlags::POLLIN, || {
                recv(*fd, buf, MsgFlags::MSG_DONTWAIT)
            }),
            Stream::Detached => Err(detached()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Lent { fd, timeout } => lent_io(*fd, *timeout, PollFlags::POLLOUT, || {
                send(*fd, buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            }),
            Stream::Detached => Err(detached()),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Lent { fd, timeout } => lent_io(*fd, *timeout, PollFlags::POLLOUT, || {
                let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                let bufs = &bufs[..bufs.len().min(1024)];
                sendmsg::<UnixAddr>(*fd, bufs, &[], flags, None)
            }),
            Stream::Detached => Err(detached()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One read or write on a lent (non-blocking) socket, waiting for readiness up to
/// `timeout` when the kernel has nothing for it: a blocking socket's semantics,
/// including `WouldBlock` when the timeout passes (what `SO_RCVTIMEO` gives).
fn lent_io(
    fd: RawFd,
    timeout: Option<Duration>,
    want: PollFlags,
    mut op: impl FnMut() -> nix::Result<usize>,
) -> io::Result<usize> {
    loop {
        match op() {
            Ok(n) => return Ok(n),
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        wait_ready(fd, timeout, want)?;
    }
}

/// Waits until `fd` is ready for `want` (or has an error or hang-up, which the next
/// syscall reports), for at most `timeout`.
pub fn wait_ready(fd: RawFd, timeout: Option<Duration>, want: PollFlags) -> io::Result<()> {
    // SAFETY: `fd` is open for the duration of the call: the lender keeps it.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(bfd, want)];
    let t = match timeout {
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    match poll(&mut fds, t) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "timed out waiting for the client",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was handed back to the I/O loop",
    )
}

/// Writes every byte of `bufs` with as few syscalls as the kernel allows.
pub fn write_all_vectored(w: &mut impl Write, bufs: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0usize;
    let mut off = 0usize;
    while idx < bufs.len() {
        if bufs[idx].len() == off {
            idx += 1;
            off = 0;
            continue;
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len() - idx);
        slices.push(IoSlice::new(&bufs[idx][off..]));
        for b in &bufs[idx + 1..] {
            slices.push(IoSlice::new(b));
        }
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Takes ownership of a raw descriptor handed over from Python.
///
/// # Safety
/// `fd` must be an open descriptor that nothing else will close.
pub unsafe fn owned_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
