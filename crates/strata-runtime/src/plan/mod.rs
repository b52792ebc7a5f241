//! The placement planner: for every transformer layer, whether its weights stay **resident** on
//! the GPU, are **streamed** into one of K GPU slots just before use, or the layer is computed on
//! the **cpu**; where each layer's KV cache lives; how many slots and how deep the prefetch.
//!
//! [`plan`] is a pure function of sizes, budgets and speeds (DESIGN.md, decision 5): no I/O, no
//! clock, no GPU. The caller measures the machine, builds a [`PlanRequest`], prints the [`Plan`]
//! ([`Plan::render_table`], [`Plan::summary_line`], or JSON through serde) and hands it to the
//! executor.
//!
//! # Layout
//! Layers are placed in three contiguous bands: resident `0..r`, cpu `r..r+q`, streamed
//! `r+q..n`. Resident layers come first so that `--gpu-layers N` means the first N, as in
//! llama.cpp. Streamed layers come last because every token starts with empty slots: the copy
//! stream fills them while the resident and cpu layers compute, which hides the first copies.
//! A **hybrid** layout (both cpu and streamed layers) may instead spread the streamed layers
//! evenly among the cpu layers after the resident band, each streamed layer first or last in
//! its stretch of cpu layers: the executor issues copies before every cpu layer as far as free
//! slots allow, so the copies of the next streamed layers run while the CPU computes and the two
//! bandwidths add up, where in band order the copies beyond the first K wait for the cpu band to
//! end. The search tries all three orders and keeps the fastest (bands win ties).
//!
//! # Memory
//! - GPU: context overhead + scratch + output head + Σ resident (weights + KV) + Σ KV of the
//!   streamed layers kept on the GPU + slots × slot size ≤ `gpu_budget`. A resident layer keeps
//!   its KV cache on the GPU; a streamed layer does when the budget allows (in layer order), or
//!   else on the host; a cpu layer always on the host. Slots = prefetch depth + 1 (one being
//!   computed, `d` being filled), each as large as the largest streamed layer.
//! - Pinned host memory: the streamed layers' weights, packed, when they fit the pinned budget;
//!   otherwise a ring of `d + 1` slots through which pageable weights are staged (slower).
//! - Host memory: pinned + cpu layers' weights + staged (pageable) weights + host KV + the head
//!   and scratch when no GPU is used + the embedding table unless the weights are memory-mapped
//!   (then only the rows a prompt touches are paged in) ≤ `host_available - host_margin`. Weights
//!   the CPU reads every token are counted even when mapped: a page the OS drops would be
//!   re-read from disk on every token.
//!
//! # Time model (per token, in seconds)
//! - Decode: resident or streamed layer on the GPU `w / gpu_bytes_per_s + layer_overhead_s`
//!   (+ `kv / h2d` when its KV cache is on the host: attention reads it over PCIe); cpu layer
//!   `w / cpu_bytes_per_s + cpu_handoff_s` (no handoff when no GPU is used); each streamed
//!   layer's copy takes `w / h2d` (staged: `w / h2d + w / cpu_bytes_per_s`, the memcpy into the
//!   ring and the DMA in series).
//! - The copy stream and the compute run in parallel: copy j starts when copy j-1 is done and its
//!   slot has been released by streamed layer j-K; layer j starts when both the previous layer and
//!   its copy are done. The copies of a token's first streamed layers start when the previous
//!   token's cpu layers after its last streamed layer start (the executor issues them there), or
//!   else when the token starts (the previous head, sampling and logits download are not counted
//!   as overlap, which is conservative); they overlap the resident and cpu layers. In steady
//!   state the streamed band costs max(Σ copy, Σ compute) plus the first copy not hidden behind
//!   the resident and cpu layers.
//!   Weight copies and host-KV reads share the bus, so a pass never ends before the bus has moved
//!   all of them. Not modelled: DMA and CPU layers competing for host memory bandwidth.
//! - Prefill of a batch of T tokens uses the same pipeline with compute `max(flops·T / flops_rate,
//!   w / bytes_rate)` per layer (weights are read once per batch, which is where streaming pays),
//!   divided by T. The head is one matvec per batch (only the last position needs logits).
//! - The bound is the largest of the GPU, PCIe and CPU busy times.
//!
//! # Hybrid efficiency
//! When a GPU is used and some layers are not resident, the CPU's memory bus and the copy engine
//! can move the non-resident weights at the same time. The fastest decode that allows, for the
//! plan's resident layers, is `1 / (B / (cpu_bytes_per_s + h2d_bytes_per_s) + R + H)`: `B` the
//! bytes one token moves for the non-resident layers (a streamed layer's copy, a cpu layer's
//! weights), `R` the resident layers' compute and `H` the head's. The split that reaches it has
//! `B_cpu / cpu_bytes_per_s = B_streamed / h2d_bytes_per_s`. **Hybrid efficiency** = decode tok/s
//! ÷ that rate ([`Predicted::hybrid_efficiency`]; `--stats` divides the measured rate by the same
//! bound). It says how well the two bandwidths overlap; it can be below 1 because of hand-offs,
//! a split the GPU budget does not allow (streamed layers keep their KV cache and slots on the
//! GPU), or copies not hidden; and above 1 when copies also hide behind resident layers, which
//! the bound does not count on.
//!
//! # Experts
//! A mixture-of-experts layer ([`LayerSpec::experts`]) is placed in two parts: its *attention
//! part* (norms, Q/K/V/O, router: `weight_bytes - experts.bytes`) follows the layer's placement
//! above, and its experts either follow it too (resident with a resident layer, copied with a
//! streamed one: *streamed experts*) or stay in host memory and are computed on the CPU while the
//! attention part runs on the GPU (`--cpu-moe`, `--n-cpu-moe N`), optionally with a GPU cache of
//! the `k` hottest experts of the layer (`--expert-cache SIZE`, shared evenly by those layers), or
//! a resident layer keeps only its attention part and *streams its experts*: they are copied
//! through the streamer's slots each pass like a streamed layer's weights (slots are then sized
//! for the larger of the streamed layers and these expert groups). A cpu layer computes
//! everything on the CPU.
//! - Bytes a pass reads: a dense layer all its weights; a MoE layer its attention part and the
//!   experts routed to: `n_used × bytes_per_expert` for one token, `E(T) × bytes_per_expert` for
//!   a batch of T, where `E(T) = n × (1 - (1 - n_used/n)^T)` is the expected number of distinct
//!   experts T tokens touch under uniform routing (512 tokens × 8 of 128: all 128).
//! - Experts on the CPU, per token: the attention part on the GPU (`attention / gpu_bytes_per_s +
//!   layer_overhead_s`), then, side by side, the cached share `h` of the routed experts on the
//!   GPU (`h × active / gpu_bytes_per_s`) and the rest on the CPU (`(1 - h) × active /
//!   cpu_bytes_per_s + cpu_handoff_s`): the layer takes the attention part plus the larger of
//!   the two. `active = n_used × bytes_per_expert`; the predicted hit rate `h = k / n` assumes
//!   uniform routing (real routers favour some experts, so the measured rate is usually higher;
//!   `--stats` shows it). Prefill uses the same split with the roofline of the phase.
//! - Streamed experts of a resident layer: the copy of all its expert bytes enters the copy/compute
//!   pipeline like a streamed layer's (`experts.bytes / h2d_bytes_per_s`, or staged), then the
//!   layer computes as if resident (attention part and the routed experts). Decode copies every
//!   expert for the `n_used` it runs, so this pays where the alternatives are worse: prefill, a
//!   slow CPU, or a budget that holds the attention parts and expert-sized slots but not
//!   whole-layer slots.
//! - Memory: the GPU holds the attention part (or a slot for it when streamed) and the cache;
//!   host memory holds the experts (counted under `cpu_experts`; streamed experts are pinned).
//! - Choice: with no expert flag and a GPU, `auto` tries experts with their layers, the experts of
//!   every resident layer streamed, experts of every layer on the CPU, and that with caches of 1,
//!   2, 4, ... experts per layer, and mixed modes: the experts of the first k layers on the CPU
//!   (what `--n-cpu-moe k` asks) or streamed, the others with their layers, for k in eighths of
//!   the model. Each mode is searched as above and the fastest decode wins; a mixed choice is
//!   named in the plan's experts line (`auto (as --n-cpu-moe 12)`).
//!   The flags fix the mode. A dense model, or no GPU, has one mode and plans exactly as without
//!   experts (the flags add a note).
//!
//! # Prefill placement
//! Decode reads every weight once per token, so the planner may compute some non-resident layers
//! on the CPU (the hybrid split above). A prompt pass of T tokens reads each weight once for T
//! tokens: a streamed layer costs one copy `w / h2d` however large T is, while a cpu layer's
//! compute grows as `flops·T / cpu_flops`. So a plan with cpu layers gets a second placement,
//! [`PrefillPlacement`]: the same resident layers, and every other layer streamed through the
//! same slots (`d + 1` slots of the largest layer, depth at least 1). A pass of at least
//! `min_tokens` tokens uses it; decode and shorter passes keep the decode split.
//! - Threshold (`--prefill-stream-min auto`, the default): the smallest batch T ≥ 2 at which the
//!   time model above predicts the streamed pass faster than the decode split's pass at the same
//!   T (both simulated; found by halving, up to 65536 tokens; none: no prefill placement). With
//!   the measured speeds of a PCIe 4.0 desktop (25 GB/s, a CPU at 20 GB/s and 300 GFLOP/s) a
//!   70B Q4_0 layer (~0.5 GB, ~1.7 GFLOP a token) costs 20 ms to copy and max(24 ms, 5.7 ms·T)
//!   on the CPU, so a batch of a few tokens already pays (8 for the hybrid plan of such a model
//!   on a 24 GiB card, `tests/plan_prefill.rs`, where the whole pass is simulated); llama.cpp's
//!   op offload uses a fixed 32. `--prefill-stream-min N` sets it, `off` (or 0) disables it.
//! - Memory over the decode plan: GPU: larger or new slots (cpu layers may be the largest) and
//!   one layer's KV cache, in which a cpu layer's attention runs during such a pass (its cache
//!   stays in host memory for decode: the executor copies the earlier positions in and the new
//!   ones back) — [`GpuBytes::prefill_extra`]; host: a packed copy of the cpu layers' weights
//!   for the copy engine ([`HostBytes::prefill_weights`]), pinned when the pinned budget holds it
//!   beside the streamed layers, else pageable (the driver stages it; the copies are timed as
//!   staged). If either does not fit, the plan has no prefill placement and says why.
//! - Time: the pipeline above with the prefill placement at the request's batch; the KV copies
//!   of the cpu layers (none for a prompt's first pass) are not modelled.
//!   [`Predicted::prefill_tokens_per_second`] is the rate of a prompt pass at the plan's batch,
//!   with the placement that pass uses. Mixture-of-experts models have no prefill placement yet.
//!
//! # Choice
//! Every layout `(r, q, streamed, d)` the policy allows is checked against the budgets and
//! simulated; the one with the fastest predicted decode wins (prefill breaks ties). Because the
//! candidates do not depend on the GPU budget and a larger budget only makes more of them fit (and
//! keeps more KV on the GPU), more GPU memory never predicts a slower decode. Placements are
//! chosen for decode; when prefill would prefer another split the plan says so in a warning.
//! Cost: O(n³·d) simple steps (milliseconds for 128 layers); above 256 layers the resident and
//! streamed counts are tried in steps.

mod advice;
mod experts;
mod predict;
mod prefill;
mod render;
mod search;

use serde::{Deserialize, Serialize};

use crate::units::fmt_size;

/// Where a layer's weights live and where it is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Weights stay in GPU memory for the whole run.
    Resident,
    /// Weights sit in (pinned) host memory and are copied into a GPU slot before each use.
    Streamed,
    /// The layer is computed on the CPU from host memory.
    Cpu,
}

/// Where a layer's KV cache lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPlacement {
    /// In GPU memory.
    Gpu,
    /// In host memory.
    Host,
}

/// Where the speeds came from; the plan shows it so the user knows how far to trust it.
/// Ordered from least to most trustworthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeedSource {
    /// Guessed ([`assumed_speeds`]).
    #[default]
    Assumed,
    /// Measured on this machine earlier and read from a cache.
    Cached,
    /// Measured on this machine just now.
    Measured,
}

impl SpeedSource {
    /// How the plan prints it: "measured here", "cached from this machine", "assumed".
    pub fn describe(self) -> &'static str {
        match self {
            SpeedSource::Measured => "measured here",
            SpeedSource::Cached => "cached from this machine",
            SpeedSource::Assumed => "assumed",
        }
    }
}

/// One transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Exact, from the model file: every tensor of the layer, its experts included.
    pub weight_bytes: u64,
    /// This layer's K and V cache at the chosen context length.
    pub kv_bytes: u64,
    /// About 2 × weight elements: the compute of one token through this layer. For a
    /// mixture-of-experts layer, without the experts (their part is in [`ExpertSpec`]).
    pub flops_per_token: u64,
    /// The experts of a mixture-of-experts layer; `None` for a dense layer.
    #[serde(default)]
    pub experts: Option<ExpertSpec>,
}

/// The experts of a mixture-of-experts layer (GGUF `ffn_{gate,up,down}_exps`). The rest of
/// [`LayerSpec::weight_bytes`] is the layer's *attention part* (norms, Q/K/V/O, the router),
/// which is placed like a dense layer; the experts may stay with it or be placed apart
/// (see the module docs, "Experts").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertSpec {
    /// Bytes of all the layer's experts (at most [`LayerSpec::weight_bytes`]).
    pub bytes: u64,
    /// Experts in the layer.
    pub n_expert: usize,
    /// Experts each token is routed to.
    pub n_expert_used: usize,
    /// Bytes of one expert (its gate, up and down slices).
    pub bytes_per_expert: u64,
    /// Compute of one routed expert for one token (about 2 × its weight elements).
    pub flops_per_token: u64,
}

impl ExpertSpec {
    /// Bytes the routed experts of one token read: `n_expert_used × bytes_per_expert`.
    pub fn active_bytes(&self) -> u64 {
        (self.n_expert_used as u64).saturating_mul(self.bytes_per_expert)
    }
}

/// Where the experts of mixture-of-experts layers go, as the user asked (`--cpu-moe`,
/// `--n-cpu-moe N`, `--expert-cache SIZE`). Dense models ignore it (the plan says so).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertPolicy {
    /// Which layers' experts are computed on the CPU.
    pub cpu: CpuExperts,
    /// GPU memory for a cache of the hottest CPU-computed experts, shared evenly by the layers
    /// whose experts are on the CPU. `None`: no cache with `--cpu-moe`/`--n-cpu-moe`, chosen by
    /// predicted speed in `auto`.
    pub cache_bytes: Option<u64>,
}

/// Which layers' experts are computed on the CPU while the layer's attention part runs on the
/// GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuExperts {
    /// Chosen by predicted speed: with their layer, or on the CPU with or without a cache.
    #[default]
    Auto,
    /// `--cpu-moe`: the experts of every layer.
    All,
    /// `--n-cpu-moe N`: the experts of the first N layers (llama.cpp's meaning); the other
    /// layers' experts stay with their layer.
    First(usize),
}

/// Where a layer's experts live and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertPlacement {
    /// With a resident layer, in GPU memory.
    Resident,
    /// With a streamed layer: copied to the GPU with the layer's other tensors before use.
    Streamed,
    /// In host memory, computed on the CPU (the layer's own placement may be on the GPU).
    Cpu,
    /// In host memory and computed on the CPU, except the hottest experts, which a GPU cache
    /// holds and the GPU computes.
    Cached,
}

/// The experts of one mixture-of-experts layer in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertPlan {
    /// Where the experts live and run.
    pub placement: ExpertPlacement,
    /// Bytes of all the layer's experts.
    pub bytes: u64,
    /// Experts held in the GPU cache ([`ExpertPlacement::Cached`]; 0 otherwise).
    pub cached: usize,
    /// Experts in the layer.
    pub n_expert: usize,
    /// Bytes of the GPU cache of this layer.
    pub cached_bytes: u64,
}

/// The plan's experts at a glance (`None` in a plan of a dense model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertSummary {
    /// Expert bytes resident on the GPU with their layer.
    pub resident_bytes: u64,
    /// Expert bytes streamed with their layer.
    pub streamed_bytes: u64,
    /// Bytes of the GPU expert caches.
    pub cached_bytes: u64,
    /// Expert bytes computed on the CPU (in host memory; the cached ones included).
    pub cpu_bytes: u64,
    /// Bytes the routed experts of one token read, over all layers.
    pub active_bytes_per_token: u64,
    /// Predicted share of routed experts found in the GPU caches, over the cached layers
    /// (uniform routing: cached / experts; real routing is skewed, so usually more). 0 without
    /// a cache.
    pub predicted_hit_rate: f64,
    /// What was asked: "auto", "--cpu-moe", "--n-cpu-moe 4 --expert-cache 2.0 GiB", ...
    pub policy: String,
}

/// How fast this machine moves and computes. Rates must be finite and at least 1 per second,
/// costs between 0 and 60 seconds; the GPU numbers are only checked when there is a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speeds {
    /// Pinned host → device copy rate.
    pub h2d_bytes_per_s: f64,
    /// Effective weight read rate of a GPU matvec (decode is memory bound).
    pub gpu_bytes_per_s: f64,
    /// GPU matmul rate (prefill).
    pub gpu_flops: f64,
    /// Effective CPU weight read rate of a matvec (decode).
    pub cpu_bytes_per_s: f64,
    /// CPU matmul rate (prefill).
    pub cpu_flops: f64,
    /// Fixed cost of a layer on the GPU (kernel launches), e.g. 30 µs.
    pub layer_overhead_s: f64,
    /// Moving the activations GPU → host → GPU around one cpu layer.
    pub cpu_handoff_s: f64,
    /// Where the CPU speeds (`cpu_bytes_per_s`, `cpu_flops`) came from.
    pub source: SpeedSource,
    /// Where the GPU and PCIe speeds (every other field) came from: a measurement on a machine
    /// without a GPU measures only the CPU, and its GPU speeds stay assumed. Cache files written
    /// before this field existed read as assumed.
    #[serde(default)]
    pub gpu_source: SpeedSource,
}

impl Speeds {
    /// The source that matters for a plan: the CPU's alone without a GPU, else the less
    /// trustworthy of the two.
    pub fn source_for(&self, gpu: bool) -> SpeedSource {
        if gpu { self.source.min(self.gpu_source) } else { self.source }
    }
}

/// Documented guesses for a machine that has not been measured: a PCIe 4.0 x16 desktop with a
/// dual-channel DDR5 CPU, and GPU rates calibrated from what strata's own kernels reached on
/// the one GPU they have run on (an H200, `docs/gpu-results.md`, 2026-11-27 pass 2): they are
/// bound by launch overhead and by our kernels, not by the card's data sheet. The plan says
/// the speeds are assumed and how to measure them.
pub fn assumed_speeds() -> Speeds {
    Speeds {
        // PCIe 4.0 x16 is 32 GB/s on paper; pinned copies reach about 25 (the H200's PCIe 5.0
        // reached 55 GB/s in docs/gpu-results.md).
        h2d_bytes_per_s: 25e9,
        // A 7B Q4_0 layer decodes at 466 GB/s on the H200 (one layer at T=1), the rate its
        // all-resident 101 tok/s and 93.7 tok/s at 4 GiB were predicted from.
        gpu_bytes_per_s: 466e9,
        // Prefill of the 7B model ran at ~1490 tok/s at a batch of 512 = 13 GFLOP/token × 1490
        // ≈ 19 TFLOP/s, the 20-22 TFLOP/s of the f32 FMA matmul tiles (no tensor cores yet).
        gpu_flops: 20e12,
        // Dual-channel DDR5 is ~80 GB/s on paper; a quantized matvec on all cores reads ~20.
        cpu_bytes_per_s: 20e9,
        // 8 cores × 2 FMA units × 8 f32 lanes × 2 flops × ~4 GHz ≈ 1 TFLOPS peak; ~30% with dequant.
        cpu_flops: 300e9,
        // The default model (30 layers of 2.3 MiB) decoded at 295 tok/s all resident on the
        // H200 = 3.4 ms per token: ~110 µs per layer, nearly all of it launches (~30 per layer
        // at 3.3 µs each), and its 8-token prompt at 2542 tok/s is the same 3.1 ms pass.
        layer_overhead_s: 100e-6,
        // Two small copies and a synchronize each way.
        cpu_handoff_s: 50e-6,
        source: SpeedSource::Assumed,
        gpu_source: SpeedSource::Assumed,
    }
}

/// When a prompt pass streams every non-resident layer, the cpu layers of the decode plan
/// included (`--prefill-stream-min`; see the module docs, "Prefill placement").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefillStream {
    /// From the batch at which the time model predicts streaming faster than the decode split.
    #[default]
    Auto,
    /// From this many tokens a pass (`--prefill-stream-min N`; 0 is read as 1).
    MinTokens(usize),
    /// Never: prompt passes use the decode placement (`--prefill-stream-min off`).
    Off,
}

impl std::str::FromStr for PrefillStream {
    type Err = String;

    /// `auto`, `off` (or `0`), or a token count.
    fn from_str(s: &str) -> Result<PrefillStream, String> {
        match s.trim() {
            "auto" => Ok(PrefillStream::Auto),
            "off" | "0" => Ok(PrefillStream::Off),
            t => match t.parse::<usize>() {
                Ok(n) => Ok(PrefillStream::MinTokens(n)),
                Err(_) => Err(format!(
                    "`{s}` is not a token count: give a number of prompt tokens (e.g. 32), `auto` or `off`"
                )),
            },
        }
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Resident layers and the streamed/cpu split are chosen by predicted speed.
    #[default]
    Auto,
    /// `--gpu-layers N`, like llama.cpp's `-ngl`: exactly the first N layers resident (more than
    /// the model has means all); the others as [`PlanRequest::rest`] says.
    GpuLayers(usize),
    /// `--stream`: every non-resident layer streamed; the resident set is chosen by the budget.
    AllStreamed,
    /// `--cpu-layers`: every non-resident layer on the CPU; the resident set is chosen by the budget.
    AllCpu,
}

/// How the layers after `--gpu-layers N` run. Only read with [`Policy::GpuLayers`], because the
/// other policies say it themselves (so `--gpu-layers 20 --stream` is `GpuLayers(20)` +
/// `Rest::Streamed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rest {
    /// Streamed or cpu, whichever is predicted faster.
    #[default]
    Auto,
    /// Streamed to the GPU.
    Streamed,
    /// Computed on the CPU.
    Cpu,
}

/// Everything the planner needs. [`Default`] is an empty model, no GPU and assumed speeds, so
/// callers (and tests) write `PlanRequest { layers, gpu_budget: Some(..), ..Default::default() }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Sizes and cost of every layer, in model order.
    pub layers: Vec<LayerSpec>,
    /// Output head and final norm: on the GPU whenever the GPU is used (it is counted first).
    pub head_bytes: u64,
    /// Token embedding table: stays in host memory, rows are gathered on the host.
    pub embedding_bytes: u64,
    /// Activations.
    pub scratch_bytes: u64,
    /// CUDA context and other memory the driver takes, reserved off the top.
    pub context_overhead_bytes: u64,
    /// GPU memory strata may use; `None` when there is no GPU (everything on the CPU, not an error).
    pub gpu_budget: Option<u64>,
    /// Host memory available now (`MemAvailable`).
    pub host_available: u64,
    /// Host memory to leave free, so that nothing swaps.
    pub host_margin: u64,
    /// The most host memory strata may pin.
    pub pinned_budget: u64,
    /// The weights are memory-mapped from the model file.
    pub weights_mapped: bool,
    /// Measured or assumed speeds of the CPU, GPU and bus.
    pub speeds: Speeds,
    /// What the user asked for (`auto`, `--gpu-layers N`, `--stream`, ...).
    pub policy: Policy,
    /// How the layers after `--gpu-layers N` run (ignored by the other policies).
    pub rest: Rest,
    /// Prompt batch size of the prefill prediction (e.g. 512); 0 is read as 1.
    pub prefill_tokens: usize,
    /// Deepest prefetch to consider (e.g. 2); read as 1 ..= 8.
    pub max_prefetch_depth: usize,
    /// The context length the `kv_bytes` are for (0 = not given): with it, a plan whose KV
    /// cache pushes layers off the GPU says which `--context` would keep them.
    #[serde(default)]
    pub context: usize,
    /// Where the experts of mixture-of-experts layers go (ignored for dense models).
    #[serde(default)]
    pub experts: ExpertPolicy,
    /// When a prompt pass streams the cpu layers too (`--prefill-stream-min`).
    #[serde(default)]
    pub prefill_stream: PrefillStream,
}

impl Default for PlanRequest {
    fn default() -> Self {
        PlanRequest {
            layers: Vec::new(),
            head_bytes: 0,
            embedding_bytes: 0,
            scratch_bytes: 0,
            context_overhead_bytes: 0,
            gpu_budget: None,
            host_available: 0,
            host_margin: 0,
            pinned_budget: 0,
            weights_mapped: true,
            speeds: assumed_speeds(),
            policy: Policy::Auto,
            rest: Rest::Auto,
            prefill_tokens: 512,
            max_prefetch_depth: 2,
            context: 0,
            experts: ExpertPolicy::default(),
            prefill_stream: PrefillStream::Auto,
        }
    }
}

/// One layer of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// Index of the layer in the model (0-based).
    pub index: usize,
    /// Where the layer's weights live and where it is computed.
    pub placement: Placement,
    /// Bytes of the layer's weights.
    pub weight_bytes: u64,
    /// This layer's KV cache, wherever `kv_placement` puts it.
    pub kv_bytes: u64,
    /// Where the layer's KV cache lives.
    pub kv_placement: KvPlacement,
    /// The experts of a mixture-of-experts layer; `None` for a dense layer.
    #[serde(default)]
    pub experts: Option<ExpertPlan>,
}

/// Predicted speed of the plan (see the module docs for the model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// Generated tokens per second.
    pub decode_tokens_per_second: f64,
    /// Prompt tokens per second at the plan's prefill batch size, with the placement a pass of
    /// that size uses (the [`PrefillPlacement`] when there is one and the batch reaches it).
    pub prefill_tokens_per_second: f64,
    /// Seconds per generated token (the inverse of `decode_tokens_per_second`).
    pub decode_seconds_per_token: f64,
    /// Seconds per prompt token (the inverse of `prefill_tokens_per_second`).
    pub prefill_seconds_per_token: f64,
    /// What limits decode: "gpu memory bandwidth", "PCIe transfer" or "CPU".
    pub bound: String,
    /// The decode rate the bandwidths allow for this plan's resident set (see the module docs,
    /// "Hybrid"): 1 / (non-resident bytes / (CPU B/s + H2D B/s) + resident compute + head).
    /// `None` when every layer is resident or the GPU is unused.
    #[serde(default)]
    pub hybrid_bound_tokens_per_second: Option<f64>,
    /// Hybrid efficiency: `decode_tokens_per_second / hybrid_bound_tokens_per_second` (1.0 means
    /// the CPU and the copy engine never wait for each other). `None` with the bound.
    #[serde(default)]
    pub hybrid_efficiency: Option<f64>,
}

impl Predicted {
    /// Hybrid efficiency of a measured decode rate against this plan's bound (`None` when the
    /// plan has no bound or the rate is not a positive number).
    pub fn measured_hybrid_efficiency(&self, decode_tokens_per_second: f64) -> Option<f64> {
        let bound = self.hybrid_bound_tokens_per_second?;
        (decode_tokens_per_second.is_finite() && decode_tokens_per_second > 0.0 && bound > 0.0)
            .then(|| decode_tokens_per_second / bound)
    }
}

/// What the planned GPU memory is made of; `total()` is [`Plan::gpu_bytes_planned`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuBytes {
    /// CUDA context and other driver memory.
    pub context_overhead: u64,
    /// Activations.
    pub scratch: u64,
    /// Output head and final norm.
    pub head: u64,
    /// Weights of the resident layers.
    pub resident_weights: u64,
    /// KV cache of resident layers and of the streamed layers that keep it on the GPU.
    pub kv: u64,
    /// slots × slot_bytes.
    pub slots: u64,
    /// GPU caches of hot experts.
    #[serde(default)]
    pub expert_cache: u64,
    /// What the prefill placement adds: larger or new slots and one layer's KV cache.
    #[serde(default)]
    pub prefill_extra: u64,
}

/// What the planned host memory is made of; `total()` is [`Plan::host_bytes_planned`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBytes {
    /// Packed streamed weights, or the staging ring.
    pub pinned: u64,
    /// Pageable streamed weights staged through the ring every token (0 unless staging).
    pub staged_weights: u64,
    /// Weights of the layers computed on the CPU.
    pub cpu_weights: u64,
    /// KV cache kept in host memory.
    pub kv: u64,
    /// The output head and scratch when no GPU is used.
    pub head_and_scratch: u64,
    /// The embedding table when the weights are not memory-mapped.
    pub embedding: u64,
    /// Experts computed on the CPU for layers whose attention part runs on the GPU.
    #[serde(default)]
    pub cpu_experts: u64,
    /// The packed copy of the cpu layers' weights that the prefill placement streams.
    #[serde(default)]
    pub prefill_weights: u64,
}

impl GpuBytes {
    /// The sum of the parts (saturating).
    pub fn total(&self) -> u64 {
        [
            self.context_overhead,
            self.scratch,
            self.head,
            self.resident_weights,
            self.kv,
            self.slots,
            self.expert_cache,
            self.prefill_extra,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

impl HostBytes {
    /// The sum of the parts (saturating).
    pub fn total(&self) -> u64 {
        [
            self.pinned,
            self.staged_weights,
            self.cpu_weights,
            self.kv,
            self.head_and_scratch,
            self.embedding,
            self.cpu_experts,
            self.prefill_weights,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// Where a prompt pass of at least `min_tokens` tokens runs each layer (see the module docs,
/// "Prefill placement"): the decode plan's resident layers, and every other layer streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillPlacement {
    /// Passes of at least this many tokens use this placement; shorter ones (decode) the
    /// plan's `layers`.
    pub min_tokens: usize,
    /// Where `min_tokens` came from: "auto" (the time model) or "--prefill-stream-min".
    pub threshold_from: String,
    /// Where each layer runs in such a pass, by layer.
    pub placements: Vec<Placement>,
    /// Layers streamed in such a pass that decode computes on the CPU.
    pub cpu_layers_streamed: usize,
    /// Slots, bytes per slot and prefetch depth in such a pass (the same slots serve decode).
    pub slots: usize,
    /// Bytes of each slot.
    pub slot_bytes: u64,
    /// Prefetch depth.
    pub prefetch_depth: usize,
    /// GPU bytes over the decode plan's own (counted in [`Plan::gpu_bytes_planned`]).
    pub extra_gpu_bytes: u64,
    /// Host bytes of the packed cpu layers (counted in [`Plan::host_bytes_planned`]).
    pub extra_host_bytes: u64,
    /// The packed cpu layers fit the pinned budget (else pageable, staged by the driver).
    pub pinned: bool,
    /// Predicted prompt tok/s at the plan's prefill batch with this placement.
    pub tokens_per_second: f64,
    /// Predicted prompt tok/s at the same batch with the decode placement, for comparison.
    pub decode_placement_tokens_per_second: f64,
}

/// The placement of every layer, the memory it takes and the speed it is predicted to reach.
///
/// ```
/// use strata_runtime::plan::{LayerSpec, Placement, PlanRequest, Policy, assumed_speeds, plan};
///
/// const GIB: u64 = 1 << 30;
/// // 32 layers of 400 MiB on a 6 GiB card: some resident, the rest streamed or on the CPU.
/// let layer =
///     LayerSpec { weight_bytes: 400 << 20, kv_bytes: 16 << 20, flops_per_token: 2 * 200_000_000, experts: None };
/// let req = PlanRequest {
///     layers: vec![layer; 32],
///     head_bytes: 250 << 20,
///     gpu_budget: Some(6 * GIB),
///     host_available: 32 * GIB,
///     host_margin: GIB,
///     pinned_budget: 16 * GIB,
///     speeds: assumed_speeds(),
///     policy: Policy::Auto,
///     ..PlanRequest::default()
/// };
/// let p = plan(&req)?;
/// let resident = p.layers.iter().filter(|l| l.placement == Placement::Resident).count();
/// assert!(resident > 0 && resident < 32, "{}", p.render_table());
/// println!("{}", p.summary_line());
/// # Ok::<(), strata_runtime::plan::PlanError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Every layer exactly once, in order.
    pub layers: Vec<LayerPlan>,
    /// The GPU budget (0 when there is no GPU).
    pub gpu_budget_bytes: u64,
    /// Resident weights + head + GPU KV + slots + scratch + context overhead (0 when the GPU is unused).
    pub gpu_bytes_planned: u64,
    /// What `gpu_bytes_planned` is made of.
    pub gpu_bytes: GpuBytes,
    /// Packed streamed layers, or the staging ring.
    pub host_pinned_bytes_planned: u64,
    /// `host_available - host_margin`.
    pub host_budget_bytes: u64,
    /// Host memory the plan takes (the total of `host_bytes`).
    pub host_bytes_planned: u64,
    /// What `host_bytes_planned` is made of.
    pub host_bytes: HostBytes,
    /// Whether the output head runs on the GPU (the GPU is used at all).
    pub head_on_gpu: bool,
    /// K GPU slots for streamed layers (0 if none).
    pub slots: usize,
    /// Each slot holds the largest streamed layer.
    pub slot_bytes: u64,
    /// `d ≥ 1` when anything is streamed, else 0; slots = d + 1.
    pub prefetch_depth: usize,
    /// The pinned budget cannot hold the streamed layers: pageable weights go through a pinned ring.
    pub staging: bool,
    /// The predicted decode and prefill speed.
    pub predicted: Predicted,
    /// Prompt batch size the prefill prediction assumes.
    pub prefill_batch: usize,
    /// Where the speeds of this plan came from: the CPU's without a GPU, else the less
    /// trustworthy of the CPU's and the GPU's ([`Speeds::source_for`]).
    pub speeds_source: SpeedSource,
    /// Where the CPU speeds came from.
    pub cpu_speeds_source: SpeedSource,
    /// Where the GPU and PCIe speeds came from (`assumed` for a hypothetical GPU).
    pub gpu_speeds_source: SpeedSource,
    /// The speeds the prediction used.
    pub speeds: Speeds,
    /// Plain-words notes for the user.
    pub warnings: Vec<String>,
    /// What was asked, for display: "auto", "--gpu-layers 30", "--stream", ...
    pub policy: String,
    /// The experts of a mixture-of-experts model; `None` for a dense model.
    #[serde(default)]
    pub experts: Option<ExpertSummary>,
    /// Where prompt passes of at least its `min_tokens` run; `None` when they run as decode
    /// does (no cpu layer beside the GPU, `--prefill-stream-min off`, or it does not fit).
    #[serde(default)]
    pub prefill_placement: Option<PrefillPlacement>,
}

impl Plan {
    /// (resident, streamed, cpu) layer counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |p| self.layers.iter().filter(|l| l.placement == p).count();
        (count(Placement::Resident), count(Placement::Streamed), count(Placement::Cpu))
    }
}

/// Why no plan could be made. Messages say what was asked, what was found and what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The request has no layers.
    #[error("the model has no layers to place; check the model file")]
    NoLayers,
    #[error(
        "speed `{name}` is {value}, it must be a finite number {rule}; measure the speeds again or delete the \
         cached speeds"
    )]
    /// A speed is not finite or out of its range.
    BadSpeed {
        /// Name of the speed.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The range it must be in, in words.
        rule: &'static str,
    },
    #[error("{flag} needs a GPU and none is available; drop {flag} to run every layer on the CPU")]
    /// A policy that needs a GPU was asked for without one.
    NoGpu {
        /// The flag that asked for the GPU.
        flag: String,
    },
    #[error(
        "{flag} needs {need} of GPU memory ({parts}), the budget is {budget}; {hint}",
        need = fmt_size(*need), budget = fmt_size(*budget)
    )]
    /// The closest layout the policy allows does not fit the GPU budget.
    GpuMemory {
        /// What was asked: the policy's flags, or "the model" for `auto`.
        flag: String,
        /// GPU bytes that layout needs.
        need: u64,
        /// What the need is made of, for the message.
        parts: String,
        /// The GPU budget in bytes.
        budget: u64,
        /// What to change, in words.
        hint: &'static str,
    },
    #[error(
        "{flag} needs a pinned staging ring of {need} ({slots} slots of {slot}), the pinned memory budget is \
         {budget}; allow more pinned memory or {hint}",
        need = fmt_size(*need), slot = fmt_size(*slot), budget = fmt_size(*budget)
    )]
    /// The pinned staging ring does not fit the pinned memory budget.
    PinnedMemory {
        /// What was asked: the policy's flags, or "the model" for `auto`.
        flag: String,
        /// Bytes of the staging ring.
        need: u64,
        /// Number of slots in the ring.
        slots: usize,
        /// Bytes of one slot.
        slot: u64,
        /// The pinned memory budget in bytes.
        budget: u64,
        /// What to change, in words.
        hint: &'static str,
    },
    #[error(
        "{flag} needs {need} of host memory ({parts}), {usable} is usable ({available} available, {margin} kept \
         free); {hint}",
        need = fmt_size(*need), usable = fmt_size(available.saturating_sub(*margin)),
        available = fmt_size(*available), margin = fmt_size(*margin)
    )]
    /// The closest layout the policy allows does not fit the usable host memory.
    HostMemory {
        /// What was asked: the policy's flags, or "the model" for `auto`.
        flag: String,
        /// Host bytes that layout needs.
        need: u64,
        /// What the need is made of, for the message.
        parts: String,
        /// Host memory available ([`PlanRequest::host_available`]).
        available: u64,
        /// Host memory to keep free ([`PlanRequest::host_margin`]).
        margin: u64,
        /// What to change, in words.
        hint: &'static str,
    },
}

/// Places every layer of `req`.
///
/// # Errors
/// [`PlanError`] when the model has no layers, a speed is not a usable number, a GPU policy is
/// asked for without a GPU, or no layout the policy allows fits the GPU, pinned or host budget;
/// the message names the numbers and the flag to change.
pub fn plan(req: &PlanRequest) -> Result<Plan, PlanError> {
    search::validate(req)?;
    // One search per expert mode (a dense model has one); the fastest decode wins, prefill
    // breaks ties, and the first mode wins a full tie (experts with their layer, as before).
    let mut best: Option<(search::Planner, search::Chosen)> = None;
    let mut errors = Vec::new();
    for sides in experts::modes(req) {
        let planner = search::Planner::with_sides(req, sides);
        match planner.choose(req.policy) {
            Ok(c) => {
                let better = best.as_ref().is_none_or(|(_, b)| {
                    let (x, y) = (&c.best, &b.best);
                    x.decode.seconds < y.decode.seconds
                        || (x.decode.seconds == y.decode.seconds && x.prefill.seconds < y.prefill.seconds)
                });
                if better {
                    best = Some((planner, c));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let Some((planner, chosen)) = best else {
        // The mode that needs the least GPU memory (experts on the CPU, no cache) comes second
        // in `auto`; its error names the smallest need.
        let i = usize::from(errors.len() > 1);
        return Err(errors.into_iter().nth(i).unwrap_or(PlanError::NoLayers));
    };
    let pf = prefill::prefill_placement(&planner, &chosen);
    let mut warnings = advice::warnings(&planner, &chosen, pf.as_ref().ok());
    warnings.extend(experts::warnings(req, &planner.sides));
    if let Some(w) = advice::prefill_placement_note(&pf) {
        warnings.push(w);
    }
    Ok(planner.build(&chosen, warnings, pf.ok()))
}
