//! Persistent helper threads that run parts of one layer's forward beside
//! the calling thread. A helper spins for a short while after each job before
//! it parks, so the next step of a step-by-step caller (a serving worker, a
//! benchmark) finds it running on the other core. Why not rayon or a scoped
//! thread per call: BENCHMARKS.md, "Why the model core is shaped this way".
//!
//! Callers never wait for a busy helper: `run_parts` claims the helpers that
//! are free and runs the remaining parts itself, so two models' workers (or
//! a training job) sharing the pool degrade to running serially, never to
//! queueing behind each other.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper keeps spinning for the next job before it parks:
/// longer than the gap between two steps of a busy worker, short enough that
/// an idle server gives the core back at once.
const HELPER_SPIN: Duration = Duration::from_micros(100);

/// How long the caller spin-waits for a helper's last part before it parks.
const CALLER_SPIN: Duration = Duration::from_micros(50);

type PartFn = dyn Fn(usize) + Sync;

/// One call's shared state: parts are claimed from `next` by the caller and
/// the helpers alike, so a thread that was preempted (tokio's and the
/// client's threads share these cores) takes fewer parts instead of making
/// everyone wait for it.
struct Job {
    f: *const PartFn,
    next: *const AtomicUsize,
    parts: usize,
    caller: Thread,
}

/// Runs parts claimed from `next` until none are left; false if one panicked.
fn claim_and_run(f: &(dyn Fn(usize) + Sync + '_), next: &AtomicUsize, parts: usize) -> bool {
    loop {
        let p = next.fetch_add(1, Ordering::Relaxed);
        if p >= parts {
            return true;
        }
        if catch_unwind(AssertUnwindSafe(|| f(p))).is_err() {
            // Let the others stop early; the caller re-raises.
            next.store(parts, Ordering::Relaxed);
            return false;
        }
    }
}

struct Helper {
    /// Claimed by one caller for one call.
    busy: AtomicBool,
    /// Bumped by the caller to post a job; the helper runs each new value once.
    posted: AtomicU64,
    /// Set to `posted`'s value by the helper when that job is finished.
    finished: AtomicU64,
    /// Whether the last job panicked.
    panicked: AtomicBool,
    /// The job: written only by the claiming caller before it bumps `posted`,
    /// read only by the helper after it sees the bump (Release/Acquire).
    job: UnsafeCell<Option<Job>>,
    thread: OnceLock<Thread>,
}

// SAFETY: `job` is handed over through the `posted`/`finished` Release/Acquire
// pair and `busy` gives it one writer at a time; the function pointer it
// holds is only called while the caller that owns the closure waits.
unsafe impl Sync for Helper {}
unsafe impl Send for Helper {}

struct Pool {
    helpers: Vec<&'static Helper>,
}

fn pool(helpers: usize) -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut v = Vec::with_capacity(helpers);
        for k in 0..helpers {
            let h: &'static Helper = Box::leak(Box::new(Helper {
                busy: AtomicBool::new(false),
                posted: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                panicked: AtomicBool::new(false),
                job: UnsafeCell::new(None),
                thread: OnceLock::new(),
            }));
            let spawned = std::thread::Builder::new()
                .name(format!("gru-helper-{k}"))
                .spawn(move || helper_loop(h));
            match spawned {
                Ok(handle) => {
                    let _ = h.thread.set(handle.thread().clone());
                    v.push(h);
                }
                // Fewer helpers only means less parallelism.
                Err(e) => tracing::warn!(error = %e, "could not start a compute helper thread"),
            }
        }
        Pool { helpers: v }
    })
}

fn helper_loop(h: &'static Helper) {
    let mut seen = 0u64;
    loop {
        let idle_since = Instant::now();
        loop {
            let p = h.posted.load(Ordering::Acquire);
            if p != seen {
                seen = p;
                break;
            }
            if idle_since.elapsed() < HELPER_SPIN {
                std::hint::spin_loop();
            } else {
                // Spurious wake-ups are fine: the loop re-checks `posted`.
                std::thread::park();
            }
        }
        // SAFETY: the caller wrote `job` before its Release store to `posted`,
        // which we read with Acquire; it keeps the closure alive until it sees
        // `finished == seen`.
        let job = unsafe { (*h.job.get()).take() };
        let mut caller = None;
        if let Some(job) = job {
            // SAFETY: as above; `next` lives in the caller's frame likewise.
            let (f, next) = unsafe { (&*job.f, &*job.next) };
            h.panicked
                .store(!claim_and_run(f, next, job.parts), Ordering::Relaxed);
            caller = Some(job.caller);
        }
        h.finished.store(seen, Ordering::Release);
        if let Some(c) = caller {
            c.unpark();
        }
    }
}

/// Waits for the claimed helpers' parts and releases them, also when the
/// caller's own part unwinds (the helpers borrow the caller's closure).
struct Claimed {
    helpers: Vec<(&'static Helper, u64)>,
}

impl Claimed {
    fn wait(&mut self) -> bool {
        let mut panicked = false;
        for (h, ticket) in self.helpers.drain(..) {
            let start = Instant::now();
            while h.finished.load(Ordering::Acquire) != ticket {
                if start.elapsed() < CALLER_SPIN {
                    std::hint::spin_loop();
                } else {
                    // The helper unparks us when it is done; blocking (not
                    // yielding in a loop) leaves the core to the runtime.
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            }
            panicked |= h.panicked.load(Ordering::Relaxed);
            h.busy.store(false, Ordering::Release);
        }
        panicked
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Runs `f(0)`, …, `f(parts − 1)` on the calling thread and up to
/// `threads − 1` helper threads (created on first use), each taking the next
/// unclaimed part until none are left, and returns when all are done. A
/// panic in any part is re-raised here.
pub(crate) fn run_parts(parts: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || threads <= 1 {
        (0..parts).for_each(f);
        return;
    }
    let pool = pool(threads - 1);
    let next = AtomicUsize::new(0);
    // SAFETY (lifetime): helpers only touch `f` and `next` before they store
    // `finished`, and `claimed` waits for that before this frame ends, also
    // on unwind.
    let f_ptr =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const PartFn>(f) };
    let mut claimed = Claimed {
        helpers: Vec::new(),
    };
    for &h in pool.helpers.iter().take(parts - 1) {
        if h.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let job = Job {
            f: f_ptr,
            next: &next,
            parts,
            caller: std::thread::current(),
        };
        // SAFETY: winning `busy` above makes this caller the only writer of
        // `job`; the helper was done with its previous job before `busy` was
        // released (`Claimed::wait` sees `finished` first), and reads this one
        // only after the Release store to `posted` below.
        unsafe { *h.job.get() = Some(job) };
        let ticket = h.posted.load(Ordering::Relaxed) + 1;
        h.posted.store(ticket, Ordering::Release);
        if let Some(t) = h.thread.get() {
            t.unpark();
        }
        claimed.helpers.push((h, ticket));
    }
    let ok = claim_and_run(f, &next, parts);
    let helper_panicked = claimed.wait();
    if !ok || helper_panicked {
        panic!("a compute part panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [1, 2, 3, 7] {
            for threads in [1, 2, 4] {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                run_parts(parts, threads, &|p| {
                    hits[p].fetch_add(1, Ordering::Relaxed);
                });
                for (p, h) in hits.iter().enumerate() {
                    assert_eq!(
                        h.load(Ordering::Relaxed),
                        1,
                        "part {p} of {parts}, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn concurrent_callers_all_finish() {
        // Callers that find the helpers busy run their parts themselves.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        run_parts(4, 2, &|p| {
                            sum.fetch_add(p + 1, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 10);
                    }
                });
            }
        });
    }

    #[test]
    fn a_helper_panic_reaches_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            run_parts(2, 2, &|p| {
                if p == 1 {
                    panic!("part 1 fails");
                }
            })
        });
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        run_parts(2, 2, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
