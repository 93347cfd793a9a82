//! The `msstore-facade` binary: parse configuration, start logging, serve until SIGTERM/SIGINT.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

use clap::Parser;
use msstore_facade::config::{AzureEnv, Cli, Settings};
use msstore_facade::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_cli(Cli::parse(), AzureEnv::from_process_env()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("msstore-facade: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(settings.log_format);
    let listener = match tokio::net::TcpListener::bind(settings.grpc_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %settings.grpc_addr, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(settings.grpc_addr, |a| a);
    if settings.credentials.is_none() {
        tracing::warn!(
            "no Entra credential configured (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET \
             or AZURE_FEDERATED_TOKEN_FILE): only RenewKey calls that bring a service_ticket can succeed"
        );
    }
    tracing::info!(grpc_addr = %addr, version = env!("CARGO_PKG_VERSION"), "msstore-facade serving");
    match msstore_facade::serve(settings, listener, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
