//! Bearer-token authentication and tenancy.
//!
//! Tokens come from a file (`--auth-tokens-file`) or `GRU_AUTH_TOKENS`, one
//! entry per line (or `;`-separated in the variable): `NAME TOKEN [admin]`.
//! NAME is the tenant: sessions belong to the tenant that opened them and are
//! NOT_FOUND for every other. Training needs an `admin` token. Tokens are
//! compared in constant time; a missing or unknown token is UNAUTHENTICATED.
//! The health service is never behind auth (probes carry no tokens).

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Who is calling: added to each authenticated request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub admin: bool,
}

#[derive(Clone)]
struct Token {
    name: String,
    secret: Vec<u8>,
    admin: bool,
}

/// The configured tokens; `Auth::default()` (none) turns authentication off.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<Vec<Token>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Auth")
            .field(
                "tenants",
                &self.tokens.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl Auth {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Parses `NAME TOKEN [admin]` entries (blank lines and `#` comments skipped).
    pub fn parse(text: &str, origin: &str) -> Result<Auth, String> {
        let mut tokens: Vec<Token> = Vec::new();
        for (n, line) in text.split(['\n', ';']).enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (name, secret, admin) = match parts.as_slice() {
                [name, secret] => (*name, *secret, false),
                [name, secret, "admin"] => (*name, *secret, true),
                _ => {
                    return Err(format!(
                        "{origin}: entry {}: expected `NAME TOKEN [admin]`",
                        n + 1
                    ))
                }
            };
            if secret.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "{origin}: token of '{name}' is {} characters; at least {MIN_TOKEN_LEN}",
                    secret.len()
                ));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(format!("{origin}: tenant '{name}' is listed twice"));
            }
            tokens.push(Token {
                name: name.to_string(),
                secret: secret.as_bytes().to_vec(),
                admin,
            });
        }
        Ok(Auth {
            tokens: Arc::new(tokens),
        })
    }

    /// Tokens from a file and/or the environment's value (both may be given).
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Auth, String> {
        let mut text = String::new();
        if let Some(f) = file {
            text = std::fs::read_to_string(f)
                .map_err(|e| format!("--auth-tokens-file {}: {e}", f.display()))?;
            text.push('\n');
        }
        if let Some(e) = env {
            text.push_str(e);
        }
        Auth::parse(&text, "auth tokens")
    }

    /// The caller of a request, from `authorization: Bearer <token>`.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?
            .as_bytes();
        // Compare with every token, without stopping at a match, so timing
        // says nothing about which (or how much of one) matched.
        let mut found: Option<&Token> = None;
        for t in self.tokens.iter() {
            if bool::from(t.secret.ct_eq(presented)) {
                found = Some(t);
            }
        }
        found
            .map(|t| Caller {
                tenant: t.name.clone(),
                admin: t.admin,
            })
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// A tonic interceptor: authenticates (when enabled) and, if `admin`,
    /// also requires an admin token.
    pub fn interceptor(
        &self,
        admin: bool,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |mut req: Request<()>| {
            if !auth.enabled() {
                return Ok(req);
            }
            let caller = auth.authenticate(&req)?;
            if admin && !caller.admin {
                return Err(Status::permission_denied(format!(
                    "tenant '{}' may not train models: this needs an admin token",
                    caller.tenant
                )));
            }
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }
}

/// The tenant a request runs as: None when authentication is off.
pub fn tenant<T>(req: &Request<T>) -> Option<String> {
    req.extensions().get::<Caller>().map(|c| c.tenant.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_parse_and_authenticate() {
        let auth = Auth::parse(
            "# tenants\nalice aaaaaaaaaaaaaaaaaaaa\nops oooooooooooooooooooo admin\n",
            "t",
        )
        .unwrap();
        assert!(auth.enabled());
        let a = auth
            .authenticate(&req(Some("aaaaaaaaaaaaaaaaaaaa")))
            .unwrap();
        assert_eq!((a.tenant.as_str(), a.admin), ("alice", false));
        assert!(
            auth.authenticate(&req(Some("oooooooooooooooooooo")))
                .unwrap()
                .admin
        );
        for bad in [None, Some("aaaaaaaaaaaaaaaaaaab"), Some("")] {
            let e = auth.authenticate(&req(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        let mut i = auth.interceptor(true);
        assert_eq!(
            i(req(Some("aaaaaaaaaaaaaaaaaaaa"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let ok = i(req(Some("oooooooooooooooooooo"))).unwrap();
        assert_eq!(tenant(&ok).as_deref(), Some("ops"));
        // Off: everything passes, no tenant.
        let mut open = Auth::default().interceptor(true);
        assert_eq!(tenant(&open(req(None)).unwrap()), None);
    }

    #[test]
    fn bad_token_lists_are_refused() {
        assert!(Auth::parse("alice short", "t")
            .unwrap_err()
            .contains("at least 16"));
        assert!(Auth::parse("alice aaaaaaaaaaaaaaaaaaaa root", "t").is_err());
        let dup = "a aaaaaaaaaaaaaaaaaaaa; a bbbbbbbbbbbbbbbbbbbb";
        assert!(Auth::parse(dup, "t").unwrap_err().contains("twice"));
        let env = Auth::load(
            None,
            Some("x xxxxxxxxxxxxxxxxxxxx; y yyyyyyyyyyyyyyyyyyyy admin"),
        )
        .unwrap();
        assert_eq!(format!("{env:?}"), r#"Auth { tenants: ["x", "y"] }"#);
    }
}
