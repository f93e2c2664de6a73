//! GatewayCert with real files and an explicit clock, and real handshakes
//! in memory against the configs it serves.

use super::renewal::Verdict;
use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use time::Duration;

/// A directory removed at drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gw-certs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn self_signed_source(dir: &Path) -> CertSource {
    CertSource::SelfSigned {
        dir: dir.to_path_buf(),
        names: vec!["localhost".into()],
    }
}

/// A GatewayCert with a freshly generated self-signed pair.
pub(crate) fn self_signed_cert() -> (TempDir, Arc<GatewayCert>) {
    let dir = TempDir::new();
    let cert = GatewayCert::load(self_signed_source(&dir.0), now()).unwrap();
    (dir, Arc::new(cert))
}

/// Writes a pair for `localhost` with subject CN=`cn` valid until
/// `not_after`; returns the certificate PEM.
pub(crate) fn write_pair(cert: &Path, key: &Path, cn: &str, not_after: OffsetDateTime) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = now() - Duration::days(1);
    params.not_after = not_after;
    let pair = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&pair).unwrap().pem();
    std::fs::write(cert, &pem).unwrap();
    std::fs::write(key, pair.serialize_pem()).unwrap();
    pem
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn not_after_on_disk(path: &Path) -> OffsetDateTime {
    let der = CertificateDer::from_pem_slice(&read(path)).unwrap();
    x509::CertInfo::parse(&der).unwrap().not_after
}

// ------------------------------------------------------------ self-signed

#[test]
fn self_signed_is_generated_once_and_reused() {
    let dir = TempDir::new();
    let t0 = now();
    let cert = GatewayCert::load(self_signed_source(&dir.0), t0).unwrap();
    let cert_path = dir.0.join(CERT_FILE);
    let key_path = dir.0.join(KEY_FILE);
    let (pem, key) = (read(&cert_path), read(&key_path));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let info = cert.info();
    assert!(
        info.subject.contains(self_signed::COMMON_NAME),
        "{}",
        info.subject
    );
    assert_eq!(
        info.not_after.unix_timestamp(),
        (t0 + Duration::days(365)).unix_timestamp()
    );

    // A restart reuses the pair.
    let again = GatewayCert::load(self_signed_source(&dir.0), t0 + Duration::days(1)).unwrap();
    assert_eq!(again.info(), info);
    assert_eq!(read(&cert_path), pem, "certificate reused");
    assert_eq!(read(&key_path), key, "key reused");
}

#[test]
fn self_signed_is_renewed_at_29_days_left_and_kept_at_31() {
    let dir = TempDir::new();
    let t0 = now();
    let cert = GatewayCert::load(self_signed_source(&dir.0), t0).unwrap();
    let first = cert.info();
    let cert_path = dir.0.join(CERT_FILE);
    let pem = read(&cert_path);

    // 31 days before the end: nothing happens.
    let at = first.not_after - Duration::days(31);
    let kept = cert.reload(at).unwrap();
    assert!(!kept.changed);
    assert_eq!(kept.verdict, Verdict::Fresh);
    assert_eq!(cert.info(), first);
    assert_eq!(read(&cert_path), pem);

    // 29 days before the end: a new year-long certificate, on disk and
    // served.
    let at = first.not_after - Duration::days(29);
    let renewed = cert.reload(at).unwrap();
    assert!(renewed.changed);
    assert_eq!(renewed.verdict, Verdict::Fresh);
    assert_ne!(renewed.info.sha256, first.sha256);
    assert_eq!(
        renewed.info.not_after.unix_timestamp(),
        (at + Duration::days(365)).unix_timestamp()
    );
    assert_eq!(cert.info(), renewed.info);
    assert_ne!(read(&cert_path), pem);
    assert_eq!(not_after_on_disk(&cert_path), renewed.info.not_after);

    // And it stays put afterwards.
    assert!(!cert.reload(at + Duration::hours(1)).unwrap().changed);
}

#[test]
fn self_signed_replaced_on_disk_near_expiry_or_broken_is_renewed() {
    let dir = TempDir::new();
    let cert = GatewayCert::load(self_signed_source(&dir.0), now()).unwrap();
    let cert_path = dir.0.join(CERT_FILE);
    let key_path = dir.0.join(KEY_FILE);

    // Someone (or a test) put a pair ending in 10 days there.
    let old = write_pair(&cert_path, &key_path, "old", now() + Duration::days(10));
    let renewed = cert.reload(now()).unwrap();
    assert!(renewed.changed);
    assert_ne!(read(&cert_path), old.as_bytes());
    assert!(renewed.info.not_after > now() + Duration::days(364));

    // A broken file is replaced too: for the generated pair, a new one is
    // always better than an error.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let again = cert.reload(now()).unwrap();
    assert!(again.changed);
    assert!(String::from_utf8(read(&cert_path))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    // A key that does not belong to the certificate (a crash between the
    // two writes) is no pair: regenerated.
    write_pair(
        &dir.0.join("other.pem"),
        &key_path,
        "other",
        now() + Duration::days(300),
    );
    assert!(cert.reload(now()).unwrap().changed);
}

#[test]
fn a_valid_self_signed_pair_replaced_on_disk_is_served() {
    let dir = TempDir::new();
    let cert = GatewayCert::load(self_signed_source(&dir.0), now()).unwrap();
    write_pair(
        &dir.0.join(CERT_FILE),
        &dir.0.join(KEY_FILE),
        "operator's own",
        now() + Duration::days(200),
    );
    let reloaded = cert.reload(now()).unwrap();
    assert!(reloaded.changed);
    assert!(reloaded.info.subject.contains("operator's own"));
}

// ------------------------------------------------------------ configured

fn files_source(dir: &Path) -> CertSource {
    CertSource::Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

#[test]
fn configured_near_expiry_is_warned_about_and_not_replaced() {
    let dir = TempDir::new();
    let source = files_source(&dir.0);
    let cert_path = dir.0.join("cert.pem");
    let pem = write_pair(
        &cert_path,
        &dir.0.join("key.pem"),
        "gw.example",
        now() + Duration::days(10),
    );
    let cert = GatewayCert::load(source, now()).unwrap();
    let first = cert.info();
    assert!(first.subject.contains("gw.example"));

    let reloaded = cert.reload(now()).unwrap();
    assert!(!reloaded.changed);
    assert_eq!(reloaded.verdict, Verdict::ExpiresSoon { days_left: 9 });
    assert_eq!(cert.info(), first);
    assert_eq!(
        read(&cert_path),
        pem.as_bytes(),
        "the operator's file is left alone"
    );
    assert!(!dir.0.join(CERT_FILE).exists(), "nothing generated");

    // Even once expired it stays: only the operator can replace it.
    let later = cert.reload(now() + Duration::days(11)).unwrap();
    assert!(!later.changed);
    assert!(matches!(later.verdict, Verdict::ExpiresSoon { days_left } if days_left < 0));
}

#[test]
fn configured_files_replaced_are_served_after_reload() {
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    write_pair(
        &cert_path,
        &key_path,
        "first.example",
        now() + Duration::days(90),
    );
    let cert = GatewayCert::load(files_source(&dir.0), now()).unwrap();
    write_pair(
        &cert_path,
        &key_path,
        "second.example",
        now() + Duration::days(90),
    );
    let reloaded = cert.reload(now()).unwrap();
    assert!(reloaded.changed);
    assert_eq!(reloaded.verdict, Verdict::Fresh);
    assert!(cert.info().subject.contains("second.example"));
}

#[test]
fn a_bad_file_keeps_the_old_certificate_and_reports_an_error() {
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    write_pair(
        &cert_path,
        &key_path,
        "good.example",
        now() + Duration::days(90),
    );
    let cert = GatewayCert::load(files_source(&dir.0), now()).unwrap();
    let good = cert.info();

    std::fs::write(&cert_path, "garbage").unwrap();
    let err = cert.reload(now()).unwrap_err().to_string();
    assert!(err.contains("cert.pem"), "{err}");
    assert_eq!(cert.info(), good);

    // A certificate whose key was not replaced yet (files copied one by
    // one): refused, the old pair stays.
    let (other_cert, other_key) = (dir.0.join("new-cert.pem"), dir.0.join("new-key.pem"));
    write_pair(
        &other_cert,
        &other_key,
        "new.example",
        now() + Duration::days(90),
    );
    std::fs::copy(&other_cert, &cert_path).unwrap();
    let err = cert.reload(now()).unwrap_err();
    assert!(matches!(err, CertError::Pair { .. }), "{err}");
    assert_eq!(cert.info(), good);

    // The key arrives: served.
    std::fs::copy(&other_key, &key_path).unwrap();
    assert!(cert.reload(now()).unwrap().changed);
    assert!(cert.info().subject.contains("new.example"));

    // A missing key file is an error naming it.
    std::fs::remove_file(&key_path).unwrap();
    let err = cert.reload(now()).unwrap_err().to_string();
    assert!(err.contains("key.pem"), "{err}");
}

#[test]
fn configured_errors_at_load_name_the_file() {
    let dir = TempDir::new();
    let err = GatewayCert::load(files_source(&dir.0), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cert.pem"), "{err}");
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    write_pair(&cert_path, &key_path, "x", now() + Duration::days(90));
    std::fs::write(&key_path, "garbage").unwrap();
    let err = GatewayCert::load(files_source(&dir.0), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("key.pem"), "{err}");
    assert!(!err.contains("garbage"), "{err}");
}

#[test]
fn source_from_config() {
    let mut server = crate::config::ServerConfig {
        public_ip: "192.0.2.7".parse().unwrap(),
        ..Default::default()
    };
    match CertSource::from_config(&server).unwrap() {
        CertSource::SelfSigned { dir, names } => {
            assert_eq!(dir, server.data_dir);
            assert!(names.contains(&"localhost".to_string()));
            assert!(names.contains(&"192.0.2.7".to_string()));
        }
        other => panic!("{other:?}"),
    }
    server.tls_cert = Some("c.pem".into());
    assert!(matches!(
        CertSource::from_config(&server),
        Err(CertError::PathsIncomplete)
    ));
    server.tls_key = Some("k.pem".into());
    assert_eq!(
        CertSource::from_config(&server).unwrap(),
        CertSource::Files {
            cert: "c.pem".into(),
            key: "k.pem".into()
        }
    );
}

// ------------------------------------------------------------ handshakes

/// A client that trusts exactly the certificates given (PEM) for
/// `localhost`.
fn client_trusting(pems: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        roots
            .add(CertificateDer::from_pem_slice(pem).unwrap())
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(server_config::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Moves TLS records between the two ends until neither has more to say.
fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    for _ in 0..20 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        if !moved {
            return;
        }
    }
}

/// A completed in-memory handshake; the certificate the client saw.
fn connect(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
) -> (rustls::ClientConnection, rustls::ServerConnection, Vec<u8>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(client_config.clone(), name).unwrap();
    let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
    pump(&mut client, &mut server);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    let seen = client.peer_certificates().unwrap()[0].to_vec();
    (client, server, seen)
}

fn echo(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection, msg: &[u8]) {
    use std::io::{Read, Write};
    client.writer().write_all(msg).unwrap();
    pump(client, server);
    let mut got = vec![0; msg.len()];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn new_handshakes_get_the_reloaded_certificate_open_ones_keep_theirs() {
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let first_pem = write_pair(&cert_path, &key_path, "first", now() + Duration::days(90));
    let cert = Arc::new(GatewayCert::load(files_source(&dir.0), now()).unwrap());
    // Built once, as the listeners do.
    let https = Arc::new(https_server_config(cert.clone()));
    let sip = Arc::new(sip_server_config(cert.clone()));

    let second_pem = write_pair(
        &dir.0.join("2.pem"),
        &dir.0.join("2.key"),
        "second",
        now() + Duration::days(90),
    );
    let client = client_trusting(&[first_pem.as_bytes(), second_pem.as_bytes()]);
    let first_der = CertificateDer::from_pem_slice(first_pem.as_bytes())
        .unwrap()
        .to_vec();
    let second_der = CertificateDer::from_pem_slice(second_pem.as_bytes())
        .unwrap()
        .to_vec();

    let (mut old_c, mut old_s, seen) = connect(&https, &client);
    assert_eq!(seen, first_der);
    let (_, _, seen) = connect(&sip, &client);
    assert_eq!(seen, first_der);

    std::fs::copy(dir.0.join("2.pem"), &cert_path).unwrap();
    std::fs::copy(dir.0.join("2.key"), &key_path).unwrap();
    assert!(cert.reload(now()).unwrap().changed);

    for config in [&https, &sip] {
        let (_, _, seen) = connect(config, &client);
        assert_eq!(seen, second_der);
    }
    // The connection opened before goes on with its own keys.
    echo(&mut old_c, &mut old_s, b"still here");
    assert_eq!(
        old_c.peer_certificates().unwrap()[0].as_ref(),
        &first_der[..]
    );
}

// ------------------------------------------------------------ check-config

fn config_with(server: crate::config::ServerConfig) -> crate::config::Config {
    crate::config::Config {
        server,
        ..Default::default()
    }
}

#[test]
fn check_lists_the_configured_certificate_and_warns_near_expiry() {
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    write_pair(
        &cert_path,
        &key_path,
        "gw.example",
        now() + Duration::days(100),
    );
    let config = config_with(crate::config::ServerConfig {
        tls_cert: Some(cert_path.clone()),
        tls_key: Some(key_path.clone()),
        ..Default::default()
    });

    let found = check_certificates(&config, now());
    assert_eq!(found.len(), 1, "{found:?}");
    let Finding::Info(line) = &found[0] else {
        panic!("{found:?}")
    };
    assert!(line.starts_with("server.tls_cert ("), "{line}");
    assert!(line.contains("subject \"CN=gw.example\""), "{line}");
    assert!(line.contains("notAfter 20"), "{line}");
    assert!(line.contains("99 days left"), "{line}");

    // 80 days later: 19 days left, a warning (not a problem).
    let found = check_certificates(&config, now() + Duration::days(80));
    assert!(
        matches!(&found[0], Finding::Info(l) if l.contains("19 days left")),
        "{found:?}"
    );
    assert!(
        matches!(&found[1], Finding::Warning(l) if l.contains("expires in 19 days") && l.contains("SIGHUP")),
        "{found:?}"
    );
    let found = check_certificates(&config, now() + Duration::days(103));
    assert!(
        matches!(&found[0], Finding::Info(l) if l.contains("expired 3 days ago"))
            && matches!(&found[1], Finding::Warning(l) if l.contains("expired 3 days ago")),
        "{found:?}"
    );

    // A key that does not match is a problem under server.tls_cert.
    write_pair(
        &dir.0.join("x.pem"),
        &key_path,
        "x",
        now() + Duration::days(100),
    );
    let found = check_certificates(&config, now());
    assert!(
        matches!(&found[..], [Finding::Problem(p)] if p.key == "server.tls_cert"),
        "{found:?}"
    );
}

#[test]
fn check_lists_the_generated_certificate_and_trunk_cas() {
    let dir = TempDir::new();
    let mut config = config_with(crate::config::ServerConfig {
        data_dir: dir.0.join("data"),
        ..Default::default()
    });
    let found = check_certificates(&config, now());
    assert!(
        matches!(&found[..], [Finding::Info(l)] if l.contains("none yet")),
        "{found:?}"
    );

    GatewayCert::load(self_signed_source(&config.server.data_dir), now()).unwrap();
    // A CA bundle of two, one of them running out.
    let ca = dir.0.join("ca.pem");
    let a = write_pair(
        &dir.0.join("a.pem"),
        &dir.0.join("a.key"),
        "CA one",
        now() + Duration::days(3000),
    );
    let b = write_pair(
        &dir.0.join("b.pem"),
        &dir.0.join("b.key"),
        "CA two",
        now() + Duration::days(5),
    );
    std::fs::write(&ca, format!("{a}{b}")).unwrap();
    let trunk: crate::config::TrunkConfig = toml::from_str(&format!(
        "name = \"carrier\"\nuri = \"sip:192.0.2.1\"\nca_file = {:?}\n",
        ca.display().to_string()
    ))
    .unwrap();
    config.trunks.push(trunk);

    let found = check_certificates(&config, now());
    let text: Vec<String> = found.iter().map(|f| format!("{f:?}")).collect();
    assert_eq!(found.len(), 4, "{text:#?}");
    assert!(
        matches!(&found[0], Finding::Info(l) if l.starts_with("generated certificate (") && l.contains(self_signed::COMMON_NAME) && l.contains("364 days left")),
        "{text:#?}"
    );
    assert!(
        matches!(&found[1], Finding::Info(l) if l.starts_with("trunks[0].ca_file (") && l.contains("#1") && l.contains("CN=CA one")),
        "{text:#?}"
    );
    assert!(
        matches!(&found[2], Finding::Info(l) if l.contains("#2") && l.contains("CN=CA two") && l.contains("4 days left")),
        "{text:#?}"
    );
    assert!(
        matches!(&found[3], Finding::Warning(l) if l.contains("CA two") && l.contains("expires in 4 days")),
        "{text:#?}"
    );

    // An unreadable generated certificate is only a warning (run replaces
    // it). An unreadable CA file is a problem, which config.problems()
    // reports and this list does not repeat.
    std::fs::write(&ca, "nothing").unwrap();
    std::fs::write(config.server.data_dir.join(CERT_FILE), "nothing").unwrap();
    let found = check_certificates(&config, now());
    assert!(
        matches!(&found[..], [Finding::Warning(l)] if l.contains("replaces it")),
        "{found:?}"
    );
    let problems = config.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key == "trunks[0].ca_file" && p.message.contains("ca.pem")),
        "{problems:?}"
    );
}
