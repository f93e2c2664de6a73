//! Password checks on a fixed pool of threads, each with its argon2 memory
//! allocated once.
//!
//! `Argon2::verify_password` allocates its ~19 MiB working memory per call.
//! On tokio's blocking threads that memory stays with each thread's malloc
//! arena after the call (glibc raises its mmap threshold after the first
//! free of a large block), so a storm of logins left RSS about 19 MiB higher
//! per blocking thread ever used. Here a few threads own their blocks for
//! the life of the process, and verification goes through
//! `hash_password_into_with_memory` with those blocks: the memory is
//! bounded by the pool size, whatever the number of logins.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

/// Checks waiting for a thread at most; past it a login gets 503.
const QUEUE: usize = 256;

struct Job {
    password: String,
    phc: String,
    reply: oneshot::Sender<bool>,
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("too many password checks waiting")]
    Busy,
    #[error("the password check pool has stopped")]
    Stopped,
}

#[derive(Clone)]
pub struct PasswordPool {
    jobs: mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordPool")
    }
}

impl PasswordPool {
    /// Starts `threads` checker threads (at least one).
    pub fn new(threads: usize) -> PasswordPool {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || run(&queue));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a password check thread");
            }
        }
        PasswordPool { jobs }
    }

    /// Whether `password` matches the PHC string `phc`; a malformed `phc`
    /// never matches.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job {
                password,
                phc,
                reply,
            })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => PoolError::Busy,
                mpsc::TrySendError::Disconnected(_) => PoolError::Stopped,
            })?;
        answer.await.map_err(|_| PoolError::Stopped)
    }
}

fn run(queue: &Mutex<mpsc::Receiver<Job>>) {
    // Grown to the largest m_cost seen, then reused for every check.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = match queue.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let ok = verify_with(&mut blocks, &job.password, &job.phc);
        let _ = job.reply.send(ok);
    }
}

/// Blocks beyond which a hash is refused rather than allocated for (1 GiB).
const MAX_BLOCKS: usize = 1 << 20;

/// argon2 verification in caller-owned memory; false for anything that is
/// not a well-formed argon2 PHC string or does not match.
pub(crate) fn verify_with(blocks: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Some(expected), Some(salt)) =
        (Algorithm::try_from(hash.algorithm), hash.hash, hash.salt)
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let Ok(params) = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(expected.len()),
    ) else {
        return false;
    };
    let needed = params.block_count();
    if needed > MAX_BLOCKS {
        return false;
    }
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut blocks[..needed])
        .is_err()
    {
        return false;
    }
    // Output's equality is constant-time.
    argon2::password_hash::Output::new(out).is_ok_and(|got| got == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::auth::{hash_password, DECOY_HASH};

    #[test]
    fn matches_exactly_what_argon2_itself_accepts() {
        let phc = hash_password("correct horse").unwrap();
        let mut blocks = Vec::new();
        assert!(verify_with(&mut blocks, "correct horse", &phc));
        assert!(!verify_with(&mut blocks, "correct hors", &phc));
        assert!(!verify_with(&mut blocks, "", DECOY_HASH));
        assert!(!verify_with(&mut blocks, "x", "not a phc string"));
        assert!(!verify_with(
            &mut blocks,
            "x",
            "$argon2id$v=19$m=99999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA"
        ));
        // Other parameters than ours (and argon2i) still verify.
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(8 * 1024, 3, 2, Some(32)).unwrap(),
        );
        let phc = argon2::password_hash::PasswordHasher::hash_password(&other, b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&mut blocks, "pw", &phc));
        assert!(!verify_with(&mut blocks, "pw2", &phc));
    }

    #[tokio::test]
    async fn the_pool_answers_and_refuses_when_full() {
        let pool = PasswordPool::new(1);
        let phc = hash_password("pw").unwrap();
        assert_eq!(pool.verify("pw".into(), phc.clone()).await, Ok(true));
        assert_eq!(pool.verify("no".into(), phc).await, Ok(false));
    }
}
