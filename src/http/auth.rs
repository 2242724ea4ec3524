//! Access control for the HTTP API: which token is asking, and whether its roles and queue
//! pattern cover the endpoint.
//!
//! It runs after routing (an unknown path or method is answered 404/405 first) and before the
//! request body is read, so a refused client cannot make the server read or parse anything. With
//! no tokens configured every request is allowed, exactly as if this module did not exist.
//!
//! Refusals never repeat the secret that was sent; a 403 names the token by its name, with its
//! roles and pattern, and says what the request needed, so the operator can tell which entry of
//! the config file to change.

use super::error::ApiError;
use super::handlers::AppState;
use super::Endpoint;
use crate::auth::{Role, Token, Tokens};
use crate::queue::MessageId;
use hyper::HeaderMap;

/// What an endpoint asks of a token.
#[derive(Clone, Copy, Debug)]
struct Need<'a> {
    /// The role needed; `None` means any role will do.
    role: Option<Role>,
    /// Which queues the request reaches.
    scope: Scope<'a>,
    /// What the request does, as the verb of the 403 message (`consume from`, `edit`).
    action: &'static str,
}

/// Which queues a request reaches.
#[derive(Clone, Copy, Debug)]
enum Scope<'a> {
    /// No token needed at all.
    Open,
    /// No one queue: the role alone decides.
    Server,
    /// The queue named in the path.
    Queue(&'a str),
    /// The queue of the message whose id is in the path; known only once the message is read.
    Message(&'a str),
    /// Every queue at once: the token's pattern must be `*`.
    EveryQueue,
}

/// The role and queues each endpoint needs; docs/api.md has the same table.
fn need(endpoint: Endpoint<'_>) -> Need<'_> {
    use Endpoint as E;
    let on_queue = |role, queue, action| Need { role, scope: Scope::Queue(queue), action };
    let on_message = |role, id, action| Need { role, scope: Scope::Message(id), action };
    let admin_on_queue = |queue, action| on_queue(Some(Role::Admin), queue, action);
    let admin_on_message = |id, action| on_message(Some(Role::Admin), id, action);
    match endpoint {
        E::Health => Need { role: None, scope: Scope::Open, action: "check health" },
        E::Metrics => Need { role: None, scope: Scope::Server, action: "read metrics" },
        E::ListQueues => Need { role: None, scope: Scope::Server, action: "list queues" },
        E::GetQueue(queue) | E::ListMessages(queue) => on_queue(None, queue, "read"),
        E::Enqueue(queue) => on_queue(Some(Role::Produce), queue, "enqueue to"),
        E::Lease(queue) | E::Ack(queue) | E::Nack(queue) | E::Extend(queue) => {
            on_queue(Some(Role::Consume), queue, "consume from")
        }
        E::PutQueue(queue) => admin_on_queue(queue, "configure"),
        E::Purge(queue) => admin_on_queue(queue, "purge"),
        E::Pause(queue) => admin_on_queue(queue, "pause"),
        E::Resume(queue) => admin_on_queue(queue, "resume"),
        E::Redrive(queue) => admin_on_queue(queue, "redrive"),
        E::GetMessage(id) => on_message(None, id, "read"),
        E::EditMessage(id) => admin_on_message(id, "edit"),
        E::DeleteMessage(id) => admin_on_message(id, "delete"),
        E::Retry(id) => admin_on_message(id, "retry"),
        E::Schedule(id) => admin_on_message(id, "reschedule"),
        E::Events => {
            Need { role: Some(Role::Admin), scope: Scope::Server, action: "read the event stream" }
        }
        E::Backup => {
            Need { role: Some(Role::Admin), scope: Scope::EveryQueue, action: "take a backup" }
        }
        // The page's files hold no data: the page asks for a token when the API needs one.
        E::Page(_) => Need { role: None, scope: Scope::Open, action: "load the page" },
        E::WhoAmI => Need { role: None, scope: Scope::Server, action: "read its own access" },
        // Like the queue list: each token sees the queues its pattern matches.
        E::Rates => Need { role: None, scope: Scope::Server, action: "read rates" },
        #[cfg(feature = "testing")]
        E::Failpoint(_) => {
            Need { role: Some(Role::Admin), scope: Scope::Server, action: "arm failpoints" }
        }
    }
}

/// Who is asking: `Ok(None)` when access control is off or the endpoint is open, otherwise the
/// token whose secret the `Authorization: Bearer` header carries.
pub(super) fn authenticate<'t>(
    tokens: &'t Tokens,
    endpoint: Endpoint<'_>,
    headers: &HeaderMap,
) -> Result<Option<&'t Token>, ApiError> {
    if !tokens.enabled() || matches!(need(endpoint).scope, Scope::Open) {
        return Ok(None);
    }
    let header = headers.get(hyper::header::AUTHORIZATION).ok_or_else(ApiError::unauthorized)?;
    let secret = bearer_secret(header.as_bytes()).ok_or_else(ApiError::unauthorized)?;
    tokens.find(secret).map(Some).ok_or_else(ApiError::invalid_token)
}

/// The credentials of a `Bearer` authorization header (the scheme is case-insensitive, RFC 9110
/// section 11.1); `None` for another scheme or an empty secret.
fn bearer_secret(header: &[u8]) -> Option<&[u8]> {
    let split = header.iter().position(|&byte| byte == b' ')?;
    let (scheme, rest) = header.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let secret = rest.trim_ascii();
    (!secret.is_empty()).then_some(secret)
}

/// Whether `token` may call `endpoint` (`None`: access control is off, or the endpoint is open).
///
/// For message endpoints the queue is read from the store first; a token without the needed role
/// at all is refused before that, so it learns nothing about which messages exist.
pub(super) async fn authorize(
    state: &AppState,
    token: Option<&Token>,
    endpoint: Endpoint<'_>,
) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let need = need(endpoint);
    let role_held = need.role.is_none_or(|role| token.roles.contains(&role));
    let every_queue = token.queues.as_str() == "*";
    match need.scope {
        Scope::Open => Ok(()),
        Scope::Server if role_held => Ok(()),
        Scope::Server => Err(forbidden(token, need.action, &needed(need.role, None))),
        Scope::Queue(queue) => check_queue(token, need.role, need.action, queue),
        Scope::Message(_) if role_held && every_queue => Ok(()),
        Scope::Message(id) if !role_held => {
            let action = format!("{} message {id}", need.action);
            Err(forbidden(token, &action, &needed(need.role, Some("the message's queue"))))
        }
        Scope::Message(id) => {
            let queue = message_queue(state, id).await?;
            if token.queues.matches(&queue) {
                return Ok(());
            }
            // The queue is not named: a token must not learn the names of queues it cannot see.
            let action =
                format!("{} message {id}, which is in a queue outside its pattern", need.action);
            Err(forbidden(token, &action, &needed(need.role, Some("the message's queue"))))
        }
        Scope::EveryQueue if role_held && every_queue => Ok(()),
        Scope::EveryQueue => {
            let needed = format!("{} on every queue (queues = \"*\")", needed(need.role, None));
            Err(forbidden(token, need.action, &needed))
        }
    }
}

/// Refuses (403) unless `token` holds `role` (`None`: any role) on `queue`. Used by the event
/// stream for the queues of its `queue` parameter.
pub fn check_queue(
    token: &Token,
    role: Option<Role>,
    action: &str,
    queue: &str,
) -> Result<(), ApiError> {
    let role_held = role.is_none_or(|role| token.roles.contains(&role));
    if role_held && token.queues.matches(queue) {
        return Ok(());
    }
    let quoted = format!("{queue:?}");
    Err(forbidden(token, &format!("{action} queue {quoted}"), &needed(role, Some(&quoted))))
}

/// What a request needed, for the 403 message: `the consume role on "orders"`.
fn needed(role: Option<Role>, queue: Option<&str>) -> String {
    let role = match role {
        Some(role) => format!("the {role} role"),
        None => "a role (produce, consume or admin)".to_string(),
    };
    match queue {
        Some(queue) => format!("{role} on {queue}"),
        None => role,
    }
}

/// The 403 for `token`: its name (never its secret), roles and pattern, what the request tried
/// and what it needed.
fn forbidden(token: &Token, action: &str, needed: &str) -> ApiError {
    let roles: Vec<String> = token.roles.iter().map(Role::to_string).collect();
    ApiError::forbidden(format!(
        "token {:?} (roles: {}; queues: {}) may not {action}; it needs {needed}",
        token.name,
        roles.join(", "),
        token.queues.as_str(),
    ))
}

/// The queue of the message `id_text` names: 400 for an id that is not one, 404 for no message.
async fn message_queue(state: &AppState, id_text: &str) -> Result<String, ApiError> {
    let id = MessageId::parse(id_text).ok_or_else(|| ApiError::invalid_id(id_text))?;
    match super::reads::record(state, id).await? {
        Some(record) => Ok(record.queue),
        None => Err(ApiError::message_not_found(id_text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_secrets_are_taken_from_the_header() {
        assert_eq!(bearer_secret(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_secret(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_secret(b"Basic abc"), None);
        assert_eq!(bearer_secret(b"Bearer"), None);
        assert_eq!(bearer_secret(b"Bearer   "), None);
        assert_eq!(bearer_secret(b"Bearerabc"), None);
    }

    #[test]
    fn every_steering_endpoint_needs_admin() {
        use Endpoint as E;
        let steering = [
            E::PutQueue("q"),
            E::Purge("q"),
            E::Pause("q"),
            E::Resume("q"),
            E::Redrive("q"),
            E::EditMessage("0000000000000001"),
            E::DeleteMessage("0000000000000001"),
            E::Retry("0000000000000001"),
            E::Schedule("0000000000000001"),
            E::Events,
            E::Backup,
        ];
        for endpoint in steering {
            assert_eq!(need(endpoint).role, Some(Role::Admin), "{endpoint:?}");
        }
        assert_eq!(need(E::Enqueue("q")).role, Some(Role::Produce));
        for endpoint in [E::Lease("q"), E::Ack("q"), E::Nack("q"), E::Extend("q")] {
            assert_eq!(need(endpoint).role, Some(Role::Consume), "{endpoint:?}");
        }
        assert!(matches!(need(E::Health).scope, Scope::Open));
        assert!(matches!(need(E::Page(crate::http::ui::PagePath::Index)).scope, Scope::Open));
        assert!(matches!(need(E::WhoAmI).scope, Scope::Server));
        assert_eq!(need(E::WhoAmI).role, None);
    }

    #[test]
    fn forbidden_names_the_token_and_what_was_needed() {
        let tokens = Tokens::from_config(
            &[crate::auth::TokenConfig {
                name: "billing-producer".into(),
                secret: Some("a-secret-of-enough-bytes".into()),
                secret_env: None,
                roles: vec![Role::Produce],
                queues: "billing.*".into(),
            }],
            |_| None,
        )
        .unwrap();
        let token = tokens.find(b"a-secret-of-enough-bytes").unwrap();
        let error = check_queue(token, Some(Role::Consume), "consume from", "orders").unwrap_err();
        assert_eq!(error.status, hyper::StatusCode::FORBIDDEN);
        assert_eq!(
            error.message,
            "token \"billing-producer\" (roles: produce; queues: billing.*) may not consume from \
             queue \"orders\"; it needs the consume role on \"orders\""
        );
        assert!(!error.message.contains("a-secret"));
        assert!(check_queue(token, Some(Role::Produce), "enqueue to", "billing.eu").is_ok());
        assert!(check_queue(token, None, "read", "billing.eu").is_ok());
    }
}
