//! The B2BUA: one task per call owns that call's SIP dialog and media relay;
//! browser sessions hand it commands through channels. There is no global
//! lock around calls: a session only knows the command senders of its own
//! calls.

pub mod api;
pub mod directory;
pub mod outgoing;
#[cfg(test)]
mod tests;

use crate::media::MediaEngine;
use crate::sip::transport::SipEndpoint;
use crate::stats::CallStats;
use crate::types::{AccountName, CallId};
use api::{CallControl, SessionCommand, SessionControl, SessionEvent};
use directory::Directory;
use outgoing::{CallCommand, OutgoingRequest};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};

/// What every call task needs, shared read-only.
pub struct CallsContext {
    pub directory: Directory,
    pub sip: SipEndpoint,
    pub media: MediaEngine,
    pub public_ip: IpAddr,
    pub stats: Arc<CallStats>,
}

/// The call layer as signaling and `main` see it.
#[derive(Clone)]
pub struct Calls {
    ctx: Arc<CallsContext>,
    /// Every call task, so shutdown can wait for their BYEs.
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
    /// Every call's command sender, weak so that only the browser session
    /// keeps a call's channel open (its closing is the call's hangup);
    /// shutdown upgrades them to hang every call up.
    live: Arc<std::sync::Mutex<Vec<mpsc::WeakUnboundedSender<CallCommand>>>>,
    accepting: Arc<AtomicBool>,
}

impl Calls {
    pub fn new(ctx: CallsContext) -> Calls {
        Calls {
            ctx: Arc::new(ctx),
            tasks: Arc::default(),
            live: Arc::default(),
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn active_calls(&self) -> usize {
        self.live
            .lock()
            .map(|live| {
                live.iter()
                    .filter(|tx| tx.upgrade().is_some_and(|tx| !tx.is_closed()))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stops taking new calls, hangs up the others (BYE/CANCEL) and waits up
    /// to `grace` for their dialogs to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Ok(live) = self.live.lock() {
            for tx in live.iter().filter_map(|tx| tx.upgrade()) {
                let _ = tx.send(CallCommand::Shutdown);
            }
        }
        let mut tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return,
        };
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    }

    fn spawn_call(&self, req: OutgoingRequest) -> mpsc::UnboundedSender<CallCommand> {
        let (tx, rx) = mpsc::unbounded_channel();
        let span = info_span!("call", call_id = %req.id, account = %req.account.name, direction = "outgoing");
        let ctx = self.ctx.clone();
        let stats = self.ctx.stats.clone();
        stats.call_started();
        let task = async move {
            outgoing::run(ctx, req, rx).await;
            stats.call_ended();
        }
        .instrument(span);
        if let Ok(mut tasks) = self.tasks.lock() {
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
        if let Ok(mut live) = self.live.lock() {
            live.retain(|tx| tx.upgrade().is_some());
            live.push(tx.downgrade());
        }
        tx
    }
}

impl CallControl for Calls {
    fn attach(
        &self,
        account: AccountName,
        events: mpsc::Sender<SessionEvent>,
    ) -> Box<dyn SessionControl> {
        Box::new(Session {
            calls: self.clone(),
            account,
            events,
            calls_by_id: HashMap::new(),
        })
    }
}

/// The most calls one browser session may have at once.
const MAX_CALLS_PER_SESSION: usize = 4;

/// One browser session's view of its calls. Dropping it (the socket closed)
/// drops the command senders, which each call task takes as a hangup.
struct Session {
    calls: Calls,
    account: AccountName,
    events: mpsc::Sender<SessionEvent>,
    calls_by_id: HashMap<CallId, mpsc::UnboundedSender<CallCommand>>,
}

impl Session {
    fn error(&self, id: Option<CallId>, code: u16, message: impl Into<String>) {
        // try_send: command() must not block; a full queue means the browser
        // is not reading, and losing an error message is then acceptable.
        let _ = self.events.try_send(SessionEvent::Error {
            id,
            code,
            message: message.into(),
        });
    }
}

impl SessionControl for Session {
    fn command(&mut self, cmd: SessionCommand) {
        self.calls_by_id.retain(|_, tx| !tx.is_closed());
        match cmd {
            SessionCommand::Call { id, to, sdp } => {
                if !self.calls.accepting.load(Ordering::SeqCst) {
                    return self.error(Some(id), 503, "the gateway is shutting down");
                }
                if self.calls_by_id.contains_key(&id) {
                    return self.error(Some(id), 409, "a call with this id already exists");
                }
                if self.calls_by_id.len() >= MAX_CALLS_PER_SESSION {
                    return self.error(Some(id), 429, "too many calls on this session");
                }
                let Some(account) = self.calls.ctx.directory.account(&self.account.0) else {
                    return self.error(Some(id), 403, "account is not configured");
                };
                let tx = self.calls.spawn_call(OutgoingRequest {
                    id: id.clone(),
                    to,
                    sdp,
                    account,
                    events: self.events.clone(),
                });
                self.calls_by_id.insert(id, tx);
            }
            SessionCommand::Hangup { id } => match self.calls_by_id.get(&id) {
                Some(tx) => {
                    let _ = tx.send(CallCommand::Hangup);
                }
                None => self.error(Some(id), 404, "no call with this id"),
            },
        }
    }
}
