//! The `herd` command line. Each subcommand lives in `cmd/<area>.rs`; this file only dispatches.
//! `anyhow` lives here and nowhere else; `main` prints the whole error chain and exits non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Serve thousands of per-customer models, scale queued work, ship versioned releases.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Subcommands are added here, one variant per area, each delegating to `cmd::<area>`.
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {};
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
