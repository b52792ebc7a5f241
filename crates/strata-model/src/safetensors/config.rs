//! The hyperparameters of a Hugging Face `config.json` (llama, mistral, qwen2, qwen3), with the
//! same checks as [`LlamaConfig::from_gguf`]: bounded counts, heads that divide the embedding
//! (or an explicit `head_dim`), a supported RoPE scaling, and nothing that strata does not
//! compute for the architecture (biases where its table has none, other activations, partial
//! rotary). Errors name the key.
//!
//! HF checkpoints of every one of these architectures rotate the two halves of each head
//! (`rotate_half`): llama.cpp's converter permutes llama/mistral Q/K rows to adjacent pairs
//! for GGUF and leaves qwen2/qwen3 rows as they are (their GGUF files use NEOX RoPE). strata
//! reads HF rows unpermuted and rotates half-split pairs ([`RopeLayout::HalfSplit`]) for all.

use serde_json::{Map, Value};
use strata_tensor::RopeLayout;

use crate::arch::Role;
use crate::config::{LlamaConfig, MAX_CONTEXT, MAX_DIM, MAX_HEADS, MAX_LAYERS, MAX_VOCAB};
use crate::{Error, Result};

/// `architectures` entries strata reads from safetensors, with the architecture name strata
/// uses (its `model_type`).
const HF_ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
    ("Gemma3ForCausalLM", "gemma3"),
];

/// The `model_type`s strata reads from safetensors, with the architecture each is. Gemma 3's
/// text-only checkpoints (270M, 1B) say `gemma3_text`; the multimodal ones (`gemma3`, the text
/// model under `text_config` beside a vision tower) are not read.
const HF_MODEL_TYPES: &[(&str, &str)] =
    &[("llama", "llama"), ("mistral", "mistral"), ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("gemma3_text", "gemma3")];

/// A `config.json` object with key-naming getters.
struct HfConfig<'a>(&'a Map<String, Value>);

impl HfConfig<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn bad(key: &str, v: &Value, expected: &str) -> Error {
        Error::model(format!("config.json {key} = {v} is not {expected}"))
    }

    fn opt_count(&self, key: &str, max: u64) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n as usize)),
            Some(n) => Err(Error::model(format!("config.json {key} = {n} is out of range (expected 1..={max})"))),
            None => Err(Self::bad(key, v, "a positive integer")),
        }
    }

    fn count(&self, key: &str, max: u64) -> Result<usize> {
        self.opt_count(key, max)?
            .ok_or_else(|| Error::model(format!("config.json has no {key}; it is needed to run the model")))
    }

    /// A positive number that is still positive and finite as an f32 (1e-308 is not: it
    /// rounds to 0). The message shows the value as the file writes it.
    fn positive(&self, key: &str, default: f64) -> Result<f32> {
        let (v, shown) = match self.get(key) {
            None => (default, default.to_string()),
            Some(j) => (j.as_f64().ok_or_else(|| Self::bad(key, j, "a number"))?, j.to_string()),
        };
        let f = v as f32;
        if !(f.is_finite() && f > 0.0) {
            return Err(Error::model(format!(
                "config.json {key} = {shown} must be a positive number within f32's range"
            )));
        }
        Ok(f)
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| Self::bad(key, v, "true or false"))).transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| Self::bad(key, v, "a string"))).transpose()
    }
}

/// The architecture: `model_type` if present, else the first known `architectures` entry.
fn architecture(c: &HfConfig) -> Result<String> {
    let archs: Vec<&str> = match c.get("architectures") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(v) => return Err(HfConfig::bad("architectures", v, "a list of class names")),
    };
    let from_archs = archs.iter().find_map(|a| HF_ARCHITECTURES.iter().find(|(hf, _)| hf == a).map(|(_, s)| *s));
    let model_type = c.opt_str("model_type")?;
    match (
        model_type.and_then(|t| HF_MODEL_TYPES.iter().find(|(hf, _)| *hf == t)).map(|(_, a)| *a),
        model_type,
        from_archs,
    ) {
        (Some(arch), _, _) | (None, None, Some(arch)) => Ok(arch.to_string()),
        (None, found, _) => Err(Error::model(format!(
            "config.json model_type {found:?} (architectures {archs:?}) is not supported from safetensors; strata \
             reads: {}",
            HF_MODEL_TYPES.iter().map(|(hf, _)| *hf).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `rope_scaling` as (1 / linear factor, per-frequency divisors): absent, null or "default"
/// (no scaling), "linear", or "llama3" (Llama 3.1's divisors, computed from its parameters as
/// llama.cpp's converter computes `rope_freqs.weight`).
fn rope_scaling(c: &HfConfig, base: f32, n_rot: usize) -> Result<(f32, Option<Vec<f32>>)> {
    let Some(v) = c.get("rope_scaling") else { return Ok((1.0, None)) };
    let Some(obj) = v.as_object() else { return Err(HfConfig::bad("rope_scaling", v, "an object or null")) };
    let s = HfConfig(obj);
    // transformers renamed "type" to "rope_type"; either may be present.
    let kind = match s.opt_str("rope_type")? {
        Some(t) => Some(t),
        None => s.opt_str("type")?,
    };
    // Positive, and so are the value and its inverse as f32: a factor of 1e-308 would make the
    // frequency scale infinite and every rotation NaN.
    let positive = |key: &str| match s.get(key).and_then(Value::as_f64) {
        Some(f) if [f as f32, (1.0 / f) as f32].iter().all(|v| v.is_finite() && *v > 0.0) => Ok(f),
        _ => Err(Error::model(format!(
            "config.json rope_scaling.{key} = {} must be a positive number within f32's range",
            s.get(key).map_or("(missing)".to_string(), Value::to_string)
        ))),
    };
    match kind {
        None | Some("default") => Ok((1.0, None)),
        Some("linear") => Ok(((1.0 / positive("factor")?) as f32, None)),
        Some("llama3") => {
            let (factor, low, high) =
                (positive("factor")?, positive("low_freq_factor")?, positive("high_freq_factor")?);
            let old_context = positive("original_max_position_embeddings")?;
            if high <= low {
                return Err(Error::model(format!(
                    "config.json rope_scaling.high_freq_factor = {high} must exceed low_freq_factor = {low}"
                )));
            }
            Ok((1.0, Some(crate::config::llama3_rope_factors(base, n_rot, factor, low, high, old_context))))
        }
        Some(other) => Err(Error::model(format!(
            "config.json rope_scaling type {other:?} is not supported (strata supports linear, llama3 or none)"
        ))),
    }
}

/// Features of the config classes that change the computation and strata does not have for
/// `arch`: biases its table entry lacks (qwen2's Q/K/V biases are always there: transformers
/// has no switch for them), another activation, partial rotary.
fn reject_unsupported(c: &HfConfig, arch: &str, spec: &crate::arch::ArchSpec) -> Result<()> {
    if c.opt_bool("attention_bias")? == Some(true) && !spec.required.contains(&Role::QBias) {
        return Err(Error::model(format!(
            "config.json attention_bias = true: biased attention projections are not supported for {arch}"
        )));
    }
    if c.opt_bool("mlp_bias")? == Some(true) {
        return Err(Error::model("config.json mlp_bias = true: biased MLP projections are not supported"));
    }
    // Gemma's configs name the FFN activation `hidden_activation` (transformers' Gemma 3 reads
    // only that one); the others `hidden_act`.
    let (key, expected) = match spec.activation {
        crate::arch::Activation::Silu => ("hidden_act", "silu"),
        crate::arch::Activation::GeluTanh => ("hidden_activation", "gelu_pytorch_tanh"),
    };
    if let Some(act) = c.opt_str(key)?
        && act != expected
    {
        return Err(Error::model(format!("config.json {key} = {act:?} is not supported ({arch} uses {expected:?})")));
    }
    if c.opt_bool("use_bidirectional_attention")? == Some(true) {
        return Err(Error::model(
            "config.json use_bidirectional_attention = true (an embedding model): strata runs causal attention only",
        ));
    }
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = c.get(key) {
            return Err(Error::model(format!("config.json {key} = {v} is not supported (no soft-capping op yet)")));
        }
    }
    if let Some(f) = c.get("partial_rotary_factor").and_then(Value::as_f64)
        && f != 1.0
    {
        return Err(Error::model(format!("config.json partial_rotary_factor = {f} is not supported (expected 1.0)")));
    }
    Ok(())
}

/// Gemma 3's sliding window (`sliding_window`), after checking that the config's layout of
/// windowed and global layers and the windowed layers' RoPE base are the ones the architecture
/// runs (every `spec.swa_pattern`-th layer global, the rest windowed with base
/// `spec.swa_rope_base`): `sliding_window_pattern` in older configs, `layer_types` in newer.
fn gemma_windows(c: &HfConfig, spec: &crate::arch::ArchSpec, n_layers: usize) -> Result<usize> {
    let window = c.count("sliding_window", MAX_CONTEXT)?;
    let p = spec.swa_pattern;
    if let Some(v) = c.get("sliding_window_pattern")
        && v.as_u64() != Some(p as u64)
    {
        return Err(Error::model(format!(
            "config.json sliding_window_pattern = {v} is not supported ({} uses {p}: every {p}th layer global)",
            spec.name
        )));
    }
    if let Some(v) = c.get("layer_types") {
        let types = v.as_array().filter(|a| a.len() == n_layers).ok_or_else(|| {
            HfConfig::bad("layer_types", v, &format!("a list of {n_layers} layer types (num_hidden_layers)"))
        })?;
        for (l, t) in types.iter().enumerate() {
            let want = if l % p < p - 1 { "sliding_attention" } else { "full_attention" };
            if t.as_str() != Some(want) {
                return Err(Error::model(format!(
                    "config.json layer_types[{l}] = {t} is not supported ({} runs {want:?} there: every {p}th layer \
                     global, the rest windowed)",
                    spec.name
                )));
            }
        }
    }
    let local = c.positive("rope_local_base_freq", f64::from(spec.swa_rope_base))?;
    if local != spec.swa_rope_base {
        return Err(Error::model(format!(
            "config.json rope_local_base_freq = {local} is not supported ({} windowed layers use {})",
            spec.name, spec.swa_rope_base
        )));
    }
    Ok(window)
}

impl LlamaConfig {
    /// Reads and checks the hyperparameters of a Hugging Face `config.json` of a llama, mistral,
    /// qwen2, qwen3 or (text-only) gemma3 model. `tied_output` comes from `tie_word_embeddings`
    /// (by default true for gemma3 and false for the others, as in transformers); the head size
    /// from `head_dim` when present (qwen3's and gemma3's differ from hidden / heads). The RoPE
    /// layout is [`RopeLayout::HalfSplit`] (see the module doc).
    ///
    /// # Errors
    /// [`Error::Model`] naming the key at fault.
    pub fn from_hf_config(json: &Value) -> Result<LlamaConfig> {
        let obj = json.as_object().ok_or_else(|| Error::model("config.json is not a JSON object"))?;
        let c = HfConfig(obj);
        let arch = architecture(&c)?;
        let spec = crate::config::arch_spec(&arch)?;
        reject_unsupported(&c, &arch, spec)?;
        let n_layers = c.count("num_hidden_layers", MAX_LAYERS)?;
        let n_embd = c.count("hidden_size", MAX_DIM)?;
        let n_ff = c.count("intermediate_size", MAX_DIM * 4)?;
        let n_head = c.count("num_attention_heads", MAX_HEADS)?;
        let n_head_kv = c.opt_count("num_key_value_heads", MAX_HEADS)?.unwrap_or(n_head);
        let n_vocab = c.count("vocab_size", MAX_VOCAB)?;
        let head_dim = match c.opt_count("head_dim", MAX_DIM)? {
            Some(hd) => hd,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(Error::model(format!(
                    "config.json num_attention_heads = {n_head} does not divide hidden_size = {n_embd} (and there is \
                     no head_dim)"
                )));
            }
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::model(format!(
                "config.json num_key_value_heads = {n_head_kv} does not divide the {n_head} attention heads"
            )));
        }
        let q_dim = n_head
            .checked_mul(head_dim)
            .filter(|&q| q as u64 <= MAX_DIM * 4)
            .ok_or_else(|| Error::model(format!("config.json: {n_head} heads of head_dim {head_dim} are too wide")))?;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::model(format!("the head size {head_dim} is odd; RoPE needs an even head size")));
        }
        let mut n_ctx_train = c.opt_count("max_position_embeddings", MAX_CONTEXT)?.unwrap_or(2048);
        let sliding_window = if spec.swa_pattern > 0 {
            // Gemma 3: the window on most layers, as in GGUF files of the architecture.
            Some(gemma_windows(&c, spec, n_layers)?)
        } else {
            // strata attends to the whole cache on these architectures: past a sliding window the
            // results would differ from the reference, so the window bounds the context this
            // model offers. Qwen configs carry a `sliding_window` that applies only with
            // `use_sliding_window` (false in the released models).
            if c.opt_bool("use_sliding_window")? != Some(false)
                && let Some(w) = c.opt_count("sliding_window", MAX_CONTEXT)?
                && w < n_ctx_train
            {
                log::info!("config.json sliding_window = {w}: using it as the training context");
                n_ctx_train = w;
            }
            None
        };
        // Gemma scales the scores by query_pre_attn_scalar^-1/2 (the head size in most sizes).
        let attn_scale = match c.get("query_pre_attn_scalar") {
            Some(_) => 1.0 / c.positive("query_pre_attn_scalar", 1.0)?.sqrt(),
            None => 1.0 / (head_dim as f32).sqrt(),
        };
        let tied_output = c.opt_bool("tie_word_embeddings")?.unwrap_or(arch == "gemma3");
        let rope_freq_base = c.positive("rope_theta", 10000.0)?;
        let (rope_freq_scale, rope_freq_factors) = rope_scaling(&c, rope_freq_base, head_dim)?;
        crate::config::check_rope(
            "config.json rope_theta and rope_scaling",
            rope_freq_base,
            rope_freq_scale,
            head_dim,
        )?;
        Ok(LlamaConfig {
            arch,
            spec,
            layer_roles: crate::config::layer_roles(spec, false, |_| false),
            q_dim,
            activation: spec.activation,
            embed_scale: spec.embed_scale.then(|| (n_embd as f32).sqrt()),
            attn_scale,
            sliding_window,
            n_layers,
            n_embd,
            n_ff,
            n_expert: 0,
            n_expert_used: 0,
            n_ff_exp: 0,
            moe_gating: crate::arch::MoeGating::SoftmaxTopKRenorm,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rope_freq_base,
            rope_freq_scale,
            rope_freq_factors,
            n_rot: head_dim,
            rope_layout: RopeLayout::HalfSplit,
            rms_eps: c.positive("rms_norm_eps", 1e-6)?,
            tied_output,
        })
    }
}
