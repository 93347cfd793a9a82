//! The `msstore-facade` binary: parse configuration, start logging, serve until SIGTERM/SIGINT.
//! Besides the facade itself (against Microsoft, or against the built-in emulator with
//! `--sandbox`) it runs the emulator alone (`emulator`) and mints sandbox keys (`sandbox-key`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use msstore_facade::config::{AzureEnv, ServeArgs, Settings, ENV_HELP};
use msstore_facade::emulator::{
    self, Emulator, EmulatorArgs, RunningEmulator, SandboxKeyArgs, StoreKeySpec,
};
use msstore_facade::telemetry;
use msstore_facade::upstream::Host;

/// Command-line flags, each with an environment fallback.
#[derive(Debug, Parser)]
#[command(name = "msstore-facade", version, about, after_help = ENV_HELP)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,

    /// Something other than serving the facade.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The commands besides serving the facade.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run only the sandbox emulator of the Store and Entra endpoints (NOT Microsoft), for
    /// other facades and tests to use; prints the settings that point a facade at it.
    Emulator(EmulatorArgs),
    /// Print a Store ID key that the sandbox emulator accepts, to try RenewKey with.
    SandboxKey(SandboxKeyArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return config_error(&error),
    };
    match cli.command.take() {
        Some(Command::Emulator(args)) => {
            telemetry::init_logging(cli.serve.log_format);
            run_emulator(args).await
        }
        Some(Command::SandboxKey(args)) => print_sandbox_key(&args),
        None => run_facade(cli.serve).await,
    }
}

/// Help and version print as clap prints them; any other parse error is one line, exit 2.
fn config_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let text = error.to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| l.trim_start_matches("error: "))
        .collect();
    eprintln!("msstore-facade: invalid configuration: {}", line.join("; "));
    ExitCode::from(2)
}

async fn run_facade(cli: ServeArgs) -> ExitCode {
    let sandbox = cli.sandbox;
    let azure = AzureEnv::from_process_env();
    let azure_ignored = sandbox && !azure.is_empty();
    let azure = if sandbox { AzureEnv::default() } else { azure };
    let settings = match Settings::from_cli(cli, azure) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("msstore-facade: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(files) = &settings.tls {
        if let Err(error) = files.check() {
            eprintln!("msstore-facade: invalid configuration: --tls-cert/--tls-key/--tls-client-ca: {error}");
            return ExitCode::from(2);
        }
    }
    let tracer = match telemetry::init_telemetry(settings.log_format) {
        Ok(tracer) => tracer,
        Err(error) => {
            eprintln!("msstore-facade: {error}");
            return ExitCode::from(2);
        }
    };
    if tracer.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    let (settings, emulator) = if sandbox {
        match start_sandbox(settings, azure_ignored).await {
            Some((settings, emulator)) => (settings, Some(emulator)),
            None => return ExitCode::FAILURE,
        }
    } else {
        (settings, None)
    };
    let tls = settings.tls.as_ref().map_or("off", |files| files.mode());
    let listener = match tokio::net::TcpListener::bind(settings.grpc_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %settings.grpc_addr, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let admin = match tokio::net::TcpListener::bind(settings.admin_addr).await {
        Ok(admin) => admin,
        Err(error) => {
            tracing::error!(addr = %settings.admin_addr, %error, "cannot listen (admin)");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(settings.grpc_addr, |a| a);
    let admin_addr = admin.local_addr().map_or(settings.admin_addr, |a| a);
    if settings.credentials.is_none() {
        tracing::warn!(
            "no Entra credential configured (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET \
             or AZURE_FEDERATED_TOKEN_FILE): only RenewKey calls that bring a service_ticket can succeed"
        );
    }
    let shutdown = shutdown_signal();
    tracing::info!(grpc_addr = %addr, %admin_addr, tls, version = env!("CARGO_PKG_VERSION"), sandbox, "msstore-facade serving");
    let served = msstore_facade::serve(settings, listener, Some(admin), shutdown).await;
    if let Some(emulator) = emulator {
        emulator.stop().await;
    }
    if let Some(tracer) = tracer {
        // Flushes the spans still batched; the exporter needs the runtime, so not on it.
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    exit_code(served, "msstore-facade")
}

/// Starts the in-process emulator on loopback and points `settings` at it.
async fn start_sandbox(
    settings: Settings,
    azure_ignored: bool,
) -> Option<(Settings, RunningEmulator)> {
    let emulator = match Emulator::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(emulator) => emulator.spawn(),
        Err(error) => {
            tracing::error!(%error, "sandbox: cannot start the emulator");
            return None;
        }
    };
    let endpoints = emulator.endpoints();
    let settings = match settings.with_sandbox(endpoints.sandbox_upstreams()) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "sandbox: cannot configure the facade");
            return None;
        }
    };
    tracing::warn!(
        emulator = %endpoints.base_url(),
        tenant = emulator::SANDBOX_TENANT,
        client_id = emulator::SANDBOX_CLIENT_ID,
        "SANDBOX MODE: every Store and Entra call goes to the built-in emulator, NOT to \
         Microsoft; licenses and keys are made up"
    );
    if azure_ignored {
        tracing::warn!("sandbox: the AZURE_* variables are set but ignored");
    }
    Some((settings, emulator))
}

/// `msstore-facade emulator`: the emulator alone, until SIGTERM/SIGINT.
async fn run_emulator(args: EmulatorArgs) -> ExitCode {
    let emulator = match Emulator::bind(args.listen).await {
        Ok(emulator) => emulator,
        Err(error) => {
            tracing::error!(addr = %args.listen, %error, "emulator: cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    let endpoints = emulator.endpoints();
    let upstreams = endpoints.sandbox_upstreams();
    tracing::warn!(
        emulator_addr = %endpoints.local_addr(),
        "emulator serving: a local imitation of the Store and Entra endpoints, NOT Microsoft"
    );
    let hosts: String = Host::all()
        .map(|host| format!("export {}={}\n", host.env(), upstreams.upstreams[host]))
        .collect();
    println!(
        "# msstore-facade emulator on {base} (NOT Microsoft). Point a facade at it with:\n\
         {hosts}\
         export AZURE_AUTHORITY_HOST={}\n\
         export AZURE_TENANT_ID={}\n\
         export AZURE_CLIENT_ID={}\n\
         export AZURE_CLIENT_SECRET={}",
        upstreams.authority_host,
        upstreams.tenant_id,
        upstreams.client_id,
        // The sandbox secret is published (README); it opens nothing but the emulator.
        emulator::SANDBOX_CLIENT_SECRET,
        base = endpoints.base_url(),
    );
    exit_code(emulator.serve(shutdown).await, "emulator")
}

/// Logs how `server` ended and turns that into the process exit status.
fn exit_code(result: Result<(), impl std::fmt::Display>, server: &str) -> ExitCode {
    match result {
        Ok(()) => {
            tracing::info!("{server} stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "{server} failed");
            ExitCode::FAILURE
        }
    }
}

/// `msstore-facade sandbox-key`: prints one key on stdout.
fn print_sandbox_key(args: &SandboxKeyArgs) -> ExitCode {
    let mut spec = StoreKeySpec::new(args.key_type.into())
        .client_id(&args.client_id)
        .user_id(&args.user_id)
        .refresh_base(args.emulator_url.clone());
    if let Some(magic) = &args.magic {
        spec = spec.payload(magic);
    }
    println!("{}", spec.mint());
    ExitCode::SUCCESS
}

/// Installs the SIGTERM and SIGINT handlers at once (a signal that arrives after the start-up
/// log line must not kill the process) and completes on the first of them.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}
