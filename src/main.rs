//! The `seatrush` command: parses arguments, sets up logging and calls into the library.

use clap::Parser;

mod cli;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = seatrush_core::failpoint::setup();
    let cli = cli::Cli::parse();
    let runtime = match cli::runtime(&cli) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The broker client warns of every message the broker returns, body and all; a worker
    // returns the answers to invalid messages nobody listens for, and dead-letters and counts
    // each itself, so a flood of them would flood the log.
    seatrush_core::telemetry::init(
        cli.common.log_format,
        "info,sqlx=warn,lapin=warn,lapin::returned_messages=error",
    );
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
