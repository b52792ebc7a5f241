//! The engine thread: it owns the [`Scheduler`], takes requests from the HTTP handlers over a
//! channel, runs one batched step at a time, and sends each request its text as it is
//! generated. A request whose receiver is gone (the client disconnected) is cancelled before
//! the next step, which frees its KV blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use strata_model::Model;
use strata_model::batch::{Event, FinishReason, Request, Scheduler, SchedulerStats, SeqId};
use strata_model::tokenizer::StreamDecoder;
use tokio::sync::mpsc;

use super::api::ApiError;

/// A generation request from a handler.
pub struct Job {
    pub request: Request,
    pub stop: Vec<String>,
    pub out: mpsc::UnboundedSender<Out>,
}

/// What a handler receives for its job, in order: `Started` or `Rejected`, then `Text`
/// pieces, then `Done` (or `Failed`).
#[derive(Debug)]
pub enum Out {
    Started,
    Rejected(ApiError),
    Text(String),
    Done { finish_reason: &'static str, prompt_tokens: usize, completion_tokens: usize },
    Failed(String),
}

/// Monitoring data the `/metrics` handler reads.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub sched: SchedulerStats,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_rejected: u64,
    /// Generated tokens per second over the last step (0 when idle).
    pub tokens_per_second: f64,
}

/// An engine thread's handle: its job queue and metrics.
#[derive(Clone)]
pub struct EngineHandle {
    pub jobs: mpsc::UnboundedSender<Job>,
    pub metrics: Arc<Mutex<Metrics>>,
}

struct Active<'t> {
    out: mpsc::UnboundedSender<Out>,
    decoder: StreamDecoder<'t>,
    stop: StopText,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// Holds back text that could be the start of a stop string, and finds stop strings across
/// pieces; the text before a stop string is emitted, the stop string is not.
struct StopText {
    stops: Vec<String>,
    pending: String,
}

impl StopText {
    /// The text that is safe to emit, and whether a stop string was found.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) =
            self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.pending.find(s.as_str())).min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self
            .pending
            .char_indices()
            .map(|(i, _)| &self.pending[i..])
            .filter(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        (self.pending.drain(..cut).collect(), false)
    }
}

/// Runs the scheduler until every job sender is gone and nothing is left to do.
pub fn run(
    mut sched: Scheduler,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<Mutex<Metrics>>,
    max_queue: usize,
) {
    let model: Arc<Model> = Arc::clone(sched.model());
    let tok = &model.tokenizer;
    let mut active: HashMap<SeqId, Active<'_>> = HashMap::new();
    let mut m = Metrics::default();
    let mut open = true;
    loop {
        // Wait for work when idle; take whatever has arrived otherwise.
        if sched.is_idle() && open {
            m.tokens_per_second = 0.0;
            publish(&metrics, &sched, &m);
            match jobs.blocking_recv() {
                Some(j) => submit(&mut sched, &mut active, tok, j, max_queue, &mut m),
                None => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(j) => submit(&mut sched, &mut active, tok, j, max_queue, &mut m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let gone: Vec<SeqId> = active.iter().filter(|(_, a)| a.out.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            sched.cancel(id);
            active.remove(&id);
            m.requests_cancelled += 1;
        }
        if sched.is_idle() {
            m.tokens_per_second = 0.0;
            publish(&metrics, &sched, &m);
            if !open {
                return;
            }
            continue;
        }
        let t0 = Instant::now();
        let events = match sched.step() {
            Ok(e) => e,
            Err(e) => {
                // Not a per-sequence failure: end every request with it.
                for (id, a) in active.drain() {
                    sched.cancel(id);
                    let _ = a.out.send(Out::Failed(e.to_string()));
                }
                continue;
            }
        };
        // The gauges before any answer goes out: a client that has its answer never reads a
        // `sequences_running` that still counts it (the finished ones left the scheduler in
        // `step`; one a stop string ends is published again below before it is answered).
        publish(&metrics, &sched, &m);
        let mut generated = 0usize;
        for e in events {
            match e {
                Event::Token { id, token } => {
                    generated += 1;
                    let Some(a) = active.get_mut(&id) else { continue };
                    a.completion_tokens += 1;
                    let (text, stopped) = a.stop.push(&a.decoder.push(token));
                    if !text.is_empty() {
                        let _ = a.out.send(Out::Text(text));
                    }
                    if stopped {
                        sched.cancel(id);
                        publish(&metrics, &sched, &m);
                        if let Some(a) = active.remove(&id) {
                            finish(a, "stop", &mut m);
                        }
                    }
                }
                Event::Done { id, reason, .. } => {
                    let Some(mut a) = active.remove(&id) else { continue };
                    let finish_reason = match reason {
                        FinishReason::EndOfGeneration => "stop",
                        FinishReason::MaxTokens => "length",
                        FinishReason::Error(msg) => {
                            let _ = a.out.send(Out::Failed(msg));
                            continue;
                        }
                    };
                    // The decoder's held bytes and the stop filter's held text are output now.
                    let rest = a.decoder.finish();
                    let (mut text, stopped) = a.stop.push(&rest);
                    if !stopped {
                        text.push_str(&std::mem::take(&mut a.stop.pending));
                    }
                    if !text.is_empty() {
                        let _ = a.out.send(Out::Text(text));
                    }
                    finish(a, if stopped { "stop" } else { finish_reason }, &mut m);
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        m.tokens_per_second = if secs > 0.0 { generated as f64 / secs } else { 0.0 };
        publish(&metrics, &sched, &m);
    }
}

fn submit<'t>(
    sched: &mut Scheduler,
    active: &mut HashMap<SeqId, Active<'t>>,
    tok: &'t strata_model::tokenizer::Tokenizer,
    job: Job,
    max_queue: usize,
    m: &mut Metrics,
) {
    let waiting = sched.stats().waiting;
    if waiting >= max_queue {
        m.requests_rejected += 1;
        let _ = job.out.send(Out::Rejected(ApiError::queue_full(waiting)));
        return;
    }
    let prompt_tokens = job.request.prompt.len();
    match sched.submit(job.request) {
        Ok(id) => {
            let _ = job.out.send(Out::Started);
            active.insert(
                id,
                Active {
                    out: job.out,
                    decoder: StreamDecoder::new(tok),
                    stop: StopText { stops: job.stop, pending: String::new() },
                    prompt_tokens,
                    completion_tokens: 0,
                },
            );
        }
        Err(e) => {
            m.requests_rejected += 1;
            let _ = job.out.send(Out::Rejected(ApiError::bad_request(e.to_string(), None)));
        }
    }
}

fn finish(a: Active<'_>, finish_reason: &'static str, m: &mut Metrics) {
    m.requests_finished += 1;
    let _ =
        a.out.send(Out::Done { finish_reason, prompt_tokens: a.prompt_tokens, completion_tokens: a.completion_tokens });
}

fn publish(metrics: &Mutex<Metrics>, sched: &Scheduler, m: &Metrics) {
    if let Ok(mut g) = metrics.lock() {
        *g = Metrics { sched: sched.stats(), ..m.clone() };
    }
}
