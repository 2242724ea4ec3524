//! API tokens: who may do what to which queues.
//!
//! Tokens live in the config file (`[[tokens]]`). Each has a name (for logs; the secret is never
//! logged or printed), a secret, one or more roles, and a queue-name pattern. With no tokens
//! configured every request is allowed.

use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;

/// Shortest accepted secret, in bytes: long enough that guessing is hopeless.
pub const SECRET_BYTES_MIN: usize = 16;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Enqueue messages.
    Produce,
    /// Lease, ack, nack and extend.
    Consume,
    /// Inspect and steer: listings, edits, retries, purges, settings, events, backup, metrics.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Produce => "produce",
            Role::Consume => "consume",
            Role::Admin => "admin",
        })
    }
}

/// One `[[tokens]]` entry of the config file, as written. Its `Debug` form hides the secret.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors (e.g. `billing-producer`).
    pub name: String,
    /// The secret itself. Prefer `secret_env` so the file holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The environment variable that holds the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// What the token may do.
    pub roles: Vec<Role>,
    /// Which queues: a name, or a pattern where `*` matches any run of characters
    /// (`orders.*`, `*`). Default `*`.
    #[serde(default = "every_queue")]
    pub queues: String,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("secret_env", &self.secret_env)
            .field("roles", &self.roles)
            .field("queues", &self.queues)
            .finish()
    }
}

fn every_queue() -> String {
    "*".to_string()
}

/// A queue-name pattern: literal text with `*` wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePattern {
    text: String,
}

impl QueuePattern {
    /// Accepts queue-name characters and `*`.
    pub fn parse(text: &str) -> Result<QueuePattern, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*');
        if text.is_empty() || !text.chars().all(allowed) {
            return Err(format!(
                "queue pattern {text:?} may hold only letters, digits, '.', '_', '-' and the \
                 wildcard '*' (e.g. \"orders.*\")"
            ));
        }
        Ok(QueuePattern { text: text.to_string() })
    }

    /// Whether `queue` matches: `*` matches any run of characters, including none.
    pub fn matches(&self, queue: &str) -> bool {
        let mut parts = self.text.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = queue.strip_prefix(first) else { return false };
        let middle: Vec<&str> = parts.collect();
        let Some((last, middle)) = middle.split_last() else { return rest.is_empty() };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A validated token.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    secret: Vec<u8>,
    pub roles: Vec<Role>,
    pub queues: QueuePattern,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("queues", &self.queues.text)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Whether the token holds `role` for `queue` (`None`: an endpoint not tied to one queue).
    pub fn allows(&self, role: Role, queue: Option<&str>) -> bool {
        self.roles.contains(&role) && queue.is_none_or(|queue| self.queues.matches(queue))
    }
}

/// Every configured token. Empty means access control is off.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Validates the config entries; `env` reads `secret_env` variables. The error says which
    /// entry is wrong and how to fix it.
    pub fn from_config(
        entries: &[TokenConfig],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Tokens, String> {
        let mut tokens: Vec<Token> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let name = &entry.name;
            let at = format!("tokens[{index}] ({name:?})");
            if name.is_empty() {
                return Err(format!("tokens[{index}]: name is empty; give every token a name"));
            }
            if tokens.iter().any(|token| &token.name == name) {
                return Err(format!("{at}: the name is used twice; names must be unique"));
            }
            let secret = match (&entry.secret, &entry.secret_env) {
                (Some(secret), None) => secret.clone(),
                (None, Some(variable)) => env(variable).ok_or_else(|| {
                    format!("{at}: secret_env names {variable:?}, which is not set")
                })?,
                _ => {
                    return Err(format!("{at}: give exactly one of secret and secret_env"));
                }
            };
            if secret.len() < SECRET_BYTES_MIN {
                return Err(format!(
                    "{at}: the secret is {} bytes; use at least {SECRET_BYTES_MIN} random bytes \
                     (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ));
            }
            if secret.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(format!(
                    "{at}: the secret must be printable ASCII without spaces (it travels in an \
                     Authorization header)"
                ));
            }
            if tokens.iter().any(|token| token.secret == secret.as_bytes()) {
                return Err(format!("{at}: the same secret is given to two tokens"));
            }
            if entry.roles.is_empty() {
                return Err(format!(
                    "{at}: roles is empty; give one or more of produce, consume, admin"
                ));
            }
            let queues =
                QueuePattern::parse(&entry.queues).map_err(|error| format!("{at}: {error}"))?;
            tokens.push(Token {
                name: name.clone(),
                secret: secret.into_bytes(),
                roles: entry.roles.clone(),
                queues,
            });
        }
        Ok(Tokens { tokens })
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose secret is `presented`. Every configured secret is compared, each in
    /// constant time, so the time taken says nothing about which (or whether one) matched.
    pub fn find(&self, presented: &[u8]) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.secret.as_slice().ct_eq(presented)) {
                found = Some(token);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> QueuePattern {
        QueuePattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_with_wildcards() {
        assert!(pattern("*").matches("anything"));
        assert!(pattern("orders").matches("orders"));
        assert!(!pattern("orders").matches("orders.eu"));
        assert!(pattern("orders.*").matches("orders.eu"));
        assert!(pattern("orders.*").matches("orders."));
        assert!(!pattern("orders.*").matches("order"));
        assert!(pattern("*.dlq").matches("orders.dlq"));
        assert!(!pattern("*.dlq").matches("orders.dlq2"));
        assert!(pattern("a*b*c").matches("a-x-b-y-c"));
        assert!(!pattern("a*b*c").matches("a-x-c-y-b"));
        assert!(!pattern("ab*ba").matches("aba"));
        assert!(QueuePattern::parse("orders/x").is_err());
        assert!(QueuePattern::parse("").is_err());
    }

    fn entry(name: &str, secret: &str, roles: &[Role], queues: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            secret: Some(secret.into()),
            secret_env: None,
            roles: roles.to_vec(),
            queues: queues.into(),
        }
    }

    #[test]
    fn tokens_are_found_by_secret_and_checked_by_role_and_queue() {
        let tokens = Tokens::from_config(
            &[
                entry("p", "producer-secret-0123", &[Role::Produce], "orders.*"),
                entry("a", "admin-secret-0123456", &[Role::Admin], "*"),
            ],
            |_| None,
        )
        .unwrap();
        let producer = tokens.find(b"producer-secret-0123").unwrap();
        assert_eq!(producer.name, "p");
        assert!(producer.allows(Role::Produce, Some("orders.eu")));
        assert!(!producer.allows(Role::Produce, Some("billing")));
        assert!(!producer.allows(Role::Consume, Some("orders.eu")));
        assert!(tokens.find(b"producer-secret-012").is_none());
        assert!(tokens.find(b"").is_none());
        assert!(tokens.find(b"admin-secret-0123456").unwrap().allows(Role::Admin, None));
    }

    #[test]
    fn bad_token_entries_are_refused_with_what_to_fix() {
        let short = Tokens::from_config(&[entry("p", "short", &[Role::Produce], "*")], |_| None);
        assert!(short.unwrap_err().contains("at least 16"));
        let twice = Tokens::from_config(
            &[
                entry("p", "producer-secret-0123", &[Role::Produce], "*"),
                entry("p", "producer-secret-4567", &[Role::Produce], "*"),
            ],
            |_| None,
        );
        assert!(twice.unwrap_err().contains("unique"));
        let no_roles =
            Tokens::from_config(&[entry("p", "producer-secret-0123", &[], "*")], |_| None);
        assert!(no_roles.unwrap_err().contains("roles is empty"));
        let mut from_env = entry("e", "", &[Role::Consume], "*");
        from_env.secret = None;
        from_env.secret_env = Some("SECRET_VAR".into());
        let missing = Tokens::from_config(std::slice::from_ref(&from_env), |_| None);
        assert!(missing.unwrap_err().contains("not set"));
        let found = Tokens::from_config(&[from_env], |_| Some("consumer-secret-0123".into()));
        assert!(found.unwrap().find(b"consumer-secret-0123").is_some());
    }
}
