//! A local CA and certificates for tests and demos (`safetytwin-replayer gen-certs`, which
//! `cargo xtask gen-certs` runs): the replayer's server certificate, one daemon client
//! certificate per host id, and a consumer bearer token. Not a substitute for a real PKI.
//!
//! A daemon certificate names the host ids it may write as URI subject alternative names,
//! `safetytwin:host:<id>` ([`HOST_URI_PREFIX`]); [`hosts_of`] reads them back and ingest
//! refuses a Hello for any other host. The SAN, not the common name, is what counts: a SAN is
//! typed and may repeat, a URI with our own scheme cannot be mistaken for a DNS name a
//! certificate from a shared CA might carry, and the CN (set to the host id too, for people
//! reading `openssl x509`) has no structure to check against.
//!
//! The directory and each host's subdirectory are 0700, keys and the token 0600
//! (`safetytwin_proto::private`).

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The URI SAN prefix of a host id a daemon certificate is valid for.
pub const HOST_URI_PREFIX: &str = "safetytwin:host:";

/// The longest host id a certificate is issued for (a hostname's limit).
pub const MAX_HOST_ID: usize = 253;

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// The replayer's certificate and key.
    pub server_cert: PathBuf,
    /// The replayer's private key.
    pub server_key: PathBuf,
    /// The daemons' client certificates, one per host id (or per set of host ids).
    pub clients: Vec<ClientFiles>,
    /// The consumers' bearer token.
    pub token: PathBuf,
}

/// A daemon's client certificate: `<dir>/<host>/daemon.pem` and `daemon.key`, the names the
/// daemon's configuration expects once copied to the host.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The host ids it is valid for.
    pub hosts: Vec<String>,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate valid for `host`.
    pub fn client(&self, host: &str) -> Option<&ClientFiles> {
        self.clients
            .iter()
            .find(|c| c.hosts.iter().any(|h| h == host))
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused the parameters.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A host id that cannot be named in a certificate (or a directory).
    #[error(
        "host id {0:?}: use 1 to 253 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
    )]
    BadHostId(String),
    /// No host id to issue a daemon certificate for.
    #[error("no host id: pass --host ID")]
    NoHost,
}

/// Whether `id` can be a certificate's host id: what machine ids and hostnames are made of, so
/// it fits a URI and a directory name as it is.
pub fn valid_host_id(id: &str) -> bool {
    (1..=MAX_HOST_ID).contains(&id.len())
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The host ids a daemon's client certificate (DER) names, in its `safetytwin:host:` URI SANs.
pub fn hosts_of(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(HOST_URI_PREFIX),
            _ => None,
        })
        .map(str::to_owned)
        .collect())
}

/// Writes a certificate (world-readable, it is public) or a key or token (`private`: 0600 from
/// the moment it exists, never through a symbolic link).
fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if private {
        safetytwin_proto::private::file(path, true)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io)
    } else {
        fs::write(path, text).map_err(io)
    }
}

/// Writes a CA, a server certificate valid for `localhost`, `127.0.0.1`, `::1` and `names`, a
/// daemon client certificate for each of `hosts`, and a random token into `dir`.
pub fn generate(dir: &Path, names: &[String], hosts: &[String]) -> Result<CertFiles, CertError> {
    let each: Vec<Vec<String>> = hosts.iter().map(|h| vec![h.clone()]).collect();
    generate_for(dir, names, &each)
}

/// [`generate`], with one daemon certificate per entry of `clients`, valid for all the host
/// ids of that entry (a daemon that writes several hosts' histories, e.g. a relay).
pub fn generate_for(
    dir: &Path,
    names: &[String],
    clients: &[Vec<String>],
) -> Result<CertFiles, CertError> {
    if clients.iter().all(Vec::is_empty) {
        return Err(CertError::NoHost);
    }
    if let Some(bad) = clients.iter().flatten().find(|h| !valid_host_id(h)) {
        return Err(CertError::BadHostId(bad.clone()));
    }
    // 0700: they hold the keys; one left looser by an earlier run is tightened.
    let mkdir = |d: &Path| {
        safetytwin_proto::private::dir(d, safetytwin_proto::private::DIR_MODE)
            .map(drop)
            .map_err(|source| CertError::Io {
                path: d.to_owned(),
                source,
            })
    };
    mkdir(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "safetytwin local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    sans.extend(names.iter().cloned());
    let mut server = CertificateParams::new(sans)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "safetytwin-replayer");
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut issued = Vec::new();
    for hosts in clients.iter().filter(|h| !h.is_empty()) {
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, hosts.join(" "));
        for h in hosts {
            client
                .subject_alt_names
                .push(SanType::URI(format!("{HOST_URI_PREFIX}{h}").try_into()?));
        }
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = client.signed_by(&key, &ca)?;
        // Valid host ids hold no '/' and '+' cannot start one, so the name is safe as it is.
        let sub = dir.join(hosts.join("+"));
        mkdir(&sub)?;
        let files = ClientFiles {
            hosts: hosts.clone(),
            cert: sub.join("daemon.pem"),
            key: sub.join("daemon.key"),
        };
        issued.push((files, cert, key));
    }

    let mut random = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|source| CertError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();

    let files = CertFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("replayer.pem"),
        server_key: dir.join("replayer.key"),
        clients: issued.iter().map(|(f, ..)| f.clone()).collect(),
        token: dir.join("token"),
    };
    write(&files.ca, &ca.pem(), false)?;
    write(&files.server_cert, &server_cert.pem(), false)?;
    write(&files.server_key, &server_key.serialize_pem(), true)?;
    for (f, cert, key) in &issued {
        write(&f.cert, &cert.pem(), false)?;
        write(&f.key, &key.serialize_pem(), true)?;
    }
    write(&files.token, &format!("{token}\n"), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn host_ids_are_checked_before_anything_is_written() {
        for bad in [
            "",
            "../etc",
            "a/b",
            ".hidden",
            "-flag",
            "sp ace",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!valid_host_id(bad), "{bad:?}");
        }
        for good in [
            "0123456789abcdef0123456789abcdef",
            "web-1.example.org",
            "db_2",
        ] {
            assert!(valid_host_id(good), "{good:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        assert!(matches!(
            generate(&dir, &[], &["../x".into()]),
            Err(CertError::BadHostId(_))
        ));
        assert!(matches!(generate(&dir, &[], &[]), Err(CertError::NoHost)));
        assert!(!dir.exists());
    }

    #[test]
    fn each_daemon_certificate_names_its_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let files = generate_for(
            &dir,
            &[],
            &[vec!["web-1".into()], vec!["a".into(), "b".into()]],
        )
        .unwrap();
        let hosts = |f: &ClientFiles| {
            let pem = fs::read_to_string(&f.cert).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            hosts_of(&pem.contents).unwrap()
        };
        assert_eq!(hosts(files.client("web-1").unwrap()), ["web-1"]);
        assert_eq!(hosts(files.client("b").unwrap()), ["a", "b"]);
        assert_eq!(
            files.client("web-1").unwrap().cert,
            dir.join("web-1/daemon.pem")
        );
        // The server certificate names no host: it cannot pose as a daemon.
        let server = fs::read_to_string(&files.server_cert).unwrap();
        let (_, server) = x509_parser::pem::parse_x509_pem(server.as_bytes()).unwrap();
        assert!(hosts_of(&server.contents).unwrap().is_empty());
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn local_keys_and_token_are_private_in_a_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        // An earlier run, or a hand-made directory, left everything readable.
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("replayer.key"), "old").unwrap();
        fs::set_permissions(dir.join("replayer.key"), fs::Permissions::from_mode(0o644)).unwrap();

        let files = generate(&dir, &[], &["web-1".into()]).unwrap();
        let daemon = files.client("web-1").unwrap();
        assert_eq!(mode(daemon.cert.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir), 0o700);
        for private in [&files.server_key, &daemon.key, &files.token] {
            assert_eq!(mode(private), 0o600, "{}", private.display());
        }
        assert!(
            fs::read_to_string(&files.server_key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
    }
}
