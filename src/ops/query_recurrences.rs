//! `StorePurchases/QueryRecurrences` -> `POST {purchase}/v8.0/b2b/recurrences/query`
//! (`store-services-apis.md` 2.7): a user's subscriptions, page by page or every page.
//! Microsoft's own library cannot page these at all.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::paging::{self, Fingerprint, Paged, Walked};
use super::recurrences::RecurrenceItem;
use super::store_user::{user_fields, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Attempts, Backends, Credential, Outcome, StoreOperation, Token};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// Most recurrences per page a caller may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Lists a user's subscriptions.
#[derive(Debug)]
pub struct QueryRecurrences;

/// A validated recurrence query (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RecurrenceQuery {
    user: StoreUser,
    /// 0: the Store's default.
    page_size: u32,
    continuation: Option<String>,
    all_pages: bool,
    fingerprint: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryBody<'a> {
    b2b_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    continuation_token: Option<&'a str>,
    /// A string, as the documentation types it.
    #[serde(skip_serializing_if = "Option::is_none")]
    page_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

/// One page of recurrences; `items` is required.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurrencePage {
    items: Vec<RecurrenceItem>,
    #[serde(default)]
    continuation_token: Option<String>,
}

impl StoreOperation for QueryRecurrences {
    type Request = pb::QueryRecurrencesRequest;
    type Response = pb::QueryRecurrencesResponse;
    type Prepared = RecurrenceQuery;
    type Answer = RecurrencePage;

    const ROUTE: &'static Route = &Route {
        name: "POST /v8.0/b2b/recurrences/query",
        method: http::Method::POST,
        template: "/v8.0/b2b/recurrences/query",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("b2bKey", USER_KEY_FIELD),
            ("continuationToken", "page_token"),
            ("pageSize", "page_size"),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "a JSON object with an items array";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<RecurrenceQuery, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        let page_size = match u32::try_from(request.page_size) {
            Ok(size) if size <= MAX_PAGE_SIZE => size,
            _ => {
                checks.violation("page_size", format!("must be 0 to {MAX_PAGE_SIZE}"));
                0
            }
        };
        let fingerprint = Fingerprint::default().field(&request.sandbox_id).finish();
        let continuation = paging::check_page_token(&mut checks, &request.page_token, fingerprint);
        checks.finish()?;
        Ok(RecurrenceQuery {
            user: StoreUser::finish(fields, tenant, Host::Purchase, tenants)?,
            page_size,
            continuation,
            all_pages: request.all_pages,
            fingerprint,
        })
    }

    fn host(_: &RecurrenceQuery) -> Host {
        Host::Purchase
    }

    fn credential(query: &RecurrenceQuery) -> Credential<'_> {
        query.user.credential()
    }

    fn request(query: &RecurrenceQuery, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = QueryBody {
            b2b_key: query.user.key(),
            continuation_token: query.continuation.as_deref(),
            page_size: (query.page_size > 0).then(|| query.page_size.to_string()),
            sbx: query.user.sbx(),
        };
        StoreUser::post(Self::ROUTE, token, &body)
    }

    /// The user's key.
    fn secrets(query: &RecurrenceQuery) -> impl Iterator<Item = &str> {
        std::iter::once(query.user.key())
    }

    fn parse(body: &[u8]) -> Option<RecurrencePage> {
        serde_json::from_slice(body).ok()
    }

    fn respond(mut page: RecurrencePage, query: &RecurrenceQuery) -> pb::QueryRecurrencesResponse {
        let walked = paging::page_walked::<Self>(query, Self::next_token(&mut page));
        response(typed(page.items), &walked)
    }

    async fn fetch(
        backends: Backends,
        query: RecurrenceQuery,
        attempts: Arc<Attempts>,
    ) -> Outcome<Self::Response> {
        let all_pages = query.all_pages;
        let mut items = Vec::new();
        let walked = paging::list::<Self>(&backends, query, &attempts, all_pages, |page| {
            items.extend(typed(page.items));
        })
        .await?;
        Ok(walked.map(|walked| response(items, &walked)))
    }
}

impl Paged for QueryRecurrences {
    fn continuation(query: &RecurrenceQuery) -> Option<&str> {
        query.continuation.as_deref()
    }

    fn continue_from(query: &mut RecurrenceQuery, token: Option<String>) {
        query.continuation = token;
    }

    fn next_token(page: &mut RecurrencePage) -> Option<String> {
        page.continuation_token.take()
    }

    fn fingerprint(query: &RecurrenceQuery) -> u64 {
        query.fingerprint
    }
}

fn typed(items: Vec<RecurrenceItem>) -> Vec<pb::Recurrence> {
    items.into_iter().map(RecurrenceItem::typed).collect()
}

fn response(items: Vec<pb::Recurrence>, walked: &Walked) -> pb::QueryRecurrencesResponse {
    pb::QueryRecurrencesResponse {
        items,
        complete: walked.complete(),
        next_page_token: walked.next_page_token.clone(),
        pages: walked.pages,
    }
}
