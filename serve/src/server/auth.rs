//! The API key check: `Authorization: Bearer <key>` (or HTTP Basic with the key as the
//! password, which is what a browser sends after the page's login prompt) on every route but
//! `/health`. Keys are compared in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Middleware: passes the request on when the key matches (or none is set).
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.config().api_key.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" || presented_key_matches(request.headers(), key) {
        return next.run(request).await;
    }
    let mut response = ApiError::unauthorized().into_response();
    // Lets a browser opening the page ask for the key (as the password).
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"internlm2-rs\", charset=\"UTF-8\""),
    );
    response
}

/// Whether the request's `Authorization` header carries `key` (`Bearer <key>`, or Basic with
/// the key as the password), compared in constant time. For routes of your own merged beside
/// the OpenAI router (the agent route uses it).
pub fn presented_key_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return constant_time_eq(token.trim().as_bytes(), key.as_bytes());
    }
    if let Some(encoded) = value.strip_prefix("Basic ")
        && let Some(decoded) = decode_base64(encoded.trim())
        && let Some(colon) = decoded.iter().position(|&b| b == b':')
    {
        return constant_time_eq(&decoded[colon + 1..], key.as_bytes());
    }
    false
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// Standard base64 (with or without padding) for the Basic header.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_keys() {
        assert!(presented_key_matches(&headers("Bearer sk-1"), "sk-1"));
        assert!(!presented_key_matches(&headers("Bearer sk-2"), "sk-1"));
        assert!(!presented_key_matches(&headers("Bearer sk-1x"), "sk-1"));
        assert!(!presented_key_matches(&HeaderMap::new(), "sk-1"));
        // "user:sk-1" and ":sk-1" in base64.
        assert!(presented_key_matches(
            &headers("Basic dXNlcjpzay0x"),
            "sk-1"
        ));
        assert!(presented_key_matches(&headers("Basic OnNrLTE="), "sk-1"));
        assert!(!presented_key_matches(
            &headers("Basic dXNlcjpzay0y"),
            "sk-1"
        ));
        assert!(!presented_key_matches(&headers("Basic !!"), "sk-1"));
    }
}
