//! strata-runtime's error type.

/// Errors of the runtime: tensor/device failures and broken streaming protocol.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] strata_tensor::Error),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Weights requested out of the order the prefetcher follows, or a worker that died.
    #[error("weight streaming: {0}")]
    Stream(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
