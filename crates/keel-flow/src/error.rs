//! The orchestrator's error type.

use keel_store::StoreError;

use crate::definition::DefinitionError;

/// Why an orchestrator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The definition was refused; every problem has its line.
    #[error(transparent)]
    Definition(#[from] DefinitionError),

    /// No workflow by that name (or version) is registered for the tenant.
    #[error("workflow {name:?} is not registered: register it with POST /v1/workflows first")]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
    },

    /// No run with that id belongs to the tenant.
    #[error("run {id:?} not found")]
    UnknownRun {
        /// The id asked for.
        id: String,
    },

    /// The run's input is not what the workflow takes.
    #[error("invalid run input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
