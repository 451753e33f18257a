//! `herd runtime install|path`: the ONNX Runtime library herd loads.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use herd_runtime::install::{self, WheelSource};

#[derive(Subcommand)]
pub enum RuntimeCommand {
    /// Download the pinned onnxruntime wheel with `python3 -m pip download` (your pip settings
    /// apply), check its SHA-256, and extract libonnxruntime into herd's cache.
    Install {
        /// Use a wheel file you already have instead of downloading (offline installs).
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Reinstall even if present.
        #[arg(long)]
        force: bool,
    },
    /// Print the library herd would load, or say how to get one.
    Path,
}

pub fn run(cmd: RuntimeCommand) -> anyhow::Result<()> {
    match cmd {
        RuntimeCommand::Install { wheel, force } => {
            let source = match &wheel {
                Some(p) => WheelSource::File(p),
                None => WheelSource::Pip,
            };
            let path = install::install(source, force, &mut |line| eprintln!("{line}"))
                .context("herd runtime install")?;
            println!("{}", path.display());
            Ok(())
        }
        RuntimeCommand::Path => {
            let p = install::locate(None)?;
            println!("{}", p.display());
            Ok(())
        }
    }
}

/// Finds the library, installing it first when missing and `auto` is allowed.
pub fn ensure(explicit: Option<&std::path::Path>, auto: bool) -> anyhow::Result<PathBuf> {
    match install::locate(explicit) {
        Ok(p) => Ok(p),
        Err(e) if !auto || explicit.is_some() => Err(e.into()),
        Err(_) => {
            eprintln!(
                "ONNX Runtime {} is not installed yet; installing it now (disable with --no-auto-install)",
                install::ORT_VERSION
            );
            install::install(WheelSource::Pip, false, &mut |line| eprintln!("  {line}")).context(
                "installing ONNX Runtime automatically; run `herd runtime install` to retry",
            )
        }
    }
}
