//! The last-resort answer for a request whose worker hangs where Python cannot run.
//!
//! On `--timeout` the master sends SIGABRT, whose Python handler raises inside the app
//! and answers the client with a 500. A worker stuck in C code with the GIL released (a
//! hung database driver) never runs that handler: gunicorn's client then sees a reset
//! when SIGKILL lands. Here the master first sends [`answer_signal`]; a Rust thread
//! (woken through signal-hook's self-pipe, so the handler itself stays
//! async-signal-safe) waits a moment for the normal path, then, if the same request is
//! still in flight and its head has not gone out, writes gunicorn's 500 page to the
//! socket and shuts it down.

use std::io::Read;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::response::error_response;

/// The real-time signal the master sends to ask for the fallback answer: SIGRTMIN+2
/// (SIGRTMIN+1 is the faulthandler stack dump).
pub fn answer_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

/// How long the watchdog leaves the Python SIGABRT path to answer on its own. The
/// master sends SIGKILL on its next tick (about a second later).
const GRACE: Duration = Duration::from_millis(400);

/// The request a worker is serving right now.
#[derive(Debug, Default)]
struct Current {
    /// The client socket, while a request is in flight.
    fd: Option<RawFd>,
    /// Bumped for every request, so the watchdog never answers a later one.
    generation: u64,
    /// Set when the response head went out (then only closing is possible).
    head_sent: Arc<AtomicBool>,
}

/// Shared between the worker loop and the watchdog thread.
#[derive(Debug, Default)]
pub struct InFlight {
    current: Mutex<Current>,
}

impl InFlight {
    /// A request on `fd` began; returns the flag the response sets when its head is
    /// written.
    pub fn begin(&self, fd: RawFd) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.current.lock() {
            c.fd = Some(fd);
            c.generation += 1;
            c.head_sent = flag.clone();
        }
        flag
    }

    /// The request ended. Must be called before the socket is closed: the lock makes
    /// sure the watchdog never writes to a descriptor number already reused.
    pub fn end(&self) {
        if let Ok(mut c) = self.current.lock() {
            c.fd = None;
        }
    }

    fn snapshot(&self) -> Option<u64> {
        self.current
            .lock()
            .ok()
            .and_then(|c| c.fd.map(|_| c.generation))
    }

    /// Answers the request of `generation` with a 500, if it is still in flight and
    /// nothing was sent; returns whether it did.
    fn answer(&self, generation: u64) -> bool {
        let Ok(mut c) = self.current.lock() else {
            return false;
        };
        let (Some(fd), true) = (c.fd, c.generation == generation) else {
            return false;
        };
        if c.head_sent.swap(true, Ordering::AcqRel) {
            return false;
        }
        let page = error_response(500, "Internal Server Error", "");
        // SAFETY: `fd` stays open while `current.fd` is Some: the worker clears it under
        // this lock before closing the socket.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut buf = page.as_slice();
        while !buf.is_empty() {
            match nix::unistd::write(sock, buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf = &buf[n..],
            }
        }
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        c.fd = None;
        true
    }
}

/// Starts the watchdog thread for this worker process. Called after fork, from the
/// worker loop. Errors (signal or thread creation) are returned so the caller can log
/// them; the worker still serves without the fallback.
pub fn start(inflight: Arc<InFlight>) -> std::io::Result<()> {
    let (mut rx, tx) = UnixStream::pair()?;
    signal_hook::low_level::pipe::register(answer_signal(), tx)?;
    std::thread::Builder::new()
        .name("ferrocorn-watchdog".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            loop {
                match rx.read(&mut byte) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
                if let Some(generation) = inflight.snapshot() {
                    std::thread::sleep(GRACE);
                    inflight.answer(generation);
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn answers_only_the_request_still_in_flight() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let inflight = InFlight::default();
        let _flag = inflight.begin(server.as_raw_fd());
        let g = inflight.snapshot().unwrap();
        assert!(inflight.answer(g));
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
        // Already answered: nothing more.
        assert!(!inflight.answer(g));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn never_answers_once_the_head_went_out_or_the_request_ended() {
        let (server, _client) = UnixStream::pair().unwrap();
        let inflight = InFlight::default();
        let flag = inflight.begin(server.as_raw_fd());
        let g = inflight.snapshot().unwrap();
        flag.store(true, Ordering::Release);
        assert!(!inflight.answer(g));
        let _flag2 = inflight.begin(server.as_raw_fd());
        let g2 = inflight.snapshot().unwrap();
        assert!(
            !inflight.answer(g),
            "a newer request must not be answered for an old one"
        );
        inflight.end();
        assert!(!inflight.answer(g2));
    }
}
