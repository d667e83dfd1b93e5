//! rustls configuration: client trust by system roots, a CA file, or a
//! pinned SHA-256 certificate fingerprint (self-signed PBX certificates are
//! the norm); server certificate and key for inbound TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The system trust store could not be loaded.
    #[error("system trust store: {0}")]
    SystemRoots(String),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider dialerd uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider, for libraries that
/// build their own rustls configurations. Safe to call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a client decides to trust a server certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's trust store.
    System,
    /// CA certificates from a PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pinned([u8; 32]),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::System => f.write_str("System"),
            Trust::CaFile(p) => write!(f, "CaFile({})", p.display()),
            Trust::Pinned(fp) => write!(f, "Pinned({})", hex_colon(fp)),
        }
    }
}

/// A client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(|| "no certificates found".to_owned(), ToString::to_string);
                return Err(TlsConfigError::SystemRoots(why));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TlsConfigError::File {
                    path: path.clone(),
                    problem: format!("not a usable CA certificate: {e}"),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint: *fingerprint,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server configuration presenting `cert_file` with `key_file`.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsConfigError::File {
        path: key_file.to_owned(),
        problem: format!("no private key: {e}"),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file_err = |problem: String| TlsConfigError::File {
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("holds no certificate".into()));
    }
    Ok(certs)
}

/// The name to verify: a DNS name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

/// `AB:CD:...` form of a fingerprint.
pub fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts exactly one certificate, identified by its SHA-256 fingerprint,
/// and still checks that the peer holds its key (handshake signatures).
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

/// The peer's certificate is not the pinned one.
#[derive(Debug)]
struct PinMismatch {
    seen: [u8; 32],
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate SHA-256 fingerprint {} does not match the pinned fingerprint",
            hex_colon(&self.seen)
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if seen == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch { seen }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_load_or_fail_clearly() {
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        match client_config(&Trust::System) {
            Ok(_) => assert!(bundle.exists() || Path::new("/etc/ssl/certs").exists()),
            Err(e) => {
                assert!(
                    !bundle.exists(),
                    "the system bundle exists but did not load: {e}"
                );
                assert!(e.to_string().starts_with("system trust store: "), "{e}");
            }
        }
    }

    #[test]
    fn unreadable_and_empty_pem_files_name_the_file() {
        let missing =
            client_config(&Trust::CaFile(PathBuf::from("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/ca.pem: cannot read"),
            "{missing}"
        );
        let empty = std::env::temp_dir().join(format!("dialerd-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = client_config(&Trust::CaFile(empty.clone())).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.to_string().ends_with("holds no certificate"), "{err}");
    }

    #[test]
    fn fingerprints_print_as_colon_hex() {
        assert_eq!(hex_colon(&[0xab, 0x01]), "AB:01");
        assert_eq!(fingerprint(b"").len(), 32);
    }
}
