use std::process::ExitCode;

use clap::Parser;
use minicrm::{
    config::{Cli, Command},
    health_cmd,
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if let Some(Command::Health(args)) = &cli.command {
        return Ok(health_cmd::run(args).await);
    }
    telemetry::init(cli.log_format);
    let settings = cli.settings;
    let application = Application::build(&settings).await.inspect_err(|error| {
        tracing::error!(%error, "cannot start");
    })?;
    tracing::info!(
        address = %application.local_addr()?,
        backend = ?application.backend(),
        "minicrm serving gRPC"
    );
    application.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
