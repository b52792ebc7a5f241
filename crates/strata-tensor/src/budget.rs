//! Memory accounting against a cap: every device (and pinned host) allocation reserves its
//! bytes here first. Going over is a typed, recoverable [`Error::OutOfMemory`]; a reservation
//! returns its bytes when dropped, so nothing leaks on any path. Pure logic, no CUDA: it is
//! tested on the CPU with property tests.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Error, Result};

#[derive(Debug)]
struct State {
    cap: u64,
    used: u64,
    peak: u64,
}

/// A shared memory budget (clones share the same accounting).
///
/// ```
/// use strata_tensor::MemoryBudget;
///
/// let budget = MemoryBudget::new("GPU 0", 1000);
/// let kv = budget.reserve(600, "KV cache")?;
/// assert_eq!(budget.available(), 400);
/// // Going over is a typed error that names the request and the budget, not a crash.
/// let err = budget.reserve(500, "layer 3").unwrap_err();
/// assert!(err.is_out_of_memory());
/// drop(kv);
/// assert_eq!((budget.used(), budget.peak()), (0, 600));
/// # Ok::<(), strata_tensor::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

/// Bytes reserved from a [`MemoryBudget`], returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget named `name` (e.g. "GPU 0", "pinned host") of `cap` bytes.
    pub fn new(name: &str, cap: u64) -> Self {
        MemoryBudget { name: name.into(), state: Arc::new(Mutex::new(State { cap, used: 0, peak: 0 })) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent (each update
        // is a single assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget's name, as error messages show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The most bytes that may be reserved at once.
    pub fn cap(&self) -> u64 {
        self.lock().cap
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The most bytes in use at any one time so far.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// Bytes that can still be reserved (`cap - used`, 0 when over the cap).
    pub fn available(&self) -> u64 {
        let s = self.lock();
        s.cap.saturating_sub(s.used)
    }

    /// Reserves `bytes` for `what` (named in the error if it does not fit).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if `used + bytes` would exceed the cap; nothing is reserved then.
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation> {
        let mut s = self.lock();
        match s.used.checked_add(bytes) {
            Some(total) if total <= s.cap => {
                s.used = total;
                s.peak = s.peak.max(total);
                Ok(Reservation { budget: self.clone(), bytes })
            }
            _ => Err(Error::OutOfMemory {
                what: what.to_string(),
                budget: self.name.to_string(),
                requested: bytes,
                cap: s.cap,
                in_use: s.used,
                peak: s.peak,
            }),
        }
    }

    /// Changes the cap (e.g. after re-reading free memory). Reservations already made stay;
    /// `used` may then exceed the new cap until they are dropped.
    pub fn set_cap(&self, cap: u64) {
        self.lock().cap = cap;
    }
}

impl Reservation {
    /// Bytes this reservation holds; they go back to the budget when it is dropped.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The budget the bytes were reserved from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.used = s.used.saturating_sub(self.bytes);
    }
}
