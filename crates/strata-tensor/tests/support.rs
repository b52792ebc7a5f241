//! Test support: the shared GPU (or why there is none), the cpu/cuda fan-out macro, and
//! seeded data.

#![allow(dead_code)]

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_kernels::check::Tolerance;
use strata_tensor::{Gpu, GpuOptions, Stream, Tensor};

pub use strata_kernels::check::skip;

static GPU: OnceLock<Result<(Gpu, Stream), String>> = OnceLock::new();

/// The first GPU and a stream on it, or why there is none.
pub fn gpu() -> Result<&'static (Gpu, Stream), String> {
    GPU.get_or_init(|| {
        let gpu = strata_tensor::open_gpu(0, &GpuOptions::default()).map_err(|e| skip_reason(&e))?;
        let stream = gpu.stream("compute").map_err(|e| skip_reason(&e))?;
        Ok((gpu, Stream::Gpu(stream)))
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Why a GPU test cannot run, in the workspace's one wording per reason (`strata_kernels::check`).
pub fn skip_reason(e: &strata_tensor::Error) -> String {
    use strata_kernels::check;
    use strata_tensor::{Error, Unavailable};
    match e {
        Error::Unavailable(Unavailable::NotBuilt) => check::NOT_BUILT_WITH_CUDA.to_string(),
        Error::Unavailable(Unavailable::NoDriver) => check::NO_DRIVER.to_string(),
        other => check::no_cuda_device(other),
    }
}

pub fn on_cpu(body: impl FnOnce(&Stream)) {
    body(&Stream::Host);
}

pub fn on_cuda(test: &str, body: impl FnOnce(&Stream)) {
    match gpu() {
        Ok((_, s)) => body(s),
        Err(why) => skip(test, &why),
    }
}

/// Fans one body out to `<name>::cpu` and `<name>::cuda`.
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

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn uniform(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-amp..amp)).collect()
}

/// On the host the tensor path runs the very same reference code: results must be identical.
/// On a GPU, the op's own tolerance applies.
pub fn tol(s: &Stream, gpu: Tolerance) -> Tolerance {
    match s {
        Stream::Host => Tolerance::STRICT,
        Stream::Gpu(_) => gpu,
    }
}

/// An f32 tensor on the stream's device, filled with NaN so unwritten outputs show.
pub fn poisoned(shape: &[usize], s: &Stream) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, vec![f32::NAN; n]).unwrap().to_device(s, "poisoned output").unwrap()
}

pub fn on(s: &Stream, t: Tensor) -> Tensor {
    t.to_device(s, "test input").unwrap()
}
