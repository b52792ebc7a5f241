//! Model weights as groups the runtime can place and move: the token embedding (always on the
//! host: one row is gathered per token), one [`LayerWeights`] group per transformer layer,
//! and the output head (final norm + output projection).
//!
//! Weights loaded from GGUF are views into the memory-mapped file (no copy); norms stored as
//! f16/bf16 are widened to f32 once, since the kernels take f32 norm weights.

use half::{bf16, f16};
use strata_tensor::{DType, Stream, Tensor};

use crate::config::LlamaConfig;
use crate::gguf::{GgufFile, TensorInfo};
use crate::{Error, Result};

/// Names (GGUF suffixes) of one layer's tensors, in group order.
pub const LAYER_TENSORS: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

/// One transformer layer's weights, all on one device.
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub ffn_norm: Tensor,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

impl LayerWeights {
    /// Builds a layer from its tensors in [`LAYER_TENSORS`] order.
    ///
    /// # Errors
    /// If there are not exactly nine tensors.
    pub fn from_group(group: Vec<Tensor>) -> Result<LayerWeights> {
        let n = group.len();
        let [attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down]: [Tensor; 9] =
            group.try_into().map_err(|_| Error::invalid(format!("a layer has 9 tensors, got {n}")))?;
        Ok(LayerWeights { attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down })
    }

    /// The tensors in [`LAYER_TENSORS`] order.
    pub fn tensors(&self) -> [&Tensor; 9] {
        [
            &self.attn_norm,
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.ffn_norm,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    /// Borrowed view for [`crate::forward::layer_forward`].
    pub fn as_ref(&self) -> crate::forward::LayerRef<'_> {
        crate::forward::LayerRef {
            attn_norm: &self.attn_norm,
            wq: &self.wq,
            wk: &self.wk,
            wv: &self.wv,
            wo: &self.wo,
            ffn_norm: &self.ffn_norm,
            w_gate: &self.w_gate,
            w_up: &self.w_up,
            w_down: &self.w_down,
        }
    }

    /// Total bytes of the group.
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.len_bytes() as u64).sum()
    }

    /// A copy of the group on the stream's device.
    pub fn to_device(&self, s: &Stream, layer: usize) -> Result<LayerWeights> {
        let group = self
            .tensors()
            .iter()
            .zip(LAYER_TENSORS)
            .map(|(t, name)| t.to_device(s, &format!("blk.{layer}.{name}")))
            .collect::<strata_tensor::Result<Vec<_>>>()?;
        LayerWeights::from_group(group)
    }
}

/// The output head: final norm and the output projection (the token embedding when tied).
pub struct HeadWeights {
    pub norm: Tensor,
    pub output: Tensor,
}

impl HeadWeights {
    pub fn bytes(&self) -> u64 {
        (self.norm.len_bytes() + self.output.len_bytes()) as u64
    }

    pub fn to_device(&self, s: &Stream) -> Result<HeadWeights> {
        Ok(HeadWeights { norm: self.norm.to_device(s, "output_norm")?, output: self.output.to_device(s, "output")? })
    }
}

/// All weights of a llama-family model, on the host.
pub struct ModelWeights {
    pub embedding: Tensor,
    pub layers: Vec<LayerWeights>,
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
    let info = file.tensor(name).ok_or_else(|| Error::model(format!("tensor {name} is missing")))?;
    if info.dims != dims {
        return Err(Error::model(format!("tensor {name} has dims {:?}, expected {dims:?}", info.dims)));
    }
    Ok(info)
}

impl ModelWeights {
    /// Views of every weight of a checked llama-family GGUF file.
    ///
    /// # Errors
    /// A missing tensor, a wrong shape or an unsupported type, named.
    pub fn from_gguf(file: &GgufFile, cfg: &LlamaConfig) -> Result<ModelWeights> {
        let (e, v) = (cfg.n_embd as u64, cfg.n_vocab as u64);
        let embd_info = find(file, "token_embd.weight", &[e, v])?;
        let embedding = weight_tensor(file, embd_info)?;
        let dims = cfg.layer_tensor_dims();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let mut group = Vec::with_capacity(9);
            for (suffix, d) in &dims {
                let info = find(file, &format!("blk.{l}.{suffix}.weight"), d)?;
                group.push(if d.len() == 1 { norm_tensor(file, info)? } else { weight_tensor(file, info)? });
            }
            layers.push(LayerWeights::from_group(group)?);
        }
        let norm = norm_tensor(file, find(file, "output_norm.weight", &[e])?)?;
        let output = match file.tensor("output.weight") {
            Some(_) => weight_tensor(file, find(file, "output.weight", &[e, v])?)?,
            None => weight_tensor(file, embd_info)?,
        };
        Ok(ModelWeights { embedding, layers, head: HeadWeights { norm, output } })
    }
}
