//! Model weights as groups the runtime can place and move: the token embedding (always on the
//! host: one row is gathered per token), one [`LayerWeights`] group per transformer layer,
//! and the output head (final norm + output projection).
//!
//! Weights loaded from GGUF are views into the memory-mapped file (no copy); norms stored as
//! f16/bf16 are widened to f32 once, since the kernels take f32 norm weights.

use half::{bf16, f16};
use strata_tensor::{DType, Stream, Tensor};

use crate::arch::{MODEL_TENSORS, N_ROLES, ROLES, Role};
use crate::config::LlamaConfig;
use crate::gguf::{GgufFile, TensorInfo};
use crate::{Error, Result};

/// One transformer layer's weights, all on one device: a table indexed by [`Role`], holding
/// the tensors of the model's [`crate::config::ModelConfig::layer_roles`].
pub struct LayerWeights {
    tensors: [Option<Tensor>; N_ROLES],
}

impl LayerWeights {
    /// Builds a layer from its tensors in `roles` order (the model's layer roles).
    ///
    /// # Errors
    /// If the counts differ.
    pub fn from_group(group: Vec<Tensor>, roles: &[Role]) -> Result<LayerWeights> {
        if group.len() != roles.len() {
            return Err(Error::invalid(format!("a layer has {} tensors, got {}", roles.len(), group.len())));
        }
        let mut tensors: [Option<Tensor>; N_ROLES] = Default::default();
        for (t, r) in group.into_iter().zip(roles) {
            tensors[r.index()] = Some(t);
        }
        Ok(LayerWeights { tensors })
    }

    /// The tensor of `role`, if the layer has one.
    pub fn get(&self, role: Role) -> Option<&Tensor> {
        self.tensors[role.index()].as_ref()
    }

    /// The present tensors in group ([`Role`]) order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.tensors.iter().flatten().collect()
    }

    /// The roles of the present tensors, in group order.
    pub fn roles(&self) -> Vec<Role> {
        ROLES.iter().copied().filter(|r| self.tensors[r.index()].is_some()).collect()
    }

    /// Borrowed view for [`crate::forward::layer_forward`].
    pub fn as_ref(&self) -> crate::forward::LayerRef<'_> {
        crate::forward::LayerRef::from_table(std::array::from_fn(|i| self.tensors[i].as_ref()))
    }

    /// Total bytes of the group.
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.len_bytes() as u64).sum()
    }

    /// A copy of the group on the stream's device.
    pub fn to_device(&self, s: &Stream, layer: usize) -> Result<LayerWeights> {
        let roles = self.roles();
        let group = roles
            .iter()
            .map(|r| {
                let t = self.tensors[r.index()].as_ref().ok_or_else(|| Error::invalid("role without tensor"))?;
                Ok(t.to_device(s, &format!("blk.{layer}.{}", r.gguf_suffix()))?)
            })
            .collect::<Result<Vec<_>>>()?;
        LayerWeights::from_group(group, &roles)
    }
}

/// The output head: final norm and the output projection (the token embedding when tied).
pub struct HeadWeights {
    /// Final RMS norm weight.
    pub norm: Tensor,
    /// Output projection to vocabulary logits.
    pub output: Tensor,
}

impl HeadWeights {
    /// Bytes of both tensors.
    pub fn bytes(&self) -> u64 {
        (self.norm.len_bytes() + self.output.len_bytes()) as u64
    }

    /// Copies of both tensors on the stream's device.
    pub fn to_device(&self, s: &Stream) -> Result<HeadWeights> {
        Ok(HeadWeights { norm: self.norm.to_device(s, "output_norm")?, output: self.output.to_device(s, "output")? })
    }
}

/// All weights of a llama-family model, on the host.
pub struct ModelWeights {
    /// Token embedding.
    pub embedding: Tensor,
    /// Per-layer weights, by layer index.
    pub layers: Vec<LayerWeights>,
    /// The output head.
    pub head: HeadWeights,
}

fn weight_tensor(file: &GgufFile, info: &TensorInfo) -> Result<Tensor> {
    let dtype = info.dtype().ok_or_else(|| {
        let supported: Vec<&str> = strata_kernels::DType::ALL.iter().map(|t| t.name()).collect();
        Error::model(format!(
            "tensor {} has type {}, which strata cannot compute with (supported: {})",
            info.name,
            info.ggml_type.name(),
            supported.join(", ")
        ))
    })?;
    Ok(Tensor::from_shared(dtype, &info.shape(), file.shared(), info.offset as usize)?)
}

/// Norm weights as f32 (widened from f16/bf16 if stored so).
fn norm_tensor(file: &GgufFile, info: &TensorInfo) -> Result<Tensor> {
    let data = file.tensor_data(info);
    let n = info.n_elements() as usize;
    let values: Vec<f32> = match info.dtype() {
        Some(DType::F32) => return weight_tensor(file, info),
        Some(DType::F16) => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Some(DType::BF16) => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => {
            return Err(Error::model(format!(
                "norm tensor {} has type {}; expected f32, f16 or bf16",
                info.name,
                info.ggml_type.name()
            )));
        }
    };
    if values.len() != n {
        return Err(Error::model(format!("norm tensor {} has {} values, expected {n}", info.name, values.len())));
    }
    Ok(Tensor::from_f32(&[n], values)?)
}

fn find<'a>(file: &'a GgufFile, name: &str, dims: &[u64]) -> Result<&'a TensorInfo> {
    find_with(file, name, dims, "")
}

/// [`find`], with `why` (where the expected dims come from) added to a shape error.
fn find_with<'a>(file: &'a GgufFile, name: &str, dims: &[u64], why: &str) -> Result<&'a TensorInfo> {
    let info = file.tensor(name).ok_or_else(|| Error::model(format!("tensor {name} is missing")))?;
    if info.dims != dims {
        return Err(Error::model(format!("tensor {name} has dims {:?}, expected {dims:?}{why}", info.dims)));
    }
    Ok(info)
}

/// The metadata a layer tensor's expected dims come from, for shape errors: a file whose FFN
/// or head size does not match its tensors is told which keys to check.
fn dims_source(cfg: &LlamaConfig, r: Role) -> String {
    let a = &cfg.arch;
    let heads = |count: &str, n: usize| {
        format!("{a}.{count} {n} × head size {} ({a}.attention.key_length, else embedding / heads)", cfg.head_dim)
    };
    let q = heads("attention.head_count", cfg.n_head);
    let kv = heads("attention.head_count_kv", cfg.n_head_kv);
    let (e, f) = (format!("{a}.embedding_length {}", cfg.n_embd), format!("{a}.feed_forward_length {}", cfg.n_ff));
    let what = match r {
        Role::AttnNorm | Role::FfnNorm | Role::PostAttnNorm | Role::PostFfnNorm => e,
        Role::Q | Role::O => format!("{e}; {q}"),
        Role::QBias => q,
        Role::K | Role::V => format!("{e}; {kv}"),
        Role::KBias | Role::VBias => kv,
        Role::QNorm | Role::KNorm => {
            format!("head size {} ({a}.attention.key_length, else embedding / heads)", cfg.head_dim)
        }
        Role::Gate | Role::Up | Role::Down => format!("{e}; {f}"),
        Role::GateInp => format!("{e}; {a}.expert_count {}", cfg.n_expert),
        Role::GateExps | Role::UpExps | Role::DownExps => {
            let ff = cfg.spec.moe.map_or("feed_forward_length", |m| m.ff_key);
            format!("{e}; {a}.{ff} {}; {a}.expert_count {}", cfg.n_ff_exp, cfg.n_expert)
        }
    };
    format!(" (from {what})")
}

impl ModelWeights {
    /// Views of every weight of a checked GGUF file. Every tensor is looked up, shape- and
    /// type-checked before any is read, and every tensor of the file must be claimed: by a
    /// layer role of the architecture or as a known model tensor. A tensor nobody would read
    /// (a bias in a llama file, a layer past `block_count`) is an error naming it, since
    /// ignoring it computes a different model than the file describes.
    ///
    /// # Errors
    /// A missing, unclaimed or misshapen tensor or an unsupported type, named.
    pub fn from_gguf(file: &GgufFile, cfg: &LlamaConfig) -> Result<ModelWeights> {
        let (e, v) = (cfg.n_embd as u64, cfg.n_vocab as u64);
        let dims = cfg.layer_dims();
        // 1. Find and check everything; nothing is read yet.
        let embd_info = find(file, "token_embd.weight", &[e, v])?;
        check_type(embd_info, false)?;
        let mut layer_infos = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let mut infos = Vec::with_capacity(cfg.layer_roles.len());
            for r in &cfg.layer_roles {
                let name = format!("blk.{l}.{}", r.gguf_suffix());
                let info = find_with(file, &name, &r.dims(&dims), &dims_source(cfg, *r))?;
                check_type(info, r.is_vector())?;
                infos.push(info);
            }
            layer_infos.push(infos);
        }
        let norm_info = find(file, "output_norm.weight", &[e])?;
        check_type(norm_info, true)?;
        let out_info = match file.tensor("output.weight") {
            Some(_) => find(file, "output.weight", &[e, v])?,
            None => embd_info,
        };
        check_type(out_info, false)?;
        check_all_claimed(file, cfg, &layer_infos)?;

        // 2. Views (matrices) and f32 copies (vectors).
        let embedding = weight_tensor(file, embd_info)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for infos in layer_infos {
            let group = infos
                .iter()
                .zip(&cfg.layer_roles)
                .map(|(info, r)| if r.is_vector() { norm_tensor(file, info) } else { weight_tensor(file, info) })
                .collect::<Result<Vec<_>>>()?;
            layers.push(LayerWeights::from_group(group, &cfg.layer_roles)?);
        }
        let norm = norm_tensor(file, norm_info)?;
        let output = weight_tensor(file, out_info)?;
        Ok(ModelWeights { embedding, layers, head: HeadWeights { norm, output } })
    }
}

/// Checks that strata can compute with the tensor's type (vectors: f32, f16, bf16).
fn check_type(info: &TensorInfo, vector: bool) -> Result<()> {
    let ok = match info.dtype() {
        Some(DType::F32 | DType::F16 | DType::BF16) => true,
        Some(_) => !vector,
        None => false,
    };
    if ok {
        return Ok(());
    }
    Err(Error::model(if vector {
        format!("tensor {} has type {}; expected f32, f16 or bf16", info.name, info.ggml_type.name())
    } else {
        let supported: Vec<&str> = strata_kernels::DType::ALL.iter().map(|t| t.name()).collect();
        format!(
            "tensor {} has type {}, which strata cannot compute with (supported: {})",
            info.name,
            info.ggml_type.name(),
            supported.join(", ")
        )
    }))
}

/// Every tensor of the file must be one of the model's (layer roles, model tensors).
fn check_all_claimed(file: &GgufFile, cfg: &LlamaConfig, layers: &[Vec<&TensorInfo>]) -> Result<()> {
    let claimed: std::collections::HashSet<&str> =
        layers.iter().flatten().map(|i| i.name.as_str()).chain(MODEL_TENSORS.iter().copied()).collect();
    match file.tensors().iter().find(|t| !claimed.contains(t.name.as_str())) {
        None => Ok(()),
        Some(t) => {
            let known = crate::arch::ARCHS
                .iter()
                .filter(|a| a.required.iter().chain(a.optional).any(|r| t.name.ends_with(r.gguf_suffix())))
                .map(|a| a.name)
                .collect::<Vec<_>>();
            let own = cfg.layer_roles.iter().any(|r| t.name.ends_with(r.gguf_suffix()));
            let hint = if own {
                format!(" (block_count says {} layers)", cfg.n_layers)
            } else if known.is_empty() {
                String::new()
            } else {
                format!(" (architectures with such a tensor: {}; is the file mislabelled?)", known.join(", "))
            };
            Err(Error::model(format!(
                "tensor {} is not used by architecture {:?}{hint}; refusing to run a model that would silently \
                 ignore it",
                t.name, cfg.arch
            )))
        }
    }
}
