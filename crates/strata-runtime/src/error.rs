//! strata-runtime's error type.

/// Errors of the runtime: tensor/device failures and broken streaming protocol.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A tensor or device failure from strata-tensor.
    #[error(transparent)]
    Tensor(#[from] strata_tensor::Error),
    /// No placement plan could be made.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Weights requested out of the order the prefetcher follows, or a worker that died.
    #[error("weight streaming: {0}")]
    Stream(String),
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
