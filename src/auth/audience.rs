//! The three Entra audiences of the Store (`store-services-apis.md` 1.1), declared once for
//! the token provider and the emulator's token endpoint.

/// An Entra audience of the Store: what a token is for. All three are app-only
/// client-credentials tokens of the publisher's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// The service access token: the bearer of every Store call. It must never leave the
    /// publisher's service (contract, section 7).
    Service,
    /// The collections key-creation token: handed to the client app, which mints a
    /// UserCollectionsId (a collections Store ID key) with it.
    CollectionsKeyCreation,
    /// The purchase key-creation token: handed to the client app, which mints a
    /// UserPurchaseId (a purchase Store ID key) with it.
    PurchaseKeyCreation,
}

/// Each audience's URI, written once: `as_str` is it, `scope` is it and `/.default`.
macro_rules! uris {
    ($($variant:ident => $uri:literal,)*) => {
        impl Audience {
            /// The audience (resource) URI: the `aud` claim of its tokens.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $uri,)*
                }
            }

            /// The client-credentials scope that asks for it: the audience and `/.default`.
            pub const fn scope(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($uri, "/.default"),)*
                }
            }
        }
    };
}

uris! {
    Service => "https://onestore.microsoft.com",
    CollectionsKeyCreation => "https://onestore.microsoft.com/b2b/keys/create/collections",
    PurchaseKeyCreation => "https://onestore.microsoft.com/b2b/keys/create/purchase",
}

impl Audience {
    /// Every audience.
    pub const ALL: [Self; 3] = [
        Self::Service,
        Self::CollectionsKeyCreation,
        Self::PurchaseKeyCreation,
    ];

    /// The audience `scope` asks for, if it is one of the three.
    pub fn from_scope(scope: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|audience| audience.scope() == scope)
    }

    /// A short name for logs and metric labels.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::CollectionsKeyCreation => "collections_key_creation",
            Self::PurchaseKeyCreation => "purchase_key_creation",
        }
    }

    /// Its position in [`Audience::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_the_audience_and_default() {
        for (index, audience) in Audience::ALL.into_iter().enumerate() {
            assert_eq!(audience.scope(), format!("{}/.default", audience.as_str()));
            assert_eq!(Audience::from_scope(audience.scope()), Some(audience));
            assert_eq!(Audience::from_scope(audience.as_str()), None);
            assert_eq!(audience.index(), index);
        }
    }
}
