//! What every call made for one Store user shares (contract, section 7): the user's Store ID
//! key, checked locally for its kind and expiry; the optional development sandbox (`sbx`);
//! the tenant the facade acts for; and how the key travels (the `beneficiary` object).

use serde::Serialize;

use crate::api::validation::{self, Checks, Tenants};
use crate::api::{Credential, Token};
use crate::auth::TenantId;
use crate::error::ApiError;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// The proto field that carries the user's key in every such request.
pub const USER_KEY_FIELD: &str = "user_key";

/// How a Store 400 naming the sandbox maps to the proto field (every user call sends `sbx`).
pub const SBX_FIELD: (&str, &str) = ("sbx", "sandbox_id");

/// A validated user, sandbox and tenant. No `Debug`: it holds the user's key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreUser {
    tenant: TenantId,
    key: String,
    sandbox: Option<String>,
}

/// The [`UserFields`] of a request message: every request made for a Store user names them
/// `user_key`, `sandbox_id` and `tenant_id` (contract, section 7).
macro_rules! user_fields {
    ($request:expr) => {
        $crate::ops::store_user::UserFields {
            key: &$request.user_key,
            sandbox_id: &$request.sandbox_id,
            tenant_id: &$request.tenant_id,
        }
    };
}
pub(crate) use user_fields;

/// The fields of a request that make a [`StoreUser`], as the caller sent them.
pub struct UserFields<'a> {
    /// `user_key`.
    pub key: &'a str,
    /// `sandbox_id` (empty: RETAIL).
    pub sandbox_id: &'a str,
    /// `tenant_id` (empty: the configured tenant).
    pub tenant_id: &'a str,
}

impl StoreUser {
    /// Checks the fields into `checks` (format only); [`StoreUser::finish`] makes the user
    /// once every field of the request is checked.
    pub fn check(checks: &mut Checks, fields: &UserFields<'_>) -> Option<TenantId> {
        checks.credential(USER_KEY_FIELD, fields.key, true);
        checks.sandbox_id("sandbox_id", fields.sandbox_id);
        checks.tenant("tenant_id", fields.tenant_id)
    }

    /// After `checks` passed: the key's kind and expiry for a call on `host` (before any
    /// call), then the tenant the call acts for.
    pub fn finish(
        fields: UserFields<'_>,
        tenant: Option<TenantId>,
        host: Host,
        tenants: &Tenants,
    ) -> Result<Self, ApiError> {
        validation::user_key(USER_KEY_FIELD, fields.key, host, validation::now_unix())?;
        Ok(Self {
            tenant: validation::acting_tenant(tenant, tenants)?,
            key: fields.key.to_owned(),
            sandbox: (!fields.sandbox_id.is_empty()).then(|| fields.sandbox_id.to_owned()),
        })
    }

    /// The facade's own token for the user's tenant.
    pub fn credential(&self) -> Credential<'_> {
        Credential::Facade {
            tenant: Some(&self.tenant),
        }
    }

    /// The user's key, a secret to scrub from answers.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `sbx` to send, if any.
    pub fn sbx(&self) -> Option<&str> {
        self.sandbox.as_deref()
    }

    /// A `POST` of `body` (JSON) to `route`'s path, with `token` as the bearer: the shape of
    /// every B2B request made for a user.
    pub fn post(
        route: &'static Route,
        token: &Token<'_>,
        body: &impl Serialize,
    ) -> Result<UpstreamRequest, ApiError> {
        Self::post_to(route, route.template.to_owned(), token, body)
    }

    /// [`StoreUser::post`] to `path`: `route`'s template with its segments filled in.
    pub fn post_to(
        route: &'static Route,
        path: String,
        token: &Token<'_>,
        body: &impl Serialize,
    ) -> Result<UpstreamRequest, ApiError> {
        Ok(UpstreamRequest::new(route, path)
            .authorization(token.bearer()?)
            .json(body))
    }

    /// The user as the Store's UserIdentity: `{"identityType":"b2b","identityValue":key,
    /// "localTicketReference":""}`, as Microsoft's library sends it.
    pub fn beneficiary(&self) -> Beneficiary<'_> {
        Beneficiary {
            identity_type: "b2b",
            identity_value: &self.key,
            local_ticket_reference: "",
        }
    }
}

/// The Store's UserIdentity object (no `Debug`: it holds the key).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Beneficiary<'a> {
    identity_type: &'static str,
    identity_value: &'a str,
    local_ticket_reference: &'static str,
}
