//! Errors, and the gRPC codes containerd acts on (AlreadyExists during an
//! unpack means another client won the race; NotFound makes it fetch).

use containerd_snapshots::tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?}: not found")]
    NotFound(String),
    #[error("snapshot {0:?}: already exists")]
    AlreadyExists(String),
    /// The snapshot is not in the state the call needs (a commit of a
    /// view, a remove of a parent).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// `io::Result` with the object it was about.
pub trait Context<T> {
    fn at(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: Into<std::io::Error>> Context<T> for std::result::Result<T, E> {
    fn at(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error::Io {
            what: what.to_string(),
            source: e.into(),
        })
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::Io { .. } => Status::internal(msg),
        }
    }
}
