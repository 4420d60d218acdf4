//! `GET /`: a small chat page (HTML, CSS and JavaScript compiled into the binary, no build
//! step) that streams answers from `/v1/chat/completions`, shows tool calls, and sets the
//! system prompt, the temperature and the tools offered.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/style.css");
const SCRIPT: &str = include_str!("page/app.js");

/// The page, with its style and script inlined (one request, no other routes).
pub async fn index() -> Response {
    let page = INDEX
        .replace("/*STYLE*/", STYLE)
        .replace("/*SCRIPT*/", SCRIPT);
    ([(header::CACHE_CONTROL, "no-cache")], Html(page)).into_response()
}
