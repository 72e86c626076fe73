//! TLS material: creating a CA and per-server certificates (`meridian tls init`)
//! and turning PEM files into rustls configurations with mutual authentication.

use crate::GatewayError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Paths of one server's TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificate every peer must be signed by.
    pub ca: PathBuf,
    /// This server's certificate (PEM).
    pub cert: PathBuf,
    /// This server's private key (PEM).
    pub key: PathBuf,
}

impl TlsPaths {
    /// The paths `tls init` writes for `name` inside `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsPaths {
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

/// The DNS name a datacenter's certificates carry, and the server name a
/// connection to any server of that datacenter asks for: `<dc>.dc.meridian`.
/// Raft peers and other datacenters verify it, so a certificate of one
/// datacenter cannot join another's quorum or speak for another datacenter.
pub fn datacenter_name(datacenter: &str) -> String {
    format!("{datacenter}.dc.meridian")
}

/// Whether a datacenter name can be carried in a certificate: letters,
/// digits and `-`, at most 63 characters, not starting or ending with `-`.
pub fn valid_datacenter(datacenter: &str) -> bool {
    !datacenter.is_empty()
        && datacenter.len() <= 63
        && !datacenter.starts_with('-')
        && !datacenter.ends_with('-')
        && datacenter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Creates, in `dir`, a CA (`ca.pem`, `ca-key.pem`) unless one is already
/// there, and for each name `<name>.pem` and `<name>-key.pem` signed by it.
/// Each certificate is valid for its name, the datacenter's name (see
/// [`datacenter_name`]), `localhost`, 127.0.0.1 and ::1, and is usable as
/// client and server. Reusing the CA is how several datacenters join one
/// federation: copy `ca.pem` and `ca-key.pem` into each datacenter's directory.
pub fn generate(dir: &Path, datacenter: &str, names: &[String]) -> Result<(), GatewayError> {
    let fail = |reason: String| GatewayError::TlsConfig(reason);
    if !valid_datacenter(datacenter) {
        return Err(fail(format!(
            "invalid datacenter name {datacenter:?}: use letters, digits and '-'"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| GatewayError::TlsMaterial {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (ca_cert, ca_key) = load_or_create_ca(dir)?;
    for name in names {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(fail(format!("invalid server name {name:?}")));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let sans = vec![
            name.clone(),
            datacenter_name(datacenter),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let mut params = rcgen::CertificateParams::new(sans).map_err(|e| fail(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.clone());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, datacenter);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| fail(e.to_string()))?;
        let paths = TlsPaths::in_dir(dir, name);
        write_file(&paths.cert, cert.pem().as_bytes())?;
        write_file(&paths.key, key.serialize_pem().as_bytes())?;
    }
    Ok(())
}

fn ca_params() -> Result<rcgen::CertificateParams, GatewayError> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Meridian CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

/// The CA in `dir`, or a new one written there.
fn load_or_create_ca(dir: &Path) -> Result<(rcgen::Certificate, rcgen::KeyPair), GatewayError> {
    let fail = |reason: String| GatewayError::TlsConfig(reason);
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        let key_pem = String::from_utf8(read_file(&key_path)?).map_err(|e| fail(e.to_string()))?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| GatewayError::TlsMaterial {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        // The CA's parameters are fixed, so signing them again with the same
        // key gives an issuer identical to the one on disk (same name, same
        // key identifier): certificates it signs verify against `ca.pem`.
        let params = ca_params()?;
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        return Ok((cert, key));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| fail(e.to_string()))?;
    write_file(&cert_path, cert.pem().as_bytes())?;
    write_file(&key_path, key.serialize_pem().as_bytes())?;
    Ok((cert, key))
}

/// Whether the first certificate of `chain` (a peer's, already verified
/// against the CA by the handshake) is valid for the DNS name `name`.
pub fn certificate_names(chain: &[CertificateDer<'_>], name: &str) -> bool {
    let Some(first) = chain.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(first) else {
        return false;
    };
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GatewayError> {
    std::fs::write(path, bytes).map_err(|e| GatewayError::TlsMaterial {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|e| GatewayError::TlsMaterial {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loaded certificates and key, ready to build rustls configurations.
#[derive(Debug)]
pub struct TlsMaterial {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    /// Reads and checks the three PEM files.
    pub fn load(paths: &TlsPaths) -> Result<TlsMaterial, GatewayError> {
        let bad = |path: &Path, reason: &str| GatewayError::TlsMaterial {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let ca_pem = read_file(&paths.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| bad(&paths.ca, &e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| bad(&paths.ca, &e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad(&paths.ca, "no certificate found"));
        }
        let cert_pem = read_file(&paths.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&paths.cert, &e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(&paths.cert, "no certificate found"));
        }
        let key_pem = read_file(&paths.key)?;
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&paths.key, &e.to_string()))?;
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// Whether this server's own certificate carries `name`.
    pub fn carries_name(&self, name: &str) -> bool {
        certificate_names(&self.chain, name)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server configuration that requires a client certificate signed by the CA.
    pub(crate) fn server_config(
        &self,
        alpns: &[&[u8]],
    ) -> Result<rustls::ServerConfig, GatewayError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Self::provider(),
        )
        .build()
        .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| GatewayError::TlsConfig(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
        config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration that trusts only the CA and presents this server's certificate.
    pub(crate) fn client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, GatewayError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| GatewayError::TlsConfig(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| GatewayError::TlsConfig(e.to_string()))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_loads_and_builds_configs() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "dc1", &["n1".to_string(), "n2".to_string()]).unwrap();
        let m = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "n1")).unwrap();
        m.server_config(&[crate::ALPN_PEER]).unwrap();
        m.client_config(crate::ALPN_PEER).unwrap();
        assert!(m.carries_name(&datacenter_name("dc1")));
        assert!(m.carries_name("n1"));
        assert!(!m.carries_name(&datacenter_name("dc2")));
    }

    #[test]
    fn a_second_datacenter_reuses_the_ca_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "dc1", &["a".to_string()]).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        generate(dir.path(), "dc2", &["b".to_string()]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        let b = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "b")).unwrap();
        assert!(b.carries_name(&datacenter_name("dc2")));
        assert!(generate(dir.path(), "bad.name", &["c".to_string()]).is_err());
    }

    #[test]
    fn missing_or_garbage_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "n1")).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
        let err = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "n1")).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn names_that_would_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(generate(dir.path(), "dc1", &["../x".to_string()]).is_err());
    }
}
