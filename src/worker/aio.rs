//! The async I/O pieces the gthread and asgi workers share: listeners registered
//! with a tokio runtime, accepted streams (TCP or Unix) and their hand-off to blocking
//! Python threads and back, reading a request head under its deadlines, graceful
//! close, the read-buffer compaction, the signal mask that keeps the I/O thread out
//! of Python's signal handling, and the scheduling policy of the threads that run
//! Python.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::http::{HeadParser, Limits};
use crate::net::{Listener, Peer, Stream};
use crate::worker::HeadRead;

/// How long a closing connection is drained before the socket is closed.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Blocks the asynchronous signals in the calling thread; returns the old mask.
pub(crate) fn block_async_signals() -> Option<SigSet> {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        set.remove(s);
    }
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).ok()?;
    Some(old)
}

/// Moves the calling thread to `SCHED_BATCH` if it runs under the default policy
/// (one set by the user, `chrt` or a service manager, is left alone). The flag
/// `SCHED_RESET_ON_FORK` puts processes the app starts from it back on the default.
///
/// For the threads that run Python: the asgi event loop and the gthread pool. The
/// I/O thread hands them work (an eventfd write, a futex wake) and is the one clients
/// wait on. Under the default policy the thread it wakes preempts it when both share
/// a CPU, so a batch of reads is cut short for two context switches. A batch thread
/// gets the same share of CPU time but does not preempt on wake-up: it runs on a free
/// CPU, or when the running thread blocks or its time slice ends. It changes nothing
/// while a CPU is free.
///
/// Measured on 2 CPUs shared with the load generator, 2 workers, three interleaved
/// runs each: WebSocket echo at 64 connections went from 89.9-101.1k to 103.1-107.6k
/// msg/s (server CPU 11.1-12.3 to 10.5-11.0 µs a message); hello world on gthread and
/// asgi stayed within the noise. Moving the asgi I/O thread instead of the loop thread
/// was no better than moving neither.
pub(crate) fn batch_this_thread() {
    let policy = thread_policy();
    if policy >= 0 && policy & !libc::SCHED_RESET_ON_FORK == libc::SCHED_OTHER {
        // A failure (a seccomp filter, say) leaves the policy as it was: harmless.
        set_thread_policy(libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK);
    }
}

/// The calling thread's scheduling policy (with its flags), or -1.
fn thread_policy() -> libc::c_int {
    // SAFETY: pid 0 names the calling thread; no memory is passed.
    unsafe { libc::sched_getscheduler(0) }
}

/// Sets the calling thread's policy, one without priorities (OTHER, BATCH, IDLE).
fn set_thread_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; the kernel reads only `param`, a live
    // local.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Drops consumed bytes from the front of the buffer when that frees at least half.
pub(crate) fn compact(buf: &mut Vec<u8>, pos: &mut usize) {
    if *pos == 0 {
        return;
    }
    if *pos >= buf.len() {
        buf.clear();
        *pos = 0;
    } else if *pos * 2 >= buf.len() {
        buf.drain(..*pos);
        *pos = 0;
    }
}

pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The deadlines a connection waits for its next request head under.
#[derive(Debug)]
pub(crate) struct HeadWait<'a> {
    pub limits: &'a Limits,
    /// `--timeout`: a fresh connection's wait for its first byte, and the whole time a
    /// started head may take to arrive.
    pub timeout: Option<Duration>,
    /// On a kept-alive connection, the end of its idle time (the previous response's
    /// end plus `--keep-alive`); `None` on a fresh connection.
    pub idle_until: Option<Instant>,
    /// How long an idle connection stays once the worker is stopping: a request
    /// already on its way still gets an answer (with `Connection: close`), as gunicorn
    /// 27 lingers on kept-alive connections, instead of meeting a closed socket.
    pub linger: Duration,
}

/// Reads one request head. A fresh connection gets `--timeout` for its first byte; a
/// kept-alive one waits until `idle_until`. Once a head has started, the whole of it
/// must arrive within `--timeout` (a total, not per read, so a client trickling one
/// byte at a time cannot hold the connection forever). `on_bytes` runs whenever bytes
/// of the head are buffered (the gthread worker's idle gauge ends there).
pub(crate) async fn read_head(
    io: &mut IoStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    wait: &HeadWait<'_>,
    stop: &watch::Sender<bool>,
    mut on_bytes: impl FnMut(),
) -> HeadRead {
    let mut parser = HeadParser::new(wait.limits);
    let mut idle_deadline = match wait.idle_until {
        Some(t) => Some(t),
        None => wait.timeout.map(|t| Instant::now() + t),
    };
    let mut head_deadline: Option<Option<Instant>> = None;
    let mut stop = stop.subscribe();
    let mut lingering = false;
    loop {
        if !lingering && *stop.borrow() {
            lingering = true;
            idle_deadline = earliest(idle_deadline, Instant::now() + wait.linger);
        }
        let has_bytes = *pos < buf.len();
        if has_bytes {
            on_bytes();
            match parser.parse(&buf[*pos..]) {
                Ok(Some((head, used))) => {
                    *pos += used;
                    return HeadRead::Head(head);
                }
                Ok(None) => {}
                Err(e) => return HeadRead::Invalid(e),
            }
            if head_deadline.is_none() {
                head_deadline = Some(wait.timeout.map(|t| Instant::now() + t));
            }
        }
        let deadline = if has_bytes {
            head_deadline.flatten()
        } else {
            idle_deadline
        };
        compact(buf, pos);
        let r = tokio::select! {
            biased;
            r = io.read_more(buf) => Some(r),
            _ = sleep_until_opt(deadline) => None,
            _ = stop.changed(), if !lingering => continue,
        };
        match r {
            Some(Ok(0)) => return HeadRead::Closed,
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(_)) => return HeadRead::Closed,
            None if has_bytes => return HeadRead::TimedOut,
            None => return HeadRead::Closed,
        }
    }
}

/// Half-closes, then reads and drops what the client still sends for a moment, so the
/// kernel does not answer late bytes with a RST that could destroy the response.
pub(crate) async fn close_gracefully(mut io: IoStream) {
    if io.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let mut sink = vec![0u8; 8192];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A listener registered with the I/O runtime. Readiness comes from the runtime; the
/// accept itself is a plain non-blocking `accept(2)`, so the loop can wait between the
/// two (see [`accept_delay`]).
#[derive(Debug)]
pub(crate) struct IoListener(tokio::io::unix::AsyncFd<RawListener>);

/// [`Listener`] as `AsyncFd` wants it.
#[derive(Debug)]
struct RawListener(Listener);

impl AsRawFd for RawListener {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl IoListener {
    pub(crate) fn new(l: Listener) -> io::Result<IoListener> {
        // SAFETY: the descriptor is the listener's own dup, owned by `RawListener`,
        // which the `AsyncFd` owns for its whole life; `as_raw_fd` always returns it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                RawListener(l),
                tokio::io::Interest::READABLE,
            )
        };
        Ok(IoListener(fd.map_err(io::Error::from)?))
    }

    /// Accepts a connection, first waiting `delay()` once the listener turns readable.
    pub(crate) async fn accept(
        &self,
        delay: impl Fn() -> Duration,
    ) -> io::Result<(IoStream, Peer)> {
        loop {
            let mut ready = self.0.readable().await?;
            let d = delay();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
            match ready.try_io(|l| accept_now(&l.get_ref().0)) {
                Ok(r) => return r,
                // Another worker took it: wait for the next one.
                Err(_would_block) => continue,
            }
        }
    }

    /// Accepts a connection already queued, if any, without waiting.
    pub(crate) fn try_accept(&self) -> io::Result<(IoStream, Peer)> {
        accept_now(&self.0.get_ref().0)
    }

    pub(crate) fn queued(&self) -> Option<u32> {
        self.0.get_ref().0.queued()
    }
}

pub(crate) fn accept_now(l: &Listener) -> io::Result<(IoStream, Peer)> {
    match l {
        Listener::Tcp(l, _) => {
            let (s, addr) = l.accept()?;
            s.set_nonblocking(true)?;
            // Responses are written whole, so Nagle only delays the last segment.
            s.set_nodelay(true)?;
            Ok((
                IoStream::Tcp(tokio::net::TcpStream::from_std(s)?),
                Peer::tcp(addr),
            ))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept()?;
            s.set_nonblocking(true)?;
            Ok((
                IoStream::Unix(tokio::net::UnixStream::from_std(s)?),
                Peer::Unix,
            ))
        }
    }
}

/// A client connection while the I/O thread owns it.
#[derive(Debug)]
pub(crate) enum IoStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl IoStream {
    pub(crate) async fn read_more(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match self {
            IoStream::Tcp(s) => s.read_buf(buf).await,
            IoStream::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// Waits until the socket may have bytes to read (or EOF); no syscall of its own.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            IoStream::Tcp(s) => s.readable().await,
            IoStream::Unix(s) => s.readable().await,
        }
    }

    /// One non-blocking read; `WouldBlock` also clears the reactor's readiness, so a
    /// later [`IoStream::readable`] waits for new bytes.
    pub(crate) fn try_read(&self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            IoStream::Tcp(s) => s.try_read(out),
            IoStream::Unix(s) => s.try_read(out),
        }
    }

    pub(crate) async fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            IoStream::Tcp(s) => s.read(out).await,
            IoStream::Unix(s) => s.read(out).await,
        }
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            IoStream::Tcp(s) => s.write_all(bytes).await,
            IoStream::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// Writes `head` then `body` with as few `writev` calls as the socket takes: one
    /// segment for a response's head and its body, not two.
    pub(crate) async fn write_all_pair(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() {
            let bufs = [io::IoSlice::new(head), io::IoSlice::new(body)];
            let n = match self {
                IoStream::Tcp(s) => s.write_vectored(&bufs).await?,
                IoStream::Unix(s) => s.write_vectored(&bufs).await?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        self.write_all(body).await
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            IoStream::Tcp(s) => s.shutdown().await,
            IoStream::Unix(s) => s.shutdown().await,
        }
    }

    /// The descriptor, lent to a Python thread for one request (see
    /// [`Stream::Lent`]); the stream itself stays here, registered with the reactor.
    pub(crate) fn lend(&self, timeout: Option<Duration>) -> Stream {
        let fd = match self {
            IoStream::Tcp(s) => s.as_raw_fd(),
            IoStream::Unix(s) => s.as_raw_fd(),
        };
        Stream::Lent { fd, timeout }
    }
}

/// Accept balancing. Every worker's loop is woken for each new connection (the
/// listening sockets are shared), and without help the first one to run takes a whole
/// burst: a load generator's or a proxy's pool of keep-alive connections then lands
/// on one or two workers while the others idle. So a worker holding at least
/// `step` connections more than the least loaded other worker (`least_other`,
/// from the scoreboard) waits a moment before accepting: half a millisecond per
/// `step` connections of difference, at most 5 ms. `step` is what one more
/// connection's worth of imbalance means: a gthread worker's threads, a fixed few
/// for an asgi worker. The less loaded worker, woken too, takes the connection first;
/// if it does not, the loaded one still does. Alone, or about as loaded as the
/// others, a worker accepts at once, so accepting is never throttled when there is
/// nobody to hand the connection to.
pub(crate) fn accept_delay(open: usize, least_other: Option<usize>, step: usize) -> Duration {
    let Some(other) = least_other else {
        return Duration::ZERO;
    };
    let step = step.max(1);
    if open < other.saturating_add(step) {
        return Duration::ZERO;
    }
    let steps = u32::try_from(((open - other) / step).clamp(1, 10)).unwrap_or(10);
    Duration::from_micros(500) * steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a new thread started under `start`: `batch_this_thread()`, then its policy.
    fn batch_from(start: libc::c_int) -> Option<libc::c_int> {
        std::thread::spawn(move || {
            // An unprivileged thread may switch between the normal policies, so this
            // does not depend on the policy the test runner was started with.
            assert!(set_thread_policy(start));
            batch_this_thread();
            thread_policy()
        })
        .join()
        .ok()
    }

    #[test]
    fn python_threads_run_as_batch_and_reset_on_fork() {
        let main = thread_policy();
        let got = batch_from(libc::SCHED_OTHER);
        assert_eq!(got, Some(libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK));
        // Only the calling thread changed.
        assert_eq!(thread_policy(), main);
    }

    #[test]
    fn a_policy_set_by_the_user_is_kept() {
        assert_eq!(batch_from(libc::SCHED_IDLE), Some(libc::SCHED_IDLE));
    }

    #[test]
    fn accept_delay_grows_with_load() {
        // Alone: never wait (there is nobody to leave the connection to).
        assert_eq!(accept_delay(10_000, None, 8), Duration::ZERO);
        // About as loaded as the least loaded other worker: accept at once.
        assert_eq!(accept_delay(0, Some(0), 8), Duration::ZERO);
        assert_eq!(accept_delay(107, Some(100), 8), Duration::ZERO);
        assert_eq!(accept_delay(3, Some(50), 8), Duration::ZERO);
        // Ahead by `threads` or more: wait, longer the further ahead, at most 5 ms.
        assert_eq!(accept_delay(8, Some(0), 8), Duration::from_micros(500));
        assert_eq!(accept_delay(40, Some(0), 8), Duration::from_micros(2500));
        assert_eq!(accept_delay(10_000, Some(3), 8), Duration::from_millis(5));
        assert_eq!(accept_delay(3, Some(0), 0), Duration::from_micros(1500));
    }

    #[test]
    fn earliest_deadline() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(earliest(None, now), Some(now));
        assert_eq!(earliest(Some(later), now), Some(now));
        assert_eq!(earliest(Some(now), later), Some(now));
    }
}
