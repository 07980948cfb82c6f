use clap::Parser;
use minicrm::{
    config::Settings,
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init();
    let settings = Settings::parse();
    let application = Application::build(&settings).await.inspect_err(|error| {
        tracing::error!(%error, "cannot start");
    })?;
    tracing::info!(
        address = %application.local_addr()?,
        backend = ?application.backend(),
        "minicrm serving gRPC"
    );
    application.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}
