//! The vector store's one error type.
//!
//! Variants split into the caller's mistakes (a bad spec, a wrong dimension,
//! a malformed filter), which name the field at fault and say how to fix it,
//! and the store's own failures (I/O, a corrupt file, the index library).

/// Why a vector store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A request value is invalid; `field` is the JSON path at fault.
    #[error("{field}: {message}")]
    Invalid {
        /// The JSON path at fault (`points[3].vector`, `filter.must[0].range`).
        field: String,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// A vector has the wrong length.
    #[error("{field}: expected dim: {expected}, got {got}")]
    Dimension {
        /// The JSON path of the vector.
        field: String,
        /// The collection's dimension.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// No such collection for this tenant.
    #[error("collection {name:?} does not exist")]
    NotFound {
        /// The collection name.
        name: String,
    },
    /// A collection of that name already exists for this tenant.
    #[error("collection {name:?} already exists")]
    AlreadyExists {
        /// The collection name.
        name: String,
    },
    /// Reading or writing the collection's files failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file on disk is not what the store wrote.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The HNSW library refused an operation.
    #[error("index: {0}")]
    Index(String),
    /// The database backend failed.
    #[error("database: {0}")]
    Database(String),
}

impl VectorError {
    /// A caller error at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> VectorError {
        VectorError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VectorError {
        let context = context.into();
        move |source| VectorError::Io { context, source }
    }

    /// Whether the caller, not the store, is at fault.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            VectorError::Invalid { .. }
                | VectorError::Dimension { .. }
                | VectorError::NotFound { .. }
                | VectorError::AlreadyExists { .. }
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = VectorError> = std::result::Result<T, E>;
