//! Every CUDA launcher, declared once: `launchers!` expands this list to the real FFI calls in
//! a `cuda` build (`mod.rs`) and to stubs returning [`crate::Error::CudaNotBuilt`] without it
//! (`disabled.rs`), whose bodies are then never compiled. A new launcher is one entry here.

// The signatures mirror the C launchers, which take many scalars.
#![allow(clippy::too_many_arguments)]

#[allow(unused_imports)]
use super::*;
#[allow(unused_imports)]
use crate::{DType, Error, Result, RopeLayout};

/// Which prefill attention kernel [`attention_prefill_f32`] launches. All give the CPU
/// reference's result within their tolerance: `Proven` and `Tiled` compute in f32, `Mma` rounds
/// Q and the softmax weights to f16 (see `check::attention_mma_bounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillKernel {
    /// `attention.cu`: one block per token and head.
    Proven,
    /// `attention_tiled.cu` (the `next` set's CUDA-core kernel): a block of 16 tokens of one
    /// head shares each K/V tile in shared memory.
    Tiled,
    /// `attention_mma.cu` (the `next` set's kernel): flash attention on f16 tensor cores, 64
    /// query rows of a GQA group per block; f32 caches, head sizes other than 64/128/256 and
    /// devices below compute capability 8.0 run `Tiled`.
    Mma,
}

launchers! {
    /// Dequantizes `rows` rows of `cols` values of `dt` at `w` into f32 at `out`.
    ///
    /// # Safety
    /// `w` must address `rows * dt.row_bytes(cols)` readable bytes and `out` `rows * cols` f32 of
    /// writable device memory in the current context, both alive until the work on `stream`
    /// completes; `stream` must be a live stream of that context (or null).
    ///
    /// # Errors
    /// Argument errors (sizes, dtype) and the launch status.
    pub unsafe fn dequantize_rows_f32(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "dequantize_rows";
        let wt = weight_dtype(OP, dt)?;
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_dequantize_rows_f32(wt, ptr(w), r, c, ptr_mut(out), stream(s)) })
    }

    /// Gathers rows `ids[t]` of a `n_vocab` x `dim` table into f32 at `out` (`n_ids` rows).
    ///
    /// # Safety
    /// `table` must address `n_vocab * dt.row_bytes(dim)` bytes, `ids` `n_ids` i32 and `out`
    /// `n_ids * dim` f32 of device memory, alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn embedding_gather_f32(
        dt: DType,
        table: DevicePtr,
        n_vocab: usize,
        dim: usize,
        ids: DevicePtr,
        n_ids: usize,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "embedding_gather";
        let wt = weight_dtype(OP, dt)?;
        let (v, d, n) = (i64_of(OP, "n_vocab", n_vocab)?, i64_of(OP, "dim", dim)?, i64_of(OP, "n_ids", n_ids)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_embedding_gather_f32(wt, ptr(table), v, d, ptr(ids), n, ptr_mut(out), stream(s)) })
    }

    /// y = W x for a `rows` x `cols` matrix of `dt`.
    ///
    /// # Safety
    /// `w` must address `rows * dt.row_bytes(cols)` bytes, `x` `cols` f32 and `y` `rows` f32 of
    /// device memory, alive until the work on stream `s` completes; `y` must not overlap `x`.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn matvec_f32(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        x: DevicePtr,
        y: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matvec";
        let wt = weight_dtype(OP, dt)?;
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_matvec_f32(wt, ptr(w), r, c, ptr(x), ptr_mut(y), stream(s)) })
    }

    /// Quantizes `cols` f32 at `x` into the 8-bit activation buffer `act` of a matvec with
    /// weights of `dt` (the "next" kernel set; the CPU fast path's rounding).
    ///
    /// # Safety
    /// `x` must address `cols` f32 and `act` [`act_q8_bytes`]`(dt, cols)` bytes (16-byte
    /// aligned) of device memory, alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors (a type that is not quantized, `cols` not whole blocks) and the launch
    /// status.
    pub unsafe fn quantize_act_q8(dt: DType, x: DevicePtr, cols: usize, act: DevicePtr, s: Stream) -> Result<()> {
        const OP: &str = "quantize_act_q8";
        let wt = weight_dtype(OP, dt)?;
        let c = i64_of(OP, "cols", cols)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_quantize_act_q8(wt, ptr(x), c, ptr_mut::<std::ffi::c_void>(act), stream(s)) })
    }

    /// y = W x' with the 8-bit activations `act` ([`quantize_act_q8`] of the same `dt` and
    /// `cols`): integer dot products (the "next" kernel set).
    ///
    /// # Safety
    /// `w` must address `rows * dt.row_bytes(cols)` bytes, `act` [`act_q8_bytes`]`(dt, cols)`
    /// bytes (16-byte aligned) and `y` `rows` f32 of device memory, alive until the work on
    /// stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn matvec_q8(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        act: DevicePtr,
        y: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matvec_q8";
        let wt = weight_dtype(OP, dt)?;
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_matvec_q8(wt, ptr(w), r, c, ptr::<std::ffi::c_void>(act), ptr_mut(y), stream(s))
        })
    }

    /// y = add + W x' ([`matvec_q8`] with the residual add in its epilogue); `add` may be `y`.
    ///
    /// # Safety
    /// As [`matvec_q8`], and `add` must address `rows` f32 of device memory (it may be `y`).
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn matvec_q8_add(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        act: DevicePtr,
        add: DevicePtr,
        y: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matvec_q8_add";
        let wt = weight_dtype(OP, dt)?;
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_matvec_q8_add(wt, ptr(w), r, c, ptr::<std::ffi::c_void>(act), ptr(add), ptr_mut(y), stream(s))
        })
    }

    /// RMSNorm of one row of `cols` f32 at `x` with `weight` into `out` (as [`rmsnorm_f32`],
    /// bit for bit) and the 8-bit activations of the result into `act` (as [`quantize_act_q8`]
    /// of `out` for weights of `dt`), in one launch.
    ///
    /// # Safety
    /// `x`, `weight` and `out` must address `cols` f32 and `act` [`act_q8_bytes`]`(dt, cols)`
    /// bytes (16-byte aligned) of device memory, alive until the work on stream `s` completes;
    /// `out` must not overlap `x`.
    ///
    /// # Errors
    /// Argument errors (a type that is not quantized, `cols` not whole blocks) and the launch
    /// status.
    pub unsafe fn rmsnorm_quantize_q8(
        dt: DType,
        x: DevicePtr,
        weight: DevicePtr,
        cols: usize,
        eps: f32,
        out: DevicePtr,
        act: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_quantize_q8";
        let wt = weight_dtype(OP, dt)?;
        let c = i64_of(OP, "cols", cols)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_rmsnorm_quantize_q8(
                wt,
                ptr(x),
                ptr(weight),
                c,
                eps,
                ptr_mut(out),
                ptr_mut::<std::ffi::c_void>(act),
                stream(s),
            )
        })
    }

    /// `out[r] = act(W_gate x')[r] * (W_up x')[r]` on the 8-bit activations `act` (the FFN's
    /// gate and up products and SiLU or, with `gelu`, GELU-tanh, in one launch).
    ///
    /// # Safety
    /// `w_gate` and `w_up` must each address `rows * dt.row_bytes(cols)` bytes, `act`
    /// [`act_q8_bytes`]`(dt, cols)` bytes (16-byte aligned) and `out` `rows` f32 of device
    /// memory, alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn matvec_q8_glu(
        dt: DType,
        w_gate: DevicePtr,
        w_up: DevicePtr,
        rows: usize,
        cols: usize,
        act: DevicePtr,
        gelu: bool,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matvec_q8_glu";
        let wt = weight_dtype(OP, dt)?;
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_matvec_q8_glu(
                wt,
                ptr(w_gate),
                ptr(w_up),
                r,
                c,
                ptr::<std::ffi::c_void>(act),
                i32::from(gelu),
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// Y = X W^T for `n_tokens` rows of X.
    ///
    /// # Safety
    /// `w` must address `rows * dt.row_bytes(cols)` bytes, `x` `n_tokens * cols` f32 and `y`
    /// `n_tokens * rows` f32 of device memory, alive until the work on stream `s` completes;
    /// `y` must not overlap `x`.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn matmul_f32(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        x: DevicePtr,
        n_tokens: usize,
        y: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let wt = weight_dtype(OP, dt)?;
        let (r, c, t) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?, i64_of(OP, "n_tokens", n_tokens)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_matmul_f32(wt, ptr(w), r, c, ptr(x), t, ptr_mut(y), stream(s)) })
    }

    /// Y = X W^T like [`matmul_f32`] on tensor cores (the `next` kernel set): both inputs
    /// rounded to TF32, f32 sums; compute capability 8.0 or newer.
    ///
    /// # Safety
    /// As [`matmul_f32`].
    ///
    /// # Errors
    /// Argument errors (including a device older than 8.0) and the launch status.
    pub unsafe fn matmul_tc_f32(
        dt: DType,
        w: DevicePtr,
        rows: usize,
        cols: usize,
        x: DevicePtr,
        n_tokens: usize,
        y: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "matmul_tc";
        let wt = weight_dtype(OP, dt)?;
        let (r, c, t) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?, i64_of(OP, "n_tokens", n_tokens)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_matmul_tc_f32(wt, ptr(w), r, c, ptr(x), t, ptr_mut(y), stream(s)) })
    }

    /// RMS norm of `n_rows` rows of `dim` values (`out` may equal `x`).
    ///
    /// # Safety
    /// `x` and `out` must address `n_rows * dim` f32 and `weight` `dim` f32 of device memory,
    /// alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn rmsnorm_f32(
        x: DevicePtr,
        weight: DevicePtr,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "rmsnorm";
        let (n, d) = (i64_of(OP, "n_rows", n_rows)?, i64_of(OP, "dim", dim)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_rmsnorm_f32(ptr(x), ptr(weight), n, d, eps, ptr_mut(out), stream(s)) })
    }

    /// RoPE in place on `x[n_tokens][n_heads][head_dim]`.
    ///
    /// # Safety
    /// `x` must address `n_tokens * n_heads * head_dim` f32, `positions` `n_tokens` i32 and
    /// `freq_factors`, if given, `n_rot / 2` f32 of device memory, alive until the work on stream
    /// `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn rope_f32(
        x: DevicePtr,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: DevicePtr,
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<DevicePtr>,
        layout: RopeLayout,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "rope";
        let (t, h, d, r) = (
            i64_of(OP, "n_tokens", n_tokens)?,
            i64_of(OP, "n_heads", n_heads)?,
            i64_of(OP, "head_dim", head_dim)?,
            i64_of(OP, "n_rot", n_rot)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_rope_f32(
                ptr_mut(x),
                t,
                h,
                d,
                ptr(positions),
                r,
                freq_base,
                freq_scale,
                freq_factors.map_or(std::ptr::null(), ptr),
                rope_layout(layout),
                stream(s),
            )
        })
    }

    /// [`attention_decode_f32`] as flash-decoding (the "next" kernel set): partials per split of
    /// the cache in `scratch`, then one combine.
    ///
    /// # Safety
    /// As [`attention_decode_f32`], and `scratch` must address
    /// [`attention_split_bytes`]`(n_heads, head_dim, n_kv, window)` bytes (16-byte aligned) of
    /// device memory used by nothing else until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn attention_decode_split_f32(
        q: DevicePtr,
        cache: DType,
        k_cache: DevicePtr,
        v_cache: DevicePtr,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
        scale: f32,
        window: Option<usize>,
        scratch: DevicePtr,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "attention_decode_split";
        let (h, kvh, d, n, w) = (
            i64_of(OP, "n_heads", n_heads)?,
            i64_of(OP, "n_kv_heads", n_kv_heads)?,
            i64_of(OP, "head_dim", head_dim)?,
            i64_of(OP, "n_kv", n_kv)?,
            window_arg(OP, window)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_attention_decode_split_f32(
                ptr(q),
                dtype(cache),
                ptr(k_cache),
                ptr(v_cache),
                h,
                kvh,
                d,
                n,
                scale,
                w,
                ptr_mut::<std::ffi::c_void>(scratch),
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// [`attention_decode_split_f32`] with the query's position read on the device from
    /// `position` (one i32): it attends rows 0..=position (at most `cache_rows`), so a captured
    /// CUDA graph replays it for every token.
    ///
    /// # Safety
    /// As [`attention_decode_split_f32`] with `n_kv = cache_rows` (the caches hold that many
    /// rows, `scratch` addresses [`attention_split_bytes`]`(n_heads, head_dim, cache_rows,
    /// window)` bytes), and `position` must address one i32 of device memory.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn attention_decode_split_at_f32(
        q: DevicePtr,
        cache: DType,
        k_cache: DevicePtr,
        v_cache: DevicePtr,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        position: DevicePtr,
        cache_rows: usize,
        scale: f32,
        window: Option<usize>,
        scratch: DevicePtr,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "attention_decode_split_at";
        let (h, kvh, d, n, w) = (
            i64_of(OP, "n_heads", n_heads)?,
            i64_of(OP, "n_kv_heads", n_kv_heads)?,
            i64_of(OP, "head_dim", head_dim)?,
            i64_of(OP, "cache_rows", cache_rows)?,
            window_arg(OP, window)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_attention_decode_split_at_f32(
                ptr(q),
                dtype(cache),
                ptr(k_cache),
                ptr(v_cache),
                h,
                kvh,
                d,
                ptr(position),
                n,
                scale,
                w,
                ptr_mut::<std::ffi::c_void>(scratch),
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// Decode attention over cache rows 0..n_kv, or the last `window` of them.
    ///
    /// # Safety
    /// `q` and `out` must address `n_heads * head_dim` f32; `k_cache` and `v_cache` at least
    /// `n_kv * n_kv_heads * head_dim` elements of `cache` type; all device memory alive until the
    /// work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn attention_decode_f32(
        q: DevicePtr,
        cache: DType,
        k_cache: DevicePtr,
        v_cache: DevicePtr,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
        scale: f32,
        window: Option<usize>,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "attention_decode";
        let (h, kvh, d, n, w) = (
            i64_of(OP, "n_heads", n_heads)?,
            i64_of(OP, "n_kv_heads", n_kv_heads)?,
            i64_of(OP, "head_dim", head_dim)?,
            i64_of(OP, "n_kv", n_kv)?,
            window_arg(OP, window)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_attention_decode_f32(
                ptr(q),
                dtype(cache),
                ptr(k_cache),
                ptr(v_cache),
                h,
                kvh,
                d,
                n,
                scale,
                w,
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// Prefill attention: token t attends cache rows 0..=pos0+t, or the last `window` of them,
    /// with the kernel `kernel` names ([`PrefillKernel`]).
    ///
    /// # Safety
    /// `q` and `out` must address `n_tokens * n_heads * head_dim` f32; `k_cache` and `v_cache` at
    /// least `(pos0 + n_tokens) * n_kv_heads * head_dim` elements of `cache` type; all device
    /// memory alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn attention_prefill_f32(
        q: DevicePtr,
        n_tokens: usize,
        pos0: usize,
        cache: DType,
        k_cache: DevicePtr,
        v_cache: DevicePtr,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
        out: DevicePtr,
        kernel: PrefillKernel,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "attention_prefill";
        let (t, p, h, kvh, d, w) = (
            i64_of(OP, "n_tokens", n_tokens)?,
            i64_of(OP, "pos0", pos0)?,
            i64_of(OP, "n_heads", n_heads)?,
            i64_of(OP, "n_kv_heads", n_kv_heads)?,
            i64_of(OP, "head_dim", head_dim)?,
            window_arg(OP, window)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            let launch = match kernel {
                PrefillKernel::Proven => ffi::strata_attention_prefill_f32,
                PrefillKernel::Tiled => ffi::strata_attention_prefill_tiled_f32,
                PrefillKernel::Mma => ffi::strata_attention_prefill_mma_f32,
            };
            launch(
                ptr(q),
                t,
                p,
                dtype(cache),
                ptr(k_cache),
                ptr(v_cache),
                h,
                kvh,
                d,
                scale,
                w,
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// Paged attention of `shape.n_rows` query rows, each over its own sequence's blocks (see
    /// `strata_paged_attention_f32` and `cpu::paged_attention`).
    ///
    /// # Safety
    /// `q` and `out` must address `n_rows * n_heads * head_dim` f32, `positions` and
    /// `table_start` `n_rows` i32, `tables` `n_table` i32, and each cache `cache_rows *
    /// n_kv_heads * head_dim` elements of `cache` type, of device memory alive until the work
    /// on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn paged_attention_f32(
        q: DevicePtr,
        shape: crate::cpu::PagedShape,
        positions: DevicePtr,
        table_start: DevicePtr,
        tables: DevicePtr,
        n_table: usize,
        cache: DType,
        k_cache: DevicePtr,
        v_cache: DevicePtr,
        cache_rows: usize,
        scale: f32,
        window: Option<usize>,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        let (r, nt, bs, cr) = (
            i64_of(OP, "n_rows", shape.n_rows)?,
            i64_of(OP, "n_table", n_table)?,
            i64_of(OP, "block_size", shape.block_size)?,
            i64_of(OP, "cache_rows", cache_rows)?,
        );
        let (h, kvh, d, w) = (
            i64_of(OP, "n_heads", shape.n_heads)?,
            i64_of(OP, "n_kv_heads", shape.n_kv_heads)?,
            i64_of(OP, "head_dim", shape.head_dim)?,
            window_arg(OP, window)?,
        );
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_paged_attention_f32(
                ptr(q),
                r,
                ptr(positions),
                ptr(table_start),
                ptr(tables),
                nt,
                bs,
                dtype(cache),
                ptr(k_cache),
                ptr(v_cache),
                cr,
                h,
                kvh,
                d,
                scale,
                w,
                ptr_mut(out),
                stream(s),
            )
        })
    }

    /// Writes `n_tokens` rows of `row_len` f32 into cache rows `positions[t]`, converted to `cache`.
    ///
    /// # Safety
    /// `src` must address `n_tokens * row_len` f32, `positions` `n_tokens` i32 and `cache_ptr`
    /// `cache_rows * row_len` elements of `cache` type of device memory, alive until the work on
    /// stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn kv_append_f32(
        src: DevicePtr,
        n_tokens: usize,
        row_len: usize,
        positions: DevicePtr,
        cache: DType,
        cache_ptr: DevicePtr,
        cache_rows: usize,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "kv_append";
        let (t, r, c) =
            (i64_of(OP, "n_tokens", n_tokens)?, i64_of(OP, "row_len", row_len)?, i64_of(OP, "cache_rows", cache_rows)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_kv_append_f32(ptr(src), t, r, ptr(positions), dtype(cache), ptr_mut(cache_ptr), c, stream(s))
        })
    }

    /// out = silu(gate) * up over `n` values (`out` may equal either input).
    ///
    /// # Safety
    /// All three must address `n` f32 of device memory, alive until the work on stream `s`
    /// completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn silu_mul_f32(gate: DevicePtr, up: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let n = i64_of("silu_mul", "n", n)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("silu_mul", unsafe { ffi::strata_silu_mul_f32(ptr(gate), ptr(up), n, ptr_mut(out), stream(s)) })
    }

    /// out = gelu_tanh(gate) * up over `n` values (`out` may equal either input).
    ///
    /// # Safety
    /// All three must address `n` f32 of device memory, alive until the work on stream `s`
    /// completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn gelu_mul_f32(gate: DevicePtr, up: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let n = i64_of("gelu_mul", "n", n)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("gelu_mul", unsafe { ffi::strata_gelu_mul_f32(ptr(gate), ptr(up), n, ptr_mut(out), stream(s)) })
    }

    /// `out[r][c] = x[r][c] + bias[c]` for x `[rows, cols]` (`out` may equal `x`).
    ///
    /// # Safety
    /// `x` and `out` must address rows × cols f32 and `bias` cols f32 of device memory, alive
    /// until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn add_bias_f32(
        x: DevicePtr,
        bias: DevicePtr,
        rows: usize,
        cols: usize,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "add_bias";
        let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe { ffi::strata_add_bias_f32(ptr(x), ptr(bias), r, c, ptr_mut(out), stream(s)) })
    }

    /// `out[rows[i]] += weights[i] * src[i]` for `n` rows of `cols` f32 (distinct `rows`; one
    /// outside 0..out_rows is skipped).
    ///
    /// # Safety
    /// `src` must address n × cols f32, `rows` n i32, `weights` n f32 and `out` out_rows × cols
    /// f32 of device memory, alive until the work on stream `s` completes; `rows` must hold
    /// distinct values.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn scatter_add_scaled_f32(
        src: DevicePtr,
        rows: DevicePtr,
        weights: DevicePtr,
        n: usize,
        cols: usize,
        out_rows: usize,
        out: DevicePtr,
        s: Stream,
    ) -> Result<()> {
        const OP: &str = "scatter_add_scaled";
        let (n, c, o) = (i64_of(OP, "n", n)?, i64_of(OP, "cols", cols)?, i64_of(OP, "out_rows", out_rows)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check(OP, unsafe {
            ffi::strata_scatter_add_scaled_f32(ptr(src), ptr(rows), ptr(weights), n, c, o, ptr_mut(out), stream(s))
        })
    }

    /// out = a + b over `n` values (`out` may equal either input).
    ///
    /// # Safety
    /// All three must address `n` f32 of device memory, alive until the work on stream `s`
    /// completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn add_f32(a: DevicePtr, b: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let n = i64_of("add", "n", n)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("add", unsafe { ffi::strata_add_f32(ptr(a), ptr(b), n, ptr_mut(out), stream(s)) })
    }

    /// out = x * factor over `n` values (`out` may equal `x`).
    ///
    /// # Safety
    /// Both must address `n` f32 of device memory, alive until the work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn scale_f32(x: DevicePtr, factor: f32, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let n = i64_of("scale", "n", n)?;
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("scale", unsafe { ffi::strata_scale_f32(ptr(x), factor, n, ptr_mut(out), stream(s)) })
    }

    /// Row-wise softmax of `x[rows][cols]` (`out` may equal `x`).
    ///
    /// # Safety
    /// Both must address `rows * cols` f32 of device memory, alive until the work on stream `s`
    /// completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn softmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let (r, c) = (i64_of("softmax_rows", "rows", rows)?, i64_of("softmax_rows", "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("softmax_rows", unsafe { ffi::strata_softmax_rows_f32(ptr(x), r, c, ptr_mut(out), stream(s)) })
    }

    /// Row-wise argmax of `x[rows][cols]` into `rows` i32.
    ///
    /// # Safety
    /// `x` must address `rows * cols` f32 and `out` `rows` i32 of device memory, alive until the
    /// work on stream `s` completes.
    ///
    /// # Errors
    /// Argument errors and the launch status.
    pub unsafe fn argmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
        let (r, c) = (i64_of("argmax_rows", "rows", rows)?, i64_of("argmax_rows", "cols", cols)?);
        // SAFETY: the caller guarantees the buffers and stream (see # Safety).
        check("argmax_rows", unsafe { ffi::strata_argmax_rows_f32(ptr(x), r, c, ptr_mut(out), stream(s)) })
    }
}
