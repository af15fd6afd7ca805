//! Worker processes: what runs in each child after fork.
//!
//! A worker is entered from Python (`ferrocorn.worker`), after the app is imported and
//! the signal handlers are installed, and stays in Rust until it stops. Its state is a
//! [`Phase`] held in an atomic, so a Python signal handler can move it from `Serving`
//! to `Draining` while the Rust loop is running.

pub mod aio;
pub mod asgi;
pub mod gthread;
pub mod sync;
pub mod watchdog;
pub mod ws;

use std::sync::atomic::{AtomicU8, Ordering};

use crate::http::{HttpError, RequestHead};

/// How reading a request head ended, in every worker class.
#[derive(Debug)]
pub(crate) enum HeadRead {
    Head(RequestHead),
    /// EOF, a reset, or no byte of a new request before the deadline: close quietly,
    /// as gunicorn's NoMoreData.
    Closed,
    /// A malformed head: answer with its status.
    Invalid(HttpError),
    /// Part of a head arrived, then not the rest within `--timeout`: 408.
    TimedOut,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and serving.
    Serving = 0,
    /// SIGTERM: finish the current request, take what is already queued in the
    /// listen backlog, then exit.
    Draining = 1,
    /// Leave as soon as the current request is done (max-requests reached).
    Exiting = 2,
}

/// A [`Phase`] shared with signal handlers.
#[derive(Debug)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    /// A worker that is serving.
    pub fn new() -> Self {
        PhaseCell(AtomicU8::new(Phase::Serving as u8))
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            _ => Phase::Exiting,
        }
    }

    /// Moves to `p`, never backwards (a drain cannot be undone by a later signal).
    pub fn advance(&self, p: Phase) {
        self.0.fetch_max(p as u8, Ordering::AcqRel);
    }
}

impl Default for PhaseCell {
    fn default() -> Self {
        Self::new()
    }
}
