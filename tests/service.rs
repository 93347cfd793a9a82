//! The server around the Store services: health and reflection of every service and method of
//! [`OPERATIONS`], graceful shutdown, and the binary's configuration handling and signals.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};
use wiremock::ResponseTemplate;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_every_service() {
    let h = Harness::start().await;
    let mut health = HealthClient::new(h.facade.channel.clone());
    for service in std::iter::once("").chain(services()) {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("{service:?}: {status:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "msstore.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// A reflection protocol version the facade serves.
#[derive(Debug, Clone, Copy)]
enum Reflection {
    V1,
    V1Alpha,
}

/// Asks `channel`'s reflection service `request` in `version`, and returns the answer.
/// `v1alpha` is the same protocol as `v1` under another package: its messages are encoded
/// identically, so they are transcoded to and from the `v1` types.
async fn reflect(
    channel: &Channel,
    version: Reflection,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    use prost::Message;
    let what = format!("{version:?} {request:?}");
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let answer = match version {
        Reflection::V1 => {
            let mut client =
                v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
            first_answer(
                &what,
                client.server_reflection_info(tokio_stream_once(request)),
            )
            .await
        }
        Reflection::V1Alpha => {
            let request = v1alpha::ServerReflectionRequest::decode(&*request.encode_to_vec())
                .expect("v1 and v1alpha are wire-compatible");
            let mut client =
                v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
            first_answer(
                &what,
                client.server_reflection_info(tokio_stream_once(request)),
            )
            .await
            .map(|answer| {
                v1::ServerReflectionResponse::decode(&*answer.encode_to_vec())
                    .expect("v1 and v1alpha are wire-compatible")
            })
        }
    };
    answer
        .and_then(|answer| answer.message_response)
        .unwrap_or_else(|| panic!("{what}: no answer"))
}

/// The first message of a server-streaming answer (of `what`).
async fn first_answer<T>(
    what: &str,
    answers: impl std::future::Future<
        Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    >,
) -> Option<T> {
    answers
        .await
        .unwrap_or_else(|status| panic!("{what}: {status:?}"))
        .into_inner()
        .message()
        .await
        .unwrap_or_else(|status| panic!("{what}: {status:?}"))
}

/// The file descriptors `version` answers for `symbol`.
async fn files_containing(
    channel: &Channel,
    version: Reflection,
    symbol: &str,
) -> Vec<prost_types::FileDescriptorProto> {
    use prost::Message;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let request = MessageRequest::FileContainingSymbol(symbol.into());
    match reflect(channel, version, request).await {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|file| prost_types::FileDescriptorProto::decode(&file[..]).unwrap())
            .collect(),
        other => panic!("{version:?} {symbol}: unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service_and_resolve_every_method() {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let h = Harness::start().await;
    let channel = &h.facade.channel;
    let mut expected = vec!["grpc.health.v1.Health"];
    expected.extend(services());

    for version in [Reflection::V1, Reflection::V1Alpha] {
        let list = MessageRequest::ListServices(String::new());
        let MessageResponse::ListServicesResponse(list) = reflect(channel, version, list).await
        else {
            panic!("{version:?}: not a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in &expected {
            assert!(
                names.iter().any(|n| n == name),
                "{version:?} lacks {name}: {names:?}"
            );
        }

        for service in services() {
            let files = files_containing(channel, version, service).await;
            assert!(!files.is_empty(), "{version:?}: no file for {service}");
        }
        // Every method resolves, to a file that declares it in its service.
        for op in OPERATIONS {
            let symbol = format!("{}.{}", op.service, op.method);
            let files = files_containing(channel, version, &symbol).await;
            let declared = files.iter().any(|file| {
                file.service.iter().any(|service| {
                    format!("{}.{}", file.package(), service.name()) == op.service
                        && service.method.iter().any(|m| m.name() == op.method)
                })
            });
            assert!(
                declared,
                "{version:?}: {symbol} is not declared in {files:#?}"
            );
        }
    }
}

#[tokio::test]
async fn reflection_serves_the_error_detail_types_so_grpcurl_can_decode_them() {
    use tonic_reflection::pb::v1alpha;
    let h = Harness::start().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(h.facade.channel.clone());
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.BadRequest",
    ] {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    symbol.into(),
                ),
            ),
        };
        let answer = client
            .server_reflection_info(tokio_stream_once(request))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                answer.message_response,
                Some(
                    v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
                )
            ),
            "{symbol}: {answer:?}"
        );
    }
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::iter([item])
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_finishes_calls_in_flight() {
    let mut h = Harness::start().await;
    h.mount_license(
        ResponseTemplate::new(200)
            .set_body_json(license_body())
            .set_delay(Duration::from_millis(500)),
    )
    .await;
    let mut health = HealthClient::new(h.facade.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut client = h.entitlements();
    let in_flight =
        tokio::spawn(async move { client.get_offline_license(license_request()).await });
    // Shut down only once the call has reached the upstream.
    while Harness::requests(&h.business).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.facade.begin_shutdown();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    let answer = in_flight.await.unwrap();
    assert!(answer.is_ok(), "in-flight call was cut: {answer:?}");
    drop(watch);
    h.facade.stopped().await.unwrap();
}

#[tokio::test]
async fn shutdown_grace_bounds_how_long_open_calls_hold_the_server() {
    let mut h = Harness::builder()
        .shutdown_grace(Duration::from_millis(300))
        .upstream_timeout(Duration::from_secs(120))
        .start()
        .await;
    h.mount_token(3599).await;
    h.mount_license(ResponseTemplate::new(200).set_delay(Duration::from_secs(120)))
        .await;
    let mut client = h.entitlements();
    let stuck = tokio::spawn(async move { client.get_offline_license(license_request()).await });
    while Harness::requests(&h.business).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.facade.begin_shutdown();
    // Generous bound: the point is that it ends at all, long before the upstream's 120 s.
    tokio::time::timeout(Duration::from_secs(60), h.facade.stopped())
        .await
        .expect("server stops after its grace period")
        .unwrap();
    // In the binary, returning from `serve` ends the process and with it the open call (see
    // the process test below); here the test's runtime lives on, so end the client side.
    stuck.abort();
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_msstore-facade"));
    for name in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "MSSTORE_GRPC_ADDR",
        "MSSTORE_BUSINESS_STORE_URL",
        "MSSTORE_COLLECTIONS_URL",
        "MSSTORE_PURCHASE_URL",
        "MSSTORE_LOG_FORMAT",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    // Many binaries run at once: none may take the default admin port.
    command.env("MSSTORE_ADMIN_ADDR", "127.0.0.1:0");
    command
}

#[test]
fn help_documents_every_setting() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "--grpc-addr",
        "MSSTORE_GRPC_ADDR",
        "--admin-addr",
        "MSSTORE_ADMIN_ADDR",
        "--business-store-url",
        "MSSTORE_BUSINESS_STORE_URL",
        "--collections-url",
        "MSSTORE_COLLECTIONS_URL",
        "--purchase-url",
        "MSSTORE_PURCHASE_URL",
        "--max-request-bytes",
        "--log-format",
        "MSSTORE_LOG_FORMAT",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "--shutdown-grace",
        "MSSTORE_SHUTDOWN_GRACE",
        "--upstream-timeout",
        "MSSTORE_UPSTREAM_TIMEOUT",
        "--default-deadline",
        "MSSTORE_DEFAULT_DEADLINE",
        "--max-attempts",
        "MSSTORE_MAX_ATTEMPTS",
        "--retry-base-delay",
        "MSSTORE_RETRY_BASE_DELAY",
        "--retry-max-delay",
        "MSSTORE_RETRY_MAX_DELAY",
        "--retry-budget-percent",
        "MSSTORE_RETRY_BUDGET_PERCENT",
        "--retry-budget-min-per-sec",
        "MSSTORE_RETRY_BUDGET_MIN_PER_SEC",
        "--circuit-failures",
        "MSSTORE_CIRCUIT_FAILURES",
        "--circuit-open-for",
        "MSSTORE_CIRCUIT_OPEN_FOR",
        "--max-concurrent-calls",
        "MSSTORE_MAX_CONCURRENT_CALLS",
        "--http2-max-concurrent-streams",
        "MSSTORE_HTTP2_MAX_CONCURRENT_STREAMS",
        "--http2-keepalive-interval",
        "MSSTORE_HTTP2_KEEPALIVE_INTERVAL",
        "--http2-keepalive-timeout",
        "MSSTORE_HTTP2_KEEPALIVE_TIMEOUT",
        "--max-header-list-bytes",
        "MSSTORE_MAX_HEADER_LIST_BYTES",
        "--upstream-max-idle-per-host",
        "MSSTORE_UPSTREAM_MAX_IDLE_PER_HOST",
    ] {
        assert!(help.contains(name), "--help does not mention {name}");
    }
}

#[test]
fn invalid_configuration_exits_non_zero_with_one_clear_line() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 11] = [
        (&["--grpc-addr", "not-an-address"], &[], "--grpc-addr"),
        (&["--upstream-timeout", "soon"], &[], "--upstream-timeout"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (
            &["--business-store-url", "ftp://x"],
            &[],
            "--business-store-url",
        ),
        (&[], &[("AZURE_CLIENT_ID", "app")], "AZURE_TENANT_ID"),
        (
            &[],
            &[
                ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
                ("AZURE_CLIENT_ID", "app"),
                ("AZURE_CLIENT_SECRET", "s3cret-value-xyz"),
                ("AZURE_AUTHORITY_HOST", "not a url"),
            ],
            "AZURE_AUTHORITY_HOST",
        ),
        (&["--max-attempts", "0"], &[], "--max-attempts"),
        (
            &["--retry-budget-percent", "5000"],
            &[],
            "--retry-budget-percent",
        ),
        (&["--default-deadline", "0s"], &[], "--default-deadline"),
        (
            &["--retry-base-delay", "5s", "--retry-max-delay", "1s"],
            &[],
            "--retry-base-delay",
        ),
        (
            &[],
            &[("MSSTORE_MAX_CONCURRENT_CALLS", "0")],
            "--max-concurrent-calls",
        ),
    ];
    for (args, env, named) in cases {
        let output = binary()
            .args(args)
            .args(
                ["--grpc-addr", "127.0.0.1:1"]
                    .iter()
                    .filter(|_| args.is_empty()),
            )
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} started");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
        assert!(!stderr.contains("s3cret-value-xyz"), "{stderr}");
    }
}

#[tokio::test]
async fn binary_serves_and_exits_zero_on_sigterm() {
    let mut running = Process::start(&["--grpc-addr", "127.0.0.1:0"], &[]);
    let status = HealthClient::new(channel_to(&running.wait_for("grpc_addr=")).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
    let (code, lines) = running.terminate().await;
    assert_eq!(code, Some(0), "{lines:?}");
    let logged = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(logged("no Entra credential configured"), "{lines:?}");
    assert!(logged("shutting down"), "{lines:?}");
}

#[tokio::test]
async fn binary_exits_zero_once_the_grace_period_ends_with_a_call_stuck_upstream() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_delay(Duration::from_secs(120)))
        .await;
    let business = h.business.uri();
    let authority = h.token.uri();
    let mut running = Process::start(
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--business-store-url",
            &business,
            "--shutdown-grace",
            "500ms",
        ],
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", &authority),
        ],
    );
    let mut client =
        msstore_facade::proto::msstore::v1::store_entitlements_client::StoreEntitlementsClient::new(
            channel_to(&running.wait_for("grpc_addr=")).await,
        );
    let stuck = tokio::spawn(async move { client.get_offline_license(license_request()).await });
    while Harness::requests(&h.business).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Generous bound: the point is that the process ends long before the upstream's 120 s.
    let (code, lines) = tokio::time::timeout(Duration::from_secs(60), running.terminate())
        .await
        .expect("the process exits after its grace period");
    assert_eq!(code, Some(0), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("grace period over")),
        "{lines:?}"
    );
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test]
async fn binary_serves_metrics_and_probes_on_its_admin_address() {
    let mut running = Process::start(
        &["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        &[],
    );
    let admin_addr = running.wait_for("admin_addr=");
    let get = |path: &str| {
        let url = format!("http://{admin_addr}{path}");
        async move {
            let response = reqwest::get(url).await.expect("admin server answers");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".to_owned()));
    // No credential configured: serving is all readiness asks.
    assert_eq!(get("/readyz").await.0, 200);
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE msstore_rpc_requests_total counter"),
        "{metrics}"
    );
    let (exit, _) = running.terminate().await;
    assert_eq!(exit, Some(0));
}

#[test]
fn the_operation_table_has_a_row_for_every_served_store_method_and_no_other() {
    use msstore_facade::ops::{Upstream, UPSTREAMS};
    use std::collections::BTreeSet;
    let served: BTreeSet<(&str, &str)> = UPSTREAMS
        .iter()
        .filter(|(_, _, upstream)| *upstream == Upstream::Store)
        .map(|(service, method, _)| (*service, *method))
        .collect();
    let table: BTreeSet<(&str, &str)> = OPERATIONS
        .iter()
        .map(|op| (op.service, op.method))
        .collect();
    assert_eq!(
        table, served,
        "tests/common/operations.rs must follow the registry"
    );
    // The methods that call only Entra are covered by tests/tokens.rs, which names them.
    let entra: Vec<(&str, &str)> = UPSTREAMS
        .iter()
        .filter(|(_, _, upstream)| *upstream == Upstream::Entra)
        .map(|(service, method, _)| (*service, *method))
        .collect();
    assert_eq!(
        entra,
        [("msstore.v1.StoreKeys", "GetKeyCreationTokens")],
        "a method that calls no Store endpoint needs its own tests, like tests/tokens.rs"
    );
    // The methods of the refund queue (a SAS exchange, then Azure Storage's XML) are covered
    // by tests/refunds.rs and tests/sandbox_refunds.rs, which name them.
    let queue: Vec<(&str, &str)> = UPSTREAMS
        .iter()
        .filter(|(_, _, upstream)| *upstream == Upstream::RefundQueue)
        .map(|(service, method, _)| (*service, *method))
        .collect();
    assert_eq!(
        queue,
        [
            ("msstore.v1.StoreRefunds", "PullRefundEvents"),
            ("msstore.v1.StoreRefunds", "AcknowledgeRefundEvents")
        ],
        "a method of the refund queue needs its own tests, like tests/refunds.rs"
    );
}

/// A facade with the default allow-list (only the configured tenant) and working upstreams.
async fn facade_allowing(allowed: msstore_facade::auth::AllowedTenants, op: &Op) -> Harness {
    let h = Harness::builder().allowed_tenants(allowed).start().await;
    h.mount_token(3599).await;
    op.mount(&h, ResponseTemplate::new(200).set_body_json((op.ok_body)()))
        .await;
    h
}

#[tokio::test]
async fn a_call_naming_a_tenant_outside_the_allow_list_is_denied_without_a_token_request() {
    for op in OPERATIONS {
        let Some(call_for_tenant) = op.call_for_tenant else {
            continue;
        };
        let h = facade_allowing(Default::default(), op).await;
        for other in [
            "fabrikam.onmicrosoft.com",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
        ] {
            let status = call_for_tenant(h.facade.channel.clone(), other)
                .await
                .expect_err("another tenant is refused");
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{op:?}: {status:?}"
            );
            let info = error_info(&status);
            assert_eq!(info.reason, "TENANT_NOT_ALLOWED", "{op:?}");
            assert_eq!(info.domain, "msstore-facade", "{op:?}");
        }
        assert!(h.token_requests().await.is_empty(), "{op:?}");
        assert!(Harness::requests(op.store(&h)).await.is_empty(), "{op:?}");
    }
}

#[tokio::test]
async fn a_call_naming_the_configured_tenant_is_served_under_the_default_allow_list() {
    for op in OPERATIONS {
        let Some(call_for_tenant) = op.call_for_tenant else {
            continue;
        };
        let h = facade_allowing(Default::default(), op).await;
        // Tenants compare case-insensitively.
        for tenant in [TENANT, "CONTOSO.onmicrosoft.com"] {
            call_for_tenant(h.facade.channel.clone(), tenant)
                .await
                .unwrap_or_else(|s| panic!("{op:?} {tenant}: {s:?}"));
        }
        let paths: Vec<String> = h.token_paths().await;
        assert_eq!(paths, [format!("/{TENANT}/oauth2/v2.0/token")], "{op:?}");
    }
}

#[tokio::test]
async fn with_any_tenant_allowed_a_call_may_name_any_tenant() {
    for op in OPERATIONS {
        let Some(call_for_tenant) = op.call_for_tenant else {
            continue;
        };
        let any = msstore_facade::auth::AllowedTenants::parse("*").unwrap();
        let h = facade_allowing(any, op).await;
        call_for_tenant(h.facade.channel.clone(), "fabrikam.onmicrosoft.com")
            .await
            .unwrap_or_else(|s| panic!("{op:?}: {s:?}"));
        let paths: Vec<String> = h.token_paths().await;
        assert_eq!(
            paths,
            ["/fabrikam.onmicrosoft.com/oauth2/v2.0/token"],
            "{op:?}"
        );
    }
}

#[tokio::test]
async fn without_credentials_a_named_tenant_is_refused_by_default() {
    let h = Harness::builder()
        .credential(Credential::None)
        .allowed_tenants(Default::default())
        .start()
        .await;
    for op in OPERATIONS {
        let Some(call_for_tenant) = op.call_for_tenant else {
            continue;
        };
        let status = call_for_tenant(h.facade.channel.clone(), TENANT)
            .await
            .expect_err("no tenant is allowed");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{op:?}");
        assert_eq!(error_info(&status).reason, "TENANT_NOT_ALLOWED", "{op:?}");
    }
    assert!(h.token_requests().await.is_empty());
}

#[tokio::test]
async fn during_the_drain_delay_health_is_not_serving_but_new_calls_are_served() {
    const DELAY: Duration = Duration::from_secs(1);
    let mut h = Harness::builder().drain_delay(DELAY).start().await;
    h.mount_token(3599).await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let mut health = HealthClient::new(h.facade.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let began = std::time::Instant::now();
    h.facade.begin_shutdown();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(began.elapsed() < DELAY, "health turns at once");

    // A new connection and a new call, within the delay, are still served.
    let channel = Channel::from_shared(format!("http://{}", h.facade.addr))
        .unwrap()
        .connect()
        .await
        .expect("the listener still accepts");
    let mut client =
        msstore_facade::proto::msstore::v1::store_entitlements_client::StoreEntitlementsClient::new(
            channel,
        );
    let answer = client.get_offline_license(license_request()).await;
    assert!(began.elapsed() < DELAY, "the call ran within the delay");
    assert!(answer.is_ok(), "a call within the drain delay: {answer:?}");

    drop(watch);
    tokio::time::timeout(Duration::from_secs(30), h.facade.stopped())
        .await
        .expect("the server stops after the delay")
        .unwrap();
    assert!(began.elapsed() >= DELAY, "not before the delay");
}
