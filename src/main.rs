//! The `intelligent-video` binary: parses the command line, sets up logging, runs a subcommand and
//! maps its outcome to an exit code. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use intelligent_video::cli::{Cli, Command};

/// Logging for the one-shot commands: warnings and errors on stderr (`IV_LOG_LEVEL` overrides).
fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IV_LOG_LEVEL")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Exit code of a one-shot command: errors print one `error: …` line on stderr and exit 1.
fn finish<T>(result: anyhow::Result<T>, ok: impl FnOnce(T) -> ExitCode) -> ExitCode {
    match result {
        Ok(v) => ok(v),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Detect(args) => {
            init_cli_logging();
            finish(intelligent_video::cli::detect::run(&args), |failed| {
                if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            })
        }
        Command::Bench(args) => finish(intelligent_video::cli::bench::run(&args), |r| {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", intelligent_video::cli::bench::render_text(&r));
            }
            ExitCode::SUCCESS
        }),
        Command::Optimize(args) => {
            init_cli_logging();
            finish(intelligent_video::cli::optimize::run(&args), |r| {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                ExitCode::SUCCESS
            })
        }
        Command::Model(cmd) => {
            init_cli_logging();
            finish(intelligent_video::cli::model::run(&cmd), |()| {
                ExitCode::SUCCESS
            })
        }
        Command::Runtime(cmd) => finish(intelligent_video::cli::runtime::run(&cmd), |()| {
            ExitCode::SUCCESS
        }),
        Command::Serve(args) => intelligent_video::cli::serve::serve(&args),
        Command::Ui(args) => finish(intelligent_video::cli::ui::run(&args), |()| {
            ExitCode::SUCCESS
        }),
        Command::Health(args) => finish(intelligent_video::cli::health::run(&args), |()| {
            ExitCode::SUCCESS
        }),
        Command::Config(cmd) => intelligent_video::cli::serve::config_check(&cmd),
        Command::Doctor(args) => intelligent_video::cli::doctor::run(&args),
    }
}
