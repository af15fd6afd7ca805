//! The scoreboard: one slot per worker in memory shared by the master and every
//! worker, replacing gunicorn's heartbeat temp files.
//!
//! The master maps it (anonymous, `MAP_SHARED`) before the first fork, so every worker
//! inherits the same pages. A worker only writes its own slot, with atomics; the master
//! (and later `ferrocorn top` and `/metrics`) only read. No locks, no syscalls on the
//! request path, no disk: gunicorn's `utime()` on a disk-backed /tmp could stall
//! workers (its #1863).
//!
//! Times are `CLOCK_MONOTONIC` milliseconds, comparable across processes.
//!
//! The request counters of a slot count over every worker the slot has had: a new
//! worker's `claim` does not reset them but records where they stood, and the current
//! worker's own counts are the difference. So the stats process, which sends StatsD
//! deltas once a second, also gets the last requests of a worker that exited and was
//! replaced in the same slot between two of its reads.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use pyo3::exceptions::{PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// What a worker is doing, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// No worker owns the slot.
    Free = 0,
    /// Forked, importing the app.
    Booting = 1,
    /// Waiting for a connection.
    Idle = 2,
    /// Reading a request from, or writing a response to, a client. Bounded by the
    /// socket timeouts, so the master does not count it against `--timeout`.
    Io = 3,
    /// Running the app for a request.
    Busy = 4,
    /// Stopping: finishing in-flight work.
    Draining = 5,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            1 => SlotState::Booting,
            2 => SlotState::Idle,
            3 => SlotState::Io,
            4 => SlotState::Busy,
            5 => SlotState::Draining,
            _ => SlotState::Free,
        }
    }

    /// The name reported to Python.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Booting => "booting",
            SlotState::Idle => "idle",
            SlotState::Io => "io",
            SlotState::Busy => "busy",
            SlotState::Draining => "draining",
        }
    }
}

/// Bytes of request text (method, space, path) kept per slot.
const TEXT_WORDS: usize = 16;

/// Latency histogram buckets per slot. Bucket 0 counts requests under 16 µs; bucket
/// `i` (1 ≤ i < BUCKETS − 1) those of `[2^(i+3), 2^(i+4))` µs; the last one everything
/// from 2^(BUCKETS+2) µs (67 s) up. Recording one is a shift and an atomic add.
pub const BUCKETS: usize = 24;

/// The histogram bucket of a duration in microseconds.
pub fn bucket_index(micros: u64) -> usize {
    let bits = (64 - micros.leading_zeros()) as usize;
    bits.saturating_sub(4).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i` in microseconds (`None` for the last,
/// unbounded one).
pub fn bucket_upper_us(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << (i + 4))
}

/// The `q` quantile (0 < q ≤ 1) of a histogram, in seconds, interpolated linearly
/// inside its bucket as Prometheus' `histogram_quantile` does. `None` when empty. A
/// quantile in the unbounded last bucket is reported as that bucket's lower bound.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let lower = if i == 0 { 0 } else { 1u64 << (i + 3) };
            let Some(upper) = bucket_upper_us(i) else {
                return Some(lower as f64 / 1e6);
            };
            let frac = (rank - below as f64) / c as f64;
            return Some((lower as f64 + frac * (upper - lower) as f64) / 1e6);
        }
        below += c;
    }
    None
}

/// Request counters; every field is an atomic, so zeroes are a valid start.
#[repr(C)]
#[derive(Debug)]
struct Counters {
    /// Requests served.
    requests: AtomicU64,
    /// Request durations (see [`bucket_index`]).
    latency: [AtomicU64; BUCKETS],
    /// Responses with a 5xx status.
    errors_5xx: AtomicU64,
    /// Total time spent in requests, in microseconds (summed over threads).
    busy_us: AtomicU64,
    /// Responses per status code: index `code - 100` for 100..=599 (statsd's
    /// `request.status.<code>` and the per-status Prometheus counter). 4 KiB, touched
    /// only for the codes a worker answers; one atomic add per request.
    statuses: [AtomicU64; STATUS_CODES],
}

impl Counters {
    fn add_request(&self, micros: u64, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
        self.busy_us.fetch_add(micros, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(n) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.statuses.get(i))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes `self` a copy of `other`.
    fn copy_from(&self, other: &Counters) {
        let copy = |to: &AtomicU64, from: &AtomicU64| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        copy(&self.requests, &other.requests);
        for (to, from) in self.latency.iter().zip(&other.latency) {
            copy(to, from);
        }
        copy(&self.errors_5xx, &other.errors_5xx);
        copy(&self.busy_us, &other.busy_us);
        for (to, from) in self.statuses.iter().zip(&other.statuses) {
            copy(to, from);
        }
    }
}

/// `counter` minus `base`: what was counted since `base` was copied from it. Saturates
/// (a reader racing `claim` may see the new base with the old counter).
fn since(counter: &AtomicU64, base: &AtomicU64) -> u64 {
    counter
        .load(Ordering::Relaxed)
        .saturating_sub(base.load(Ordering::Relaxed))
}

/// One worker's slot. Every field is an atomic, so a zero-filled page is a valid,
/// free slot.
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// Seqlock for `text`: odd while the worker rewrites it.
    seq: AtomicU64,
    pid: AtomicI32,
    state: AtomicU8,
    /// Last sign of life.
    heartbeat_ms: AtomicU64,
    /// When the worker started.
    started_ms: AtomicU64,
    /// When the current request started (valid while Busy or Io).
    request_start_ms: AtomicU64,
    /// This worker's max-requests limit (0 = none).
    max_requests: AtomicU64,
    /// "METHOD /path" of the current request, NUL-padded.
    text: [AtomicU64; TEXT_WORDS],
    /// gthread: requests parsed and waiting for a free Python thread.
    queue_depth: AtomicU64,
    /// gthread: Python threads running the app right now.
    busy_threads: AtomicU64,
    /// gthread: open client connections (including idle keep-alive ones).
    connections: AtomicU64,
    /// Every worker's requests since the board was mapped; never reset, so that
    /// readers taking differences lose nothing when the slot changes hands.
    counters: Counters,
    /// `counters` when the current worker claimed the slot: what it counted itself is
    /// the difference (see [`Slot::claim`]).
    base: Counters,
    /// Workers this slot has had since the master started (restarts = spawns − 1);
    /// kept across `claim`.
    spawns: AtomicU64,
}

/// Status codes counted per slot: 100..=599.
pub const STATUS_CODES: usize = 500;

/// CLOCK_MONOTONIC in milliseconds.
pub fn now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000
        })
        .unwrap_or(0)
}

impl Slot {
    /// Records a sign of life.
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Moves to `state` and records a heartbeat.
    pub fn set_state(&self, state: SlotState) {
        self.state.store(state as u8, Ordering::Release);
        self.heartbeat();
    }

    /// A request began: remember what it is, for timeouts and `top`.
    pub fn begin_request(&self, method: &str, path: &str) {
        let mut buf = [0u8; TEXT_WORDS * 8];
        let text = format!("{method} {path}");
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.seq.fetch_add(1, Ordering::AcqRel);
        for (i, word) in self.text.iter().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        let now = now_ms();
        self.request_start_ms.store(now, Ordering::Relaxed);
        self.heartbeat_ms.store(now, Ordering::Relaxed);
        self.state.store(SlotState::Busy as u8, Ordering::Release);
    }

    /// Replaces the request text and its start time without touching the state. For
    /// workers serving several requests at once (gthread), whose one writer (the
    /// Python main thread) shows the oldest request in flight.
    pub fn set_request_text(&self, text: &str, started_ms: u64) {
        let mut buf = [0u8; TEXT_WORDS * 8];
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.seq.fetch_add(1, Ordering::AcqRel);
        for (i, word) in self.text.iter().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.request_start_ms.store(started_ms, Ordering::Relaxed);
    }

    /// Counts one served request that took `micros` and answered `status` (0: no
    /// response); any thread may call it.
    pub fn add_request(&self, micros: u64, status: u16) {
        self.counters.add_request(micros, status);
    }

    /// Master, before forking the worker that gets the slot: resets its state. The
    /// request counters go on from where they are (the previous worker's last
    /// requests may not have been read yet); the new worker's own counts start at
    /// zero because their base is taken now. The previous worker is gone (reaped), so
    /// nothing adds to the counters while they are copied.
    pub fn claim(&self, max_requests: u64) {
        let now = now_ms();
        self.pid.store(0, Ordering::Relaxed);
        self.started_ms.store(now, Ordering::Relaxed);
        self.request_start_ms.store(0, Ordering::Relaxed);
        self.max_requests.store(max_requests, Ordering::Relaxed);
        self.set_gauges(0, 0, 0);
        self.base.copy_from(&self.counters);
        self.spawns.fetch_add(1, Ordering::Relaxed);
        self.begin_request("", "");
        self.set_state(SlotState::Booting);
    }

    /// Requests served by the current worker.
    pub fn worker_requests(&self) -> u64 {
        since(&self.counters.requests, &self.base.requests)
    }

    /// Requests served by every worker the slot has had.
    pub fn slot_requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// The current worker's latency histogram.
    pub fn latency_counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| since(&self.counters.latency[i], &self.base.latency[i]))
    }

    /// The latency histogram over every worker the slot has had.
    pub fn slot_latency_counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counters.latency[i].load(Ordering::Relaxed))
    }

    /// The current worker's 5xx responses.
    pub fn worker_errors_5xx(&self) -> u64 {
        since(&self.counters.errors_5xx, &self.base.errors_5xx)
    }

    /// The current worker's time in requests, in microseconds.
    pub fn worker_busy_us(&self) -> u64 {
        since(&self.counters.busy_us, &self.base.busy_us)
    }

    /// `(code, responses)` for every status the current worker answered (`slot`:
    /// false) or any worker the slot has had (true).
    pub fn status_counts(&self, slot: bool) -> Vec<(u16, u64)> {
        let counts = self.counters.statuses.iter().zip(&self.base.statuses);
        (100u16..)
            .zip(counts)
            .map(|(code, (n, base))| {
                let n = if slot {
                    n.load(Ordering::Relaxed)
                } else {
                    since(n, base)
                };
                (code, n)
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Publishes the gthread gauges: queued requests, busy threads, open connections.
    pub fn set_gauges(&self, queue_depth: usize, busy_threads: usize, connections: usize) {
        self.queue_depth
            .store(queue_depth as u64, Ordering::Relaxed);
        self.busy_threads
            .store(busy_threads as u64, Ordering::Relaxed);
        self.connections
            .store(connections as u64, Ordering::Relaxed);
    }

    /// Open connections, as a gthread worker last published them.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether a live worker owns the slot and is taking connections (booted, not
    /// stopping).
    pub fn is_accepting(&self) -> bool {
        self.pid.load(Ordering::Relaxed) != 0
            && matches!(
                SlotState::from_u8(self.state.load(Ordering::Acquire)),
                SlotState::Idle | SlotState::Io | SlotState::Busy
            )
    }

    /// A request ended after `micros` with `status` (see [`Slot::add_request`]).
    pub fn end_request(&self, micros: u64, status: u16) {
        self.add_request(micros, status);
        self.set_state(SlotState::Idle);
    }

    fn read_text(&self) -> String {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut bytes = Vec::with_capacity(TEXT_WORDS * 8);
            for w in &self.text {
                bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            if self.seq.load(Ordering::Acquire) == before {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                return String::from_utf8_lossy(&bytes[..end]).into_owned();
            }
        }
        String::new()
    }
}

/// The shared mapping, exposed to Python as `Scoreboard`.
#[pyclass(module = "ferrocorn._ferrocorn", name = "Scoreboard", frozen)]
#[derive(Debug)]
pub struct Scoreboard {
    base: NonNull<Slot>,
    capacity: usize,
    len_bytes: NonZeroUsize,
}

// SAFETY: the mapping is only ever accessed through `&Slot`, whose fields are all
// atomics, so sharing it between threads (and processes) is sound; the pointer stays
// valid until `Drop` unmaps it, which needs `&mut self`.
unsafe impl Send for Scoreboard {}
// SAFETY: as above.
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    /// Slot `i`, if it exists.
    pub fn slot(&self, i: usize) -> Option<&Slot> {
        if i >= self.capacity {
            return None;
        }
        // SAFETY: `base` points to `capacity` contiguous, zero-initialised (hence
        // valid: all fields are atomics) `Slot`s that live as long as `self`.
        Some(unsafe { &*self.base.as_ptr().add(i) })
    }

    /// Every slot with its index (free ones included).
    /// The open connections of the least loaded accepting worker other than the one
    /// in slot `me` (None when it is alone): what accept balancing compares with.
    pub fn least_connections_except(&self, me: usize) -> Option<usize> {
        self.slots()
            .filter(|(i, s)| *i != me && s.is_accepting())
            .map(|(_, s)| usize::try_from(s.connections()).unwrap_or(usize::MAX))
            .min()
    }

    pub fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..self.capacity).filter_map(move |i| self.slot(i).map(|s| (i, s)))
    }

    fn slot_or_err(&self, i: usize) -> PyResult<&Slot> {
        self.slot(i)
            .ok_or_else(|| PyIndexError::new_err(format!("no scoreboard slot {i}")))
    }
}

#[pymethods]
impl Scoreboard {
    /// Maps a board of `capacity` slots. Call before forking workers.
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        if capacity == 0 {
            return Err(PyValueError::new_err(
                "scoreboard capacity must be positive",
            ));
        }
        let len = capacity
            .checked_mul(std::mem::size_of::<Slot>())
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| PyValueError::new_err("scoreboard too large"))?;
        // SAFETY: an anonymous shared mapping with no address hint aliases nothing;
        // the kernel zero-fills it, which is a valid state for every `Slot`.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| PyOSError::new_err(format!("mmap scoreboard: {e}")))?;
        Ok(Scoreboard {
            base: ptr.cast(),
            capacity,
            len_bytes: len,
        })
    }

    /// Number of slots.
    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// Master, before fork: give slot `i` to a new worker (see [`Slot::claim`]).
    fn claim(&self, i: usize, max_requests: u64) -> PyResult<()> {
        self.slot_or_err(i)?.claim(max_requests);
        Ok(())
    }

    /// Worker, after fork: record its pid.
    fn set_pid(&self, i: usize, pid: i32) -> PyResult<()> {
        let s = self.slot_or_err(i)?;
        s.pid.store(pid, Ordering::Relaxed);
        s.heartbeat();
        Ok(())
    }

    /// A heartbeat from Python code (while booting).
    fn heartbeat(&self, i: usize) -> PyResult<()> {
        self.slot_or_err(i)?.heartbeat();
        Ok(())
    }

    /// Master, after reaping: the slot is free again.
    fn release(&self, i: usize) -> PyResult<()> {
        let s = self.slot_or_err(i)?;
        s.state.store(SlotState::Free as u8, Ordering::Release);
        s.pid.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// A consistent-enough view of slot `i`: ages are in seconds. The request counters
    /// are the current worker's; those named `slot_*` count over every worker the slot
    /// has had (for readers that take differences between two snapshots).
    fn snapshot<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyDict>> {
        let s = self.slot_or_err(i)?;
        let now = now_ms();
        let age = |t: u64| now.saturating_sub(t) as f64 / 1000.0;
        let state = SlotState::from_u8(s.state.load(Ordering::Acquire));
        let d = PyDict::new(py);
        d.set_item("state", state.name())?;
        d.set_item("pid", s.pid.load(Ordering::Relaxed))?;
        d.set_item("requests", s.worker_requests())?;
        d.set_item("slot_requests", s.slot_requests())?;
        d.set_item("heartbeat_age", age(s.heartbeat_ms.load(Ordering::Relaxed)))?;
        d.set_item("age", age(s.started_ms.load(Ordering::Relaxed)))?;
        d.set_item("max_requests", s.max_requests.load(Ordering::Relaxed))?;
        d.set_item("queue_depth", s.queue_depth.load(Ordering::Relaxed))?;
        d.set_item("busy_threads", s.busy_threads.load(Ordering::Relaxed))?;
        d.set_item("connections", s.connections.load(Ordering::Relaxed))?;
        let busy = matches!(state, SlotState::Busy | SlotState::Io);
        d.set_item(
            "request_age",
            busy.then(|| age(s.request_start_ms.load(Ordering::Relaxed))),
        )?;
        d.set_item("request", busy.then(|| s.read_text()))?;
        let counts = s.latency_counts();
        d.set_item("latency_buckets", counts.to_vec())?;
        d.set_item("slot_latency_buckets", s.slot_latency_counts().to_vec())?;
        d.set_item("p50", quantile(&counts, 0.5))?;
        d.set_item("p99", quantile(&counts, 0.99))?;
        d.set_item("errors_5xx", s.worker_errors_5xx())?;
        d.set_item("busy_seconds", s.worker_busy_us() as f64 / 1e6)?;
        for (key, slot) in [("statuses", false), ("slot_statuses", true)] {
            let statuses = PyDict::new(py);
            for (code, n) in s.status_counts(slot) {
                statuses.set_item(code, n)?;
            }
            d.set_item(key, statuses)?;
        }
        d.set_item("spawns", s.spawns.load(Ordering::Relaxed))?;
        Ok(d)
    }

    /// The latency buckets' upper bounds in seconds (the last one is `inf`).
    #[staticmethod]
    fn bucket_bounds() -> Vec<f64> {
        (0..BUCKETS)
            .map(|i| bucket_upper_us(i).map_or(f64::INFINITY, |u| u as f64 / 1e6))
            .collect()
    }

    /// The `q` quantile, in seconds, of a histogram given as bucket counts.
    #[staticmethod]
    fn quantile_of(counts: Vec<u64>, q: f64) -> Option<f64> {
        quantile(&counts, q)
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: `base`/`len_bytes` are exactly what mmap returned, and no `&Slot`
        // can outlive `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len_bytes.get()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_slots_are_free_and_text_round_trips() {
        #[allow(clippy::unwrap_used)]
        let board = Scoreboard::new(4).unwrap();
        #[allow(clippy::unwrap_used)]
        let s = board.slot(3).unwrap();
        assert_eq!(
            SlotState::from_u8(s.state.load(Ordering::Relaxed)),
            SlotState::Free
        );
        let long_path = format!("/a/very/long{}", "/x".repeat(100));
        s.begin_request("GET", &long_path);
        assert!(s.read_text().starts_with("GET /a/very/long"));
        assert_eq!(s.read_text().len(), TEXT_WORDS * 8);
        assert_eq!(
            SlotState::from_u8(s.state.load(Ordering::Relaxed)),
            SlotState::Busy
        );
        s.end_request(1500, 503);
        assert_eq!(s.worker_requests(), 1);
        assert_eq!(s.worker_errors_5xx(), 1);
        assert_eq!(s.worker_busy_us(), 1500);
        assert_eq!(s.latency_counts()[bucket_index(1500)], 1);
        assert_eq!(s.status_counts(false), vec![(503, 1)]);
        // Out-of-range codes (none, or a nonstandard 6xx+) are not counted, not a panic.
        s.end_request(10, 0);
        s.end_request(10, 999);
        assert_eq!(s.worker_requests(), 3);
        assert_eq!(s.status_counts(false), vec![(503, 1)]);
        s.set_request_text("POST /upload", 7);
        assert_eq!(s.read_text(), "POST /upload");
        assert_eq!(
            SlotState::from_u8(s.state.load(Ordering::Relaxed)),
            SlotState::Idle
        );
        s.set_gauges(3, 2, 40);
        assert_eq!(s.queue_depth.load(Ordering::Relaxed), 3);
        assert!(board.slot(4).is_none());
    }

    #[test]
    fn claim_keeps_the_slot_counts_and_starts_the_worker_counts_at_zero() {
        #[allow(clippy::unwrap_used)]
        let board = Scoreboard::new(1).unwrap();
        #[allow(clippy::unwrap_used)]
        let s = board.slot(0).unwrap();
        s.claim(5);
        s.end_request(100, 200);
        s.end_request(2000, 500);
        // The worker exits and the next one claims the slot before anyone read it:
        // its two requests must still be there for a reader taking differences.
        s.claim(5);
        assert_eq!(s.slot_requests(), 2);
        assert_eq!(s.slot_latency_counts().iter().sum::<u64>(), 2);
        assert_eq!(s.status_counts(true), vec![(200, 1), (500, 1)]);
        // What the new worker shows as its own (top, max-requests left) starts at zero.
        assert_eq!(s.worker_requests(), 0);
        assert_eq!(s.latency_counts(), [0; BUCKETS]);
        assert_eq!(s.worker_errors_5xx(), 0);
        assert_eq!(s.worker_busy_us(), 0);
        assert!(s.status_counts(false).is_empty());
        s.end_request(100, 404);
        assert_eq!(s.worker_requests(), 1);
        assert_eq!(s.status_counts(false), vec![(404, 1)]);
        assert_eq!(s.slot_requests(), 3);
        assert_eq!(s.status_counts(true), vec![(200, 1), (404, 1), (500, 1)]);
        assert_eq!(s.spawns.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(15), 0);
        assert_eq!(bucket_index(16), 1);
        assert_eq!(bucket_index(31), 1);
        assert_eq!(bucket_index(32), 2);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        for us in [1u64, 20, 1000, 999_999, 5_000_000] {
            let i = bucket_index(us);
            assert!(bucket_upper_us(i).is_none_or(|u| us < u));
            assert!(i == 0 || us >= 1u64 << (i + 3));
        }
        assert_eq!(bucket_upper_us(0), Some(16));
        assert_eq!(bucket_upper_us(BUCKETS - 1), None);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = [0u64; BUCKETS];
        assert_eq!(quantile(&counts, 0.5), None);
        // 100 requests of ~1 ms (bucket [512, 1024) µs), one of ~3 s.
        counts[bucket_index(700)] = 100;
        counts[bucket_index(3_000_000)] = 1;
        let p50 = quantile(&counts, 0.5).unwrap_or(0.0);
        assert!((0.000_512..0.001_024).contains(&p50), "{p50}");
        let p99 = quantile(&counts, 0.99).unwrap_or(0.0);
        assert!(p99 < 0.001_024, "{p99}");
        let p100 = quantile(&counts, 1.0).unwrap_or(0.0);
        assert!((2.097_152..=4.194_304).contains(&p100), "{p100}");
        // Everything past the last bound: its lower bound.
        let mut huge = [0u64; BUCKETS];
        huge[BUCKETS - 1] = 3;
        assert_eq!(
            quantile(&huge, 0.5),
            Some((1u64 << (BUCKETS + 2)) as f64 / 1e6)
        );
        // One request: p50 and p99 fall in its bucket.
        let mut one = [0u64; BUCKETS];
        one[bucket_index(100)] = 1;
        let q = quantile(&one, 0.5).unwrap_or(0.0);
        assert!((0.000_064..=0.000_128).contains(&q), "{q}");
    }
}
