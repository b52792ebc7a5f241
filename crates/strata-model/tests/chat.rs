//! Chat templates: SmolLM2's own template (as llama-cpp-python's Jinja2 renders it), the ChatML
//! fallback, Python-style helpers, and template errors as values.

use strata_model::chat::{ChatMessage, ChatTemplate};
use strata_model::gguf::{GgufFile, Metadata, Value};
use strata_model::tokenizer::TokenizerError;

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "What is 2+2?")]
}

/// SmolLM2's template from the default model's metadata, or why it is unavailable.
fn smollm_template() -> Result<ChatTemplate, String> {
    let path = strata_model::default_model_path();
    let file = GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match ChatTemplate::from_metadata(file.metadata()) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!("{} has no tokenizer.chat_template", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[test]
fn chat_smollm_template_renders_chatml() {
    if crate::support::model_path_or_skip().is_none() {
        return;
    }
    let template = smollm_template().unwrap_or_else(|why| panic!("{why}"));
    // The same text llama-cpp-python 0.3.36 (Jinja2, trim_blocks, lstrip_blocks) renders.
    let text = template.render(&conversation(), true, "<|im_start|>", "<|im_end|>").expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without a system message the template supplies SmolLM's own.
    let text = template.render(&conversation()[1..], false, "", "").expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
}

#[test]
fn chat_metadata_without_a_template_is_none() {
    assert!(ChatTemplate::from_metadata(&Metadata::new()).expect("no key is fine").is_none());
    let mut md = Metadata::new();
    md.set("tokenizer.chat_template", Value::U32(3));
    assert!(ChatTemplate::from_metadata(&md).is_err(), "a non-string template is an error");
}

#[test]
fn chat_chatml_fallback() {
    let t = ChatTemplate::chatml();
    assert_eq!(
        t.render(&conversation(), true, "", "").expect("render"),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.render(&[], false, "", "").expect("render"), "");
}

#[test]
fn chat_template_errors_are_values() {
    let Err(err) = ChatTemplate::new("{% for m in messages %}") else { panic!("an unclosed for must fail") };
    assert!(matches!(err, TokenizerError::Template(_)), "{err}");
    assert!(err.to_string().starts_with("chat template: "), "{err}");

    let t = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('the first message must be system') }}{% endif %}ok",
    )
    .expect("compiles");
    let Err(err) = t.render(&conversation()[1..], false, "", "") else { panic!("the template raises") };
    assert!(err.to_string().contains("the first message must be system"), "{err}");
    assert_eq!(t.render(&conversation(), false, "", "").expect("render"), "ok");

    let t = ChatTemplate::new("{{ messages[0].content | no_such_filter }}").err();
    let t = match t {
        Some(e) => panic!("unknown filters fail at render time in minijinja, got {e}"),
        None => ChatTemplate::new("{{ messages[0].content | no_such_filter }}").expect("compiles"),
    };
    assert!(t.render(&conversation(), false, "", "").is_err());
}

#[test]
fn chat_python_helpers_and_blocks() {
    let msgs = vec![ChatMessage::new("user", "  padded  ")];
    // Python string methods, as Hugging Face templates use them.
    let t = ChatTemplate::new("[{{ messages[0].content.strip() }}]{{ messages[0].role.upper() }}").expect("compiles");
    assert_eq!(t.render(&msgs, false, "", "").expect("render"), "[padded]USER");
    // tojson with Python's separators and no HTML escaping.
    let t = ChatTemplate::new("{{ {'a': [1, 2], 'b': '<x>'} | tojson }}").expect("compiles");
    assert_eq!(t.render(&msgs, false, "", "").expect("render"), r#"{"a": [1, 2], "b": "<x>"}"#);
    // trim_blocks / lstrip_blocks: block tags leave no blank lines behind.
    let t = ChatTemplate::new("{% for m in messages %}\n  {% if true %}\n{{ m.role }}\n  {% endif %}\n{% endfor %}\n")
        .expect("compiles");
    assert_eq!(t.render(&msgs, false, "", "").expect("render"), "user\n");
    // bos_token, eos_token and strftime_now are available.
    let t = ChatTemplate::new("{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') | length }}").expect("compiles");
    assert_eq!(t.render(&msgs, false, "<s>", "</s>").expect("render"), "<s>|</s>|4");
}
