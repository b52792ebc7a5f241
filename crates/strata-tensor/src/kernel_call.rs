//! One kernel launch described as data: the op, its device buffers and its dimensions. `ops`
//! builds these after checking shapes; `gpu::launch` checks every buffer is large enough for
//! the dimensions (so a launch can never read or write out of bounds), orders the stream after
//! the buffers' previous users, and calls the launcher.

use strata_kernels::{DType, RopeLayout};

use crate::gpu::DeviceBuffer;

/// A kernel launch. Field names follow the launchers in `kernels/strata.h`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum KernelCall<'a> {
    Dequantize {
        dt: DType,
        w: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        out: &'a DeviceBuffer,
    },
    Gather {
        dt: DType,
        table: &'a DeviceBuffer,
        n_vocab: usize,
        dim: usize,
        ids: &'a DeviceBuffer,
        n_ids: usize,
        out: &'a DeviceBuffer,
    },
    Matvec {
        dt: DType,
        w: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        x: &'a DeviceBuffer,
        y: &'a DeviceBuffer,
    },
    Matmul {
        dt: DType,
        w: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        x: &'a DeviceBuffer,
        n_tokens: usize,
        y: &'a DeviceBuffer,
    },
    /// The `next` set's fused decode ops (`ops::fused`): RMSNorm of one row and its 8-bit
    /// activations for weights of `dt` into `act`.
    RmsnormQ8 {
        dt: DType,
        x: &'a DeviceBuffer,
        weight: &'a DeviceBuffer,
        dim: usize,
        eps: f32,
        out: &'a DeviceBuffer,
        act: &'a DeviceBuffer,
    },
    /// y = W x' on activations `act` already quantized (by `RmsnormQ8`).
    MatvecQ8 {
        dt: DType,
        w: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        act: &'a DeviceBuffer,
        y: &'a DeviceBuffer,
    },
    /// y += W x: x quantized into the stream's scratch, the residual add in the matvec's
    /// epilogue.
    MatvecAdd {
        dt: DType,
        w: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        x: &'a DeviceBuffer,
        y: &'a DeviceBuffer,
    },
    /// out = act(W_gate x') * (W_up x') on activations `act` already quantized.
    GluQ8 {
        dt: DType,
        gate: &'a DeviceBuffer,
        up: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        act: &'a DeviceBuffer,
        gelu: bool,
        out: &'a DeviceBuffer,
    },
    Rmsnorm {
        x: &'a DeviceBuffer,
        weight: &'a DeviceBuffer,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: &'a DeviceBuffer,
    },
    Rope {
        x: &'a DeviceBuffer,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &'a DeviceBuffer,
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<&'a DeviceBuffer>,
        layout: RopeLayout,
    },
    Attention {
        q: &'a DeviceBuffer,
        n_tokens: usize,
        pos0: usize,
        cache: DType,
        k: &'a DeviceBuffer,
        v: &'a DeviceBuffer,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
        out: &'a DeviceBuffer,
    },
    /// Decode attention for the query at the position in `position` (device, one i32),
    /// over caches of `cache_rows` rows (`ops::attention_decode_at`).
    AttentionAt {
        q: &'a DeviceBuffer,
        position: &'a DeviceBuffer,
        cache: DType,
        k: &'a DeviceBuffer,
        v: &'a DeviceBuffer,
        cache_rows: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
        out: &'a DeviceBuffer,
    },
    PagedAttention {
        q: &'a DeviceBuffer,
        shape: strata_kernels::cpu::PagedShape,
        positions: &'a DeviceBuffer,
        table_start: &'a DeviceBuffer,
        tables: &'a DeviceBuffer,
        n_table: usize,
        cache: DType,
        k: &'a DeviceBuffer,
        v: &'a DeviceBuffer,
        cache_rows: usize,
        scale: f32,
        window: Option<usize>,
        out: &'a DeviceBuffer,
    },
    KvAppend {
        src: &'a DeviceBuffer,
        n_tokens: usize,
        row_len: usize,
        positions: &'a DeviceBuffer,
        cache_dt: DType,
        cache: &'a DeviceBuffer,
        cache_rows: usize,
    },
    SiluMul {
        gate: &'a DeviceBuffer,
        up: &'a DeviceBuffer,
        n: usize,
        out: &'a DeviceBuffer,
    },
    GeluMul {
        gate: &'a DeviceBuffer,
        up: &'a DeviceBuffer,
        n: usize,
        out: &'a DeviceBuffer,
    },
    Add {
        a: &'a DeviceBuffer,
        b: &'a DeviceBuffer,
        n: usize,
        out: &'a DeviceBuffer,
    },
    AddBias {
        x: &'a DeviceBuffer,
        bias: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        out: &'a DeviceBuffer,
    },
    Scale {
        x: &'a DeviceBuffer,
        factor: f32,
        n: usize,
        out: &'a DeviceBuffer,
    },
    ScatterAddScaled {
        src: &'a DeviceBuffer,
        rows: &'a DeviceBuffer,
        weights: &'a DeviceBuffer,
        n: usize,
        cols: usize,
        out_rows: usize,
        out: &'a DeviceBuffer,
    },
    Softmax {
        x: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        out: &'a DeviceBuffer,
    },
    Argmax {
        x: &'a DeviceBuffer,
        rows: usize,
        cols: usize,
        out: &'a DeviceBuffer,
    },
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl KernelCall<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            KernelCall::Dequantize { .. } => "dequantize_rows",
            KernelCall::Gather { .. } => "embedding_gather",
            KernelCall::Matvec { .. } => "matvec",
            KernelCall::Matmul { .. } => "matmul",
            KernelCall::Rmsnorm { .. } => "rmsnorm",
            KernelCall::RmsnormQ8 { .. } => "rmsnorm_quantize_q8",
            KernelCall::MatvecQ8 { .. } => "matvec_q8",
            KernelCall::MatvecAdd { .. } => "matvec_q8_add",
            KernelCall::GluQ8 { .. } => "matvec_q8_glu",
            KernelCall::Rope { .. } => "rope",
            KernelCall::Attention { n_tokens: 1, .. } => "attention_decode",
            KernelCall::Attention { .. } => "attention_prefill",
            KernelCall::AttentionAt { .. } => "attention_decode_at",
            KernelCall::PagedAttention { .. } => "paged_attention",
            KernelCall::KvAppend { .. } => "kv_append",
            KernelCall::SiluMul { .. } => "silu_mul",
            KernelCall::GeluMul { .. } => "gelu_mul",
            KernelCall::Add { .. } => "add",
            KernelCall::AddBias { .. } => "add_bias",
            KernelCall::Scale { .. } => "scale",
            KernelCall::ScatterAddScaled { .. } => "scatter_add_scaled",
            KernelCall::Softmax { .. } => "softmax_rows",
            KernelCall::Argmax { .. } => "argmax_rows",
        }
    }
}
