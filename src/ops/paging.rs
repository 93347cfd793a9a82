//! Listings the Store answers page by page with a `continuationToken`, served the AIP way:
//! an opaque `page_token` / `next_page_token` bound to its query, one page per call, or every
//! page within the caller's deadline (`all_pages`). Declared once here for every listing
//! operation (collections, recurrences, orders): an operation says where its continuation
//! token is ([`Paged`]) and what to do with each page's items; [`one_page`] and [`walk`] do
//! the rest.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::api::validation::Checks;
use crate::api::{exchange, Attempts, Backends, Outcome, StoreOperation};
use crate::error::ApiError;
use crate::upstream::{Answer, UpstreamError};

/// Time kept back from the caller's deadline when following pages, to answer in.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(50);
/// Most pages one `all_pages` call follows (a listing of one user fits in far fewer): the
/// walk then answers what it has, with the token to go on from.
pub const MAX_PAGES: usize = 100;

/// A Store listing operation: its request carries the Store's continuation token, and each
/// page answers the next one.
pub trait Paged: StoreOperation {
    /// The continuation token the request carries (`None`: the first page).
    fn continuation(prepared: &Self::Prepared) -> Option<&str>;

    /// Makes the request ask for the page after `token` (`None`: there is none).
    fn continue_from(prepared: &mut Self::Prepared, token: Option<String>);

    /// Takes the page's continuation token out of its answer (`None` or empty: the last page).
    fn next_token(page: &mut Self::Answer) -> Option<String>;

    /// What the caller's page tokens of this query are bound to ([`Fingerprint`]).
    fn fingerprint(prepared: &Self::Prepared) -> u64;
}

/// A stable 64-bit FNV-1a hash of the fields a page token is bound to: the same in every
/// version and replica, so that a token survives a rolling upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Feeds one field (fields are separated, so `("ab", "c")` differs from `("a", "bc")`).
    pub fn field(mut self, text: &str) -> Self {
        for byte in text.bytes().chain([0xff]) {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The hash.
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The caller's page token of a Store continuation token: base64url of the query's
/// fingerprint and the Store's token, so that callers treat it as opaque, it travels safely in
/// any client, and it cannot be used with another query.
pub fn encode_page_token(fingerprint: u64, continuation: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{fingerprint:016x}.{continuation}"))
}

/// The Store continuation token inside a caller's page token of the query with `fingerprint`
/// (`None` when empty).
pub fn decode_page_token(token: &str, fingerprint: u64) -> Result<Option<String>, ()> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(drop)?;
    let text = String::from_utf8(bytes).map_err(drop)?;
    let (bound, continuation) = text.split_once('.').ok_or(())?;
    if u64::from_str_radix(bound, 16) != Ok(fingerprint)
        || continuation.is_empty()
        || continuation.chars().any(char::is_control)
    {
        return Err(());
    }
    Ok(Some(continuation.to_owned()))
}

/// The Store continuation token of the caller's `page_token`, into `checks` when it is not
/// one this facade gave for the query with `fingerprint`.
pub fn check_page_token(checks: &mut Checks, page_token: &str, fingerprint: u64) -> Option<String> {
    decode_page_token(page_token, fingerprint).unwrap_or_else(|()| {
        checks.violation(
            "page_token",
            "is not a next_page_token this facade gave for this query; pass it back verbatim \
             with the same query",
        );
        None
    })
}

/// How a listing call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// The caller's token to go on from; empty when the listing is complete.
    pub next_page_token: String,
    /// How many pages the Store answered.
    pub pages: i32,
}

impl Walked {
    /// Whether nothing was left out.
    pub fn complete(&self) -> bool {
        self.next_page_token.is_empty()
    }
}

/// How a call of one page ended: the caller's token of the page after it (`next`, the
/// Store's token; `None` or empty: none).
pub fn page_walked<Op: Paged>(prepared: &Op::Prepared, next: Option<String>) -> Walked {
    Walked {
        next_page_token: next
            .filter(|token| !token.is_empty())
            .map(|token| encode_page_token(Op::fingerprint(prepared), &token))
            .unwrap_or_default(),
        pages: 1,
    }
}

/// Serves a listing call: one page (`all_pages` false) or every page within the deadline
/// ([`walk`]), each page handed to `absorb`.
pub async fn list<Op: Paged>(
    backends: &Backends,
    prepared: Op::Prepared,
    attempts: &Attempts,
    all_pages: bool,
    mut absorb: impl FnMut(Op::Answer),
) -> Outcome<Walked> {
    if all_pages {
        return walk::<Op>(backends, prepared, attempts, absorb).await;
    }
    let answer = one_page::<Op>(backends, &prepared, attempts).await?;
    Ok(answer.map(|(page, walked)| {
        absorb(page);
        walked
    }))
}

/// One page: its answer, and the caller's token of the next page.
async fn one_page<Op: Paged>(
    backends: &Backends,
    prepared: &Op::Prepared,
    attempts: &Attempts,
) -> Outcome<(Op::Answer, Walked)> {
    let mut page = exchange::<Op>(backends, prepared, attempts).await?;
    let next = Op::next_token(&mut page.value).filter(|token| !token.is_empty());
    // A Store answering the token it was asked with would be followed forever by the caller.
    if next.is_some() && next.as_deref() == Op::continuation(prepared) {
        return Err(endless::<Op>(backends, prepared, page));
    }
    let walked = page_walked::<Op>(prepared, next);
    Ok(Answer {
        value: (page.value, walked),
        ids: page.ids,
        http_status: page.http_status,
    })
}

/// Follows continuation tokens from `prepared`'s page, handing each page to `absorb`, until
/// the last page, or until the next page cannot be had before the caller's deadline or fails
/// the way a caller would retry (UNAVAILABLE, RESOURCE_EXHAUSTED): then the walk ends with the
/// token of the page that was not had, so no page already paid for (the Store's rate limit
/// counts each) is lost; so at [`MAX_PAGES`]. Any other failure of a later page fails the
/// call. Tokens that lead back to a page already served are a malformed answer. The ids of
/// the answer are those of the last page.
pub async fn walk<Op: Paged>(
    backends: &Backends,
    mut prepared: Op::Prepared,
    attempts: &Attempts,
    mut absorb: impl FnMut(Op::Answer),
) -> Outcome<Walked> {
    let deadline = attempts.deadline();
    let mut sent: HashSet<String> = Op::continuation(&prepared)
        .map(str::to_owned)
        .into_iter()
        .collect();
    let started = Instant::now();
    let mut page = exchange::<Op>(backends, &prepared, attempts).await?;
    let mut slowest = started.elapsed();
    let mut pages: usize = 0;
    let (ids, http_status) = loop {
        pages += 1;
        let next = Op::next_token(&mut page.value).filter(|token| !token.is_empty());
        if let Some(next) = &next {
            if !sent.insert(next.clone()) {
                return Err(endless::<Op>(backends, &prepared, page));
            }
        }
        let Answer {
            value,
            ids,
            http_status,
        } = page;
        absorb(value);
        Op::continue_from(&mut prepared, next);
        // At the page cap the walk stops like at the deadline: what was gathered, with the
        // token to go on from.
        if Op::continuation(&prepared).is_none() || pages >= MAX_PAGES {
            break (ids, http_status);
        }
        // A page that would end past the deadline is not asked for.
        let started = Instant::now();
        let Some(left) = deadline.checked_duration_since(started + ANSWER_MARGIN) else {
            break (ids, http_status);
        };
        if left < slowest {
            break (ids, http_status);
        }
        match tokio::time::timeout(left, exchange::<Op>(backends, &prepared, attempts)).await {
            Ok(Ok(next)) => page = next,
            Ok(Err(error)) if worth_continuing_later(&error) => {
                tracing::debug!(error = %error, "a later page failed; answering the pages gathered");
                break (ids, http_status);
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => break (ids, http_status),
        }
        slowest = slowest.max(started.elapsed());
    };
    Ok(Answer {
        value: Walked {
            next_page_token: Op::continuation(&prepared)
                .map(|token| encode_page_token(Op::fingerprint(&prepared), token))
                .unwrap_or_default(),
            pages: i32::try_from(pages).unwrap_or(i32::MAX),
        },
        ids,
        http_status,
    })
}

/// Whether a failure of a later page is one a caller retries (the Store throttling or
/// unavailable): the pages gathered are then worth answering, with the token to go on from.
fn worth_continuing_later(error: &ApiError) -> bool {
    matches!(
        tonic::Status::from(error.clone()).code(),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
    )
}

/// The Store's continuation tokens lead back to a page already served (or never end).
fn endless<Op: Paged>(
    backends: &Backends,
    prepared: &Op::Prepared,
    page: Answer<Op::Answer>,
) -> ApiError {
    ApiError::upstream(
        Op::ERRORS,
        UpstreamError::Malformed {
            host: backends.store.host(Op::host(prepared)).name().clone(),
            http_status: page.http_status,
            ids: Box::new(page.ids),
            expected: "a continuation token that leads to a page not yet served",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_what_the_facade_did_not_give() {
        let query = Fingerprint::default().field("A").field("Valid").finish();
        let store = r#"{"checkSatisfactionIndex":2}"#;
        let token = encode_page_token(query, store);
        assert_eq!(decode_page_token(&token, query), Ok(Some(store.to_owned())));
        assert_eq!(decode_page_token("", query), Ok(None));
        let other = Fingerprint::default().field("A").field("").finish();
        assert_ne!(other, query);
        assert_eq!(decode_page_token(&token, other), Err(()));
        // Fields are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            Fingerprint::default().field("ab").field("c").finish(),
            Fingerprint::default().field("a").field("bc").finish()
        );
        assert_eq!(decode_page_token("not base64!", query), Err(()));
        assert_eq!(
            decode_page_token(&URL_SAFE_NO_PAD.encode(store), query),
            Err(())
        );
        assert_eq!(
            decode_page_token(&URL_SAFE_NO_PAD.encode([0xff, 0xfe]), query),
            Err(())
        );
    }
}
