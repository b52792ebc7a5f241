//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): the pre-tokenizer regexes llama.cpp uses for
//! each `tokenizer.ggml.pre`, and an in-memory [`tokenizers`] BPE model built from the GGUF
//! vocabulary and merges.
//!
//! llama.cpp splits text with a list of regexes applied one after another (each refines the
//! pieces of the previous one, keeping both matches and the text between them), maps every byte
//! of a piece to its GPT-2 byte-level character and runs BPE on each piece. A `Split` pre-tokenizer
//! per regex with the `Isolated` behaviour, then `ByteLevel` without its own regex, is the same
//! pipeline in the `tokenizers` crate.

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use super::TokenizerError;

const GPT2: &str = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const LLAMA3: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const TEKKEN: &str = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT4O: &str = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// How llama.cpp pre-tokenizes for one `tokenizer.ggml.pre` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    /// The name llama.cpp would treat this as (the metadata value, or `gpt-2` for unknown ones).
    pub name: String,
    /// Regexes applied in order, each splitting the pieces of the previous one.
    pub regexes: &'static [&'static str],
    /// A piece that is itself a vocabulary entry becomes that token without merging.
    pub ignore_merges: bool,
    /// llama.cpp's `add_bos` default before `tokenizer.ggml.add_bos_token` overrides it.
    pub add_bos: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp picks for `pre` (`None`: the key is absent → `default`).
    /// Unknown names fall back to the GPT-2 regex with a warning (llama.cpp refuses them).
    pub fn for_name(pre: Option<&str>) -> PreTokenizer {
        let make = |regexes, ignore_merges, add_bos| PreTokenizer {
            name: pre.unwrap_or("default").to_string(),
            regexes,
            ignore_merges,
            add_bos,
        };
        let Some(name) = pre else {
            log::warn!("tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer; output may be degraded");
            return make(&DEFAULT_SET, false, false);
        };
        match name {
            "default" => make(&DEFAULT_SET, false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano" => make(&[LLAMA3], true, true),
            "dbrx" | "smaug-bpe" => make(&[LLAMA3], false, false),
            "glm4" | "glm5" => make(&[LLAMA3], true, false),
            "falcon" => make(&FALCON_SET, false, false),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                make(&SMOLLM_SET, false, false)
            }
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
            | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
            | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => make(&[GPT2], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
                make(&[QWEN2], false, false)
            }
            "tekken" => make(&[TEKKEN], true, true),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => make(&[GPT4O], false, false),
            other => {
                log::warn!(
                    "unknown tokenizer.ggml.pre {other:?}: using the gpt-2 pre-tokenizer; ids may differ from the model's own tokenizer"
                );
                PreTokenizer { name: "gpt-2".to_string(), regexes: &[GPT2], ignore_merges: false, add_bos: false }
            }
        }
    }
}

const DEFAULT_SET: [&str; 4] = ["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"];
const FALCON_SET: [&str; 3] = ["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2, "[0-9][0-9][0-9]"];
const SMOLLM_SET: [&str; 2] = ["\\p{N}", GPT2];

/// A byte-level BPE model with its pre-tokenizer.
pub(crate) struct ByteLevelBpe {
    hf: HfTokenizer,
}

impl ByteLevelBpe {
    /// Builds the model. `token_to_id` maps each text to its id (the last id for duplicated texts,
    /// as llama.cpp does); `merges` are `"left right"` strings in rank order.
    pub fn new(
        token_to_id: &HashMap<String, u32>,
        merges: &[&str],
        pre: &PreTokenizer,
    ) -> Result<ByteLevelBpe, TokenizerError> {
        let vocab: Vocab = token_to_id.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut kept: Merges = Vec::with_capacity(merges.len());
        let mut dropped = 0usize;
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte (a space is one byte, so
            // both halves stay valid UTF-8).
            let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                return Err(TokenizerError::BadMerge { rank, merge: merge.to_string() });
            };
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            // llama.cpp keeps the first rank of a repeated pair; the tokenizers crate the last.
            if !seen.insert((left, right)) {
                continue;
            }
            // The tokenizers crate insists that both parts and the result are tokens.
            let whole = format!("{left}{right}");
            if !(vocab.contains_key(left) && vocab.contains_key(right) && vocab.contains_key(&whole)) {
                dropped += 1;
                continue;
            }
            kept.push((left.to_string(), right.to_string()));
        }
        if dropped > 0 {
            log::warn!("{dropped} BPE merges name tokens that are not in the vocabulary; they are ignored");
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, kept)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Bpe(e.to_string()))?;
        let mut steps = Vec::with_capacity(pre.regexes.len() + 1);
        for re in pre.regexes {
            let split = Split::new(SplitPattern::Regex((*re).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| TokenizerError::Bpe(format!("pre-tokenizer regex {re:?}: {e}")))?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
        let mut hf = HfTokenizer::new(model);
        hf.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
        Ok(ByteLevelBpe { hf })
    }

    /// Token ids of one piece of raw text (no special tokens inside).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = self
            .hf
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode { text: super::preview(text), reason: e.to_string() })?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// GPT-2's byte ↔ character table: printable Latin-1 bytes map to themselves, the others to
/// U+0100 and up, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            u32::from(b)
        } else {
            let cp = next;
            next += 1;
            cp
        };
        table[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// The bytes a byte-level token text stands for. Characters outside the table (not produced by
/// byte-level BPE) are kept as their own UTF-8.
pub(crate) fn unmap_bytes(text: &str, char_to_byte: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}
