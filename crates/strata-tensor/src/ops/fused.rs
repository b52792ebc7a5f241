//! Fused small ops of the `next` decode step (issue 13, host overhead): fewer launches and
//! fewer activation round trips through device memory per token. Each op is defined as the
//! composition of existing ops, and that composition is what it computes on the host (bit for
//! bit the unfused ops' results) and on a GPU where a fused kernel does not apply (plain-float
//! weights, mismatched types, shapes without 8-bit blocks). On a GPU the fused kernels are:
//! - [`rmsnorm_quantize`]: RMSNorm of one row and the 8-bit activations of the result
//!   (`kernels/fused_q8.cu`), kept in [`QuantizedActs`] for the matvecs that follow
//!   ([`matvec_quantized`], [`matvec_glu`]): one launch where the unfused step takes the norm
//!   plus one activation quantization per matvec;
//! - [`matvec_glu`]: the FFN's gate and up products and `act(gate) * up` in one kernel;
//! - [`matvec_add`]: `y += W x`, the residual add in the epilogue of the output projections.
//!
//! The products run on 8-bit activations (the `next` decode matvec's numerics, the CPU fast
//! path's rounding), so a caller uses these ops only under [`super::GpuKernels::Next`]: the
//! model's decode step does (`strata-model`'s `forward.rs`), and `proven` is unchanged.

use strata_kernels::cuda;

use super::{check_devices, dev, dims2, expect_dtype, expect_shape, f32_out, gpu_stream, weight_type};
use crate::gpu;
use crate::kernel_call::KernelCall;
use crate::tensor::Stream;
use crate::{DType, Error, Result, Tensor};

/// The gated activation of a fused FFN product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glu {
    /// silu(gate) * up (SwiGLU; [`super::silu_mul`]).
    Silu,
    /// gelu_tanh(gate) * up (GeGLU; [`super::gelu_mul`]).
    GeluTanh,
}

/// The 8-bit activations of one row of `cols` values, as the `next` decode matvec rounds them
/// for weights of one block size (32 values, or 256 for the K-quants and IQ4_XS): written by
/// [`rmsnorm_quantize`], read by [`matvec_quantized`] and [`matvec_glu`] instead of quantizing
/// their input again. Device memory of the larger of the two layouts, allocated once (a decode
/// session keeps one per norm); on the host it holds nothing and the ops use their f32 input.
pub struct QuantizedActs {
    cols: usize,
    /// Raw bytes, typed f32 only to be a [`Tensor`] (none on the host, or when `cols` is a whole
    /// number of no block size).
    buf: Option<Tensor>,
    /// The weight type whose rounding the buffer holds (its block size is what matters), set
    /// by [`rmsnorm_quantize`]; None when it holds nothing valid.
    holds: Option<strata_kernels::DType>,
}

impl QuantizedActs {
    /// Room for the activations of a row of `cols` values on the stream's device.
    ///
    /// # Errors
    /// An allocation error.
    pub fn new(cols: usize, s: &Stream) -> Result<QuantizedActs> {
        use strata_kernels::DType as K;
        let bytes = [K::Q8_0, K::Q4_K].iter().filter_map(|&dt| cuda::act_q8_bytes(dt, cols)).max();
        let buf = match (s, bytes) {
            (Stream::Gpu(_), Some(b)) => Some(Tensor::zeros(DType::F32, &[b.div_ceil(4)], s, "8-bit activations")?),
            _ => None,
        };
        Ok(QuantizedActs { cols, buf, holds: None })
    }

    /// The values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weight type whose rounding the buffer holds now, if any.
    pub fn holds(&self) -> Option<strata_kernels::DType> {
        self.holds
    }

    /// The device buffer, if it holds activations rounded for weights of `dt` over `cols`.
    fn for_weights(&self, dt: strata_kernels::DType, cols: usize) -> Option<&Tensor> {
        let h = self.holds?;
        (cols == self.cols && dt.is_quantized() && h.block_values() == dt.block_values()).then_some(self.buf.as_ref()?)
    }
}

/// Whether `s` runs on a GPU.
fn on_gpu(s: &Stream) -> bool {
    gpu_stream(s).is_some()
}

/// RMSNorm of one row x `[dim]` (or `[1, dim]`) with weight `[dim]` into `out` (as [`super::rmsnorm`],
/// bit for bit on a GPU too), and on a GPU also its 8-bit activations for weights of `dt` into
/// `acts`, in one launch. Where no 8-bit layout applies (the host; `dt` plain float; `dim` not
/// whole blocks of `dt`), the norm alone, and `acts` then holds nothing.
///
/// # Errors
/// Shapes, types or devices that disagree (as [`super::rmsnorm`]), more than one row, or
/// `acts` made for another width.
pub fn rmsnorm_quantize(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    dt: DType,
    out: &mut Tensor,
    acts: &mut QuantizedActs,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "rmsnorm_quantize";
    check_devices(OP, s, &[x, weight, out])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    expect_dtype(OP, "weight", weight, &[DType::F32], "f32")?;
    f32_out(OP, out)?;
    let dim = weight.numel();
    expect_shape(OP, "weight", weight, &[dim])?;
    if x.numel() != dim || x.shape().last() != Some(&dim) {
        return Err(Error::shape(OP, format!("x {:?} must be one row of the weight's {dim} values", x.shape())));
    }
    expect_shape(OP, "out", out, x.shape())?;
    if acts.cols != dim {
        return Err(Error::shape(OP, format!("the activations hold rows of {}, x has {dim}", acts.cols)));
    }
    acts.holds = None;
    let wt = dt.weight().filter(|k| k.is_quantized() && cuda::act_q8_bytes(*k, dim).is_some());
    match (gpu_stream(s), wt, &acts.buf) {
        (Some(g), Some(wt), Some(buf)) => {
            check_devices(OP, s, &[buf])?;
            gpu::launch(
                g,
                KernelCall::RmsnormQ8 {
                    dt: wt,
                    x: dev(x)?,
                    weight: dev(weight)?,
                    dim,
                    eps,
                    out: dev(out)?,
                    act: dev(buf)?,
                },
            )?;
            acts.holds = Some(wt);
            Ok(())
        }
        _ => super::rmsnorm(x, weight, eps, out, s),
    }
}

/// y = W x where `acts` holds x's 8-bit activations (from [`rmsnorm_quantize`] of x): on a GPU
/// with quantized weights of the block size `acts` was rounded for, one matvec on them (no
/// quantization launch); otherwise [`super::matvec`] on x.
///
/// # Errors
/// As [`super::matvec`].
pub fn matvec_quantized(w: &Tensor, x: &Tensor, acts: &QuantizedActs, y: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "matvec";
    let dt = weight_type(OP, w)?;
    let (rows, cols) = dims2(OP, "w", w)?;
    match (gpu_stream(s), acts.for_weights(dt, cols)) {
        (Some(g), Some(act)) if x.numel() == cols && y.numel() == rows => {
            check_devices(OP, s, &[w, x, y, act])?;
            expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
            f32_out(OP, y)?;
            gpu::launch(g, KernelCall::MatvecQ8 { dt, w: dev(w)?, rows, cols, act: dev(act)?, y: dev(y)? })
        }
        _ => super::matvec(w, x, y, s),
    }
}

/// y += W x (the residual add after an output projection): on a GPU under the `next` set with
/// quantized weights, x quantized and one matvec that adds into y in its epilogue; otherwise
/// [`super::matvec`] into a temporary and [`super::add_inplace`].
///
/// # Errors
/// As [`super::matvec`] and [`super::add_inplace`].
pub fn matvec_add(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    let (dt, rows, cols) = super::check_matvec("matvec_add", w, x, y, s)?;
    let fused =
        dt.is_quantized() && cuda::act_q8_bytes(dt, cols).is_some() && super::gpu_kernels()? == super::GpuKernels::Next;
    match gpu_stream(s) {
        Some(g) if fused => {
            gpu::launch(g, KernelCall::MatvecAdd { dt, w: dev(w)?, rows, cols, x: dev(x)?, y: dev(y)? })
        }
        _ => {
            let mut tmp = Tensor::zeros(DType::F32, y.shape(), s, "projection before the residual add")?;
            super::matvec(w, x, &mut tmp, s)?;
            super::add_inplace(y, &tmp, s)
        }
    }
}

/// Whether [`matvec_glu`] runs as one kernel for these weights and activations (else it
/// composes two matvecs and the activation, with temporaries).
pub fn glu_fuses(gate: &Tensor, up: &Tensor, acts: &QuantizedActs, s: &Stream) -> bool {
    let (Some(dt), &[_, cols]) = (gate.dtype().weight(), gate.shape()) else { return false };
    on_gpu(s) && up.dtype() == gate.dtype() && up.shape() == gate.shape() && acts.for_weights(dt, cols).is_some()
}

/// out = act(W_gate x) * (W_up x), `acts` holding x's 8-bit activations (from
/// [`rmsnorm_quantize`]): one kernel on a GPU where [`glu_fuses`]; otherwise
/// [`matvec_quantized`] twice into temporaries and [`super::silu_mul`] / [`super::gelu_mul`].
///
/// # Errors
/// Shapes, types or devices that disagree.
pub fn matvec_glu(
    gate: &Tensor,
    up: &Tensor,
    x: &Tensor,
    acts: &QuantizedActs,
    glu: Glu,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "matvec_glu";
    check_devices(OP, s, &[gate, up, x, out])?;
    let dt = weight_type(OP, gate)?;
    let (rows, cols) = dims2(OP, "gate", gate)?;
    if up.shape() != gate.shape() {
        return Err(Error::shape(OP, format!("gate {:?} and up {:?} differ", gate.shape(), up.shape())));
    }
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    f32_out(OP, out)?;
    if x.numel() != cols || out.numel() != rows {
        return Err(Error::shape(
            OP,
            format!(
                "gate {:?} needs x of {cols} and out of {rows} values, got {:?} and {:?}",
                gate.shape(),
                x.shape(),
                out.shape()
            ),
        ));
    }
    match (gpu_stream(s), acts.for_weights(dt, cols)) {
        (Some(g), Some(act)) if glu_fuses(gate, up, acts, s) => gpu::launch(
            g,
            KernelCall::GluQ8 {
                dt,
                gate: dev(gate)?,
                up: dev(up)?,
                rows,
                cols,
                act: dev(act)?,
                gelu: glu == Glu::GeluTanh,
                out: dev(out)?,
            },
        ),
        _ => {
            let mut g = Tensor::zeros(DType::F32, out.shape(), s, "ffn gate")?;
            let mut u = Tensor::zeros(DType::F32, out.shape(), s, "ffn up")?;
            matvec_quantized(gate, x, acts, &mut g, s)?;
            matvec_quantized(up, x, acts, &mut u, s)?;
            match glu {
                Glu::Silu => super::silu_mul(&g, &u, out, s),
                Glu::GeluTanh => super::gelu_mul(&g, &u, out, s),
            }
        }
    }
}
