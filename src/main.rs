//! The `webhookd` command: parse the command line, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webhookd::config::Config;
use webhookd::telemetry::{self, LogFormat};

/// jemalloc: with sled, glibc's malloc was a fifth of the writer thread's
/// time (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's startup options (its `malloc_conf`, read before the first
/// allocation; `_RJEM_MALLOC_CONF` in the environment still overrides them).
/// Thread caches keep blocks up to 1 MiB: sled reads its log in 512 KiB
/// segments at start, and without a cached buffer each read faulted in fresh
/// pages, 190,000 faults and 0.6 s against 20,000 and 0.33 s with it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&u8> = Some(&b"tcache_max:1048576\0"[0]);

/// Self-hosted webhook delivery: one binary, one data directory.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it: built-in defaults and WEBHOOKD_* variables.
    #[arg(long, global = true, env = "WEBHOOKD_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format [default: log_format of the configuration, else text].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and dashboard and deliver webhooks (the default).
    Serve,
    /// Validate the configuration and print it, with secrets masked.
    CheckConfig,
    /// Write a consistent backup of the database to FILE: through the running
    /// webhookd when there is one (writes pause while it is taken), else from
    /// the data dir. The encryption key is not in it: keep that too.
    Backup {
        /// Where to write the backup (replaced atomically, mode 0600).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Ask the webhookd at this URL (default: the configured listen address,
        /// when the data dir is in use). The admin token: WEBHOOKD_ADMIN_TOKEN,
        /// else the token file of the configured data dir.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Restore a backup into a new data directory (it must hold no database).
    /// Start webhookd on it with the encryption key of the original.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The data directory to create.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Manage the admin token.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Replace the key that encrypts secrets at rest (kept in a key file) and
    /// re-encrypt every secret with the new one. Stop webhookd first.
    RotateKey,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Replace the admin token with a new one, written to the token file in the
    /// data dir. A running webhookd uses it at once (the old one stops working,
    /// dashboard sessions end); a configured token cannot be rotated here.
    Rotate,
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("webhookd: {e:#}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webhookd: {e}");
            return ExitCode::from(2);
        }
    };
    let format = cli.log_format.unwrap_or(if config.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    // What is in effect, for the startup line.
    config.log_json = format == LogFormat::Json;
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve) {
        telemetry::init(format);
    } else {
        telemetry::init_command(format);
    }
    match command {
        Command::CheckConfig => {
            println!("{}", config.masked());
            match webhookd::app::check_files(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("webhookd: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Backup { to, server } => {
            match webhookd::commands::backup(&config, &to, server.as_deref()) {
                Ok(s) => {
                    println!(
                        "webhookd: backup of {} bytes written to {}",
                        s.bytes,
                        to.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Restore { from, data_dir } => {
            match webhookd::commands::restore(&from, &data_dir) {
                Ok(s) => {
                    println!(
                        "webhookd: restored {} records into {}; start webhookd on it with the \
                     encryption key of the original",
                        s.entries,
                        data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Token {
            action: TokenAction::Rotate,
        } => match webhookd::commands::rotate_admin_token(&config) {
            Ok(path) => {
                println!("webhookd: new admin token in {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::RotateKey => match webhookd::app::rotate_key(&config) {
            Ok(id) => {
                println!("webhookd: secrets are now encrypted with key {id}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Serve => match actix_web::rt::System::new().block_on(webhookd::app::run(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("webhookd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
