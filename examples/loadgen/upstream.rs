//! The upstream: where the Store for Business and its token endpoint are, and the token the
//! direct calls carry (acquired once, up front, as the facade does).

use std::collections::BTreeMap;

use super::Fallible;

/// Which upstream the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// `msstore-facade emulator`, spawned by the load generator.
    Emulator,
    /// Any upstream given with `--upstream-url`.
    Url,
}

/// Where to send calls, with which credentials.
pub struct Upstream {
    /// Emulator or URL.
    pub kind: UpstreamKind,
    /// Store for Business base URL (`MSSTORE_BUSINESS_STORE_URL`).
    pub business_store_url: String,
    /// Entra authority (`AZURE_AUTHORITY_HOST`).
    pub authority_host: String,
    tenant: String,
    client_id: String,
    client_secret: String,
    /// The environment the facade gets to use this upstream.
    pub facade_env: Vec<(String, String)>,
}

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const STORE_SCOPE: &str = "https://onestore.microsoft.com/.default";
/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Upstream {
    /// The emulator's upstream, from the `export` lines it printed.
    pub fn from_emulator(exports: &[(String, String)]) -> Fallible<Self> {
        let vars: BTreeMap<&str, &str> = exports
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let get = |name: &str| {
            vars.get(name)
                .map(|value| (*value).to_owned())
                .ok_or_else(|| format!("the emulator printed no {name}"))
        };
        let upstream = Self {
            kind: UpstreamKind::Emulator,
            business_store_url: get("MSSTORE_BUSINESS_STORE_URL")?,
            authority_host: get("AZURE_AUTHORITY_HOST")?,
            tenant: get("AZURE_TENANT_ID")?,
            client_id: get("AZURE_CLIENT_ID")?,
            client_secret: get("AZURE_CLIENT_SECRET")?,
            facade_env: exports.to_vec(),
        };
        // The emulator serves made-up licenses: it must stay on this machine.
        for url in exports
            .iter()
            .filter(|(name, _)| name.ends_with("_URL") || name.ends_with("_HOST"))
        {
            if !url.1.starts_with("http://127.0.0.1:") {
                return Err(
                    format!("the emulator's {} is not on 127.0.0.1: {}", url.0, url.1).into(),
                );
            }
        }
        Ok(upstream)
    }

    /// Any Store for Business at `url`, with the `AZURE_*` credentials of this process.
    pub fn from_url_and_env(url: &str) -> Fallible<Self> {
        let var = |name: &str| {
            std::env::var(name)
                .map_err(|_| format!("--upstream-url needs {name} in the environment"))
        };
        let authority_host =
            std::env::var("AZURE_AUTHORITY_HOST").unwrap_or_else(|_| DEFAULT_AUTHORITY.to_owned());
        let (tenant, client_id, client_secret) = (
            var("AZURE_TENANT_ID")?,
            var("AZURE_CLIENT_ID")?,
            var("AZURE_CLIENT_SECRET")?,
        );
        let facade_env = vec![
            ("MSSTORE_BUSINESS_STORE_URL".to_owned(), url.to_owned()),
            ("AZURE_AUTHORITY_HOST".to_owned(), authority_host.clone()),
            ("AZURE_TENANT_ID".to_owned(), tenant.clone()),
            ("AZURE_CLIENT_ID".to_owned(), client_id.clone()),
            ("AZURE_CLIENT_SECRET".to_owned(), client_secret.clone()),
        ];
        Ok(Self {
            kind: UpstreamKind::Url,
            business_store_url: url.to_owned(),
            authority_host,
            tenant,
            client_id,
            client_secret,
            facade_env,
        })
    }

    /// One access token for the Store, from the Entra token endpoint (client credentials).
    pub async fn token(&self, http: &reqwest::Client) -> Fallible<String> {
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host.trim_end_matches('/'),
            self.tenant
        );
        let response = http
            .post(url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("scope", STORE_SCOPE),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        match body["access_token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            // The error body names the problem (`error`, `error_description`), not the secret.
            _ => Err(format!(
                "the token endpoint answered HTTP {status}: {}",
                body["error"].as_str().unwrap_or("no access_token")
            )
            .into()),
        }
    }

    /// `POST {business}/V1/Products/{p}/{s}/OfflineLicense/{c}`, each id one encoded segment.
    pub fn license_url(&self, product_id: &str, sku_id: &str, content_id: &str) -> String {
        let segment = |id| percent_encoding::utf8_percent_encode(id, SEGMENT);
        format!(
            "{}/V1/Products/{}/{}/OfflineLicense/{}",
            self.business_store_url.trim_end_matches('/'),
            segment(product_id),
            segment(sku_id),
            segment(content_id)
        )
    }
}
