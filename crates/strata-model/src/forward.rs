//! The llama forward pass as strata-tensor ops on one stream: one function per layer (so the
//! runtime can run each layer wherever its weights are) and one for the output head.
//!
//! A layer, for T tokens at positions pos0..pos0+T with residual x [T, n_embd]:
//! RMSNorm → Q/K/V projections → RoPE on Q and K → append K, V to the cache → causal
//! grouped-query attention over the cache → output projection → residual add → RMSNorm →
//! gate/up projections → SiLU(gate)·up → down projection → residual add.
//! T = 1 (decode) uses matvec and decode attention; T > 1 (prefill) uses matmul.

use strata_tensor::{DType, Stream, Tensor, ops};

use crate::config::LlamaConfig;
use crate::weights::HeadWeights;
use crate::{Error, Result};

/// One layer's K and V cache, each [context, n_head_kv, head_dim] of f16 or f32.
pub struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
}

impl LayerKv {
    pub fn new(cfg: &LlamaConfig, context: usize, dtype: DType, s: &Stream, layer: usize) -> Result<LayerKv> {
        let shape = [context, cfg.n_head_kv, cfg.head_dim];
        Ok(LayerKv {
            k: Tensor::zeros(dtype, &shape, s, &format!("K cache of layer {layer}"))?,
            v: Tensor::zeros(dtype, &shape, s, &format!("V cache of layer {layer}"))?,
        })
    }

    pub fn bytes(&self) -> u64 {
        (self.k.len_bytes() + self.v.len_bytes()) as u64
    }
}

/// Activation buffers for a batch of T tokens, reused across layers and steps.
pub struct Scratch {
    pub n_tokens: usize,
    h: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    att: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    /// The model's RoPE frequency divisors on this stream's device, if it has any.
    rope_factors: Option<Tensor>,
}

impl Scratch {
    pub fn new(cfg: &LlamaConfig, n_tokens: usize, s: &Stream) -> Result<Scratch> {
        let z = |shape: &[usize], what: &str| Tensor::zeros(DType::F32, shape, s, what);
        let t = n_tokens;
        Ok(Scratch {
            n_tokens,
            h: z(&[t, cfg.n_embd], "normed activations")?,
            q: z(&[t, cfg.n_embd], "queries")?,
            k: z(&[t, cfg.kv_dim()], "keys")?,
            v: z(&[t, cfg.kv_dim()], "values")?,
            att: z(&[t, cfg.n_embd], "attention output")?,
            o: z(&[t, cfg.n_embd], "projected attention")?,
            gate: z(&[t, cfg.n_ff], "ffn gate")?,
            up: z(&[t, cfg.n_ff], "ffn up")?,
            act: z(&[t, cfg.n_ff], "ffn activation")?,
            rope_factors: match &cfg.rope_freq_factors {
                Some(f) => Some(Tensor::from_f32(&[f.len()], f.clone())?.to_device(s, "rope frequency factors")?),
                None => None,
            },
        })
    }

    /// Bytes of activation scratch for `n_tokens` tokens (for memory planning).
    pub fn bytes(cfg: &LlamaConfig, n_tokens: usize) -> u64 {
        (n_tokens * 4 * (5 * cfg.n_embd + 2 * cfg.kv_dim() + 3 * cfg.n_ff)) as u64
    }
}

/// Borrowed weights of one layer, wherever they live (owned by a [`crate::weights::LayerWeights`]
/// or views into a streamed layer's slot), in [`crate::weights::LAYER_TENSORS`] order.
#[derive(Clone, Copy)]
pub struct LayerRef<'a> {
    pub attn_norm: &'a Tensor,
    pub wq: &'a Tensor,
    pub wk: &'a Tensor,
    pub wv: &'a Tensor,
    pub wo: &'a Tensor,
    pub ffn_norm: &'a Tensor,
    pub w_gate: &'a Tensor,
    pub w_up: &'a Tensor,
    pub w_down: &'a Tensor,
}

impl<'a> LayerRef<'a> {
    /// From nine tensors in group order.
    ///
    /// # Errors
    /// If there are not nine.
    pub fn from_slice(t: &'a [Tensor]) -> Result<LayerRef<'a>> {
        match t {
            [attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down] => {
                Ok(LayerRef { attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down })
            }
            _ => Err(Error::invalid(format!("a layer has 9 tensors, got {}", t.len()))),
        }
    }
}

/// Gives `t` another shape of the same size in place.
fn reshape(t: &mut Tensor, shape: &[usize]) -> Result<()> {
    let taken = std::mem::replace(t, Tensor::from_f32(&[0], Vec::new())?);
    *t = taken.reshape(shape)?;
    Ok(())
}

/// y = x Wᵀ for T tokens: matvec when T = 1, matmul otherwise.
fn project(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    if x.shape()[0] == 1 {
        ops::matvec(w, x, y, s)?
    } else {
        ops::matmul(w, x, y, s)?
    }
    Ok(())
}

/// Runs one layer on the stream's device: every tensor (weights, cache, x, positions,
/// scratch) must be there. `positions` holds pos0..pos0+T as i32.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    cfg: &LlamaConfig,
    w: LayerRef<'_>,
    kv: &mut LayerKv,
    x: &mut Tensor,
    positions: &Tensor,
    pos0: usize,
    sc: &mut Scratch,
    s: &Stream,
) -> Result<()> {
    let t = sc.n_tokens;
    if x.shape() != [t, cfg.n_embd] {
        return Err(Error::invalid(format!("layer input has shape {:?}, expected [{t}, {}]", x.shape(), cfg.n_embd)));
    }
    let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    ops::rmsnorm(x, w.attn_norm, cfg.rms_eps, &mut sc.h, s)?;
    project(w.wq, &sc.h, &mut sc.q, s)?;
    project(w.wk, &sc.h, &mut sc.k, s)?;
    project(w.wv, &sc.h, &mut sc.v, s)?;
    reshape(&mut sc.q, &[t, nh, hd])?;
    reshape(&mut sc.k, &[t, nkv, hd])?;
    let factors = sc.rope_factors.as_ref();
    let rope = |x: &mut Tensor| {
        ops::rope(x, positions, cfg.n_rot, cfg.rope_freq_base, cfg.rope_freq_scale, factors, cfg.rope_layout, s)
    };
    rope(&mut sc.q)?;
    rope(&mut sc.k)?;
    ops::kv_append(&sc.k, positions, &mut kv.k, s)?;
    ops::kv_append(&sc.v, positions, &mut kv.v, s)?;
    let scale = 1.0 / (hd as f32).sqrt();
    if t == 1 {
        reshape(&mut sc.q, &[nh, hd])?;
        reshape(&mut sc.att, &[nh, hd])?;
        ops::attention_decode(&sc.q, &kv.k, &kv.v, pos0 + 1, scale, &mut sc.att, s)?;
    } else {
        reshape(&mut sc.att, &[t, nh, hd])?;
        ops::attention_prefill(&sc.q, pos0, &kv.k, &kv.v, scale, &mut sc.att, s)?;
    }
    reshape(&mut sc.q, &[t, cfg.n_embd])?;
    reshape(&mut sc.k, &[t, cfg.kv_dim()])?;
    reshape(&mut sc.att, &[t, cfg.n_embd])?;
    project(w.wo, &sc.att, &mut sc.o, s)?;
    ops::add_inplace(x, &sc.o, s)?;

    ops::rmsnorm(x, w.ffn_norm, cfg.rms_eps, &mut sc.h, s)?;
    project(w.w_gate, &sc.h, &mut sc.gate, s)?;
    project(w.w_up, &sc.h, &mut sc.up, s)?;
    ops::silu_mul(&sc.gate, &sc.up, &mut sc.act, s)?;
    project(w.w_down, &sc.act, &mut sc.o, s)?;
    ops::add_inplace(x, &sc.o, s)?;
    Ok(())
}

/// Final norm and output projection → logits [rows, n_vocab] for the rows `rows` of
/// x [T, n_embd] (generation needs only the last row; scoring needs all).
pub fn head_forward(
    cfg: &LlamaConfig,
    head: &HeadWeights,
    x: &Tensor,
    rows: std::ops::Range<usize>,
    s: &Stream,
) -> Result<Tensor> {
    let picked;
    let x = if rows.start == 0 && rows.end == x.shape()[0] {
        x
    } else {
        picked = x.copy_rows(rows, s)?;
        &picked
    };
    let t = x.shape()[0];
    let mut h = Tensor::zeros(DType::F32, &[t, cfg.n_embd], s, "final norm")?;
    ops::rmsnorm(x, &head.norm, cfg.rms_eps, &mut h, s)?;
    let mut logits = Tensor::zeros(DType::F32, &[t, cfg.n_vocab], s, "logits")?;
    project(&head.output, &h, &mut logits, s)?;
    Ok(logits)
}
