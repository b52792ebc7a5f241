//! A model's hyperparameters, read from GGUF metadata and checked before anything is
//! allocated: counts must be positive, heads must divide the embedding (or the head size comes
//! from `attention.key_length`), token ids must lie inside the vocabulary, and every tensor
//! must have the shape the hyperparameters imply. The architecture's switches come from its
//! [`ArchSpec`] table entry.

use strata_tensor::RopeLayout;

use crate::arch::{self, Activation, ArchSpec, LayerDims, MoeGating, Role};
use crate::gguf::{GgufFile, Metadata};
use crate::{Error, Result};

/// Architectures whose GGUF layout is the llama one (same tensor names, adjacent-pair RoPE).
pub(crate) const LLAMA_FAMILY: &[&str] = &["llama", "mistral"];

/// The old name of [`ModelConfig`] (it described llama models only).
pub type LlamaConfig = ModelConfig;

/// Hyperparameters of a model of any supported architecture.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// The architecture name (`general.architecture`).
    pub arch: String,
    /// The architecture's table entry (tensors and switches).
    #[serde(skip)]
    pub spec: &'static ArchSpec,
    /// The layer tensors this model has, in group order: the spec's required roles plus the
    /// optional ones the file carries.
    #[serde(skip)]
    pub layer_roles: Vec<Role>,
    /// Number of transformer layers (blocks).
    pub n_layers: usize,
    /// Model (residual stream) width.
    pub n_embd: usize,
    /// FFN hidden width (for a model with experts: one expert's, [`ModelConfig::n_ff_exp`]).
    pub n_ff: usize,
    /// Number of experts per layer (0: a dense model).
    pub n_expert: usize,
    /// Experts each token is routed to (k of top-k; 0 for a dense model).
    pub n_expert_used: usize,
    /// Hidden width of one expert's FFN (0 for a dense model).
    pub n_ff_exp: usize,
    /// How router logits become expert weights (meaningless when `n_expert` is 0).
    pub moe_gating: MoeGating,
    /// Number of query heads.
    pub n_head: usize,
    /// Number of key/value heads (fewer than `n_head` with grouped-query attention).
    pub n_head_kv: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// n_head × head_dim: the width of Q and of the attention output (n_embd unless the file
    /// sets `attention.key_length`).
    pub q_dim: usize,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// RoPE base frequency (theta).
    pub rope_freq_base: f32,
    /// 1 / linear scaling factor (1 when unscaled).
    pub rope_freq_scale: f32,
    /// Per-frequency divisors, n_rot / 2 of them (Llama 3.1-style RoPE scaling: GGUF tensor
    /// `rope_freqs.weight`); None when the model has none.
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Number of dimensions of each head that RoPE rotates.
    pub n_rot: usize,
    /// How the file orders the RoPE pairs.
    #[serde(skip)]
    pub rope_layout: RopeLayout,
    /// Epsilon of the RMS norms.
    pub rms_eps: f32,
    /// No `output.weight`: the token embedding doubles as the output head.
    pub tied_output: bool,
    /// The FFN's gate activation.
    pub activation: Activation,
    /// Factor applied to the embedding rows (√n_embd for gemma), if any.
    pub embed_scale: Option<f32>,
    /// Scale of the attention scores: 1/√head_dim (Gemma 3 27B: 1/√(n_embd / n_head)).
    pub attn_scale: f32,
    /// Sliding window of the layers that use one (`attention.sliding_window`), if any.
    pub sliding_window: Option<usize>,
}

/// Upper bounds far above any real model, so that a corrupt header cannot make us allocate
/// absurd KV caches or scratch buffers.
pub(crate) const MAX_LAYERS: u64 = 1024;
pub(crate) const MAX_DIM: u64 = 1 << 20;
pub(crate) const MAX_HEADS: u64 = 4096;
pub(crate) const MAX_VOCAB: u64 = 1 << 24;
pub(crate) const MAX_CONTEXT: u64 = 1 << 24;
/// Far above any real model's experts per layer (DeepSeek-V3: 256).
pub(crate) const MAX_EXPERTS: u64 = 4096;

fn bounded(md: &Metadata, key: &str, max: u64) -> Result<usize> {
    let v = md.u64(key)?;
    if v == 0 || v > max {
        return Err(Error::model(format!("metadata {key} = {v} is out of range (expected 1..={max})")));
    }
    Ok(v as usize)
}

fn opt_bounded(md: &Metadata, key: &str, max: u64) -> Result<Option<usize>> {
    match md.opt_u64(key)? {
        None => Ok(None),
        Some(_) => bounded(md, key, max).map(Some),
    }
}

fn positive_f32(md: &Metadata, key: &str, default: f64) -> Result<f32> {
    let v = md.opt_f64(key)?.unwrap_or(default);
    let f = v as f32;
    if !(f.is_finite() && f > 0.0) {
        return Err(Error::model(format!("metadata {key} = {v} must be a positive number within f32's range")));
    }
    Ok(f)
}

/// Checks that RoPE with base `base`, frequency scale `scale` and `n_rot` rotated dimensions
/// turns every pair by a finite angle at every position strata can run (up to
/// [`MAX_CONTEXT`]): the fastest pair turns by `scale · max(1, base^(-(n_rot - 2) / n_rot))`
/// per position, which a base far below 1 or a huge scale makes overflow f32, and every
/// rotation, so every logit, NaN. `keys` names where the values came from.
pub(crate) fn check_rope(keys: &str, base: f32, scale: f32, n_rot: usize) -> Result<()> {
    let n = n_rot.max(2) as f64;
    let fastest = f64::from(scale) * f64::from(base).powf(-(n - 2.0) / n).max(1.0);
    if !(fastest.is_finite() && fastest * MAX_CONTEXT as f64 <= f64::from(f32::MAX)) {
        return Err(Error::model(format!(
            "{keys}: a RoPE base of {base:e} with a frequency scale of {scale:e} over {n_rot} dimensions turns by \
             {fastest:e} radians per position, too fast for f32 angles"
        )));
    }
    Ok(())
}

impl ModelConfig {
    /// Reads and checks the hyperparameters of `file` (metadata and tensor shapes).
    ///
    /// # Errors
    /// [`Error::Model`] or [`crate::gguf::GgufError`] naming the key or tensor at fault.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let md = file.metadata();
        let arch = md.str("general.architecture")?.to_string();
        let spec = arch_spec(&arch)?;
        let k = |s: &str| format!("{arch}.{s}");
        let n_layers = bounded(md, &k("block_count"), MAX_LAYERS)?;
        let n_embd = bounded(md, &k("embedding_length"), MAX_DIM)?;
        let moe = moe_params(md, spec, &arch)?;
        let n_ff = match moe {
            Some(m) => m.n_ff_exp,
            None => bounded(md, &k("feed_forward_length"), MAX_DIM * 4)?,
        };
        reject_split_experts(file)?;
        let n_head = bounded(md, &k("attention.head_count"), MAX_HEADS)?;
        let n_head_kv = opt_bounded(md, &k("attention.head_count_kv"), MAX_HEADS)?.unwrap_or(n_head);
        let key_length = opt_bounded(md, &k("attention.key_length"), MAX_DIM)?;
        if key_length.is_none() && !n_embd.is_multiple_of(n_head) {
            return Err(Error::model(format!(
                "{} = {n_head} does not divide {} = {n_embd}",
                k("attention.head_count"),
                k("embedding_length")
            )));
        }
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::model(format!(
                "{} = {n_head_kv} does not divide the {n_head} query heads",
                k("attention.head_count_kv")
            )));
        }
        let head_dim = key_length.unwrap_or(n_embd / n_head);
        if let Some(vl) = opt_bounded(md, &k("attention.value_length"), MAX_DIM)?
            && vl != head_dim
        {
            return Err(Error::model(format!(
                "{} = {vl} differs from the key head size {head_dim}; such models are not supported",
                k("attention.value_length")
            )));
        }
        let q_dim = n_head
            .checked_mul(head_dim)
            .filter(|&q| q as u64 <= MAX_DIM * 4)
            .ok_or_else(|| Error::model(format!("{n_head} heads of {head_dim} are too wide")))?;
        let n_rot = opt_bounded(md, &k("rope.dimension_count"), MAX_DIM)?.unwrap_or(head_dim);
        if n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(Error::model(format!(
                "{} = {n_rot} must be even and at most the head size {head_dim}",
                k("rope.dimension_count")
            )));
        }
        let rope_freq_base = positive_f32(md, &k("rope.freq_base"), 10000.0)?;
        let rope_freq_scale = match md.opt_str(&k("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / positive_f32(md, &k("rope.scaling.factor"), 1.0)?,
            Some(other) => {
                return Err(Error::model(format!("{} = {other:?} is not supported", k("rope.scaling.type"))));
            }
        };
        check_rope(
            &format!("metadata {} and {}", k("rope.freq_base"), k("rope.scaling.factor")),
            rope_freq_base,
            rope_freq_scale,
            n_rot,
        )?;
        let rope_freq_factors = rope_freq_factors(file, n_rot)?;
        let rms_eps = positive_f32(md, &k("attention.layer_norm_rms_epsilon"), 1e-5)?;
        let n_ctx_train = opt_bounded(md, &k("context_length"), MAX_CONTEXT)?.unwrap_or(4096);

        let embd =
            file.tensor("token_embd.weight").ok_or_else(|| Error::model("tensor token_embd.weight is missing"))?;
        let n_vocab = match embd.dims.as_slice() {
            [e, v] if *e as usize == n_embd && *v >= 1 && *v <= MAX_VOCAB => *v as usize,
            dims => {
                return Err(Error::model(format!(
                    "tensor token_embd.weight has dims {dims:?}, expected [{n_embd}, n_vocab]"
                )));
            }
        };
        let tied_output = file.tensor("output.weight").is_none();
        let layer_roles =
            layer_roles(spec, moe.is_some(), |r| file.tensor(&format!("blk.0.{}", r.gguf_suffix())).is_some());
        let sliding_window = match spec.swa_pattern {
            0 => None,
            _ => opt_bounded(md, &k("attention.sliding_window"), MAX_CONTEXT)?,
        };
        if let Some(cap) = md.opt_f64(&k("final_logit_softcapping"))?
            && cap != 0.0
        {
            return Err(Error::model(format!(
                "{} = {cap} is not supported (no logit soft-capping op yet)",
                k("final_logit_softcapping")
            )));
        }
        let cfg = ModelConfig {
            arch,
            spec,
            layer_roles,
            n_layers,
            n_embd,
            n_ff,
            n_expert: moe.map_or(0, |m| m.n_expert),
            n_expert_used: moe.map_or(0, |m| m.n_expert_used),
            n_ff_exp: moe.map_or(0, |m| m.n_ff_exp),
            moe_gating: spec.moe.map_or(MoeGating::SoftmaxTopKRenorm, |m| m.gating),
            n_head,
            n_head_kv,
            head_dim,
            q_dim,
            n_vocab,
            n_ctx_train,
            rope_freq_base,
            rope_freq_scale,
            rope_freq_factors,
            n_rot,
            rope_layout: spec.rope_layout,
            rms_eps,
            tied_output,
            activation: spec.activation,
            embed_scale: spec.embed_scale.then(|| (n_embd as f32).sqrt()),
            attn_scale: attn_scale(spec, n_layers, n_embd, n_head, head_dim),
            sliding_window,
        };
        cfg.check_token_ids(md)?;
        Ok(cfg)
    }

    /// Checks that the special token ids and the token list in `md` fit the vocabulary.
    pub(crate) fn check_token_ids(&self, md: &Metadata) -> Result<()> {
        for key in [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.separator_token_id",
        ] {
            if let Some(id) = md.opt_u64(key)?
                && id >= self.n_vocab as u64
            {
                return Err(Error::model(format!(
                    "metadata {key} = {id} is outside the vocabulary of {} tokens",
                    self.n_vocab
                )));
            }
        }
        if let Some(tokens) = md.opt_array("tokenizer.ggml.tokens")?
            && tokens.len() != self.n_vocab
        {
            return Err(Error::model(format!(
                "tokenizer.ggml.tokens has {} entries but the token embedding has {} rows",
                tokens.len(),
                self.n_vocab
            )));
        }
        Ok(())
    }

    /// Width of the K (and V) projection: kv heads × head size.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The sizes the layer tensors' shapes depend on.
    pub fn layer_dims(&self) -> LayerDims {
        LayerDims {
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            q_dim: self.q_dim,
            kv_dim: self.kv_dim(),
            head_dim: self.head_dim,
            n_expert: self.n_expert,
            n_ff_exp: self.n_ff_exp,
        }
    }

    /// Whether the layers have experts (a router and 3-D expert tensors) instead of one FFN.
    pub fn is_moe(&self) -> bool {
        self.n_expert > 0
    }

    /// The sliding window of layer `l`, if it uses one.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        let p = self.spec.swa_pattern;
        self.sliding_window.filter(|_| p > 0 && l % p < p - 1)
    }

    /// The RoPE base of layer `l` (sliding-window layers have their own).
    pub fn layer_rope_base(&self, l: usize) -> f32 {
        if self.layer_window(l).is_some() { self.spec.swa_rope_base } else { self.rope_freq_base }
    }

    /// The RoPE frequency scale of layer `l`: sliding-window layers are unscaled (llama.cpp's
    /// `rope_freq_scale_train_swa = 1`), the others use the file's linear scaling.
    pub fn layer_rope_scale(&self, l: usize) -> f32 {
        if self.layer_window(l).is_some() { 1.0 } else { self.rope_freq_scale }
    }

    /// Bytes of K and V cache per layer for `context` positions of `elem_bytes` each.
    pub fn kv_bytes_per_layer(&self, context: usize, elem_bytes: usize) -> u64 {
        2 * context as u64 * self.kv_dim() as u64 * elem_bytes as u64
    }
}

/// The scale of the attention scores: 1/√head_dim, except for Gemma 3 27B (62 layers), whose
/// `query_pre_attn_scalar` is n_embd / n_head rather than the head size (llama.cpp's gemma3
/// hparams; GGUF files do not store the scalar).
fn attn_scale(spec: &ArchSpec, n_layers: usize, n_embd: usize, n_head: usize, head_dim: usize) -> f32 {
    if spec.name == "gemma3" && n_layers == 62 {
        1.0 / ((n_embd / n_head) as f32).sqrt()
    } else {
        1.0 / (head_dim as f32).sqrt()
    }
}

/// The spec of `arch`, if strata can run it.
pub(crate) fn arch_spec(arch: &str) -> Result<&'static ArchSpec> {
    let spec = arch::by_name(arch).ok_or_else(|| {
        Error::model(format!(
            "architecture {arch:?} is not supported (strata runs: {})",
            arch::runnable_names().join(", ")
        ))
    })?;
    if let Some(missing) = spec.missing {
        return Err(Error::model(format!(
            "architecture {arch:?} is recognised but cannot run yet: strata lacks {missing} (it runs: {})",
            arch::runnable_names().join(", ")
        )));
    }
    Ok(spec)
}

/// The spec's required roles (those of its expert layers when `moe`) plus the optional ones
/// `present` says the file has, in group order.
pub(crate) fn layer_roles(spec: &ArchSpec, moe: bool, present: impl Fn(Role) -> bool) -> Vec<Role> {
    let required = match spec.moe {
        Some(m) if moe => m.required,
        _ => spec.required,
    };
    let mut roles: Vec<Role> =
        required.iter().copied().chain(spec.optional.iter().copied().filter(|&r| present(r))).collect();
    roles.sort();
    roles
}

/// The expert counts of a model with experts.
#[derive(Debug, Clone, Copy)]
struct MoeParams {
    n_expert: usize,
    n_expert_used: usize,
    n_ff_exp: usize,
}

/// Reads `{arch}.expert_count`, `{arch}.expert_used_count` and the expert FFN width. None for a
/// dense model (no experts, or a count of 0 where the architecture allows both).
fn moe_params(md: &Metadata, spec: &ArchSpec, arch: &str) -> Result<Option<MoeParams>> {
    let k = |s: &str| format!("{arch}.{s}");
    let (count_key, used_key) = (k("expert_count"), k("expert_used_count"));
    let count = md.opt_u64(&count_key)?;
    let Some(moe) = spec.moe else {
        return match count {
            Some(n) if n > 0 => Err(Error::model(format!(
                "metadata {count_key} = {n}, but strata knows no experts for architecture {arch:?}"
            ))),
            _ => Ok(None),
        };
    };
    let n_expert = match count {
        None | Some(0) if moe.always => {
            return Err(Error::model(format!(
                "metadata {count_key} is {}; architecture {arch:?} needs at least one expert",
                count.map_or("missing".to_string(), |n| n.to_string())
            )));
        }
        None | Some(0) => return Ok(None),
        Some(_) => bounded(md, &count_key, MAX_EXPERTS)?,
    };
    let n_expert_used = match md.opt_u64(&used_key)? {
        None => return Err(Error::model(format!("metadata {used_key} is missing ({count_key} = {n_expert})"))),
        Some(u) if u == 0 || u > n_expert as u64 => {
            return Err(Error::model(format!(
                "metadata {used_key} = {u} is out of range: a token is routed to 1..={n_expert} experts ({count_key} = {n_expert})"
            )));
        }
        Some(u) => u as usize,
    };
    let n_ff_exp = bounded(md, &k(moe.ff_key), MAX_DIM * 4)?;
    Ok(Some(MoeParams { n_expert, n_expert_used, n_ff_exp }))
}

/// Old Mixtral conversions store each expert as its own 2-D tensor (`blk.N.ffn_gate.E.weight`);
/// llama.cpp merged them into 3-D `ffn_*_exps` tensors in 2024.
fn reject_split_experts(file: &GgufFile) -> Result<()> {
    let split = file.tensors().iter().find(|t| {
        let mut parts = t.name.split('.');
        parts.next() == Some("blk")
            && parts.next().is_some()
            && matches!(parts.next(), Some("ffn_gate" | "ffn_up" | "ffn_down"))
            && parts.next().is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
    });
    match split {
        None => Ok(()),
        Some(t) => Err(Error::model(format!(
            "tensor {} is a per-expert tensor of an old conversion; strata reads only merged expert tensors \
             (ffn_gate_exps etc.): re-convert the model with a current llama.cpp convert_hf_to_gguf.py",
            t.name
        ))),
    }
}

/// Llama 3.1-style RoPE scaling ships as per-frequency divisors in the tensor
/// `rope_freqs.weight` (f32, n_rot / 2 values; the metadata names no scaling type). Each must be
/// finite and positive: a divisor of 0 or NaN would turn every angle into inf or NaN.
fn rope_freq_factors(file: &GgufFile, n_rot: usize) -> Result<Option<Vec<f32>>> {
    const NAME: &str = "rope_freqs.weight";
    let Some(info) = file.tensor(NAME) else { return Ok(None) };
    if info.dims != [n_rot as u64 / 2] || info.ggml_type != crate::gguf::GgmlType::F32 {
        return Err(Error::model(format!(
            "tensor {NAME} is {} {:?}; expected f32 [{}] (one divisor per rotated pair)",
            info.ggml_type.name(),
            info.dims,
            n_rot / 2
        )));
    }
    let values: Vec<f32> =
        file.tensor_data(info).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::model(format!("tensor {NAME} value {i} is {v}; RoPE frequency divisors must be positive")));
    }
    Ok(Some(values))
}

/// Llama 3.1's RoPE divisors (HF `rope_scaling` type "llama3"): 1 for wavelengths under
/// old_context / high, `factor` over old_context / low, and a smooth blend between; the
/// frequencies in f32, as llama.cpp's converter computes `rope_freqs.weight` with numpy.
pub fn llama3_rope_factors(base: f32, n_rot: usize, factor: f64, low: f64, high: f64, old_context: f64) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / n_rot as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}
