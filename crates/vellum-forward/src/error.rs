//! Errors of the forwarder's configuration and of its store access.

use vellum_store::StoreError;

/// What can go wrong starting the forwarder or reading its state.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A setting that cannot be used; `field` is its path (`forward.sinks[2].url`).
    #[error("{field}: {message}")]
    Config {
        /// Where: `url`, or `forward.sinks[2].url` once the sink's position is known.
        field: String,
        /// What is wrong (never a secret's value).
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Stored forwarder state (cursor, dead letters) does not parse.
    #[error("stored forwarder state {key}: {message}")]
    State {
        /// The store meta key.
        key: String,
        /// The parse error.
        message: String,
    },
    /// No tokio runtime, or a task failed.
    #[error("{0}")]
    Runtime(String),
}

impl ForwardError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes a configuration error's field with `forward.sinks[index].`.
    pub(crate) fn at_sink(self, index: usize) -> Self {
        match self {
            Self::Config { field, message } => Self::Config {
                field: format!("forward.sinks[{index}].{field}"),
                message,
            },
            other => other,
        }
    }
}
