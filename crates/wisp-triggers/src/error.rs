//! Errors of trigger definitions.

/// A trigger definition that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// A field is invalid; `field` is its JSON path.
    #[error("{field}: {message}")]
    Invalid {
        /// The JSON path of the field, such as `source.schedule`.
        field: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

impl TriggerError {
    /// A new `Invalid` error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        TriggerError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field at fault.
    pub fn field(&self) -> &str {
        match self {
            TriggerError::Invalid { field, .. } => field,
        }
    }

    /// The same error with `prefix.` in front of the field path.
    pub fn under(self, prefix: &str) -> Self {
        match self {
            TriggerError::Invalid { field, message } => TriggerError::Invalid {
                field: format!("{prefix}.{field}"),
                message,
            },
        }
    }
}
