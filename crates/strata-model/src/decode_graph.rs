//! CUDA graphs of the decode step's resident layers (issue 13 §4), under
//! `STRATA_GPU_KERNELS=next` (off with `STRATA_CUDA_GRAPHS=0`, or [`crate::Session::set_cuda_graphs`]).
//!
//! A one-token step over the leading run of resident layers (the *prefix*: dense layers with
//! their own weights on the GPU, all on the first layer's stream) launches the same kernels
//! with the same arguments token after token, except for the token's position and its
//! activations. Those two live in device buffers the session owns for its whole life
//! ([`DecodeIo`]): the embedding row and the position are copied into them before each step,
//! and the kernels read the position there (RoPE, the KV-cache append, and
//! [`strata_tensor::ops::attention_decode_at`], which finds the rows to attend from it). So the
//! prefix's launches are captured once as a graph ([`strata_tensor::GpuGraph`], which keeps
//! every buffer it uses allocated) and replayed with one launch per token. Streamed and cpu
//! layers after the prefix run as before, with their copies and events.
//!
//! The steps ([`GraphState`]): the first decode step runs plainly (loads every kernel module
//! and grows the stream's scratch to its final size, since nothing may be allocated during a
//! capture); the second is captured and then launched; every later one is replayed. A capture
//! or launch the driver refuses turns graphs off for the session with one line on stderr, and
//! the step runs plainly: never an error the user sees for it.

use std::sync::Arc;

use strata_runtime::plan::Placement;
use strata_tensor::{DType, Storage, Stream, Tensor, ops};

use super::{Mark, Session, Weights};
use crate::forward::{LayerCtx, layer_forward};
use crate::weights::LayerWeights;
use crate::{Error, Result};

/// The environment variable that turns decode graphs off (`0`) under the `next` kernel set.
pub const CUDA_GRAPHS_ENV: &str = "STRATA_CUDA_GRAPHS";

/// Whether decode graphs are wanted, from `STRATA_CUDA_GRAPHS` (unset or anything but `0`:
/// yes). They run only under `STRATA_GPU_KERNELS=next` and only on a GPU.
pub fn graphs_env(value: Option<&str>) -> bool {
    value.map(str::trim) != Some("0")
}

/// What decides whether a layer can be in the graphed prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerSite {
    /// Where the plan put it.
    pub placement: Placement,
    /// Its weights are its own copy on the accelerator (not a streamer slot, not host weights).
    pub owned_weights: bool,
    /// Part of it runs elsewhere (experts on the CPU or streamed, a prompt-pass group).
    pub split: bool,
    /// It runs on a GPU stream, the same as layer 0's.
    pub on_first_gpu_stream: bool,
}

/// The number of leading layers a decode step may run as one graph: resident, whole, with
/// their own weights, on layer 0's GPU stream; none for a model with experts (its router's
/// logits are read on the host in the middle of each layer).
pub(crate) fn graph_prefix(sites: &[LayerSite], moe: bool) -> usize {
    if moe {
        return 0;
    }
    sites
        .iter()
        .take_while(|s| s.placement == Placement::Resident && s.owned_weights && !s.split && s.on_first_gpu_stream)
        .count()
}

/// What the next decode step does with the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Plain launches (graphs off, or the warm-up step).
    Plain,
    /// Capture the prefix, then launch the graph.
    Capture,
    /// Launch the captured graph.
    Replay,
}

/// A session's decode-graph state, generic over the graph (a [`strata_tensor::GpuGraph`]; a
/// stand-in in the CPU tests).
#[derive(Debug)]
pub(crate) enum GraphState<G> {
    /// Not used: off by the switch, no prefix, or after a failure.
    Off,
    /// The first decode step runs plainly.
    Warmup,
    /// A warm step has run: the next one is captured.
    Warm,
    /// Captured: every step replays it.
    Ready(G),
}

impl<G> GraphState<G> {
    /// The state a session starts in.
    pub(crate) fn new(wanted: bool, prefix: usize) -> GraphState<G> {
        if wanted && prefix > 0 { GraphState::Warmup } else { GraphState::Off }
    }

    /// What the next decode step does.
    pub(crate) fn step(&self) -> Step {
        match self {
            GraphState::Off | GraphState::Warmup => Step::Plain,
            GraphState::Warm => Step::Capture,
            GraphState::Ready(_) => Step::Replay,
        }
    }

    /// After a plain step of the prefix: a warm-up makes the next step a capture.
    pub(crate) fn ran_plain(&mut self) {
        if let GraphState::Warmup = self {
            *self = GraphState::Warm;
        }
    }

    /// After a capture: its graph, or the reason there is none (graphs off from now on).
    pub(crate) fn captured(&mut self, graph: std::result::Result<G, String>) -> Option<String> {
        match graph {
            Ok(g) => {
                *self = GraphState::Ready(g);
                None
            }
            Err(why) => {
                *self = GraphState::Off;
                Some(why)
            }
        }
    }

    /// The graph, when captured.
    pub(crate) fn graph_mut(&mut self) -> Option<&mut G> {
        match self {
            GraphState::Ready(g) => Some(g),
            _ => None,
        }
    }

    /// Graphs off from now on (a failed replay).
    pub(crate) fn fail(&mut self) {
        *self = GraphState::Off;
    }

    /// Whether a decode step may take the graph path at all.
    pub(crate) fn active(&self) -> bool {
        !matches!(self, GraphState::Off)
    }
}

/// The one line a session prints when it stops using graphs.
pub(crate) fn fallback_note(why: &str) -> String {
    format!("strata: CUDA graph of the decode step not used ({why}); its kernels are launched one by one")
}

/// The decode step's device inputs at fixed addresses, owned by the session: the residual
/// stream entering the prefix, [1, n_embd] f32, and the token's position, [1] i32.
pub(crate) struct DecodeIo {
    /// The activations entering (and leaving) the prefix.
    pub x: Tensor,
    /// The position of the token.
    pub pos: Tensor,
}

impl DecodeIo {
    /// Zeroed buffers on `s` for a model of `n_embd`.
    pub(crate) fn new(n_embd: usize, s: &Stream) -> Result<DecodeIo> {
        Ok(DecodeIo {
            x: Tensor::zeros(DType::F32, &[1, n_embd], s, "decode graph activations")?,
            pos: Tensor::zeros(DType::I32, &[1], s, "decode graph position")?,
        })
    }
}

/// A tensor over the same device memory as `t` (same type and shape): the session hands the
/// pass a view of its fixed buffers and keeps them.
pub(crate) fn device_view(t: &Tensor) -> Result<Tensor> {
    match t.storage() {
        Storage::Cuda(b) => Ok(Tensor::from_device(t.dtype(), t.shape(), b.view(0..b.len())?)?),
        Storage::Host(_) => Err(Error::invalid("a decode graph's buffers must be on the GPU")),
    }
}

/// One layer's entry in a pass's timeline (as `Session::record_pass` takes them): layer,
/// placement, start, end, host wait.
type LayerMark = (usize, Placement, Mark, Mark, f64);

/// The layers of a decode step's prefix, run: the activations after them (a view of
/// [`DecodeIo::x`]), their stream, the position tensor the later layers use, and their marks.
pub(super) struct PrefixRun {
    pub x: Tensor,
    pub stream: Stream,
    pub pos: Tensor,
    pub layers: usize,
    pub marks: Vec<LayerMark>,
}

impl Session {
    /// Turns CUDA graphs of the decode step on or off for this session (on by default under
    /// `STRATA_GPU_KERNELS=next` unless `STRATA_CUDA_GRAPHS=0`); turning them on again warms up
    /// and captures anew. They run only under `next`, on a GPU, for a resident prefix.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = GraphState::new(on, self.graph_prefix);
    }

    /// The kernel launches in the decode step's captured graph, once one is (None: not captured
    /// yet, off, or failed), and the layers it covers.
    pub fn cuda_graph(&self) -> Option<(usize, usize)> {
        match &self.graphs {
            GraphState::Ready(g) => Some((g.launches(), self.graph_prefix)),
            _ => None,
        }
    }

    /// Runs the resident prefix of a one-token step (tokens' embedding in `x` on the host,
    /// position in `positions`): plainly, by capturing it, or by replaying the graph. None when
    /// this session does not use decode graphs (then the caller runs every layer itself).
    pub(super) fn decode_prefix(&mut self, x: &Tensor, positions: &Tensor, pos0: usize) -> Result<Option<PrefixRun>> {
        let k = self.graph_prefix;
        if !self.graphs.active() || k == 0 || ops::gpu_kernels()? != ops::GpuKernels::Next {
            return Ok(None);
        }
        let s = self.sites[0].stream.clone();
        let Stream::Gpu(g) = &s else { return Ok(None) };
        if self.decode_io.is_none() {
            self.decode_io = Some(DecodeIo::new(self.model.config.n_embd, &s)?);
        }
        let io = self.decode_io.as_mut().ok_or_else(|| Error::invalid("decode graph buffers missing"))?;
        io.x.copy_from(x, &s)?;
        io.pos.copy_from(positions, &s)?;
        let (mut xv, pv) = (device_view(&io.x)?, device_view(&io.pos)?);
        let step = self.graphs.step();
        if step == Step::Capture {
            // The layers' activation buffers exist before the capture (nothing may be allocated
            // in it): a prompt pass since the warm-up step may have replaced them.
            let sc = self.take_scratch(&s, 1)?;
            self.scratch.push((s.clone(), sc));
            let mut xc = device_view(&xv)?;
            let captured = g.capture(|| self.run_prefix(k, &mut xc, &pv, pos0, &s, false));
            let io = self.decode_io.as_ref().ok_or_else(|| Error::invalid("decode graph buffers missing"))?;
            let outcome = match captured {
                Ok((_, graph)) => match (io.x.storage(), io.pos.storage()) {
                    (Storage::Cuda(xb), Storage::Cuda(pb)) if graph.holds(xb) && graph.holds(pb) => Ok(graph),
                    _ => Err("the captured launches do not read the session's input buffers".to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Some(why) = self.graphs.captured(outcome) {
                eprintln!("{}", fallback_note(&why));
            }
        }
        let launched = match self.graphs.graph_mut() {
            Some(graph) => {
                let start = Mark::now(&s)?;
                match graph.launch() {
                    Ok(()) => Some(prefix_marks(k, start, Mark::now(&s)?)),
                    Err(e) => {
                        eprintln!("{}", fallback_note(&e.to_string()));
                        self.graphs.fail();
                        None
                    }
                }
            }
            None => None,
        };
        let marks = match launched {
            Some(m) => m,
            None => {
                let m = self.run_prefix(k, &mut xv, &pv, pos0, &s, true)?;
                self.graphs.ran_plain();
                m
            }
        };
        Ok(Some(PrefixRun { x: xv, stream: s, pos: pv, layers: k, marks }))
    }

    /// Layers 0..k (resident, their own weights) on `s`, one token at `pos0` (`pos` on the
    /// device); with `marks`, each layer's start and end.
    fn run_prefix(
        &mut self,
        k: usize,
        x: &mut Tensor,
        pos: &Tensor,
        pos0: usize,
        s: &Stream,
        marks: bool,
    ) -> Result<Vec<LayerMark>> {
        let model = Arc::clone(&self.model);
        let cfg = &model.config;
        let mut out = Vec::with_capacity(if marks { k } else { 0 });
        for l in 0..k {
            let mut scratch = self.take_scratch(s, 1)?;
            let site = &mut self.sites[l];
            let r = match &site.weights {
                Weights::Owned(w) => {
                    let start = if marks { Some(Mark::now(s)?) } else { None };
                    let mut cx =
                        LayerCtx { cfg, layer: l, kv: &mut site.kv, positions: pos, pos0, sc: &mut scratch, s };
                    layer_forward(&mut cx, LayerWeights::as_ref(w), x).map(|()| start)
                }
                _ => Err(Error::invalid(format!("layer {l} is in the decode graph's prefix without its own weights"))),
            };
            self.scratch.push((s.clone(), scratch));
            if let Some(start) = r? {
                out.push((l, Placement::Resident, start, Mark::now(s)?, 0.0));
            }
        }
        Ok(out)
    }
}

/// The timeline of a replayed prefix: its layers ran inside one graph launch, so the first
/// carries the launch's span and the others are empty at its end.
fn prefix_marks(k: usize, start: Mark, end: Mark) -> Vec<LayerMark> {
    (0..k)
        .map(|l| {
            let s = if l == 0 { start.clone() } else { end.clone() };
            (l, Placement::Resident, s, end.clone(), 0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(placement: Placement) -> LayerSite {
        LayerSite { placement, owned_weights: true, split: false, on_first_gpu_stream: true }
    }

    #[test]
    fn the_prefix_is_the_leading_whole_resident_layers_on_one_stream() {
        use Placement::*;
        let r = site(Resident);
        assert_eq!(graph_prefix(&[r, r, r], false), 3);
        assert_eq!(graph_prefix(&[r, r, site(Streamed), r], false), 2);
        assert_eq!(graph_prefix(&[site(Cpu), r, r], false), 0);
        assert_eq!(graph_prefix(&[], false), 0);
        // A model with experts reads its router on the host mid-layer: never graphed.
        assert_eq!(graph_prefix(&[r, r], true), 0);
        // Weights in a streamer slot, a layer split with its experts, another stream.
        let slot = LayerSite { owned_weights: false, ..r };
        let split = LayerSite { split: true, ..r };
        let other = LayerSite { on_first_gpu_stream: false, ..r };
        assert_eq!(graph_prefix(&[r, slot, r], false), 1);
        assert_eq!(graph_prefix(&[r, r, split], false), 2);
        assert_eq!(graph_prefix(&[r, other], false), 1);
    }

    #[test]
    fn steps_warm_up_then_capture_then_replay() {
        let mut st: GraphState<u32> = GraphState::new(true, 4);
        assert_eq!(st.step(), Step::Plain);
        st.ran_plain();
        assert_eq!(st.step(), Step::Capture);
        assert_eq!(st.captured(Ok(7)), None);
        assert_eq!(st.step(), Step::Replay);
        assert_eq!(st.graph_mut().copied(), Some(7));
        // A plain step after capture (e.g. a prompt pass between decode steps) changes nothing.
        st.ran_plain();
        assert_eq!(st.step(), Step::Replay);
        st.fail();
        assert_eq!(st.step(), Step::Plain);
        assert!(!st.active());
    }

    #[test]
    fn a_failed_capture_turns_graphs_off_with_its_reason() {
        let mut st: GraphState<u32> = GraphState::new(true, 2);
        st.ran_plain();
        assert_eq!(st.captured(Err("refused".into())), Some("refused".into()));
        assert_eq!(st.step(), Step::Plain);
        st.ran_plain();
        assert_eq!(st.step(), Step::Plain, "no second capture after a failure");
        assert!(fallback_note("refused").contains("refused"));
    }

    #[test]
    fn off_without_a_prefix_or_when_switched_off() {
        assert_eq!(GraphState::<u32>::new(true, 0).step(), Step::Plain);
        assert!(!GraphState::<u32>::new(true, 0).active());
        assert!(!GraphState::<u32>::new(false, 8).active());
        assert!(graphs_env(None));
        assert!(graphs_env(Some("1")));
        assert!(!graphs_env(Some("0")));
        assert!(!graphs_env(Some(" 0 ")));
    }
}
