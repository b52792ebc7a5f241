//! The kernel crate's error type: argument errors found before any work is done, and CUDA
//! statuses returned by the launchers.

/// Errors from the CPU reference ops and the CUDA launchers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A shape, length or value does not fit the op; nothing was computed.
    #[error("{op}: {what}")]
    InvalidArgument { op: &'static str, what: String },
    /// The op does not support this data type.
    #[error("{op}: {dtype} is not supported ({expected})")]
    UnsupportedDtype { op: &'static str, dtype: crate::DType, expected: &'static str },
    /// A launcher returned a CUDA status other than success.
    #[error("{op}: CUDA error {code} ({name}): {description}")]
    Cuda { op: &'static str, code: i32, name: String, description: String },
    /// The crate was built without the `cuda` feature.
    #[error("strata was built without CUDA support: rebuild with `--features cuda`")]
    CudaNotBuilt,
}

/// Result with the kernel crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidArgument`] for `op`.
    pub fn invalid(op: &'static str, what: impl Into<String>) -> Self {
        Error::InvalidArgument { op, what: what.into() }
    }
}
