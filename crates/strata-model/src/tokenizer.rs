//! Text ↔ token ids from a GGUF model's `tokenizer.*` metadata, with the ids llama.cpp produces.
//!
//! Two vocabulary kinds are supported: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, with the
//! pre-tokenizer chosen by `tokenizer.ggml.pre`; see `bpe`) and SentencePiece-style BPE
//! (`"llama"`, with `tokenizer.ggml.scores` and `<0xXX>` byte fallback; see `spm`).
//!
//! Encoding follows llama.cpp's `llama_tokenize`: special tokens are cut out of the text first
//! (control and unknown tokens only with `parse_special`, user-defined tokens always; longest token
//! first), then each remaining piece is tokenized on its own. Nothing is normalized or stripped.
//! Token attributes, BOS/EOS defaults and the end-of-generation set are derived as llama.cpp's
//! vocabulary loader derives them, including its by-text detection of `<|im_end|>` and friends.
//! Not reproduced: llama.cpp's per-model lstrip/rstrip token attributes (phi-3, jina, modern-bert)
//! and its `clean_spaces` detokenizer pass.

mod bpe;
mod spm;

use std::collections::{HashMap, HashSet};

use crate::gguf::{GgufError, Metadata};

/// What went wrong building a tokenizer, encoding text or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Tokenizer metadata is missing or malformed.
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    /// `tokenizer.ggml.model` is neither `gpt2` nor `llama`.
    #[error(
        "tokenizer.ggml.model is {found:?}; strata supports \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece)"
    )]
    UnsupportedModel {
        /// The model name found.
        found: String,
    },
    /// A per-token array does not have one entry per token.
    #[error("{key} has {found} entries but tokenizer.ggml.tokens has {expected}; the file is inconsistent")]
    LengthMismatch {
        /// The array's key.
        key: String,
        /// Its length.
        found: usize,
        /// Length of `tokenizer.ggml.tokens`.
        expected: usize,
    },
    /// A tokenizer value is invalid.
    #[error("{key} holds {value}, expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value found, as text.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A merge is not two tokens separated by a space.
    #[error("tokenizer.ggml.merges entry {rank} is {merge:?}, expected two tokens separated by a space")]
    BadMerge {
        /// Index of the merge.
        rank: usize,
        /// The merge entry.
        merge: String,
    },
    /// The BPE tokenizer cannot be built.
    #[error("cannot build the BPE tokenizer: {0}")]
    Bpe(String),
    /// Text cannot be encoded.
    #[error("cannot encode {text:?}: {reason}")]
    Encode {
        /// The text.
        text: String,
        /// Why.
        reason: String,
    },
    /// A BOS token was requested, but the model has none.
    #[error("asked to add a BOS token, but the model defines none (tokenizer.ggml.bos_token_id is absent)")]
    NoBos,
    /// The chat template cannot be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
}

// llama.cpp's token attributes (llama_token_attr).
const ATTR_UNKNOWN: u8 = 1 << 0;
const ATTR_UNUSED: u8 = 1 << 1;
const ATTR_NORMAL: u8 = 1 << 2;
const ATTR_CONTROL: u8 = 1 << 3;
const ATTR_USER_DEFINED: u8 = 1 << 4;
const ATTR_BYTE: u8 = 1 << 5;

/// The attribute for a `tokenizer.ggml.token_type` value (llama_token_type).
fn attr_from_type(t: i64) -> u8 {
    match t {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        _ => 0, // undefined
    }
}

/// Token texts that llama.cpp treats as end of generation, whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Texts llama.cpp recognizes as the EOT token when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// FIM tokens llama.cpp recognizes by text and marks as control (pad, repo and file-separator
/// ones also end generation).
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Which algorithm turns a piece of text into tokens.
enum Model {
    Bpe(Box<bpe::ByteLevelBpe>),
    Spm { scores: Vec<f32>, byte_tokens: Box<[Option<u32>; 256]> },
}

/// A tokenizer built from GGUF metadata. Cheap to share: `Send + Sync`, encoding takes `&self`.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    attrs: Vec<u8>,
    token_to_id: HashMap<String, u32>,
    /// The bytes each token stands for when rendered (llama.cpp's piece with special = true).
    pieces: Vec<Vec<u8>>,
    /// Control, user-defined and unknown tokens, longest text first: cut out of text before BPE.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eog: HashSet<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece's leading `▁`: prefixed when encoding, dropped from the first decoded token.
    add_space_prefix: bool,
}

/// A part of the text being encoded: raw text (a byte range) or an already-recognized token.
#[derive(Clone, Copy)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// At most 60 characters of `text`, for messages.
fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

impl Tokenizer {
    /// Builds the tokenizer described by `tokenizer.*` keys.
    ///
    /// # Errors
    /// A missing or mistyped required key (`tokenizer.ggml.model`, `tokenizer.ggml.tokens`, and
    /// `tokenizer.ggml.merges` for `gpt2`), arrays shorter than the vocabulary, an unsupported
    /// model kind, or merges the BPE model cannot use.
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let kind = md.str("tokenizer.ggml.model")?;
        let is_spm = match kind {
            "gpt2" => false,
            "llama" => true,
            other => return Err(TokenizerError::UnsupportedModel { found: other.to_string() }),
        };
        let mut tokens: Vec<String> = md.str_array("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        let n = tokens.len();
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                log::warn!("empty token at index {i}");
                *t = format!("[EMPTY_{i}]");
            }
        }
        let mut attrs = match md.opt_array("tokenizer.ggml.token_type")? {
            Some(types) => {
                check_len("tokenizer.ggml.token_type", types.len(), n)?;
                types.iter().take(n).map(|v| v.as_i64().map_or(0, attr_from_type)).collect()
            }
            None => vec![ATTR_NORMAL; n],
        };
        // As in llama.cpp, a text that appears twice maps to its last id.
        let token_to_id: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

        // llama.cpp's defaults for files without the ids (GPT-2 used 11 for both).
        let (mut bos, mut eos, mut unk) = if is_spm { (Some(1), Some(2), Some(0)) } else { (Some(11), Some(11), None) };
        for id in [&mut bos, &mut eos, &mut unk] {
            *id = id.filter(|&i| (i as usize) < n);
        }
        let bos = special_id(md, "tokenizer.ggml.bos_token_id", n, bos)?;
        let eos = special_id(md, "tokenizer.ggml.eos_token_id", n, eos)?;
        let unk = special_id(md, "tokenizer.ggml.unknown_token_id", n, unk)?;
        let mut ids = SpecialIds::from_metadata(md, n, eos)?;
        ids.detect_by_text(&tokens, &token_to_id, &mut attrs);
        let eog = ids.end_of_generation(&tokens, &token_to_id, &mut attrs);

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let add_space_prefix = md.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(is_spm);
        let (model, default_add_bos) = if is_spm {
            let scores = match md.opt_array("tokenizer.ggml.scores")? {
                Some(scores) => {
                    check_len("tokenizer.ggml.scores", scores.len(), n)?;
                    scores.iter().take(n).map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
                }
                None => vec![0.0; n],
            };
            let mut byte_tokens = Box::new([None; 256]);
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let single = (b < 0x80).then(|| char::from(b as u8).to_string());
                *slot = token_to_id
                    .get(&format!("<0x{b:02X}>"))
                    .or_else(|| single.and_then(|s| token_to_id.get(&s)))
                    .copied();
            }
            (Model::Spm { scores, byte_tokens }, true)
        } else {
            let pre = bpe::PreTokenizer::for_name(md.opt_str("tokenizer.ggml.pre")?);
            let merges = md.str_array("tokenizer.ggml.merges")?;
            (Model::Bpe(Box::new(bpe::ByteLevelBpe::new(&token_to_id, &merges, &pre)?)), pre.add_bos)
        };
        let add_bos = md.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
        let add_eos = md.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

        let char_to_byte: HashMap<char, u8> =
            bpe::byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let pieces = (0..n).map(|i| piece_bytes(&tokens[i], attrs[i], is_spm, &char_to_byte)).collect();

        Ok(Tokenizer {
            model,
            tokens,
            attrs,
            token_to_id,
            pieces,
            specials,
            bos,
            eos,
            unk,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
    ///
    /// `add_bos`: `None` does what the model asks (`tokenizer.ggml.add_bos_token`, and EOS when
    /// `tokenizer.ggml.add_eos_token` is set), like llama.cpp's `add_special = true`; `Some(true)`
    /// always prepends BOS (and EOS as the model asks); `Some(false)` adds neither.
    /// `parse_special`: text such as `<|im_start|>` becomes its control token; otherwise it is
    /// tokenized as plain text. User-defined tokens are always recognized, as in llama.cpp.
    ///
    /// # Errors
    /// [`TokenizerError::NoBos`] when BOS is asked for and the model has none;
    /// [`TokenizerError::Encode`] if the BPE model fails on a piece.
    pub fn encode(&self, text: &str, add_bos: Option<bool>, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let (with_bos, with_eos) = match add_bos {
            None => (self.add_bos, self.add_eos),
            Some(true) => (true, self.add_eos),
            Some(false) => (false, false),
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if with_bos {
            out.push(self.bos.ok_or(TokenizerError::NoBos)?);
        }
        let fragments = self.partition(text, parse_special);
        match &self.model {
            Model::Bpe(bpe) => {
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => bpe.encode(&text[a..b], &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm { scores, byte_tokens } => {
                let vocab = spm::SpmVocab { token_to_id: &self.token_to_id, scores, byte_tokens, unk: self.unk };
                // llama.cpp prefixes a space to the text at the start and after every special token.
                let mut prev_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let prefix = if self.add_space_prefix && prev_special { " " } else { "" };
                            let escaped = format!("{prefix}{}", &text[a..b]).replace(' ', "\u{2581}");
                            spm::encode(&vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if with_bos && out.len() >= 2 && Some(out[1]) == self.bos {
            log::warn!("the prompt starts with BOS and BOS was added too: it now starts with 2 BOS tokens");
        }
        if with_eos && let Some(eos) = self.eos {
            out.push(eos);
        }
        Ok(out)
    }

    /// Cuts special tokens out of `text` (longest first, each occurrence left to right), leaving
    /// the text between them as raw fragments: llama.cpp's `tokenizer_st_partition`.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = if text.is_empty() { Vec::new() } else { vec![Fragment::Text(0, text.len())] };
        for &id in &self.specials {
            if !parse_special && self.attrs[id as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let pat = self.tokens[id as usize].as_str();
            if !text.contains(pat) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                let Fragment::Text(start, end) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = start;
                while let Some(m) = text[pos..end].find(pat) {
                    if m > 0 {
                        next.push(Fragment::Text(pos, pos + m));
                    }
                    next.push(Fragment::Token(id));
                    pos += m + pat.len();
                }
                if pos < end {
                    next.push(Fragment::Text(pos, end));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of `ids`: their bytes concatenated (control tokens as their text), invalid UTF-8
    /// replaced by U+FFFD. Like llama.cpp's detokenizer with special tokens rendered, it drops the
    /// space a SentencePiece model prefixed to the first token; it does not apply `clean_spaces`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.pieces.get(id as usize).map_or(&[][..], Vec::as_slice);
            let piece = if i == 0 && self.add_space_prefix { piece.strip_prefix(b" ").unwrap_or(piece) } else { piece };
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// llama.cpp's `token_to_piece(id, special = true)` as text (invalid UTF-8 replaced); empty for
    /// an unknown id.
    pub fn piece(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }

    /// The raw bytes of one token: byte-level characters mapped back to bytes, `▁` to a space,
    /// `<0xXX>` to its byte, control and user-defined tokens as their text. Empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.pieces.get(id as usize).cloned().unwrap_or_default()
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `id` ends generation (EOS, EOT, EOM, FIM pad/repo/separator and the tokens
    /// llama.cpp recognizes by text such as `<|im_end|>` and `<|endoftext|>`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The id of the token whose text is exactly `text` (the last one, if several share it).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The vocabulary text of token `id` (byte-level or `▁`-escaped, as stored in the file).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// A decoder that turns generated ids into text as they come.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}

/// Turns token ids into text one at a time, emitting only complete UTF-8: a character split
/// across tokens (byte-fallback tokens, partial byte-level pieces) is held until it is whole.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder with nothing pending.
    pub fn new(tokenizer: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder { tokenizer, pending: Vec::new() }
    }

    /// Adds one token; returns the text that became complete (possibly empty). Bytes that can
    /// never become valid UTF-8 are emitted as U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        if let Some(piece) = self.tokenizer.pieces.get(id as usize) {
            self.pending.extend_from_slice(piece);
        }
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = bad;
                            break;
                        }
                        Some(len) => {
                            out.push('\u{FFFD}');
                            rest = &bad[len..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Ends the stream: returns what is still held, with an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// The special token ids that decide the end-of-generation set.
struct SpecialIds {
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    /// FIM prefix, suffix, middle, pad, repo, file separator.
    fim: [Option<u32>; 6],
}

impl SpecialIds {
    fn from_metadata(md: &Metadata, n: usize, eos: Option<u32>) -> Result<SpecialIds, TokenizerError> {
        let eot = special_id(md, "tokenizer.ggml.eot_token_id", n, None)?;
        let eom = special_id(md, "tokenizer.ggml.eom_token_id", n, None)?;
        let mut fim = [None; 6];
        for (slot, (key, old_key)) in fim.iter_mut().zip([
            ("tokenizer.ggml.fim_pre_token_id", Some("tokenizer.ggml.prefix_token_id")),
            ("tokenizer.ggml.fim_suf_token_id", Some("tokenizer.ggml.suffix_token_id")),
            ("tokenizer.ggml.fim_mid_token_id", Some("tokenizer.ggml.middle_token_id")),
            ("tokenizer.ggml.fim_pad_token_id", None),
            ("tokenizer.ggml.fim_rep_token_id", None),
            ("tokenizer.ggml.fim_sep_token_id", None),
        ]) {
            *slot = special_id(md, key, n, None)?;
            if let Some(old_key) = old_key {
                *slot = special_id(md, old_key, n, *slot)?;
            }
        }
        Ok(SpecialIds { eos, eot, eom, fim })
    }

    /// Fills ids the metadata left out from token texts, marking those tokens as control, as
    /// llama.cpp does (in id order here; llama.cpp walks a hash map, which only matters for
    /// vocabularies with several candidates for one role).
    fn detect_by_text(&mut self, tokens: &[String], token_to_id: &HashMap<String, u32>, attrs: &mut [u8]) {
        let fim_texts = [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS, FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS];
        for (i, text) in unique_tokens(tokens, token_to_id) {
            let mut found = |slot: &mut Option<u32>, texts: &[&str]| {
                if slot.is_none() && texts.contains(&text) {
                    *slot = Some(i as u32);
                    attrs[i] |= ATTR_CONTROL;
                }
            };
            found(&mut self.eot, EOT_TEXTS);
            found(&mut self.eom, &["<|eom_id|>"]);
            for (slot, texts) in self.fim.iter_mut().zip(fim_texts) {
                found(slot, texts);
            }
        }
    }

    /// llama.cpp's end-of-generation set: FIM pad/repo/separator, every token whose text is in
    /// [`EOG_TEXTS`] (made control), EOS, EOT and EOM, less its per-model exceptions.
    fn end_of_generation(
        &self,
        tokens: &[String],
        token_to_id: &HashMap<String, u32>,
        attrs: &mut [u8],
    ) -> HashSet<u32> {
        let mut eog: HashSet<u32> = self.fim[3..].iter().flatten().copied().collect();
        for (i, text) in unique_tokens(tokens, token_to_id) {
            if EOG_TEXTS.contains(&text) {
                eog.insert(i as u32);
                attrs[i] |= ATTR_CONTROL;
            }
            // gpt-oss: always rendered.
            if ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"].contains(&text) {
                attrs[i] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([self.eos, self.eot, self.eom].into_iter().flatten());
        // "<|end|>" ends no generation next to "<|return|>"/"<|flush|>" and "<|call|>"/"<|calls|>"
        // (gpt-oss, solar-open); "</s>" is a normal token next to "<|tool_response>" or
        // "<|plamo:eos|>" (gemma4, plamo).
        let with = |eog: &HashSet<u32>, text: &str| eog.iter().copied().find(|&id| tokens[id as usize] == text);
        let has_call = with(&eog, "<|call|>").or(with(&eog, "<|calls|>")).is_some();
        let has_return_or_flush = with(&eog, "<|return|>").or(with(&eog, "<|flush|>")).is_some();
        if let Some(end) = with(&eog, "<|end|>")
            && has_call
            && has_return_or_flush
        {
            eog.remove(&end);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
        let has_normal_s = with(&eog, "<|tool_response>").or(with(&eog, "<|plamo:eos|>")).is_some();
        if let Some(s) = with(&eog, "</s>")
            && has_normal_s
        {
            eog.remove(&s);
            attrs[s as usize] = ATTR_NORMAL;
        }
        eog
    }
}

/// Each distinct token text with the id llama.cpp's text → id map keeps for it.
fn unique_tokens<'a>(
    tokens: &'a [String],
    token_to_id: &'a HashMap<String, u32>,
) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    tokens
        .iter()
        .enumerate()
        .filter(move |(i, t)| token_to_id.get(*t) == Some(&(*i as u32)))
        .map(|(i, t)| (i, t.as_str()))
}

/// Fails unless an array that must cover the vocabulary does.
fn check_len(key: &str, found: usize, expected: usize) -> Result<(), TokenizerError> {
    if found < expected {
        return Err(TokenizerError::LengthMismatch { key: key.to_string(), found, expected });
    }
    Ok(())
}

/// A special token id from `key`, or `default` when the key is absent or names no token.
fn special_id(md: &Metadata, key: &str, n: usize, default: Option<u32>) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = md.get(key) else { return Ok(default) };
    let Some(id) = value.as_i64() else {
        return Err(TokenizerError::BadValue {
            key: key.to_string(),
            value: value.summary(),
            expected: "a token id".to_string(),
        });
    };
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n => Ok(Some(id)),
        _ => {
            log::warn!("{key} = {id} is outside the vocabulary of {n} tokens; using {default:?}");
            Ok(default)
        }
    }
}

/// The bytes llama.cpp renders for a token with special tokens shown (token_to_piece, special = true).
fn piece_bytes(text: &str, attr: u8, is_spm: bool, char_to_byte: &HashMap<char, u8>) -> Vec<u8> {
    if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
        text.as_bytes().to_vec()
    } else if attr & ATTR_NORMAL != 0 {
        if is_spm { text.replace('\u{2581}', " ").into_bytes() } else { bpe::unmap_bytes(text, char_to_byte) }
    } else if attr & ATTR_BYTE != 0 {
        text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()).map(|b| vec![b]).unwrap_or_default()
    } else {
        Vec::new()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
};
