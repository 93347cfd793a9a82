//! Identity: Entra tenants and tokens, the claims of Store ID keys, and the refund queue's SAS.

mod audience;
mod sas;
mod store_key;
mod tenant;
mod token;

pub use audience::Audience;
pub use sas::{Sas, SasCache, SAS_MARGIN};
pub use store_key::{key_audience, KeyClaims, KeyDecodeError};
pub use tenant::{is_guid, AllowedTenants, InvalidTenantId, TenantId};
pub(crate) use token::token_from_answer;
pub use token::{AccessToken, CredentialSource, Credentials, TokenError, TokenProvider};
