//! `strata serve`: an OpenAI-compatible HTTP server over the continuous-batching
//! [`Scheduler`].
//!
//! The model runs on the main thread (rayon's worker 0, like every other command), which owns
//! the scheduler ([`engine::run`]); axum on a tokio runtime on another thread serves HTTP and
//! talks to it over channels. Ctrl-C (or SIGTERM) stops accepting connections, lets the
//! requests in flight finish, then exits.

mod api;
mod engine;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use strata_model::Engine;
use strata_model::batch::kv::KvPool;
use strata_model::batch::{Request, Scheduler, SchedulerOptions};
use strata_model::chat::ChatMessage;
use strata_model::{KvType, Model, SamplerConfig};
use strata_runtime::units::parse_size;
use strata_tensor::ops::CpuPath;
use tokio::sync::mpsc;

use super::load_model;
use crate::args::{KvArg, ServeArgs};
use crate::device::engine_options;
use api::{ApiError, ChatRequest, CompletionRequest, Sampling, Usage};
use engine::{EngineHandle, Job, Metrics, Out};

struct AppState {
    engine: EngineHandle,
    model: Arc<Model>,
    name: String,
    api_key: Option<String>,
    context: usize,
    max_tokens_cap: usize,
    completions: AtomicU64,
    chats: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
}

type Shared = Arc<AppState>;

pub fn serve(a: ServeArgs, path: CpuPath) -> Result<()> {
    let model = load_model(&a.model)?;
    let kv_type = match a.session.kv_type {
        KvArg::F16 => KvType::F16,
        KvArg::F32 => KvType::F32,
    };
    let mut opts = SchedulerOptions {
        context: a.session.context.unwrap_or(0),
        kv_type,
        block_size: a.kv_block,
        kv_blocks: 0,
        max_seqs: a.max_seqs,
        step_tokens: a.step_tokens,
        cpu_path: path,
    };
    let kv_bytes = parse_size(&a.kv_memory).context("--kv-memory")?;
    opts.kv_blocks = opts.blocks_for_bytes(&model, kv_bytes);
    opts.check().context("cannot set up the batch scheduler")?;
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .or_else(|_| format!("[{}]:{}", a.host, a.port).parse())
        .with_context(|| format!("--host {} --port {} is not an address to listen on", a.host, a.port))?;
    let body_limit = parse_size(&a.max_body).context("--max-body")? as usize;
    // A pool holds at most 2^20 positions (a session's cache); small models reach that with the
    // default --kv-memory.
    if opts.kv_blocks.saturating_mul(opts.block_size) > 1 << 20 {
        eprintln!(
            "note: --kv-memory {} holds more than the 1048576 positions a KV pool holds for this model; using 1048576",
            a.kv_memory
        );
        opts.kv_blocks = (1 << 20) / opts.block_size;
    }
    let positions = opts.kv_blocks * opts.block_size;
    crate::commands::warn_long_context(&model, &a.session, false);
    // The plan places the layers as for `run`, with the KV pool as the session's cache: the
    // pool's blocks are what it budgets for KV on each layer's device.
    let mut session_args = a.session.clone();
    session_args.context = Some(positions);
    session_args.batch = a.step_tokens;
    let engine = open_engine(model, &session_args, path)?;
    let plan_line = plan_line(&engine, path);
    let sched = Scheduler::from_session(engine.into_session(), &opts).context("cannot set up the batch scheduler")?;
    let model = Arc::clone(sched.model());
    let context = sched.context();
    let pool = sched.pool();
    let name = model.path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    eprintln!("strata serve: {} ({} layers)", model.path.display(), model.config.n_layers);
    eprintln!("{plan_line}");
    eprintln!(
        "KV: {} blocks of {} positions ({} positions, {:.0} MiB of {:?}), context {context} per request, up to {} \
         sequences per step, {} rows per step",
        pool.n_blocks(),
        pool.block_size(),
        pool.n_blocks() * pool.block_size(),
        (pool.n_blocks() as u64 * KvPool::block_bytes(&model.config, pool.block_size(), kv_type)) as f64
            / (1 << 20) as f64,
        kv_type,
        a.max_seqs,
        a.step_tokens
    );
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let state = Arc::new(AppState {
        engine: EngineHandle { jobs: jobs_tx, metrics: Arc::clone(&metrics) },
        model: Arc::clone(&model),
        name,
        api_key: a.api_key.clone(),
        context,
        max_tokens_cap: a.max_tokens_limit.min(context),
        completions: AtomicU64::new(0),
        chats: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let listener =
        rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("the listening address")?;
    eprintln!("listening on http://{local} (OpenAI API under /v1; /health, /metrics)");
    let app = router(state, body_limit);
    // The HTTP side runs on the runtime's threads; the engine on this one. When the server
    // stops (a signal, after draining), it drops the last job sender and the engine loop ends
    // once the work in flight is done.
    let server = std::thread::spawn(move || {
        rt.block_on(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await })
    });
    engine::run(sched, jobs_rx, metrics, a.max_queue);
    match server.join() {
        Ok(r) => r.context("the HTTP server failed")?,
        Err(_) => anyhow::bail!("the HTTP server thread panicked"),
    }
    eprintln!("strata serve: stopped");
    Ok(())
}

/// Opens the engine the session flags ask for (device, plan), saying where it runs and why,
/// as `run` does.
fn open_engine(model: Model, a: &crate::args::SessionArgs, path: CpuPath) -> Result<Engine> {
    let opts = engine_options(&model, a, path)?;
    let shown = model.path.display().to_string();
    let engine = Engine::with_model(Arc::new(model), &opts, &|_, _| {}).with_context(|| format!("opening {shown}"))?;
    if let Some(why) = engine.device_note() {
        eprintln!("device: cpu; {why}");
    }
    if let (Some(gpu), Some(plan)) = (engine.gpu(), engine.plan()) {
        eprintln!("device: {}", gpu.info());
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(engine)
}

/// The plan in one line: every layer on the CPU, or the planner's summary and the placement
/// of each layer.
fn plan_line(engine: &Engine, path: CpuPath) -> String {
    match engine.plan() {
        None => format!("plan: every layer on the CPU ({path:?} kernels)"),
        Some(plan) => format!("plan: {}\n{}", plan.summary_line(), plan.render_table().trim_end()),
    }
}

fn router(state: Shared, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("strata serve: shutting down; finishing the requests in flight");
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) { Ok(()) } else { Err(ApiError::unauthorized()) }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError { status: r.status(), ..ApiError::bad_request(r.body_text(), None) })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:04x}", now(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A generation request ready for the engine, and how to answer it.
struct Prepared {
    request: Request,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

/// Checks the sampling fields and the lengths; `default_max` is used when the request gives
/// no `max_tokens`.
fn prepare(s: &AppState, prompt: Vec<u32>, p: Sampling, default_max: Option<usize>) -> Result<Prepared, ApiError> {
    if let Some(n) = p.n
        && n != 1
    {
        return Err(ApiError::bad_request(format!("n = {n} is not supported: one choice per request"), Some("n")));
    }
    for (v, name) in [(p.presence_penalty, "presence_penalty"), (p.frequency_penalty, "frequency_penalty")] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::bad_request(
                format!("{name} is not supported (use repeat_penalty, llama.cpp's repetition penalty)"),
                Some(if name == "presence_penalty" { "presence_penalty" } else { "frequency_penalty" }),
            ));
        }
    }
    let room = s.context.saturating_sub(prompt.len());
    let max_tokens = match p.max_tokens.or(p.max_completion_tokens) {
        Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1", Some("max_tokens"))),
        Some(m) if m > s.max_tokens_cap as u64 => {
            return Err(ApiError::bad_request(
                format!(
                    "max_tokens = {m} is above this server's limit of {} (the smaller of --max-tokens-limit and the context)",
                    s.max_tokens_cap
                ),
                Some("max_tokens"),
            ));
        }
        Some(m) => m as usize,
        None => default_max.unwrap_or(room.min(s.max_tokens_cap)).max(1),
    };
    if prompt.len() + max_tokens > s.context {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the \
                 prompt, {max_tokens} for the completion). Please reduce the length of the prompt or max_tokens.",
                s.context,
                prompt.len() + max_tokens,
                prompt.len()
            ),
            None,
        )
        .with_code("context_length_exceeded"));
    }
    let sampler = SamplerConfig {
        temperature: p.temperature.unwrap_or(1.0),
        top_k: p.top_k.unwrap_or(0) as usize,
        top_p: p.top_p.unwrap_or(1.0),
        min_p: p.min_p.unwrap_or(0.0),
        repeat_penalty: p.repeat_penalty.unwrap_or(1.0),
        repeat_last_n: 64,
        seed: p.seed.unwrap_or_else(|| now() ^ (u64::from(std::process::id()) << 32) ^ prompt.len() as u64),
    };
    sampler.validate().map_err(|e| {
        // The sampler names its CLI flags; a request names JSON fields.
        let mut msg = e.to_string();
        for (flag, field) in [
            ("--top-p", "top_p"),
            ("--min-p", "min_p"),
            ("--repeat-penalty", "repeat_penalty"),
            ("--temperature", "temperature"),
        ] {
            msg = msg.replace(flag, field);
        }
        ApiError::bad_request(msg, None)
    })?;
    let stop = p.stop.map(api::OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::bad_request("at most 4 stop sequences", Some("stop")));
    }
    Ok(Prepared {
        request: Request { prompt, max_tokens, sampler, ignore_eos: p.ignore_eos },
        stop,
        stream: p.stream,
        include_usage: p.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Hands the request to the engine and waits for it to be admitted to the queue.
async fn start(s: &AppState, p: &Prepared) -> Result<mpsc::UnboundedReceiver<Out>, ApiError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job { request: p.request.clone(), stop: p.stop.clone(), out: tx };
    s.engine.jobs.send(job).map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    match rx.recv().await {
        Some(Out::Started) => Ok(rx),
        Some(Out::Rejected(e)) => Err(e),
        _ => Err(ApiError::internal("the engine stopped")),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    s.completions.fetch_add(1, Ordering::Relaxed);
    let r = async {
        check_key(&s, &headers)?;
        let (req, sampling): (CompletionRequest, Sampling) = api::parse(&body_bytes(body)?)?;
        let prompts = req.prompt.into_vec();
        let [prompt] = prompts.as_slice() else {
            return Err(ApiError::bad_request(
                format!("{} prompts given: one prompt per request", prompts.len()),
                Some("prompt"),
            ));
        };
        let ids = s
            .model
            .tokenizer
            .encode(prompt, None, true)
            .map_err(|e| ApiError::bad_request(format!("the prompt does not tokenize: {e}"), Some("prompt")))?;
        if ids.is_empty() {
            return Err(ApiError::bad_request("the prompt is empty", Some("prompt")));
        }
        let p = prepare(&s, ids, sampling, Some(16))?;
        respond(&s, p, Kind::Completion).await
    }
    .await;
    r.unwrap_or_else(|e| {
        s.errors.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    s.chats.fetch_add(1, Ordering::Relaxed);
    let r = async {
        check_key(&s, &headers)?;
        let (req, sampling): (ChatRequest, Sampling) = api::parse(&body_bytes(body)?)?;
        if req.messages.is_empty() {
            return Err(ApiError::bad_request("messages is empty", Some("messages")));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in req.messages {
            let content = match m.content {
                Some(c) => c.text()?,
                None => String::new(),
            };
            messages.push(ChatMessage { role: m.role, content });
        }
        let text = super::run::render(&s.model, &messages)
            .map_err(|e| ApiError::bad_request(format!("the chat template failed: {e:#}"), Some("messages")))?;
        let ids = s
            .model
            .tokenizer
            .encode(&text, None, true)
            .map_err(|e| ApiError::bad_request(format!("the messages do not tokenize: {e}"), Some("messages")))?;
        let p = prepare(&s, ids, sampling, None)?;
        respond(&s, p, Kind::Chat).await
    }
    .await;
    r.unwrap_or_else(|e| {
        s.errors.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

async fn respond(s: &Shared, p: Prepared, kind: Kind) -> Result<Response, ApiError> {
    let mut rx = start(s, &p).await?;
    let id = request_id(if kind == Kind::Chat { "chatcmpl" } else { "cmpl" });
    let created = now();
    if p.stream {
        let guard = InFlight::new(Arc::clone(s));
        let name = s.name.clone();
        let include_usage = p.include_usage;
        let first = kind == Kind::Chat;
        let queued = Default::default();
        let st = StreamState { rx: Some(rx), first, id, created, name, kind, include_usage, queued, _g: guard };
        let stream = futures_util::stream::unfold(st, next_event);
        return Ok(Sse::new(stream).into_response());
    }
    let _g = InFlight::new(Arc::clone(s));
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Out::Text(t)) => text.push_str(&t),
            Some(Out::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                let choice = match kind {
                    Kind::Completion => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
                    }
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                        "logprobs": null, "finish_reason": finish_reason}),
                };
                let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                let body = json!({"id": id, "object": object, "created": created, "model": s.name,
                    "choices": [choice], "usage": usage});
                return Ok(axum::Json(body).into_response());
            }
            Some(Out::Failed(msg)) => return Err(ApiError::internal(msg)),
            Some(Out::Started | Out::Rejected(_)) | None => return Err(ApiError::internal("the engine stopped")),
        }
    }
}

struct StreamState {
    rx: Option<mpsc::UnboundedReceiver<Out>>,
    first: bool,
    id: String,
    created: u64,
    name: String,
    kind: Kind,
    include_usage: bool,
    /// Events to send before reading the channel again.
    queued: std::collections::VecDeque<String>,
    _g: InFlight,
}

impl StreamState {
    fn chunk(&self, text: Option<&str>, finish_reason: Option<&str>, usage: Option<Usage>) -> Value {
        let (object, choice) = match self.kind {
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish_reason}),
            ),
            Kind::Chat => {
                let delta = match text {
                    Some(t) if self.first => json!({"role": "assistant", "content": t}),
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}),
                )
            }
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.name,
            "choices": [choice]});
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        v
    }
}

/// The next server-sent event of a streamed response: a chunk per text piece, a last chunk
/// with the finish reason and the usage counts, then `[DONE]`.
async fn next_event(mut st: StreamState) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    if let Some(data) = st.queued.pop_front() {
        return Some((Ok(SseEvent::default().data(data)), st));
    }
    let rx = st.rx.as_mut()?;
    if st.kind == Kind::Chat && st.first {
        // The assistant role comes first, before any text (as OpenAI sends it).
        let v = st.chunk(Some(""), None, None);
        st.first = false;
        return Some((Ok(SseEvent::default().data(v.to_string())), st));
    }
    let data = match rx.recv().await {
        Some(Out::Text(t)) => st.chunk(Some(&t), None, None).to_string(),
        Some(Out::Done { finish_reason, prompt_tokens, completion_tokens }) => {
            st.rx = None;
            let usage = Usage::new(prompt_tokens, completion_tokens);
            // The usage counts ride on the final chunk (usage in every response); with
            // stream_options.include_usage the client also gets OpenAI's separate usage chunk
            // with no choices.
            if st.include_usage {
                let mut u = st.chunk(None, None, Some(usage));
                u["choices"] = json!([]);
                st.queued.push_back(u.to_string());
            }
            st.queued.push_back("[DONE]".into());
            st.chunk(None, Some(finish_reason), Some(usage)).to_string()
        }
        Some(Out::Failed(msg)) => {
            st.rx = None;
            st.queued.push_back("[DONE]".into());
            ApiError::internal(msg).body().to_string()
        }
        Some(Out::Started | Out::Rejected(_)) | None => {
            st.rx = None;
            "[DONE]".into()
        }
    };
    Some((Ok(SseEvent::default().data(data)), st))
}

/// Counts a request as in flight while it lives.
struct InFlight(Shared);

impl InFlight {
    fn new(s: Shared) -> InFlight {
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(s)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&s, &headers) {
        return e.into_response();
    }
    axum::Json(json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": now(),
        "owned_by": "strata", "context_length": s.context}]}))
    .into_response()
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, axum::Json(json!({"status": "ok"})))
}

async fn metrics(State(s): State<Shared>) -> Response {
    let m = s.engine.metrics.lock().map(|m| m.clone()).unwrap_or_default();
    let st = &m.sched;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP strata_{name} {help}\n# TYPE strata_{name} {kind}\n"));
        out.push_str(&format!("strata_{name} {value}\n"));
    };
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    metric("completion_requests_total", "counter", "POST /v1/completions requests.", c(&s.completions));
    metric("chat_requests_total", "counter", "POST /v1/chat/completions requests.", c(&s.chats));
    metric("request_errors_total", "counter", "Requests answered with an error.", c(&s.errors));
    metric("requests_in_flight", "gauge", "Requests being answered.", c(&s.in_flight));
    metric("requests_finished_total", "counter", "Generations that ran to the end.", m.requests_finished.to_string());
    metric(
        "requests_cancelled_total",
        "counter",
        "Generations cancelled because the client went away.",
        m.requests_cancelled.to_string(),
    );
    metric("requests_rejected_total", "counter", "Requests the engine refused.", m.requests_rejected.to_string());
    metric("prompt_tokens_total", "counter", "Prompt tokens processed.", st.prompt_tokens.to_string());
    metric("generated_tokens_total", "counter", "Tokens generated.", st.generated_tokens.to_string());
    metric("steps_total", "counter", "Batched forward passes.", st.steps.to_string());
    metric("batch_sequences", "gauge", "Sequences in the last pass.", st.last_batch_seqs.to_string());
    metric("batch_rows", "gauge", "Rows (tokens) in the last pass.", st.last_batch_rows.to_string());
    metric("sequences_running", "gauge", "Sequences holding KV blocks.", st.running.to_string());
    metric("queue_length", "gauge", "Requests waiting for KV blocks.", st.waiting.to_string());
    metric("kv_blocks_used", "gauge", "KV blocks owned by sequences.", st.kv_blocks_used.to_string());
    metric("kv_blocks_total", "gauge", "KV blocks in the pool.", st.kv_blocks_total.to_string());
    metric(
        "tokens_per_second",
        "gauge",
        "Generated tokens per second in the last pass.",
        format!("{:.3}", m.tokens_per_second),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
