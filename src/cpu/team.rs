//! A team of spinning threads for the many short parallel ops of a decode step.
//!
//! A one-token step of a small model is a few hundred ops of 10 to 50 µs each (30 layers of
//! seven products, attention, norms). Through rayon the second thread mostly sleeps: an idle
//! rayon worker parks after a few dozen yields, and waking it is a futex round trip that in a
//! VM takes about as long as the op it was woken for. Measured on the default model (2-vCPU
//! Zen 4 VM, `perf record` of a 400-token decode): the worker thread had 21% of the samples,
//! the main thread 79%, and one thread decoded faster than two (78 against 69 tok/s).
//!
//! The team keeps its helpers awake instead: after their last task they spin for [`SPIN`]
//! (checking one atomic counter, `spin_loop` hints) before they park, so consecutive ops hand
//! over in well under a microsecond, the way llama.cpp's thread pool polls between graph
//! nodes. Tasks are handed out one at a time from an atomic counter, so a thread that falls
//! behind (another process took its core) takes fewer of them. The caller is a member: a team
//! for T threads has T - 1 helpers.
//!
//! - The team serves as many threads as the calling rayon pool has
//!   ([`rayon::current_num_threads`]: `RAYON_NUM_THREADS`, or a pool a test installs); with one
//!   thread, tasks run in order on the caller.
//! - One job at a time: a caller that finds the team busy (a second thread) runs its tasks on
//!   rayon instead, so nesting and concurrent callers stay correct.
//! - `STRATA_CPU_TEAM=off` runs every job on rayon (to measure the team against it).
//! - Which thread runs a task never changes a result: tasks are independent and write
//!   disjoint outputs.
//! - A task that panics does not strand the others: every task is run and counted, then the
//!   caller panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper spins for the next job after its last task before it parks. A decode
/// step hands over every few tens of µs and the gap between two tokens (sampling, detokenizing)
/// is well under this; a helper left spinning after the last token gives its core back this
/// much later.
pub const SPIN: Duration = Duration::from_millis(2);

/// One parallel op: `n` tasks of `f`, handed out by `next`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers that may join (the calling pool's threads minus the caller).
    seats: usize,
    taken: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Takes and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            // Release: the task's writes are visible to the caller that sees the count.
            self.done.fetch_add(1, Release);
        }
    }
}

/// What the caller and the helpers share.
struct Shared {
    /// The running job, null between jobs. Only ever points at a live `Job` on the stack of
    /// a caller in [`for_each`], which does not return before `inside` is back to 0 with the
    /// pointer cleared.
    job: AtomicPtr<()>,
    /// Bumped for every job; helpers watch it.
    generation: AtomicU64,
    /// Helpers between reading `job` and finishing with it.
    inside: AtomicUsize,
    /// Helpers parked on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// A job is running (one caller at a time).
    busy: AtomicBool,
    /// Helper threads started so far.
    helpers: Mutex<usize>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        job: AtomicPtr::new(std::ptr::null_mut()),
        generation: AtomicU64::new(0),
        inside: AtomicUsize::new(0),
        sleepers: AtomicUsize::new(0),
        lock: Mutex::new(()),
        wake: Condvar::new(),
        busy: AtomicBool::new(false),
        helpers: Mutex::new(0),
    })
}

/// Whether `STRATA_CPU_TEAM` leaves the team on (anything but `off`/`0`).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("STRATA_CPU_TEAM").as_deref(), Ok("off" | "0")))
}

/// Starts helpers until there are `want`; returns how many there are (fewer if the OS refused
/// a thread).
fn ensure_helpers(sh: &'static Shared, want: usize) -> usize {
    let mut have = sh.helpers.lock().unwrap_or_else(|p| p.into_inner());
    while *have < want {
        let spawned = std::thread::Builder::new().name(format!("strata-team-{}", *have + 1)).spawn(move || helper(sh));
        if spawned.is_err() {
            break;
        }
        *have += 1;
    }
    *have
}

/// A helper's life: spin for a new generation (park after [`SPIN`]), work on its job, repeat.
fn helper(sh: &'static Shared) {
    let mut seen = sh.generation.load(Acquire);
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = sh.generation.load(Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut guard = sh.lock.lock().unwrap_or_else(|p| p.into_inner());
                sh.sleepers.fetch_add(1, SeqCst);
                // A caller bumps the generation before it reads `sleepers`: either this sees
                // the new generation or the caller sees a sleeper and notifies under the lock,
                // which it can only take once this thread waits.
                while sh.generation.load(SeqCst) == seen {
                    guard = sh.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                sh.sleepers.fetch_sub(1, SeqCst);
            } else {
                pause(spins);
            }
        }
        sh.inside.fetch_add(1, SeqCst);
        let p = sh.job.load(SeqCst).cast::<Job<'static>>();
        if !p.is_null() {
            // SAFETY: a non-null pointer read while `inside` counts this thread points at a
            // live job: its caller clears the pointer and then waits for `inside` to reach 0
            // before the job goes out of scope (see `for_each`).
            let job = unsafe { &*p };
            if job.taken.fetch_add(1, Relaxed) < job.seats {
                job.work();
            }
        }
        sh.inside.fetch_sub(1, SeqCst);
    }
}

/// One step of a wait: a `spin_loop` hint for the first [`SPIN_HINTS`] steps, then a yield to
/// the OS, so that on a loaded machine a waiting thread lets the thread it waits for (or
/// another process) have the core instead of burning its time slice.
fn pause(spins: u32) {
    if spins < SPIN_HINTS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Waiting steps spent on `spin_loop` hints before [`pause`] yields: about 50 µs of spinning.
const SPIN_HINTS: u32 = 2000;

/// Runs `f(0)`, ..., `f(n - 1)`, each once, over the calling pool's threads (see the module
/// docs), and returns when all have run.
///
/// # Panics
/// If a task panicked (after every task has run).
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 {
        (0..n).for_each(f);
        return;
    }
    if !enabled() {
        (0..n).into_par_iter().for_each(f);
        return;
    }
    let sh = shared();
    if sh.busy.compare_exchange(false, true, Acquire, Relaxed).is_err() {
        (0..n).into_par_iter().for_each(f);
        return;
    }
    let seats = ensure_helpers(sh, threads - 1).min(threads - 1);
    let job = Job {
        f,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        seats,
        taken: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    sh.job.store((&raw const job).cast::<()>().cast_mut(), SeqCst);
    sh.generation.fetch_add(1, SeqCst);
    if sh.sleepers.load(SeqCst) > 0 {
        let _guard = sh.lock.lock().unwrap_or_else(|p| p.into_inner());
        sh.wake.notify_all();
    }
    job.work();
    let mut spins = 0u32;
    while job.done.load(Acquire) < n {
        spins = spins.wrapping_add(1);
        pause(spins);
    }
    // No helper may hold the pointer once this returns: clear it, then wait out the helpers
    // that read it before it was cleared.
    sh.job.store(std::ptr::null_mut(), SeqCst);
    while sh.inside.load(SeqCst) > 0 {
        spins = spins.wrapping_add(1);
        pause(spins);
    }
    sh.busy.store(false, Release);
    assert!(!job.panicked.load(Relaxed), "a task of a parallel CPU op panicked");
}

/// Splits `out` into chunks of `per` elements (the last one shorter) and runs `f(i, chunk i)`
/// for each over the team ([`for_each`]).
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], per: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let per = per.max(1);
    let len = out.len();
    let n = len.div_ceil(per);
    let base = SendPtr(out.as_mut_ptr());
    for_each(n, &|i| {
        let start = i * per;
        let end = (start + per).min(len);
        // SAFETY: chunk i is out[start..end], inside `out` (start < len since i < n), and the
        // chunks of different i are disjoint; each i runs once, while `out` is borrowed
        // mutably by this call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, chunk);
    });
}

/// A raw pointer that may cross threads: [`for_each_chunk_mut`] hands each task a disjoint
/// part of one slice.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used to rebuild disjoint sub-slices of a `&mut [T]` with `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; the pointer itself is only read.
unsafe impl<T: Send> Sync for SendPtr<T> {}
