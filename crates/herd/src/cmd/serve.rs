//! `herd serve`: parses the flags into `ServeSettings` and calls `herd_server::serving::serve`.

use clap::Args;
use herd_server::serving::ServeSettings;
use herd_server::telemetry;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: ServeSettings,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    pub log_json: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logs(args.log_json);
    let s = &args.settings.server;
    let lib = super::runtime::ensure(s.ort_lib.as_deref(), !s.no_auto_install)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(herd_server::serving::serve(args.settings, lib))?;
    Ok(())
}
