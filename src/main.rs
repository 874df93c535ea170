//! The `webhookd` command: parse the command line, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webhookd::config::Config;
use webhookd::telemetry::{self, LogFormat};

/// Self-hosted webhook delivery: one binary, one data directory.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without it: built-in defaults and WEBHOOKD_* variables.
    #[arg(long, global = true, env = "WEBHOOKD_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and dashboard and deliver webhooks (the default).
    Serve,
    /// Validate the configuration and print it, with secrets masked.
    CheckConfig,
    /// Replace the key that encrypts secrets at rest (kept in a key file) and
    /// re-encrypt every secret with the new one. Stop webhookd first.
    RotateKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webhookd: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}", config.masked());
            ExitCode::SUCCESS
        }
        Command::RotateKey => match webhookd::app::rotate_key(&config) {
            Ok(id) => {
                println!("webhookd: secrets are now encrypted with key {id}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("webhookd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            telemetry::init(cli.log_format);
            match actix_web::rt::System::new().block_on(webhookd::app::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("webhookd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
