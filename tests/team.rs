//! The decode team (`cpu::team`): every task runs exactly once whatever the pool, chunks
//! cover their slice, concurrent and nested callers are served, and a panicking task neither
//! strands the others nor the team.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use rayon::prelude::*;
use strata_kernels::cpu::team::{for_each, for_each_chunk_mut};

#[test]
fn every_task_runs_once_whatever_the_pool() {
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for n in [0, 1, 2, 7, 100, 1000] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each(n, &|i| {
                    counts[i].fetch_add(1, Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "threads {threads}, n {n}");
            }
        });
    }
}

#[test]
fn chunks_cover_the_slice_disjointly() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (len, per) in [(0, 4), (1, 4), (10, 3), (64, 8), (1001, 16)] {
            let mut v = vec![0usize; len];
            for_each_chunk_mut(&mut v, per, |i, c| {
                for (j, x) in c.iter_mut().enumerate() {
                    *x += i * per + j + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(k, &x)| x == k + 1), "len {len}, per {per}");
        }
    });
}

#[test]
fn concurrent_callers_and_nested_calls_are_all_served() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let total = AtomicUsize::new(0);
    pool.install(|| {
        (0..8).into_par_iter().for_each(|_| {
            for_each(5, &|_| {
                for_each(3, &|_| {
                    total.fetch_add(1, Relaxed);
                });
            });
        });
    });
    assert_eq!(total.load(Relaxed), 8 * 5 * 3);
}

#[test]
fn a_panicking_task_lets_the_others_finish_then_panics() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let ran = AtomicUsize::new(0);
    let caught = pool.install(|| {
        catch_unwind(AssertUnwindSafe(|| {
            for_each(50, &|i| {
                ran.fetch_add(1, Relaxed);
                assert!(i != 17, "task 17 fails");
            });
        }))
    });
    assert!(caught.is_err());
    assert_eq!(ran.load(Relaxed), 50);
    // The team is usable afterwards.
    let again = AtomicUsize::new(0);
    pool.install(|| {
        for_each(10, &|_| {
            again.fetch_add(1, Relaxed);
        })
    });
    assert_eq!(again.load(Relaxed), 10);
}
