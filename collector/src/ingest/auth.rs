//! Who may connect, and what each client may publish to.
//!
//! Authentication has three ways in, tried in this order:
//!
//! 1. a client certificate verified by the TLS listener: its common name
//!    (or subject alternative name) is the identity, and the client id must
//!    be that identity or empty (then it is assigned);
//! 2. a user name and password checked against `[[mqtt.users]]`, whose
//!    passwords are stored as Argon2 PHC strings (`weir-collector
//!    hash-password` makes one); the user name is the identity;
//! 3. anonymous, only on the plain listener and only when
//!    `mqtt.allow_anonymous` (or `--allow-anonymous`) is set.
//!
//! Password checks are deliberately slow (Argon2, ~19 MiB each), so they run
//! on [`PASSWORD_CHECKS_IN_FLIGHT`] threads of their own; an unknown user
//! costs the same check against a dummy hash, so timing does not tell which
//! user names exist.
//!
//! Authorisation: `[[mqtt.acl]]` entries give an identity (`"*"` for every
//! client, `"anonymous"` for clients without one) topic filters it may
//! publish to, where `%c` stands for the client id and `%u` for the identity.
//! A substituted value holding `/`, `+` or `#` (or a `%u` of an anonymous
//! client) makes that filter match nothing, so a client cannot widen its own
//! rule. With no entry at all, every connected client may publish anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::topics::{matches, valid_filter};

/// Password checks that may run at once (each takes a core and ~19 MiB for
/// tens of milliseconds): two, the cores of the machines we size for.
pub const PASSWORD_CHECKS_IN_FLIGHT: usize = 2;

/// One `[[mqtt.users]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// User name (the identity ACLs see).
    pub name: String,
    /// Argon2 PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$...`.
    pub password_hash: String,
}

/// One `[[mqtt.acl]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// `"*"`, `"anonymous"`, or an identity (user name or certificate name).
    pub identity: String,
    /// Topic filters this identity may publish to; `%c` = client id,
    /// `%u` = identity.
    pub publish: Vec<String>,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("hashing the password: {0}")]
pub struct HashError(argon2::password_hash::Error);

/// Hashes a password into an Argon2id PHC string for `[[mqtt.users]]`.
///
/// # Errors
/// [`HashError`] if Argon2 refuses the input (e.g. a password over its length
/// limit).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}

/// Password checks waiting for a checker thread, at most; a login beyond
/// waits (bounded by [`PASSWORD_CHECK_TIMEOUT`]).
pub const PASSWORD_QUEUE: usize = 256;
/// How long a login may wait for its password check.
pub const PASSWORD_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

struct Check {
    /// The user's hash; `None` for an unknown user (checked against a dummy).
    hash: Option<Arc<str>>,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// Checks user names and passwords.
///
/// The checks run on [`PASSWORD_CHECKS_IN_FLIGHT`] threads of their own,
/// started with the first check, rather than on the runtime's blocking pool:
/// each Argon2 check takes ~19 MiB, which the allocator keeps per thread, so
/// a few long-lived threads bound that memory where a pool of hundreds of
/// short-lived ones would not.
pub struct Authenticator {
    users: HashMap<String, Arc<str>>,
    checks: OnceLock<mpsc::Sender<Check>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("users", &self.users.len()).finish()
    }
}

impl Authenticator {
    /// Compiles `[[mqtt.users]]`.
    ///
    /// # Errors
    /// `(key, message)` for a duplicate user or a hash that is not an Argon2
    /// PHC string.
    pub fn new(users: &[UserEntry]) -> Result<Self, (String, String)> {
        let mut map = HashMap::with_capacity(users.len());
        for (i, u) in users.iter().enumerate() {
            if u.name.is_empty() {
                return Err((format!("mqtt.users[{i}].name"), "must not be empty".into()));
            }
            let parsed = PasswordHash::new(&u.password_hash).map_err(|e| {
                (
                    format!("mqtt.users[{i}].password_hash"),
                    format!("not a PHC string ({e}); make one with `weir-collector hash-password`"),
                )
            })?;
            if Algorithm::try_from(parsed.algorithm).is_err() {
                return Err((
                    format!("mqtt.users[{i}].password_hash"),
                    format!("algorithm {} is not argon2id/argon2i/argon2d", parsed.algorithm),
                ));
            }
            match Params::try_from(&parsed) {
                Ok(p) if p.m_cost() <= MAX_HASH_MEMORY_KIB => {}
                Ok(p) => {
                    return Err((
                        format!("mqtt.users[{i}].password_hash"),
                        format!("m={} KiB is more than {MAX_HASH_MEMORY_KIB} KiB", p.m_cost()),
                    ));
                }
                Err(e) => {
                    return Err((
                        format!("mqtt.users[{i}].password_hash"),
                        format!("parameters: {e}"),
                    ));
                }
            }
            if map.insert(u.name.clone(), Arc::from(u.password_hash.as_str())).is_some() {
                return Err((
                    format!("mqtt.users[{i}].name"),
                    format!("duplicate user {:?}", u.name),
                ));
            }
        }
        Ok(Self { users: map, checks: OnceLock::new() })
    }

    /// Whether any user is configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Takes as long for an unknown user;
    /// `false` as well when the check cannot be done in time.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let hash = self.users.get(user).cloned();
        let known = hash.is_some();
        let (reply, answer) = oneshot::channel();
        let check = Check { hash, password: password.to_owned(), reply };
        let sender = self.checks.get_or_init(start_checkers);
        let checked = async {
            sender.send(check).await.ok()?;
            answer.await.ok()
        };
        match tokio::time::timeout(PASSWORD_CHECK_TIMEOUT, checked).await {
            Ok(Some(ok)) => ok && known,
            Ok(None) => false,
            Err(_) => {
                tracing::warn!(
                    user,
                    "password check not done within {PASSWORD_CHECK_TIMEOUT:?}: too many logins at once"
                );
                false
            }
        }
    }
}

/// Starts the checker threads; they end when the sender is dropped.
fn start_checkers() -> mpsc::Sender<Check> {
    let (tx, rx) = mpsc::channel::<Check>(PASSWORD_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..PASSWORD_CHECKS_IN_FLIGHT {
        let rx = rx.clone();
        let spawned =
            std::thread::Builder::new().name(format!("weir-password-{i}")).spawn(move || {
                // Argon2's working memory, allocated once per thread and reused.
                let mut memory: Vec<Block> = Vec::new();
                loop {
                    // Hold the lock only to take a job, not while checking it.
                    let job = match rx.lock() {
                        Ok(mut rx) => rx.blocking_recv(),
                        Err(_) => None,
                    };
                    let Some(job) = job else { break };
                    let hash = job.hash.as_deref().unwrap_or(DUMMY_HASH);
                    let ok = verify_with_memory(hash, job.password.as_bytes(), &mut memory);
                    let _ = job.reply.send(ok);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a password checker thread");
        }
    }
    tx
}

/// What an unknown user's password is checked against, so that the check
/// costs the same as a real one (default Argon2id parameters).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$CeyNiYjnSYKa4F5Ir/oeYw$DJBpNvR+wJuFd0lXWyrr9QfOnEM4axIcGUzmKeK+G7I";

/// Most Argon2 memory a configured hash may ask for (its `m`, in KiB).
pub const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;

/// Checks `password` against a PHC string, in `memory` (grown as needed and
/// kept by the caller). The comparison is constant-time.
fn verify_with_memory(phc: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    if params.m_cost() > MAX_HASH_MEMORY_KIB {
        return false;
    }
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else { return false };
    let argon = Argon2::new(algorithm, version, params);
    if argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks]).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(out).is_ok_and(|o| o == expected)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Everyone,
    Anonymous,
    Identity(String),
}

/// Compiled `[[mqtt.acl]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<(Who, Vec<String>)>,
}

impl Acl {
    /// Compiles the entries.
    ///
    /// # Errors
    /// `(key, message)` for an invalid filter, named
    /// `mqtt.acl[i].publish[j]`.
    pub fn new(entries: &[AclEntry]) -> Result<Self, (String, String)> {
        let mut rules = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let who = match e.identity.as_str() {
                "*" => Who::Everyone,
                "anonymous" => Who::Anonymous,
                "" => return Err((format!("mqtt.acl[{i}].identity"), "must not be empty".into())),
                name => Who::Identity(name.to_owned()),
            };
            for (j, f) in e.publish.iter().enumerate() {
                if !valid_filter(&f.replace("%c", "x").replace("%u", "x")) {
                    return Err((
                        format!("mqtt.acl[{i}].publish[{j}]"),
                        format!("{f:?} is not a valid topic filter"),
                    ));
                }
            }
            rules.push((who, e.publish.clone()));
        }
        Ok(Self { rules })
    }

    /// Whether `topic` may be published by this client.
    pub fn allows(&self, client_id: &str, identity: Option<&str>, topic: &str) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let applies = |who: &Who| match who {
            Who::Everyone => true,
            Who::Anonymous => identity.is_none(),
            Who::Identity(name) => identity == Some(name.as_str()),
        };
        let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
        self.rules.iter().filter(|(who, _)| applies(who)).flat_map(|(_, f)| f).any(|filter| {
            let mut f = filter.clone();
            if f.contains("%c") {
                if !safe(client_id) {
                    return false;
                }
                f = f.replace("%c", client_id);
            }
            if f.contains("%u") {
                match identity {
                    Some(id) if safe(id) => f = f.replace("%u", id),
                    _ => return false,
                }
            }
            matches(&f, topic)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_against_phc_strings() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let auth = Authenticator::new(&[UserEntry { name: "dev".into(), password_hash: hash }])
            .expect("users");
        assert!(auth.verify("dev", "s3cret").await);
        assert!(!auth.verify("dev", "wrong").await);
        assert!(!auth.verify("nobody", "s3cret").await);
    }

    #[test]
    fn checks_in_reused_memory_agree_with_argon2() {
        let mut memory = Vec::new();
        let hash = hash_password("pw").expect("hash");
        assert!(verify_with_memory(&hash, b"pw", &mut memory));
        assert!(!verify_with_memory(&hash, b"pW", &mut memory));
        assert!(!verify_with_memory(DUMMY_HASH, b"pw", &mut memory));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_with_memory("garbage", b"pw", &mut memory));
    }

    #[test]
    fn bad_hashes_name_their_key() {
        let e =
            Authenticator::new(&[UserEntry { name: "a".into(), password_hash: "plain".into() }])
                .expect_err("not PHC");
        assert_eq!(e.0, "mqtt.users[0].password_hash");
    }

    #[test]
    fn acl_substitutes_client_id_and_identity() {
        let acl = Acl::new(&[
            AclEntry { identity: "*".into(), publish: vec!["weir/telemetry/%c".into()] },
            AclEntry { identity: "ops".into(), publish: vec!["weir/#".into()] },
            AclEntry { identity: "anonymous".into(), publish: vec!["weir/public/+".into()] },
            AclEntry { identity: "*".into(), publish: vec!["weir/users/%u/#".into()] },
        ])
        .expect("acl");
        assert!(acl.allows("dev1", Some("dev1"), "weir/telemetry/dev1"));
        assert!(!acl.allows("dev1", Some("dev1"), "weir/telemetry/dev2"));
        assert!(acl.allows("x", Some("ops"), "weir/anything/at/all"));
        assert!(acl.allows("x", None, "weir/public/k"));
        assert!(!acl.allows("x", Some("dev1"), "weir/public/k"));
        assert!(acl.allows("x", Some("alice"), "weir/users/alice/k"));
        assert!(!acl.allows("x", None, "weir/users/alice/k"));
        // A client id with wildcards or slashes cannot widen its rule.
        assert!(!acl.allows("+", Some("d"), "weir/telemetry/other"));
        assert!(!acl.allows("a/b", Some("d"), "weir/telemetry/a/b"));
        assert!(Acl::new(&[]).expect("open").allows("c", None, "any/topic"));
        let e = Acl::new(&[AclEntry { identity: "*".into(), publish: vec!["a/#/b".into()] }])
            .expect_err("bad filter");
        assert_eq!(e.0, "mqtt.acl[0].publish[0]");
    }
}
