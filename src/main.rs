use std::process::ExitCode;

use clap::Parser;
use minicrm::{
    config::{Cli, Command},
    health_cmd,
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health(args)) = &cli.command {
        return health_cmd::run(args).await;
    }
    telemetry::init(cli.log_format);
    // Errors are logged, not printed, so that every line of a JSON log is JSON.
    let application = match Application::build(&cli.settings).await {
        Ok(application) => application,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // Before the "serving" line: a SIGTERM from then on is a graceful stop.
    let shutdown = shutdown_signal();
    match application.local_addr() {
        Ok(address) => tracing::info!(
            %address,
            backend = ?application.backend(),
            auth = %if application.authenticates() { "tokens" } else { "off" },
            tls = %application.tls_mode(),
            "minicrm serving gRPC"
        ),
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    }
    if let Err(error) = application.run_until_stopped(shutdown).await {
        tracing::error!(%error, "the server stopped on an error");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
