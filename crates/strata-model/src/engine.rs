//! [`Engine`]: a model opened on this machine, ready to generate or score.
//!
//! Opening an engine does what `strata run` does: find the GPU (or say why there is none),
//! measure the machine (or read the measurement cached earlier), plan which layers are
//! resident, streamed or computed on the CPU, and open a [`Session`] on that plan — planning
//! again with less GPU memory if loading runs out of it. The CPU kernel path is a setting of
//! the engine ([`EngineOptions::cpu_path`]): every op the engine issues runs on it, so a
//! caller never touches thread-local state.
//!
//! ```no_run
//! use strata_model::{Engine, EngineOptions, GenerateOptions};
//!
//! let mut engine = Engine::open(EngineOptions::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"))?;
//! let g = engine.generate("The capital of France is", &GenerateOptions::default(), |piece| {
//!     print!("{piece}")
//! })?;
//! println!("\n{} tokens", g.generated_ids.len());
//! # Ok::<(), strata_model::Error>(())
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use strata_runtime::plan::{Plan, Policy, Rest, assumed_speeds};
use strata_tensor::ops::{CpuPath, with_cpu_path};
use strata_tensor::{Device, Gpu, GpuOptions, discover};

use crate::generate::{GenerateOptions, Generation, generate};
use crate::model::{Model, SessionOptions};
use crate::offload::{OffloadOptions, cached_speeds, make_plan, measure_speeds, open_planned};
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Where an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU if one can be used, else the CPU (the reason is in [`Engine::device_note`]).
    #[default]
    Auto,
    /// The CPU only.
    Cpu,
    /// The GPU; opening fails, with the reason, when none can be used.
    Cuda,
}

/// What [`Engine::open`] opens, and how.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A GGUF file or a Hugging Face checkpoint directory (see [`Model::load`]).
    pub model: PathBuf,
    /// Where to run.
    pub device: DeviceChoice,
    /// Caps on GPU and pinned memory (e.g. to emulate a smaller card).
    pub gpu: GpuOptions,
    /// Placement policy: automatic, a number of resident layers, streamed or CPU rest.
    pub offload: OffloadOptions,
    /// Context length, KV cache type, prompt batch.
    pub session: SessionOptions,
    /// The CPU kernels every host op of this engine runs on.
    pub cpu_path: CpuPath,
    /// Measure the machine even when a measurement is cached (opening on a GPU measures when
    /// nothing is cached; on the CPU no measurement is needed).
    pub measure: bool,
}

impl EngineOptions {
    /// Defaults for the model at `path`: automatic device and placement, the model's context
    /// (at most 4096), the exact CPU kernels.
    ///
    /// ```
    /// use strata_model::{DeviceChoice, EngineOptions};
    ///
    /// let mut opts = EngineOptions::new("model.gguf");
    /// opts.device = DeviceChoice::Cpu;
    /// opts.session.context = 1024;
    /// assert_eq!(opts.model.to_str(), Some("model.gguf"));
    /// ```
    pub fn new(model: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            model: model.into(),
            device: DeviceChoice::Auto,
            gpu: GpuOptions::default(),
            offload: OffloadOptions::default(),
            session: SessionOptions::default(),
            cpu_path: CpuPath::default(),
            measure: false,
        }
    }
}

/// The GPU `opts` ask for: `Ok(Ok(gpu))`, or `Ok(Err(why))` when auto falls back to the CPU.
///
/// # Errors
/// [`DeviceChoice::Cuda`] without a usable GPU, with the reason.
pub fn pick_gpu(opts: &EngineOptions) -> Result<std::result::Result<Gpu, String>> {
    if opts.device == DeviceChoice::Cpu {
        return Ok(Err("--device cpu".to_string()));
    }
    let (_, gpu, why) = discover(&opts.gpu);
    let why = cpu_reason(why.as_ref(), nvidia_gpu_present());
    match (gpu, opts.device) {
        (Some(g), _) => Ok(Ok(g)),
        (None, DeviceChoice::Cuda) => Err(Error::invalid(format!("--device cuda: {why}"))),
        (None, _) => Ok(Err(why)),
    }
}

/// Whether the kernel has an NVIDIA driver loaded (a GPU a CUDA build could use).
pub fn nvidia_gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// Why the CPU is used, in one clause: rebuild advice only where a CUDA build would find a GPU
/// (`nvidia`), no nested parentheses.
pub fn cpu_reason(why: Option<&strata_tensor::Unavailable>, nvidia: bool) -> String {
    use strata_tensor::Unavailable;
    match why {
        Some(Unavailable::NotBuilt) if nvidia => {
            "this build has no CUDA support, rebuild with `--features cuda` to use the NVIDIA GPU".into()
        }
        Some(Unavailable::NotBuilt) | None => "no GPU".into(),
        Some(Unavailable::NoDriver) => "no NVIDIA driver".into(),
        Some(other) => other.to_string(),
    }
}

/// The plan for `model` under `opts` without opening a session: on `gpu` (see [`pick_gpu`]),
/// or — with none — on a hypothetical card of [`OffloadOptions::hypothetical_gpu`] bytes (CPU
/// only when that is `None`). Speeds are measured when [`EngineOptions::measure`] is set, else
/// read from the cache, else assumed.
///
/// ```no_run
/// use strata_model::{EngineOptions, Model, engine::plan_for};
///
/// let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
/// let mut opts = EngineOptions::new(&model.path);
/// opts.offload.hypothetical_gpu = Some(8 << 30);
/// print!("{}", plan_for(&model, &opts, None)?.render_table());
/// # Ok::<(), strata_model::Error>(())
/// ```
///
/// # Errors
/// A measurement that fails, a request that cannot fit.
pub fn plan_for(model: &Model, opts: &EngineOptions, gpu: Option<&Gpu>) -> Result<Plan> {
    let speeds = if opts.measure {
        measure_speeds(model, gpu, opts.cpu_path)?
    } else {
        cached_speeds(gpu, opts.cpu_path).unwrap_or_else(assumed_speeds)
    };
    make_plan(model, &opts.session, gpu, speeds, &opts.offload)
}

/// A model, the GPU it runs on (if any), its plan and one session over it.
///
/// The model is shared ([`Arc`]): an engine can be stored in a long-lived struct, and more
/// sessions over the same weights can be opened with [`Session::new`].
pub struct Engine {
    model: Arc<Model>,
    gpu: Option<Gpu>,
    device_note: Option<String>,
    plan: Option<Plan>,
    session: Session,
    cpu_path: CpuPath,
    /// The draft model's session for speculative decoding ([`Engine::open_draft`]).
    draft: Option<Session>,
    /// The session options the engine was opened with (a draft model is opened with them).
    session_opts: SessionOptions,
}

impl Engine {
    /// Loads the model at [`EngineOptions::model`] and opens it on this machine.
    ///
    /// ```no_run
    /// use strata_model::{Engine, EngineOptions};
    ///
    /// let engine = Engine::open(EngineOptions::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"))?;
    /// println!("{} on {}", engine.model().path.display(), engine.device());
    /// # Ok::<(), strata_model::Error>(())
    /// ```
    ///
    /// # Errors
    /// The model file's problems, no GPU when [`DeviceChoice::Cuda`] asks for one, a placement
    /// that cannot fit, or out of memory that re-planning cannot avoid.
    pub fn open(opts: EngineOptions) -> Result<Engine> {
        Engine::open_with_progress(opts, &|_, _| {})
    }

    /// [`Engine::open`], calling `progress(bytes done, bytes total)` as weights are uploaded.
    ///
    /// # Errors
    /// As [`Engine::open`].
    pub fn open_with_progress(opts: EngineOptions, progress: &dyn Fn(u64, u64)) -> Result<Engine> {
        let model = Arc::new(Model::load(&opts.model)?);
        Engine::with_model(model, &opts, progress)
    }

    /// An engine over a model already loaded (or built in memory, like a synthetic one);
    /// [`EngineOptions::model`] is not read.
    ///
    /// # Errors
    /// As [`Engine::open`], without the file's problems.
    pub fn with_model(model: Arc<Model>, opts: &EngineOptions, progress: &dyn Fn(u64, u64)) -> Result<Engine> {
        let gpu = match pick_gpu(opts)? {
            Ok(g) => g,
            Err(why) => {
                let needs_gpu = match opts.offload.policy {
                    Policy::GpuLayers(n) => n > 0 || opts.offload.rest == Rest::Streamed,
                    Policy::AllStreamed => true,
                    Policy::Auto | Policy::AllCpu => false,
                };
                if needs_gpu {
                    return Err(Error::invalid(format!(
                        "resident or streamed layers (--gpu-layers, --stream) need a GPU, and none is used here ({why})"
                    )));
                }
                let session = with_cpu_path(opts.cpu_path, || Session::new(Arc::clone(&model), None, &opts.session))?;
                let device_note = (opts.device != DeviceChoice::Cpu).then_some(why);
                return Ok(Engine {
                    model,
                    gpu: None,
                    device_note,
                    plan: None,
                    session,
                    cpu_path: opts.cpu_path,
                    draft: None,
                    session_opts: opts.session.clone(),
                });
            }
        };
        let cached = if opts.measure { None } else { cached_speeds(Some(&gpu), opts.cpu_path) };
        let speeds = match cached {
            Some(s) => s,
            None => measure_speeds(&model, Some(&gpu), opts.cpu_path).unwrap_or_else(|e| {
                log::warn!("measuring this machine failed ({e}); planning with assumed speeds");
                assumed_speeds()
            }),
        };
        let (plan, session) = with_cpu_path(opts.cpu_path, || {
            open_planned(&model, Some(&gpu), &opts.session, speeds, &opts.offload, progress)
        })?;
        Ok(Engine {
            model,
            gpu: Some(gpu),
            device_note: None,
            plan: Some(plan),
            session,
            cpu_path: opts.cpu_path,
            draft: None,
            session_opts: opts.session.clone(),
        })
    }

    /// The model (shared with the session).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    /// The GPU in use, if any.
    pub fn gpu(&self) -> Option<&Gpu> {
        self.gpu.as_ref()
    }

    /// Why no GPU is used, when [`DeviceChoice::Auto`] fell back to the CPU.
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// Where the accelerated layers run (`cpu` when none is).
    pub fn device(&self) -> Device {
        self.session.device()
    }

    /// The placement plan (None on the CPU, where every layer runs on the host).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The CPU kernels this engine's host ops run on.
    pub fn cpu_path(&self) -> CpuPath {
        self.cpu_path
    }

    /// The session, read-only (position, context, stream slots).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, taken over by a runner of its own (e.g.
    /// [`crate::batch::Scheduler::from_session`], which batches many sequences on the planned
    /// placement). The GPU stays open as long as the session holds its streams.
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Runs `f` on the session with this engine's CPU path: for what the engine does not wrap
    /// (truncating the cache, taking pass statistics, forward passes of your own).
    pub fn with_session<R>(&mut self, f: impl FnOnce(&mut Session) -> R) -> R {
        with_cpu_path(self.cpu_path, || f(&mut self.session))
    }

    /// Tokenizes `prompt` (with BOS as the model asks, special tokens parsed) and generates
    /// a continuation at the session's current position, calling `on_text` with each piece.
    ///
    /// # Errors
    /// As [`generate`]; a prompt that does not tokenize.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions, on_text: impl FnMut(&str)) -> Result<Generation> {
        let ids = self.model.tokenizer.encode(prompt, None, true)?;
        self.generate_ids(&ids, opts, on_text)
    }

    /// [`Engine::generate`] from token ids.
    ///
    /// # Errors
    /// As [`generate`].
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let session = &mut self.session;
        let draft = self.draft.as_mut();
        match &opts.speculative {
            Some(_) => with_cpu_path(self.cpu_path, || {
                crate::speculative::generate_speculative(session, draft, prompt, opts, on_text)
            }),
            None => with_cpu_path(self.cpu_path, || generate(session, prompt, opts, on_text)),
        }
    }

    /// Opens `draft` as this engine's draft model for speculative decoding
    /// ([`crate::Drafter::Model`]), after checking that its vocabulary and tokenizer are the
    /// model's. On a GPU it is planned like any model in the memory the engine's own session
    /// left free: resident if it fits, else streamed or on the CPU (with a warning), never out
    /// of memory. It replaces any draft model opened before.
    ///
    /// # Errors
    /// A vocabulary or tokenizer that differs (naming both files); a placement that cannot fit.
    pub fn open_draft(&mut self, draft: Arc<Model>, progress: &dyn Fn(u64, u64)) -> Result<()> {
        crate::speculative::check_draft_vocab(&self.model, &draft)?;
        self.draft = None;
        // The draft never needs more context than the model's session holds.
        let mut o = self.session_opts.clone();
        o.context = self.session.context();
        let session = match &self.gpu {
            None => with_cpu_path(self.cpu_path, || Session::new(Arc::clone(&draft), None, &o))?,
            Some(gpu) => {
                let speeds = cached_speeds(Some(gpu), self.cpu_path).unwrap_or_else(assumed_speeds);
                let (plan, session) = with_cpu_path(self.cpu_path, || {
                    open_planned(&draft, Some(gpu), &o, speeds, &OffloadOptions::default(), progress)
                })?;
                if plan.layers.iter().any(|l| l.placement != strata_runtime::plan::Placement::Resident) {
                    log::warn!(
                        "the draft model {} does not fit in the GPU memory left ({}); some of its layers are streamed \
                         or run on the CPU, so drafting is slower",
                        draft.path.display(),
                        strata_tensor::fmt_bytes(gpu.budget().available())
                    );
                }
                session
            }
        };
        self.draft = Some(session);
        Ok(())
    }

    /// The draft model's session, if one is open.
    pub fn draft_session(&self) -> Option<&Session> {
        self.draft.as_ref()
    }

    /// The logits of every token of `tokens` (row-major `[tokens, n_vocab]`), run from
    /// position 0 (the session is reset first and holds `tokens` afterwards).
    ///
    /// # Errors
    /// No tokens, invalid ids, more tokens than the context.
    pub fn score(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.reset();
        self.forward(tokens, true)
    }

    /// Runs `tokens` at the session's current position: the logits of the last token, or of
    /// every token when `all` (see [`Session::forward`]).
    ///
    /// # Errors
    /// As [`Session::forward`].
    pub fn forward(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let session = &mut self.session;
        with_cpu_path(self.cpu_path, || session.forward(tokens, all))
    }

    /// Forgets the conversation (the next token runs at position 0).
    pub fn reset(&mut self) {
        self.session.reset();
    }
}
