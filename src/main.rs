//! The `seatrush` command: parses arguments, sets up logging and calls into the library.

use clap::Parser;

mod cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = seatrush_core::failpoint::setup();
    let cli = cli::Cli::parse();
    seatrush_core::telemetry::init(cli.common.log_format, "info,sqlx=warn,lapin=warn");
    match cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
