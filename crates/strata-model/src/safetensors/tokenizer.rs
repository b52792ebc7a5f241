//! GGUF-style tokenizer metadata from a Hugging Face checkpoint's `tokenizer.json`,
//! `tokenizer_config.json` and `chat_template.jinja`, so that one tokenizer implementation
//! ([`crate::tokenizer::Tokenizer::from_metadata`]) and one chat template reader serve both
//! GGUF files and safetensors checkpoints.
//!
//! The keys written are the ones `convert_hf_to_gguf.py` writes:
//! - byte-level BPE (GPT-2, Llama 3, SmolLM): `tokenizer.ggml.model = "gpt2"`, tokens,
//!   token types and merges; `tokenizer.ggml.pre` named from the pre-tokenizer when it is one
//!   llama.cpp knows by that shape (Llama 3 regex → `llama-bpe`, Qwen2's → `qwen2`, digits + byte level →
//!   `smollm`, byte level alone → `gpt-2`), else `default`;
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral): `tokenizer.ggml.model =
//!   "llama"`, tokens, types, and scores from the merge ranks (earlier merge = higher score,
//!   which is the order SentencePiece's BPE applies them), and `add_space_prefix`;
//! - both: bos/eos/unk/pad ids, `add_bos_token`/`add_eos_token`, the chat template(s), and the
//!   whole `tokenizer.json` as `tokenizer.huggingface.json` (the GGUF spec's key for it).
//!
//! Ids the tokenizer does not define, up to `vocab_size`, become `[PAD<id>]` tokens of type
//! unused, as in llama.cpp's converter.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use super::{read_json, read_text};
use crate::gguf::{MAX_STRING_LEN, Metadata, Value};
use crate::{Error, Result};

/// Largest `tokenizer.json` read (real ones are up to ~20 MiB).
const MAX_TOKENIZER_JSON: u64 = 64 << 20;

/// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The Llama 3 pre-tokenizer regex (its distinctive start).
const LLAMA3_REGEX_START: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}";

/// The Qwen2/Qwen3 pre-tokenizer regex, whole (Llama 3's but with single digits): llama.cpp's
/// `qwen2` pre-tokenizer.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn bad(what: impl std::fmt::Display) -> Error {
    Error::model(format!("tokenizer.json: {what}"))
}

/// `v`, or the first value nested in it, that is an object with `"type": ty`.
fn find_type<'a>(v: &'a Json, ty: &str) -> Option<&'a Json> {
    match v {
        Json::Object(o) if o.get("type").and_then(Json::as_str) == Some(ty) => Some(v),
        Json::Object(o) => o.values().find_map(|x| find_type(x, ty)),
        Json::Array(a) => a.iter().find_map(|x| find_type(x, ty)),
        _ => None,
    }
}

fn has_type(v: &Json, ty: &str) -> bool {
    find_type(v, ty).is_some()
}

/// A JSON value for a message, cut to 60 characters.
fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() <= 60 { s } else { format!("{}…", s.chars().take(57).collect::<String>()) }
}

/// The `type` of each pre-tokenizer (flattening a `Sequence`).
fn pre_tokenizer_types(pre: &Json) -> Vec<&Json> {
    match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            pre.get("pretokenizers").and_then(Json::as_array).map_or(Vec::new(), |a| a.iter().collect())
        }
        Some(_) => vec![pre],
        None => Vec::new(),
    }
}

/// llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.
fn pre_tokenizer_name(pre: &Json) -> &'static str {
    let parts = pre_tokenizer_types(pre);
    fn ty(p: &Json) -> &str {
        p.get("type").and_then(Json::as_str).unwrap_or("")
    }
    fn regex(p: &Json) -> &str {
        p.get("pattern").and_then(|x| x.get("Regex")).and_then(Json::as_str).unwrap_or("")
    }
    let types: Vec<&str> = parts.iter().copied().map(ty).collect();
    if parts.iter().any(|p| ty(p) == "Split" && regex(p).starts_with(LLAMA3_REGEX_START)) {
        return "llama-bpe";
    }
    if parts.iter().any(|p| ty(p) == "Split" && regex(p) == QWEN2_REGEX) {
        return "qwen2";
    }
    match types.as_slice() {
        ["Digits", "ByteLevel"] if parts[0].get("individual_digits") == Some(&Json::Bool(true)) => "smollm",
        ["ByteLevel"] => "gpt-2",
        _ => {
            log::warn!("tokenizer.json: pre-tokenizer {types:?} is not one strata names; using \"default\"");
            "default"
        }
    }
}

/// The text of a special token entry of tokenizer_config.json: a string or `{"content": …}`.
fn token_text(v: &Json) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Json::as_str))
}

/// A merge, either `"a b"` or `["a", "b"]` (tokenizers ≥ 0.20), as `"a b"`.
fn merge_text(i: usize, m: &Json) -> Result<String> {
    match m {
        Json::String(s) if s.contains(' ') => Ok(s.clone()),
        Json::Array(p) => match p.as_slice() {
            [Json::String(a), Json::String(b)] => Ok(format!("{a} {b}")),
            _ => Err(bad(format!("merge {i} is {}, expected two strings", short(m)))),
        },
        _ => Err(bad(format!("merge {i} is {}, expected \"a b\" or [\"a\", \"b\"]", short(m)))),
    }
}

/// Tokens and types by id, from `model.vocab` and `added_tokens`.
struct Vocab {
    tokens: Vec<Option<String>>,
    types: Vec<i32>,
    /// Token text → id (added tokens win over model tokens of the same text).
    ids: HashMap<String, u32>,
}

impl Vocab {
    fn new(tj: &Json, n_vocab: usize) -> Result<Vocab> {
        let vocab = tj
            .pointer("/model/vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| bad("model.vocab is missing or not an object"))?;
        let mut v = Vocab { tokens: vec![None; n_vocab], types: vec![UNUSED; n_vocab], ids: HashMap::new() };
        for (text, id) in vocab {
            v.set(text, id, NORMAL, n_vocab)?;
        }
        let added = match tj.get("added_tokens") {
            None | Some(Json::Null) => &[][..],
            Some(Json::Array(a)) => a.as_slice(),
            Some(other) => return Err(bad(format!("added_tokens is {other}, expected a list"))),
        };
        for t in added {
            let text = t
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| bad(format!("added token {} has no content", short(t))))?;
            let id = t.get("id").ok_or_else(|| bad(format!("added token {text:?} has no id")))?;
            let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
            v.set(text, id, if special { CONTROL } else { USER_DEFINED }, n_vocab)?;
        }
        Ok(v)
    }

    fn set(&mut self, text: &str, id: &Json, ty: i32, n_vocab: usize) -> Result<()> {
        let i = id.as_u64().filter(|&i| i < n_vocab as u64).ok_or_else(|| {
            bad(format!(
                "token {text:?} has id {id}, outside the model's {n_vocab} embedding rows (config.json vocab_size)"
            ))
        })? as usize;
        match &self.tokens[i] {
            Some(old) if old != text && ty == NORMAL => {
                return Err(bad(format!("id {i} is given to both {old:?} and {text:?}")));
            }
            _ => {}
        }
        self.tokens[i] = Some(text.to_string());
        self.types[i] = ty;
        self.ids.insert(text.to_string(), i as u32);
        Ok(())
    }

    /// The tokens, with `[PAD<id>]` for undefined ids.
    fn token_values(&self) -> Value {
        Value::Array(
            self.tokens
                .iter()
                .enumerate()
                .map(|(i, t)| Value::String(t.clone().unwrap_or_else(|| format!("[PAD{i}]"))))
                .collect(),
        )
    }
}

/// `config.json`'s `<key>` id (an integer, or a list whose first entry is used).
fn config_id(config: &Json, key: &str) -> Option<u32> {
    let v = config.get(key)?;
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.as_u64().and_then(|i| u32::try_from(i).ok())
}

/// Sets the special token ids and add-bos/eos flags.
fn special_tokens(md: &mut Metadata, vocab: &Vocab, tj: &Json, tcfg: &Json, config: &Json) -> Result<()> {
    for (name, key) in [("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")]
    {
        let id = match tcfg.get(key).filter(|v| !v.is_null()) {
            Some(v) => {
                let text = token_text(v).ok_or_else(|| {
                    Error::model(format!(
                        "tokenizer_config.json {key} = {} is not a token (a string or {{\"content\": …}})",
                        short(v)
                    ))
                })?;
                match vocab.ids.get(text) {
                    Some(&id) => Some(id),
                    // Some configs name a pad/unk token the vocabulary lacks; only bos/eos matter.
                    None if matches!(key, "pad_token" | "unk_token") => {
                        log::warn!("tokenizer_config.json {key} = {text:?} is not a token of tokenizer.json; ignored");
                        None
                    }
                    None => {
                        return Err(Error::model(format!(
                            "tokenizer_config.json {key} = {text:?} is not a token of tokenizer.json"
                        )));
                    }
                }
            }
            None if key == "unk_token" => {
                tj.pointer("/model/unk_token").and_then(Json::as_str).and_then(|t| vocab.ids.get(t).copied())
            }
            None => config_id(config, &format!("{key}_id")),
        };
        if let Some(id) = id {
            md.set(&format!("tokenizer.ggml.{name}_token_id"), Value::U32(id));
        }
    }
    let bos_text = tcfg.get("bos_token").and_then(token_text);
    // Without add_bos_token, a post-processor that starts every sequence with BOS adds it.
    let template_adds_bos =
        tj.pointer("/post_processor/single/0/SpecialToken/id").and_then(Json::as_str).is_some_and(|t| {
            Some(t) == bos_text || vocab.ids.get(t).is_some_and(|&id| Some(id) == config_id(config, "bos_token_id"))
        });
    let add_bos = tcfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(template_adds_bos);
    md.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    if let Some(add_eos) = tcfg.get("add_eos_token").and_then(Json::as_bool) {
        md.set("tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    }
    Ok(())
}

/// Sets `tokenizer.chat_template` (and `tokenizer.chat_template.<name>` for named ones).
fn chat_templates(md: &mut Metadata, dir: &Path, tcfg: &Json) -> Result<()> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        md.set("tokenizer.chat_template", Value::String(read_text(&jinja, MAX_STRING_LEN)?));
        return Ok(());
    }
    match tcfg.get("chat_template") {
        None | Some(Json::Null) => {}
        Some(Json::String(t)) => md.set("tokenizer.chat_template", Value::String(t.clone())),
        Some(Json::Array(list)) => {
            for t in list {
                let (Some(name), Some(text)) =
                    (t.get("name").and_then(Json::as_str), t.get("template").and_then(Json::as_str))
                else {
                    return Err(Error::model(format!(
                        "tokenizer_config.json chat_template entry {} has no name/template",
                        short(t)
                    )));
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".into()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                md.set(&key, Value::String(text.to_string()));
            }
        }
        Some(other) => {
            return Err(Error::model(format!(
                "tokenizer_config.json chat_template is {}, expected a string",
                short(other)
            )));
        }
    }
    Ok(())
}

/// The GGUF tokenizer metadata of the checkpoint in `dir` for a model with `n_vocab` embedding
/// rows; `config` is its parsed `config.json` (for fallback bos/eos ids).
///
/// # Errors
/// [`Error::Model`] if `tokenizer.json` is missing, malformed or of a kind strata cannot run
/// (only BPE models are), or a special token names no token; [`Error::Io`] if a file cannot
/// be read.
pub fn tokenizer_metadata(dir: &Path, config: &Json, n_vocab: usize) -> Result<Metadata> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(Error::model(format!(
            "{} has no tokenizer.json; strata needs the Hugging Face tokenizer next to config.json",
            dir.display()
        )));
    }
    let text = read_text(&path, MAX_TOKENIZER_JSON)?;
    let tj: Json = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let tcfg_path = dir.join("tokenizer_config.json");
    let tcfg = if tcfg_path.is_file() { read_json(&tcfg_path, super::MAX_CONFIG_JSON)? } else { Json::Null };

    let kind = tj.pointer("/model/type").and_then(Json::as_str).unwrap_or("(none)");
    if kind != "BPE" {
        return Err(bad(format!("model type {kind:?} is not supported (strata runs BPE tokenizers)")));
    }
    let mut vocab = Vocab::new(&tj, n_vocab)?;
    let merges: Vec<String> = match tj.pointer("/model/merges") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(m)) => m.iter().enumerate().map(|(i, m)| merge_text(i, m)).collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("model.merges is {}, expected a list", short(other)))),
    };
    let (pre, dec, norm) = (&tj["pre_tokenizer"], &tj["decoder"], &tj["normalizer"]);
    let byte_fallback = tj.pointer("/model/byte_fallback").and_then(Json::as_bool) == Some(true);

    let mut md = Metadata::new();
    if has_type(pre, "ByteLevel") || has_type(dec, "ByteLevel") {
        md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        md.set("tokenizer.ggml.pre", Value::String(pre_tokenizer_name(pre).into()));
        md.set("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
    } else if byte_fallback || has_type(pre, "Metaspace") || has_type(dec, "Metaspace") {
        md.set("tokenizer.ggml.model", Value::String("llama".into()));
        let mut scores = vec![0f32; n_vocab];
        let mut scored = vec![false; n_vocab];
        for (rank, m) in merges.iter().enumerate() {
            if let Some(&id) = vocab.ids.get(&m.replacen(' ', "", 1))
                && !std::mem::replace(&mut scored[id as usize], true)
            {
                scores[id as usize] = -(rank as f32);
            }
        }
        for (t, ty) in vocab.tokens.iter().zip(vocab.types.iter_mut()) {
            if let Some(t) = t
                && *ty == NORMAL
                && t.len() == 6
                && t.starts_with("<0x")
                && t.ends_with('>')
            {
                *ty = BYTE;
            }
        }
        if let Some(unk) = tj.pointer("/model/unk_token").and_then(Json::as_str).and_then(|t| vocab.ids.get(t)) {
            vocab.types[*unk as usize] = UNKNOWN;
        }
        md.set("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()));
        // Llama 2 prepends "▁" in the normalizer; newer files do it in a Metaspace pre-tokenizer.
        let metaspace = find_type(pre, "Metaspace");
        let prefix = has_type(norm, "Prepend")
            || metaspace.and_then(|m| m.get("prepend_scheme")).and_then(Json::as_str).is_some_and(|s| s != "never")
            || metaspace.and_then(|m| m.get("add_prefix_space")).and_then(Json::as_bool) == Some(true);
        md.set("tokenizer.ggml.add_space_prefix", Value::Bool(prefix));
    } else {
        return Err(bad(
            "a BPE model that is neither byte-level nor SentencePiece-style (byte fallback); not supported",
        ));
    }
    md.set("tokenizer.ggml.tokens", vocab.token_values());
    md.set("tokenizer.ggml.token_type", Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect()));
    special_tokens(&mut md, &vocab, &tj, &tcfg, config)?;
    chat_templates(&mut md, dir, &tcfg)?;
    if text.len() as u64 <= MAX_STRING_LEN {
        md.set("tokenizer.huggingface.json", Value::String(text));
    }
    Ok(md)
}
