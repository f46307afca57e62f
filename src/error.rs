//! Errors the daemon reports to its clients. Each maps to a named D-Bus error
//! (`org.mpslab.Lab1.Error.<Variant>`), so scripts can tell "busy" from "not found".

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    MpsUnavailable(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Failed(String),
}
