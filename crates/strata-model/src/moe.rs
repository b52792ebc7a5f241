//! The mixture-of-experts FFN, in two steps a caller can place apart:
//! - [`moe_route`]: top-k experts per token with the architecture's normalisation
//!   ([`MoeGating`]), computed on the host from the router logits [T, n_expert] (a few
//!   hundred floats per token; the host needs them anyway to know which experts to run);
//! - [`moe_experts`]: out = Σ over the routed (token, expert) pairs whose expert passes a
//!   filter, weight · down(act(gate·h) ⊙ up·h), on one stream's device. Tokens are grouped by
//!   expert: the rows routed to expert e are gathered, run through e's three projections as
//!   one matmul each (matvec for a single token) on a view of e's slice of the 3-D tensors (no
//!   weight copy), then scaled by their weights and added into their rows of `out`.
//!
//! The filter lets a caller run the experts held on a GPU there and the others on the CPU,
//! then add the two partial sums.

use strata_tensor::{DType, Stream, Tensor, ops};

use crate::arch::{Activation, MoeGating, Role};
use crate::config::ModelConfig;
use crate::forward::LayerRef;
use crate::{Error, Result};

/// llama.cpp clamps the sum of the chosen weights from below before dividing by it (the
/// smallest normal f16), so a row of tiny probabilities cannot divide by zero.
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

/// Which experts each token goes to, and with what weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Experts in the layer.
    pub n_expert: usize,
    /// Experts per token (k).
    pub k: usize,
    /// Token t's experts are `experts[t * k..(t + 1) * k]`, the highest router score first;
    /// each is below `n_expert` and a token's k are distinct.
    pub experts: Vec<usize>,
    /// Their weights, in the same layout.
    pub weights: Vec<f32>,
}

impl Routing {
    /// Number of tokens routed.
    pub fn n_tokens(&self) -> usize {
        self.experts.len().checked_div(self.k).unwrap_or(0)
    }

    /// Token t's (expert, weight) pairs.
    pub fn token(&self, t: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = t * self.k..(t + 1) * self.k;
        self.experts[r.clone()].iter().copied().zip(self.weights[r].iter().copied())
    }

    /// How many tokens each expert received (length `n_expert`): the counts behind expert
    /// heat and cache hit rates.
    pub fn expert_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_expert];
        // moe_route never yields an expert outside 0..n_expert; a hand-built routing that does
        // is not counted rather than a panic.
        for &e in &self.experts {
            if let Some(c) = counts.get_mut(e) {
                *c += 1;
            }
        }
        counts
    }

    /// The tokens routed to expert `e` (ascending) and their weights.
    pub fn tokens_of(&self, e: usize) -> (Vec<i32>, Vec<f32>) {
        let mut rows = Vec::new();
        let mut weights = Vec::new();
        for (i, (&x, &w)) in self.experts.iter().zip(&self.weights).enumerate() {
            if x == e {
                rows.push((i / self.k.max(1)) as i32);
                weights.push(w);
            }
        }
        (rows, weights)
    }
}

/// Routes T tokens from their router logits (`logits`: T × n_expert f32, row-major, on the
/// host) with `cfg`'s k and gating. Ties between equal scores go to the lower expert index.
///
/// # Errors
/// A NaN or infinite logit (bad router weights or activations): routing on it would pick
/// arbitrary experts. Also a model without experts or a logit count that is not a multiple
/// of n_expert.
pub fn moe_route(cfg: &ModelConfig, logits: &[f32]) -> Result<Routing> {
    let (n, k) = (cfg.n_expert, cfg.n_expert_used);
    if n == 0 || k == 0 || k > n {
        return Err(Error::invalid(format!("routing needs 1 <= k <= n_expert experts, got k {k} of {n}")));
    }
    if !logits.len().is_multiple_of(n) {
        return Err(Error::invalid(format!("{} router logits are not rows of {n} experts", logits.len())));
    }
    let t = logits.len() / n;
    let mut experts = Vec::with_capacity(t * k);
    let mut weights = Vec::with_capacity(t * k);
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for (tok, row) in logits.chunks_exact(n).enumerate() {
        if let Some((e, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::model(format!(
                "the router gave token {tok} a logit of {v} for expert {e}; the model's router weights or \
                 activations are not finite"
            )));
        }
        // Softmax over all experts (as llama.cpp's ggml_soft_max: max subtracted, f32).
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        order.clear();
        order.extend(0..n);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let chosen = &order[..k];
        let probs: Vec<f32> = chosen.iter().map(|&e| exps[e] / sum).collect();
        let norm = match cfg.moe_gating {
            MoeGating::SoftmaxTopKRenorm => probs.iter().sum::<f32>().max(MIN_WEIGHT_SUM),
            MoeGating::SoftmaxTopK => 1.0,
        };
        experts.extend_from_slice(chosen);
        weights.extend(probs.iter().map(|p| p / norm));
    }
    Ok(Routing { n_expert: n, k, experts, weights })
}

/// One expert's three 2-D weights: gate and up [n_ff_exp, n_embd], down [n_embd, n_ff_exp].
pub struct ExpertWeights {
    /// Gate projection.
    pub gate: Tensor,
    /// Up projection.
    pub up: Tensor,
    /// Down projection.
    pub down: Tensor,
}

impl ExpertWeights {
    /// Expert `e` of the stacked 3-D tensors, as views (no copy of mapped or device bytes).
    ///
    /// # Errors
    /// Tensors that are not 3-D, or `e` outside them.
    pub fn from_stacked(gate: &Tensor, up: &Tensor, down: &Tensor, e: usize) -> Result<ExpertWeights> {
        let slice = |t: &Tensor| -> Result<Tensor> {
            match *t.shape() {
                [_, r, c] => Ok(t.narrow(e..e + 1)?.reshape(&[r, c])?),
                ref s => Err(Error::invalid(format!("expert tensors must be 3-D, got {s:?}"))),
            }
        };
        Ok(ExpertWeights { gate: slice(gate)?, up: slice(up)?, down: slice(down)? })
    }

    /// Copies of the three on the stream's device (e.g. to fill a GPU expert cache).
    pub fn to_device(&self, s: &Stream, what: &str) -> Result<ExpertWeights> {
        Ok(ExpertWeights {
            gate: self.gate.to_device(s, &format!("{what} gate"))?,
            up: self.up.to_device(s, &format!("{what} up"))?,
            down: self.down.to_device(s, &format!("{what} down"))?,
        })
    }

    /// Bytes of the three.
    pub fn bytes(&self) -> u64 {
        (self.gate.len_bytes() + self.up.len_bytes() + self.down.len_bytes()) as u64
    }
}

/// Where [`moe_experts`] finds the experts' weights.
#[derive(Clone, Copy)]
pub enum ExpertRef<'a> {
    /// A layer's 3-D tensors: gate and up [n_expert, n_ff_exp, n_embd], down
    /// [n_expert, n_embd, n_ff_exp] (roles [`Role::GateExps`], [`Role::UpExps`],
    /// [`Role::DownExps`]).
    Stacked {
        /// Gate projections.
        gate: &'a Tensor,
        /// Up projections.
        up: &'a Tensor,
        /// Down projections.
        down: &'a Tensor,
    },
    /// Single experts by index (None: not held here), e.g. a cache holding copies of the hot
    /// experts of a layer.
    PerExpert(&'a [Option<ExpertWeights>]),
}

/// One expert's weights, borrowed or as views made for the call.
// One lives on the stack per expert for the length of a call; boxing the views would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
enum Mats<'a> {
    Owned(ExpertWeights),
    Borrowed(&'a ExpertWeights),
}

impl Mats<'_> {
    fn get(&self) -> &ExpertWeights {
        match self {
            Mats::Owned(w) => w,
            Mats::Borrowed(w) => w,
        }
    }
}

impl<'a> ExpertRef<'a> {
    /// The stacked expert tensors of a layer.
    ///
    /// # Errors
    /// If the layer lacks them.
    pub fn from_layer(w: LayerRef<'a>) -> Result<ExpertRef<'a>> {
        Ok(ExpertRef::Stacked { gate: w.req(Role::GateExps)?, up: w.req(Role::UpExps)?, down: w.req(Role::DownExps)? })
    }

    fn expert(&self, e: usize) -> Result<Mats<'a>> {
        match *self {
            ExpertRef::Stacked { gate, up, down } => Ok(Mats::Owned(ExpertWeights::from_stacked(gate, up, down, e)?)),
            ExpertRef::PerExpert(list) => match list.get(e) {
                Some(Some(w)) => Ok(Mats::Borrowed(w)),
                _ => Err(Error::invalid(format!("expert {e} is not among the experts given"))),
            },
        }
    }
}

/// y = x Wᵀ: matvec for one row, matmul otherwise.
fn project(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    if x.shape()[0] == 1 {
        ops::matvec(w, x, y, s)?
    } else {
        ops::matmul(w, x, y, s)?
    }
    Ok(())
}

/// The device temporaries of one [`moe_experts`] call on a GPU: every expert's rows and weights
/// (concatenated in expert order) and buffers for the most rows one expert takes.
struct GpuTemps {
    rows: Tensor,
    weights: Tensor,
    input: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    output: Tensor,
}

impl GpuTemps {
    fn new(chosen: &[(usize, Vec<i32>, Vec<f32>)], e_dim: usize, ff: usize, s: &Stream) -> Result<GpuTemps> {
        let total: usize = chosen.iter().map(|(_, r, _)| r.len()).sum();
        let most = chosen.iter().map(|(_, r, _)| r.len()).max().unwrap_or(0);
        let rows: Vec<i32> = chosen.iter().flat_map(|(_, r, _)| r.iter().copied()).collect();
        let weights: Vec<f32> = chosen.iter().flat_map(|(_, _, w)| w.iter().copied()).collect();
        let z = |cols: usize, what: &str| Tensor::zeros(DType::F32, &[most, cols], s, what);
        Ok(GpuTemps {
            rows: Tensor::from_i32(&[total], rows)?.to_device(s, "expert rows")?,
            weights: Tensor::from_f32(&[total], weights)?.to_device(s, "expert weights")?,
            input: z(e_dim, "expert input rows")?,
            gate: z(ff, "expert gate")?,
            up: z(ff, "expert up")?,
            act: z(ff, "expert act")?,
            output: z(e_dim, "expert output")?,
        })
    }
}

/// out = Σ over the routed (token, expert) pairs whose expert passes `which`: weight ·
/// down(act(gate·h) ⊙ up·h), for h and out [T, n_embd] f32 and the experts' weights, all on
/// the stream's device. Experts run in ascending order, each on all its tokens at once.
///
/// # Errors
/// Shapes that disagree with `cfg` or the routing, an expert passing `which` that `experts`
/// lacks, or an op's error.
pub fn moe_experts(
    cfg: &ModelConfig,
    experts: ExpertRef<'_>,
    h: &Tensor,
    routing: &Routing,
    which: &dyn Fn(usize) -> bool,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    let t = routing.n_tokens();
    let (e_dim, ff) = (cfg.n_embd, cfg.n_ff_exp);
    if h.shape() != [t, e_dim] || out.shape() != [t, e_dim] {
        return Err(Error::invalid(format!(
            "expert FFN of {t} routed tokens: h {:?} and out {:?} must be [{t}, {e_dim}]",
            h.shape(),
            out.shape()
        )));
    }
    if routing.n_expert != cfg.n_expert {
        return Err(Error::invalid(format!(
            "routing over {} experts, the model has {}",
            routing.n_expert, cfg.n_expert
        )));
    }
    out.fill_zero(s)?;
    let chosen: Vec<(usize, Vec<i32>, Vec<f32>)> = (0..cfg.n_expert)
        .filter(|&e| which(e))
        .map(|e| {
            let (rows, weights) = routing.tokens_of(e);
            (e, rows, weights)
        })
        .filter(|(_, rows, _)| !rows.is_empty())
        .collect();
    // On a GPU: the row lists and weights of every expert in one upload each, and one set of
    // temporaries for the most rows an expert takes, which each expert uses a view of (the
    // same stream orders the experts). On the host each expert allocates its own, as before.
    let gpu = match s {
        Stream::Gpu(_) if !chosen.is_empty() => Some(GpuTemps::new(&chosen, e_dim, ff, s)?),
        _ => None,
    };
    let mut offset = 0;
    for (e, rows, weights) in chosen {
        let n = rows.len();
        let mats = experts.expert(e)?;
        let m = mats.get();
        let (rows_t, weights_t) = match &gpu {
            Some(g) => (g.rows.narrow(offset..offset + n)?, g.weights.narrow(offset..offset + n)?),
            None => (Tensor::from_i32(&[n], rows)?, Tensor::from_f32(&[n], weights)?),
        };
        offset += n;
        // The first n rows of a GPU buffer, or a new host tensor.
        let temp = |buf: Option<&Tensor>, what: &str, cols: usize| -> Result<Tensor> {
            match buf {
                Some(b) => Ok(b.narrow(0..n)?),
                None => Ok(Tensor::zeros(DType::F32, &[n, cols], s, what)?),
            }
        };
        let g = gpu.as_ref();
        let gathered;
        let x = if n == t && t == 1 {
            h
        } else {
            let mut rows_in = temp(g.map(|g| &g.input), "expert input rows", e_dim)?;
            ops::embedding_gather(h, &rows_t, &mut rows_in, s)?;
            gathered = rows_in;
            &gathered
        };
        let mut gate = temp(g.map(|g| &g.gate), "expert gate", ff)?;
        let mut up = temp(g.map(|g| &g.up), "expert up", ff)?;
        let mut act = temp(g.map(|g| &g.act), "expert act", ff)?;
        project(&m.gate, x, &mut gate, s)?;
        project(&m.up, x, &mut up, s)?;
        match cfg.activation {
            Activation::Silu => ops::silu_mul(&gate, &up, &mut act, s)?,
            Activation::GeluTanh => ops::gelu_mul(&gate, &up, &mut act, s)?,
        }
        let mut y = temp(g.map(|g| &g.output), "expert output", e_dim)?;
        project(&m.down, &act, &mut y, s)?;
        ops::scatter_add_scaled(&y, &rows_t, &weights_t, out, s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, k: usize, gating: MoeGating) -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, "hidden_size": 8,
            "intermediate_size": 16, "num_attention_heads": 2, "vocab_size": 32,
        });
        let mut c = ModelConfig::from_hf_config(&json).expect("config");
        c.n_expert = n;
        c.n_expert_used = k;
        c.moe_gating = gating;
        c
    }

    #[test]
    fn route_picks_the_top_k_and_renormalises() {
        let c = cfg(4, 2, MoeGating::SoftmaxTopKRenorm);
        let logits = [0.0, 2.0, 1.0, -1.0, /* tie: lower index first */ 3.0, 0.5, 3.0, 0.5];
        let r = moe_route(&c, &logits).expect("route");
        assert_eq!(r.experts, vec![1, 2, 0, 2]);
        // Renormalised weights are the softmax over the two chosen logits.
        let want = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((r.weights[0] - want).abs() < 1e-6, "{:?}", r.weights);
        assert!((r.weights[0] + r.weights[1] - 1.0).abs() < 1e-6);
        assert!((r.weights[2] - 0.5).abs() < 1e-6 && (r.weights[3] - 0.5).abs() < 1e-6);
        assert_eq!(r.expert_counts(), vec![1, 1, 2, 0]);
        assert_eq!(r.tokens_of(2), (vec![0, 1], vec![r.weights[1], r.weights[3]]));
        assert_eq!(r.token(1).collect::<Vec<_>>(), vec![(0, r.weights[2]), (2, r.weights[3])]);
    }

    #[test]
    fn route_without_renormalisation_keeps_the_softmax_probabilities() {
        let c = cfg(3, 1, MoeGating::SoftmaxTopK);
        let r = moe_route(&c, &[0.0, 0.0, 0.0]).expect("route");
        assert_eq!(r.experts, vec![0]);
        assert!((r.weights[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn a_nan_or_infinite_logit_is_an_error_not_an_index() {
        let c = cfg(4, 2, MoeGating::SoftmaxTopKRenorm);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = moe_route(&c, &[0.0, 1.0, 2.0, 3.0, 0.0, bad, 1.0, 1.0]).expect_err("non-finite logit");
            assert!(err.to_string().contains("token 1") && err.to_string().contains("expert 1"), "{err}");
        }
        assert!(moe_route(&c, &[0.0; 7]).is_err(), "a partial row");
    }
}
