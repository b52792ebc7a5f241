//! Speculative decoding: a cheap drafter proposes up to K tokens, the target model checks them
//! all in one multi-token pass (the prefill path, KV positions appended), keeps the longest
//! prefix it agrees with plus one token of its own, and rolls its KV cache back past the rest
//! ([`Session::truncate`]).
//!
//! Two drafters:
//! - **prompt lookup** ([`Drafter::Lookup`]`(n)`): find the most recent earlier occurrence of
//!   the last `n` tokens of the prompt and text so far, and propose the tokens that followed it.
//!   No second model; it pays off where the output copies from the input (code editing,
//!   extraction, summaries that quote). [`Drafter::LookupLongest`] (the `--lookup` default)
//!   matches the longest suffix it can, from `max` tokens down to `min`, so a longer context
//!   picks among the places a short one matches.
//! - **a draft model** ([`Drafter::Model`]): a small model with the same vocabulary runs ahead
//!   one token at a time; its KV cache is kept in step with the accepted text and rolled back
//!   with the target's.
//!
//! Acceptance is the standard speculative-sampling rule (Leviathan et al. 2023; Chen et al.
//! 2023): with the target's distribution p and the drafter's q, a drafted token d is kept with
//! probability min(1, p(d)/q(d)); on rejection the token is drawn from max(0, p − q)
//! normalised. The output is then distributed exactly as the target's own sampler. Prompt
//! lookup is deterministic (q is a point mass on d), so d is kept with probability p(d) and a
//! rejection draws from p without d. Greedy decoding (temperature 0) makes p a point mass on the
//! argmax: a drafted token is kept when it is the target's argmax, and the output is plain
//! greedy decoding token for token, up to the rounding difference between the multi-token and
//! the one-token pass (see `docs/cpu-bench.md`). p is [`Sampler::probs`] in both paths.
//!
//! K adapts to the acceptance: it grows by 2 after a round whose drafts were all kept, falls to
//! one more than the kept count after a partial round, halves after a round that kept none, and
//! stays in 2..=[`Speculative::draft_max`] with prompt lookup (a drafted token costs a lookup
//! and a little of a pass that reads the weights once for all its tokens), 1..= with a draft
//! model (each drafted token costs a pass of the draft model).

use std::time::Instant;

use crate::generate::{GenerateOptions, Generation, StopFilter, StopReason, Timings, flush_text};
use crate::model::Model;
use crate::sample::Sampler;
use crate::session::Session;
use crate::tokenizer::StreamDecoder;
use crate::{Error, Result};

/// Where drafted tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drafter {
    /// Prompt lookup: match the last `n` tokens (the n-gram length, ≥ 1) against the prompt and
    /// the text generated so far, and propose what followed the most recent earlier match.
    Lookup(usize),
    /// Prompt lookup by the longest match: the most recent earlier occurrence of the longest
    /// suffix of the prompt and text so far, of `max` tokens at most and `min` at least
    /// (1 ≤ min ≤ max), and what followed it. `Lookup(n)` is `LookupLongest { max: n, min: n }`.
    LookupLongest {
        /// The longest suffix tried.
        max: usize,
        /// The shortest suffix accepted (shorter matches draft nothing).
        min: usize,
    },
    /// A draft model whose session is passed to [`generate_speculative`] (the [`crate::Engine`]
    /// passes the one opened with [`crate::Engine::open_draft`]).
    Model,
}

/// Speculative decoding options.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Speculative {
    /// The drafter.
    pub drafter: Drafter,
    /// Most tokens drafted per round (≥ 1); the round's length adapts below it.
    pub draft_max: usize,
}

/// The default `draft_max`.
pub const DEFAULT_DRAFT_MAX: usize = 8;

/// The `draft_max` of [`Speculative::lookup_default`].
pub const LOOKUP_DEFAULT_DRAFT_MAX: usize = 6;

impl Speculative {
    /// Prompt lookup with n-grams of `n` tokens and the default `draft_max`.
    pub fn lookup(n: usize) -> Speculative {
        Speculative { drafter: Drafter::Lookup(n), draft_max: DEFAULT_DRAFT_MAX }
    }

    /// The setting of `--lookup` with no N: the longest match of 4 down to 2 tokens, at most
    /// [`LOOKUP_DEFAULT_DRAFT_MAX`] drafted tokens per round. Chosen by measurement on the
    /// default model (`scripts/bench-lookup.py`, see `docs/cpu-bench.md`).
    pub fn lookup_default() -> Speculative {
        Speculative { drafter: Drafter::LookupLongest { max: 4, min: 2 }, draft_max: LOOKUP_DEFAULT_DRAFT_MAX }
    }

    /// A draft model with the default `draft_max`.
    pub fn draft_model() -> Speculative {
        Speculative { drafter: Drafter::Model, draft_max: DEFAULT_DRAFT_MAX }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `--draft-max 0` or `--lookup 0`, named.
    pub fn validate(&self) -> Result<()> {
        if self.draft_max == 0 {
            return Err(Error::invalid("--draft-max 0 is invalid: a round drafts at least 1 token"));
        }
        if self.drafter == Drafter::Lookup(0) {
            return Err(Error::invalid("--lookup 0 is invalid: the n-gram to match is at least 1 token long"));
        }
        if let Drafter::LookupLongest { max, min } = self.drafter
            && (min == 0 || min > max)
        {
            return Err(Error::invalid(format!(
                "a longest-match lookup of {max} down to {min} tokens is invalid: it needs 1 <= min <= max"
            )));
        }
        Ok(())
    }
}

/// What speculative decoding did, for `--stats` and `--json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpeculativeStats {
    /// "lookup N" or "draft model".
    pub drafter: String,
    /// Target passes that checked at least one drafted token.
    pub draft_rounds: usize,
    /// Target passes of the decode loop (with or without drafted tokens; the prompt's not
    /// counted).
    pub target_passes: usize,
    /// Tokens drafted.
    pub drafted_tokens: usize,
    /// Drafted tokens the target kept.
    pub accepted_tokens: usize,
    /// accepted / drafted (0 when nothing was drafted).
    pub acceptance_rate: f64,
    /// Tokens the decode loop output per target pass (1.0 is plain decoding).
    pub tokens_per_target_pass: f64,
    /// Time drafting (lookup, or the draft model's passes), seconds.
    pub draft_seconds: f64,
    /// Time in the target's verification passes, seconds.
    pub verify_seconds: f64,
    /// Target passes that checked no drafted token (the lookup found no match, or one token
    /// was left to generate).
    pub rounds_without_draft: usize,
    /// Rounds by tokens drafted: entry k counts the passes that checked k drafted tokens.
    pub draft_lengths: Vec<usize>,
    /// Draft rounds by drafted tokens kept: entry a counts the rounds that kept a of them.
    pub accepted_lengths: Vec<usize>,
    /// Target passes by tokens run: entry t counts the passes of t tokens (the pending token
    /// and t − 1 drafted ones).
    pub pass_tokens: Vec<usize>,
    /// Wall time of those passes (the forward pass only), seconds: entry t sums the passes of
    /// t tokens, so `pass_seconds[t] / pass_tokens[t]` is one such pass.
    pub pass_seconds: Vec<f64>,
    /// Of `pass_seconds`, the time in the layers (entry t sums the passes of t tokens); the rest
    /// is the embedding, the final norm and output head, and the logits' copy.
    pub pass_layer_seconds: Vec<f64>,
    /// Time choosing and checking the tokens from the passes' logits (sampling, argmax), and
    /// emitting them, seconds.
    pub check_seconds: f64,
}

/// Adds `v` at `i` of a histogram, growing it as needed.
fn bump<T: Copy + Default + std::ops::AddAssign>(hist: &mut Vec<T>, i: usize, v: T) {
    if hist.len() <= i {
        hist.resize(i + 1, T::default());
    }
    hist[i] += v;
}

/// Refuses a draft model whose vocabulary differs from the target's: a different size or a
/// different token at any id (then the ids the draft proposes mean other text).
///
/// # Errors
/// [`Error::Invalid`] naming both files and the first difference.
pub fn check_draft_vocab(target: &Model, draft: &Model) -> Result<()> {
    let (t, d) = (&target.tokenizer, &draft.tokenizer);
    let (tp, dp) = (target.path.display(), draft.path.display());
    if target.config.n_vocab != draft.config.n_vocab || t.vocab_size() != d.vocab_size() {
        return Err(Error::invalid(format!(
            "the draft model {dp} has a vocabulary of {} tokens ({} logits), the model {tp} has {} ({} logits): a \
             draft model must share the model's tokenizer",
            d.vocab_size(),
            draft.config.n_vocab,
            t.vocab_size(),
            target.config.n_vocab
        )));
    }
    for id in 0..t.vocab_size() as u32 {
        if t.token_bytes(id) != d.token_bytes(id) || t.token_text(id) != d.token_text(id) {
            return Err(Error::invalid(format!(
                "the draft model {dp} has another tokenizer than the model {tp}: token {id} is {:?} in the draft, {:?} \
                 in the model",
                d.token_text(id).unwrap_or_default(),
                t.token_text(id).unwrap_or_default()
            )));
        }
    }
    for (what, a, b) in [("BOS", t.bos(), d.bos()), ("EOS", t.eos(), d.eos())] {
        if a != b {
            return Err(Error::invalid(format!(
                "the draft model {dp} has {what} token {b:?}, the model {tp} has {a:?}: a draft model must share the \
                 model's tokenizer"
            )));
        }
    }
    Ok(())
}

/// The tokens that followed the most recent earlier occurrence of the last `n` tokens of
/// `history`, at most `k` of them (empty when there is no match).
pub fn lookup_draft(history: &[u32], n: usize, k: usize) -> Vec<u32> {
    lookup_longest(history, n, n, k)
}

/// The tokens that followed the most recent earlier occurrence of the longest suffix of
/// `history` that occurs earlier, of at most `max` tokens and at least `min` (≥ 1), at most `k`
/// of them (empty when no suffix of `min` tokens occurs earlier). An occurrence may overlap the
/// suffix (in `1 1 1` the last `1 1` occurs at 0, followed by 1).
pub fn lookup_longest(history: &[u32], max: usize, min: usize, k: usize) -> Vec<u32> {
    let len = history.len();
    let min = min.max(1);
    if k == 0 || max < min || len <= min {
        return Vec::new();
    }
    // `start`: where the continuation of an occurrence begins (the occurrence ends before it);
    // its length is how many tokens before `start` equal the last ones of the history.
    let matched = |start: usize| (1..=max.min(start)).take_while(|&i| history[start - i] == history[len - i]).count();
    let mut best = (0, 0);
    for start in (min..len).rev() {
        let m = matched(start);
        if m > best.1 {
            best = (start, m);
            if m == max {
                break;
            }
        }
    }
    let (start, m) = best;
    if m < min {
        return Vec::new();
    }
    history[start..(start + k).min(len)].to_vec()
}

/// The next K from this round's (see the module doc), in `floor..=max` (floor ≤ max).
fn adapt(k: usize, drafted: usize, accepted: usize, floor: usize, max: usize) -> usize {
    let next = if drafted == 0 {
        k
    } else if accepted == drafted {
        k + 2
    } else if accepted == 0 {
        k / 2
    } else {
        accepted + 1
    };
    next.clamp(floor.clamp(1, max), max)
}

/// A distribution of [`Sampler::probs`]: `(id, probability)` pairs.
type Dist = Vec<(u32, f64)>;

/// A drafted token and the draft's distribution it was drawn from (empty: a point mass on it).
type Draft = (u32, Dist);

/// A draft model's session and the tokens its KV cache holds (from position 0).
struct DraftModel<'a> {
    session: &'a mut Session,
    fed: Vec<u32>,
    /// Proposes from the same transformed distribution as the target's sampler, with its own
    /// generator (None when greedy: the argmax).
    sampler: Option<Sampler>,
}

impl DraftModel<'_> {
    /// Up to `k` tokens continuing `history`, each with the draft's distribution it was drawn
    /// from (empty when greedy: a point mass). The draft's cache is first rolled back to its
    /// longest prefix of `history`; fewer tokens when its context is nearly full.
    fn draft(&mut self, history: &[u32], k: usize, target: &Sampler) -> Result<Vec<Draft>> {
        // Room in the draft's context: the history and k − 1 drafted tokens.
        let ctx = self.session.context();
        if history.len() > ctx {
            return Ok(Vec::new());
        }
        let k = k.min(ctx - history.len() + 1);
        let common = self.fed.iter().zip(history).take_while(|(a, b)| a == b).count();
        // At least one token runs, so there are logits to draft from.
        let common = common.min(history.len() - 1);
        self.session.truncate(common);
        self.fed.truncate(common);
        let mut logits = self.session.forward(&history[common..], false)?;
        self.fed.extend_from_slice(&history[common..]);
        let mut out = Vec::with_capacity(k);
        // The target's recent tokens (for the penalty), a generator carried across rounds.
        let mut sampler = self.sampler.as_mut().map(|own| target.fork(own.uniform().to_bits()));
        for j in 0..k {
            let (d, q) = match sampler.as_mut() {
                Some(s) => {
                    let q = s.probs(&logits);
                    let d = s.draw(&q);
                    s.accept(d);
                    (d, q)
                }
                None => (crate::sample::argmax(&logits), Vec::new()),
            };
            out.push((d, q));
            if j + 1 < k {
                logits = self.session.forward(&[d], false)?;
                self.fed.push(d);
            }
        }
        Ok(out)
    }
}

/// Emits accepted tokens as plain decoding does: end-of-generation, stop strings, the limit.
struct Emitter<'a> {
    opts: &'a GenerateOptions,
    model: &'a Model,
    decoder: StreamDecoder<'a>,
    filter: StopFilter<'a>,
    text: String,
    generated: Vec<u32>,
    reason: Option<StopReason>,
}

impl Emitter<'_> {
    /// Takes one token; false once generation is over.
    fn push(&mut self, id: u32, sampler: &mut Sampler, on_text: &mut impl FnMut(&str)) -> bool {
        if !self.opts.ignore_eos && self.model.tokenizer.is_eog(id) {
            self.reason = Some(StopReason::EndOfGeneration);
            return false;
        }
        self.generated.push(id);
        sampler.accept(id);
        let (piece, stopped) = self.filter.push(&self.decoder.push(id));
        self.text.push_str(&piece);
        on_text(&piece);
        if stopped {
            self.reason = Some(StopReason::StopString);
            return false;
        }
        if self.generated.len() >= self.opts.max_tokens {
            self.reason = Some(StopReason::MaxTokens);
            return false;
        }
        true
    }
}

/// The probability of `id` in a distribution of [`Sampler::probs`].
fn prob(p: &[(u32, f64)], id: u32) -> f64 {
    p.iter().find(|x| x.0 == id).map_or(0.0, |x| x.1)
}

/// Decides one drafted token against the target's distribution `p`: `Ok(())` keeps it,
/// `Err(token)` rejects it and gives the token to output instead.
fn verify(sampler: &mut Sampler, p: &[(u32, f64)], d: u32, q: &[(u32, f64)]) -> std::result::Result<(), u32> {
    if sampler.config().temperature == 0.0 {
        let best = sampler.pick(p);
        return if best == d { Ok(()) } else { Err(best) };
    }
    // q empty: a point mass on d (prompt lookup, or a greedy draft model).
    let qd = if q.is_empty() { 1.0 } else { prob(q, d) };
    let pd = prob(p, d);
    // Keep with probability min(1, p(d)/q(d)); qd > 0 since d was drawn from q.
    if sampler.uniform() * qd < pd {
        return Ok(());
    }
    let residual: Vec<(u32, f64)> = if q.is_empty() {
        p.iter().copied().filter(|x| x.0 != d).collect()
    } else {
        p.iter().map(|&(id, pi)| (id, (pi - prob(q, id)).max(0.0))).filter(|x| x.1 > 0.0).collect()
    };
    // An empty residual has probability 0 of being reached; fall back to p itself.
    Err(if residual.is_empty() { sampler.draw(p) } else { sampler.draw(&residual) })
}

/// [`crate::generate`](fn@crate::generate) with speculative decoding as [`GenerateOptions::speculative`] says
/// (plain decoding when it is `None`). `draft` is the draft model's session for
/// [`Drafter::Model`]: it is reset and sees the prompt and the generated text only (not what
/// `target` held before), and must share the target's vocabulary (see [`check_draft_vocab`]).
///
/// The target's cache ends as plain decoding leaves it: at most the prompt and the generated
/// tokens, in order.
///
/// # Errors
/// As [`crate::generate`](fn@crate::generate); invalid speculative options; [`Drafter::Model`] without a draft
/// session, or one whose vocabulary size differs.
pub fn generate_speculative(
    target: &mut Session,
    draft: Option<&mut Session>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let Some(spec) = &opts.speculative else {
        return crate::generate(target, prompt, opts, on_text);
    };
    spec.validate()?;
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty: nothing to continue from"));
    }
    let base = target.n_past();
    let needed = base + prompt.len() + opts.max_tokens;
    if needed > target.context() {
        return Err(Error::ContextFull {
            needed,
            prompt: base + prompt.len(),
            generate: opts.max_tokens,
            context: target.context(),
            trained: target.model().config.n_ctx_train,
        });
    }
    let model = std::sync::Arc::clone(target.model());
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let greedy = opts.sampler.temperature == 0.0;
    let mut drafter = match (spec.drafter, draft) {
        (Drafter::Lookup(_) | Drafter::LookupLongest { .. }, _) => None,
        (Drafter::Model, None) => {
            return Err(Error::invalid("speculative decoding with a draft model needs the draft model's session"));
        }
        (Drafter::Model, Some(s)) => {
            if s.model().config.n_vocab != model.config.n_vocab {
                return Err(Error::invalid(format!(
                    "the draft model {} has {} logits per token, the model {} has {}",
                    s.model().path.display(),
                    s.model().config.n_vocab,
                    model.path.display(),
                    model.config.n_vocab
                )));
            }
            s.reset();
            let seed = opts.sampler.seed ^ 0xD2AF_7000_0000_0001;
            let own = (!greedy).then(|| sampler.fork(seed));
            Some(DraftModel { session: s, fed: Vec::new(), sampler: own })
        }
    };
    for &id in prompt {
        sampler.accept(id);
    }
    let t0 = Instant::now();
    let logits = target.forward(prompt, false)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut em = Emitter {
        opts,
        model: &model,
        decoder: StreamDecoder::new(&model.tokenizer),
        filter: StopFilter { stops: &opts.stop, pending: String::new() },
        text: String::new(),
        generated: Vec::new(),
        reason: None,
    };
    let mut stats = SpeculativeStats {
        drafter: match spec.drafter {
            Drafter::Lookup(n) => format!("lookup {n}"),
            Drafter::LookupLongest { max, min } => format!("lookup longest {max}..{min}"),
            Drafter::Model => "draft model".into(),
        },
        ..SpeculativeStats::default()
    };
    let mut history = prompt.to_vec();
    let mut emitted_by_passes = 0usize;
    let mut k = spec.draft_max;
    // See the module doc: a lookup drafts at least 2 tokens when it matches.
    let floor = if spec.drafter == Drafter::Model { 1 } else { 2 };
    let mut going = if opts.max_tokens == 0 {
        em.reason = Some(StopReason::MaxTokens);
        false
    } else {
        let p = sampler.probs(&logits);
        let id = sampler.pick(&p);
        history.push(id);
        em.push(id, &mut sampler, &mut on_text)
    };
    while going {
        let remaining = opts.max_tokens - em.generated.len();
        let want = k.min(remaining - 1);
        let td = Instant::now();
        let drafts: Vec<Draft> = match (spec.drafter, drafter.as_mut()) {
            _ if want == 0 => Vec::new(),
            (Drafter::Lookup(n), _) => lookup_draft(&history, n, want).into_iter().map(|d| (d, Vec::new())).collect(),
            (Drafter::LookupLongest { max, min }, _) => {
                lookup_longest(&history, max, min, want).into_iter().map(|d| (d, Vec::new())).collect()
            }
            (Drafter::Model, Some(dm)) => dm.draft(&history, want, &sampler)?,
            (Drafter::Model, None) => Vec::new(),
        };
        stats.draft_seconds += td.elapsed().as_secs_f64();

        let tv = Instant::now();
        let before = target.n_past();
        let mut run = Vec::with_capacity(drafts.len() + 1);
        run.push(*history.last().ok_or_else(|| Error::invalid("no token to continue from"))?);
        run.extend(drafts.iter().map(|d| d.0));
        let rows = target.forward(&run, true)?;
        let pass_seconds = tv.elapsed().as_secs_f64();
        stats.verify_seconds += pass_seconds;
        stats.target_passes += 1;
        bump(&mut stats.pass_tokens, run.len(), 1);
        bump(&mut stats.pass_seconds, run.len(), pass_seconds);
        bump(&mut stats.pass_layer_seconds, run.len(), target.last_pass().map_or(0.0, |p| p.compute_s));
        bump(&mut stats.draft_lengths, drafts.len(), 1);
        if drafts.is_empty() {
            stats.rounds_without_draft += 1;
        } else {
            stats.draft_rounds += 1;
            stats.drafted_tokens += drafts.len();
        }
        let tc = Instant::now();
        let n_vocab = model.config.n_vocab;
        let mut accepted = 0;
        let emitted_before = em.generated.len();
        for (i, row) in rows.chunks_exact(n_vocab).enumerate() {
            let p = sampler.probs(row);
            let (id, kept) = match drafts.get(i) {
                Some((d, q)) => match verify(&mut sampler, &p, *d, q) {
                    Ok(()) => (*d, true),
                    Err(x) => (x, false),
                },
                None => (sampler.pick(&p), false),
            };
            if kept {
                accepted += 1;
            }
            history.push(id);
            going = em.push(id, &mut sampler, &mut on_text);
            if !going || !kept {
                break;
            }
        }
        emitted_by_passes += em.generated.len() - emitted_before;
        stats.accepted_tokens += accepted;
        if !drafts.is_empty() {
            bump(&mut stats.accepted_lengths, accepted, 1);
        }
        stats.check_seconds += tc.elapsed().as_secs_f64();
        // Keep the pending token and the kept drafts; forget the rejected ones.
        target.truncate(before + 1 + accepted);
        k = adapt(k, drafts.len(), accepted, floor, spec.draft_max);
    }
    // As plain decoding leaves it: at most the prompt and the generated tokens.
    target.truncate(base + prompt.len() + em.generated.len());
    let reason = em.reason.unwrap_or(StopReason::MaxTokens);
    if reason != StopReason::StopString {
        flush_text(&mut em.decoder, &mut em.filter, &mut em.text, &mut on_text);
    }
    let generation_seconds = t1.elapsed().as_secs_f64();
    stats.acceptance_rate =
        if stats.drafted_tokens > 0 { stats.accepted_tokens as f64 / stats.drafted_tokens as f64 } else { 0.0 };
    stats.tokens_per_target_pass =
        if stats.target_passes > 0 { emitted_by_passes as f64 / stats.target_passes as f64 } else { 0.0 };
    let generated = em.generated;
    Ok(Generation {
        text: em.text,
        prompt_ids: prompt.to_vec(),
        generated_ids: generated.clone(),
        stop_reason: reason,
        timings: Timings::measured(prompt.len(), prompt_seconds, generated.len(), generation_seconds),
        speculative: Some(stats),
    })
}

#[cfg(test)]
mod tests {
    use super::{adapt, lookup_draft, lookup_longest, verify};
    use crate::sample::{Sampler, SamplerConfig};

    /// Output frequencies of one speculative step, drafting from `q` (empty: always `fixed`)
    /// and deciding with `rule`, over `n` draws.
    fn step_counts(
        p: &[(u32, f64)],
        q: &[(u32, f64)],
        fixed: u32,
        n: usize,
        rule: impl Fn(&mut Sampler, &[(u32, f64)], u32, &[(u32, f64)]) -> u32,
    ) -> Vec<usize> {
        let cfg = SamplerConfig { temperature: 1.0, seed: 7, ..SamplerConfig::default() };
        let mut s = Sampler::new(cfg.clone()).expect("sampler");
        let mut drafter = Sampler::new(SamplerConfig { seed: 8, ..cfg }).expect("sampler");
        let mut counts = vec![0; p.len()];
        for _ in 0..n {
            let d = if q.is_empty() { fixed } else { drafter.draw(q) };
            let out = rule(&mut s, p, d, q);
            counts[out as usize] += 1;
        }
        counts
    }

    fn chi_square(p: &[(u32, f64)], counts: &[usize], n: usize) -> f64 {
        p.iter().map(|&(id, pi)| (counts[id as usize] as f64 - pi * n as f64).powi(2) / (pi * n as f64)).sum()
    }

    /// The acceptance rule gives exactly p, for a point-mass drafter and for a drafter q far
    /// from p; a rule that keeps every drafted token, or that draws rejections from p instead
    /// of the residual, is far over the same threshold (chi-square, 3 degrees of freedom,
    /// 16.27 at p = 0.001).
    #[test]
    fn the_acceptance_rule_keeps_p_and_broken_rules_do_not() {
        let p = [(0, 0.5), (1, 0.25), (2, 0.15), (3, 0.1)];
        let q = [(3, 0.6), (0, 0.1), (1, 0.1), (2, 0.2)];
        let n = 40_000;
        let rule =
            |s: &mut Sampler, p: &[(u32, f64)], d: u32, q: &[(u32, f64)]| verify(s, p, d, q).map_or_else(|x| x, |()| d);
        let keep_all = |_: &mut Sampler, _: &[(u32, f64)], d: u32, _: &[(u32, f64)]| d;
        let resample_from_p = |s: &mut Sampler, p: &[(u32, f64)], d: u32, q: &[(u32, f64)]| {
            verify(s, p, d, q).map_or_else(|_| s.draw(p), |()| d)
        };
        let critical = 16.27;
        for (name, q, fixed) in [("point mass", &[][..], 1), ("draft q", &q[..], 0)] {
            let good = chi_square(&p, &step_counts(&p, q, fixed, n, rule), n);
            assert!(good < critical, "{name}: the rule gives chi-square {good:.1}");
            let bad = chi_square(&p, &step_counts(&p, q, fixed, n, keep_all), n);
            assert!(bad > 10.0 * critical, "{name}: keeping every draft gives only {bad:.1}");
            let bad = chi_square(&p, &step_counts(&p, q, fixed, n, resample_from_p), n);
            assert!(bad > 10.0 * critical, "{name}: resampling from p gives only {bad:.1}");
        }
    }

    #[test]
    fn lookup_proposes_what_followed_the_most_recent_match() {
        // ... 1 2 3 4 ... 1 2 5 ... 1 2 → the latest earlier "1 2" is followed by 5.
        let h = [1, 2, 3, 4, 9, 1, 2, 5, 6, 1, 2];
        assert_eq!(lookup_draft(&h, 2, 3), vec![5, 6, 1]);
        assert_eq!(lookup_draft(&h, 2, 1), vec![5]);
        // A longer n-gram picks the first occurrence when only it matches.
        let h = [7, 1, 2, 3, 4, 8, 1, 2, 7, 1, 2];
        assert_eq!(lookup_draft(&h, 3, 4), vec![3, 4, 8, 1]);
        // The continuation stops at the end of the history.
        assert_eq!(lookup_draft(&[5, 6, 5], 1, 4), vec![6, 5]);
        assert!(lookup_draft(&[1, 2, 3], 2, 4).is_empty(), "no earlier match");
        assert!(lookup_draft(&[1, 2], 2, 4).is_empty(), "history no longer than n");
        assert!(lookup_draft(&[1, 1, 1], 1, 0).is_empty());
    }

    /// The longest match wins over a more recent shorter one; equal lengths go to the most
    /// recent; shorter suffixes are tried down to `min`, not below; the draft stops at `k` and at
    /// the end of the history.
    #[test]
    fn longest_lookup_prefers_the_longest_then_the_most_recent_match() {
        // "1 2 3" occurs at 0 (followed by 9); only "2 3" occurs later, at 5 (followed by 7).
        let h = [1, 2, 3, 9, 5, 2, 3, 7, 1, 2, 3];
        assert_eq!(lookup_longest(&h, 3, 2, 3), vec![9, 5, 2]);
        assert_eq!(lookup_longest(&h, 4, 1, 2), vec![9, 5], "a 4-token suffix is not there: 3 is the longest");
        assert_eq!(lookup_longest(&h, 2, 2, 3), vec![7, 1, 2], "n = 2: the most recent '2 3'");
        assert_eq!(lookup_draft(&h, 2, 3), vec![7, 1, 2]);
        // Two occurrences of the longest suffix "5 6": the later one, followed by 8.
        let h = [5, 6, 7, 4, 5, 6, 8, 0, 5, 6];
        assert_eq!(lookup_longest(&h, 4, 2, 2), vec![8, 0]);
        // No "1 5 6" or "0 1 5 6" earlier: falls back to "5 6" (at 1), followed by 7 1 5 6.
        let h = [4, 5, 6, 7, 1, 5, 6];
        assert_eq!(lookup_longest(&h, 3, 2, 8), vec![7, 1, 5, 6]);
        // Only "3" occurs earlier: nothing with min = 2, the token after it with min = 1.
        let h = [1, 2, 3, 4, 3];
        assert!(lookup_longest(&h, 3, 2, 4).is_empty());
        assert_eq!(lookup_longest(&h, 3, 1, 4), vec![4, 3]);
        // Overlapping occurrences: in 1 1 1 the suffix "1 1" occurs at 0, followed by 1.
        assert_eq!(lookup_longest(&[1, 1, 1], 2, 2, 4), vec![1]);
        assert!(lookup_longest(&[1, 2], 2, 2, 4).is_empty(), "history no longer than min");
        assert!(lookup_longest(&[1, 1, 1], 2, 1, 0).is_empty(), "k = 0");
        assert!(lookup_longest(&[1, 1, 1], 1, 2, 4).is_empty(), "min above max");
    }

    /// `lookup_draft(h, n, k)` (the longest-match search with max = min = n) is the plain
    /// search for the most recent earlier occurrence of the last n tokens, on random histories
    /// over small alphabets (many repeats).
    #[test]
    fn lookup_draft_is_the_most_recent_n_gram_match() {
        fn naive(h: &[u32], n: usize, k: usize) -> Vec<u32> {
            let len = h.len();
            if n == 0 || k == 0 || len <= n {
                return Vec::new();
            }
            (0..len - n)
                .rev()
                .find(|&s| h[s..s + n] == h[len - n..])
                .map(|s| h[s + n..(s + n + k).min(len)].to_vec())
                .unwrap_or_default()
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..2000 {
            let alphabet = 2 + case % 4;
            let len = case % 40;
            let h: Vec<u32> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) % alphabet as u64) as u32
                })
                .collect();
            for n in 1..=4 {
                for k in [1, 3, 8] {
                    assert_eq!(lookup_draft(&h, n, k), naive(&h, n, k), "history {h:?}, n {n}, k {k}");
                }
            }
        }
    }

    #[test]
    fn draft_length_adapts_within_bounds() {
        assert_eq!(adapt(4, 4, 4, 1, 8), 6, "all kept: grow by 2");
        assert_eq!(adapt(8, 8, 8, 1, 8), 8, "bounded by draft_max");
        assert_eq!(adapt(6, 6, 0, 1, 8), 3, "none kept: halve");
        assert_eq!(adapt(1, 1, 0, 1, 8), 1, "never below 1");
        assert_eq!(adapt(6, 6, 2, 1, 8), 3, "partial: one more than kept");
        assert_eq!(adapt(5, 0, 0, 1, 8), 5, "nothing drafted: unchanged");
        assert_eq!(adapt(2, 2, 0, 2, 8), 2, "the lookup's floor of 2");
        assert_eq!(adapt(3, 3, 0, 2, 8), 2, "halved to the floor");
        assert_eq!(adapt(5, 5, 0, 2, 8), 2);
        assert_eq!(adapt(1, 1, 1, 2, 1), 1, "a floor above draft_max gives draft_max");
    }
}
