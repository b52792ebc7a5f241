//! Continuous batching: a [`Scheduler`] holds many sequences, each with its own position, KV
//! blocks and sampler, and advances every active one in one forward pass per [`Scheduler::step`].
//!
//! A step's rows are the next token of every decoding sequence plus a chunk of the prompts
//! still being prefilled (at most [`SchedulerOptions::step_tokens`] rows in all), so a new
//! request joins at the next step without stalling the running streams. The projections and
//! the FFN of all rows are one matmul over the rows; RoPE uses each row's own position;
//! attention runs per row over its own sequence's KV blocks ([`ops::paged_attention`], whose
//! result for a row does not depend on the other rows). Every projection is a matmul, even for
//! one row, so the batch changes a row's arithmetic at most through how the matmul kernel
//! groups tokens (the order of float additions). Tolerance: greedy tokens are unchanged by
//! batching, which the tests check on the default model (alone vs. batched, and against the
//! single-sequence engine).
//!
//! KV memory is a pool of fixed-size blocks ([`kv::KvPool`]). A request is admitted, in
//! arrival order, when the pool has the blocks for its prompt plus `max_tokens` (reserved up
//! front: no sequence is ever preempted); otherwise it waits. A sequence that finishes or is
//! cancelled returns its blocks at once. Admission is first come, first served and a request
//! that does not fit blocks the ones behind it, so no request starves.
//!
//! The pass runs every layer where a placement put it, as a [`Session`] does for one sequence
//! ([`Scheduler::with_layout`], [`Scheduler::from_session`]; [`Scheduler::new`] puts every
//! layer on the CPU): resident layers on the accelerator's compute stream, streamed layers in
//! a slot the session's streamer filled ahead of use (one transfer per step for every
//! sequence), cpu layers on the host kernels of [`SchedulerOptions::cpu_path`]; the activations
//! move between host and device around them. The KV pool is the session's caches, cut into
//! blocks ([`kv`]): each layer's blocks live on that layer's device and were counted against
//! its budget (the plan's) when the session was opened. On the device, attention is the CUDA
//! paged-attention kernel (`kernels/paged_attention.cu`); on the host its CPU reference.
//!
//! ```
//! use std::sync::Arc;
//!
//! use strata_model::batch::{Event, Request, Scheduler, SchedulerOptions};
//! use strata_model::gguf::GgufFile;
//! use strata_model::synth::{Preset, gguf_bytes};
//! use strata_model::{Model, SamplerConfig};
//!
//! let bytes = gguf_bytes(&Preset::by_name("tiny")?, strata_tensor::DType::Q8_0, 1)?;
//! let model = Arc::new(Model::from_file(GgufFile::from_bytes(bytes)?, "tiny.gguf".as_ref())?);
//! let opts = SchedulerOptions { context: 64, kv_blocks: 16, ..SchedulerOptions::default() };
//! let mut sched = Scheduler::new(Arc::clone(&model), &opts)?;
//! let req = |p: &[u32]| Request { prompt: p.to_vec(), max_tokens: 4, sampler: SamplerConfig::greedy(), ignore_eos: true };
//! let a = sched.submit(req(&[1, 2, 3]))?;
//! let b = sched.submit(req(&[4, 5]))?;
//! let mut tokens = (Vec::new(), Vec::new());
//! while !sched.is_idle() {
//!     for e in sched.step()? {
//!         if let Event::Token { id, token } = e {
//!             if id == a { tokens.0.push(token) } else if id == b { tokens.1.push(token) }
//!         }
//!     }
//! }
//! assert_eq!((tokens.0.len(), tokens.1.len()), (4, 4));
//! assert_eq!(sched.stats().kv_blocks_used, 0);
//! # Ok::<(), strata_model::Error>(())
//! ```

pub mod kv;

use std::collections::VecDeque;
use std::sync::Arc;

use strata_runtime::device::Accelerator;
use strata_runtime::plan::Placement;
use strata_tensor::ops::{self, CpuPath, PagedIndex, with_cpu_path};
use strata_tensor::{DType, Device, Stream, Tensor};

use crate::forward::{
    Scratch, attention_inputs, attention_output_and_ffn, attention_output_and_router, ffn_residual, head_forward,
};
use crate::model::{KvType, Model, SessionOptions};
use crate::sample::{Sampler, SamplerConfig};
use crate::session::{Layout, Session};
use crate::session_experts::experts_apart;
use crate::{Error, Result};
use kv::KvPool;

/// How a [`Scheduler`] is sized.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Most positions one sequence may use (prompt + generated); 0 = the model's training
    /// context, at most 4096.
    pub context: usize,
    /// Element type of the KV pool.
    pub kv_type: KvType,
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool (see [`SchedulerOptions::blocks_for_bytes`]).
    pub kv_blocks: usize,
    /// Most sequences in one step (decoding or prefilling).
    pub max_seqs: usize,
    /// Most rows (tokens) in one pass: one per decoding sequence, the rest prompt chunks.
    /// Must exceed `max_seqs` so a prompt always makes progress.
    pub step_tokens: usize,
    /// The CPU kernels the pass runs on.
    pub cpu_path: CpuPath,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            context: 0,
            kv_type: KvType::F16,
            block_size: 16,
            kv_blocks: 1024,
            max_seqs: 32,
            step_tokens: 256,
            cpu_path: CpuPath::default(),
        }
    }
}

impl SchedulerOptions {
    /// Checks the sizes before anything is allocated.
    ///
    /// # Errors
    /// A step that does not hold more rows than sequences, no sequence, an empty pool.
    pub fn check(&self) -> Result<()> {
        check_options(self)
    }

    /// The number of blocks `bytes` of KV memory hold for `model` with these options.
    pub fn blocks_for_bytes(&self, model: &Model, bytes: u64) -> usize {
        let per = KvPool::block_bytes(&model.config, self.block_size.max(1), self.kv_type).max(1);
        (bytes / per) as usize
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (not empty).
    pub prompt: Vec<u32>,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Sampling settings, with their own seed.
    pub sampler: SamplerConfig,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// A sequence's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It sampled an end-of-generation token (not emitted).
    EndOfGeneration,
    /// It generated `max_tokens` tokens.
    MaxTokens,
    /// The pass it was in failed (the message says why); its blocks are freed.
    Error(String),
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A sequence generated a token.
    Token {
        /// The sequence.
        id: SeqId,
        /// The token.
        token: u32,
    },
    /// A sequence ended and freed its KV blocks.
    Done {
        /// The sequence.
        id: SeqId,
        /// Why.
        reason: FinishReason,
        /// Prompt tokens it ran.
        prompt_tokens: usize,
        /// Tokens it generated.
        generated_tokens: usize,
    },
}

/// Counters for monitoring (all since the scheduler was created, except the gauges).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SchedulerStats {
    /// Sequences admitted (holding KV blocks).
    pub running: usize,
    /// Requests waiting for admission.
    pub waiting: usize,
    /// KV blocks owned by sequences.
    pub kv_blocks_used: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// Forward passes run.
    pub steps: u64,
    /// Rows in the last pass.
    pub last_batch_rows: usize,
    /// Sequences in the last pass.
    pub last_batch_seqs: usize,
    /// Prompt tokens run.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
}

struct Seq {
    id: SeqId,
    prompt: Vec<u32>,
    /// Prompt tokens in the cache.
    prefilled: usize,
    /// The sampled token not yet run (decode phase).
    next: Option<u32>,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: Sampler,
    table: Vec<u32>,
}

impl Seq {
    /// Positions in the cache.
    fn n_past(&self) -> usize {
        self.prefilled + self.generated.saturating_sub(usize::from(self.next.is_some()))
    }
}

/// Many sequences over one model, advanced together (see the module doc).
pub struct Scheduler {
    /// The placement (weights, streamer, head) and the KV caches the pool's blocks live in.
    session: Session,
    opts: SchedulerOptions,
    context: usize,
    pool: KvPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    /// Activations of the last pass, one set per device the layers ran on.
    scratch: Vec<(Stream, Scratch)>,
    stats: SchedulerStats,
}

fn check_options(opts: &SchedulerOptions) -> Result<()> {
    if opts.max_seqs == 0 || opts.step_tokens <= opts.max_seqs {
        return Err(Error::invalid(format!(
            "a step must hold more rows ({}) than sequences ({}), and at least one sequence",
            opts.step_tokens, opts.max_seqs
        )));
    }
    if opts.block_size == 0 || opts.kv_blocks == 0 {
        return Err(Error::invalid(format!(
            "a KV pool needs at least one block of at least one position (got {} blocks of {})",
            opts.kv_blocks, opts.block_size
        )));
    }
    Ok(())
}

impl Scheduler {
    /// A scheduler with every layer on the CPU and an empty pool of
    /// [`SchedulerOptions::kv_blocks`] blocks in host memory.
    ///
    /// # Errors
    /// Options out of range, or the pool does not fit in memory.
    pub fn new(model: Arc<Model>, opts: &SchedulerOptions) -> Result<Scheduler> {
        let layout = Layout::uniform(model.config.n_layers, Placement::Cpu);
        Scheduler::with_layout(model, None, &layout, opts)
    }

    /// A scheduler whose layers run as `layout` places them (resident and streamed layers on
    /// `acc`), with a pool of [`SchedulerOptions::kv_blocks`] blocks whose caches live on each
    /// layer's device and are counted against its budget.
    ///
    /// # Errors
    /// Options out of range, a layout that does not match the model or needs an accelerator,
    /// out of memory (typed; nothing stays allocated).
    pub fn with_layout(
        model: Arc<Model>,
        acc: Option<&Accelerator>,
        layout: &Layout,
        opts: &SchedulerOptions,
    ) -> Result<Scheduler> {
        check_options(opts)?;
        let rows = opts.kv_blocks.checked_mul(opts.block_size).filter(|&r| r <= 1 << 20).ok_or_else(|| {
            Error::invalid(format!(
                "{} KV blocks of {} positions exceed the 1048576 cache rows a pool holds; lower the KV memory",
                opts.kv_blocks, opts.block_size
            ))
        })?;
        let so =
            SessionOptions { context: rows, kv_type: opts.kv_type, batch: opts.step_tokens, prefill_stream_min: None };
        let session = with_cpu_path(opts.cpu_path, || Session::with_layout(model, acc, layout, &so))?;
        Scheduler::from_session(session, opts)
    }

    /// A scheduler over an opened session (e.g. an [`crate::Engine`]'s, planned with the offload
    /// options): its placement runs the layers, and its KV caches, cut into blocks of
    /// [`SchedulerOptions::block_size`] positions, are the pool. So the pool holds
    /// `session.context() / block_size` blocks (what the plan budgeted for the session's
    /// context) and [`SchedulerOptions::kv_blocks`] is not read. The session's conversation, if
    /// any, is overwritten.
    ///
    /// # Errors
    /// Options out of range, a context shorter than one block.
    pub fn from_session(session: Session, opts: &SchedulerOptions) -> Result<Scheduler> {
        let n_blocks = session.context() / opts.block_size.max(1);
        let opts = SchedulerOptions { kv_blocks: n_blocks, ..opts.clone() };
        check_options(&opts)?;
        let pool = KvPool::new(n_blocks, opts.block_size)?;
        let cfg = &session.model().config;
        let context = if opts.context == 0 { cfg.n_ctx_train.min(4096) } else { opts.context };
        Ok(Scheduler {
            session,
            opts,
            context,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            scratch: Vec::new(),
            stats: SchedulerStats::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        self.session.model()
    }

    /// The session whose placement runs the pass (its device, streamer slots).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Most positions one sequence may use.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The KV pool (block size, capacity, free blocks).
    pub fn pool(&self) -> &KvPool {
        &self.pool
    }

    /// No sequence running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Gauges and counters.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_blocks_used: self.pool.n_blocks() - self.pool.n_free(),
            kv_blocks_total: self.pool.n_blocks(),
            ..self.stats.clone()
        }
    }

    /// Queues a request; it joins the batch at a later step, when its KV blocks are free.
    ///
    /// # Errors
    /// An empty prompt, ids outside the vocabulary, `max_tokens` 0, invalid sampling settings,
    /// [`Error::ContextFull`] when prompt + `max_tokens` exceed [`Scheduler::context`], or a
    /// request larger than the whole KV pool.
    pub fn submit(&mut self, req: Request) -> Result<SeqId> {
        let cfg = &self.session.model().config;
        if req.prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty: nothing to continue from"));
        }
        if req.max_tokens == 0 {
            return Err(Error::invalid("max_tokens must be at least 1"));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= cfg.n_vocab) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.n_vocab)));
        }
        let needed = req.prompt.len().saturating_add(req.max_tokens);
        if needed > self.context {
            return Err(Error::ContextFull {
                needed,
                prompt: req.prompt.len(),
                generate: req.max_tokens,
                context: self.context,
                trained: cfg.n_ctx_train,
            });
        }
        if self.pool.blocks_for(needed) > self.pool.n_blocks() {
            return Err(Error::invalid(format!(
                "{needed} positions need {} KV blocks of {}, the pool holds {}; raise the KV memory",
                self.pool.blocks_for(needed),
                self.pool.block_size(),
                self.pool.n_blocks()
            )));
        }
        let mut sampler = Sampler::new(req.sampler)?;
        for &t in &req.prompt {
            sampler.accept(t);
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Seq {
            id,
            prompt: req.prompt,
            prefilled: 0,
            next: None,
            generated: 0,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            sampler,
            table: Vec::new(),
        });
        Ok(id)
    }

    /// Drops a sequence, waiting or running, and frees its KV blocks; false when it is not
    /// here (finished already).
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let s = self.running.remove(i);
            self.pool.release(s.table);
            return true;
        }
        false
    }

    /// Admits waiting requests whose blocks fit, in arrival order.
    fn admit(&mut self) {
        while self.running.len() < self.opts.max_seqs {
            let Some(front) = self.waiting.front() else { break };
            let need = self.pool.blocks_for(front.prompt.len() + front.max_tokens);
            let Some(blocks) = self.pool.alloc(need) else { break };
            if let Some(mut s) = self.waiting.pop_front() {
                s.table = blocks;
                self.running.push(s);
            }
        }
    }

    /// Admits what fits, runs one forward pass over every running sequence (decode rows, then
    /// prompt chunks) and samples. Returns the tokens generated and the sequences that ended;
    /// a pass that fails ends its sequences with [`FinishReason::Error`]. Does nothing when
    /// idle.
    ///
    /// # Errors
    /// None at present: failures of the pass are reported per sequence (the `Result` leaves
    /// room for failures that are not a sequence's).
    pub fn step(&mut self) -> Result<Vec<Event>> {
        self.admit();
        // (index into running, first position, tokens) for each sequence in the pass.
        let mut plan: Vec<(usize, usize, Vec<u32>)> = Vec::new();
        let mut budget = self.opts.step_tokens;
        for (i, s) in self.running.iter().enumerate() {
            if let Some(t) = s.next {
                plan.push((i, s.n_past(), vec![t]));
                budget -= 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if s.next.is_none() && s.prefilled < s.prompt.len() && budget > 0 {
                let n = (s.prompt.len() - s.prefilled).min(budget);
                plan.push((i, s.prefilled, s.prompt[s.prefilled..s.prefilled + n].to_vec()));
                budget -= n;
            }
        }
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let result = with_cpu_path(self.opts.cpu_path, || self.pass(&plan));
        let mut events = Vec::new();
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        match result {
            Ok(logits) => {
                let model = Arc::clone(self.session.model());
                let n_vocab = model.config.n_vocab;
                let tok = &model.tokenizer;
                let mut row = 0;
                for (i, _, tokens) in &plan {
                    let s = &mut self.running[*i];
                    if s.next.take().is_none() {
                        s.prefilled += tokens.len();
                        self.stats.prompt_tokens += tokens.len() as u64;
                        if s.prefilled < s.prompt.len() {
                            continue;
                        }
                    }
                    let l = &logits[row * n_vocab..(row + 1) * n_vocab];
                    row += 1;
                    let id = s.sampler.sample(l);
                    if !s.ignore_eos && tok.is_eog(id) {
                        done.push((*i, FinishReason::EndOfGeneration));
                        continue;
                    }
                    s.sampler.accept(id);
                    s.generated += 1;
                    self.stats.generated_tokens += 1;
                    events.push(Event::Token { id: s.id, token: id });
                    if s.generated >= s.max_tokens {
                        done.push((*i, FinishReason::MaxTokens));
                    } else {
                        s.next = Some(id);
                    }
                }
            }
            Err(e) => done.extend(plan.iter().map(|(i, _, _)| (*i, FinishReason::Error(e.to_string())))),
        }
        self.stats.steps += 1;
        self.stats.last_batch_rows = plan.iter().map(|p| p.2.len()).sum();
        self.stats.last_batch_seqs = plan.len();
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason) in done {
            let s = self.running.remove(i);
            events.push(Event::Done { id: s.id, reason, prompt_tokens: s.prompt.len(), generated_tokens: s.generated });
            self.pool.release(s.table);
        }
        Ok(events)
    }

    /// One forward pass over the planned rows, every layer where the session's placement put
    /// it; the logits [k, n_vocab] of each sequence's last row, for the sequences that will
    /// sample (decode rows, and prompts whose last chunk ran).
    fn pass(&mut self, plan: &[(usize, usize, Vec<u32>)]) -> Result<Vec<f32>> {
        let model = Arc::clone(self.session.model());
        let cfg = &model.config;
        let host = Stream::Host;
        let index = PassIndex::new(&self.pool, &self.running, plan)?;
        let r = index.rows();
        let ids = Tensor::from_i32(&[r], index.tokens.clone())?;
        let mut x = Tensor::zeros(DType::F32, &[r, cfg.n_embd], &host, "embeddings")?;
        ops::embedding_gather(&model.weights.embedding, &ids, &mut x, &host)?;
        if let Some(f) = cfg.embed_scale {
            let rows = x;
            x = Tensor::zeros(DType::F32, &[r, cfg.n_embd], &host, "scaled embeddings")?;
            ops::scale(&rows, f, &mut x, &host)?;
        }
        let host_index = index.tensors()?;
        let mut on_device: Option<(Device, [Tensor; 4])> = None;
        let scratch = &mut self.scratch;
        let block_size = self.pool.block_size();
        let (x, x_stream) = self.session.run_layers(x, &mut |l, w, kv, x, s, apart| {
            if on_device.as_ref().is_none_or(|(d, _)| *d != s.device()) {
                let moved = host_index.iter().map(|t| t.to_device(s, "batch index")).collect::<Result<Vec<_>, _>>()?;
                let arr: [Tensor; 4] = moved.try_into().map_err(|_| Error::invalid("batch index tensors"))?;
                on_device = Some((s.device(), arr));
            }
            let [positions, cache_rows, tables, starts] =
                &on_device.as_ref().ok_or_else(|| Error::invalid("batch index"))?.1;
            let mut sc = match scratch.iter().position(|(st, sc)| st == s && sc.n_tokens == r) {
                Some(i) => scratch.swap_remove(i).1,
                None => {
                    scratch.retain(|(st, _)| st != s);
                    Scratch::new(cfg, r, s)?
                }
            };
            let res = (|| {
                attention_inputs(cfg, l, w, x, positions, &mut sc, true, s)?;
                ops::kv_append(sc.k(), cache_rows, &mut kv.k, s)?;
                ops::kv_append(sc.v(), cache_rows, &mut kv.v, s)?;
                let (q, att) = sc.q_and_att_mut();
                let index = PagedIndex { tables, table_start: starts, positions, block_size };
                ops::paged_attention(q, &kv.k, &kv.v, &index, cfg.attn_scale, cfg.layer_window(l), att, s)?;
                let Some(apart) = apart else { return attention_output_and_ffn(cfg, w, x, &mut sc, true, s) };
                // Experts placed apart (`--cpu-moe`, an expert cache): the rows go to the host
                // for the experts the device does not hold, and their sum comes back.
                if let Some(routing) = attention_output_and_router(cfg, w, x, &mut sc, true, s)? {
                    experts_apart(cfg, &routing, &mut sc, apart, s)?;
                    ffn_residual(w, x, &mut sc, cfg, s)?;
                }
                Ok(())
            })();
            scratch.push((s.clone(), sc));
            res
        })?;
        drop(on_device);
        // The streamer starts the next pass's copies whether or not the head succeeds, so a
        // failed step leaves the scheduler usable.
        let out = self.head(cfg, x, &x_stream, &index.sample_rows);
        self.session.end_batch_pass()?;
        let out = out?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(format!(
                "logit {} of a batched pass is {}: refusing to sample from non-finite logits",
                i % cfg.n_vocab,
                out[i]
            )));
        }
        Ok(out)
    }
}

impl Scheduler {
    /// The logits of rows `sample` of the layers' output `x` (on `x_stream`'s device), through
    /// the head on its device.
    fn head(
        &self,
        cfg: &crate::config::LlamaConfig,
        x: Tensor,
        x_stream: &Stream,
        sample: &[usize],
    ) -> Result<Vec<f32>> {
        let host = Stream::Host;
        let x = if x.device() == Device::Cpu { x } else { x.to_host(x_stream)? };
        let xs = x.as_f32()?;
        let d = cfg.n_embd;
        let picked: Vec<f32> = sample.iter().flat_map(|&i| xs[i * d..(i + 1) * d].iter().copied()).collect();
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let picked = self.session.to_head(Tensor::from_f32(&[sample.len(), d], picked)?, &host)?;
        let (head, head_stream) = self.session.head_and_stream();
        let logits = head_forward(cfg, head, &picked, 0..sample.len(), head_stream)?;
        Ok(logits.to_vec_f32(head_stream)?)
    }
}

/// The rows of one pass as the layers see them: token, logical position and cache row of each
/// row, every sequence's block table (concatenated) and where each row's starts, and the rows
/// whose logits are sampled.
struct PassIndex {
    tokens: Vec<i32>,
    positions: Vec<i32>,
    cache_rows: Vec<i32>,
    tables: Vec<i32>,
    table_start: Vec<i32>,
    sample_rows: Vec<usize>,
}

impl PassIndex {
    fn new(pool: &KvPool, running: &[Seq], plan: &[(usize, usize, Vec<u32>)]) -> Result<PassIndex> {
        let mut ix = PassIndex {
            tokens: Vec::new(),
            positions: Vec::new(),
            cache_rows: Vec::new(),
            tables: Vec::new(),
            table_start: Vec::new(),
            sample_rows: Vec::new(),
        };
        // The pool holds fewer than 2^31 rows (checked by `KvPool::new`), so every index fits.
        let i32_of = |v: usize| i32::try_from(v).map_err(|_| Error::invalid(format!("batch index {v} overflows i32")));
        for (i, pos0, toks) in plan {
            let s = &running[*i];
            let start = i32_of(ix.tables.len())?;
            for &b in &s.table {
                ix.tables.push(i32_of(b as usize)?);
            }
            for (k, &t) in toks.iter().enumerate() {
                let p = pos0 + k;
                ix.tokens.push(t as i32);
                ix.positions.push(i32_of(p)?);
                let r = pool.row(&s.table, p).ok_or_else(|| Error::invalid("KV table too short"))?;
                ix.cache_rows.push(i32_of(r)?);
                ix.table_start.push(start);
            }
            if s.next.is_some() || pos0 + toks.len() == s.prompt.len() {
                ix.sample_rows.push(ix.tokens.len() - 1);
            }
        }
        Ok(ix)
    }

    fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// positions, cache rows, tables, table starts as host i32 tensors.
    fn tensors(&self) -> Result<[Tensor; 4]> {
        let t = |v: &[i32]| Tensor::from_i32(&[v.len()], v.to_vec());
        Ok([t(&self.positions)?, t(&self.cache_rows)?, t(&self.tables)?, t(&self.table_start)?])
    }
}
