//! The outbox page: a web page, embedded in the binary, where a person sees and steers every
//! message.
//!
//! The page is a client of the API and nothing more: its script calls the same `/v1/` endpoints
//! as any other client, with the same token, and the server checks each call as it checks any
//! other. This module only hands out the page's files (`/` for the page, `/ui/<file>` for its
//! script and style), which are compiled into the binary: nothing is fetched from elsewhere, at
//! build time or at run time, and no Node is needed to build it.
//!
//! The files are open (no token): the page itself holds no data, and asks for a token when the
//! API needs one. Every file is sent with a Content-Security-Policy that allows scripts, styles
//! and connections from this origin only, and no inline script, inline event handler or `eval`;
//! together with the page rendering every piece of message content as text, a body or header
//! holding `<script>` is shown, never run. There are no cookies, so there is nothing for another
//! site to forge a request with.

use super::error::ApiError;
use super::HttpResponse;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

/// The policy every file of the page is served with: same-origin scripts, styles, images and
/// connections; no inline script or style element, no `eval`, no plugins, no framing, no forms
/// posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    /// The name under `/ui/` (`index.html` is served at `/`).
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const SCRIPT: &str = "text/javascript; charset=utf-8";
const STYLE: &str = "text/css; charset=utf-8";

/// Every file, in the binary.
const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: HTML, bytes: include_bytes!("assets/index.html") },
    Asset { name: "app.css", content_type: STYLE, bytes: include_bytes!("assets/app.css") },
    Asset { name: "app.js", content_type: SCRIPT, bytes: include_bytes!("assets/app.js") },
    Asset { name: "api.js", content_type: SCRIPT, bytes: include_bytes!("assets/api.js") },
    Asset { name: "dom.js", content_type: SCRIPT, bytes: include_bytes!("assets/dom.js") },
    Asset { name: "body.js", content_type: SCRIPT, bytes: include_bytes!("assets/body.js") },
    Asset {
        name: "overview.js",
        content_type: SCRIPT,
        bytes: include_bytes!("assets/overview.js"),
    },
    Asset { name: "queue.js", content_type: SCRIPT, bytes: include_bytes!("assets/queue.js") },
    Asset { name: "message.js", content_type: SCRIPT, bytes: include_bytes!("assets/message.js") },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/favicon.svg"),
    },
];

/// What a path under the page names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagePath<'a> {
    /// `/`: the page.
    Index,
    /// `/ui` or `/ui/`: the page lives at `/`; redirected there.
    UiRoot { trailing_slash: bool },
    /// `/ui/<name>`: one of its files.
    File(&'a str),
}

/// Serves a file of the page, or `404` when the page is turned off (`--no-ui`) or has no such
/// file. `If-None-Match` with the file's ETag gets `304`.
pub fn serve(
    enabled: bool,
    path: PagePath<'_>,
    headers: &HeaderMap,
) -> Result<HttpResponse, ApiError> {
    let shown_path = match path {
        PagePath::Index => "/".to_string(),
        PagePath::UiRoot { trailing_slash: false } => "/ui".to_string(),
        PagePath::UiRoot { trailing_slash: true } => "/ui/".to_string(),
        PagePath::File(name) => format!("/ui/{name}"),
    };
    if !enabled {
        return Err(ApiError::not_found(&shown_path));
    }
    let name = match path {
        PagePath::Index => "index.html",
        // Relative, so that the page keeps working behind a proxy that serves it under a prefix.
        PagePath::UiRoot { trailing_slash } => {
            return Ok(redirect(if trailing_slash { "../" } else { "./" }))
        }
        // The page is served at `/` only: at `/ui/index.html` its relative links would break.
        PagePath::File("index.html") => return Err(ApiError::not_found(&shown_path)),
        PagePath::File(name) => name,
    };
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| ApiError::not_found(&shown_path))?;
    let etag = format!("\"{:08x}\"", crc32fast::hash(asset.bytes));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(asset.bytes)).boxed());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    // Revalidated on every load, so that a new binary's page is never mixed with an old one's.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_security_headers(headers);
    Ok(response)
}

fn redirect(location: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    add_security_headers(headers);
    response
}

fn add_security_headers(headers: &mut HeaderMap) {
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_links_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].bytes).expect("index.html is UTF-8");
        for linked in index.split("\"ui/").skip(1) {
            let name = linked.split('"').next().unwrap_or_default();
            assert!(ASSETS.iter().any(|asset| asset.name == name), "ui/{name} is not embedded");
        }
        for asset in ASSETS.iter().filter(|asset| asset.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.bytes).expect("scripts are UTF-8");
            for imported in text.split("from './").skip(1) {
                let name = imported.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|asset| asset.name == name),
                    "{} imports {name}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn no_asset_uses_html_parsing_or_eval() {
        // Message content reaches the page as text; these are the ways it could become markup or
        // code. The CSP forbids eval too; this keeps it from being needed.
        let forbidden = [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ];
        for asset in ASSETS.iter().filter(|asset| asset.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.bytes).expect("scripts are UTF-8");
            for word in forbidden {
                assert!(!text.contains(word), "{} uses {word}", asset.name);
            }
        }
        let index = std::str::from_utf8(ASSETS[0].bytes).expect("index.html is UTF-8");
        for tag in index.split("<script").skip(1) {
            let tag = tag.split('>').next().unwrap_or_default();
            assert!(tag.contains(" src=\"ui/"), "an inline script in index.html: <script{tag}>");
        }
        for attribute in index.split(" on").skip(1) {
            let name: String = attribute.chars().take_while(char::is_ascii_alphabetic).collect();
            let after = &attribute[name.len()..];
            assert!(!after.starts_with('='), "an inline event handler in index.html: on{name}");
        }
        assert!(!index.contains("style="), "an inline style in index.html");
    }
}
