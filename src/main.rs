//! Command line only: parse arguments, load the config, start, wait for a signal.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use webrtc_sip_gateway::cdr::{self, ExportFormat};
use webrtc_sip_gateway::certs;
use webrtc_sip_gateway::config::{Config, DEFAULT_CONFIG_PATH};
use webrtc_sip_gateway::gateway;
use webrtc_sip_gateway::signaling::auth;

#[derive(Parser)]
#[command(
    name = "webrtc-sip-gateway",
    version,
    about = "Browser (WebRTC) to SIP trunk gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without a config file it runs on built-in defaults.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print every problem with its key path, and
    /// each certificate's subject, expiry and days left.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a signaling token for an account.
    Token {
        #[arg(long)]
        account: String,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a password on stdin and print its hash for the config.
    HashPassword,
    /// Call detail records.
    Cdr {
        #[command(subcommand)]
        command: CdrCommand,
    },
    /// Accounts' data.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
}

#[derive(Subcommand)]
enum CdrCommand {
    /// Print every call record of an account (right of access). Audited.
    Export {
        #[arg(long)]
        account: String,
        /// json or csv
        #[arg(long, default_value = "json")]
        format: ExportFormat,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Erase an account's identifiers from the call records (right to
    /// erasure); what billing needs is kept under a pseudonym. Audited.
    Purge {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Print the cause chain, skipping causes that the message above
            // them already quotes (many of our errors include their source).
            let mut text = String::new();
            for cause in e.chain() {
                let part = cause.to_string();
                if !text.contains(&part) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&part);
                }
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            init_tracing();
            raise_fd_limit();
            let (config, path) = load(config)?;
            let problems = config.problems();
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("config: {p}");
                }
                bail!("{} problem(s) in the config", problems.len());
            }
            if path.is_none() {
                tracing::info!(
                    "no config file at {DEFAULT_CONFIG_PATH}: running on built-in defaults"
                );
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(gateway::run(config, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    println!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let mut problems = config.problems();
            for p in &problems {
                println!("{p}");
            }
            let now = time::OffsetDateTime::now_utc();
            for finding in certs::check_certificates(&config, now) {
                match finding {
                    certs::Finding::Info(line) => println!("{line}"),
                    certs::Finding::Warning(line) => println!("warning: {line}"),
                    certs::Finding::Problem(p) => {
                        println!("{p}");
                        problems.push(p);
                    }
                }
            }
            if problems.is_empty() {
                println!("{}", config.media_summary());
                println!("{}: ok", path.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Token {
            account,
            ttl,
            config,
        } => {
            let (config, _) = load(config)?;
            let known = config.account(&account).is_some()
                || (config.accounts.is_empty() && account == gateway::DEMO_ACCOUNT);
            if !known {
                bail!("no account named {account:?} in the config");
            }
            let secret = gateway::token_secret(&config)?;
            let token = auth::mint_token(
                secret.expose().as_bytes(),
                &account,
                Duration::from_secs(ttl),
            )?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            if std::io::stdin().is_terminal() {
                eprintln!("password (input is echoed; pipe it in to avoid that):");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("empty password");
            }
            println!("{}", auth::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cdr {
            command:
                CdrCommand::Export {
                    account,
                    format,
                    config,
                },
        } => {
            let (config, _) = load(config)?;
            let text = cdr::export_account(&config.server.data_dir, &account, format, &cli_user())?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Account {
            command: AccountCommand::Purge { name, config },
        } => {
            let (config, _) = load(config)?;
            let rows = cdr::purge_account(&config.server.data_dir, &name, &cli_user())?;
            println!("{rows} call record(s) of {name:?} erased (pseudonymised)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The audit log's `who` for this command: `cli:` and the OS user.
fn cli_user() -> String {
    cdr::cli_who(std::env::var("USER").ok().as_deref())
}

/// The config at `path`, or at the default path, or the built-in defaults
/// when no `--config` was given and the default file does not exist.
fn load(path: Option<PathBuf>) -> Result<(Config, Option<PathBuf>)> {
    match path {
        Some(path) => Ok((Config::load(&path)?, Some(path))),
        None => {
            let path = PathBuf::from(DEFAULT_CONFIG_PATH);
            if path.exists() {
                Ok((Config::load(&path)?, Some(path)))
            } else {
                Ok((Config::default(), None))
            }
        }
    }
}

/// Every call holds three media sockets and maybe a SIP TCP connection: the
/// common default of 1,024 descriptors caps a gateway at a few hundred calls.
/// Raise the soft limit to the hard one, as servers usually do.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                tracing::debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open-file limit"
                );
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rtc_dtls warns about every standard TLS extension it does not use
        // (30 lines per Firefox call); its errors still show.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rtc_dtls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received: hanging up calls and stopping");
}
