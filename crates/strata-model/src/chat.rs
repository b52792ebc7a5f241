//! Chat templates: the model's Jinja template (`tokenizer.chat_template`) rendered with
//! minijinja the way Hugging Face and llama-cpp-python render it (`trim_blocks`,
//! `lstrip_blocks`, Python string methods such as `.strip()`, `raise_exception`,
//! `strftime_now`, `tojson` with Python's separators), and a fallback for models that have
//! none: Gemma's turn format for gemma3 files, ChatML otherwise.

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

use crate::gguf::Metadata;
use crate::tokenizer::TokenizerError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or whatever the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// The ChatML template llama.cpp falls back to: `<|im_start|>role\ncontent<|im_end|>\n` per
/// message, then `<|im_start|>assistant\n` when a reply is asked for.
const CHATML: &str = "{%- for message in messages -%}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/// Gemma's turn format, as llama.cpp's built-in `gemma` template writes it for files without
/// a template: system messages (trimmed) are held back and written, followed by a blank line,
/// at the start of the next non-model turn; `assistant` is called `model`; each turn is
/// `<start_of_turn>role\ncontent<end_of_turn>\n` with the content trimmed; a reply opens with
/// `<start_of_turn>model\n`. No BOS in the text: the tokenizer adds it
/// (`tokenizer.ggml.add_bos_token`), once.
const GEMMA: &str = "{%- set ns = namespace(system='') -%}\
{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + (message['content'] | trim) -%}\
{%- else -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{- '<start_of_turn>' + role + '\n' -}}\
{%- if ns.system and role != 'model' -%}{{- ns.system + '\n\n' -}}{%- set ns.system = '' -%}{%- endif -%}\
{{- (message['content'] | trim) + '<end_of_turn>\n' -}}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}";

const NAME: &str = "chat_template";

/// A compiled chat template. `Send + Sync` and `Clone`; rendering takes `&self`.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

impl ChatTemplate {
    /// The template in `tokenizer.chat_template`, compiled; `None` when the key is absent.
    ///
    /// # Errors
    /// The key is not a string, or the template does not compile ([`TokenizerError::Template`]).
    pub fn from_metadata(md: &Metadata) -> Result<Option<ChatTemplate>, TokenizerError> {
        md.opt_str("tokenizer.chat_template")?.map(ChatTemplate::new).transpose()
    }

    /// The ChatML fallback used when a model has no template.
    pub fn chatml() -> ChatTemplate {
        // CHATML is a constant known to compile (the chat tests render it).
        ChatTemplate::new(CHATML).unwrap_or_else(|e| unreachable!("the built-in ChatML template: {e}"))
    }

    /// The template for a model of architecture `arch` that has none, and its name: Gemma's
    /// turn format for `gemma3` (Gemma files use `<start_of_turn>`, and ChatML's markers are
    /// not tokens of their vocabulary), ChatML for the rest.
    pub fn fallback_for(arch: &str) -> (ChatTemplate, &'static str) {
        match arch {
            // GEMMA is a constant known to compile (the chat tests render it).
            "gemma3" => (
                ChatTemplate::new(GEMMA).unwrap_or_else(|e| unreachable!("the built-in Gemma template: {e}")),
                "Gemma's turn format",
            ),
            _ => (ChatTemplate::chatml(), "ChatML"),
        }
    }

    /// Compiles a Jinja chat template.
    ///
    /// # Errors
    /// [`TokenizerError::Template`] with minijinja's message (kind, line) when it does not compile.
    pub fn new(source: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string()).map_err(template_error)?;
        Ok(ChatTemplate { source: source.to_string(), env })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the opening of an
    /// assistant turn. `bos_token` and `eos_token` are the texts the template may insert.
    ///
    /// # Errors
    /// [`TokenizerError::Template`] when rendering fails (an undefined operation, a
    /// `raise_exception` call from the template, …), with minijinja's message.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        template.render(context! { messages, add_generation_prompt, bos_token, eos_token }).map_err(template_error)
    }
}

/// A minijinja error as one line with its cause chain ("… (in chat_template:3)").
fn template_error(e: Error) -> TokenizerError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    TokenizerError::Template(msg)
}

/// `raise_exception(msg)`: templates call it to reject a conversation (e.g. roles that do not
/// alternate).
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("the template raised: {msg}")))
}

/// `strftime_now(format)`: today's date (UTC) for templates that print it (Llama 3.x). Knows
/// `%d %m %Y %y %b %B %H %M %S %j %%`; other directives are copied as they are.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

/// Formats `secs` since the Unix epoch (UTC) with a subset of strftime.
pub(crate) fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as the Hugging Face templates expect it: Python's `json.dumps(x, ensure_ascii=False)`
/// (`", "` and `": "` separators, no HTML escaping), or indented with `indent=n`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    res.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(text))
}

/// serde_json output with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ChatTemplate>();
};
