use std::{process::ExitCode, time::Duration};

use clap::Parser;
use minicrm::{
    cli::{self, Cli, Command},
    config::Settings,
    startup::{Application, shutdown_signal},
    telemetry,
};

fn main() -> ExitCode {
    telemetry::init();
    let cli = Cli::parse();
    match &cli.command {
        None => serve(&cli.settings),
        Some(Command::Check(args)) => cli::check(args),
        Some(Command::Backup(args)) => cli::backup(args),
    }
}

fn serve(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let application = Application::build(settings).await.inspect_err(|error| {
            tracing::error!(%error, "cannot start");
        })?;
        tracing::info!(
            address = %application.local_addr()?,
            backend = ?application.backend(),
            "minicrm serving gRPC"
        );
        application.run_until_stopped(shutdown_signal()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    // Reads still waiting for the database hold blocking threads; the
    // shutdown grace is over, so they are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "stopped on an error");
            ExitCode::FAILURE
        }
    }
}
