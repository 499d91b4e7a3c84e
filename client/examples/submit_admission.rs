//! Submits a sample admission (indlæggelse) to a local tvaers daemon, waits
//! for delivery and prints the status per recipient.
//!
//! ```text
//! cargo run -p tvaers-client --example submit_admission -- \
//!     --socket /run/tvaers/local.sock --to kommune-gribskov [--to ORG …] [--timeout SECS]
//! ```
//!
//! The citizen is made up: the CPR number 010190-4000 is for testing only.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tvaers_client::{Client, ClientError, Submission, v1};

const USAGE: &str = "usage: submit_admission --socket PATH --to ORG [--to ORG …] [--timeout SECS]";

#[derive(Debug)]
struct Args {
    socket: String,
    to: Vec<String>,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut to = Vec::new();
    let mut timeout = Duration::from_secs(30);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(value("--socket")?),
            "--to" => to.push(value("--to")?),
            "--timeout" => {
                let secs = value("--timeout")?;
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| format!("--timeout: {secs:?} is not a number of seconds"))?;
                timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket is required")?;
    if to.is_empty() {
        return Err("at least one --to is required".into());
    }
    Ok(Args {
        socket,
        to,
        timeout,
    })
}

/// An acute, voluntary admission to a psychiatric ward, now.
fn sample_admission() -> v1::Admission {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    v1::Admission {
        admitted_at_ms: now_ms,
        hospital: Some(v1::Unit {
            code: "6630000".into(),
            display_name: "Psykiatrisk Center Nordsjælland".into(),
        }),
        ward: Some(v1::Unit {
            code: "6630123".into(),
            display_name: "Afsnit N3, akut modtagelse, Hillerød".into(),
        }),
        urgency: v1::AdmissionUrgency::Acute as i32,
        legal_basis: v1::AdmissionLegalBasis::Voluntary as i32,
        discharge_planning_requested: true,
        ward_contact: Some(v1::Contact {
            name: "Mette Sørensen".into(),
            role: "Afdelingssygeplejerske".into(),
            phone: "+45 48 29 30 00".into(),
            email: "afsnit-n3@example.invalid".into(),
        }),
    }
}

async fn run(args: Args) -> Result<bool, ClientError> {
    let client = Client::connect(&args.socket).await?;

    let mut submission = Submission::admission("0101904000", sample_admission())
        .episode(format!("example-{}", std::process::id()));
    for org in &args.to {
        submission = submission.to(org);
    }
    println!("idempotency key: {}", submission.key());

    let submitted = client.submit(submission).await?;
    println!(
        "stored as notice {}{}",
        submitted.notice_id,
        if submitted.duplicate {
            " (duplicate)"
        } else {
            ""
        }
    );

    let status = match client
        .wait_delivered(&submitted.notice_id, args.timeout)
        .await
    {
        Ok(status) => status,
        Err(ClientError::Timeout { waited, last, .. }) => {
            println!("not settled after {waited:?}:\n{last}");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    println!("{status}");
    Ok(status.all_delivered())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
