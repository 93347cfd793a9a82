//! Configuration: flags with environment fallbacks, parsed and validated once into [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgMatches, Args};
use enum_map::EnumMap;
use secrecy::SecretString;
use url::Url;

use crate::auth::{AllowedTenants, CredentialSource, Credentials, TenantId};
use crate::resilience::ResilienceConfig;
pub use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;
use crate::upstream::Host;

/// What `--help` says after the flags: the settings read from the environment only.
pub const ENV_HELP: &str = "\
Entra ID credentials (environment only; secrets are never taken from flags):
  AZURE_TENANT_ID             tenant the facade acts for when a request names none (GUID or domain)
  AZURE_CLIENT_ID             application (client) id registered in Partner Center
  AZURE_CLIENT_SECRET         client secret (client credentials flow)
  AZURE_FEDERATED_TOKEN_FILE  file holding a client assertion JWT (AKS workload identity), re-read on
                              every token request; use instead of AZURE_CLIENT_SECRET
  AZURE_AUTHORITY_HOST        token authority [default: https://login.microsoftonline.com]
                              (plain http:// accepted, for loopback tests)
With no credential configured the facade still serves: RenewKey callers may pass service_ticket.

Logging and traces:
  RUST_LOG                    log filter [default: info]
  OTEL_EXPORTER_OTLP_ENDPOINT export traces over OTLP/gRPC to this collector (e.g.
                              http://otel-collector:4317) [default: unset, no export]
  OTEL_SERVICE_NAME, OTEL_*   the standard OpenTelemetry SDK settings (resource, headers,
                              timeout, sampler, batching)";

/// The flags of the facade itself, each with an environment fallback.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on [default: 0.0.0.0:50051, or 127.0.0.1:50051 with
    /// --sandbox, so that made-up licenses are not served to other machines by accident].
    #[arg(long, env = "MSSTORE_GRPC_ADDR")]
    pub grpc_addr: Option<String>,

    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`) [default:
    /// 0.0.0.0:9090, or 127.0.0.1:9090 with --sandbox].
    #[arg(long, env = "MSSTORE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,

    /// The base URL of every Store host.
    #[command(flatten)]
    pub upstream_urls: UpstreamUrls,

    /// Largest accepted gRPC request message, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MSSTORE_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,

    /// On SIGTERM/SIGINT, how long calls in flight may take to finish before the process exits
    /// anyway (e.g. `25s`, `500ms`); keep it below the pod's termination grace period.
    #[arg(long, env = "MSSTORE_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM/SIGINT, how long health reports NOT_SERVING (and `/readyz` 503) while new
    /// calls are still accepted, so that load balancers stop sending before the listener
    /// closes (e.g. `5s`); the --shutdown-grace drain starts after it.
    #[arg(long, env = "MSSTORE_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// Comma-separated tenants (GUIDs or domain names) a call may name in `tenant_id`, or `*`
    /// for any; a call naming another gets PERMISSION_DENIED `TENANT_NOT_ALLOWED` [default:
    /// only AZURE_TENANT_ID, so with no credential configured no tenant may be named; `*` with
    /// --sandbox]. AZURE_TENANT_ID is always allowed.
    #[arg(long, env = "MSSTORE_ALLOWED_TENANTS", value_name = "TENANTS")]
    pub allowed_tenants: Option<String>,

    /// PEM certificate chain (leaf first) of the gRPC port: with it (and --tls-key) the port
    /// speaks TLS only and plaintext is refused. The files are read again when they change
    /// (cert-manager rotation), with no restart.
    #[arg(
        long,
        env = "MSSTORE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "MSSTORE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that issue callers' certificates: mutual TLS, a caller without a
    /// certificate from one of them is refused at the handshake (needs --tls-cert).
    #[arg(
        long,
        env = "MSSTORE_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Retries, circuit breaking, load shedding and HTTP/2 limits.
    #[command(flatten)]
    pub resilience: ResilienceConfig,

    /// Log line format.
    #[arg(long, env = "MSSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve against the built-in emulator instead of Microsoft: every upstream URL and the
    /// Entra authority point at an in-process emulator on loopback, with the sandbox
    /// credentials (AZURE_* and the URL flags are ignored). Never on unless asked for.
    #[arg(long, env = "MSSTORE_SANDBOX", value_parser = BoolishValueParser::new())]
    pub sandbox: bool,
}

/// The base URL flag of every [`Host`] (`--business-store-url`, ...), declared by the host.
#[derive(Debug, Clone)]
pub struct UpstreamUrls(pub EnumMap<Host, String>);

impl clap::FromArgMatches for UpstreamUrls {
    /// Every flag has a default, so clap always has a value; the default stands in anyway.
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(EnumMap::from_fn(|host: Host| {
            matches
                .get_one::<String>(host.flag())
                .map_or(host.default_url(), String::as_str)
                .to_owned()
        })))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for (host, url) in &mut self.0 {
            if let Some(value) = matches.get_one::<String>(host.flag()) {
                value.clone_into(url);
            }
        }
        Ok(())
    }
}

impl Args for UpstreamUrls {
    fn augment_args(mut command: clap::Command) -> clap::Command {
        for host in Host::all() {
            command = command.arg(
                clap::Arg::new(host.flag())
                    .long(host.flag())
                    .env(host.env())
                    .value_name(host.env().trim_start_matches("MSSTORE_"))
                    .default_value(host.default_url())
                    .help(host.help()),
            );
        }
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// The `AZURE_*` variables, read from the environment in one place.
#[derive(Debug, Default)]
pub struct AzureEnv {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_CLIENT_SECRET`.
    pub client_secret: Option<SecretString>,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
    /// `AZURE_AUTHORITY_HOST`.
    pub authority_host: Option<String>,
}

impl AzureEnv {
    /// Whether no `AZURE_*` variable is set.
    pub fn is_empty(&self) -> bool {
        self.tenant_id.is_none()
            && self.client_id.is_none()
            && self.client_secret.is_none()
            && self.federated_token_file.is_none()
            && self.authority_host.is_none()
    }

    /// Reads the `AZURE_*` variables; empty values count as unset.
    pub fn from_process_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            tenant_id: var("AZURE_TENANT_ID"),
            client_id: var("AZURE_CLIENT_ID"),
            client_secret: var("AZURE_CLIENT_SECRET").map(SecretString::from),
            federated_token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            authority_host: var("AZURE_AUTHORITY_HOST"),
        }
    }
}

/// Validated configuration of one facade instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (metrics and HTTP health).
    pub admin_addr: SocketAddr,
    /// The base URL of every Store host.
    pub upstreams: EnumMap<Host, Url>,
    /// Entra authority host.
    pub authority_host: Url,
    /// The facade's own credentials, if configured.
    pub credentials: Option<Credentials>,
    /// Request message size limit in bytes.
    pub max_request_bytes: usize,
    /// Retries, circuit breaking, load shedding, timeouts and HTTP/2 limits.
    pub resilience: ResilienceConfig,
    /// How long calls in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long calls are still accepted after a shutdown signal, health NOT_SERVING.
    pub drain_delay: Duration,
    /// The tenants a call may name, besides the configured one.
    pub allowed_tenants: AllowedTenants,
    /// TLS on the gRPC port, if configured.
    pub tls: Option<TlsFiles>,
    /// Log format.
    pub log_format: LogFormat,
}

/// Where the sandbox emulator serves each upstream, and the credentials it accepts: all that
/// sandbox start-up hands the facade.
#[derive(Debug, Clone)]
pub struct SandboxUpstreams {
    /// The base URL of every Store host.
    pub upstreams: EnumMap<Host, Url>,
    /// Entra authority.
    pub authority_host: Url,
    /// The sandbox tenant.
    pub tenant_id: String,
    /// The sandbox application.
    pub client_id: String,
    /// The sandbox application's (published) secret.
    pub client_secret: SecretString,
}

/// A configuration value that cannot be used; its text is one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Validates the flags and the `AZURE_*` environment.
    pub fn from_cli(cli: ServeArgs, azure: AzureEnv) -> Result<Self, ConfigError> {
        let (default_addr, default_admin) = if cli.sandbox {
            ("127.0.0.1:50051", "127.0.0.1:9090")
        } else {
            ("0.0.0.0:50051", "0.0.0.0:9090")
        };
        let admin_addr = cli.admin_addr.as_deref().unwrap_or(default_admin);
        let admin_addr = admin_addr.parse().map_err(|e| {
            ConfigError(format!(
                "--admin-addr (MSSTORE_ADMIN_ADDR) {admin_addr:?}: {e}"
            ))
        })?;
        let grpc_addr = cli.grpc_addr.as_deref().unwrap_or(default_addr);
        let grpc_addr = grpc_addr.parse().map_err(|e| {
            ConfigError(format!(
                "--grpc-addr (MSSTORE_GRPC_ADDR) {grpc_addr:?}: {e}"
            ))
        })?;
        cli.resilience.validate().map_err(ConfigError)?;
        if cli.max_request_bytes == 0 {
            return Err(ConfigError(
                "--max-request-bytes (MSSTORE_MAX_REQUEST_BYTES) must be above 0".into(),
            ));
        }
        let allowed_tenants = match cli.allowed_tenants.as_deref() {
            Some(list) => AllowedTenants::parse(list).map_err(|e| {
                ConfigError(format!(
                    "--allowed-tenants (MSSTORE_ALLOWED_TENANTS) {list:?}: {e}"
                ))
            })?,
            None if cli.sandbox => AllowedTenants::Any,
            None => AllowedTenants::default(),
        };
        let mut upstreams = EnumMap::from_fn(|host: Host| {
            Url::parse(host.default_url()).expect("Microsoft's base URLs parse")
        });
        for (host, value) in &cli.upstream_urls.0 {
            let name = format!("--{} ({})", host.flag(), host.env());
            upstreams[host] = base_url(&name, value)?;
        }
        Ok(Self {
            grpc_addr,
            admin_addr,
            upstreams,
            authority_host: base_url(
                "AZURE_AUTHORITY_HOST",
                azure
                    .authority_host
                    .as_deref()
                    .unwrap_or("https://login.microsoftonline.com"),
            )?,
            credentials: credentials(azure)?,
            max_request_bytes: cli.max_request_bytes,
            resilience: cli.resilience,
            shutdown_grace: cli.shutdown_grace,
            drain_delay: cli.drain_delay,
            allowed_tenants,
            tls: match (cli.tls_cert, cli.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca: cli.tls_client_ca,
                }),
                _ => None,
            },
            log_format: cli.log_format,
        })
    }

    /// Settings for `base` as every upstream, with no credentials: a starting point for tests.
    pub fn for_upstream(base: &str) -> Result<Self, ConfigError> {
        let url = base_url("upstream", base)?;
        Ok(Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstreams: EnumMap::from_fn(|_| url.clone()),
            authority_host: url,
            credentials: None,
            max_request_bytes: 1024 * 1024,
            resilience: ResilienceConfig::default(),
            shutdown_grace: Duration::from_secs(25),
            drain_delay: Duration::ZERO,
            allowed_tenants: AllowedTenants::default(),
            tls: None,
            log_format: LogFormat::Text,
        })
    }
}

impl Settings {
    /// These settings pointed at the sandbox emulator: every upstream URL, the authority and
    /// the credentials are replaced by the emulator's, and an allow-list left at its default
    /// becomes `*` (the sandbox serves any tenant).
    pub fn with_sandbox(mut self, sandbox: SandboxUpstreams) -> Result<Self, ConfigError> {
        let tenant_id = TenantId::parse(&sandbox.tenant_id)
            .map_err(|_| ConfigError(format!("sandbox tenant {:?}", sandbox.tenant_id)))?;
        self.upstreams = sandbox.upstreams;
        if self.allowed_tenants == AllowedTenants::default() {
            self.allowed_tenants = AllowedTenants::Any;
        }
        self.authority_host = sandbox.authority_host;
        self.credentials = Some(Credentials {
            tenant_id,
            client_id: sandbox.client_id,
            source: CredentialSource::ClientSecret(sandbox.client_secret),
        });
        Ok(self)
    }
}

fn base_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError(format!("{name} {value:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError(format!(
            "{name} {value:?}: the scheme must be http or https"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError(format!("{name} {value:?}: a host is required")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError(format!(
            "{name} {value:?}: a base URL takes no query, fragment or user info"
        )));
    }
    Ok(url)
}

fn credentials(azure: AzureEnv) -> Result<Option<Credentials>, ConfigError> {
    let AzureEnv {
        tenant_id,
        client_id,
        client_secret,
        federated_token_file,
        ..
    } = azure;
    let source = match (client_secret, federated_token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(
                "set AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, not both".into(),
            ))
        }
        (Some(secret), None) => Some(CredentialSource::ClientSecret(secret)),
        (None, Some(file)) => Some(CredentialSource::FederatedTokenFile(file)),
        (None, None) => None,
    };
    match (tenant_id, client_id, source) {
        (None, None, None) => Ok(None),
        (Some(tenant), Some(client_id), Some(source)) => {
            let tenant_id = TenantId::parse(&tenant).map_err(|_| {
                ConfigError(format!(
                    "AZURE_TENANT_ID {tenant:?}: must be a GUID or a domain name"
                ))
            })?;
            Ok(Some(Credentials {
                tenant_id,
                client_id,
                source,
            }))
        }
        (tenant, client, source) => {
            let missing: Vec<&str> = [
                (tenant.is_none(), "AZURE_TENANT_ID"),
                (client.is_none(), "AZURE_CLIENT_ID"),
                (
                    source.is_none(),
                    "AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE",
                ),
            ]
            .into_iter()
            .filter_map(|(missing, name)| missing.then_some(name))
            .collect();
            Err(ConfigError(format!(
                "Entra credentials are half configured: {} missing",
                missing.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn cli(args: &[&str]) -> ServeArgs {
        use clap::Parser;
        TestCli::try_parse_from(std::iter::once("msstore-facade").chain(args.iter().copied()))
            .expect("flags parse")
            .serve
    }

    #[test]
    fn sandbox_listens_on_loopback_unless_told_otherwise() {
        let sandbox = Settings::from_cli(cli(&["--sandbox"]), AzureEnv::default()).unwrap();
        assert!(sandbox.grpc_addr.ip().is_loopback());
        let normal = Settings::from_cli(cli(&[]), AzureEnv::default()).unwrap();
        assert!(normal.grpc_addr.ip().is_unspecified());
        let explicit = cli(&["--sandbox", "--grpc-addr", "0.0.0.0:7000"]);
        let explicit = Settings::from_cli(explicit, AzureEnv::default()).unwrap();
        assert_eq!(explicit.grpc_addr.to_string(), "0.0.0.0:7000");
        assert_eq!(sandbox.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(normal.admin_addr.to_string(), "0.0.0.0:9090");
        let admin = cli(&["--admin-addr", "127.0.0.1:9191"]);
        let admin = Settings::from_cli(admin, AzureEnv::default()).unwrap();
        assert_eq!(admin.admin_addr.to_string(), "127.0.0.1:9191");
        let bad = Settings::from_cli(cli(&["--admin-addr", "nope"]), AzureEnv::default());
        assert!(bad.unwrap_err().to_string().contains("--admin-addr"));
    }

    #[test]
    fn bad_address_names_the_flag() {
        let err = Settings::from_cli(cli(&["--grpc-addr", "nope"]), AzureEnv::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--grpc-addr"), "{err}");
    }

    #[test]
    fn ftp_base_url_is_rejected() {
        let err = Settings::from_cli(cli(&["--collections-url", "ftp://x"]), AzureEnv::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--collections-url"), "{err}");
    }

    #[test]
    fn half_configured_credentials_name_what_is_missing() {
        let azure = AzureEnv {
            client_id: Some("app".into()),
            ..AzureEnv::default()
        };
        let err = Settings::from_cli(cli(&[]), azure).unwrap_err().to_string();
        assert!(err.contains("AZURE_TENANT_ID"), "{err}");
        assert!(err.contains("AZURE_CLIENT_SECRET"), "{err}");
    }

    #[test]
    fn secret_and_assertion_file_together_are_rejected() {
        let azure = AzureEnv {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("app".into()),
            client_secret: Some(SecretString::from("s3cr3t-value")),
            federated_token_file: Some("/tmp/token".into()),
            ..AzureEnv::default()
        };
        let err = Settings::from_cli(cli(&[]), azure).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(!err.contains("s3cr3t-value"));
    }

    #[test]
    fn full_credentials_parse() {
        let azure = AzureEnv {
            tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            client_id: Some("app".into()),
            client_secret: Some(SecretString::from("s")),
            ..AzureEnv::default()
        };
        let settings = Settings::from_cli(cli(&[]), azure).unwrap();
        assert!(settings.credentials.is_some());
        assert_eq!(settings.grpc_addr.port(), 50051);
    }

    #[test]
    fn allowed_tenants_default_to_the_configured_one_and_to_any_in_the_sandbox() {
        let normal = Settings::from_cli(cli(&[]), AzureEnv::default()).unwrap();
        assert_eq!(normal.allowed_tenants, AllowedTenants::Only(vec![]));
        let sandbox = Settings::from_cli(cli(&["--sandbox"]), AzureEnv::default()).unwrap();
        assert_eq!(sandbox.allowed_tenants, AllowedTenants::Any);
        let narrowed = cli(&["--sandbox", "--allowed-tenants", "contoso.com"]);
        let narrowed = Settings::from_cli(narrowed, AzureEnv::default()).unwrap();
        assert!(!narrowed
            .allowed_tenants
            .allows(&TenantId::parse("fabrikam.com").unwrap()));
    }

    #[test]
    fn allowed_tenants_parse_guids_domains_and_star_case_insensitively() {
        let list = cli(&[
            "--allowed-tenants",
            "Contoso.onmicrosoft.com, 72F988BF-86F1-41AF-91AB-2D7CD011DB47",
        ]);
        let allowed = Settings::from_cli(list, AzureEnv::default())
            .unwrap()
            .allowed_tenants;
        for tenant in [
            "contoso.onmicrosoft.com",
            "CONTOSO.onmicrosoft.com",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
        ] {
            assert!(
                allowed.allows(&TenantId::parse(tenant).unwrap()),
                "{tenant}"
            );
        }
        assert!(!allowed.allows(&TenantId::parse("fabrikam.onmicrosoft.com").unwrap()));
        let any = cli(&["--allowed-tenants", "*"]);
        let any = Settings::from_cli(any, AzureEnv::default()).unwrap();
        assert_eq!(any.allowed_tenants, AllowedTenants::Any);
    }

    #[test]
    fn bad_allowed_tenants_name_the_flag_and_the_entry() {
        for bad in [
            "",
            "contoso.com,,fabrikam.com",
            "not a tenant",
            "*,contoso.com",
        ] {
            let err = Settings::from_cli(cli(&["--allowed-tenants", bad]), AzureEnv::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("--allowed-tenants"), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{bad:?}: {err}");
        }
        let err = Settings::from_cli(
            cli(&["--allowed-tenants", "contoso.com,not a tenant"]),
            AzureEnv::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"not a tenant\""), "{err}");
    }

    #[test]
    fn tls_files_come_together() {
        assert_eq!(
            Settings::from_cli(cli(&[]), AzureEnv::default())
                .unwrap()
                .tls,
            None
        );
        let args = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let tls = Settings::from_cli(cli(&args), AzureEnv::default())
            .unwrap()
            .tls;
        assert_eq!(
            tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: None
            })
        );
        let mutual = cli(&[&args[..], &["--tls-client-ca", "ca.pem"]].concat());
        let tls = Settings::from_cli(mutual, AzureEnv::default()).unwrap().tls;
        assert_eq!(tls.unwrap().client_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn drain_delay_defaults_to_zero_and_parses_humantime() {
        let normal = Settings::from_cli(cli(&[]), AzureEnv::default()).unwrap();
        assert_eq!(normal.drain_delay, Duration::ZERO);
        let delayed = Settings::from_cli(cli(&["--drain-delay", "5s"]), AzureEnv::default());
        assert_eq!(delayed.unwrap().drain_delay, Duration::from_secs(5));
    }
}
