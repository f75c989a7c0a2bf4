//! A local CA and certificates for tests and demos (`safetytwin-replayer gen-certs`, which
//! `cargo xtask gen-certs` runs): the replayer's server certificate, a daemon client
//! certificate, and a consumer bearer token. Not a substitute for a real PKI.

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
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

fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    fs::write(path, text).map_err(io)?;
    if private {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// Writes a CA, a server certificate valid for `localhost`, `127.0.0.1`, `::1` and `names`, a
/// client certificate for the daemon, and a random token into `dir`.
pub fn generate(dir: &Path, names: &[String]) -> Result<CertFiles, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
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
