//! NVTX ranges and stream names, so an nsys timeline reads `layer 3`, `copy layer 4`, `prefill`,
//! on streams named `compute` and `copy`. Through NVIDIA's `nvtx` crate in a `cuda` build
//! (header-only NVTX: free unless a profiler is attached); no-ops otherwise.

/// An open NVTX range, closed when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    #[cfg(feature = "cuda")]
    _r: nvtx::Range,
}

/// Opens a range named `name` (it may be closed on another thread).
pub fn range(name: &str) -> Range {
    #[cfg(feature = "cuda")]
    {
        Range { _r: nvtx::Range::new(c_name(name)) }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = name;
        Range {}
    }
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
