//! Sessions: one live connection per client id, and what a persistent
//! session keeps between connections.
//!
//! When a client id connects again, the new connection takes the session
//! over: the old connection is told to stop (MQTT 5 clients get DISCONNECT
//! "session taken over"), finishes the appends it has started, and only then
//! does the new connection proceed. So a reconnecting client's publishes are
//! appended after everything its previous connection appended, and per-key
//! order holds across reconnects.
//!
//! The only state a session carries is the set of QoS 2 packet ids received
//! and acknowledged with PUBREC but not yet released by PUBREL: a publish
//! re-sent with one of them is a duplicate and is not appended again. It
//! survives a reconnect when the client asks for a persistent session (3.1.1
//! clean session = 0; MQTT 5 session expiry > 0), in memory only, for at most
//! [`MAX_STORED_SESSIONS`] disconnected clients (the oldest are dropped).
//!
//! A client id belongs to the identity that first used it while its session
//! lives: another identity presenting it is refused, so one device cannot
//! disconnect another by borrowing its client id.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Disconnected persistent sessions kept in memory, at most.
pub const MAX_STORED_SESSIONS: usize = 100_000;
/// How long a new connection waits for the connection it takes over to
/// finish its appends.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// What a session carries between connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// QoS 2 packet ids received (PUBREC sent) and not yet released.
    pub qos2_received: HashSet<u16>,
}

/// Why a session could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The client id's live session belongs to another identity.
    #[error("client id {0:?} is in use by another identity")]
    OwnedByOther(String),
    /// The connection being taken over did not finish in time.
    #[error(
        "the previous connection of client id {0:?} did not finish within {TAKEOVER_TIMEOUT:?}"
    )]
    TakeoverTimeout(String),
}

#[derive(Debug)]
struct Active {
    id: u64,
    takeover: CancellationToken,
    finished: watch::Receiver<()>,
}

#[derive(Debug)]
struct Stored {
    state: SessionState,
    expires: Option<Instant>,
    stored_at: Instant,
}

#[derive(Debug, Default)]
struct Slot {
    owner: Option<String>,
    active: Option<Active>,
    stored: Option<Stored>,
}

/// The registry of sessions by client id.
#[derive(Debug, Default)]
pub struct Sessions {
    slots: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
}

/// A connection's hold on its session. Dropping it without
/// [`Sessions::detach`] detaches it without keeping state.
#[derive(Debug)]
pub struct Attached {
    /// This connection's number in the registry.
    pub id: u64,
    /// Whether a stored session was resumed.
    pub session_present: bool,
    /// The resumed state (empty for a new session).
    pub state: SessionState,
    /// Cancelled when another connection takes the session over.
    pub takeover: CancellationToken,
    /// Dropped when the connection is done; a connection taking over waits
    /// for that.
    finished: Option<watch::Sender<()>>,
}

impl Sessions {
    /// Attaches a connection to the session of `client_id`, taking it over
    /// from a live connection if there is one (waiting for that one to
    /// finish). `clean_start` discards a stored session.
    ///
    /// # Errors
    /// [`AttachError::OwnedByOther`] if another identity holds the client id;
    /// [`AttachError::TakeoverTimeout`] if the old connection does not finish.
    pub async fn attach(
        &self,
        client_id: &str,
        owner: Option<&str>,
        clean_start: bool,
    ) -> Result<Attached, AttachError> {
        loop {
            let mut finished = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let slot = slots.entry(client_id.to_owned()).or_default();
                // A connection that ended without detaching (it panicked)
                // left its slot behind with a closed channel: drop it.
                if slot.active.as_ref().is_some_and(|a| a.finished.has_changed().is_err()) {
                    slot.active = None;
                }
                let held = slot.active.is_some() || slot.stored.is_some();
                if held && slot.owner.as_deref() != owner {
                    return Err(AttachError::OwnedByOther(client_id.to_owned()));
                }
                match &slot.active {
                    Some(active) => {
                        active.takeover.cancel();
                        active.finished.clone()
                    }
                    None => {
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(());
                        let takeover = CancellationToken::new();
                        slot.owner = owner.map(str::to_owned);
                        slot.active = Some(Active { id, takeover: takeover.clone(), finished: rx });
                        let now = Instant::now();
                        let stored =
                            slot.stored.take().filter(|s| s.expires.is_none_or(|e| e > now));
                        let (session_present, state) = match stored {
                            Some(s) if !clean_start => (true, s.state),
                            _ => (false, SessionState::default()),
                        };
                        return Ok(Attached {
                            id,
                            session_present,
                            state,
                            takeover,
                            finished: Some(tx),
                        });
                    }
                }
            };
            let wait = async { while finished.changed().await.is_ok() {} };
            tokio::time::timeout(TAKEOVER_TIMEOUT, wait)
                .await
                .map_err(|_| AttachError::TakeoverTimeout(client_id.to_owned()))?;
            // The old connection detached; look again (another connection
            // may have raced us to the slot).
        }
    }

    /// Detaches a connection, keeping `keep` (state and how long it lives;
    /// `None` = until evicted) for the client's next connection.
    pub fn detach(
        &self,
        client_id: &str,
        mut attached: Attached,
        keep: Option<(SessionState, Option<Duration>)>,
    ) {
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get_mut(client_id)
                && slot.active.as_ref().is_some_and(|a| a.id == attached.id)
            {
                slot.active = None;
                let now = Instant::now();
                slot.stored = keep.map(|(state, ttl)| Stored {
                    state,
                    expires: ttl.map(|t| now + t),
                    stored_at: now,
                });
                if slot.stored.is_none() {
                    slots.remove(client_id);
                } else {
                    evict_beyond_capacity(&mut slots);
                }
            }
        }
        // Only now may a connection waiting to take over go on.
        attached.finished.take();
    }

    /// Live connections and stored sessions, for tests and metrics.
    pub fn counts(&self) -> (usize, usize) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let live = slots.values().filter(|s| s.active.is_some()).count();
        let stored = slots.values().filter(|s| s.stored.is_some()).count();
        (live, stored)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // A connection that ends without `detach` (a panic) still releases
        // the waiters; `attach` drops the stale slot it leaves.
        self.finished.take();
    }
}

fn evict_beyond_capacity(slots: &mut HashMap<String, Slot>) {
    let stored = slots.values().filter(|s| s.stored.is_some() && s.active.is_none()).count();
    if stored <= MAX_STORED_SESSIONS {
        return;
    }
    let now = Instant::now();
    let mut candidates: Vec<(Instant, String)> = slots
        .iter()
        .filter(|(_, s)| s.active.is_none())
        .filter_map(|(k, s)| s.stored.as_ref().map(|st| (st.stored_at, k.clone())))
        .collect();
    candidates.sort();
    let excess = stored - MAX_STORED_SESSIONS;
    for (_, key) in candidates.into_iter().take(excess) {
        slots.remove(&key);
    }
    slots.retain(|_, s| {
        s.active.is_some() || s.stored.as_ref().is_some_and(|st| st.expires.is_none_or(|e| e > now))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takeover_waits_for_the_old_connection() {
        let sessions = std::sync::Arc::new(Sessions::default());
        let first = sessions.attach("c", Some("dev"), false).await.expect("first");
        assert!(!first.session_present);
        let s2 = sessions.clone();
        let second = tokio::spawn(async move { s2.attach("c", Some("dev"), false).await });
        first.takeover.cancelled().await;
        let mut state = SessionState::default();
        state.qos2_received.insert(7);
        sessions.detach("c", first, Some((state.clone(), None)));
        let second = second.await.expect("join").expect("second");
        assert!(second.session_present);
        assert_eq!(second.state, state);
        sessions.detach("c", second, None);
        assert_eq!(sessions.counts(), (0, 0));
    }

    #[tokio::test]
    async fn another_identity_cannot_take_a_client_id() {
        let sessions = Sessions::default();
        let a = sessions.attach("c", Some("alice"), true).await.expect("alice");
        assert_eq!(
            sessions.attach("c", Some("mallory"), true).await.expect_err("refused"),
            AttachError::OwnedByOther("c".into())
        );
        sessions.detach("c", a, None);
        sessions.attach("c", Some("mallory"), true).await.expect("free again");
    }

    #[tokio::test]
    async fn clean_start_and_expiry_discard_state() {
        let sessions = Sessions::default();
        let a = sessions.attach("c", None, false).await.expect("a");
        sessions.detach("c", a, Some((SessionState::default(), None)));
        let b = sessions.attach("c", None, true).await.expect("b");
        assert!(!b.session_present);
        sessions.detach("c", b, Some((SessionState::default(), Some(Duration::ZERO))));
        let c = sessions.attach("c", None, false).await.expect("c");
        assert!(!c.session_present, "expired");
        drop(c);
    }
}
