//! What can go wrong when talking to the local daemon.
//!
//! No variant ever carries notice contents: only paths, addresses, notice
//! ids, gRPC codes and the daemon's own messages, which name the offending
//! field but never its value.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::status::DeliveryStatus;

/// Where a [`Client`](crate::Client) talks to its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// The daemon's local API on a Unix domain socket (the normal case).
    Unix(PathBuf),
    /// A loopback TCP listener, given as a URI such as `http://127.0.0.1:7600`.
    Tcp(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "socket {}", path.display()),
            Target::Tcp(addr) => write!(f, "address {addr}"),
        }
    }
}

/// An error from [`Client`](crate::Client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers at the socket path or address: the daemon is not
    /// running, or runs with another local API socket.
    #[error(
        "no tvaers daemon is running at {target} ({}); start it with `tvaersd --config FILE`, \
         where FILE is the daemon config whose local API setting names this {}",
        not_running_reason(*.kind),
        target_noun(.target)
    )]
    DaemonNotRunning {
        /// The socket path or address that was tried.
        target: Target,
        /// `NotFound` (no socket file) or `ConnectionRefused` (a stale socket,
        /// or no listener on the TCP port).
        kind: io::ErrorKind,
    },

    /// Connecting failed for another reason (permissions on the socket, a
    /// timeout, something other than a tvaers daemon listening).
    #[error("cannot connect to the tvaers daemon at {target}: {reason}")]
    Connect {
        /// The socket path or address that was tried.
        target: Target,
        /// The innermost cause, for people.
        reason: String,
    },

    /// The address given to [`Client::connect_tcp`](crate::Client::connect_tcp)
    /// is not a valid URI.
    #[error("invalid daemon address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },

    /// The daemon refused the request as invalid (gRPC `INVALID_ARGUMENT`).
    /// The message names the offending field.
    #[error("the daemon refused the request: {message}")]
    InvalidArgument {
        /// The daemon's message; names the field, never its value.
        message: String,
    },

    /// The notice id or inbox cursor is unknown to the daemon (`NOT_FOUND`).
    #[error("not found: {message}")]
    NotFound {
        /// The daemon's message.
        message: String,
    },

    /// The request conflicts with what the daemon already has
    /// (`ALREADY_EXISTS` or `FAILED_PRECONDITION`), for instance an
    /// idempotency key reused for a different notice.
    #[error("conflict ({code:?}): {message}")]
    Conflict {
        /// `AlreadyExists` or `FailedPrecondition`.
        code: tonic::Code,
        /// The daemon's message.
        message: String,
    },

    /// The connection to the daemon broke or the daemon cannot serve now
    /// (`UNAVAILABLE`); retrying with the same idempotency key is safe.
    #[error(
        "the tvaers daemon at {target} is unavailable: {message}; if it has stopped, \
         start it again with `tvaersd --config FILE`"
    )]
    Unavailable {
        /// The socket path or address of the daemon.
        target: Target,
        /// The cause, as reported by the gRPC layer or the daemon.
        message: String,
    },

    /// [`Client::wait_delivered`](crate::Client::wait_delivered) gave up
    /// before every recipient was delivered or failed.
    #[error("gave up after {waited:?} waiting for delivery of notice {notice_id}")]
    Timeout {
        /// The notice waited for.
        notice_id: String,
        /// How long it waited.
        waited: Duration,
        /// The last status seen.
        last: Box<DeliveryStatus>,
    },

    /// Any other gRPC status from the daemon.
    #[error("the daemon answered {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The daemon's message.
        message: String,
    },
}

fn not_running_reason(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::NotFound => "the socket does not exist",
        io::ErrorKind::ConnectionRefused => "nothing is listening there",
        _ => "it cannot be reached",
    }
}

fn target_noun(target: &Target) -> &'static str {
    match target {
        Target::Unix(_) => "socket path",
        Target::Tcp(_) => "address",
    }
}

impl ClientError {
    /// Maps a gRPC status from a call to the daemon at `target`.
    pub(crate) fn from_status(status: tonic::Status, target: &Target) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::InvalidArgument => ClientError::InvalidArgument { message },
            tonic::Code::NotFound => ClientError::NotFound { message },
            code @ (tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition) => {
                ClientError::Conflict { code, message }
            }
            tonic::Code::Unavailable => ClientError::Unavailable {
                target: target.clone(),
                message,
            },
            code => ClientError::Status { code, message },
        }
    }

    /// Maps a failure to establish the channel to the daemon at `target`.
    pub(crate) fn from_connect(error: &tonic::transport::Error, target: Target) -> Self {
        let mut cause: &(dyn std::error::Error + 'static) = error;
        let mut io_kind = None;
        loop {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                io_kind = Some(io.kind());
            }
            match cause.source() {
                Some(next) => cause = next,
                None => break,
            }
        }
        match io_kind {
            Some(kind @ (io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)) => {
                ClientError::DaemonNotRunning { target, kind }
            }
            _ => ClientError::Connect {
                target,
                reason: cause.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants() {
        let target = Target::Unix(PathBuf::from("/run/tvaers/local.sock"));
        let map = |s| ClientError::from_status(s, &target);
        assert!(matches!(
            map(tonic::Status::invalid_argument("recipients: must not be empty")),
            ClientError::InvalidArgument { message } if message == "recipients: must not be empty"
        ));
        assert!(matches!(
            map(tonic::Status::not_found("notice")),
            ClientError::NotFound { .. }
        ));
        assert!(matches!(
            map(tonic::Status::already_exists("key")),
            ClientError::Conflict {
                code: tonic::Code::AlreadyExists,
                ..
            }
        ));
        assert!(matches!(
            map(tonic::Status::failed_precondition("key")),
            ClientError::Conflict {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ));
        assert!(matches!(
            map(tonic::Status::unavailable("gone")),
            ClientError::Unavailable { .. }
        ));
        assert!(matches!(
            map(tonic::Status::internal("disk")),
            ClientError::Status {
                code: tonic::Code::Internal,
                ..
            }
        ));
    }

    #[test]
    fn not_running_message_names_path_and_hint() {
        let err = ClientError::DaemonNotRunning {
            target: Target::Unix(PathBuf::from("/run/tvaers/local.sock")),
            kind: io::ErrorKind::NotFound,
        };
        let text = err.to_string();
        assert!(text.contains("/run/tvaers/local.sock"), "{text}");
        assert!(text.contains("tvaersd --config FILE"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
    }
}
