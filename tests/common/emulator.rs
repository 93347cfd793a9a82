//! The sandbox emulator as upstream.

use std::net::SocketAddr;

use msstore_facade::Settings;
use serde_json::Value;

/// An emulator on an ephemeral loopback port, serving in the background.
pub async fn start_emulator() -> msstore_facade::emulator::RunningEmulator {
    msstore_facade::emulator::Emulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the emulator binds a loopback port")
        .spawn()
}

/// Settings that point every upstream and the authority at `emulator`, with the sandbox
/// credentials.
pub fn sandbox_settings(emulator: &msstore_facade::emulator::RunningEmulator) -> Settings {
    Settings::for_upstream("http://127.0.0.1")
        .and_then(|s| s.with_sandbox(emulator.endpoints().sandbox_upstreams()))
        .expect("sandbox settings are valid")
}

/// A client-credentials token request to `emulator` with `form`, answered as (status, JSON).
pub async fn emulator_token_request(
    emulator: &msstore_facade::emulator::Endpoints,
    tenant: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", emulator.authority_host());
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .expect("the emulator answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The form of a sandbox client-secret token request.
pub fn sandbox_secret_form() -> Vec<(&'static str, &'static str)> {
    use msstore_facade::emulator::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET};
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", SANDBOX_CLIENT_ID),
        ("client_secret", SANDBOX_CLIENT_SECRET),
        ("scope", "https://onestore.microsoft.com/.default"),
    ]
}

/// An access token for the sandbox application from `emulator`.
pub async fn emulator_token(emulator: &msstore_facade::emulator::Endpoints) -> String {
    let tenant = msstore_facade::emulator::SANDBOX_TENANT;
    let (status, body) = emulator_token_request(emulator, tenant, &sandbox_secret_form()).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}
