//! The generation loop: prefill the prompt as one batch, then decode token by token until an
//! end-of-generation token (unless ignored), a stop string, or the token limit.

use std::time::Instant;

use crate::sample::{Sampler, SamplerConfig};
use crate::session::Session;
use crate::speculative::{Speculative, SpeculativeStats};
use crate::tokenizer::StreamDecoder;
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these (the stop string is not output).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// How the next token is picked.
    pub sampler: SamplerConfig,
    /// Speculative decoding (a drafter proposes tokens, one target pass checks them); `None`
    /// decodes one token per pass. See [`crate::speculative`].
    pub speculative: Option<Speculative>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            stop: Vec::new(),
            ignore_eos: false,
            sampler: SamplerConfig::default(),
            speculative: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The text contains a stop string.
    StopString,
    /// `max_tokens` tokens were generated.
    MaxTokens,
}

/// Speeds of one generation (wall clock, including sampling and host transfers).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Time of the prompt pass (prefill), seconds.
    pub prompt_seconds: f64,
    /// Prompt tokens / prompt seconds.
    pub prompt_tokens_per_second: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time of the decode loop, seconds.
    pub generation_seconds: f64,
    /// Generated tokens / time of the decode loop (each step: sample, forward one token).
    pub generation_tokens_per_second: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// The generated text (without the prompt and any stop string).
    pub text: String,
    /// Token ids of the prompt.
    pub prompt_ids: Vec<u32>,
    /// Token ids generated.
    pub generated_ids: Vec<u32>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Speeds of this generation.
    pub timings: Timings,
    /// Drafting and verification counts and times, when decoding was speculative.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeStats>,
}

impl Timings {
    /// The timings of a prompt pass and a decode loop, with their rates.
    pub fn measured(
        prompt_tokens: usize,
        prompt_seconds: f64,
        generated_tokens: usize,
        generation_seconds: f64,
    ) -> Timings {
        Timings {
            prompt_tokens,
            prompt_seconds,
            prompt_tokens_per_second: rate(prompt_tokens, prompt_seconds),
            generated_tokens,
            generation_seconds,
            generation_tokens_per_second: rate(generated_tokens, generation_seconds),
        }
    }
}

pub(crate) fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Holds back text that could be the start of a stop string, so streamed output never shows
/// part of one.
pub(crate) struct StopFilter<'a> {
    pub(crate) stops: &'a [String],
    pub(crate) pending: String,
}

impl StopFilter<'_> {
    /// Adds text; returns (text safe to emit, whether a stop string was found).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) =
            self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.pending.find(s.as_str())).min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if s.starts_with(tail) && tail.len() > keep {
                    keep = tail.len();
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// At the end of a generation that no stop string ended: the decoder's last bytes and the text
/// the filter held back, appended to `text` and given to `on_text`.
pub(crate) fn flush_text(
    decoder: &mut StreamDecoder<'_>,
    filter: &mut StopFilter<'_>,
    text: &mut String,
    on_text: &mut impl FnMut(&str),
) {
    let (piece, _) = filter.push(&decoder.finish());
    let rest = piece + &filter.finish();
    text.push_str(&rest);
    on_text(&rest);
}

/// Generates a continuation of `prompt` (appended at the session's current position),
/// calling `on_text` with each piece of text as soon as it is complete UTF-8 and cannot be
/// part of a stop string.
///
/// With [`GenerateOptions::speculative`] set to prompt lookup, decoding is speculative
/// ([`crate::speculative::generate_speculative`]); a draft model needs that function (or
/// [`crate::Engine`]) to be given its session.
///
/// # Errors
/// [`Error::ContextFull`] before anything runs when prompt + max_tokens exceed the context;
/// speculative options that are invalid or name a draft model this call does not have.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if opts.speculative.is_some() {
        return crate::speculative::generate_speculative(session, None, prompt, opts, on_text);
    }
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty: nothing to continue from"));
    }
    let needed = session.n_past() + prompt.len() + opts.max_tokens;
    if needed > session.context() {
        return Err(Error::ContextFull {
            needed,
            prompt: session.n_past() + prompt.len(),
            generate: opts.max_tokens,
            context: session.context(),
            trained: session.model().config.n_ctx_train,
        });
    }
    // The session shares its model; a handle of our own lets the loop borrow the tokenizer
    // while it runs the session.
    let model = std::sync::Arc::clone(session.model());
    let tok = &model.tokenizer;
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    for &id in prompt {
        sampler.accept(id);
    }
    let t0 = Instant::now();
    let mut logits = session.forward(prompt, false)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut decoder = StreamDecoder::new(tok);
    let mut filter = StopFilter { stops: &opts.stop, pending: String::new() };
    let mut text = String::new();
    let mut generated = Vec::new();
    let mut reason = StopReason::MaxTokens;
    while generated.len() < opts.max_tokens {
        let id = sampler.sample(&logits);
        if !opts.ignore_eos && tok.is_eog(id) {
            reason = StopReason::EndOfGeneration;
            break;
        }
        generated.push(id);
        sampler.accept(id);
        let (piece, stopped) = filter.push(&decoder.push(id));
        text.push_str(&piece);
        on_text(&piece);
        if stopped {
            reason = StopReason::StopString;
            break;
        }
        if generated.len() < opts.max_tokens {
            logits = session.forward(&[id], false)?;
        }
    }
    if reason != StopReason::StopString {
        flush_text(&mut decoder, &mut filter, &mut text, &mut on_text);
    }
    let generation_seconds = t1.elapsed().as_secs_f64();
    Ok(Generation {
        text,
        prompt_ids: prompt.to_vec(),
        generated_ids: generated.clone(),
        stop_reason: reason,
        timings: Timings::measured(prompt.len(), prompt_seconds, generated.len(), generation_seconds),
        speculative: None,
    })
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    /// Feeds pieces through the filter; returns (emitted text, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter { stops: &stops, pending: String::new() };
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = f.push(p);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_end_the_text_and_are_not_output() {
        assert_eq!(run(&["\n\n"], &["Hello", " world", "\n", "\n", "more"]), ("Hello world".into(), true));
        assert_eq!(run(&["END"], &["abc", "EN", "Dxyz"]), ("abc".into(), true));
        // A partial match that does not complete is released.
        assert_eq!(run(&["END"], &["abc", "EN", "x"]), ("abcENx".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        // The earliest of several stop strings wins.
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".into(), true));
    }
}
