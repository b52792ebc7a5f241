//! The forward pass as strata-tensor ops on one stream: one function per layer (so the
//! runtime can run each layer wherever its weights are) and one for the output head. One block
//! runner serves every architecture; the differences are data ([`crate::arch::ArchSpec`], the
//! config's switches and which [`Role`]s a layer has).
//!
//! A layer, for T tokens at positions pos0..pos0+T with residual x [T, n_embd]:
//! RMSNorm → Q/K/V projections (+ biases) → per-head Q/K RMSNorm (if present) → RoPE on Q and
//! K (the layer's base) → append K, V to the cache → causal grouped-query attention over the
//! cache (within the layer's sliding window, if it has one) → output projection →
//! (post-attention norm) → residual add → RMSNorm → gate/up projections → act(gate)·up (SiLU
//! or GELU-tanh) → down projection → (post-FFN norm) → residual add.
//! T = 1 (decode) uses matvec and decode attention; T > 1 (prefill) uses matmul.
//!
//! A layer with experts replaces gate/up/down with the router and the routed experts
//! ([`crate::moe`]): RMSNorm → router logits → [`moe_route`] on the host → [`moe_experts`].

use strata_tensor::{DType, Stream, Tensor, ops};

use crate::arch::{Activation, N_ROLES, Role};
use crate::config::LlamaConfig;
pub use crate::moe::{ExpertRef, ExpertWeights, Routing, moe_experts, moe_route};
use crate::weights::HeadWeights;
use crate::{Error, Result};

/// One layer's K and V cache, each [context, n_head_kv, head_dim] of f16 or f32.
pub struct LayerKv {
    /// Key cache.
    pub k: Tensor,
    /// Value cache.
    pub v: Tensor,
}

impl LayerKv {
    /// Zeroed K and V caches of `context` positions for `layer`, of `dtype`, on the stream's
    /// device.
    pub fn new(cfg: &LlamaConfig, context: usize, dtype: DType, s: &Stream, layer: usize) -> Result<LayerKv> {
        let shape = [context, cfg.n_head_kv, cfg.head_dim];
        Ok(LayerKv {
            k: Tensor::zeros(dtype, &shape, s, &format!("K cache of layer {layer}"))?,
            v: Tensor::zeros(dtype, &shape, s, &format!("V cache of layer {layer}"))?,
        })
    }

    /// Bytes of K and V together.
    pub fn bytes(&self) -> u64 {
        (self.k.len_bytes() + self.v.len_bytes()) as u64
    }
}

/// Activation buffers for a batch of T tokens, reused across layers and steps.
pub struct Scratch {
    /// Most tokens one pass can hold (T).
    pub n_tokens: usize,
    h: Tensor,
    q: Tensor,
    k: Tensor,
    /// Per-head-normed keys (models with K norms).
    kn: Tensor,
    v: Tensor,
    att: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    /// Router logits [T, n_expert] (models with experts; [T, 1] unused otherwise).
    router: Tensor,
    /// The 8-bit activations of the last norm (the `next` kernel set's fused decode step).
    acts: ops::QuantizedActs,
    /// The model's RoPE frequency divisors on this stream's device, if it has any.
    rope_factors: Option<Tensor>,
}

impl Scratch {
    /// Zeroed buffers for up to `n_tokens` tokens, on the stream's device.
    pub fn new(cfg: &LlamaConfig, n_tokens: usize, s: &Stream) -> Result<Scratch> {
        let z = |shape: &[usize], what: &str| Tensor::zeros(DType::F32, shape, s, what);
        let t = n_tokens;
        Ok(Scratch {
            n_tokens,
            h: z(&[t, cfg.n_embd], "normed activations")?,
            q: z(&[t, cfg.q_dim], "queries")?,
            k: z(&[t, cfg.kv_dim()], "keys")?,
            kn: z(&[t, cfg.kv_dim()], "normed keys")?,
            v: z(&[t, cfg.kv_dim()], "values")?,
            att: z(&[t, cfg.q_dim], "attention output")?,
            o: z(&[t, cfg.n_embd], "projected attention")?,
            gate: z(&[t, cfg.n_ff], "ffn gate")?,
            up: z(&[t, cfg.n_ff], "ffn up")?,
            act: z(&[t, cfg.n_ff], "ffn activation")?,
            router: z(&[t, cfg.n_expert.max(1)], "router logits")?,
            acts: ops::QuantizedActs::new(cfg.n_embd, s)?,
            rope_factors: match &cfg.rope_freq_factors {
                Some(f) => Some(Tensor::from_f32(&[f.len()], f.clone())?.to_device(s, "rope frequency factors")?),
                None => None,
            },
        })
    }

    /// Queries [T, n_head, head_dim] after [`attention_inputs`].
    pub fn q(&self) -> &Tensor {
        &self.q
    }

    /// Keys [T, n_head_kv, head_dim] after [`attention_inputs`].
    pub fn k(&self) -> &Tensor {
        &self.k
    }

    /// Values [T, kv_dim] after [`attention_inputs`].
    pub fn v(&self) -> &Tensor {
        &self.v
    }

    /// Queries (read) and the attention output [T, n_head, head_dim] (written), for an
    /// attention of the caller's own between [`attention_inputs`] and
    /// [`attention_output_and_ffn`].
    pub fn q_and_att_mut(&mut self) -> (&Tensor, &mut Tensor) {
        (&self.q, &mut self.att)
    }

    /// Bytes of activation scratch for `n_tokens` tokens (for memory planning).
    pub fn bytes(cfg: &LlamaConfig, n_tokens: usize) -> u64 {
        // The 8-bit activations: at most 2 bytes per value in either layout, whatever T.
        (n_tokens * 4 * (3 * cfg.n_embd + 2 * cfg.q_dim + 3 * cfg.kv_dim() + 3 * cfg.n_ff + cfg.n_expert.max(1))
            + 2 * cfg.n_embd) as u64
    }
}

/// Borrowed weights of one layer, wherever they live (owned by a [`crate::weights::LayerWeights`]
/// or views into a streamed layer's slot): a table indexed by [`Role`].
#[derive(Clone, Copy)]
pub struct LayerRef<'a> {
    tensors: [Option<&'a Tensor>; N_ROLES],
}

impl<'a> LayerRef<'a> {
    /// From a role-indexed table.
    pub fn from_table(tensors: [Option<&'a Tensor>; N_ROLES]) -> LayerRef<'a> {
        LayerRef { tensors }
    }

    /// From the tensors of a weight group, in `roles` order (the model's layer roles).
    ///
    /// # Errors
    /// If the counts differ.
    pub fn from_slice(t: &'a [Tensor], roles: &[Role]) -> Result<LayerRef<'a>> {
        if t.len() != roles.len() {
            return Err(Error::invalid(format!("a layer has {} tensors, got {}", roles.len(), t.len())));
        }
        let mut tensors = [None; N_ROLES];
        for (t, r) in t.iter().zip(roles) {
            tensors[r.index()] = Some(t);
        }
        Ok(LayerRef { tensors })
    }

    /// This layer with the tensors of `roles` taken from `t` (in `roles` order) instead: a
    /// resident attention part with its experts from a streamer's slot.
    ///
    /// # Errors
    /// If the counts differ.
    pub fn with_slice(mut self, t: &'a [Tensor], roles: &[Role]) -> Result<LayerRef<'a>> {
        if t.len() != roles.len() {
            return Err(Error::invalid(format!("a weight group has {} tensors, got {}", roles.len(), t.len())));
        }
        for (t, r) in t.iter().zip(roles) {
            self.tensors[r.index()] = Some(t);
        }
        Ok(self)
    }

    /// The tensor of `role`, if the layer has one.
    pub fn get(&self, role: Role) -> Option<&'a Tensor> {
        self.tensors[role.index()]
    }

    /// The tensor of `role`, which every layer must have.
    ///
    /// # Errors
    /// If the layer lacks it.
    pub fn req(&self, role: Role) -> Result<&'a Tensor> {
        self.get(role).ok_or_else(|| Error::invalid(format!("layer weights lack {}", role.gguf_suffix())))
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

/// y = x Wᵀ as a matmul whatever T is.
fn project_matmul(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    Ok(ops::matmul(w, x, y, s)?)
}

/// x += bias (broadcast over tokens) when the layer has one.
fn bias(x: &mut Tensor, b: Option<&Tensor>, s: &Stream) -> Result<()> {
    if let Some(b) = b {
        ops::add_bias_inplace(x, b, s)?;
    }
    Ok(())
}

/// Whether a pass of `t` tokens runs the `next` kernel set's fused decode ops
/// ([`ops::rmsnorm_quantize`], [`ops::matvec_glu`], [`ops::matvec_add`]): one token, projections
/// as matvecs, and `STRATA_GPU_KERNELS=next` (or [`ops::with_gpu_kernels`]). On the host the
/// fused ops compute exactly the unfused ones, so only the kernels on a GPU change; under
/// `proven` nothing does.
fn fused_decode(t: usize, matmul: bool) -> Result<bool> {
    Ok(t == 1 && !matmul && ops::gpu_kernels()? == ops::GpuKernels::Next)
}

/// RMSNorm of `x` into `tmp` with `w`, then the result back in `x` (by swapping the buffers),
/// when `w` is given; nothing otherwise.
fn norm_in_place(x: &mut Tensor, w: Option<&Tensor>, eps: f32, tmp: &mut Tensor, s: &Stream) -> Result<()> {
    if let Some(w) = w {
        reshape(tmp, x.shape())?;
        ops::rmsnorm(x, w, eps, tmp, s)?;
        std::mem::swap(x, tmp);
    }
    Ok(())
}

/// What the steps of one layer's pass share: the model's config, the layer, its KV cache, the
/// pass's positions (pos0..pos0+T as i32, on the stream's device), the scratch and the stream
/// everything runs on. Every tensor in it must be on the stream's device.
pub struct LayerCtx<'a> {
    /// The model's config.
    pub cfg: &'a LlamaConfig,
    /// Layer index (its RoPE base and attention window).
    pub layer: usize,
    /// The layer's K and V cache.
    pub kv: &'a mut LayerKv,
    /// Positions pos0..pos0+T as i32.
    pub positions: &'a Tensor,
    /// Position of the pass's first token.
    pub pos0: usize,
    /// Activation buffers for the pass's T tokens.
    pub sc: &'a mut Scratch,
    /// The stream the layer runs on.
    pub s: &'a Stream,
}

/// Runs the layer of `cx` with weights `w` on the residual `x` [T, n_embd], all on the
/// context's stream.
pub fn layer_forward(cx: &mut LayerCtx<'_>, w: LayerRef<'_>, x: &mut Tensor) -> Result<()> {
    layer_attention(cx, w, x)?;
    attention_output_and_ffn(cx.cfg, w, x, cx.sc, false, cx.s)
}

/// [`layer_forward`] up to the attention output (in the scratch, for
/// [`attention_output_and_ffn`] or [`attention_output_and_router`]): Q/K/V, the cache append
/// and attention over the cache. A caller that places a layer's experts apart runs this, then
/// the router, then the experts where they live.
pub fn layer_attention(cx: &mut LayerCtx<'_>, w: LayerRef<'_>, x: &mut Tensor) -> Result<()> {
    let LayerCtx { cfg, layer, kv, positions, pos0, sc, s } = cx;
    let (cfg, layer, pos0, s) = (*cfg, *layer, *pos0, *s);
    let t = sc.n_tokens;
    let (nh, hd) = (cfg.n_head, cfg.head_dim);
    attention_inputs(cfg, layer, w, x, positions, sc, false, s)?;
    ops::kv_append(&sc.k, positions, &mut kv.k, s)?;
    ops::kv_append(&sc.v, positions, &mut kv.v, s)?;
    let scale = cfg.attn_scale;
    let window = cfg.layer_window(layer);
    if t == 1 {
        reshape(&mut sc.q, &[nh, hd])?;
        reshape(&mut sc.att, &[nh, hd])?;
        if fused_decode(t, false)? {
            // The position read on the device, as RoPE and the append read it: the step's
            // launches are then the same every token (a CUDA graph replays them).
            ops::attention_decode_at(&sc.q, &kv.k, &kv.v, positions, scale, window, &mut sc.att, s)?;
        } else {
            ops::attention_decode(&sc.q, &kv.k, &kv.v, pos0 + 1, scale, window, &mut sc.att, s)?;
        }
    } else {
        reshape(&mut sc.att, &[t, nh, hd])?;
        ops::attention_prefill(&sc.q, pos0, &kv.k, &kv.v, scale, window, &mut sc.att, s)?;
    }
    Ok(())
}

/// The first half of a layer, up to attention: RMSNorm → Q/K/V projections (+ biases) →
/// per-head Q/K norms → RoPE at `positions` (one per token, in any order: a batch of sequences
/// has its own position per row). Leaves Q in `sc.q` as [T, n_head, head_dim], K as
/// [T, n_head_kv, head_dim] in `sc.k` and V as [T, kv_dim] in `sc.v`; the caller appends K and
/// V to its cache, writes the attention output into [`Scratch::q_and_att_mut`] and calls
/// [`attention_output_and_ffn`]. `matmul` runs every projection as a matmul, even for one
/// token (a batch then gives each row the same arithmetic whatever the batch size).
#[allow(clippy::too_many_arguments)]
pub fn attention_inputs(
    cfg: &LlamaConfig,
    layer: usize,
    w: LayerRef<'_>,
    x: &Tensor,
    positions: &Tensor,
    sc: &mut Scratch,
    matmul: bool,
    s: &Stream,
) -> Result<()> {
    let t = sc.n_tokens;
    if x.shape() != [t, cfg.n_embd] {
        return Err(Error::invalid(format!("layer input has shape {:?}, expected [{t}, {}]", x.shape(), cfg.n_embd)));
    }
    let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    let project = if matmul { project_matmul } else { project };
    if fused_decode(t, matmul)? {
        // One launch for the norm and the 8-bit activations the three matvecs share.
        let wq = w.req(Role::Q)?;
        ops::rmsnorm_quantize(x, w.req(Role::AttnNorm)?, cfg.rms_eps, wq.dtype(), &mut sc.h, &mut sc.acts, s)?;
        ops::matvec_quantized(wq, &sc.h, &sc.acts, &mut sc.q, s)?;
        ops::matvec_quantized(w.req(Role::K)?, &sc.h, &sc.acts, &mut sc.k, s)?;
        ops::matvec_quantized(w.req(Role::V)?, &sc.h, &sc.acts, &mut sc.v, s)?;
    } else {
        ops::rmsnorm(x, w.req(Role::AttnNorm)?, cfg.rms_eps, &mut sc.h, s)?;
        project(w.req(Role::Q)?, &sc.h, &mut sc.q, s)?;
        project(w.req(Role::K)?, &sc.h, &mut sc.k, s)?;
        project(w.req(Role::V)?, &sc.h, &mut sc.v, s)?;
    }
    bias(&mut sc.q, w.get(Role::QBias), s)?;
    bias(&mut sc.k, w.get(Role::KBias), s)?;
    bias(&mut sc.v, w.get(Role::VBias), s)?;
    reshape(&mut sc.q, &[t, nh, hd])?;
    reshape(&mut sc.k, &[t, nkv, hd])?;
    // Per-head norms: the last dim is the head, so rmsnorm normalizes each head.
    norm_in_place(&mut sc.q, w.get(Role::QNorm), cfg.rms_eps, &mut sc.att, s)?;
    norm_in_place(&mut sc.k, w.get(Role::KNorm), cfg.rms_eps, &mut sc.kn, s)?;
    let factors = sc.rope_factors.as_ref();
    let (base, freq_scale) = (cfg.layer_rope_base(layer), cfg.layer_rope_scale(layer));
    let rope = |x: &mut Tensor| ops::rope(x, positions, cfg.n_rot, base, freq_scale, factors, cfg.rope_layout, s);
    rope(&mut sc.q)?;
    rope(&mut sc.k)?;
    reshape(&mut sc.att, &[t, nh, hd])?;
    Ok(())
}

/// The second half of a layer, from the attention output in `sc.att` ([T, n_head, head_dim]
/// or [n_head, head_dim]): output projection → (post-attention norm) → residual add → RMSNorm
/// → gate/up → act(gate)·up → down (a layer with experts: router → routed experts) →
/// (post-FFN norm) → residual add, into `x`. All of it on `s`: the whole-layer placement.
pub fn attention_output_and_ffn(
    cfg: &LlamaConfig,
    w: LayerRef<'_>,
    x: &mut Tensor,
    sc: &mut Scratch,
    matmul: bool,
    s: &Stream,
) -> Result<()> {
    if let Some(routing) = attention_output_and_router(cfg, w, x, sc, matmul, s)? {
        let (h, out) = ffn_input_and_out(sc);
        moe_experts(cfg, ExpertRef::from_layer(w)?, h, &routing, &|_| true, out, s)?;
        ffn_residual(w, x, sc, cfg, s)?;
    }
    Ok(())
}

/// [`attention_output_and_ffn`] up to the experts, for a caller that places them itself:
/// output projection → (post-attention norm) → residual add → RMSNorm → for a dense layer
/// the FFN and its residual add (returns None: the layer is done); for a layer with experts
/// the router (returns its [`Routing`]; the experts' input is then in
/// [`ffn_input_and_out`]'s first buffer; the caller writes the expert sum into its second
/// and calls [`ffn_residual`]).
pub fn attention_output_and_router(
    cfg: &LlamaConfig,
    w: LayerRef<'_>,
    x: &mut Tensor,
    sc: &mut Scratch,
    matmul: bool,
    s: &Stream,
) -> Result<Option<Routing>> {
    let t = sc.n_tokens;
    let project = if matmul { project_matmul } else { project };
    reshape(&mut sc.q, &[t, cfg.q_dim])?;
    reshape(&mut sc.k, &[t, cfg.kv_dim()])?;
    reshape(&mut sc.att, &[t, cfg.q_dim])?;
    let fused = fused_decode(t, matmul)?;
    if fused && w.get(Role::PostAttnNorm).is_none() {
        // The residual add in the output projection's epilogue.
        ops::matvec_add(w.req(Role::O)?, &sc.att, x, s)?;
    } else {
        project(w.req(Role::O)?, &sc.att, &mut sc.o, s)?;
        norm_in_place(&mut sc.o, w.get(Role::PostAttnNorm), cfg.rms_eps, &mut sc.h, s)?;
        ops::add_inplace(x, &sc.o, s)?;
    }

    if cfg.is_moe() {
        ops::rmsnorm(x, w.req(Role::FfnNorm)?, cfg.rms_eps, &mut sc.h, s)?;
        return Ok(Some(route(cfg, w, sc, matmul, s)?));
    }
    if fused {
        // Norm and activations in one launch, gate and up and act(gate)·up in another, the down
        // projection with the residual add in its epilogue where no post-FFN norm comes between.
        let (wg, wu) = (w.req(Role::Gate)?, w.req(Role::Up)?);
        ops::rmsnorm_quantize(x, w.req(Role::FfnNorm)?, cfg.rms_eps, wg.dtype(), &mut sc.h, &mut sc.acts, s)?;
        let glu = match cfg.activation {
            Activation::Silu => ops::Glu::Silu,
            Activation::GeluTanh => ops::Glu::GeluTanh,
        };
        ops::matvec_glu(wg, wu, &sc.h, &sc.acts, glu, &mut sc.act, s)?;
        if w.get(Role::PostFfnNorm).is_none() {
            ops::matvec_add(w.req(Role::Down)?, &sc.act, x, s)?;
            return Ok(None);
        }
    } else {
        ops::rmsnorm(x, w.req(Role::FfnNorm)?, cfg.rms_eps, &mut sc.h, s)?;
        project(w.req(Role::Gate)?, &sc.h, &mut sc.gate, s)?;
        project(w.req(Role::Up)?, &sc.h, &mut sc.up, s)?;
        match cfg.activation {
            Activation::Silu => ops::silu_mul(&sc.gate, &sc.up, &mut sc.act, s)?,
            Activation::GeluTanh => ops::gelu_mul(&sc.gate, &sc.up, &mut sc.act, s)?,
        }
    }
    project(w.req(Role::Down)?, &sc.act, &mut sc.o, s)?;
    ffn_residual(w, x, sc, cfg, s)?;
    Ok(None)
}

/// The end of a layer: the FFN output in [`ffn_input_and_out`]'s second buffer →
/// (post-FFN norm) → residual add into `x`.
pub fn ffn_residual(w: LayerRef<'_>, x: &mut Tensor, sc: &mut Scratch, cfg: &LlamaConfig, s: &Stream) -> Result<()> {
    norm_in_place(&mut sc.o, w.get(Role::PostFfnNorm), cfg.rms_eps, &mut sc.h, s)?;
    ops::add_inplace(x, &sc.o, s)?;
    Ok(())
}

/// The router of an expert layer on the FFN-normed activations in `sc.h`: logits on the
/// stream's device, copied to the host (a synchronize on a GPU), then [`moe_route`].
///
/// # Errors
/// A non-finite router logit, or an op's error.
pub fn route(cfg: &LlamaConfig, w: LayerRef<'_>, sc: &mut Scratch, matmul: bool, s: &Stream) -> Result<Routing> {
    let project = if matmul { project_matmul } else { project };
    project(w.req(Role::GateInp)?, &sc.h, &mut sc.router, s)?;
    moe_route(cfg, &sc.router.to_vec_f32(s)?)
}

/// The FFN-normed activations [T, n_embd] (the experts' input, after
/// [`attention_output_and_router`]) and the [T, n_embd] buffer the expert sum goes to (read by
/// [`ffn_residual`]).
pub fn ffn_input_and_out(sc: &mut Scratch) -> (&Tensor, &mut Tensor) {
    (&sc.h, &mut sc.o)
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
