//! What `check-config` says about certificates: each one's subject, expiry
//! and days left, a warning when fewer than 30 days remain, a problem when a
//! configured file cannot be used.

use super::files::{describe, load_pair, read_certificates};
use super::renewal::{days_left, RENEW_BEFORE};
use super::x509::rfc3339;
use super::{server_config, CertError, CERT_FILE};
use crate::config::{Config, Problem};
use std::path::Path;
use time::OffsetDateTime;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A certificate's facts.
    Info(String),
    /// Needs attention soon; the config is still valid.
    Warning(String),
    /// The config cannot run as it is.
    Problem(Problem),
}

/// Every certificate the config uses, at `now`: the configured
/// `server.tls_cert` (with its key checked) or the generated one in
/// `data_dir` if there is one yet, and each trunk's `ca_file`. Meant to be
/// printed after [`Config::problems`], whose findings it does not repeat.
pub fn check_certificates(config: &Config, now: OffsetDateTime) -> Vec<Finding> {
    let mut out = Vec::new();
    let server = &config.server;
    match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => {
            // The same load as `run` does: the key must parse and match.
            let listed = load_pair(cert, key, &server_config::provider()).and_then(|_| {
                let action = "replace it, then send SIGHUP (or restart)";
                list(&mut out, "server.tls_cert", cert, now, action)
            });
            if let Err(e) = listed {
                out.push(problem("server.tls_cert", e));
            }
        }
        (None, None) => {
            let path = server.data_dir.join(CERT_FILE);
            let label = "generated certificate";
            if !path.exists() {
                out.push(Finding::Info(format!(
                    "{label} ({}): none yet; `run` makes one",
                    path.display()
                )));
            } else {
                let action =
                    "the running gateway renews it within the hour (or at SIGHUP, or at start)";
                if let Err(e) = list(&mut out, label, &path, now, action) {
                    // Not a problem: `run` replaces an unusable one.
                    out.push(Finding::Warning(format!(
                        "{label}: {e}; `run` replaces it with a new one"
                    )));
                }
            }
        }
        // Half a pair: config.problems() reports it.
        _ => {}
    }
    for (i, trunk) in config.trunks.iter().enumerate() {
        if let Some(path) = &trunk.ca_file {
            let key = format!("trunks[{i}].ca_file");
            let action = "trunk certificates it signed are refused once it has run out";
            match list(&mut out, &key, path, now, action) {
                // An unreadable file is among config.problems() already
                // (the SIP TLS client reads it there).
                Ok(()) | Err(CertError::Read { .. } | CertError::Pem { .. }) => {}
                Err(e) => out.push(problem(&key, e)),
            }
        }
    }
    out
}

fn problem(key: &str, e: CertError) -> Finding {
    Finding::Problem(Problem {
        key: key.into(),
        message: e.to_string(),
    })
}

/// One `Info` per certificate of the PEM file at `path` (a chain or a CA
/// bundle) and a `Warning` with `action` for each that runs out within 30
/// days; nothing but the error when the file is unusable.
fn list(
    out: &mut Vec<Finding>,
    key: &str,
    path: &Path,
    now: OffsetDateTime,
    action: &str,
) -> Result<(), CertError> {
    let infos = describe(path, &read_certificates(path)?)?;
    let several = infos.len() > 1;
    for (n, info) in infos.iter().enumerate() {
        let label = if several {
            format!("{key} ({}) #{}", path.display(), n + 1)
        } else {
            format!("{key} ({})", path.display())
        };
        let days = days_left(info.not_after, now);
        // Whole days since the end, rounded down like `days` is before it.
        let expired = if days < 0 {
            Some((now - info.not_after).whole_days())
        } else {
            None
        };
        out.push(Finding::Info(format!(
            "{label}: subject \"{}\", notAfter {}, {}",
            info.subject,
            rfc3339(info.not_after),
            match expired {
                Some(ago) => format!("expired {ago} days ago"),
                None => format!("{days} days left"),
            }
        )));
        if info.not_after - now < RENEW_BEFORE {
            let when = match expired {
                Some(ago) => format!("expired {ago} days ago"),
                None => format!("expires in {days} days"),
            };
            out.push(Finding::Warning(format!(
                "{label}: \"{}\" {when}: {action}",
                info.subject
            )));
        }
    }
    Ok(())
}
