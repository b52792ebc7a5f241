//! NVTX ranges and stream names, so an nsys timeline reads `layer 3`, `copy layer 4`, `prefill`,
//! on streams named `compute` and `copy`. Through NVIDIA's `nvtx` crate in a `cuda` build
//! (header-only NVTX); no-ops otherwise.
//!
//! A range costs a C string (an allocation) and a call into NVTX, which every kernel launch
//! would pay: so ranges are opened only while a profiler can see them ([`enabled`]), and a run
//! without one does no string work per launch.

/// The environment variable that turns NVTX ranges on (`1`) or off (`0`) whatever
/// [`enabled`] would find.
pub const NVTX_ENV: &str = "STRATA_NVTX";

/// Whether ranges are recorded: `STRATA_NVTX` if set (`0` off, anything else on), else whether a
/// tool has asked to see NVTX: Nsight Systems and Nsight Compute set `NVTX_INJECTION64_PATH` in
/// the process they profile (NVTX's documented way of loading a tool). Read once.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let set = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        match set(NVTX_ENV) {
            Some(v) => v != "0",
            None => cfg!(feature = "cuda") && set("NVTX_INJECTION64_PATH").is_some(),
        }
    })
}

/// An open NVTX range, closed when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    #[cfg(feature = "cuda")]
    _r: Option<nvtx::Range>,
}

/// Opens a range named `name` (it may be closed on another thread); nothing unless
/// [`enabled`].
pub fn range(name: &str) -> Range {
    #[cfg(feature = "cuda")]
    {
        Range { _r: enabled().then(|| nvtx::Range::new(c_name(name))) }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = name;
        Range {}
    }
}

/// [`range`] with a name built only when ranges are recorded (`format!` per layer or per
/// launch costs nothing in a run without a profiler).
pub fn range_with(name: impl FnOnce() -> String) -> Range {
    if enabled() { range(&name()) } else { range("") }
}

/// Names a CUDA stream in profiler timelines.
#[cfg(feature = "cuda")]
pub(crate) fn name_stream(stream: *mut std::ffi::c_void, name: &str) {
    nvtx::name_cuda_resource(nvtx::CudaResource::Stream(stream.cast()), c_name(name));
}

/// The name as a C string (NVTX takes NUL-terminated ASCII; a NUL inside is dropped).
#[cfg(feature = "cuda")]
fn c_name(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default()
}
