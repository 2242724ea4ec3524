//! `GET /v1/whoami`: what the caller's token may do, so that a client (the outbox page) can offer
//! only the actions that will be allowed.
//!
//! It answers for the token the request carries and for no other, and never with a secret. The
//! server still checks every request on its own; this is a courtesy, not a permission.

use super::{json_response, HttpResponse};
use crate::auth::Token;
use hyper::StatusCode;

/// `{"access_control": false, "token": null}` when the server has no tokens; otherwise the token's
/// name, roles and queue pattern.
pub fn whoami(access_control: bool, token: Option<&Token>) -> HttpResponse {
    let token = token.map(|token| {
        serde_json::json!({
            "name": token.name,
            "roles": token.roles,
            "queues": token.queues.as_str(),
        })
    });
    let body = serde_json::json!({ "access_control": access_control, "token": token });
    json_response(StatusCode::OK, &body)
}
