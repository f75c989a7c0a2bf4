//! A local CA and certificates for tests and demos (`safetytwin-replayer gen-certs`, which
//! `cargo xtask gen-certs` runs): the replayer's server certificate, a daemon client
//! certificate, and a consumer bearer token. Not a substitute for a real PKI. The directory is
//! 0700, keys and the token 0600 (`safetytwin_proto::private`).

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// The replayer's certificate and key.
    pub server_cert: PathBuf,
    /// The replayer's private key.
    pub server_key: PathBuf,
    /// The daemon's client certificate.
    pub client_cert: PathBuf,
    /// The daemon's private key.
    pub client_key: PathBuf,
    /// The consumers' bearer token.
    pub token: PathBuf,
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
/// client certificate for the daemon, and a random token into `dir`.
pub fn generate(dir: &Path, names: &[String]) -> Result<CertFiles, CertError> {
    // 0700: it holds the keys; one left looser by an earlier run is tightened.
    safetytwin_proto::private::dir(dir, safetytwin_proto::private::DIR_MODE).map_err(|source| {
        CertError::Io {
            path: dir.to_owned(),
            source,
        }
    })?;
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

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "safetytwin-daemon");
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca)?;

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
        client_cert: dir.join("daemon.pem"),
        client_key: dir.join("daemon.key"),
        token: dir.join("token"),
    };
    write(&files.ca, &ca.pem(), false)?;
    write(&files.server_cert, &server_cert.pem(), false)?;
    write(&files.server_key, &server_key.serialize_pem(), true)?;
    write(&files.client_cert, &client_cert.pem(), false)?;
    write(&files.client_key, &client_key.serialize_pem(), true)?;
    write(&files.token, &format!("{token}\n"), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn local_keys_and_token_are_private_in_a_private_dir() {
        let dir = std::env::temp_dir().join(format!("st-local-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // An earlier run, or a hand-made directory, left everything readable.
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("replayer.key"), "old").unwrap();
        fs::set_permissions(dir.join("replayer.key"), fs::Permissions::from_mode(0o644)).unwrap();

        let files = generate(&dir, &[]).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for private in [&files.server_key, &files.client_key, &files.token] {
            assert_eq!(mode(private), 0o600, "{}", private.display());
        }
        assert!(
            fs::read_to_string(&files.server_key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
