//! Test support: the `Backend` abstraction that lets one test body run on the CPU reference
//! and on CUDA, seeded random data, and the visible report of skipped CUDA tests.

#![allow(dead_code, clippy::too_many_arguments)]

pub mod backend;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod gpu;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use backend::{Backend, Cache, Cpu};

/// A seeded generator: every test input is reproducible from the seed proptest prints.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in [-amp, amp).
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

pub use strata_kernels::check::skip;

/// Runs `body` on the CPU reference.
pub fn on_cpu(body: impl FnOnce(&dyn Backend)) {
    body(&Cpu);
}

/// Runs `body` on CUDA, or reports the test as skipped (and passes) when no device can run it.
pub fn on_cuda(test: &str, body: impl FnOnce(&dyn Backend)) {
    #[cfg(feature = "cuda")]
    match gpu::device() {
        Ok(dev) => body(dev),
        Err(why) => skip(test, &why),
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = body;
        skip(test, strata_kernels::check::NOT_BUILT_WITH_CUDA);
    }
}

/// Fans one test body out to `<name>::cpu` and `<name>::cuda`.
#[macro_export]
macro_rules! device_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn cpu() {
                $crate::support::on_cpu($body);
            }
            #[test]
            fn cuda() {
                $crate::support::on_cuda(concat!(module_path!(), "::cuda"), $body);
            }
        }
    };
}
