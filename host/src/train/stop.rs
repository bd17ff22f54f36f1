//! Stopping a run on SIGINT (Ctrl-C) or SIGTERM (what SLURM and Kubernetes send before SIGKILL on preemption).
//!
//! The first signal asks the loop to stop at a batch boundary: the batch in flight is dropped when its updates have
//! not begun (its rollouts stop at the next decode step) and finished when they have; a checkpoint of that boundary
//! is written and the process exits with 128 + the signal (130, 143), as shells report it. A second signal exits at
//! once with the same code, leaving the last checkpoint (always at a batch boundary) as the one to resume from.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::distributed::World;

/// How often a rank in the middle of rollouts or an evaluation asks whether another rank was told to stop.
const POLL_PEERS: Duration = Duration::from_millis(200);

/// Exit code after SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code after SIGTERM (128 + 15).
pub const EXIT_TERMINATED: i32 = 143;

/// Whether a stop was requested, and by which signal.
#[derive(Clone, Debug)]
pub struct StopRequest {
    signal: Arc<AtomicUsize>,
    /// This process got a signal (or [`StopRequest::request`]); a signal arriving while it is set exits at once.
    requested: Arc<AtomicBool>,
    /// Another data-parallel rank's signal, adopted ([`StopRequest::adopt`]); 0 while none. Kept apart from
    /// `requested` so that this process's own signal, which torchrun sends a moment later, is a first signal, not a
    /// second one that would exit before the checkpoint.
    adopted: Arc<AtomicUsize>,
}

impl StopRequest {
    /// The process-wide request, with SIGINT and SIGTERM handlers installed on first use (several trainings in one
    /// process, as in tests, share it).
    pub fn install() -> anyhow::Result<StopRequest> {
        static SHARED: OnceLock<StopRequest> = OnceLock::new();
        if let Some(s) = SHARED.get() {
            return Ok(s.clone());
        }
        let s = StopRequest::default();
        for signal in [SIGINT, SIGTERM] {
            // Registered first so that it sees the flag as the previous signal left it: only a second signal exits.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, s.requested.clone())?;
            signal_hook::flag::register_usize(signal, s.signal.clone(), signal as usize)?;
            signal_hook::flag::register(signal, s.requested.clone())?;
        }
        Ok(SHARED.get_or_init(|| s).clone())
    }

    /// Whether a stop was asked for (here, or on another rank and adopted).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst) || self.adopted.load(Ordering::SeqCst) != 0
    }

    /// The signal that asked for the stop: this process's (SIGINT when it was asked for without one), else the one
    /// adopted from another rank; `None` before any.
    pub fn signal(&self) -> Option<i32> {
        if self.requested.load(Ordering::SeqCst) {
            return Some(match self.signal.load(Ordering::SeqCst) as i32 {
                0 => SIGINT,
                signal => signal,
            });
        }
        match self.adopted.load(Ordering::SeqCst) as i32 {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Stop as another data-parallel rank does, for the signal it got (its [`signal`](Self::signal)), unless a stop
    /// was asked for already: every rank then exits with the same code and names the same signal. A signal to this
    /// process afterwards still counts as its first.
    pub fn adopt(&self, signal: Option<i32>) {
        if let (Some(signal), false) = (signal, self.requested()) {
            self.adopted.store(signal as usize, Ordering::SeqCst);
        }
    }

    /// Ask for a stop as `signal` would (for tests and embedding programs).
    pub fn request(&self, signal: i32) {
        self.signal.store(signal as usize, Ordering::SeqCst);
        self.requested.store(true, Ordering::SeqCst);
    }

    /// The exit code for the signal that asked (130 when none or unknown).
    pub fn exit_code(&self) -> i32 {
        match self.signal() {
            Some(SIGTERM) => EXIT_TERMINATED,
            _ => EXIT_INTERRUPTED,
        }
    }

    /// What to call the signal in messages.
    pub fn name(&self) -> &'static str {
        match self.signal() {
            Some(SIGTERM) => "SIGTERM",
            _ => "Ctrl-C",
        }
    }
}

/// Whether work that can be dropped (rollouts, an evaluation) should stop now: a signal reached this process, which
/// then tells the other ranks, or another rank told of one (asked at most every `POLL_PEERS`), which this process
/// then adopts.
pub fn drop_work<'a>(stop: &'a StopRequest, world: &'a World) -> impl Fn() -> bool + 'a {
    let polled: Cell<Option<Instant>> = Cell::new(None);
    move || {
        if let Some(signal) = stop.signal() {
            world.announce_stop(signal);
            return true;
        }
        if !world.is_distributed() || polled.get().is_some_and(|t| t.elapsed() < POLL_PEERS) {
            return false;
        }
        polled.set(Some(Instant::now()));
        let announced = world.stop_announced(&[SIGTERM, SIGINT]);
        stop.adopt(announced);
        announced.is_some()
    }
}

impl Default for StopRequest {
    fn default() -> Self {
        StopRequest {
            signal: Arc::new(AtomicUsize::new(0)),
            requested: Arc::new(AtomicBool::new(false)),
            adopted: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_signal() {
        let s = StopRequest::default();
        assert!(!s.requested());
        s.request(SIGTERM);
        assert!(s.requested());
        assert_eq!((s.exit_code(), s.name()), (143, "SIGTERM"));
        let s = StopRequest::default();
        s.request(SIGINT);
        assert_eq!(s.exit_code(), 130);
    }

    #[test]
    fn a_rank_adopts_another_ranks_signal_but_keeps_its_own() {
        let s = StopRequest::default();
        assert_eq!(s.signal(), None);
        s.adopt(None);
        assert!(!s.requested());
        s.adopt(Some(SIGTERM));
        assert_eq!((s.signal(), s.exit_code(), s.name()), (Some(SIGTERM), 143, "SIGTERM"));
        assert!(s.requested());
        // The flag a signal handler reads to exit at once on a second signal is untouched: this process's own
        // SIGTERM, a moment later, is its first.
        assert!(!s.requested.load(Ordering::SeqCst));
        let s = StopRequest::default();
        s.request(SIGINT);
        s.adopt(Some(SIGTERM));
        assert_eq!((s.signal(), s.exit_code()), (Some(SIGINT), 130));
    }
}
