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

/// Gemma 3's published template (text parts): the system message folds into the first user
/// turn, roles must alternate (`raise_exception` otherwise), assistant turns are "model".
const GEMMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// Qwen3's published template without the tool branches: a namespace updated from a reversed
/// walk over the messages, string methods (startswith, split, rstrip, lstrip), `<think>`
/// stripping from earlier assistant turns.
const QWEN3_TEMPLATE: &str = r#"{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"#;

#[test]
fn chat_gemma3_template() {
    let t = ChatTemplate::new(GEMMA3_TEMPLATE).expect("parses");
    let text = t.render(&conversation(), true, "<bos>", "<eos>").expect("render");
    assert_eq!(text, "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n");
    let mut turns = conversation();
    turns.push(ChatMessage::new("assistant", " 4 "));
    turns.push(ChatMessage::new("user", "And 3+3?"));
    let text = t.render(&turns, false, "<bos>", "<eos>").expect("render");
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n\
         <start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
    );
    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let e = t.render(&bad, true, "<bos>", "<eos>").expect_err("roles must alternate");
    assert!(e.to_string().contains("Conversation roles must alternate"), "{e}");
}

/// The built-in Gemma template for gemma3 files without one renders what Gemma's own template
/// renders, minus the BOS (the tokenizer adds it): the system message folded into the first
/// user turn, `model` for the assistant, trimmed contents.
#[test]
fn chat_gemma3_fallback_matches_gemma_template() {
    let (t, name) = ChatTemplate::fallback_for("gemma3");
    assert_eq!(name, "Gemma's turn format");
    let own = ChatTemplate::new(GEMMA3_TEMPLATE).expect("parses");
    let mut turns = conversation();
    for generation in [true, false] {
        let want = own.render(&turns, generation, "<bos>", "<eos>").expect("render");
        let got = t.render(&turns, generation, "<bos>", "<eos>").expect("render");
        assert_eq!(got, want.strip_prefix("<bos>").expect("Gemma's template starts with BOS"));
        turns.push(ChatMessage::new("assistant", " 4 "));
        turns.push(ChatMessage::new("user", "And 3+3?"));
    }
    let (_, name) = ChatTemplate::fallback_for("llama");
    assert_eq!(name, "ChatML");
}

#[test]
fn chat_qwen3_template() {
    let t = ChatTemplate::new(QWEN3_TEMPLATE).expect("parses");
    let mut turns = conversation();
    turns.push(ChatMessage::new("assistant", "<think>\nsum\n</think>\n\n4"));
    turns.push(ChatMessage::new("user", "And 3+3?"));
    let text = t.render(&turns, true, "", "<|im_end|>").expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
}
