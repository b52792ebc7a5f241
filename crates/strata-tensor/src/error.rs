//! strata-tensor's error type. Messages say what was asked, what was found, and what to do.

use std::fmt;

/// Why no GPU can be used. Returned by discovery; never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// strata was built without the `cuda` feature.
    NotBuilt,
    /// The NVIDIA driver (libcuda.so) could not be loaded.
    NoDriver,
    /// The driver loaded but has no device with this ordinal.
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Number of devices the driver sees.
        count: usize,
    },
    /// The device exists but cannot be used now (busy in exclusive mode, failed, ...).
    Failed {
        /// The device ordinal.
        ordinal: usize,
        /// Why, as the driver says it.
        reason: String,
    },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotBuilt => write!(f, "built without CUDA support (rebuild with `--features cuda`)"),
            Unavailable::NoDriver => write!(f, "no NVIDIA driver (libcuda.so could not be loaded)"),
            Unavailable::NoDevice { ordinal, count: 0 } => {
                write!(f, "no CUDA device (asked for GPU {ordinal}, the driver sees none)")
            }
            Unavailable::NoDevice { ordinal, count } => {
                write!(f, "no CUDA device {ordinal} (the driver sees {count}: 0..{})", count - 1)
            }
            Unavailable::Failed { ordinal, reason } => write!(f, "CUDA device {ordinal} is unavailable: {reason}"),
        }
    }
}

/// Formats a byte count the way the messages use it (`402.0 MiB`, `6.00 GiB`).
pub fn fmt_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let v = b as f64;
    if v >= K * K * K {
        format!("{:.2} GiB", v / (K * K * K))
    } else if v >= K * K {
        format!("{:.1} MiB", v / (K * K))
    } else if v >= K {
        format!("{:.1} KiB", v / K)
    } else {
        format!("{b} B")
    }
}

/// Errors of strata-tensor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No usable GPU (see [`Unavailable`]).
    #[error("{0}")]
    Unavailable(Unavailable),
    /// An allocation would exceed a memory budget (or the device itself ran out). Nothing was
    /// allocated and nothing leaked: the caller may retry with a smaller plan.
    #[error(
        "{what} needs {req}; {free} of the {cap} {budget} budget is free ({used} in use, peak {peak}). \
         Use less memory or raise the budget{hint}",
        req = fmt_bytes(*requested),
        free = fmt_bytes(cap.saturating_sub(*in_use)),
        cap = fmt_bytes(*cap),
        used = fmt_bytes(*in_use),
        peak = fmt_bytes(*peak),
        hint = if budget.starts_with("GPU") { " (--gpu-memory)" } else if budget.starts_with("pinned") { " (--pinned-memory)" } else { "" }
    )]
    OutOfMemory {
        /// What the memory was for.
        what: String,
        /// The budget's name ("GPU 0", "pinned host", ...).
        budget: String,
        /// Bytes asked for.
        requested: u64,
        /// The budget's cap in bytes.
        cap: u64,
        /// Bytes already reserved from the budget.
        in_use: u64,
        /// The most bytes reserved at once so far.
        peak: u64,
    },
    /// The system allocator refused host memory (RAM, a container's limit, `ulimit -v`).
    /// Nothing was allocated; the process goes on.
    #[error(
        "{what} needs {req} of host memory and the system refused it{avail}; use less memory (for a KV \
         cache: a smaller --context)",
        req = fmt_bytes(*requested),
        avail = crate::device::mem_available().map_or(String::new(), |a| format!(" ({} available)", fmt_bytes(a)))
    )]
    HostOutOfMemory {
        /// What the memory was for.
        what: String,
        /// Bytes asked for.
        requested: u64,
    },
    /// Shapes, dtypes or lengths that do not fit the op.
    #[error("{op}: {what}")]
    Shape {
        /// The op that failed.
        op: &'static str,
        /// What does not fit, in words.
        what: String,
    },
    /// Tensors of one op live on different devices.
    #[error("{op}: {what}")]
    Device {
        /// The op that failed.
        op: &'static str,
        /// Which tensors are where, in words.
        what: String,
    },
    /// The data type is not supported by this op.
    #[error("{op}: {dtype} is not supported here ({expected})")]
    Dtype {
        /// The op that failed.
        op: &'static str,
        /// The type that was given.
        dtype: String,
        /// The types the op takes, in words.
        expected: &'static str,
    },
    /// An error from a kernel or its CPU reference.
    #[error(transparent)]
    Kernel(#[from] strata_kernels::Error),
    /// A CUDA driver call failed.
    #[error("{what}: CUDA driver error {code}")]
    Driver {
        /// The call or what it was for.
        what: String,
        /// The driver's error code.
        code: String,
    },
}

/// Result with strata-tensor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: &'static str, what: impl Into<String>) -> Self {
        Error::Shape { op, what: what.into() }
    }

    /// True for [`Error::OutOfMemory`]: the caller can retry with less.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
}
