//! Bearer tokens and roles (API.md, "Security"), as one tower layer around
//! every call, health checks and reflection included.
//!
//! The tokens file (`--auth-tokens PATH`) has one token per line,
//! `ROLE NAME SHA256HEX`: the role, a name for the logs, and the hex SHA-256
//! of the secret token; `#` starts a comment. The server keeps only the
//! hashes. A caller sends `authorization: Bearer TOKEN`; the layer hashes the
//! token and compares it with every hash in constant time.
//!
//! - `grpc.health.v1.Health` is open to all, with or without a token.
//! - Reflection needs a valid token of any role.
//! - Every other call needs a valid token (else UNAUTHENTICATED) whose role
//!   may make it (else PERMISSION_DENIED), as [`METHODS`] says. A method it
//!   does not list is for `admin` only.
//!
//! Without a tokens file the layer lets every call through (the caller of
//! [`crate::startup::Application::build`] decides whether that is allowed).
//! [`TokenFile::reload`] (on SIGHUP) swaps in a new file only if it parses.
//! Neither tokens nor their hashes are ever logged or put in an error message.

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response, header::AUTHORIZATION};
use pin_project_lite::pin_project;
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// Registers contacts and reads what that needs.
    Intake,
    /// Works the contacts (accept, transfer, close) and reads everything.
    Desk,
    /// Reads everything.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Intake, Role::Desk, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Intake => "intake",
            Self::Desk => "desk",
            Self::Viewer => "viewer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    const fn of(roles: &[Role]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= roles[i].bit();
            i += 1;
        }
        Self(bits)
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }
}

const ADMIN: Roles = Roles::of(&[Role::Admin]);
/// Every Get, List and Watch call, and GetOperatorStats.
const READ: Roles = Roles::of(&[Role::Admin, Role::Desk, Role::Viewer]);
/// The reads an intake needs besides.
const READ_AND_INTAKE: Roles = Roles::of(&[Role::Admin, Role::Intake, Role::Desk, Role::Viewer]);
const INTAKE: Roles = Roles::of(&[Role::Admin, Role::Intake]);
const DESK: Roles = Roles::of(&[Role::Admin, Role::Desk]);

/// Who may call each method of the service, by its full path. It names the
/// methods the contract describes before they exist in `proto/`, so they are
/// covered when they land; a unit test checks that every method in `proto/`
/// is here.
pub const METHODS: &[(&str, Roles)] = &[
    ("/minicrm.v1.OperatorService/CreateOperator", ADMIN),
    ("/minicrm.v1.OperatorService/GetOperator", READ),
    ("/minicrm.v1.OperatorService/ListOperators", READ),
    ("/minicrm.v1.OperatorService/UpdateOperator", ADMIN),
    ("/minicrm.v1.OperatorService/ReleaseOperatorContacts", ADMIN),
    ("/minicrm.v1.SourceService/CreateSource", ADMIN),
    ("/minicrm.v1.SourceService/UpdateSource", ADMIN),
    ("/minicrm.v1.SourceService/GetSource", READ_AND_INTAKE),
    ("/minicrm.v1.SourceService/ListSources", READ),
    ("/minicrm.v1.SourceService/SetSourceOperators", ADMIN),
    ("/minicrm.v1.SourceService/ListSourceOperators", READ),
    ("/minicrm.v1.ContactService/RegisterContact", INTAKE),
    ("/minicrm.v1.ContactService/GetContact", READ_AND_INTAKE),
    ("/minicrm.v1.ContactService/ListContacts", READ),
    ("/minicrm.v1.ContactService/CloseContact", DESK),
    ("/minicrm.v1.ContactService/AcceptContact", DESK),
    ("/minicrm.v1.ContactService/TransferContact", DESK),
    ("/minicrm.v1.ContactService/ListContactEvents", READ),
    ("/minicrm.v1.ContactService/WatchContactEvents", READ),
    ("/minicrm.v1.ContactService/GetLead", READ_AND_INTAKE),
    ("/minicrm.v1.ContactService/ListLeads", READ),
    ("/minicrm.v1.ContactService/GetOperatorStats", READ),
];

/// Who may make a call, by its request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token.
    Open,
    /// Any valid token.
    AnyRole,
    /// A valid token of one of these roles.
    Roles(Roles),
}

pub fn access(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.Health/") {
        return Access::Open;
    }
    if path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        return Access::AnyRole;
    }
    let roles = METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map_or(ADMIN, |&(_, roles)| roles);
    Access::Roles(roles)
}

/// One line of the tokens file.
struct Token {
    role: Role,
    name: Arc<str>,
    hash: [u8; 32],
}

/// The caller of an authenticated call: put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
}

/// A parsed tokens file.
pub struct Tokens {
    entries: Vec<Token>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and roles only: hashes stay out of every log.
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|token| format!("{} {}", token.role, token.name)),
            )
            .finish()
    }
}

/// Why a tokens file cannot be used. Never contains a token or a hash.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

impl Tokens {
    /// Parses the text of a tokens file: `ROLE NAME SHA256HEX` per line,
    /// `#` to the end of a line is a comment, blank lines are skipped. The
    /// same hash twice is an error (which role would it have?); the same name
    /// twice is not (an old and a new token while rotating).
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut entries: Vec<Token> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let error = |reason: &str| TokensError::Line {
                line: number,
                reason: reason.to_owned(),
            };
            let content = line.split_once('#').map_or(line, |(before, _)| before);
            let fields: Vec<&str> = content.split_whitespace().collect();
            match fields.as_slice() {
                [] => continue,
                [role, name, hash] => {
                    let role = Role::parse(role)
                        .ok_or_else(|| error("the role must be admin, intake, desk or viewer"))?;
                    let hash = decode_sha256_hex(hash).ok_or_else(|| {
                        error(
                            "the third field must be the SHA-256 of the token as 64 hex digits \
                             (as sha256sum prints it), not the token itself",
                        )
                    })?;
                    if let Some(first) = entries
                        .iter()
                        .position(|token| bool::from(token.hash.ct_eq(&hash)))
                    {
                        return Err(TokensError::Line {
                            line: number,
                            reason: format!("the same token as line {}", lines_of[first]),
                        });
                    }
                    entries.push(Token {
                        role,
                        name: Arc::from(*name),
                        hash,
                    });
                    lines_of.push(number);
                }
                fields => {
                    return Err(TokensError::Line {
                        line: number,
                        reason: format!(
                            "expected ROLE NAME SHA256HEX, found {} fields",
                            fields.len()
                        ),
                    });
                }
            }
        }
        Ok(Self { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token this is. Hashes it and compares the hash with
    /// every entry, each in constant time and without stopping at a match.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut found = None;
        for token in &self.entries {
            if bool::from(token.hash.as_slice().ct_eq(presented.as_ref())) {
                found = Some(token);
            }
        }
        found.map(|token| Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(hash)
}

/// The tokens file and the tokens last loaded from it.
pub struct TokenFile {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("tokens", &self.tokens().len())
            .finish()
    }
}

impl TokenFile {
    /// Reads and parses the file: the server does not start with a file it
    /// cannot use.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let tokens = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(tokens)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again and uses it from the next call on, if it parses;
    /// if not, keeps the tokens it had. Returns how many tokens it has now.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let tokens = read(&self.path)?;
        let count = tokens.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
        Ok(count)
    }

    /// [`reload`](Self::reload), logging the outcome (never a token).
    pub fn reload_and_log(&self) {
        let path = self.path.display();
        match self.reload() {
            Ok(0) => tracing::warn!(
                %path,
                "reloaded the tokens file: it has no tokens, so every call but health checks is refused"
            ),
            Ok(tokens) => tracing::info!(%path, tokens, "reloaded the tokens file"),
            Err(error) => tracing::error!(
                %path,
                %error,
                kept = self.tokens().len(),
                "cannot reload the tokens file: keeping the tokens loaded before"
            ),
        }
    }
}

fn read(path: &Path) -> Result<Tokens, TokensError> {
    let text = std::fs::read_to_string(path).map_err(|error| TokensError::Read {
        path: path.to_owned(),
        error,
    })?;
    Tokens::parse(&text)
}

/// The token of `authorization: Bearer TOKEN` (the scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Decides a call: `Ok(None)` for an open one, `Ok(Some(caller))` for an
/// allowed one, or the status to answer.
pub fn authorize(
    tokens: &Tokens,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<Caller>, Status> {
    let access = access(path);
    if access == Access::Open {
        return Ok(None);
    }
    let Some(token) = bearer_token(headers) else {
        tracing::debug!("refused: no bearer token");
        return Err(Status::unauthenticated(
            "missing bearer token: send the header `authorization: Bearer TOKEN`",
        ));
    };
    let Some(caller) = tokens.authenticate(token) else {
        tracing::debug!("refused: unknown token");
        return Err(Status::unauthenticated("unknown bearer token"));
    };
    match access {
        Access::Roles(roles) if !roles.contains(caller.role) => {
            tracing::debug!(caller = %caller.name, role = %caller.role, "refused: role may not make this call");
            let method = path.strip_prefix('/').unwrap_or(path);
            Err(Status::permission_denied(format!(
                "role {} may not call {method}",
                caller.role
            )))
        }
        _ => {
            tracing::debug!(caller = %caller.name, role = %caller.role, "authenticated");
            Ok(Some(caller))
        }
    }
}

/// Wraps a service (tonic's router) in [`Auth`]. Without a tokens file it
/// lets every call through.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<TokenFile>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<TokenFile>>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Answers a call that its token does not allow itself; passes the others on
/// with their [`Caller`] in the request's extensions.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<TokenFile>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(file) = &self.tokens {
            match authorize(&file.tokens(), request.uri().path(), request.headers()) {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(status) => {
                    return AuthFuture::Refused {
                        response: Some(status.into_http()),
                    };
                }
            }
        }
        AuthFuture::Inner {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The inner service's answer, or the refusal.
    #[project = AuthFutureProjection]
    pub enum AuthFuture<F, B> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProjection::Inner { future } => future.poll(cx),
            AuthFutureProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("an AuthFuture is not polled after it is ready"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    fn sha256_hex(token: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn every_method_in_the_protos_has_its_roles() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let listed: BTreeSet<&str> = METHODS.iter().map(|(path, _)| *path).collect();
        assert_eq!(listed.len(), METHODS.len(), "a method is listed twice");
        let mut seen = 0;
        for file in set.file.iter().filter(|f| f.package() == "minicrm.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/minicrm.v1.{}/{}", service.name(), method.name());
                    assert!(
                        listed.contains(path.as_str()),
                        "{path} is not in auth::METHODS: say which roles may call it"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 16, "the protos have the service's methods: {seen}");
    }

    #[test]
    fn the_table_follows_the_contract() {
        // API.md: intake has four calls; desk has accept, transfer, close
        // and every read; viewer every read; admin everything.
        for &(path, roles) in METHODS {
            let method = path.rsplit('/').next().unwrap();
            let read = ["Get", "List", "Watch"]
                .iter()
                .any(|prefix| method.starts_with(prefix));
            let intake = matches!(
                method,
                "RegisterContact" | "GetSource" | "GetContact" | "GetLead"
            );
            let desk =
                read || matches!(method, "AcceptContact" | "TransferContact" | "CloseContact");
            assert!(roles.contains(Role::Admin), "{path}");
            assert_eq!(roles.contains(Role::Intake), intake, "{path}");
            assert_eq!(roles.contains(Role::Desk), desk, "{path}");
            assert_eq!(roles.contains(Role::Viewer), read, "{path}");
        }
    }

    #[test]
    fn health_is_open_reflection_needs_any_role_the_rest_by_table() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::AnyRole
        );
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::AnyRole
        );
        assert_eq!(
            access("/minicrm.v1.ContactService/RegisterContact"),
            Access::Roles(INTAKE)
        );
        // Unlisted methods, and paths that only look like health: admin only.
        assert_eq!(
            access("/minicrm.v1.ContactService/Nothing"),
            Access::Roles(ADMIN)
        );
        assert_eq!(
            access("/grpc.health.v1.HealthX/Check"),
            Access::Roles(ADMIN)
        );
        assert_eq!(access(""), Access::Roles(ADMIN));
    }

    #[test]
    fn tokens_file_parses_roles_names_hashes_and_comments() {
        let text = format!(
            "# role name sha256\n\
             \n\
             admin   ops-root   {}   # the break-glass token\n\
             \tintake bot-gateway {}\n\
             desk alice {}\n\
             viewer grafana {}\n\
             desk alice {}  # alice's next token\n",
            sha256_hex("root-secret"),
            sha256_hex("gateway-secret").to_uppercase(),
            sha256_hex("alice-secret"),
            sha256_hex("grafana-secret"),
            sha256_hex("alice-secret-2"),
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 5);
        let caller = |token: &str| {
            tokens
                .authenticate(token)
                .map(|c| (c.role, c.name.to_string()))
        };
        assert_eq!(
            caller("root-secret"),
            Some((Role::Admin, "ops-root".into()))
        );
        assert_eq!(
            caller("gateway-secret"),
            Some((Role::Intake, "bot-gateway".into()))
        );
        assert_eq!(caller("alice-secret"), Some((Role::Desk, "alice".into())));
        assert_eq!(caller("alice-secret-2"), Some((Role::Desk, "alice".into())));
        assert_eq!(
            caller("grafana-secret"),
            Some((Role::Viewer, "grafana".into()))
        );
        assert_eq!(caller("root-secret "), None);
        assert_eq!(caller(""), None);
        assert_eq!(
            caller(&sha256_hex("root-secret")),
            None,
            "the hash is not the token"
        );
        assert!(Tokens::parse("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn bad_tokens_files_say_which_line_and_never_echo_a_secret() {
        let hash = sha256_hex("secret");
        let cases = [
            (
                format!("admin ops {hash}\nroot ops2 {}\n", sha256_hex("x")),
                2,
                "role",
            ),
            (
                "admin ops hunter2-the-token\n".to_owned(),
                1,
                "64 hex digits",
            ),
            (format!("admin ops {}\n", &hash[..63]), 1, "64 hex digits"),
            (format!("admin ops {}g\n", &hash[..63]), 1, "64 hex digits"),
            (
                format!("admin {hash}\n"),
                1,
                "expected ROLE NAME SHA256HEX, found 2 fields",
            ),
            (format!("admin a b {hash}\n"), 1, "found 4 fields"),
            ("hunter2-the-token\n".to_owned(), 1, "found 1 fields"),
            (
                format!("admin a {hash}\n# x\nviewer b {}\n", hash.to_uppercase()),
                3,
                "same token as line 1",
            ),
        ];
        for (text, line, reason) in cases {
            let error = Tokens::parse(&text).expect_err(&text).to_string();
            assert!(error.starts_with(&format!("line {line}: ")), "{error}");
            assert!(error.contains(reason), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
            assert!(!error.to_lowercase().contains(&hash[..16]), "{error}");
        }
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("BEARER abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn authorize_answers_unauthenticated_then_permission_denied() {
        let tokens = Tokens::parse(&format!(
            "viewer v {}\nintake i {}\n",
            sha256_hex("v-token"),
            sha256_hex("i-token")
        ))
        .unwrap();
        let register = "/minicrm.v1.ContactService/RegisterContact";
        let code = |path: &str, headers: &HeaderMap| {
            authorize(&tokens, path, headers).map_err(|status| status.code())
        };
        assert_eq!(
            code(register, &HeaderMap::new()),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(register, &headers("Bearer nope")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(register, &headers("Bearer v-token")),
            Err(tonic::Code::PermissionDenied)
        );
        let caller = authorize(&tokens, register, &headers("Bearer i-token"))
            .unwrap()
            .unwrap();
        assert_eq!((caller.role, &*caller.name), (Role::Intake, "i"));
        assert_eq!(
            code("/grpc.health.v1.Health/Check", &HeaderMap::new()),
            Ok(None)
        );
        assert_eq!(
            code("/grpc.health.v1.Health/Check", &headers("Bearer nope")),
            Ok(None)
        );
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(
            code(reflection, &HeaderMap::new()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(
            code(reflection, &headers("Bearer v-token"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn reload_keeps_the_old_tokens_when_the_new_file_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("admin a {}\n", sha256_hex("one"))).unwrap();
        let file = TokenFile::load(&path).unwrap();
        assert!(file.tokens().authenticate("one").is_some());

        std::fs::write(&path, format!("viewer b {}\n", sha256_hex("two"))).unwrap();
        assert_eq!(file.reload().unwrap(), 1);
        assert!(file.tokens().authenticate("one").is_none());
        assert_eq!(
            file.tokens().authenticate("two").unwrap().role,
            Role::Viewer
        );

        std::fs::write(&path, "viewer b\n").unwrap();
        assert!(matches!(
            file.reload(),
            Err(TokensError::Line { line: 1, .. })
        ));
        assert!(file.tokens().authenticate("two").is_some(), "kept");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(file.reload(), Err(TokensError::Read { .. })));
        assert!(file.tokens().authenticate("two").is_some(), "kept");
        assert!(TokenFile::load(&path).is_err());
    }

    #[test]
    fn debug_output_shows_no_hash() {
        let hash = sha256_hex("secret");
        let tokens = Tokens::parse(&format!("admin ops {hash}\n")).unwrap();
        let shown = format!("{tokens:?}");
        assert!(shown.contains("admin ops"), "{shown}");
        assert!(!shown.contains(&hash[..8]), "{shown}");
    }
}
