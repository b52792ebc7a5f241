//! Architectures as data: each supported `general.architecture` is an [`ArchSpec`], a table
//! entry naming its per-layer tensors (required and optional, by [`Role`]) and its switches
//! (RoPE layout, FFN activation, embedding scale, sliding-window pattern). One block runner
//! ([`crate::forward::layer_forward`]) reads the switches; the runtime places and streams a
//! layer's tensors as one group whatever the architecture, in [`Role`] order.
//!
//! Facts per architecture, as llama.cpp reads them (checked against its source):
//! - llama, mistral: the converter permutes Q/K rows to adjacent RoPE pairs; SiLU-gated FFN.
//! - qwen2: Q, K and V biases; half-split (NEOX) RoPE; SiLU.
//! - qwen3: per-head RMSNorm of Q and K before RoPE; head size from `attention.key_length`;
//!   half-split RoPE; SiLU.
//! - gemma3 (llama.cpp's `llm_build_gemma3<iswa>` and its gemma3 hparams): embeddings ×
//!   √n_embd (f32 `sqrtf`); GELU (tanh) FFN; RMS norms with the weights as stored (the
//!   converter already folded Gemma's `1 + w` in); post-attention and post-FFN norms before
//!   each residual add; per-head Q/K norms before RoPE; half-split RoPE; sliding window on
//!   layers with `l % 6 < 5` (every 6th layer global) with a RoPE base of 10000 at scale 1, the
//!   global ones the file's base and scale; attention scale 1/√key_length (Gemma's
//!   `query_pre_attn_scalar`), except for the 62-layer 27B, where it is 1/√(n_embd / n_head);
//!   tied output embeddings unless the file has `output.weight`; no logit soft-capping.

use strata_tensor::RopeLayout;

/// What a layer tensor is for. The order of the variants is the order of a layer's weight
/// group (what the runtime packs and streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Pre-attention RMS norm weight.
    AttnNorm,
    /// Query projection.
    Q,
    /// Query projection bias.
    QBias,
    /// Key projection.
    K,
    /// Key projection bias.
    KBias,
    /// Value projection.
    V,
    /// Value projection bias.
    VBias,
    /// Per-head RMS norm weight applied to Q.
    QNorm,
    /// Per-head RMS norm weight applied to K.
    KNorm,
    /// Attention output projection.
    O,
    /// RMS norm weight applied to the attention output.
    PostAttnNorm,
    /// Pre-FFN RMS norm weight.
    FfnNorm,
    /// Mixture-of-experts router (`ffn_gate_inp`): [n_expert, n_embd], one logit per expert.
    /// Part of the layer's attention part (it runs where the attention runs).
    GateInp,
    /// FFN gate projection.
    Gate,
    /// FFN up projection.
    Up,
    /// FFN down projection.
    Down,
    /// RMS norm weight applied to the FFN output.
    PostFfnNorm,
    /// The experts' gate projections, 3-D: [n_expert, n_ff_exp, n_embd].
    GateExps,
    /// The experts' up projections, 3-D: [n_expert, n_ff_exp, n_embd].
    UpExps,
    /// The experts' down projections, 3-D: [n_expert, n_embd, n_ff_exp].
    DownExps,
}

/// Number of roles (the length of a layer's tensor table).
pub const N_ROLES: usize = 20;

/// Every role, in group order.
pub const ROLES: [Role; N_ROLES] = [
    Role::AttnNorm,
    Role::Q,
    Role::QBias,
    Role::K,
    Role::KBias,
    Role::V,
    Role::VBias,
    Role::QNorm,
    Role::KNorm,
    Role::O,
    Role::PostAttnNorm,
    Role::FfnNorm,
    Role::GateInp,
    Role::Gate,
    Role::Up,
    Role::Down,
    Role::PostFfnNorm,
    Role::GateExps,
    Role::UpExps,
    Role::DownExps,
];

/// The sizes a layer tensor's shape depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDims {
    /// Model (residual stream) width.
    pub n_embd: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// n_head × head_dim (the width of Q and of the attention output).
    pub q_dim: usize,
    /// n_head_kv × head_dim.
    pub kv_dim: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Number of experts (0: a dense model).
    pub n_expert: usize,
    /// Hidden width of one expert's FFN.
    pub n_ff_exp: usize,
}

impl Role {
    /// The tensor's GGUF name after `blk.N.`.
    pub fn gguf_suffix(self) -> &'static str {
        match self {
            Role::AttnNorm => "attn_norm.weight",
            Role::Q => "attn_q.weight",
            Role::QBias => "attn_q.bias",
            Role::K => "attn_k.weight",
            Role::KBias => "attn_k.bias",
            Role::V => "attn_v.weight",
            Role::VBias => "attn_v.bias",
            Role::QNorm => "attn_q_norm.weight",
            Role::KNorm => "attn_k_norm.weight",
            Role::O => "attn_output.weight",
            Role::PostAttnNorm => "post_attention_norm.weight",
            Role::FfnNorm => "ffn_norm.weight",
            Role::Gate => "ffn_gate.weight",
            Role::Up => "ffn_up.weight",
            Role::Down => "ffn_down.weight",
            Role::PostFfnNorm => "post_ffw_norm.weight",
            Role::GateInp => "ffn_gate_inp.weight",
            Role::GateExps => "ffn_gate_exps.weight",
            Role::UpExps => "ffn_up_exps.weight",
            Role::DownExps => "ffn_down_exps.weight",
        }
    }

    /// The index of the role in [`ROLES`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A vector (norm weight or bias: read as f32) rather than a matrix.
    pub fn is_vector(self) -> bool {
        let one = LayerDims { n_embd: 1, n_ff: 1, q_dim: 1, kv_dim: 1, head_dim: 1, n_expert: 1, n_ff_exp: 1 };
        self.dims(&one).len() == 1
    }

    /// An RMSNorm weight (a block's norms and the per-head Q/K norms).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Role::AttnNorm | Role::FfnNorm | Role::PostAttnNorm | Role::PostFfnNorm | Role::QNorm | Role::KNorm
        )
    }

    /// One of the 3-D expert tensors (the layer's *expert part*; everything else, router
    /// included, is its attention part, a prefix of the group order).
    pub fn is_expert(self) -> bool {
        matches!(self, Role::GateExps | Role::UpExps | Role::DownExps)
    }

    /// GGUF dims (ne0 first) of the tensor.
    pub fn dims(self, d: &LayerDims) -> Vec<u64> {
        let (e, f, q, kv, hd) = (d.n_embd as u64, d.n_ff as u64, d.q_dim as u64, d.kv_dim as u64, d.head_dim as u64);
        let (ne, fe) = (d.n_expert as u64, d.n_ff_exp as u64);
        match self {
            Role::AttnNorm | Role::FfnNorm | Role::PostAttnNorm | Role::PostFfnNorm => vec![e],
            Role::Q => vec![e, q],
            Role::K | Role::V => vec![e, kv],
            Role::QBias => vec![q],
            Role::KBias | Role::VBias => vec![kv],
            Role::QNorm | Role::KNorm => vec![hd],
            Role::O => vec![q, e],
            Role::Gate | Role::Up => vec![e, f],
            Role::Down => vec![f, e],
            Role::GateInp => vec![e, ne],
            Role::GateExps | Role::UpExps => vec![e, fe, ne],
            Role::DownExps => vec![fe, e, ne],
        }
    }
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// SiLU(gate)·up (llama, qwen).
    Silu,
    /// GELU(gate)·up with GELU's tanh approximation (gemma).
    GeluTanh,
}

/// One architecture: its tensors and switches.
#[derive(Debug, PartialEq)]
pub struct ArchSpec {
    /// The architecture name (`general.architecture`).
    pub name: &'static str,
    /// Layer tensors every layer must have.
    pub required: &'static [Role],
    /// Layer tensors a file may have (all layers or none).
    pub optional: &'static [Role],
    /// How GGUF files of this architecture order the RoPE pairs.
    pub rope_layout: RopeLayout,
    /// The FFN's gate activation.
    pub activation: Activation,
    /// Embeddings are multiplied by √n_embd.
    pub embed_scale: bool,
    /// With `attention.sliding_window` set, layer l uses the window when `l % pattern <
    /// pattern - 1` (0: no layer does).
    pub swa_pattern: usize,
    /// RoPE base of the sliding-window layers (llama.cpp fixes it per architecture).
    pub swa_rope_base: f32,
    /// What this build cannot compute yet for the architecture (None: it runs).
    pub missing: Option<&'static str>,
    /// How the architecture's mixture-of-experts layers look, if it has them.
    pub moe: Option<MoeSpec>,
}

/// How a mixture-of-experts layer turns its router logits into expert weights (llama.cpp's
/// `build_moe_ffn` arguments for each architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeGating {
    /// Softmax over all experts, the k largest kept, their weights divided by their sum
    /// (llama.cpp: `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX` with `norm_w = true`; Mixtral and
    /// qwen3moe). Equal to a softmax over the k chosen logits.
    SoftmaxTopKRenorm,
    /// Softmax over all experts, the k largest kept as they are (`norm_w = false`; qwen2moe).
    SoftmaxTopK,
}

/// The mixture-of-experts switches of an architecture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeSpec {
    /// The layer tensors of a model with experts (replacing [`ArchSpec::required`]).
    pub required: &'static [Role],
    /// Router normalisation.
    pub gating: MoeGating,
    /// The metadata key (after `{arch}.`) holding one expert's FFN width.
    pub ff_key: &'static str,
    /// Every model of the architecture has experts (`expert_count` is required); otherwise
    /// `expert_count` > 0 switches them on (llama files of Mixtral).
    pub always: bool,
}

/// `a` then `b`, in a constant (a length that is not `A + B` fails to compile).
const fn concat<const A: usize, const B: usize, const C: usize>(a: [Role; A], b: [Role; B]) -> [Role; C] {
    assert!(A + B == C, "concat: C must be A + B");
    let mut out = [Role::AttnNorm; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// The attention part of a llama layer, up to the FFN's norm.
const LLAMA_ATTENTION: [Role; 6] = [Role::AttnNorm, Role::Q, Role::K, Role::V, Role::O, Role::FfnNorm];
/// qwen3's: llama's with per-head Q and K norms.
const QWEN3_ATTENTION: [Role; 8] =
    [Role::AttnNorm, Role::Q, Role::K, Role::V, Role::QNorm, Role::KNorm, Role::O, Role::FfnNorm];
/// A dense SiLU/GELU-gated FFN.
const DENSE_FFN: [Role; 3] = [Role::Gate, Role::Up, Role::Down];
/// A mixture-of-experts FFN: the router, then the experts (the layer's expert part comes last).
const MOE_FFN: [Role; 4] = [Role::GateInp, Role::GateExps, Role::UpExps, Role::DownExps];

const BASE: &[Role] = &concat::<6, 3, 9>(LLAMA_ATTENTION, DENSE_FFN);
/// The layer of a llama-layout model with experts (Mixtral).
const LLAMA_MOE: &[Role] = &concat::<6, 4, 10>(LLAMA_ATTENTION, MOE_FFN);
/// A qwen3 layer.
const QWEN3: &[Role] = &concat::<8, 3, 11>(QWEN3_ATTENTION, DENSE_FFN);
/// A qwen3moe layer: qwen3's attention, a router and the experts.
const QWEN3_MOE: &[Role] = &concat::<8, 4, 12>(QWEN3_ATTENTION, MOE_FFN);
/// A qwen2 layer: llama's with Q, K and V biases.
const QWEN2: &[Role] = &concat::<9, 3, 12>(
    [Role::AttnNorm, Role::Q, Role::QBias, Role::K, Role::KBias, Role::V, Role::VBias, Role::O, Role::FfnNorm],
    DENSE_FFN,
);
/// A gemma3 layer: qwen3's attention with a post-attention norm, and a post-FFN norm.
const GEMMA3: &[Role] = &concat::<9, 4, 13>(
    [Role::AttnNorm, Role::Q, Role::K, Role::V, Role::QNorm, Role::KNorm, Role::O, Role::PostAttnNorm, Role::FfnNorm],
    [Role::Gate, Role::Up, Role::Down, Role::PostFfnNorm],
);

const LLAMA: ArchSpec = ArchSpec {
    name: "llama",
    required: BASE,
    optional: &[],
    rope_layout: RopeLayout::Adjacent,
    activation: Activation::Silu,
    embed_scale: false,
    swa_pattern: 0,
    swa_rope_base: 0.0,
    missing: None,
    moe: Some(MoeSpec {
        required: LLAMA_MOE,
        gating: MoeGating::SoftmaxTopKRenorm,
        ff_key: "feed_forward_length",
        always: false,
    }),
};

/// Every architecture strata knows.
pub const ARCHS: &[ArchSpec] = &[
    LLAMA,
    ArchSpec { name: "mistral", ..LLAMA },
    ArchSpec { name: "qwen2", required: QWEN2, rope_layout: RopeLayout::HalfSplit, moe: None, ..LLAMA },
    ArchSpec { name: "qwen3", required: QWEN3, rope_layout: RopeLayout::HalfSplit, moe: None, ..LLAMA },
    ArchSpec {
        name: "gemma3",
        required: GEMMA3,
        rope_layout: RopeLayout::HalfSplit,
        activation: Activation::GeluTanh,
        embed_scale: true,
        swa_pattern: 6,
        swa_rope_base: 10000.0,
        moe: None,
        ..LLAMA
    },
    ArchSpec {
        name: "qwen3moe",
        required: QWEN3_MOE,
        rope_layout: RopeLayout::HalfSplit,
        moe: Some(MoeSpec {
            required: QWEN3_MOE,
            gating: MoeGating::SoftmaxTopKRenorm,
            ff_key: "expert_feed_forward_length",
            always: true,
        }),
        ..LLAMA
    },
];

/// The architectures that run, for messages.
pub fn runnable_names() -> Vec<&'static str> {
    ARCHS.iter().filter(|a| a.missing.is_none()).map(|a| a.name).collect()
}

/// The spec of a `general.architecture` name.
pub fn by_name(name: &str) -> Option<&'static ArchSpec> {
    ARCHS.iter().find(|a| a.name == name)
}

/// Top-level tensors a file may carry besides the layers (claimed by name).
pub const MODEL_TENSORS: &[&str] = &["token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"];
