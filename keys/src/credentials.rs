//! Where a request's key is, in every form a Prefect client sends it.
//!
//! - `Authorization: Bearer <key>`: Prefect Cloud clients and HTTP clients with `PREFECT_API_KEY`.
//! - `Authorization: Basic base64(<auth string>)`: HTTP and websocket clients with
//!   `PREFECT_API_AUTH_STRING` set. An auth string is `user:password` by convention; Flowhouse
//!   reads the key as the password (any user name), or as the whole string when it has no colon.
//! - `{"type": "auth", "token": <auth string or key>}`: the first message of a self-hosted
//!   websocket client; the token is read like an auth string.
//!
//! Keys never contain a colon (`fh_<id>_<secret>`), so the two readings cannot be confused.

use base64::Engine as _;

/// The key of an `Authorization` header value, if it carries one.
pub fn key_from_authorization(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    let (scheme, credentials) = value.split_once(char::is_whitespace)?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return non_empty(credentials);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return non_empty(key_from_auth_string(&decoded));
    }
    None
}

/// The key inside an auth string: the password of `user:password`, or the whole string.
pub fn key_from_auth_string(auth_string: &str) -> &str {
    match auth_string.split_once(':') {
        Some((_, password)) => password.trim(),
        None => auth_string.trim(),
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(text: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }

    #[test]
    fn bearer_in_any_case() {
        assert_eq!(
            key_from_authorization(Some("Bearer fh_a_b")).as_deref(),
            Some("fh_a_b")
        );
        assert_eq!(
            key_from_authorization(Some("bearer   fh_a_b ")).as_deref(),
            Some("fh_a_b")
        );
        assert_eq!(key_from_authorization(Some("Bearer ")), None);
        assert_eq!(key_from_authorization(Some("fh_a_b")), None);
        assert_eq!(key_from_authorization(None), None);
    }

    #[test]
    fn basic_holds_the_key_as_password_or_whole() {
        assert_eq!(
            key_from_authorization(Some(&basic("admin:fh_a_b"))).as_deref(),
            Some("fh_a_b")
        );
        assert_eq!(
            key_from_authorization(Some(&basic("fh_a_b"))).as_deref(),
            Some("fh_a_b")
        );
        assert_eq!(
            key_from_authorization(Some(&basic(":fh_a_b"))).as_deref(),
            Some("fh_a_b")
        );
        assert_eq!(key_from_authorization(Some(&basic("admin:"))), None);
        assert_eq!(key_from_authorization(Some("Basic not-base64!")), None);
        assert_eq!(key_from_authorization(Some("Digest x")), None);
    }

    #[test]
    fn auth_strings_read_like_basic_credentials() {
        assert_eq!(key_from_auth_string("user:fh_a_b"), "fh_a_b");
        assert_eq!(key_from_auth_string("fh_a_b"), "fh_a_b");
    }
}
