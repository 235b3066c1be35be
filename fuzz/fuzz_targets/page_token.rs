//! Page tokens: any string is refused or verified without panicking, a verified token is only
//! ever one this secret signed for this tenant, and signing then verifying round-trips.
#![no_main]

use flowhouse_query_api::events::page_token::PageTokens;
use flowhouse_schema::Tenant;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = PageTokens::new(b"fuzzing secret".to_vec());
    let tenant = Tenant {
        account_id: Uuid::from_u128(1),
        workspace_id: Uuid::from_u128(2),
    };
    if let Ok(state) = tokens.verify(token, tenant) {
        // Only a signed token verifies: re-signing it gives the same token back.
        assert_eq!(state.tenant, tenant);
        assert_eq!(tokens.sign(&state), token);
    }
});
