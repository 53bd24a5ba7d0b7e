//! The controller's errors. A reconcile that fails is retried with per-object exponential
//! backoff; each variant has a metric label for `portcullis_controller_failures_total`.

/// Everything a reconcile or the controller's startup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (network, RBAC, conflict, ...).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// Issuing or encoding a certificate, key, CRL or `.p12` failed.
    #[error(transparent)]
    Pki(#[from] crate::Error),

    /// An object the controller reads is unusable and must not be overwritten.
    #[error("{object}: {reason}")]
    Unusable {
        /// `namespace/name` of the object.
        object: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// An object lacks a name or namespace (never the case for objects from the API).
    #[error("{0} has no name or namespace")]
    Unnamed(&'static str),

    /// Adding or removing the CRL finalizer, or the cleanup behind it, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// Encoding JSON (a patch, the ledger) failed.
    #[error("encoding {what}: {source}")]
    Json {
        /// What was being encoded.
        what: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },

    /// The leader-election Lease could not be created or watched.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

impl Error {
    /// A short, stable label per variant for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Pki(_) => "pki",
            Error::Unusable { .. } => "unusable",
            Error::Unnamed(_) => "unnamed",
            Error::Finalizer(_) => "finalizer",
            Error::Json { .. } => "json",
            Error::Lease(_) => "lease",
        }
    }

    /// Shorthand for [`Error::Unusable`].
    pub fn unusable(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unusable {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            // The reconcile's own error is more useful to match on than its wrapper.
            F::ApplyFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::Controller(Box::new(e))
    }
}

/// Result with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
