#!/usr/bin/env python3
"""Writes crates/strata-model/tests/data/tokenize-corpus.json: diverse texts and the token ids
llama.cpp (through llama-cpp-python) gives them with the default model, for strata's tokenizer
test to reproduce exactly.

    $(scripts/reference-env.sh --python) scripts/make-tokenizer-corpus.py [MODEL.gguf]

Ids are made with add_bos=False and special=True (text such as <|im_start|> becomes its control
token), the same as strata's `encode(text, Some(false), true)`.

It also writes tests/data/tokenize-corpus-pre.json: the same texts tokenized with the model's
vocabulary under other pre-tokenizers (tokenizer.ggml.pre = gpt-2, default, llama3, qwen2), each
from a vocabulary-only GGUF copy of the model's tokenizer keys, so that the regexes of those
pre-tokenizers are checked against llama.cpp too.
"""

import json
import os
import sys
import tempfile

import gguf

from llama_cpp import Llama, __version__ as llama_cpp_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "crates", "strata-model", "tests", "data", "tokenize-corpus.json")
OUT_PRE = os.path.join(ROOT, "crates", "strata-model", "tests", "data", "tokenize-corpus-pre.json")
OTHER_PRES = ["gpt-2", "default", "llama3", "qwen2"]

CORPUS = [
    # empty, single characters
    "",
    "a",
    "Z",
    " ",
    "\n",
    "\t",
    "7",
    "é",
    "中",
    "🙂",
    "'",
    "<",
    "\x00",
    "\x7f",
    # plain English, casing, contractions
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "UPPERCASE lowercase CamelCase snake_case kebab-case",
    "It's, I'm, you're, we've, they'll, he'd, don't, can't",
    "IT'S SHOUTING: WE'RE HERE, THEY'LL SEE",
    "rock 'n' roll, 'quoted', ''double'' and ' lone",
    "O'Brien's dog's bone's",
    "Dr. Smith (Ph.D.) said: \"Yes—no…maybe?\"",
    # whitespace
    "  two leading",
    "trailing two  ",
    "   three leading and three trailing   ",
    "a  b   c    d     e",
    "\ttab\tseparated\tvalues\t",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    "old mac\rline\rendings",
    "mixed \t \n \r\n  whitespace\t\t\n\n\n",
    "\n\n\n\n",
    "                                        forty spaces",
    "no-break\u00a0space and\u2003em space and\u3000ideographic space",
    "zero\u200bwidth\u200cjoiners\u200d",
    "\u2028line separator\u2029paragraph separator",
    # numbers and digits
    "0",
    "42",
    "3.14159",
    "1234567890",
    "98765432109876543210987654321098765432109876543210",
    "Phone: +1 (555) 123-4567, zip 90210",
    "1,000,000 and 1.000.000 and 1 000 000",
    "2024-11-27T00:00:00Z",
    "x = 1e-10; y = 0xFF; z = 0b1010;",
    "v1.2.3-rc.4+build.567",
    "½ ¾ ² ³ ① ② Ⅻ ٣ ४ ๕",
    "١٢٣٤٥ ۶۷۸ ०१२",
    # punctuation and symbols
    "!!! ??? ... ,,, ;;; :::",
    "@#$%^&*()_+-=[]{}|\\:\";'<>?,./`~",
    "-> => <= >= != == === !== && || << >> ::",
    "«guillemets» „quotes“ ‘single’ “double”",
    "€100 £50 ¥1000 ₹20 ₿0.5 $5",
    "©®™ §¶ †‡ •·",
    "→ ← ↑ ↓ ⇒ ∀x∈ℝ: ∑∫√∞ ≈ ≠ ≤ ≥",
    # URLs, paths, markup
    "https://example.com/path/to/page?query=1&other=two#fragment",
    "mailto:someone@example.org",
    "C:\\Users\\Name\\Documents\\file.txt",
    "/usr/local/bin/python3 --version",
    "<div class=\"x\"><p>Hello</p></div>",
    "# Title\n\n- item *one*\n- item **two**\n\n```rust\nfn main() {}\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "{\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "for i in $(seq 1 10); do echo \"$i\"; done",
    "public static void main(String[] args) { System.out.println(\"hi\"); }",
    "    indented with spaces\n\tindented with a tab\n        deeper",
    "x=[1,2,3]\nprint(sum(x))",
    # Latin scripts with diacritics, combining marks
    "Ça va? Ünïcödé façade naïve coöperate",
    "Straße, Größe, Fußball",
    "Ångström, Øresund, Æsir",
    "Zażółć gęślą jaźń",
    "Tiếng Việt có dấu",
    "e\u0301 vs é (combining acute vs precomposed)",
    "a\u0300\u0301\u0302\u0303\u0304 stacked marks",
    "Z\u0335\u0321a\u0336\u0322l\u0337\u0323g\u0338\u0324o\u0334",
    # other scripts
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "ওহে বিশ্ব",
    "สวัสดีชาวโลก",
    "ជំរាបសួរ",
    "გამარჯობა",
    "Բարեւ աշխարհ",
    "ሰላም ልዑል",
    "안녕하세요 세계",
    "こんにちは世界、カタカナとひらがな。",
    "東京都",
    "你好，世界！这是一个测试。",
    "繁體中文測試：臺灣",
    "漢字かなカナ한글ABC123",
    "𠜎𠜱𠝹𠱓 (CJK extension B)",
    # emoji
    "🙂 ok",
    "😀😃😄😁😆",
    "👍🏽 thumbs up, medium skin",
    "👨‍👩‍👧‍👦 family (ZWJ)",
    "🏳️‍🌈 flag sequence",
    "🇺🇸🇯🇵🇫🇷🇩🇪 regional indicator flags",
    "❤️ vs ❤ (variation selector)",
    "🧑‍💻 technologist, 🤷‍♀️ shrug",
    "keycap 1️⃣ #️⃣",
    "text🙂without🙂spaces🙂",
    # special tokens inside text (control tokens with special=True)
    "<|im_start|>system\nBe brief.<|im_end|>\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "before<|endoftext|>after",
    "<|im_end|><|im_end|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|",
    "<|im_start|><|im_start|>>",
    "<repo_name>strata<file_sep>src/lib.rs<filename>main.rs",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<gh_stars>100<issue_start>bug<issue_comment>fix<issue_closed>",
    # misc edge cases
    "a\u00a0b",
    "a\u0085b next line",
    "\ufeffBOM at start",
    "soft\u00adhyphen",
    "replacement \ufffd char",
    "private use \ue000\uf8ff",
    "tag chars \U000e0041\U000e0042",
    "unassigned \U0003ffff plane",
    "'s 't 're 've 'm 'll 'd",
    "' s",
    "Mixed 123abc abc123 a1b2c3",
    "ALLCAPS123 lower456 MiXeD789",
    "...and then... ?!?! …",
    "word" * 50,
    "repeat " * 40,
    "ab" * 100,
]


def tokenize_all(model_path):
    llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
    return [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)} for t in CORPUS]


def format_cases(cases):
    # One case a line: reviewable diffs when the corpus grows.
    return "[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]"


def vocab_only_copy(model, pre, path):
    """A GGUF holding the model's tokenizer keys with tokenizer.ggml.pre replaced, and just
    enough llama hyperparameters for llama.cpp to load the vocabulary."""
    reader = gguf.GGUFReader(model)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        value = field.contents()
        vtype = field.types[0]
        if key == "tokenizer.ggml.pre":
            value = pre
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STRATA_MODEL", DEFAULT_MODEL)
    cases = tokenize_all(model)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(format_cases(cases) + "\n")
    print(f"{len(cases)} cases from {os.path.basename(model)} with llama-cpp-python {llama_cpp_version} -> {OUT}")

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for pre in OTHER_PRES:
            path = os.path.join(tmp, f"vocab-{pre}.gguf")
            vocab_only_copy(model, pre, path)
            parts.append(json.dumps(pre) + ": " + format_cases(tokenize_all(path)))
    with open(OUT_PRE, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")
    print(f"{len(CORPUS)} cases each for tokenizer.ggml.pre = {', '.join(OTHER_PRES)} -> {OUT_PRE}")


if __name__ == "__main__":
    main()
