//! Page tokens of `GET .../events/filter/next?page-token=...`.
//!
//! A token is `base64url(state) "." base64url(HMAC-SHA256(secret, domain ‖ state))`. The state
//! holds the tenant, the resolved query (filter with its fixed window, order, page size), the
//! total of the first page and the keyset cursor (occurred, id) of the last event served, so
//! that walking the pages never skips or repeats an event even while new ones arrive.
//!
//! The MAC makes a token unforgeable and binds it to its query: changing any byte (the filter,
//! the cursor, the tenant) invalidates it. The tenant inside must equal the tenant of the path
//! the key was checked against, so a token from another workspace is refused even when its
//! MAC is valid. Every refusal is a 403, as in Prefect.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowhouse_schema::Tenant;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::filter::EventFilter;
use crate::error::ApiError;

const DOMAIN: &[u8] = b"flowhouse.events.page-token.v1\0";
/// Longer tokens are refused before any decoding.
const MAX_TOKEN_CHARS: usize = 64 * 1024;

/// Where the next page starts: after this (occurred, id) in the query's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub occurred: i64,
    pub id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageState {
    pub tenant: Tenant,
    pub filter: EventFilter,
    pub limit: u32,
    pub total: u64,
    pub after: Cursor,
}

#[derive(Clone)]
pub struct PageTokens {
    secret: Vec<u8>,
}

impl PageTokens {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(DOMAIN);
        mac
    }

    pub fn sign(&self, state: &PageState) -> String {
        let payload = serde_json::to_vec(state).expect("page state serializes");
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The state of a token this process (or one with the same secret) issued for `tenant`.
    pub fn verify(&self, token: &str, tenant: Tenant) -> Result<PageState, ApiError> {
        let refused = || ApiError::Forbidden("invalid page token".into());
        if token.len() > MAX_TOKEN_CHARS {
            return Err(refused());
        }
        let (payload, tag) = token.split_once('.').ok_or_else(refused)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
        let mut mac = self.mac();
        mac.update(&payload);
        // Constant-time comparison.
        mac.verify_slice(&tag).map_err(|_| refused())?;
        let state: PageState = serde_json::from_slice(&payload).map_err(|_| refused())?;
        if state.tenant != tenant {
            return Err(ApiError::Forbidden(
                "this page token belongs to another workspace".into(),
            ));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tenant: Tenant) -> PageState {
        PageState {
            tenant,
            filter: EventFilter::default(),
            limit: 50,
            total: 120,
            after: Cursor {
                occurred: 1_700_000_000_000_000,
                id: Uuid::new_v4(),
            },
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering_and_other_tenants() {
        let tokens = PageTokens::new(b"secret".to_vec());
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let other = Tenant {
            account_id: tenant.account_id,
            workspace_id: Uuid::new_v4(),
        };
        let issued = state(tenant);
        let token = tokens.sign(&issued);
        assert_eq!(tokens.verify(&token, tenant).unwrap(), issued);
        assert!(matches!(
            tokens.verify(&token, other),
            Err(ApiError::Forbidden(_))
        ));

        // Re-signed by someone without the secret.
        let forged = PageTokens::new(b"guess".to_vec()).sign(&state(tenant));
        assert!(matches!(
            tokens.verify(&forged, tenant),
            Err(ApiError::Forbidden(_))
        ));

        // The payload edited (another tenant written in), the MAC kept.
        let (_, tag) = token.split_once('.').unwrap();
        let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&state(other)).unwrap());
        assert!(matches!(
            tokens.verify(&format!("{edited}.{tag}"), other),
            Err(ApiError::Forbidden(_))
        ));
        for junk in ["", ".", "abc", "a.b", "%%%.%%%"] {
            assert!(matches!(
                tokens.verify(junk, tenant),
                Err(ApiError::Forbidden(_))
            ));
        }
    }
}
