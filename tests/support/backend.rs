//! One interface over the CPU reference and the CUDA launchers, on host data: inputs in,
//! results out. The CUDA implementation (gpu.rs) uploads, poisons outputs with NaN, launches,
//! synchronizes and downloads.

use half::f16;
use strata_kernels::cpu::{self, CacheMut, CacheRef};
use strata_kernels::{DType, RopeLayout};

/// A KV cache on the host, [rows][n_kv_heads][head_dim].
#[derive(Debug, Clone, PartialEq)]
pub enum Cache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Cache {
    pub fn dtype(&self) -> DType {
        match self {
            Cache::F32(_) => DType::F32,
            Cache::F16(_) => DType::F16,
        }
    }

    pub fn as_ref(&self) -> CacheRef<'_> {
        match self {
            Cache::F32(v) => CacheRef::F32(v),
            Cache::F16(v) => CacheRef::F16(v),
        }
    }

    pub fn as_mut(&mut self) -> CacheMut<'_> {
        match self {
            Cache::F32(v) => CacheMut::F32(v),
            Cache::F16(v) => CacheMut::F16(v),
        }
    }

    /// The values as f32 (f16 widened exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Cache::F32(v) => v.clone(),
            Cache::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
        }
    }

    /// A cache of `dtype` holding `values` (rounded to f16 if needed).
    pub fn from_f32(dtype: DType, values: &[f32]) -> Cache {
        match dtype {
            DType::F16 => Cache::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            _ => Cache::F32(values.to_vec()),
        }
    }
}

/// Every op of the kernel crate, on host data. Implementations panic with the op's error on
/// failure (these are tests).
pub trait Backend: Sync {
    fn name(&self) -> &'static str;
    fn dequantize_rows(&self, dt: DType, w: &[u8], rows: usize, cols: usize) -> Vec<f32>;
    fn embedding_gather(&self, dt: DType, table: &[u8], n_vocab: usize, dim: usize, ids: &[i32]) -> Vec<f32>;
    fn matvec(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32>;
    fn matmul(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n_tokens: usize) -> Vec<f32>;
    fn rmsnorm(&self, x: &[f32], weight: &[f32], n_rows: usize, dim: usize, eps: f32) -> Vec<f32>;
    fn rope(
        &self,
        x: &[f32],
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[i32],
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<&[f32]>,
        layout: RopeLayout,
    ) -> Vec<f32>;
    fn attention_decode(
        &self,
        q: &[f32],
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32>;
    fn attention_prefill(
        &self,
        q: &[f32],
        n_tokens: usize,
        pos0: usize,
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32>;
    /// Returns the cache after appending.
    fn kv_append(&self, src: &[f32], n_tokens: usize, row_len: usize, positions: &[i32], cache: &Cache) -> Cache;
    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32>;
    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32>;
    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32>;
    fn add_bias(&self, x: &[f32], bias: &[f32], rows: usize, cols: usize) -> Vec<f32>;
    fn scale(&self, x: &[f32], s: f32) -> Vec<f32>;
    fn softmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<f32>;
    fn argmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<i32>;
}

/// The rayon CPU reference.
pub struct Cpu;

fn ok<T>(op: &str, r: strata_kernels::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("cpu {op}: {e}"))
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn dequantize_rows(&self, dt: DType, w: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * cols];
        ok("dequantize_rows", cpu::dequantize_rows(dt, w, rows, cols, &mut out));
        out
    }

    fn embedding_gather(&self, dt: DType, table: &[u8], n_vocab: usize, dim: usize, ids: &[i32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; ids.len() * dim];
        ok("embedding_gather", cpu::embedding_gather(dt, table, n_vocab, dim, ids, &mut out));
        out
    }

    fn matvec(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let mut y = vec![f32::NAN; rows];
        ok("matvec", cpu::matvec(dt, w, rows, cols, x, &mut y));
        y
    }

    fn matmul(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n_tokens: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; rows * n_tokens];
        ok("matmul", cpu::matmul(dt, w, rows, cols, x, n_tokens, &mut y));
        y
    }

    fn rmsnorm(&self, x: &[f32], weight: &[f32], n_rows: usize, dim: usize, eps: f32) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len()];
        ok("rmsnorm", cpu::rmsnorm(x, weight, n_rows, dim, eps, &mut out));
        out
    }

    fn rope(
        &self,
        x: &[f32],
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[i32],
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<&[f32]>,
        layout: RopeLayout,
    ) -> Vec<f32> {
        let mut out = x.to_vec();
        let r = cpu::rope(
            &mut out,
            n_tokens,
            n_heads,
            head_dim,
            positions,
            n_rot,
            freq_base,
            freq_scale,
            freq_factors,
            layout,
        );
        ok("rope", r);
        out
    }

    fn attention_decode(
        &self,
        q: &[f32],
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        ok(
            "attention_decode",
            cpu::attention_decode(
                q,
                k.as_ref(),
                v.as_ref(),
                n_heads,
                n_kv_heads,
                head_dim,
                n_kv,
                scale,
                window,
                &mut out,
            ),
        );
        out
    }

    fn attention_prefill(
        &self,
        q: &[f32],
        n_tokens: usize,
        pos0: usize,
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        ok(
            "attention_prefill",
            cpu::attention_prefill(
                q,
                n_tokens,
                pos0,
                k.as_ref(),
                v.as_ref(),
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                &mut out,
            ),
        );
        out
    }

    fn kv_append(&self, src: &[f32], n_tokens: usize, row_len: usize, positions: &[i32], cache: &Cache) -> Cache {
        let mut c = cache.clone();
        let rows = c.to_f32().len() / row_len.max(1);
        ok("kv_append", cpu::kv_append(src, n_tokens, row_len, positions, c.as_mut(), rows));
        c
    }

    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; gate.len()];
        ok("silu_mul", cpu::silu_mul(gate, up, &mut out));
        out
    }

    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; gate.len()];
        ok("gelu_mul", cpu::gelu_mul(gate, up, &mut out));
        out
    }

    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; a.len()];
        ok("add", cpu::add(a, b, &mut out));
        out
    }

    fn add_bias(&self, x: &[f32], bias: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len()];
        ok("add_bias", cpu::add_bias(x, bias, rows, cols, &mut out));
        out
    }

    fn scale(&self, x: &[f32], s: f32) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len()];
        ok("scale", cpu::scale(x, s, &mut out));
        out
    }

    fn softmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len()];
        ok("softmax_rows", cpu::softmax_rows(x, rows, cols, &mut out));
        out
    }

    fn argmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<i32> {
        let mut out = vec![-1; rows];
        ok("argmax_rows", cpu::argmax_rows(x, rows, cols, &mut out));
        out
    }
}
