//! Failures the CLI reports with a specific exit code. Everything else is
//! an `anyhow` error at the binary edge and exits 1.

use tvaers_client::ClientError;

/// Exit codes, documented in the top-level `--help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    /// Bad usage or invalid input (clap uses 2 for usage errors too).
    pub const INVALID: u8 = 2;
    /// The daemon is not running or cannot be reached.
    pub const DAEMON_UNAVAILABLE: u8 = 3;
    /// Refused: by the operator at a prompt, or by a trust check.
    pub const REFUSED: u8 = 4;
}

/// An error that carries its exit code. Messages never contain CPR
/// numbers or notice content.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input (a flag, a file, an id) is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A trust check or the operator said no.
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    pub fn invalid(message: impl Into<String>) -> anyhow::Error {
        CliError::Invalid(message.into()).into()
    }

    pub fn refused(message: impl Into<String>) -> anyhow::Error {
        CliError::Refused(message.into()).into()
    }
}

/// The exit code for an error from any command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(cli) = cause.downcast_ref::<CliError>() {
            return match cli {
                CliError::Invalid(_) => exit::INVALID,
                CliError::Refused(_) => exit::REFUSED,
            };
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return match client {
                ClientError::DaemonNotRunning { .. }
                | ClientError::Unavailable { .. }
                | ClientError::Connect { .. } => exit::DAEMON_UNAVAILABLE,
                ClientError::InvalidArgument { .. } | ClientError::NotFound { .. } => exit::INVALID,
                _ => exit::ERROR,
            };
        }
    }
    exit::ERROR
}
