//! Continuous batching: a [`Scheduler`] holds many sequences, each with its own position, KV
//! blocks and sampler, and advances every active one in one forward pass per [`Scheduler::step`].
//!
//! A step's rows are the next token of every decoding sequence plus a chunk of the prompts
//! still being prefilled (at most [`SchedulerOptions::step_tokens`] rows in all), so a new
//! request joins at the next step without stalling the running streams. The projections and
//! the FFN of all rows are one matmul over the rows; RoPE uses each row's own position;
//! attention runs per row over its own sequence's KV blocks ([`kv::paged_attention`], whose
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
//! The batched pass runs on the CPU (the host's kernels, on the engine's [`CpuPath`]): resident
//! or streamed GPU placements are not batched yet, and [`Scheduler::new`] takes a model, not a
//! session, so there is no placement to get wrong.
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

use strata_tensor::ops::{self, CpuPath, with_cpu_path};
use strata_tensor::{DType, Stream, Tensor};

use crate::forward::{Scratch, attention_inputs, attention_output_and_ffn, head_forward};
use crate::model::{KvType, Model};
use crate::sample::{Sampler, SamplerConfig};
use crate::{Error, Result};
use kv::{AttnRow, KvPool};

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
    model: Arc<Model>,
    opts: SchedulerOptions,
    context: usize,
    pool: KvPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    scratch: Option<Scratch>,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler with an empty pool of [`SchedulerOptions::kv_blocks`] blocks.
    ///
    /// # Errors
    /// Options out of range, or the pool does not fit in memory.
    pub fn new(model: Arc<Model>, opts: &SchedulerOptions) -> Result<Scheduler> {
        let cfg = &model.config;
        if opts.max_seqs == 0 || opts.step_tokens <= opts.max_seqs {
            return Err(Error::invalid(format!(
                "a step must hold more rows ({}) than sequences ({}), and at least one sequence",
                opts.step_tokens, opts.max_seqs
            )));
        }
        let context = if opts.context == 0 { cfg.n_ctx_train.min(4096) } else { opts.context };
        let pool = KvPool::new(cfg, opts.kv_blocks, opts.block_size, opts.kv_type)?;
        Ok(Scheduler {
            model,
            opts: opts.clone(),
            context,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            scratch: None,
            stats: SchedulerStats::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
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
        let cfg = &self.model.config;
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
                let n_vocab = self.model.config.n_vocab;
                let tok = &self.model.tokenizer;
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

    /// One forward pass over the planned rows; the logits [k, n_vocab] of each sequence's last
    /// row, for the sequences that will sample (decode rows, and prompts whose last chunk ran).
    fn pass(&mut self, plan: &[(usize, usize, Vec<u32>)]) -> Result<Vec<f32>> {
        let model = Arc::clone(&self.model);
        let cfg = &model.config;
        let host = Stream::Host;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut cache_rows = Vec::new();
        let mut sample_rows = Vec::new();
        for (i, pos0, toks) in plan {
            let s = &self.running[*i];
            for (k, &t) in toks.iter().enumerate() {
                let p = pos0 + k;
                tokens.push(t as i32);
                positions.push(p as i32);
                let r = self.pool.row(&s.table, p).ok_or_else(|| Error::invalid("KV table too short"))?;
                cache_rows.push(r as i32);
            }
            if s.next.is_some() || pos0 + toks.len() == s.prompt.len() {
                sample_rows.push(tokens.len() - 1);
            }
        }
        let attn_rows: Vec<AttnRow<'_>> = plan
            .iter()
            .flat_map(|(i, pos0, toks)| {
                let table = &self.running[*i].table;
                (0..toks.len()).map(move |k| AttnRow { table, pos: pos0 + k })
            })
            .collect();
        let r = tokens.len();
        let ids = Tensor::from_i32(&[r], tokens)?;
        let mut x = Tensor::zeros(DType::F32, &[r, cfg.n_embd], &host, "embeddings")?;
        ops::embedding_gather(&model.weights.embedding, &ids, &mut x, &host)?;
        if let Some(f) = cfg.embed_scale {
            let rows = x;
            x = Tensor::zeros(DType::F32, &[r, cfg.n_embd], &host, "scaled embeddings")?;
            ops::scale(&rows, f, &mut x, &host)?;
        }
        let positions = Tensor::from_i32(&[r], positions)?;
        let cache_rows = Tensor::from_i32(&[r], cache_rows)?;
        let mut sc = match self.scratch.take() {
            Some(sc) if sc.n_tokens == r => sc,
            _ => Scratch::new(cfg, r, &host)?,
        };
        for l in 0..cfg.n_layers {
            let w = model.weights.layers[l].as_ref();
            attention_inputs(cfg, l, w, &x, &positions, &mut sc, true, &host)?;
            let kv = &mut self.pool.layers[l];
            ops::kv_append(sc.k(), &cache_rows, &mut kv.k, &host)?;
            ops::kv_append(sc.v(), &cache_rows, &mut kv.v, &host)?;
            let (q, att) = sc.q_and_att_mut();
            kv::paged_attention(cfg, l, &self.pool, &attn_rows, q, att)?;
            attention_output_and_ffn(cfg, w, &mut x, &mut sc, true, &host)?;
        }
        self.scratch = Some(sc);
        let xs = x.as_f32()?;
        let d = cfg.n_embd;
        let picked: Vec<f32> = sample_rows.iter().flat_map(|&i| xs[i * d..(i + 1) * d].iter().copied()).collect();
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let picked = Tensor::from_f32(&[sample_rows.len(), d], picked)?;
        let logits = head_forward(cfg, &model.weights.head, &picked, 0..sample_rows.len(), &host)?;
        let out = logits.to_vec_f32(&host)?;
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
