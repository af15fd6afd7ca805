//! The client connection as the WSGI objects share it: the stream plus the bytes read
//! past the request head.
//!
//! `wsgi.input` reads from it, `start_response`'s `write()` and the response writer
//! write to it, and the worker loop reads the next head from it. All of them run on the
//! thread that called the app, so the mutex is uncontended; it exists because pyclasses
//! must be `Send` and the gthread worker will hand connections between threads.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::net::{write_all_vectored, Stream};

/// How much one `read()` asks the kernel for. gunicorn 27 reads bodies up to 1 MiB per
/// step (its #2596 fix); 64 KiB keeps the per-connection buffer small while still
/// moving large uploads in few syscalls.
pub const READ_CHUNK: usize = 64 * 1024;

/// A client connection and its read buffer.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: Stream,
    /// Bytes received and not yet consumed; `buf[pos..]` is pending.
    pub buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pub pos: usize,
    /// Response bytes accepted from the app but not yet taken by the kernel
    /// (write-behind). They go out before anything else written later, and whatever
    /// is left when the app is done is written by the gthread I/O loop, so a slow
    /// reader does not hold a Python thread for a response that fits here.
    pub out: Vec<u8>,
    /// The most `out` may hold before a write waits for the client (bounded by the
    /// socket timeout) until it holds half as much: the backpressure that keeps a
    /// streaming response from piling up in memory. 0 turns write-behind off: every
    /// write waits until the kernel has taken it (the sync worker, which has nothing
    /// else to do meanwhile).
    pub out_limit: usize,
}

/// The gthread worker's write-behind limit per connection. Large enough for typical
/// pages and API answers (the 64 KiB benchmark response included) to be handed off
/// whole; small enough that many slow readers cannot exhaust memory (1,000 of them
/// hold at most 256 MiB, and only while they are that slow).
pub const WRITE_BEHIND: usize = 256 * 1024;

impl Conn {
    /// Wraps a freshly accepted stream.
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(8192),
            pos: 0,
            out: Vec::new(),
            out_limit: 0,
        }
    }

    /// The unconsumed bytes.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Moves the stream and buffer out, leaving a detached connection behind for any
    /// object that still holds a reference (the gthread worker hands the socket back
    /// to its I/O loop after each request).
    pub fn take(&mut self) -> Conn {
        std::mem::replace(
            self,
            Conn {
                stream: Stream::Detached,
                buf: Vec::new(),
                pos: 0,
                out: Vec::new(),
                out_limit: 0,
            },
        )
    }

    /// Marks `n` pending bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes from the socket into the buffer; returns 0 at EOF.
    ///
    /// `Interrupted` is returned to the caller rather than retried here: the caller
    /// holds the GIL again by then and must run Python's signal handlers
    /// (`check_signals`) so that SIGQUIT or SIGINT can end a worker blocked on a slow
    /// client.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let res = self.stream.read(&mut self.buf[start..]);
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        res
    }

    /// Writes all of `bufs` to the client, or (write-behind) queues what the kernel
    /// does not take at once; see [`Conn::out`].
    pub fn write_all(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        if self.out_limit == 0 {
            return write_all_vectored(&mut self.stream, bufs);
        }
        if !self.out.is_empty() {
            let n = self.stream.send_now(&[IoSlice::new(&self.out)])?;
            self.out.drain(..n);
        }
        let mut sent = 0;
        if self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            sent = self.stream.send_now(&slices)?;
        }
        for b in bufs {
            let skip = sent.min(b.len());
            sent -= skip;
            self.out.extend_from_slice(&b[skip..]);
        }
        if self.out.len() > self.out_limit {
            let n = self.out.len() - self.out_limit / 2;
            self.stream.write_all(&self.out[..n])?;
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Writes one buffer (see [`Conn::write_all`]).
    pub fn write_one(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(&[data])
    }

    /// Waits until the kernel has taken every queued byte: before bytes that bypass
    /// the queue (sendfile) and before the client must see something to go on
    /// (`100 Continue`).
    pub fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

/// A connection shared between the worker loop and the WSGI objects of one request.
pub type SharedConn = Arc<Mutex<Conn>>;

/// The WSGI objects' handle on the connection. Weak on purpose: apps keep `environ`
/// (and with it `wsgi.input` and `start_response`) alive in reference cycles — Django
/// does — and a strong handle there kept the socket open in CLOSE-WAIT until a garbage
/// collection. The worker holds the only strong reference, so dropping it closes the
/// socket; a late use from Python then gets an OSError.
pub type ConnRef = Weak<Mutex<Conn>>;

/// Upgrades a [`ConnRef`], or reports that the connection is gone.
pub fn upgrade(conn: &ConnRef) -> PyResult<SharedConn> {
    conn.upgrade()
        .ok_or_else(|| PyOSError::new_err("the connection of this request is closed"))
}

/// Locks the connection; a poisoned lock (a panic while writing) is reported to Python
/// as an OSError rather than propagating the panic.
pub fn lock(conn: &SharedConn) -> PyResult<MutexGuard<'_, Conn>> {
    conn.lock()
        .map_err(|_| PyOSError::new_err("connection state poisoned by an earlier panic"))
}
