//! One module per command group, plus what several of them share.

pub mod audit;
pub mod card;
pub mod care_team;
pub mod inbox;
pub mod init;
pub mod keys;
pub mod outbox;
pub mod peer;
pub mod purge;
pub mod send;
pub mod status;
pub mod verify;
pub mod webhooks;

use std::path::Path;

use anyhow::Context;
use tvaers_daemon::config::Config;

use crate::error::CliError;

/// Loads the site config; a missing or invalid file is invalid input.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    if !path.exists() {
        return Err(CliError::invalid(format!(
            "no config file at {}: pass --config FILE or set TVAERS_CONFIG, or create one with \
             `tvaers init`",
            path.display()
        )));
    }
    Config::load(path).map_err(|e| CliError::invalid(e.to_string()))
}

/// Connects to the daemon's admin API.
pub async fn admin(config: &Config) -> anyhow::Result<tvaers_client::AdminClient> {
    tvaers_client::AdminClient::connect(&config.api.admin_socket)
        .await
        .map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "cannot reach the admin API of the daemon for {} (start it with `tvaersd --config {} run`)",
                config.path.display(),
                config.path.display()
            ))
        })
}

/// Connects to the daemon's local API.
pub async fn local(config: &Config) -> anyhow::Result<tvaers_client::Client> {
    tvaers_client::Client::connect(&config.api.socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the local API of the daemon for {} (start it with `tvaersd --config {} run`)",
                config.path.display(),
                config.path.display()
            )
        })
}

/// Asks `question` y/N on the terminal. Without a terminal it refuses and
/// says to `first_do` and pass --yes; a "no" is refused with `declined`.
pub fn confirm(question: &str, first_do: &str, declined: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::invalid(format!(
            "not asking for confirmation without a terminal: {first_do}, then run again with --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::refused(declined.to_owned()))
    }
}

/// The CPR number given on the command line, or else the first line of
/// standard input (which keeps it out of the shell history and the
/// process list); invalid input is refused without echoing it.
pub fn read_cpr(given: Option<String>) -> anyhow::Result<String> {
    use std::io::BufRead;
    let cpr = match given {
        Some(cpr) => cpr,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    if tvaers_proto::cpr::Cpr::parse(&cpr).is_err() {
        // Never echo the input: it may be a real number mistyped.
        return Err(CliError::invalid(
            "the CPR number is not valid (ten digits, DDMMYYXXXX or DDMMYY-XXXX)",
        ));
    }
    Ok(cpr)
}

/// Now, as RFC 3339.
pub fn now_text() -> String {
    tvaers_daemon::config::format_time(tvaers_daemon::now_ms())
}
