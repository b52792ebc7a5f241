//! The benchmarked ops, shared by the CPU and CUDA benches and the GPU report: each case's
//! shape, the bytes it must move and the flops it must do (the napkin math the timings are
//! compared with), seeded host inputs, and the CPU reference run.

#![allow(dead_code)]

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_kernels::check::Tolerance;
use strata_kernels::cpu::{self, CacheMut, CacheRef};
use strata_kernels::cuda::PrefillKernel;
use strata_kernels::{DType, RopeLayout, quant};

/// SmolLM2-135M (the default model): hidden 576, FFN 1536, 9 heads / 3 KV heads of 64,
/// vocabulary 49152.
pub const MODEL: Dims = Dims { hidden: 576, ffn: 1536, heads: 9, kv_heads: 3, head_dim: 64, vocab: 49152 };
/// Llama-7B: hidden 4096, FFN 11008, 32 heads of 128, vocabulary 32000.
pub const LLAMA7B: Dims = Dims { hidden: 4096, ffn: 11008, heads: 32, kv_heads: 32, head_dim: 128, vocab: 32000 };

#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Dequantize {
        dt: DType,
        rows: usize,
        cols: usize,
    },
    Gather {
        dt: DType,
        vocab: usize,
        dim: usize,
        n_ids: usize,
    },
    Matvec {
        dt: DType,
        rows: usize,
        cols: usize,
    },
    /// The `next` kernel set's decode matvec (`STRATA_GPU_KERNELS=next`): the activations
    /// quantized to 8 bits, then integer dot products; two launches, timed together.
    MatvecQ8 {
        dt: DType,
        rows: usize,
        cols: usize,
    },
    /// The `next` set's decode matvec with the residual add in its epilogue (y = r + W x):
    /// quantization and matvec, two launches timed together; the residual is a separate buffer
    /// so that repeated launches see the same data.
    MatvecQ8Add {
        dt: DType,
        rows: usize,
        cols: usize,
    },
    /// The `next` set's fused FFN product: act(W_gate x) * (W_up x) in one kernel, on
    /// activations quantized by a first launch (timed together). Compare with two `matvec_q8`
    /// and one `silu_mul` / `gelu_mul` of the same shape.
    GluQ8 {
        dt: DType,
        rows: usize,
        cols: usize,
        gelu: bool,
    },
    /// The `next` set's fused RMSNorm of one row and its 8-bit activations for weights of
    /// `dt`, one launch. Compare with `rmsnorm 1x<dim>` plus the quantization inside
    /// `matvec_q8`.
    RmsnormQ8 {
        dt: DType,
        dim: usize,
    },
    Matmul {
        dt: DType,
        rows: usize,
        cols: usize,
        tokens: usize,
    },
    /// The `next` kernel set's prefill matmul (`STRATA_GPU_KERNELS=next`): TF32 tensor cores.
    MatmulTc {
        dt: DType,
        rows: usize,
        cols: usize,
        tokens: usize,
    },
    Rmsnorm {
        rows: usize,
        dim: usize,
    },
    Rope {
        tokens: usize,
        heads: usize,
        head_dim: usize,
    },
    AttentionDecode {
        cache: DType,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
    },
    /// `kernel`: on a GPU, the proven kernel or one of the `next` set's (`Tiled`: CUDA cores;
    /// `Mma`: f16 tensor cores, what `STRATA_GPU_KERNELS=next` runs); the CPU has one prefill
    /// attention and ignores it. Causal prefill is compute-bound (`flops`: 4 x heads x head_dim
    /// x T (T + 1) / 2 against `bytes`: the caches and q/out once): its roofline is the f32 FMA
    /// rate for `Proven` and `Tiled` (H100 SXM: ~67 TFLOP/s) and the dense f16 tensor-core rate
    /// for `Mma` (~990 TFLOP/s).
    AttentionPrefill {
        cache: DType,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        tokens: usize,
        kernel: PrefillKernel,
    },
    KvAppend {
        cache: DType,
        tokens: usize,
        row_len: usize,
    },
    SiluMul {
        n: usize,
    },
    GeluMul {
        n: usize,
    },
    Add {
        n: usize,
    },
    Scale {
        n: usize,
    },
    Softmax {
        rows: usize,
        cols: usize,
    },
    Argmax {
        rows: usize,
        cols: usize,
    },
}

/// A KV cache on the host.
#[derive(Debug, Clone)]
pub enum Cache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Default for Cache {
    fn default() -> Self {
        Cache::F32(Vec::new())
    }
}

impl Cache {
    fn new(dt: DType, values: &[f32]) -> Cache {
        match dt {
            DType::F16 => Cache::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            _ => Cache::F32(values.to_vec()),
        }
    }

    pub fn as_ref(&self) -> CacheRef<'_> {
        match self {
            Cache::F32(v) => CacheRef::F32(v),
            Cache::F16(v) => CacheRef::F16(v),
        }
    }

    /// Little-endian bytes, for uploading.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Cache::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Cache::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Host inputs of one case. Unused fields stay empty.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Weights of any type.
    pub w: Vec<u8>,
    /// K and V caches.
    pub k: Cache,
    pub v: Cache,
    pub x: Vec<f32>,
    pub x2: Vec<f32>,
    pub ids: Vec<i32>,
}

/// What a run produces: f32 values, indices, or cache bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Cache(DType, Vec<u8>),
}

impl Output {
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Output::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Output::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Output::Cache(DType::F16, b) => {
                b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
            }
            Output::Cache(_, b) => {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
            }
        }
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Dequantize { .. } => "dequantize_rows",
            Op::Gather { .. } => "embedding_gather",
            Op::Matvec { .. } => "matvec",
            Op::MatvecQ8 { .. } => "matvec_q8",
            Op::MatvecQ8Add { .. } => "matvec_q8_add",
            Op::GluQ8 { gelu: false, .. } => "matvec_q8_glu silu",
            Op::GluQ8 { gelu: true, .. } => "matvec_q8_glu gelu",
            Op::RmsnormQ8 { .. } => "rmsnorm_quantize_q8",
            Op::Matmul { .. } => "matmul",
            Op::MatmulTc { .. } => "matmul_tc",
            Op::Rmsnorm { .. } => "rmsnorm",
            Op::Rope { .. } => "rope",
            Op::AttentionDecode { .. } => "attention_decode",
            Op::AttentionPrefill { kernel: PrefillKernel::Proven, .. } => "attention_prefill",
            Op::AttentionPrefill { kernel: PrefillKernel::Tiled, .. } => "attention_prefill_tiled",
            Op::AttentionPrefill { kernel: PrefillKernel::Mma, .. } => "attention_prefill_mma",
            Op::KvAppend { .. } => "kv_append",
            Op::SiluMul { .. } => "silu_mul",
            Op::GeluMul { .. } => "gelu_mul",
            Op::Add { .. } => "add",
            Op::Scale { .. } => "scale",
            Op::Softmax { .. } => "softmax_rows",
            Op::Argmax { .. } => "argmax_rows",
        }
    }

    /// The data type column of the report.
    pub fn dtype(&self) -> String {
        match *self {
            Op::Dequantize { dt, .. }
            | Op::Gather { dt, .. }
            | Op::Matvec { dt, .. }
            | Op::MatvecQ8 { dt, .. }
            | Op::MatvecQ8Add { dt, .. }
            | Op::GluQ8 { dt, .. }
            | Op::RmsnormQ8 { dt, .. }
            | Op::Matmul { dt, .. }
            | Op::MatmulTc { dt, .. } => dt.name().to_string(),
            Op::AttentionDecode { cache, .. } | Op::AttentionPrefill { cache, .. } | Op::KvAppend { cache, .. } => {
                format!("{cache} kv")
            }
            _ => "f32".to_string(),
        }
    }

    pub fn shape(&self) -> String {
        match *self {
            Op::Dequantize { rows, cols, .. }
            | Op::Matvec { rows, cols, .. }
            | Op::MatvecQ8 { rows, cols, .. }
            | Op::MatvecQ8Add { rows, cols, .. } => format!("{rows}x{cols}"),
            Op::GluQ8 { rows, cols, .. } => format!("2x{rows}x{cols}"),
            Op::RmsnormQ8 { dim, .. } => format!("1x{dim}"),
            Op::Gather { vocab, dim, n_ids, .. } => format!("{n_ids} of {vocab}x{dim}"),
            Op::Matmul { rows, cols, tokens, .. } | Op::MatmulTc { rows, cols, tokens, .. } => {
                format!("{rows}x{cols} T={tokens}")
            }
            Op::Rmsnorm { rows, dim } | Op::Softmax { rows, cols: dim } | Op::Argmax { rows, cols: dim } => {
                format!("{rows}x{dim}")
            }
            Op::Rope { tokens, heads, head_dim } => format!("T={tokens} {heads}x{head_dim}"),
            Op::AttentionDecode { heads, kv_heads, head_dim, n_kv, .. } => {
                format!("{heads}/{kv_heads}x{head_dim} kv={n_kv}")
            }
            Op::AttentionPrefill { heads, kv_heads, head_dim, tokens, .. } => {
                format!("{heads}/{kv_heads}x{head_dim} T={tokens}")
            }
            Op::KvAppend { tokens, row_len, .. } => format!("T={tokens} row={row_len}"),
            Op::SiluMul { n } | Op::GeluMul { n } | Op::Add { n } | Op::Scale { n } => format!("{n}"),
        }
    }

    pub fn label(&self) -> String {
        format!("{} {} {}", self.name(), self.dtype(), self.shape())
    }

    /// The fewest bytes the op must move through memory: each input read once, each output
    /// written once.
    pub fn bytes(&self) -> u64 {
        let b = match *self {
            Op::Dequantize { dt, rows, cols } => dt.matrix_bytes(rows, cols).unwrap() + rows * cols * 4,
            Op::Gather { dt, dim, n_ids, .. } => n_ids * (dt.row_bytes(dim).unwrap() + dim * 4 + 4),
            Op::Matvec { dt, rows, cols } | Op::MatvecQ8 { dt, rows, cols } => {
                dt.matrix_bytes(rows, cols).unwrap() + (rows + cols) * 4
            }
            // The residual is read and the output written.
            Op::MatvecQ8Add { dt, rows, cols } => dt.matrix_bytes(rows, cols).unwrap() + (2 * rows + cols) * 4,
            // Both matrices, x, and the gated output (no gate or up vectors in memory).
            Op::GluQ8 { dt, rows, cols, .. } => 2 * dt.matrix_bytes(rows, cols).unwrap() + (rows + cols) * 4,
            // x read, the norm written (f32) and the activations written; the weight is read once.
            Op::RmsnormQ8 { dt, dim } => 3 * dim * 4 + strata_kernels::cuda::act_q8_bytes(dt, dim).unwrap_or(0),
            Op::Matmul { dt, rows, cols, tokens } | Op::MatmulTc { dt, rows, cols, tokens } => {
                dt.matrix_bytes(rows, cols).unwrap() + tokens * (rows + cols) * 4
            }
            Op::Rmsnorm { rows, dim } => 2 * rows * dim * 4 + dim * 4,
            Op::Rope { tokens, heads, head_dim } => 2 * tokens * heads * head_dim * 4 + tokens * 4,
            Op::AttentionDecode { cache, heads, kv_heads, head_dim, n_kv } => {
                2 * n_kv * kv_heads * head_dim * cache.block_bytes() + 2 * heads * head_dim * 4
            }
            Op::AttentionPrefill { cache, heads, kv_heads, head_dim, tokens, .. } => {
                2 * tokens * kv_heads * head_dim * cache.block_bytes() + 2 * tokens * heads * head_dim * 4
            }
            Op::KvAppend { cache, tokens, row_len } => tokens * row_len * (4 + cache.block_bytes()) + tokens * 4,
            Op::SiluMul { n } | Op::GeluMul { n } | Op::Add { n } => 3 * n * 4,
            Op::Scale { n } => 2 * n * 4,
            Op::Softmax { rows, cols } => 2 * rows * cols * 4,
            Op::Argmax { rows, cols } => rows * cols * 4 + rows * 4,
        };
        b as u64
    }

    /// Arithmetic: 2 flops per multiply-add of the products; 0 where the op is pure data
    /// movement.
    pub fn flops(&self) -> u64 {
        let f = match *self {
            Op::Matvec { rows, cols, .. } | Op::MatvecQ8 { rows, cols, .. } | Op::MatvecQ8Add { rows, cols, .. } => {
                2 * rows * cols
            }
            Op::GluQ8 { rows, cols, .. } => 4 * rows * cols,
            Op::Matmul { rows, cols, tokens, .. } | Op::MatmulTc { rows, cols, tokens, .. } => 2 * rows * cols * tokens,
            Op::AttentionDecode { heads, head_dim, n_kv, .. } => 4 * heads * head_dim * n_kv,
            Op::AttentionPrefill { heads, head_dim, tokens, .. } => 4 * heads * head_dim * tokens * (tokens + 1) / 2,
            _ => 0,
        };
        f as u64
    }

    /// The tolerance of device results against the CPU reference.
    pub fn tolerance(&self) -> Tolerance {
        match self {
            Op::Dequantize { .. } | Op::Gather { .. } | Op::KvAppend { .. } | Op::Add { .. } | Op::Scale { .. } => {
                Tolerance::STRICT
            }
            Op::Argmax { .. } => Tolerance::STRICT,
            Op::MatmulTc { .. } => Tolerance::TF32,
            Op::AttentionPrefill { kernel: PrefillKernel::Mma, cache: DType::F16, .. } => Tolerance::F16_ATTENTION,
            Op::SiluMul { .. } | Op::GeluMul { .. } | Op::Rope { .. } => Tolerance::F32_ROUNDING,
            _ => Tolerance::F32_ACCUMULATION,
        }
    }

    /// The input whose size dominates (weights, caches), which the GPU benches keep several
    /// copies of so that repeated launches are not served from L2.
    pub fn big_input_bytes(&self) -> usize {
        match *self {
            Op::Dequantize { dt, rows, cols }
            | Op::Matvec { dt, rows, cols }
            | Op::MatvecQ8 { dt, rows, cols }
            | Op::MatvecQ8Add { dt, rows, cols }
            | Op::Matmul { dt, rows, cols, .. }
            | Op::MatmulTc { dt, rows, cols, .. } => dt.matrix_bytes(rows, cols).unwrap(),
            Op::GluQ8 { dt, rows, cols, .. } => 2 * dt.matrix_bytes(rows, cols).unwrap(),
            _ => 0,
        }
    }

    pub fn inputs(&self, seed: u64) -> Inputs {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut i = Inputs::default();
        match *self {
            Op::Dequantize { dt, rows, cols }
            | Op::Matvec { dt, rows, cols }
            | Op::Matmul { dt, rows, cols, .. }
            | Op::MatmulTc { dt, rows, cols, .. } => {
                i.w = weights(dt, rows, cols, &mut r);
                let tokens = match *self {
                    Op::Matmul { tokens, .. } | Op::MatmulTc { tokens, .. } => tokens,
                    _ => 1,
                };
                i.x = uniform(&mut r, tokens * cols, 1.0);
            }
            Op::MatvecQ8 { dt, rows, cols } => {
                i.w = weights(dt, rows, cols, &mut r);
                i.x = uniform(&mut r, cols, 1.0);
                // x2 is the 8-bit activation buffer (written by the first launch): its bytes.
                i.x2 = vec![0.0; strata_kernels::cuda::act_q8_bytes(dt, cols).unwrap_or(0).div_ceil(4)];
            }
            Op::MatvecQ8Add { dt, rows, cols } => {
                i.w = weights(dt, rows, cols, &mut r);
                i.x = uniform(&mut r, cols, 1.0);
                i.x2 = vec![0.0; strata_kernels::cuda::act_q8_bytes(dt, cols).unwrap_or(0).div_ceil(4)];
                // The residual, in the V buffer (f32).
                i.v = Cache::F32(uniform(&mut r, rows, 4.0));
            }
            Op::GluQ8 { dt, rows, cols, .. } => {
                // Gate rows, then up rows: one buffer of 2 x rows.
                i.w = weights(dt, 2 * rows, cols, &mut r);
                i.x = uniform(&mut r, cols, 1.0);
                i.x2 = vec![0.0; strata_kernels::cuda::act_q8_bytes(dt, cols).unwrap_or(0).div_ceil(4)];
            }
            Op::RmsnormQ8 { dt, dim } => {
                i.x = uniform(&mut r, dim, 3.0);
                i.x2 = uniform(&mut r, dim, 1.0);
                // The activations, in the K buffer.
                i.k = Cache::F32(vec![0.0; strata_kernels::cuda::act_q8_bytes(dt, dim).unwrap_or(0).div_ceil(4)]);
            }
            Op::Gather { dt, vocab, dim, n_ids } => {
                i.w = weights(dt, vocab, dim, &mut r);
                i.ids = (0..n_ids).map(|_| r.random_range(0..vocab as i32)).collect();
            }
            Op::Rmsnorm { rows, dim } => {
                i.x = uniform(&mut r, rows * dim, 3.0);
                i.x2 = uniform(&mut r, dim, 1.0);
            }
            Op::Rope { tokens, heads, head_dim } => {
                i.x = uniform(&mut r, tokens * heads * head_dim, 1.0);
                i.ids = (0..tokens as i32).map(|t| 100 + t).collect();
            }
            Op::AttentionDecode { cache, heads, kv_heads, head_dim, n_kv } => {
                i.x = uniform(&mut r, heads * head_dim, 1.0);
                i.k = Cache::new(cache, &uniform(&mut r, n_kv * kv_heads * head_dim, 1.0));
                i.v = Cache::new(cache, &uniform(&mut r, n_kv * kv_heads * head_dim, 1.0));
            }
            Op::AttentionPrefill { cache, heads, kv_heads, head_dim, tokens, .. } => {
                i.x = uniform(&mut r, tokens * heads * head_dim, 1.0);
                i.k = Cache::new(cache, &uniform(&mut r, tokens * kv_heads * head_dim, 1.0));
                i.v = Cache::new(cache, &uniform(&mut r, tokens * kv_heads * head_dim, 1.0));
            }
            Op::KvAppend { cache, tokens, row_len } => {
                i.x = uniform(&mut r, tokens * row_len, 1.0);
                i.ids = (0..tokens as i32).collect();
                i.k = Cache::new(cache, &vec![0.0; 2 * tokens * row_len]);
            }
            Op::SiluMul { n } | Op::GeluMul { n } | Op::Add { n } | Op::Scale { n } => {
                i.x = uniform(&mut r, n, 8.0);
                i.x2 = uniform(&mut r, n, 2.0);
            }
            Op::Softmax { rows, cols } | Op::Argmax { rows, cols } => i.x = uniform(&mut r, rows * cols, 10.0),
        }
        i
    }

    /// Runs the CPU reference.
    pub fn run_cpu(&self, i: &Inputs) -> Output {
        let scale = |hd: usize| 1.0 / (hd as f32).sqrt();
        match *self {
            Op::Dequantize { dt, rows, cols } => {
                let mut o = vec![0.0; rows * cols];
                cpu::dequantize_rows(dt, &i.w, rows, cols, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Gather { dt, vocab, dim, .. } => {
                let mut o = vec![0.0; i.ids.len() * dim];
                cpu::embedding_gather(dt, &i.w, vocab, dim, &i.ids, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Matvec { dt, rows, cols } => {
                let mut o = vec![0.0; rows];
                cpu::matvec(dt, &i.w, rows, cols, &i.x, &mut o).unwrap();
                Output::F32(o)
            }
            // The CPU fast path rounds the activations as the kernel does.
            Op::MatvecQ8 { dt, rows, cols } => {
                let mut o = vec![0.0; rows];
                cpu::fast::matvec(dt, &i.w, rows, cols, &i.x, &mut o).unwrap();
                Output::F32(o)
            }
            Op::MatvecQ8Add { dt, rows, cols } => {
                let mut o = vec![0.0; rows];
                cpu::fast::matvec(dt, &i.w, rows, cols, &i.x, &mut o).unwrap();
                let Cache::F32(res) = &i.v else { unreachable!("MatvecQ8Add's residual is f32") };
                let mut y = vec![0.0; rows];
                cpu::add(res, &o, &mut y).unwrap();
                Output::F32(y)
            }
            Op::GluQ8 { dt, rows, cols, gelu } => {
                let mut gu = vec![0.0; 2 * rows];
                cpu::fast::matvec(dt, &i.w, 2 * rows, cols, &i.x, &mut gu).unwrap();
                let mut o = vec![0.0; rows];
                let f = if gelu { cpu::gelu_mul } else { cpu::silu_mul };
                f(&gu[..rows], &gu[rows..], &mut o).unwrap();
                Output::F32(o)
            }
            Op::RmsnormQ8 { dim, .. } => {
                let mut o = vec![0.0; dim];
                cpu::rmsnorm(&i.x, &i.x2, 1, dim, 1e-5, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Matmul { dt, rows, cols, tokens } | Op::MatmulTc { dt, rows, cols, tokens } => {
                let mut o = vec![0.0; rows * tokens];
                cpu::matmul(dt, &i.w, rows, cols, &i.x, tokens, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Rmsnorm { rows, dim } => {
                let mut o = vec![0.0; rows * dim];
                cpu::rmsnorm(&i.x, &i.x2, rows, dim, 1e-5, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Rope { tokens, heads, head_dim } => {
                let mut o = i.x.clone();
                cpu::rope(&mut o, tokens, heads, head_dim, &i.ids, head_dim, 10000.0, 1.0, None, RopeLayout::Adjacent)
                    .unwrap();
                Output::F32(o)
            }
            Op::AttentionDecode { heads, kv_heads, head_dim, n_kv, .. } => {
                let mut o = vec![0.0; heads * head_dim];
                cpu::attention_decode(
                    &i.x,
                    i.k.as_ref(),
                    i.v.as_ref(),
                    heads,
                    kv_heads,
                    head_dim,
                    n_kv,
                    scale(head_dim),
                    None,
                    &mut o,
                )
                .unwrap();
                Output::F32(o)
            }
            Op::AttentionPrefill { heads, kv_heads, head_dim, tokens, .. } => {
                let mut o = vec![0.0; tokens * heads * head_dim];
                cpu::attention_prefill(
                    &i.x,
                    tokens,
                    0,
                    i.k.as_ref(),
                    i.v.as_ref(),
                    heads,
                    kv_heads,
                    head_dim,
                    scale(head_dim),
                    None,
                    &mut o,
                )
                .unwrap();
                Output::F32(o)
            }
            Op::KvAppend { cache, tokens, row_len } => {
                // The copy of the cache is part of what this bench times on the CPU.
                let mut c = i.k.clone();
                let m = match &mut c {
                    Cache::F16(h) => CacheMut::F16(h),
                    Cache::F32(f) => CacheMut::F32(f),
                };
                cpu::kv_append(&i.x, tokens, row_len, &i.ids, m, 2 * tokens).unwrap();
                Output::Cache(cache, c.bytes())
            }
            Op::SiluMul { n } => {
                let mut o = vec![0.0; n];
                cpu::silu_mul(&i.x, &i.x2, &mut o).unwrap();
                Output::F32(o)
            }
            Op::GeluMul { n } => {
                let mut o = vec![0.0; n];
                cpu::gelu_mul(&i.x, &i.x2, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Add { n } => {
                let mut o = vec![0.0; n];
                cpu::add(&i.x, &i.x2, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Scale { n } => {
                let mut o = vec![0.0; n];
                cpu::scale(&i.x, 0.5, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Softmax { rows, cols } => {
                let mut o = vec![0.0; rows * cols];
                cpu::softmax_rows(&i.x, rows, cols, &mut o).unwrap();
                Output::F32(o)
            }
            Op::Argmax { rows, cols } => {
                let mut o = vec![0; rows];
                cpu::argmax_rows(&i.x, rows, cols, &mut o).unwrap();
                Output::I32(o)
            }
        }
    }
}

/// The cases benchmarked on the CPU: every op at the default model's shapes and at 7B shapes.
/// Weight-type sweeps are limited to the shapes that matter so that a run stays in minutes on
/// two cores.
pub fn cpu_cases() -> Vec<Op> {
    let mut v = Vec::new();
    let (m, b) = (MODEL, LLAMA7B);
    // 576 columns are not whole super-blocks: the K-quants and IQ4_XS are in the cpu_fast bench.
    for dt in DType::ALL.into_iter().filter(|d| !d.is_super_block()) {
        v.push(Op::Matvec { dt, rows: m.ffn, cols: m.hidden });
        v.push(Op::Matvec { dt, rows: b.ffn, cols: b.hidden });
        v.push(Op::Dequantize { dt, rows: m.ffn, cols: m.hidden });
    }
    for (rows, cols) in [(m.hidden, m.hidden), (m.hidden, m.ffn), (m.vocab, m.hidden)] {
        v.push(Op::Matvec { dt: DType::Q4_1, rows, cols });
    }
    for (rows, cols) in [(b.hidden, b.hidden), (b.hidden, b.ffn)] {
        v.push(Op::Matvec { dt: DType::Q4_0, rows, cols });
    }
    v.push(Op::Matmul { dt: DType::Q4_1, rows: m.ffn, cols: m.hidden, tokens: 64 });
    v.push(Op::Matmul { dt: DType::Q4_0, rows: b.hidden, cols: b.hidden, tokens: 16 });
    v.extend(common_cases());
    v
}

/// Cases benchmarked the same way on CPU and CUDA (everything but the weight-type sweeps).
pub fn common_cases() -> Vec<Op> {
    let mut v = Vec::new();
    for d in [MODEL, LLAMA7B] {
        v.push(Op::Gather {
            dt: if d.vocab == MODEL.vocab { DType::Q8_0 } else { DType::Q4_0 },
            vocab: d.vocab,
            dim: d.hidden,
            n_ids: 64,
        });
        v.push(Op::Rmsnorm { rows: 1, dim: d.hidden });
        v.push(Op::Rmsnorm { rows: 64, dim: d.hidden });
        v.push(Op::Rope { tokens: 1, heads: d.heads, head_dim: d.head_dim });
        v.push(Op::Rope { tokens: 64, heads: d.heads, head_dim: d.head_dim });
        v.push(Op::AttentionDecode {
            cache: DType::F16,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            n_kv: 1024,
        });
        v.push(Op::AttentionDecode {
            cache: DType::F32,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            n_kv: 1024,
        });
        v.push(Op::AttentionPrefill {
            cache: DType::F16,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            tokens: 128,
            kernel: PrefillKernel::Proven,
        });
        v.push(Op::KvAppend { cache: DType::F16, tokens: 1, row_len: d.kv_heads * d.head_dim });
        v.push(Op::KvAppend { cache: DType::F16, tokens: 64, row_len: d.kv_heads * d.head_dim });
        v.push(Op::SiluMul { n: d.ffn });
        v.push(Op::SiluMul { n: 64 * d.ffn });
        v.push(Op::GeluMul { n: d.ffn });
        v.push(Op::GeluMul { n: 64 * d.ffn });
        v.push(Op::Add { n: d.hidden });
        v.push(Op::Add { n: 64 * d.hidden });
        v.push(Op::Scale { n: 64 * d.hidden });
        v.push(Op::Softmax { rows: 1, cols: d.vocab });
        v.push(Op::Argmax { rows: 1, cols: d.vocab });
    }
    v
}

/// Cases for CUDA: every weight type at both models' shapes for the weight ops, and the
/// common cases.
pub fn cuda_cases() -> Vec<Op> {
    let mut v = Vec::new();
    let (m, b) = (MODEL, LLAMA7B);
    // The types with CUDA kernels (`cuda::supports`); the others return an unsupported-type error.
    for dt in DType::ALL.into_iter().filter(|&d| strata_kernels::cuda::supports(d)) {
        // The small model's 576-wide rows are not whole 256-value super-blocks: the K-quants
        // and IQ4_XS take its 1536-wide down projection there instead (every 7B shape fits).
        for (rows, cols) in [
            (m.ffn, m.hidden),
            (m.vocab, m.hidden),
            (m.hidden, m.ffn),
            (b.hidden, b.hidden),
            (b.ffn, b.hidden),
            (b.hidden, b.ffn),
        ] {
            if dt.row_bytes(cols).is_ok() {
                v.push(Op::Matvec { dt, rows, cols });
            }
        }
        v.push(Op::Matmul { dt, rows: b.hidden, cols: b.hidden, tokens: 512 });
        v.push(Op::Dequantize { dt, rows: b.ffn, cols: b.hidden });
    }
    v.push(Op::Matmul { dt: DType::Q4_1, rows: m.ffn, cols: m.hidden, tokens: 64 });
    // The `next` prefill matmul at the 7B shapes of pp512, beside the proven one above.
    for dt in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
        for (rows, cols) in [(b.hidden, b.hidden), (b.ffn, b.hidden), (b.hidden, b.ffn)] {
            v.push(Op::MatmulTc { dt, rows, cols, tokens: 512 });
        }
    }
    // The `next` prefill attentions (CUDA-core tiles, tensor cores) at pp512 of a 7B, beside the
    // proven kernel on the same shape.
    for kernel in [PrefillKernel::Proven, PrefillKernel::Tiled, PrefillKernel::Mma] {
        v.push(Op::AttentionPrefill {
            cache: DType::F16,
            heads: b.heads,
            kv_heads: b.kv_heads,
            head_dim: b.head_dim,
            tokens: 512,
            kernel,
        });
    }
    // The `next` decode matvec at the 7B shapes the GPU-speed issue names, every quantized type.
    for dt in DType::QUANTIZED {
        for (rows, cols) in [(b.hidden, b.hidden), (b.ffn, b.hidden), (b.hidden, b.ffn), (b.vocab, b.hidden)] {
            if dt.row_bytes(cols).is_ok() {
                v.push(Op::MatvecQ8 { dt, rows, cols });
            }
        }
    }
    // The `next` set's fused decode ops at 7B shapes (issue 13, section 4): the residual add in
    // the output projections' epilogue (attention output 4096x4096, FFN down 4096x11008), the
    // FFN's gate and up with SiLU (and Gemma's GELU) in one kernel, and RMSNorm with the
    // activation quantization. Beside them above: matvec_q8 of the same shapes, silu_mul and
    // rmsnorm 1x4096.
    for dt in [DType::Q4_0, DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        v.push(Op::MatvecQ8Add { dt, rows: b.hidden, cols: b.hidden });
        v.push(Op::MatvecQ8Add { dt, rows: b.hidden, cols: b.ffn });
        v.push(Op::GluQ8 { dt, rows: b.ffn, cols: b.hidden, gelu: false });
        v.push(Op::RmsnormQ8 { dt, dim: b.hidden });
    }
    v.push(Op::GluQ8 { dt: DType::Q4_K, rows: b.ffn, cols: b.hidden, gelu: true });
    // The output projection of a 7B model: large enough that launch overhead does not hide
    // the kernel's own bandwidth.
    for dt in [DType::Q4_0, DType::Q8_0] {
        v.push(Op::Matvec { dt, rows: b.vocab, cols: b.hidden });
    }
    v.extend(common_cases());
    v
}

/// A `rows` x `cols` weight matrix of `dt`: quantized from uniform values where strata
/// quantizes to `dt`, else valid random blocks (`quant::random_blocks`: Q5_0, Q5_1, the
/// K-quants, the IQ4 types).
fn weights(dt: DType, rows: usize, cols: usize, r: &mut ChaCha8Rng) -> Vec<u8> {
    let values = uniform(r, rows * cols, 1.0);
    quant::quantize_matrix(dt, &values, rows, cols)
        .unwrap_or_else(|_| quant::random_blocks(dt, rows * cols / dt.block_values(), r.random()))
}
