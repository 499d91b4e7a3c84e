//! `tvaersd`: the tvaers daemon. Argument parsing and logging set-up only;
//! everything else is in the `tvaers_daemon` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tvaers_daemon::config::Config;

/// Secure exchange of event notices between municipality, psychiatry and
/// general practice.
///
/// Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad usage or
/// configuration.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The site's config file (see config/*.toml for commented examples).
    #[arg(long, short, env = "TVAERSD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the config file and print this site's TLS fingerprint, the
    /// value peers pin.
    Check,
    /// Generate a new site's keys into DIR: TLS key and certificate, the
    /// Ed25519 signing key and the storage key-encryption key (all mode
    /// 0600; an existing file is never overwritten).
    GenerateKeys {
        #[arg(long)]
        org_id: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match args.command.unwrap_or(Command::Run) {
        Command::GenerateKeys { org_id, dir } => {
            let kek_path = dir.join(tvaers_daemon::at_rest::KEK_FILE);
            let generated = tvaers_daemon::identity::generate(&dir, &org_id)
                .and_then(|keys| {
                    tvaers_daemon::identity::generate_signing_key(&dir)
                        .map(|signing| (keys, signing))
                })
                .map_err(|e| e.to_string())
                .and_then(|(keys, signing)| {
                    tvaers_daemon::at_rest::generate_kek_file(&kek_path)
                        .map(|kek_id| (keys, signing, kek_id))
                        .map_err(|e| e.to_string())
                });
            match generated {
                Ok((keys, (signing_path, signing_key), kek_id)) => {
                    println!("certificate: {}", keys.certificate.display());
                    println!("private key: {}", keys.private_key.display());
                    println!("fingerprint: {}", keys.fingerprint);
                    println!("signing key: {}", signing_path.display());
                    println!("signing public key: {signing_key}");
                    println!(
                        "storage key-encryption key: {} (id {kek_id}; name it in [storage] key_file, and back it up apart from the database: without it the stored notices cannot be read)",
                        kek_path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check => with_config(args.config, |config| {
            tvaers_daemon::daemon::check_key_files(&config).map_err(Failure::Config)?;
            let kek = match &config.storage {
                Some(storage) => tvaers_daemon::at_rest::Kek::load(&storage.kek)
                    .map_err(|e| Failure::Config(e.into()))?,
                None => {
                    return Err(Failure::Config(
                        tvaers_daemon::daemon::DaemonError::NoStorageKey,
                    ));
                }
            };
            let identity = tvaers_daemon::transport::tls::Identity::load(
                &config.transport.certificate,
                &config.transport.private_key,
            )
            .map_err(|e| Failure::Runtime(e.to_string()))?;
            println!("config ok: {}", config.path.display());
            println!(
                "organisation: {} ({})",
                config.site.org_id, config.site.name
            );
            println!("fingerprint: {}", identity.fingerprint());
            println!("storage key-encryption key: {}", kek.id());
            Ok(())
        }),
        Command::Run => with_config(args.config, run),
    }
}

/// Why a command failed, which sets the exit code.
enum Failure {
    /// Exit 2: the configuration (or a key file it names) is at fault.
    Config(tvaers_daemon::daemon::DaemonError),
    /// Exit 1.
    Runtime(String),
}

fn with_config(
    path: Option<PathBuf>,
    action: impl FnOnce(Config) -> Result<(), Failure>,
) -> ExitCode {
    let Some(path) = path else {
        eprintln!("error: no config file given: pass --config FILE (examples in config/)");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match action(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            signals.cancel();
        });
        tvaers_daemon::daemon::run(config, shutdown, None)
            .await
            .map_err(|error| {
                if error.is_configuration() {
                    Failure::Config(error)
                } else {
                    Failure::Runtime(error.to_string())
                }
            })
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
