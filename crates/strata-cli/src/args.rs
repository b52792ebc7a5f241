//! Command-line arguments (clap derive). Every flag says what it does in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Run llama, mistral, qwen2, qwen3 and gemma3 language models on the CPU or a GPU, streaming the layers \
             that do not fit",
    long_about = "Run llama, mistral, qwen2, qwen3 and gemma3 language models (GGUF files, or Hugging Face \
                  safetensors checkpoints) on the CPU or a CUDA GPU.\n\n\
                  Without --model, commands use the default model models/SmolLM2-135M-Instruct.Q4_1.gguf \
                  (fetch it with scripts/fetch-model.sh)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Before the command (`strata --cpu-kernels fast run ...`), as earlier versions took it; the
    /// commands that compute take it themselves and show it in their help.
    #[arg(long, value_enum, hide = true)]
    pub cpu_kernels: Option<CpuKernels>,
}

impl Cli {
    /// The CPU kernels to use: the command's `--cpu-kernels`, else the one given before the
    /// command, else `exact`.
    pub fn cpu_kernels(&self) -> CpuKernels {
        let own = match &self.command {
            Command::Run(a) => a.session.kernels.cpu_kernels,
            Command::Chat(a) => a.session.kernels.cpu_kernels,
            Command::Bench(a) => a.session.kernels.cpu_kernels,
            Command::Logits(a) => a.session.kernels.cpu_kernels,
            Command::Plan(a) => a.session.kernels.cpu_kernels,
            Command::Serve(a) => a.session.kernels.cpu_kernels,
            Command::Tokenize(_) | Command::Inspect(_) | Command::Synth(_) => None,
        };
        own.or(self.cpu_kernels).unwrap_or(CpuKernels::Exact)
    }
}

/// The CPU kernels, for the commands that run the model.
#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// CPU matrix kernels for quantized weights [default: exact]. `exact`: SIMD kernels with f32
    /// activations, the reference's arithmetic summed in another order; the path whose greedy
    /// tokens equal llama.cpp's on the reference cases. `fast`: 8-bit activations and SIMD
    /// integer dot products, like llama.cpp's own CPU path (faster still; the tokens can differ
    /// from llama.cpp's where two candidates are within a few tenths of a logit). `reference`:
    /// the plain, unvectorized reference kernels (slow; for telling a model bug from a kernel
    /// one).
    #[arg(long, value_enum)]
    pub cpu_kernels: Option<CpuKernels>,
}

/// `--context`: a positive number of tokens (0 used to mean the default; leave it out instead).
fn parse_context(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("the context must be at least 1 token; leave --context out for the model's training \
                      context (at most 4096)"
            .to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of tokens, e.g. 4096")),
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuKernels {
    Exact,
    Fast,
    Reference,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt, streaming it to stdout, then print a one-line summary.
    Run(RunArgs),
    /// Talk to the model interactively using its chat template (empty line or Ctrl-D ends).
    Chat(ChatArgs),
    /// Show the token ids (and pieces) of a text.
    Tokenize(TokenizeArgs),
    /// Measure prompt processing and generation speed (tok/s, median of repetitions), with the
    /// same device, offload and kernel flags as `run`.
    Bench(BenchArgs),
    /// Print the top-k logits at every prompt position (for comparing with other engines).
    Logits(LogitsArgs),
    /// Show a GGUF file's metadata, tensors and per-layer sizes.
    Inspect(InspectArgs),
    /// Write a random-weight llama model of a real shape (for tests and benchmarks).
    Synth(SynthArgs),
    /// Show where each layer would run (resident, streamed, cpu) and the predicted speed,
    /// without running anything. Works without a GPU for a hypothetical card (--gpu-memory).
    Plan(PlanArgs),
    /// Serve the model over HTTP with the OpenAI API (completions, chat completions, streaming,
    /// /v1/models, /health, /metrics), batching concurrent requests into one pass per step.
    /// Runs on the CPU; listens on 127.0.0.1:8080 unless told otherwise.
    Serve(ServeArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// A GPU when the build has CUDA and one is usable and the model fits, else the CPU.
    Auto,
    /// Only the CPU.
    Cpu,
    /// The GPU; an error if there is none or the model does not fit.
    Cuda,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvArg {
    F16,
    F32,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file, or a Hugging Face checkpoint directory (config.json, tokenizer.json,
    /// safetensors) [default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $STRATA_MODEL]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    /// Where to run the layers.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Context length in tokens [default: the model's training context, at most 4096]. Above
    /// the training context strata warns: the model has not seen such positions.
    #[arg(long, short = 'c', value_parser = parse_context)]
    pub context: Option<usize>,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    pub kv_type: KvArg,
    /// Most prompt tokens processed in one batch.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Cap on GPU memory strata may use, e.g. 6GiB (emulates a smaller card).
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
    #[command(flatten)]
    pub offload: OffloadArgs,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OffloadArg {
    /// Resident layers first, then streamed or cpu per layer, whichever is predicted faster.
    Auto,
    /// Every layer that is not resident is streamed over PCIe (same as --stream).
    Stream,
    /// Every layer that is not resident runs on the CPU (same as --cpu-layers).
    Cpu,
}

/// Where the layers go when they do not all fit in GPU memory.
#[derive(Args, Debug, Clone)]
pub struct OffloadArgs {
    /// How layers that do not fit in GPU memory run.
    #[arg(long, value_enum, default_value_t = OffloadArg::Auto)]
    pub offload: OffloadArg,
    /// Keep exactly the first N layers resident on the GPU (like llama.cpp's -ngl); the rest
    /// are streamed or run on the CPU (see --stream, --cpu-layers).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// Stream every non-resident layer's weights to the GPU just in time (pinned memory, a copy
    /// stream and prefetch overlapping compute).
    #[arg(long, conflicts_with = "cpu_layers")]
    pub stream: bool,
    /// Compute every non-resident layer on the CPU.
    #[arg(long)]
    pub cpu_layers: bool,
    /// Cap on pinned (page-locked) host memory for streamed layers, e.g. 8GiB [default: half
    /// of the available RAM].
    #[arg(long, value_name = "SIZE")]
    pub pinned_memory: Option<String>,
    /// Mixture-of-experts models: keep every layer's experts in host memory and compute them on
    /// the CPU, while the rest of each layer (attention, router) runs where the plan puts it
    /// (llama.cpp's --cpu-moe). Without it the planner chooses by predicted speed. A dense
    /// model, or a machine without a GPU, is unchanged (the plan notes it).
    #[arg(long, conflicts_with = "n_cpu_moe")]
    pub cpu_moe: bool,
    /// Mixture-of-experts models: keep the experts of the first N layers in host memory and
    /// compute them on the CPU (llama.cpp's --n-cpu-moe); the other layers' experts stay with
    /// their layer.
    #[arg(long, value_name = "N")]
    pub n_cpu_moe: Option<usize>,
    /// Mixture-of-experts models: GPU memory, e.g. 4GiB, for a cache of the most-used experts
    /// of the layers whose experts are on the CPU (all of them, or the first N with
    /// --n-cpu-moe), shared evenly; routed experts found in it run on the GPU, the others on the
    /// CPU at the same time. The cache is refilled between tokens from the routing counts.
    #[arg(long, value_name = "SIZE")]
    pub expert_cache: Option<String>,
    /// Prompt passes of at least N tokens stream every non-resident layer to the GPU, the ones
    /// decode computes on the CPU included (a batch reuses each copied weight for all its
    /// tokens); decode keeps the plan's split. `auto` (default): from the batch at which the
    /// plan's time model, with the measured speeds, predicts streaming faster; `off` or 0:
    /// never. Costs a packed copy of the cpu layers in host memory (`strata plan` shows it).
    #[arg(long, value_name = "N|auto|off")]
    pub prefill_stream_min: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long, short = 't', default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only from the k most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample only from the most likely tokens whose probabilities add up to p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty considers.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed: the same seed gives the same text [default: random, printed in the summary].
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// Stop after this many generated tokens.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Stop when the text contains this string (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens, up to --max-tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Speculative decoding: a drafter proposes tokens, one pass of the model checks them all.
#[derive(Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// Speculative decoding by prompt lookup, no second model: find the most recent earlier
    /// occurrence of the last N tokens (N = the n-gram length to match, e.g. 2 or 3) in the prompt
    /// and the text so far, draft the tokens that followed it, and check them in one pass. Pays off
    /// when the output repeats the input (code editing, extraction). Greedy output is unchanged;
    /// sampled output keeps the same distribution. Without N: the longest match of 4 down to 2
    /// tokens, at most 6 drafted tokens per round unless --draft-max says otherwise (the fastest
    /// setting measured on the default model, docs/cpu-bench.md).
    #[arg(long, value_name = "N", num_args = 0..=1)]
    pub lookup: Option<Option<usize>>,
    /// Speculative decoding with a draft model: a small model with the same vocabulary and
    /// tokenizer (checked at load) drafts tokens for the model to check. On a GPU it is placed in
    /// the memory left, like any model.
    #[arg(long, value_name = "FILE", conflicts_with = "lookup")]
    pub draft_model: Option<PathBuf>,
    /// Most tokens drafted per round with --lookup or --draft-model [default: 8; 6 with --lookup
    /// without N]; the round's length adapts below it to how many drafted tokens the model keeps.
    #[arg(long, value_name = "K")]
    pub draft_max: Option<usize>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object (text, ids, timings, device, plan) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Print per-layer compute, copy and wait times and the copy/compute overlap.
    #[arg(long)]
    pub stats: bool,
    /// Run one untimed forward pass of one token before the prompt (as llama.cpp's tools do by
    /// default), so that the timings leave out first-touch costs: weights read from memory into
    /// the caches for the first time, page tables, buffers. For benchmarks; with streamed
    /// layers it costs one pass of copies.
    #[arg(long)]
    pub warmup: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens of the prompt-processing test (one prefill of random token ids, like llama-bench's
    /// ppN); 0 skips it.
    #[arg(long, short = 'p', default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens of the generation test (greedy, one forward pass per token after a one-token
    /// prompt, like llama-bench's tgN); 0 skips it.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions of each test, after one untimed warm-up pass; the median is reported.
    #[arg(long, short = 'r', default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub reps: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// With --lookup or --draft-model, the generation test decodes speculatively (greedy) and
    /// reports the drafting counts.
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Host→device copy rate to assume for a hypothetical GPU, e.g. 25GB/s.
    #[arg(long, value_name = "RATE")]
    pub h2d_bandwidth: Option<String>,
    /// Measure this machine's speeds now (a second or so) instead of using cached or assumed ones.
    #[arg(long)]
    pub measure: bool,
    /// Print the plan as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to tokenize.
    pub text: String,
    /// Add the BOS token (default: as the model's metadata says).
    #[arg(long, overrides_with = "no_bos")]
    pub bos: bool,
    /// Do not add the BOS token.
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token text such as <|im_start|> as plain text.
    #[arg(long)]
    pub no_special: bool,
    /// Print {"ids": [...], "pieces": [...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (tokenized as `strata tokenize` does).
    #[arg(long, short = 'p', conflicts_with = "tokens", required_unless_present = "tokens")]
    pub prompt: Option<String>,
    /// Token ids instead of text, comma-separated (e.g. 504,3947,1834), scored exactly.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// How many of the highest logits to print per position.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Print {"positions": [{"ids": [...], "logits": [...]}, ...]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Model shape: smollm2-135m (the default model's), llama-1b, llama-7b, llama-13b, llama-70b,
    /// the mixture-of-experts shapes qwen3-30b-a3b and mixtral-8x7b, or tiny, tiny-moe and
    /// tiny-mixtral (for tests). Not with --derive.
    #[arg(long, required_unless_present = "derive", conflicts_with = "derive")]
    pub preset: Option<String>,
    /// Derive a test model of another architecture (qwen2, qwen3, gemma3, qwen3moe, mixtral) from the real
    /// weights of the llama-family GGUF given by --from (see strata_model::derive).
    #[arg(long, requires = "from")]
    pub derive: Option<String>,
    /// Source model of --derive.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// --derive qwen2: Q/K/V biases uniform in [-bias, bias] (0: zero biases).
    #[arg(long, default_value_t = 0.05)]
    pub bias: f32,
    /// --derive qwen3/gemma3: added norm weights 1 + jitter·u, u in [-1, 1) (0: unit weights).
    #[arg(long, default_value_t = 0.05)]
    pub norm_jitter: f32,
    /// --derive gemma3: sliding window of the local layers.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// --derive qwen3moe/mixtral: experts per layer, and how many each token uses.
    #[arg(long, num_args = 2, value_names = ["N", "USED"], default_values_t = [4, 2])]
    pub experts: Vec<usize>,
    /// --derive qwen3moe/mixtral: expert e > 0 scales each quant block by 1 + jitter·u.
    #[arg(long, default_value_t = 0.2)]
    pub expert_jitter: f32,
    /// --derive qwen3moe/mixtral: router weights uniform in [-amp, amp].
    #[arg(long, default_value_t = 0.1)]
    pub router_amp: f32,
    /// Weight type of the layer matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k.
    #[arg(long, default_value = "q4_0")]
    pub dtype: String,
    /// Output GGUF file.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the number of layers (smaller variants of a shape).
    #[arg(long)]
    pub layers: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <KEY>` on the /v1 endpoints (401 otherwise).
    #[arg(long, value_name = "KEY", env = "STRATA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Memory for the KV cache of all requests together, in blocks shared by them (paged). It is
    /// what the plan budgets for KV: each layer's blocks live where the layer runs. (`--context`
    /// is the most positions one request may use, prompt + completion; `--batch` is not used:
    /// a step's rows are --step-tokens.)
    #[arg(long, value_name = "SIZE", default_value = "512MiB")]
    pub kv_memory: String,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub kv_block: usize,
    /// Most requests generating at once (more wait in the queue).
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_seqs: usize,
    /// Most tokens in one batched pass: one per generating request, the rest prompt chunks of
    /// the requests joining. Must exceed --max-seqs.
    #[arg(long, default_value_t = 256)]
    pub step_tokens: usize,
    /// Most requests waiting for a slot; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest accepted request body (413 above it).
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub max_body: String,
    /// Largest max_tokens a request may ask for (400 above it).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_limit: usize,
    /// Device, context, KV type, offload and kernels, as for `run`.
    #[command(flatten)]
    pub session: SessionArgs,
}
