//! A [`Session`]: one conversation's KV caches and the executor that runs each layer where
//! the plan put it.
//!
//! - **resident** layers: weights copied to the accelerator once, run on its compute stream;
//! - **streamed** layers: weights packed in (pinned) host memory, copied into a slot by the
//!   runtime's [`WeightStream`] ahead of use, run on the compute stream;
//! - **cpu** layers: weights read from the mapped file by the CPU reference, KV cache in RAM;
//!   the activations move to the host and back around them;
//! - a mixture-of-experts layer on the accelerator whose **experts run on the CPU**
//!   ([`crate::session_experts`]): only its attention part is resident or streamed; the routed
//!   experts run on the host from the mapped file, or on the device when its expert cache
//!   holds them (refilled between passes on a copy stream of its own);
//! - a resident mixture-of-experts layer whose **experts are streamed**: its attention part is
//!   resident and its expert tensors are a streamer group of their own, copied into a slot
//!   ahead of use each pass.
//!
//! A session opened with [`SessionOptions::prefill_stream_min`] also packs its cpu layers for
//! the streamer: a pass of at least that many tokens (a prompt) streams them to the accelerator
//! through the same slots and computes them there (the plan's prefill placement), with their
//! attention in a KV cache on the accelerator that the host cache's rows are copied into and
//! back out of; shorter passes (decode) compute them on the CPU as planned.
//!
//! Each pass records a timeline (per-layer compute, copies, waits) for `--stats`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::pack::GroupLayout;
use strata_runtime::plan::Placement;
use strata_runtime::streamer::{CopyRecord, Epoch, GpuStreamer, HostStreamer, WeightStream};
use strata_tensor::{DType, Device, Event, HostBuffer, PinnedKind, Reservation, Stream, Tensor, nvtx, ops};

use crate::arch::Role;
use crate::forward::{LayerCtx, LayerKv, LayerRef, Scratch, head_forward, layer_forward};
use crate::model::{Model, SessionOptions};
use crate::session_experts::{
    ApartExperts, ExpertCache, ExpertExec, ExpertPassStats, attention_part, expert_bytes, layer_forward_cpu_experts,
};
use crate::weights::{HeadWeights, LayerWeights};
use crate::{Error, Result};

#[path = "decode_graph.rs"]
mod decode_graph;
pub use decode_graph::{CUDA_GRAPHS_ENV, graphs_env};
use decode_graph::{DecodeIo, GraphState, LayerSite};

/// How layers are placed for a session (normally from a plan).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Where each layer runs, by layer index.
    pub placements: Vec<Placement>,
    /// Copies in flight ahead of compute (≥ 1 when any layer is streamed).
    pub prefetch_depth: usize,
}

impl Layout {
    /// Every layer in one placement.
    pub fn uniform(n_layers: usize, p: Placement) -> Layout {
        Layout { placements: vec![p; n_layers], prefetch_depth: 1 }
    }
}

/// Time spent on one layer in one pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerTiming {
    /// Layer index.
    pub layer: usize,
    /// Where the layer ran.
    pub placement: Placement,
    /// Start, seconds from the start of the pass.
    pub start_s: f64,
    /// End, seconds from the start of the pass.
    pub end_s: f64,
    /// Time the compute stream waited for this layer's copy (host device: measured; GPU: the
    /// idle gap before the layer started).
    pub wait_s: f64,
}

/// The timeline of one forward pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassStats {
    /// Tokens in the pass.
    pub tokens: usize,
    /// When the pass started, seconds since the session was created (host clock): the times
    /// below are relative to the pass's start, and this puts consecutive passes on one
    /// timeline (a copy issued during the previous pass has a negative `issued_s`).
    pub epoch_s: f64,
    /// Wall time of the pass, seconds.
    pub wall_s: f64,
    /// Compute time summed over the layers, seconds.
    pub compute_s: f64,
    /// Copy time summed over the copies, seconds.
    pub copy_s: f64,
    /// Bytes copied.
    pub copy_bytes: u64,
    /// Time compute waited for copies, summed over the layers, seconds.
    pub wait_s: f64,
    /// max(Σ compute, Σ copy) / wall time: 1.0 means copies hid completely behind compute
    /// (or the reverse).
    pub overlap_efficiency: f64,
    /// Copy throughput, GB/s.
    pub copy_gb_per_s: f64,
    /// One entry per layer.
    pub layers: Vec<LayerTiming>,
    /// One entry per weight copy.
    pub copies: Vec<CopyRecord>,
    /// Experts computed on the CPU (and found in the device caches) in this pass.
    pub experts: ExpertPassStats,
}

enum Weights {
    /// The model's host weights (cpu layers, or resident layers of the host device).
    Host,
    /// A copy on the accelerator.
    Owned(Box<LayerWeights>),
    /// Group `g` of the streamer.
    Streamed(usize),
    /// A resident layer whose experts are group `g` of the streamer: its attention part on
    /// the accelerator (None: the model's host weights, on the host test device).
    ExpertsStreamed(Option<Box<LayerWeights>>, usize),
}

impl Weights {
    /// The streamer group the layer acquires each pass, if any.
    fn group(&self) -> Option<usize> {
        match self {
            Weights::Streamed(g) | Weights::ExpertsStreamed(_, g) => Some(*g),
            Weights::Host | Weights::Owned(_) => None,
        }
    }
}

struct Site {
    placement: Placement,
    weights: Weights,
    /// The streamer group of a cpu layer that prompt passes stream (the prefill placement).
    prefill_group: Option<usize>,
    kv: LayerKv,
    stream: Stream,
    /// The layer's experts run on the CPU (with this device cache of hot ones), not with it.
    experts: Option<ExpertCache>,
    /// The roles of a streamed group when it is not the whole layer (experts left out, or
    /// only the experts).
    roles: Option<Vec<Role>>,
    _res: Vec<Reservation>,
}

enum Clock {
    Host(Instant),
    /// The GPU epoch event, and the host instant it was recorded at (for cpu layers).
    Gpu(strata_tensor::GpuStream, Event, Instant),
}

/// How many pass timelines a [`Session`] keeps until [`Session::take_stats`] (the most recent
/// ones): a few KiB each, so at most a few tens of MiB however long a chat runs.
pub const STATS_KEPT: usize = 4096;

/// One conversation: KV caches on the planned devices, the number of positions used, and
/// the weight streamer. It shares its model (an [`Arc`]), so it can live in a long-lived
/// struct beside other sessions over the same weights.
///
/// ```
/// use std::sync::Arc;
///
/// use strata_model::gguf::GgufFile;
/// use strata_model::synth::{Preset, gguf_bytes};
/// use strata_model::{Model, Session, SessionOptions};
///
/// let bytes = gguf_bytes(&Preset::by_name("tiny")?, strata_tensor::DType::Q8_0, 1)?;
/// let model = Arc::new(Model::from_file(GgufFile::from_bytes(bytes)?, "tiny.gguf".as_ref())?);
/// // Every layer on the CPU; `Engine::open` plans a GPU placement instead.
/// let opts = SessionOptions { context: 32, ..SessionOptions::default() };
/// let mut session = Session::new(Arc::clone(&model), None, &opts)?;
/// let logits = session.forward(&[1, 2, 3], false)?;
/// assert_eq!(logits.len(), model.config.n_vocab);
/// assert_eq!(session.n_past(), 3);
/// # Ok::<(), strata_model::Error>(())
/// ```
pub struct Session {
    model: Arc<Model>,
    sites: Vec<Site>,
    head: Option<HeadWeights>,
    head_stream: Stream,
    streamer: Option<Box<dyn WeightStream>>,
    scratch: Vec<(Stream, Scratch)>,
    context: usize,
    n_past: usize,
    batch: usize,
    device: Device,
    /// Timelines of the last [`STATS_KEPT`] passes since the last `take_stats`.
    stats: VecDeque<PassStats>,
    /// Passes since the last `take_stats` whose timelines were dropped to bound `stats`.
    stats_dropped: usize,
    /// The layer of each streamed group.
    streamed_layers: Vec<usize>,
    /// Pinned host memory the logits are downloaded into (GPU sessions).
    logits_host: Option<HostBuffer>,
    /// The GPU stream the expert caches are refilled on (GPU sessions with a cache).
    expert_copy: Option<Stream>,
    /// The experts of the batch scheduler's passes since the session opened (its passes are
    /// not in [`Session::take_stats`]).
    batch_expert_stats: ExpertPassStats,
    /// When the session was created: the origin of [`PassStats::epoch_s`].
    created: Instant,
    /// Passes of at least this many tokens use the prefill order (None: never).
    prefill_min: Option<usize>,
    /// The streamer groups of a decode pass and of a prefill pass, in layer order.
    decode_groups: Vec<usize>,
    prefill_groups: Vec<usize>,
    /// The streamer is in the prefill order.
    prefill_phase: bool,
    /// The accelerator's compute stream (the stream of streamed layers).
    acc_stream: Stream,
    /// A GPU session's KV cache in which a cpu layer's attention runs in a prefill pass.
    prefill_kv: Option<LayerKv>,
    /// Leading layers a decode step may run as one CUDA graph ([`decode_graph`]).
    graph_prefix: usize,
    /// The decode graph's state (warm-up, captured, off).
    graphs: GraphState<strata_tensor::GpuGraph>,
    /// The decode graph's inputs at fixed device addresses (allocated at its first step).
    decode_io: Option<DecodeIo>,
    _res: Vec<Reservation>,
}

fn reserve(acc: Option<&Accelerator>, bytes: u64, what: &str) -> Result<Vec<Reservation>> {
    match acc {
        Some(Accelerator::Host(h)) => Ok(vec![h.budget.reserve(bytes, what)?]),
        _ => Ok(Vec::new()),
    }
}

impl Session {
    /// Every layer on one device: the CPU (`acc` None) or resident on the accelerator.
    ///
    /// # Errors
    /// Out of memory (typed; everything allocated so far is freed) or a bad option.
    pub fn new(model: Arc<Model>, acc: Option<&Accelerator>, opts: &SessionOptions) -> Result<Session> {
        let p = if acc.is_some() { Placement::Resident } else { Placement::Cpu };
        let layout = Layout::uniform(model.config.n_layers, p);
        Session::with_layout(model, acc, &layout, opts)
    }

    /// Layers placed as `layout` says. Resident and streamed layers need an accelerator.
    ///
    /// # Errors
    /// Out of memory (typed; nothing stays allocated), a layout that does not match the model.
    pub fn with_layout(
        model: Arc<Model>,
        acc: Option<&Accelerator>,
        layout: &Layout,
        opts: &SessionOptions,
    ) -> Result<Session> {
        Session::with_layout_progress(model, acc, layout, opts, &|_, _| {})
    }

    /// [`Session::with_layout`], calling `progress(bytes done, bytes total)` as weights are
    /// uploaded and packed (for a progress bar on big models).
    ///
    /// # Errors
    /// As [`Session::with_layout`].
    pub fn with_layout_progress(
        model: Arc<Model>,
        acc: Option<&Accelerator>,
        layout: &Layout,
        opts: &SessionOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Session> {
        Session::with_layout_experts(model, acc, layout, &[], opts, progress)
    }

    /// [`Session::with_layout_progress`] with the experts of mixture-of-experts layers placed
    /// as `experts` says (by layer; missing entries, dense layers and cpu layers:
    /// [`ExpertExec::WithLayer`]).
    ///
    /// # Errors
    /// As [`Session::with_layout`].
    pub fn with_layout_experts(
        model: Arc<Model>,
        acc: Option<&Accelerator>,
        layout: &Layout,
        experts: &[ExpertExec],
        opts: &SessionOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Session> {
        let cfg = &model.config;
        let context = opts.context_for(cfg);
        if context == 0 || context > 1 << 20 {
            return Err(Error::invalid(format!("--context {context} is out of range (1..=1048576)")));
        }
        if opts.batch == 0 {
            return Err(Error::invalid("--batch must be at least 1"));
        }
        if layout.placements.len() != cfg.n_layers {
            return Err(Error::invalid(format!(
                "the layout places {} layers, the model has {}",
                layout.placements.len(),
                cfg.n_layers
            )));
        }
        let on_acc = layout.placements.iter().any(|p| *p != Placement::Cpu);
        if on_acc && acc.is_none() {
            return Err(Error::invalid("resident or streamed layers need a GPU (or the host test device)"));
        }
        let acc_stream = match acc {
            Some(Accelerator::Gpu(g)) => Stream::Gpu(g.stream("compute")?),
            _ => Stream::Host,
        };
        let kv_bytes = cfg.kv_bytes_per_layer(context, opts.kv_type.bytes());
        // Refuse before allocating when the host cannot hold its KV caches and activations
        // (the host test device keeps everything in host memory).
        let on_host = |p: &Placement| *p == Placement::Cpu || !matches!(acc, Some(Accelerator::Gpu(_)));
        let host_layers = layout.placements.iter().filter(|p| on_host(p)).count() as u64;
        // Activations on the host whenever a layer or the head runs there.
        let host_scratch = if host_layers > 0 || !on_acc { Scratch::bytes(cfg, opts.batch.min(context)) } else { 0 };
        crate::offload::check_host_memory(
            &crate::offload::HostNeed {
                context,
                kv_bytes_per_token: host_layers * cfg.kv_bytes_per_layer(1, opts.kv_type.bytes()),
                scratch_bytes: host_scratch + 4 * (opts.batch.min(context) * cfg.n_vocab) as u64,
            },
            &strata_tensor::hostmem::HostLimits::read(),
        )?;
        let mut sites = Vec::with_capacity(cfg.n_layers);
        let mut streamed = Vec::new();
        // The prefill placement needs an accelerator and a layer on it (the head goes there).
        let prefill_min = opts.prefill_stream_min.filter(|_| acc.is_some() && on_acc);
        let to_load: u64 = layout
            .placements
            .iter()
            .zip(&model.weights.layers)
            .filter(|(p, _)| **p != Placement::Cpu || prefill_min.is_some())
            .map(|(_, w)| w.bytes())
            .sum();
        let mut loaded = 0u64;
        progress(0, to_load);
        for (l, (&placement, w)) in layout.placements.iter().zip(&model.weights.layers).enumerate() {
            let _r = nvtx::range(&format!("load layer {l}"));
            // Experts apart from their layer only where the layer has experts and is on the
            // accelerator (a cpu layer computes everything on the CPU anyway).
            let apart = match experts.get(l) {
                Some(ExpertExec::Cpu { cached })
                    if cfg.is_moe() && placement != Placement::Cpu && expert_bytes(w) > 0 =>
                {
                    Some(*cached)
                }
                _ => None,
            };
            let stream_experts = matches!(experts.get(l), Some(ExpertExec::Streamed))
                && cfg.is_moe()
                && placement == Placement::Resident
                && expert_bytes(w) > 0;
            let on_acc_bytes = if apart.is_some() || stream_experts { w.bytes() - expert_bytes(w) } else { w.bytes() };
            let (weights, stream, mut res) = match placement {
                Placement::Cpu => (Weights::Host, Stream::Host, Vec::new()),
                Placement::Resident if stream_experts => {
                    streamed.push(l);
                    let g = streamed.len() - 1;
                    match &acc_stream {
                        Stream::Gpu(_) => (
                            Weights::ExpertsStreamed(Some(Box::new(attention_part(w, &acc_stream, l)?)), g),
                            acc_stream.clone(),
                            Vec::new(),
                        ),
                        Stream::Host => (
                            Weights::ExpertsStreamed(None, g),
                            Stream::Host,
                            reserve(acc, on_acc_bytes, &format!("attention part of layer {l}"))?,
                        ),
                    }
                }
                Placement::Resident => match (&acc_stream, apart) {
                    (Stream::Gpu(_), None) => {
                        (Weights::Owned(Box::new(w.to_device(&acc_stream, l)?)), acc_stream.clone(), Vec::new())
                    }
                    (Stream::Gpu(_), Some(_)) => {
                        (Weights::Owned(Box::new(attention_part(w, &acc_stream, l)?)), acc_stream.clone(), Vec::new())
                    }
                    (Stream::Host, _) => {
                        (Weights::Host, Stream::Host, reserve(acc, on_acc_bytes, &format!("layer {l}"))?)
                    }
                },
                Placement::Streamed => {
                    streamed.push(l);
                    (Weights::Streamed(streamed.len() - 1), acc_stream.clone(), Vec::new())
                }
            };
            // Groups in layer order, so a prefill pass acquires them in the order it runs them.
            let prefill_group = (placement == Placement::Cpu && prefill_min.is_some()).then(|| {
                streamed.push(l);
                streamed.len() - 1
            });
            if placement != Placement::Cpu {
                res.extend(reserve(acc, kv_bytes, &format!("KV cache of layer {l}"))?);
            }
            let cache = match apart {
                Some(cached) => {
                    let cached = cached.min(cfg.n_expert);
                    let one = expert_bytes(w) / cfg.n_expert.max(1) as u64;
                    res.extend(reserve(acc, one * cached as u64, &format!("expert cache of layer {l}"))?);
                    Some(ExpertCache::new(cfg.n_expert, cached))
                }
                None => None,
            };
            let roles = match (placement, apart) {
                (Placement::Streamed, Some(_)) => Some(w.roles().into_iter().filter(|r| !r.is_expert()).collect()),
                (Placement::Resident, None) if stream_experts => {
                    Some(w.roles().into_iter().filter(|r| r.is_expert()).collect())
                }
                _ => None,
            };
            let kv = LayerKv::new(cfg, context, opts.kv_type.dtype(), &stream, l)?;
            sites.push(Site { placement, weights, prefill_group, kv, stream, experts: cache, roles, _res: res });
            if placement == Placement::Resident {
                loaded += on_acc_bytes;
                progress(loaded, to_load);
            }
        }
        let (head, head_stream, mut res) = match (acc, on_acc) {
            (Some(Accelerator::Gpu(_)), true) => {
                (Some(model.weights.head.to_device(&acc_stream)?), acc_stream.clone(), vec![])
            }
            (Some(Accelerator::Host(_)), true) => {
                (None, Stream::Host, reserve(acc, model.weights.head.bytes(), "output head")?)
            }
            _ => (None, Stream::Host, Vec::new()),
        };
        let mut streamer: Option<Box<dyn WeightStream>> = if streamed.is_empty() {
            None
        } else {
            let depth = layout.prefetch_depth.max(1);
            Some(match (acc, &acc_stream) {
                (Some(Accelerator::Gpu(g)), Stream::Gpu(compute)) => {
                    let packed = streamed
                        .iter()
                        .map(|&l| {
                            let w = &model.weights.layers[l];
                            let t = group_tensors(w, sites[l].roles.as_deref());
                            let packed = GpuStreamer::pack(g, &t, &format!("packed layer {l}"));
                            loaded += t.iter().map(|t| t.len_bytes() as u64).sum::<u64>();
                            progress(loaded, to_load);
                            packed.map_err(Error::from)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Box::new(GpuStreamer::new(g, compute, packed, &streamed, depth)?)
                }
                (Some(Accelerator::Host(HostDevice { budget, copy_delay_per_mib })), _) => {
                    let groups: Vec<(GroupLayout, Vec<&Tensor>)> = streamed
                        .iter()
                        .map(|&l| {
                            let t = group_tensors(&model.weights.layers[l], sites[l].roles.as_deref());
                            (GroupLayout::of(&t), t)
                        })
                        .collect();
                    Box::new(HostStreamer::new(budget, groups, depth, *copy_delay_per_mib)?)
                }
                _ => return Err(Error::invalid("streamed layers need an accelerator")),
            })
        };
        // Counted on the host test device only (`reserve` is a no-op elsewhere).
        res.extend(reserve(acc, Scratch::bytes(cfg, opts.batch.min(context)), "activations")?);
        let expert_copy = match acc {
            Some(Accelerator::Gpu(g)) if sites.iter().any(|s| s.experts.is_some()) => {
                Some(Stream::Gpu(g.stream("expert cache copies")?))
            }
            _ => None,
        };
        let decode_groups: Vec<usize> =
            sites.iter().filter(|s| s.prefill_group.is_none()).filter_map(|s| s.weights.group()).collect();
        let prefill_groups: Vec<usize> = (0..streamed.len()).collect();
        let mut prefill_kv = None;
        if let Some(first) = sites.iter().position(|s| s.prefill_group.is_some()) {
            if let Some(st) = streamer.as_mut()
                && !decode_groups.is_empty()
            {
                st.set_pass_groups(&decode_groups)?;
            }
            if let Stream::Gpu(_) = &acc_stream {
                prefill_kv = Some(LayerKv::new(cfg, context, opts.kv_type.dtype(), &acc_stream, first)?);
            }
        }
        let device = if on_acc { acc_stream.device() } else { Device::Cpu };
        let first_gpu = sites.first().map(|s| &s.stream).filter(|s| matches!(s, Stream::Gpu(_)));
        let graph_sites: Vec<LayerSite> = sites
            .iter()
            .map(|s| LayerSite {
                placement: s.placement,
                owned_weights: matches!(s.weights, Weights::Owned(_)),
                split: s.experts.is_some() || s.roles.is_some() || s.prefill_group.is_some(),
                on_first_gpu_stream: first_gpu == Some(&s.stream),
            })
            .collect();
        let graph_prefix = decode_graph::graph_prefix(&graph_sites, cfg.is_moe());
        let graphs_wanted = graphs_env(std::env::var(CUDA_GRAPHS_ENV).ok().as_deref());
        Ok(Session {
            model,
            sites,
            head,
            head_stream,
            streamer,
            scratch: Vec::new(),
            context,
            n_past: 0,
            batch: opts.batch,
            device,
            stats: VecDeque::new(),
            stats_dropped: 0,
            streamed_layers: streamed,
            logits_host: None,
            expert_copy,
            batch_expert_stats: ExpertPassStats::default(),
            created: Instant::now(),
            prefill_min,
            decode_groups,
            prefill_groups,
            prefill_phase: false,
            acc_stream,
            prefill_kv,
            graph_prefix,
            graphs: GraphState::new(graphs_wanted, graph_prefix),
            decode_io: None,
            _res: res,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Where the accelerated layers run ("cpu" when none is).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Context length (positions the KV cache holds).
    pub fn context(&self) -> usize {
        self.context
    }

    /// Positions already in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forgets the conversation (the caches are overwritten from position 0).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Keeps only the first `n` positions (later ones are overwritten by the next forward).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Streamer slots (count, bytes each), if any layer is streamed.
    pub fn stream_slots(&self) -> Option<(usize, usize)> {
        self.streamer.as_ref().map(|s| s.slots())
    }

    /// The timelines of the passes since the last call: the last [`STATS_KEPT`] of them, so a
    /// long chat that never calls this holds a bounded amount of memory (see
    /// [`Session::stats_dropped`] for how many were left out).
    pub fn take_stats(&mut self) -> Vec<PassStats> {
        self.stats_dropped = 0;
        std::mem::take(&mut self.stats).into()
    }

    /// How many passes since the last [`Session::take_stats`] are not in it (the oldest ones,
    /// beyond [`STATS_KEPT`]).
    pub fn stats_dropped(&self) -> usize {
        self.stats_dropped
    }

    /// The timeline of the latest pass (None before the first, or right after
    /// [`Session::take_stats`]).
    pub fn last_pass(&self) -> Option<&PassStats> {
        self.stats.back()
    }

    /// Runs `tokens` at positions n_past.. and returns the logits of the last token, or of
    /// every token when `all` (row-major [tokens, n_vocab]).
    ///
    /// # Errors
    /// [`Error::ContextFull`] when the tokens do not fit the context; invalid token ids;
    /// [`Error::Model`] when the logits are not finite (naming the weight with a NaN or
    /// infinite value or scale, if one has).
    pub fn forward(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let cfg = &self.model.config;
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to run"));
        }
        if self.n_past + tokens.len() > self.context {
            return Err(Error::ContextFull {
                needed: self.n_past + tokens.len(),
                prompt: self.n_past,
                generate: tokens.len(),
                context: self.context,
                trained: cfg.n_ctx_train,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.n_vocab)));
        }
        let _r = nvtx::range(if tokens.len() > 1 { "prefill" } else { "decode" });
        let mut out = Vec::with_capacity(if all { tokens.len() * cfg.n_vocab } else { cfg.n_vocab });
        let chunks: Vec<&[u32]> = tokens.chunks(self.batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            match self.forward_chunk(chunk, all || last, all) {
                Ok(Some(logits)) => out.extend_from_slice(&logits),
                Ok(None) => {}
                Err(e) => {
                    // Put the streamer back at the start of a pass so the session stays usable.
                    if let Some(s) = self.streamer.as_mut() {
                        s.restart()?;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(self.nonfinite_logits(i, out[i]));
        }
        Ok(out)
    }

    /// The error for a pass whose logits are not finite: sampling from them would print
    /// garbage. It names the weight at fault when one holds a NaN/inf value or block scale
    /// (a corrupt file: dequantization computes with such scales as llama.cpp does); the
    /// positions of this pass are in the KV cache, so the session must be reset or truncated.
    fn nonfinite_logits(&self, i: usize, v: f32) -> Error {
        let n_vocab = self.model.config.n_vocab;
        let cause = match self.model.find_nonfinite_weight() {
            Some(w) => format!("{w}; the model file is corrupt"),
            None => "every weight is finite, so an activation overflowed".to_string(),
        };
        Error::model(format!(
            "logit {} of token {} in this pass is {v}: {cause} (refusing to sample from non-finite logits)",
            i % n_vocab,
            i / n_vocab
        ))
    }

    fn take_scratch(&mut self, s: &Stream, n_tokens: usize) -> Result<Scratch> {
        match self.scratch.iter().position(|(st, _)| st == s) {
            Some(i) if self.scratch[i].1.n_tokens == n_tokens => Ok(self.scratch.swap_remove(i).1),
            Some(i) => {
                self.scratch.swap_remove(i);
                Scratch::new(&self.model.config, n_tokens, s)
            }
            None => Scratch::new(&self.model.config, n_tokens, s),
        }
    }

    fn forward_chunk(&mut self, tokens: &[u32], want_logits: bool, all: bool) -> Result<Option<Vec<f32>>> {
        let model = Arc::clone(&self.model);
        let model = &*model;
        let cfg = &model.config;
        let t = tokens.len();
        let pos0 = self.n_past;
        let clock = match &self.head_stream {
            Stream::Gpu(g) => Clock::Gpu(g.clone(), g.record()?, Instant::now()),
            Stream::Host => Clock::Host(Instant::now()),
        };
        let ids = Tensor::from_i32(&[t], tokens.iter().map(|&i| i as i32).collect())?;
        let mut x = Tensor::zeros(DType::F32, &[t, cfg.n_embd], &Stream::Host, "embeddings")?;
        ops::embedding_gather(&model.weights.embedding, &ids, &mut x, &Stream::Host)?;
        if let Some(f) = cfg.embed_scale {
            let rows = x;
            x = Tensor::zeros(DType::F32, &[t, cfg.n_embd], &Stream::Host, "scaled embeddings")?;
            ops::scale(&rows, f, &mut x, &Stream::Host)?;
        }
        let positions_host = Tensor::from_i32(&[t], (pos0..pos0 + t).map(|p| p as i32).collect())?;
        let mut positions: Option<(Device, Tensor)> = None;
        let mut x_stream = Stream::Host;
        let mut marks: Vec<(usize, Placement, Mark, Mark, f64)> = Vec::with_capacity(self.sites.len());
        let mut expert_stats = ExpertPassStats::default();
        self.set_phase(self.prefill_min.is_some_and(|m| t >= m))?;
        // Under `next`, a decode step runs its resident prefix as a CUDA graph (decode_graph.rs).
        let mut first = 0;
        if t == 1
            && !self.prefill_phase
            && let Some(run) = self.decode_prefix(&x, &positions_host, pos0)?
        {
            first = run.layers;
            x = run.x;
            x_stream = run.stream.clone();
            positions = Some((run.stream.device(), run.pos));
            marks.extend(run.marks);
        }
        for l in first..self.sites.len() {
            // A cpu layer that this (prompt) pass streams runs on the accelerator.
            let as_group = if self.prefill_phase { self.sites[l].prefill_group } else { None };
            let s = if as_group.is_some() { self.acc_stream.clone() } else { self.sites[l].stream.clone() };
            x = move_to(x, &x_stream, &s)?;
            x_stream = s.clone();
            if positions.as_ref().is_none_or(|(d, _)| *d != s.device()) {
                positions = Some((s.device(), positions_host.to_device(&s, "positions")?));
            }
            let pos = &positions.as_ref().ok_or_else(|| Error::invalid("positions missing"))?.1;
            let mut scratch = self.take_scratch(&s, t)?;
            let _r = nvtx::range_with(|| format!("layer {l}"));
            if as_group.is_none() {
                self.copies_during_cpu_layer(l)?;
            }
            let site = &mut self.sites[l];
            let mut streamer = self.streamer.as_deref_mut();
            let (weights, wait_s) =
                acquire_layer(&site.weights, site.roles.as_deref(), as_group, model, l, streamer.as_deref_mut())?;
            // The attention of a streamed cpu layer on a GPU runs in the device cache, which
            // gets the earlier positions first and gives the new ones back after.
            let kv = match (as_group, self.prefill_kv.as_mut()) {
                (Some(_), Some(dev)) => {
                    dev.k.copy_rows_from(&site.kv.k, 0..pos0, &s)?;
                    dev.v.copy_rows_from(&site.kv.v, 0..pos0, &s)?;
                    dev
                }
                _ => &mut site.kv,
            };
            let start = Mark::now(&s)?;
            let mut cx = LayerCtx { cfg, layer: l, kv, positions: pos, pos0, sc: &mut scratch, s: &s };
            let r = match site.experts.as_mut() {
                None => layer_forward(&mut cx, weights, &mut x),
                Some(cache) => layer_forward_cpu_experts(
                    &mut cx,
                    weights,
                    model.weights.layers[l].as_ref(),
                    &mut x,
                    cache,
                    &mut expert_stats,
                ),
            };
            if let (Some(g), Some(st)) = (as_group.or(site.weights.group()), streamer) {
                st.release(g)?;
            }
            let end = Mark::now(&s)?;
            self.scratch.push((s.clone(), scratch));
            r?;
            if let (Some(_), Some(dev)) = (as_group, self.prefill_kv.as_ref()) {
                site.kv.k.copy_rows_from(&dev.k, pos0..pos0 + t, &s)?;
                site.kv.v.copy_rows_from(&dev.v, pos0..pos0 + t, &s)?;
            }
            let placement = if as_group.is_some() { Placement::Streamed } else { site.placement };
            marks.push((l, placement, start, end, wait_s));
        }
        self.n_past += t;
        let logits = if want_logits {
            let s = self.head_stream.clone();
            x = move_to(x, &x_stream, &s)?;
            let head = self.head.as_ref().unwrap_or(&model.weights.head);
            let rows = if all { 0..t } else { t - 1..t };
            let logits = head_forward(cfg, head, &x, rows, &s)?;
            Some(self.download_logits(&logits, &s)?)
        } else {
            x_stream.synchronize()?;
            None
        };
        // Free this pass's device temporaries before the next pass's copies start: cuMemFree
        // synchronizes the device, and after `begin_next_pass` it would wait for those copies
        // (about 4 ms per token on an H200 with 5 streamed 7B layers).
        drop(x);
        drop(positions);
        // Between passes: the expert caches take the experts routed to most lately.
        expert_stats.refill_bytes += self.refill_expert_caches()?;
        let streaming = self.streaming();
        if let Some(st) = self.streamer.as_mut().filter(|_| streaming) {
            st.begin_next_pass()?;
        }
        self.record_pass(t, clock, marks, expert_stats)?;
        Ok(logits)
    }

    /// Refills every layer's expert cache from the routing counts (between passes); returns
    /// the bytes copied.
    fn refill_expert_caches(&mut self) -> Result<u64> {
        let copy = self.expert_copy.as_ref();
        let mut bytes = 0;
        for (l, site) in self.sites.iter_mut().enumerate() {
            if let Some(cache) = site.experts.as_mut() {
                let _r = nvtx::range(&format!("refill expert cache {l}"));
                bytes += cache.refill(self.model.weights.layers[l].as_ref(), &site.stream, copy, l)?;
            }
        }
        Ok(bytes)
    }

    /// Before a cpu layer (its activations already on the host): every free weight slot gets
    /// its next copy, so the copy stream runs while the CPU computes (hybrid decode) instead of
    /// waiting for the next streamed layer's `acquire`. After the pass's last streamed layer
    /// these are the next pass's first copies. Issued after the activations' download, which
    /// on a GPU would otherwise queue behind them.
    fn copies_during_cpu_layer(&mut self, l: usize) -> Result<()> {
        let streaming = self.streaming();
        if self.sites[l].placement == Placement::Cpu
            && streaming
            && let Some(st) = self.streamer.as_mut()
        {
            st.prefetch_ahead()?;
        }
        Ok(())
    }

    /// Whether this phase's passes acquire any streamer group (a plan whose non-resident
    /// layers all run on the CPU in decode streams only in prompt passes).
    fn streaming(&self) -> bool {
        self.streamer.is_some()
            && !if self.prefill_phase { &self.prefill_groups } else { &self.decode_groups }.is_empty()
    }

    /// Puts the streamer in the order of a prefill pass (every cpu layer streamed too) or of a
    /// decode pass. A switch collects the copies in flight for the other order first: the
    /// first copies of the new order are not hidden behind the previous pass.
    fn set_phase(&mut self, prefill: bool) -> Result<()> {
        if self.prefill_phase == prefill || self.prefill_groups.len() == self.decode_groups.len() {
            return Ok(());
        }
        if let Some(st) = self.streamer.as_mut() {
            let groups = if prefill { &self.prefill_groups } else { &self.decode_groups };
            if groups.is_empty() { st.restart()? } else { st.set_pass_groups(groups)? }
        }
        self.prefill_phase = prefill;
        Ok(())
    }

    /// Layers a pass of `tokens` tokens streams to the accelerator that decode computes on the
    /// CPU (0 below the prefill threshold, or without a prefill placement).
    pub fn prefill_streamed_layers(&self, tokens: usize) -> usize {
        match self.prefill_min {
            Some(m) if tokens >= m => self.prefill_groups.len() - self.decode_groups.len(),
            _ => 0,
        }
    }

    /// The logits on the host. From a GPU they come through a pinned buffer: a download to
    /// pageable memory is staged by the driver and queues behind the weight copies in flight
    /// on the copy engine (measured on an H200: ~4 ms per token behind the next token's
    /// prefetches), where a pinned download runs beside them.
    fn download_logits(&mut self, logits: &Tensor, s: &Stream) -> Result<Vec<f32>> {
        let (Stream::Gpu(g), strata_tensor::Storage::Cuda(buf)) = (s, logits.storage()) else {
            return Ok(logits.to_vec_f32(s)?);
        };
        let bytes = logits.len_bytes();
        if self.logits_host.as_ref().is_none_or(|h| h.len() != bytes) {
            self.logits_host = Some(HostBuffer::alloc(Some(g.gpu()), bytes, PinnedKind::Normal, "logits")?);
        }
        let host = self.logits_host.as_mut().ok_or_else(|| Error::invalid("logits buffer"))?;
        host.copy_from_device(0..bytes, buf, 0, g)?;
        let raw = host.as_slice()?;
        Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    fn record_pass(
        &mut self,
        tokens: usize,
        clock: Clock,
        marks: Vec<(usize, Placement, Mark, Mark, f64)>,
        experts: ExpertPassStats,
    ) -> Result<()> {
        let (epoch, wall_s, host0) = match clock {
            Clock::Host(t0) => (Epoch::Host(t0), t0.elapsed().as_secs_f64(), t0),
            Clock::Gpu(g, e0, host0) => {
                let end = g.record()?;
                end.synchronize()?;
                let wall = e0.elapsed_ms(&end)? as f64 / 1e3;
                (Epoch::Gpu(e0), wall, host0)
            }
        };
        let mut layers = Vec::with_capacity(marks.len());
        let mut prev_end: Option<f64> = None;
        for (l, placement, start, end, host_wait) in marks {
            let (s, e) = (start.secs(&epoch, host0)?, end.secs(&epoch, host0)?);
            // On a GPU the wait shows as the gap between the previous layer's end and this start.
            let wait_s = match (&start, placement) {
                (Mark::Gpu(_), Placement::Streamed) => prev_end.map_or(0.0, |p| (s - p).max(0.0)),
                _ => host_wait,
            };
            prev_end = Some(e);
            layers.push(LayerTiming { layer: l, placement, start_s: s, end_s: e, wait_s });
        }
        let mut copies = match self.streamer.as_mut() {
            Some(st) => st.drain_records(&epoch)?,
            None => Vec::new(),
        };
        for c in &mut copies {
            c.layer = self.streamed_layers.get(c.group).copied();
        }
        let compute_s: f64 = layers.iter().map(|l| l.end_s - l.start_s).fold(0.0, |a, b| a + b);
        let copy_s: f64 = copies.iter().map(|c| c.end_s - c.start_s).fold(0.0, |a, b| a + b);
        let copy_bytes: u64 = copies.iter().map(|c| c.bytes).sum();
        let wait_s = layers.iter().map(|l| l.wait_s).fold(0.0, |a, b| a + b);
        if self.stats.len() >= STATS_KEPT {
            self.stats.pop_front();
            self.stats_dropped += 1;
        }
        let epoch_s = host0.saturating_duration_since(self.created).as_secs_f64();
        self.stats.push_back(PassStats {
            tokens,
            epoch_s,
            wall_s,
            compute_s,
            copy_s,
            copy_bytes,
            wait_s,
            overlap_efficiency: if wall_s > 0.0 { compute_s.max(copy_s) / wall_s } else { 0.0 },
            copy_gb_per_s: if copy_s > 0.0 { copy_bytes as f64 / copy_s / 1e9 } else { 0.0 },
            layers,
            copies,
            experts,
        });
        Ok(())
    }
}

/// What [`Session::run_layers`] runs on each layer: `(layer, weights, cache, x, stream,
/// experts)`, where `experts` is where the layer's experts run when they are placed apart from
/// it (None: with the layer, from `weights`).
pub(crate) type LayerFn<'a> =
    dyn FnMut(usize, LayerRef<'_>, &mut LayerKv, &mut Tensor, &Stream, Option<ApartExperts<'_>>) -> Result<()> + 'a;

/// The layer walk of a pass, for the batch scheduler ([`crate::batch`]), which computes its
/// own attention over paged KV blocks held in this session's caches.
impl Session {
    /// Runs `f(layer, weights, cache, x, stream, experts)` on every layer in order, where the
    /// plan put it: `x` moved to the layer's device first, a streamed layer's weights acquired
    /// from the streamer before and released after, a layer whose experts run apart handed
    /// them. Returns `x` and the stream it ended on. On an error the streamer is put back at
    /// the start of a pass. Passes run this way are not in [`Session::take_stats`]; call
    /// [`Session::end_batch_pass`] after the head.
    ///
    /// # Errors
    /// `f`'s, the streamer's and the copies'.
    pub(crate) fn run_layers(&mut self, x: Tensor, f: &mut LayerFn<'_>) -> Result<(Tensor, Stream)> {
        let r = self.run_layers_inner(x, f);
        if r.is_err()
            && let Some(s) = self.streamer.as_mut()
        {
            s.restart()?;
        }
        r
    }

    fn run_layers_inner(&mut self, mut x: Tensor, f: &mut LayerFn<'_>) -> Result<(Tensor, Stream)> {
        let model = Arc::clone(&self.model);
        // The batch scheduler's steps run as decode does.
        self.set_phase(false)?;
        let mut x_stream = Stream::Host;
        for l in 0..self.sites.len() {
            let s = self.sites[l].stream.clone();
            x = move_to(x, &x_stream, &s)?;
            x_stream = s.clone();
            let _r = nvtx::range(&format!("layer {l}"));
            self.copies_during_cpu_layer(l)?;
            let site = &mut self.sites[l];
            let mut streamer = self.streamer.as_deref_mut();
            let (weights, _wait_s) =
                acquire_layer(&site.weights, site.roles.as_deref(), None, &model, l, streamer.as_deref_mut())?;
            let apart = site.experts.as_mut().map(|cache| ApartExperts {
                host: model.weights.layers[l].as_ref(),
                cache,
                stats: &mut self.batch_expert_stats,
            });
            let r = f(l, weights, &mut site.kv, &mut x, &s, apart);
            if let (Some(g), Some(st)) = (site.weights.group(), streamer) {
                st.release(g)?;
            }
            r?;
        }
        Ok((x, x_stream))
    }

    /// The output head and the stream it runs on.
    pub(crate) fn head_and_stream(&self) -> (&HeadWeights, &Stream) {
        (self.head.as_ref().unwrap_or(&self.model.weights.head), &self.head_stream)
    }

    /// Moves activations to the head's device.
    pub(crate) fn to_head(&self, x: Tensor, from: &Stream) -> Result<Tensor> {
        move_to(x, from, &self.head_stream)
    }

    /// After a [`Session::run_layers`] pass and its head: refills the expert caches and lets
    /// the streamer start the next pass's copies.
    pub(crate) fn end_batch_pass(&mut self) -> Result<()> {
        self.batch_expert_stats.refill_bytes += self.refill_expert_caches()?;
        let streaming = self.streaming();
        if let Some(st) = self.streamer.as_mut().filter(|_| streaming) {
            st.begin_next_pass()?;
        }
        Ok(())
    }
}

/// The weights layer `l` runs with in this pass, and the seconds the caller waited for them:
/// the model's host weights, the accelerator's copy, or a streamer slot (acquired here, so the
/// caller releases the group after computing the layer). `roles` are the tensors of a streamed
/// group when it is not the whole layer; `as_group` is the group of a cpu layer that this pass
/// streams (the whole layer).
fn acquire_layer<'a, 's>(
    weights: &'a Weights,
    roles: Option<&[Role]>,
    as_group: Option<usize>,
    model: &'a Model,
    l: usize,
    streamer: Option<&'a mut (dyn WeightStream + 's)>,
) -> Result<(LayerRef<'a>, f64)> {
    let host = || model.weights.layers[l].as_ref();
    let acquire = |g: usize| -> Result<(&'a [Tensor], f64)> {
        let st = streamer.ok_or_else(|| Error::invalid("no streamer"))?;
        let t0 = Instant::now();
        let w = st.acquire(g)?;
        Ok((w, t0.elapsed().as_secs_f64()))
    };
    if let Some(g) = as_group {
        let (w, wait) = acquire(g)?;
        return Ok((LayerRef::from_slice(w, &model.config.layer_roles)?, wait));
    }
    Ok(match weights {
        Weights::Host => (host(), 0.0),
        Weights::Owned(w) => (LayerWeights::as_ref(w), 0.0),
        Weights::Streamed(g) => {
            let (w, wait) = acquire(*g)?;
            (LayerRef::from_slice(w, roles.unwrap_or(&model.config.layer_roles))?, wait)
        }
        Weights::ExpertsStreamed(attn, g) => {
            let (w, wait) = acquire(*g)?;
            let attn = attn.as_deref().map_or_else(host, LayerWeights::as_ref);
            (attn.with_slice(w, roles.unwrap_or(&[]))?, wait)
        }
    })
}

/// A point on a stream's timeline: an instant on the host, an event on a GPU.
#[derive(Clone)]
enum Mark {
    Host(Instant),
    /// Shared: the layers of a graphed prefix share the graph's two events.
    Gpu(Arc<Event>),
}

impl Mark {
    fn now(s: &Stream) -> Result<Mark> {
        Ok(match s {
            Stream::Host => Mark::Host(Instant::now()),
            Stream::Gpu(g) => Mark::Gpu(Arc::new(g.record()?)),
        })
    }

    /// Seconds since the epoch. A cpu layer in a GPU session is measured on the host clock
    /// from the instant the epoch event was recorded (the activations' download synchronizes
    /// the two closely enough for a timeline).
    fn secs(&self, epoch: &Epoch, host0: Instant) -> Result<f64> {
        let since = |t: Instant, t0: Instant| {
            if t >= t0 { (t - t0).as_secs_f64() } else { -(t0 - t).as_secs_f64() }
        };
        Ok(match (self, epoch) {
            (Mark::Host(t), Epoch::Host(t0)) => since(*t, *t0),
            (Mark::Host(t), Epoch::Gpu(_)) => since(*t, host0),
            (Mark::Gpu(e), Epoch::Gpu(e0)) => e0.elapsed_ms(e)? as f64 / 1e3,
            (Mark::Gpu(_), Epoch::Host(_)) => 0.0,
        })
    }
}

/// Moves activations from `from`'s device to `to`'s if they differ.
fn move_to(x: Tensor, from: &Stream, to: &Stream) -> Result<Tensor> {
    if x.device() == to.device() {
        return Ok(x);
    }
    let _r = nvtx::range("move activations");
    match to {
        Stream::Host => Ok(x.to_host(from)?),
        Stream::Gpu(_) => Ok(x.to_device(to, "activations")?),
    }
}

/// The tensors of a streamed group: the whole layer, or the ones of `roles` (its attention
/// part when its experts run on the CPU), in group order.
fn group_tensors<'a>(w: &'a LayerWeights, roles: Option<&[Role]>) -> Vec<&'a Tensor> {
    match roles {
        None => w.tensors(),
        Some(roles) => roles.iter().filter_map(|r| w.get(*r)).collect(),
    }
}
