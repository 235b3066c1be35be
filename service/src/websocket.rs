//! The opening of Prefect's websockets (`/events/in`, `/events/out`, `/logs/out`), the same for
//! every Flowhouse service: the client may send pings, then `{"type": "auth", "token": ...}`,
//! answered `{"type": "auth_success"}` or closed with 1008 and the reason.
//!
//! The token is an auth string (`PREFECT_API_AUTH_STRING`): the key, or `user:key`
//! (`flowhouse_keys::key_from_auth_string` reads it). Prefect's
//! self-hosted clients send `null` when only `PREFECT_API_KEY` is set; [`NO_SOCKET_CREDENTIAL`]
//! tells them the two settings that work.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde::Deserialize;

/// The close reason (at most 123 bytes) when a socket carries no key at all.
pub const NO_SOCKET_CREDENTIAL: &str = "no key: set PREFECT_API_AUTH_STRING=<key>, or \
     PREFECT_API_KEY=<key> with PREFECT_CLOUD_API_URL=<flowhouse>/api";

/// The answer to a successful auth message.
pub const AUTH_SUCCESS: &str = r#"{"type":"auth_success"}"#;

/// What the first message of a socket said.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// An auth message, and its token (an auth string: read the key with
    /// `flowhouse_keys::key_from_auth_string`); `None` when it had none.
    Auth(Option<String>),
    /// Something other than an auth message came first.
    NotAuth,
    /// Nothing within the timeout.
    TimedOut,
    /// The client closed or the connection failed.
    Gone,
}

/// Reads until the first data message (answering pings meanwhile) and says what it was.
pub async fn read_opening(socket: &mut WebSocket, timeout: Duration) -> Opening {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            () = &mut deadline => return Opening::TimedOut,
        };
        let raw = match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message.into_data(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Opening::Gone,
        };
        return match auth_message(&raw) {
            Some(token) => Opening::Auth(token),
            None => Opening::NotAuth,
        };
    }
}

/// `Some(token)` of an auth message (`Some(None)` when it holds none, or an empty one), `None`
/// if `raw` is not an auth message.
pub fn auth_message(raw: &[u8]) -> Option<Option<String>> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        token: Option<String>,
    }
    let auth = serde_json::from_slice::<Auth>(raw)
        .ok()
        .filter(|auth| auth.kind == "auth")?;
    Some(auth.token.filter(|token| !token.trim().is_empty()))
}

/// Sends a close frame with `code` and `reason` cut to the 123 bytes a control frame holds.
pub async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: close_reason(reason).into(),
        })))
        .await;
}

/// `reason` cut to the 123 bytes of a close frame, on a character boundary.
pub fn close_reason(reason: &str) -> String {
    if reason.len() <= 123 {
        return reason.to_string();
    }
    let mut end = 120;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_messages_are_told_from_events() {
        assert_eq!(
            auth_message(br#"{"type":"auth","token":"fh_x"}"#),
            Some(Some("fh_x".into()))
        );
        assert_eq!(auth_message(br#"{"type":"auth","token":null}"#), Some(None));
        assert_eq!(auth_message(br#"{"type":"auth","token":""}"#), Some(None));
        assert_eq!(auth_message(br#"{"type":"auth"}"#), Some(None));
        assert_eq!(auth_message(br#"{"type":"filter"}"#), None);
        assert_eq!(
            auth_message(br#"{"id":"x","event":"prefect.flow-run.Completed"}"#),
            None
        );
        assert_eq!(auth_message(b"not json"), None);
    }

    #[test]
    fn the_hint_fits_a_close_frame() {
        assert!(
            NO_SOCKET_CREDENTIAL.len() <= 123,
            "{}",
            NO_SOCKET_CREDENTIAL.len()
        );
        assert_eq!(close_reason(NO_SOCKET_CREDENTIAL), NO_SOCKET_CREDENTIAL);
        let long = "é".repeat(200);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && cut.ends_with("..."));
    }
}
