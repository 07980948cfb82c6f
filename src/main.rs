use std::{process::ExitCode, time::Duration};

use clap::Parser;
use minicrm::{
    cli,
    config::{Cli, Command, Settings},
    health_cmd,
    startup::{Application, shutdown_signal},
    telemetry,
};

fn main() -> ExitCode {
    // Before libpq first touches OpenSSL: initialise it without its exit
    // handler. Otherwise `OPENSSL_cleanup` runs at exit while a pool thread
    // may still be in a TLS handshake (r2d2 replenishes connections in the
    // background), and the process dies with SIGSEGV after a clean stop.
    // Must come first: OpenSSL honours the option only on its first init.
    openssl_sys::init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Health(args)) => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(health_cmd::run(args)),
            Err(error) => {
                eprintln!("cannot start the runtime: {error}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Check(args)) => {
            telemetry::init(cli.log_format);
            cli::check(args)
        }
        Some(Command::Backup(args)) => {
            telemetry::init(cli.log_format);
            cli::backup(args)
        }
        None => {
            telemetry::init(cli.log_format);
            serve(&cli.settings)
        }
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
        // Errors are logged, not printed, so that every line of a JSON log is JSON.
        let application = match Application::build(settings).await {
            Ok(application) => application,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return Ok(ExitCode::FAILURE);
            }
        };
        // Before the "serving" line: a SIGTERM from then on is a graceful stop.
        let shutdown = shutdown_signal();
        tracing::info!(
            address = %application.local_addr()?,
            backend = ?application.backend(),
            auth = %if application.authenticates() { "tokens" } else { "off" },
            tls = %application.tls_mode(),
            "minicrm serving gRPC"
        );
        application.run_until_stopped(shutdown).await?;
        Ok::<_, Box<dyn std::error::Error>>(ExitCode::SUCCESS)
    });
    // Reads still waiting for the database hold blocking threads; the
    // shutdown grace is over, so they are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match served {
        Ok(ExitCode::SUCCESS) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(code) => code,
        Err(error) => {
            tracing::error!(%error, "stopped on an error");
            ExitCode::FAILURE
        }
    }
}
