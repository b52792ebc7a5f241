//! The tokenizer against llama.cpp: the corpus in tests/data/tokenize-corpus.json and the shared
//! reference cases (both made by llama.cpp with the default model), BOS handling, end of
//! generation, streaming decode, and a small SentencePiece vocabulary built here.

use std::path::PathBuf;
use std::sync::OnceLock;

use strata_model::gguf::{GgufFile, Metadata, Value};
use strata_model::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

use crate::support::{ids, model_path_or_skip, reference};

/// The default model's metadata, read once per test binary; `Err` says why it is unavailable.
fn smollm_metadata() -> Result<&'static Metadata, String> {
    static MD: OnceLock<Result<Metadata, String>> = OnceLock::new();
    MD.get_or_init(|| {
        let path = strata_model::default_model_path();
        let file = GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file.metadata().clone())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The default model's tokenizer, built once per test binary.
fn smollm() -> Result<&'static Tokenizer, String> {
    static TOK: OnceLock<Result<Tokenizer, String>> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_metadata(smollm_metadata()?).map_err(|e| format!("the default model: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

macro_rules! tokenizer_or_skip {
    () => {{
        if model_path_or_skip().is_none() {
            return;
        }
        smollm().unwrap_or_else(|why| panic!("{why}"))
    }};
}

/// Compares every case; on failure prints the text, both id lists and the first difference.
fn check_cases(tok: &Tokenizer, cases: &serde_json::Value, source: &str) -> usize {
    let cases = cases.as_array().expect("an array of cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = tok.encode(text, Some(false), true).expect("encode");
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            failures.push(format!(
                "{text:?}\n  strata:    {got:?}\n  llama.cpp: {want:?}\n  first difference at index {at}"
            ));
            continue;
        }
        let back = tok.decode(&got);
        if back != text {
            failures.push(format!("{text:?}: decode(encode(text)) gave {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {source} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn tokenizer_corpus_matches_llama_cpp() {
    let tok = tokenizer_or_skip!();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenize-corpus.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: serde_json::Value = serde_json::from_str(&text).expect("corpus JSON");
    let n = check_cases(tok, &cases, "corpus");
    assert!(n >= 100, "the corpus has only {n} cases");
    println!("{n} corpus cases equal llama.cpp's ids and round-trip through decode");
}

/// The default model's vocabulary under other pre-tokenizers (tests/data/tokenize-corpus-pre.json,
/// made by llama.cpp from copies of the vocabulary with `tokenizer.ggml.pre` replaced).
#[test]
fn tokenizer_other_pre_tokenizers_match_llama_cpp() {
    if model_path_or_skip().is_none() {
        return;
    }
    let md = smollm_metadata().unwrap_or_else(|why| panic!("{why}"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenize-corpus-pre.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let by_pre: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("corpus JSON");
    assert!(by_pre.len() >= 4, "expected gpt-2, default, llama3, qwen2: {:?}", by_pre.keys());
    for (pre, cases) in &by_pre {
        let mut md = md.clone();
        md.set("tokenizer.ggml.pre", Value::String(pre.clone()));
        let tok = Tokenizer::from_metadata(&md).unwrap_or_else(|e| panic!("pre {pre}: {e}"));
        let n = check_cases(&tok, cases, &format!("tokenizer.ggml.pre = {pre}"));
        println!("{n} cases with tokenizer.ggml.pre = {pre} equal llama.cpp's ids");
    }
}

#[test]
fn tokenizer_reference_cases_match_llama_cpp() {
    let tok = tokenizer_or_skip!();
    let n = check_cases(tok, &reference("tokenize.json"), "reference");
    println!("{n} reference cases equal llama.cpp's ids");
}

#[test]
fn tokenizer_bos_follows_the_request_and_the_metadata() {
    let tok = tokenizer_or_skip!();
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    let plain = tok.encode("Hello", Some(false), false).expect("encode");
    // SmolLM2 says tokenizer.ggml.add_bos_token = false.
    assert_eq!(tok.encode("Hello", None, false).expect("encode"), plain);
    let with = tok.encode("Hello", Some(true), false).expect("encode");
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &plain[..]);
    assert_eq!(tok.encode("", Some(true), false).expect("encode"), vec![1]);
    assert!(tok.encode("", None, true).expect("encode").is_empty());
}

#[test]
fn tokenizer_special_tokens_parse_only_when_asked() {
    let tok = tokenizer_or_skip!();
    let text = "<|im_start|>user";
    let parsed = tok.encode(text, Some(false), true).expect("encode");
    assert_eq!(parsed[0], 1, "{parsed:?}");
    let literal = tok.encode(text, Some(false), false).expect("encode");
    assert!(!literal.contains(&1), "{literal:?}");
    assert_eq!(tok.decode(&literal), text);
    assert_eq!(tok.decode(&parsed), text);
}

#[test]
fn tokenizer_end_of_generation_tokens() {
    let tok = tokenizer_or_skip!();
    assert!(tok.is_eog(2), "<|im_end|>");
    assert!(tok.is_eog(0), "<|endoftext|>");
    // llama.cpp takes "<reponame>" for the FIM repo token, which also ends generation.
    assert!(tok.is_eog(4), "<reponame>");
    assert_eq!((0..17).filter(|&i| tok.is_eog(i)).collect::<Vec<_>>(), [0, 2, 4], "llama.cpp's EOG set");
    assert!(!tok.is_eog(1), "<|im_start|>");
    assert!(!tok.is_eog(17), "!");
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    assert_eq!(tok.token_text(u32::MAX), None);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.piece(2), "<|im_end|>");
    assert_eq!(tok.piece(216), " ");
    assert_eq!(tok.piece(u32::MAX), "");
}

#[test]
fn tokenizer_stream_decoder_holds_split_characters() {
    let tok = tokenizer_or_skip!();
    let text = "東京都 🙂 ok, Ça va";
    let ids = tok.encode(text, Some(false), false).expect("encode");
    let mut dec = StreamDecoder::new(tok);
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        let piece = dec.push(id);
        assert!(!piece.contains('\u{FFFD}'), "token {id} gave a replacement character");
        held += usize::from(piece.is_empty());
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
    assert!(held > 0, "expected some token to end inside a character: {ids:?}");

    // A lone lead byte is held, then reported as U+FFFD when the stream ends.
    let lead = (0..tok.vocab_size() as u32).find(|&i| tok.token_bytes(i) == [0xE6]).expect("a token for byte 0xE6");
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(lead), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
    // …and a lead byte followed by ASCII is replaced at once.
    let a = tok.token_id("a").expect("a");
    assert_eq!(dec.push(lead), "");
    assert_eq!(dec.push(a), "\u{FFFD}a");
}

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String((*s).to_string())).collect())
}

/// A tiny SentencePiece vocabulary: unk, bos, eos, a control token, the 256 byte tokens, then
/// pieces with scores (higher merges first).
fn spm_metadata() -> Metadata {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string(), "<|turn|>".to_string()];
    let mut types = vec![2, 3, 3, 3];
    let mut scores = vec![0.0f32; 4];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("ll", -3.5),
        ("▁he", -4.0),
        ("llo", -4.5),
        ("▁hello", -5.0),
        ("▁w", -3.0),
        ("or", -6.0),
        ("▁wor", -7.0),
        ("ld", -6.5),
        ("▁world", -8.0),
    ];
    for (p, s) in pieces {
        tokens.push((*p).to_string());
        types.push(1);
        scores.push(*s);
    }
    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", Value::String("llama".into()));
    md.set("tokenizer.ggml.tokens", strings(&tokens.iter().map(String::as_str).collect::<Vec<_>>()));
    md.set("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    md.set("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()));
    md.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    md.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    md.set("tokenizer.ggml.unknown_token_id", Value::U32(0));
    md
}

#[test]
fn tokenizer_sentencepiece_vocabulary() {
    let tok = Tokenizer::from_metadata(&spm_metadata()).expect("SentencePiece tokenizer");
    let id = |t: &str| tok.token_id(t).unwrap_or_else(|| panic!("{t} in the vocabulary"));
    let byte = |b: u8| id(&format!("<0x{b:02X}>"));
    let (hello, world) = (id("▁hello"), id("▁world"));

    // A SentencePiece model adds BOS by default and prefixes a space (as ▁).
    assert_eq!(tok.encode("hello world", None, false).expect("encode"), vec![1, hello, world]);
    assert_eq!(tok.encode("hello world", Some(false), false).expect("encode"), vec![hello, world]);
    // Unknown characters fall back to their UTF-8 bytes.
    assert_eq!(tok.encode("hé", Some(false), false).expect("encode"), vec![id("▁h"), byte(0xC3), byte(0xA9)]);
    // Runs of spaces are ▁ tokens; no normalization.
    assert_eq!(tok.encode(" hello", Some(false), false).expect("encode"), vec![id("▁"), hello]);
    // Text after a special token gets the space prefix again, as in llama.cpp.
    assert_eq!(tok.encode("hello<|turn|>world", Some(false), true).expect("encode"), vec![hello, 3, world]);
    assert_eq!(tok.encode("hello<|turn|>world", Some(false), false).expect("encode").first(), Some(&hello));

    // More cases, with the ids llama.cpp (llama-cpp-python 0.3.36) gives this vocabulary written
    // to a GGUF file: ▁ = 260, h = 261, e = 262, l = 263, o = 264, w = 265, ▁h = 268, llo = 271,
    // ▁hello = 272, or = 274, ▁wor = 275, ld = 276, ▁world = 277.
    let llama_cpp: &[(&str, &[u32])] = &[
        ("helloworld", &[272, 265, 274, 276]),
        ("hello  world", &[272, 260, 277]),
        ("wor ld", &[275, 260, 276]),
        ("lo", &[260, 263, 264]),
        ("hhello", &[268, 261, 262, 271]),
        ("hé", &[268, 199, 173]),
        ("", &[]),
    ];
    for (text, want) in llama_cpp {
        assert_eq!(tok.encode(text, Some(false), false).expect("encode"), *want, "{text:?}");
    }
    let literal = tok.encode("hello<|turn|>world", Some(false), false).expect("encode");
    assert_eq!(literal, [272, 64, 128, 120, 121, 266, 114, 128, 66, 265, 274, 276]);

    // Decoding drops the prefixed space and turns byte tokens back into text.
    assert_eq!(tok.decode(&[hello, world]), "hello world");
    assert_eq!(tok.decode(&tok.encode("hé", Some(false), false).expect("encode")), "hé");
    assert_eq!(tok.decode(&[1, hello]), "<s> hello");
    assert_eq!(tok.piece(byte(b'A')), "A");
    assert_eq!(tok.piece(hello), " hello");
    assert!(tok.is_eog(2) && !tok.is_eog(1));
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(byte(0xC3)), "");
    assert_eq!(dec.push(byte(0xA9)), "é");
}

#[test]
fn tokenizer_errors_name_the_problem() {
    let mut md = spm_metadata();
    md.set("tokenizer.ggml.model", Value::String("bert".into()));
    let err = Tokenizer::from_metadata(&md).err().expect("bert is not supported");
    assert!(matches!(err, TokenizerError::UnsupportedModel { .. }), "{err}");
    assert!(err.to_string().contains("\"bert\""), "{err}");

    let mut md = spm_metadata();
    md.set("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)]));
    let err = Tokenizer::from_metadata(&md).err().expect("too few scores");
    assert!(err.to_string().contains("tokenizer.ggml.scores has 1 entries"), "{err}");

    let mut md = spm_metadata();
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    let err = Tokenizer::from_metadata(&md).err().expect("gpt2 needs merges");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set("tokenizer.ggml.pre", Value::String("no-such-pre".into()));
    md.set("tokenizer.ggml.tokens", strings(&["a", "b", "ab", "Ġ"]));
    md.set("tokenizer.ggml.merges", strings(&["a b"]));
    let tok = Tokenizer::from_metadata(&md).expect("an unknown pre-tokenizer falls back to gpt-2");
    assert_eq!(tok.encode("ab a", Some(false), false).expect("encode"), vec![2, 3, 0]);
    assert!(matches!(tok.encode("ab", Some(true), false), Err(TokenizerError::NoBos)), "no BOS in range");
}
