use std::process::ExitCode;

use clap::Parser;
use minicrm::{
    config::Settings,
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let settings = Settings::parse();
    let application = match Application::build(&settings).await {
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
