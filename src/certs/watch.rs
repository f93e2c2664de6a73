//! When the certificate is reloaded: every hour, so a self-signed one is
//! renewed in time and a configured one that was replaced is picked up
//! anyway; and at once on SIGHUP, which is what operators (and certbot
//! deploy hooks) send after replacing a certificate.

use super::{CertError, GatewayCert};
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

/// Often enough that a renewal due at 30 days left is never late by more
/// than an hour; rare enough to cost nothing.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Registers for SIGHUP now (so that from this call on, SIGHUP reloads
/// instead of ending the process) and returns the task that reloads `cert`
/// on each SIGHUP and every `every`. The task holds the certificate weakly
/// and ends at its first wake-up after the certificate was dropped.
pub fn keep_fresh(
    cert: &Arc<GatewayCert>,
    every: Duration,
) -> Result<impl Future<Output = ()> + Send + 'static, CertError> {
    let mut hangup = signal(SignalKind::hangup()).map_err(CertError::Signal)?;
    let cert = Arc::downgrade(cert);
    Ok(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => debug!("periodic TLS certificate check"),
                // `None` only when the runtime's signal driver is gone; the
                // branch is then skipped and the timer still runs.
                Some(()) = hangup.recv() => info!("SIGHUP: reloading the TLS certificate"),
            }
            if !reload(&cert).await {
                return;
            }
        }
    })
}

/// One reload off the executor threads (file IO, key generation), its
/// failure logged. `false` once the certificate is gone.
async fn reload(cert: &Weak<GatewayCert>) -> bool {
    let Some(cert) = cert.upgrade() else {
        return false;
    };
    match tokio::task::spawn_blocking(move || cert.reload(OffsetDateTime::now_utc())).await {
        // The reload logged what changed and any expiry warning.
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "TLS certificate reload failed; keeping the current one"),
        Err(e) => warn!(error = %e, "TLS certificate reload task failed"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::tests::{write_pair, TempDir};
    use super::super::{CertSource, GatewayCert};
    use super::*;

    fn pair_in(dir: &TempDir, cn: &str) {
        let end = OffsetDateTime::now_utc() + time::Duration::days(90);
        write_pair(&dir.0.join("cert.pem"), &dir.0.join("key.pem"), cn, end);
    }

    fn load(dir: &TempDir) -> Arc<GatewayCert> {
        let source = CertSource::Files {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
        };
        Arc::new(GatewayCert::load(source, OffsetDateTime::now_utc()).unwrap())
    }

    async fn until_subject(cert: &GatewayCert, cn: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cert.info().subject.contains(cn) {
            assert!(tokio::time::Instant::now() < deadline, "never served {cn}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn sighup_reloads_at_once_and_the_task_ends_with_the_certificate() {
        let dir = TempDir::new();
        pair_in(&dir, "before");
        let cert = load(&dir);
        // An hour: only the signal can make it reload within the test.
        let task = tokio::spawn(keep_fresh(&cert, CHECK_EVERY).unwrap());
        pair_in(&dir, "after");
        // SAFETY: raise only sends a signal to this process, whose SIGHUP
        // handler keep_fresh has installed (the default would end it).
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        until_subject(&cert, "after").await;

        drop(cert);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends once the certificate is gone")
            .unwrap();
    }

    #[tokio::test]
    async fn the_periodic_check_picks_up_replaced_files() {
        let dir = TempDir::new();
        pair_in(&dir, "before");
        let cert = load(&dir);
        let _task = tokio::spawn(keep_fresh(&cert, Duration::from_millis(20)).unwrap());
        pair_in(&dir, "after");
        until_subject(&cert, "after").await;
    }
}
