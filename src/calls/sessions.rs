//! Which signaling sessions (browser tabs) each account has open, so that an
//! incoming call can ring all of them.
//!
//! [`SessionRegistry`] is the seam for several gateway nodes behind one SIP
//! address: a shared store (or SIP registration toward Kamailio) would answer
//! "which nodes hold a session of alice"; on one node the in-process
//! [`LocalSessions`] is the only implementation, and it also hands out the
//! event senders the calls write to.

use crate::calls::api::SessionEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Names one signaling session within this process (never reused).
pub type SessionKey = u64;

/// A session that can be rung.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub key: SessionKey,
    pub events: mpsc::Sender<SessionEvent>,
}

/// Where the sessions of an account are.
pub trait SessionRegistry: Send + Sync + 'static {
    /// A session of `account` opened; its events go to `events`.
    fn register(&self, account: &str, events: mpsc::Sender<SessionEvent>) -> SessionKey;
    /// The session closed.
    fn unregister(&self, account: &str, key: SessionKey);
    /// The open sessions of `account`, oldest first.
    fn sessions_of(&self, account: &str) -> Vec<SessionHandle>;
    /// How many sessions are open in all (for `/metrics`).
    fn count(&self) -> usize;
}

/// The in-process registry: a map from account name to its sessions.
#[derive(Debug, Default)]
pub struct LocalSessions {
    next: AtomicU64,
    by_account: Mutex<HashMap<String, Vec<SessionHandle>>>,
}

impl SessionRegistry for LocalSessions {
    fn register(&self, account: &str, events: mpsc::Sender<SessionEvent>) -> SessionKey {
        let key = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut map) = self.by_account.lock() {
            map.entry(account.to_string())
                .or_default()
                .push(SessionHandle { key, events });
        }
        key
    }

    fn unregister(&self, account: &str, key: SessionKey) {
        if let Ok(mut map) = self.by_account.lock() {
            if let Some(list) = map.get_mut(account) {
                list.retain(|s| s.key != key);
                if list.is_empty() {
                    map.remove(account);
                }
            }
        }
    }

    fn sessions_of(&self, account: &str) -> Vec<SessionHandle> {
        self.by_account
            .lock()
            .ok()
            .and_then(|map| map.get(account).cloned())
            .unwrap_or_default()
            .into_iter()
            // A session whose task ended but has not unregistered yet
            // cannot ring.
            .filter(|s| !s.events.is_closed())
            .collect()
    }

    fn count(&self) -> usize {
        self.by_account
            .lock()
            .map(|map| map.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_per_account_and_leave_cleanly() {
        let reg = LocalSessions::default();
        let (a1, _r1) = mpsc::channel(1);
        let (a2, _r2) = mpsc::channel(1);
        let (b1, _r3) = mpsc::channel(1);
        let k1 = reg.register("alice", a1);
        let k2 = reg.register("alice", a2);
        let k3 = reg.register("bob", b1);
        assert!(k1 != k2 && k2 != k3);
        let keys: Vec<_> = reg.sessions_of("alice").iter().map(|s| s.key).collect();
        assert_eq!(keys, [k1, k2]);
        assert_eq!(reg.count(), 3);
        reg.unregister("alice", k1);
        let keys: Vec<_> = reg.sessions_of("alice").iter().map(|s| s.key).collect();
        assert_eq!(keys, [k2]);
        reg.unregister("alice", k2);
        assert!(reg.sessions_of("alice").is_empty());
        assert!(reg.sessions_of("carol").is_empty());
        assert_eq!(reg.count(), 1);
    }

    #[test]
    fn a_closed_session_does_not_ring() {
        let reg = LocalSessions::default();
        let (tx, rx) = mpsc::channel(1);
        reg.register("alice", tx);
        drop(rx);
        assert!(reg.sessions_of("alice").is_empty());
    }
}
