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

/// Creates `ca.pem`, `ca-key.pem` and, for each name, `<name>.pem` and
/// `<name>-key.pem` in `dir`. Each certificate is valid for its name,
/// `localhost`, 127.0.0.1 and ::1, and is usable as client and server.
pub fn generate(dir: &Path, names: &[String]) -> Result<(), GatewayError> {
    let fail = |reason: String| GatewayError::TlsConfig(reason);
    std::fs::create_dir_all(dir).map_err(|e| GatewayError::TlsMaterial {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(e.to_string()))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Meridian CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| fail(e.to_string()))?;
    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes())?;
    write_file(&dir.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
    for name in names {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(fail(format!("invalid server name {name:?}")));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let sans = vec![
            name.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let mut params = rcgen::CertificateParams::new(sans).map_err(|e| fail(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.clone());
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
        generate(dir.path(), &["n1".to_string(), "n2".to_string()]).unwrap();
        let m = TlsMaterial::load(&TlsPaths::in_dir(dir.path(), "n1")).unwrap();
        m.server_config(&[crate::ALPN_PEER]).unwrap();
        m.client_config(crate::ALPN_PEER).unwrap();
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
        assert!(generate(dir.path(), &["../x".to_string()]).is_err());
    }
}
