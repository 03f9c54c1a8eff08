//! rustls configurations for the brand's mutual TLS when a party drives TLS itself
//! (the coordinator's acceptor, the node's connector) instead of through tonic:
//! they add what tonic's `ServerTlsConfig`/`ClientTlsConfig` cannot — the brand's
//! CRL ([`super::crl`]) and a hook that sees every certificate the verifier refuses,
//! so the refusal can be logged with the presented name (RFC 8446 §4.4.2.4: the
//! peer's certificate is known when its verification fails). ECDSA P-256 over
//! *ring* only, as everywhere in [`super`]. No I/O, no clock.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};

use super::{PkiError, PrivateKeyPem, pem_to_der_certs, pkcs8_der};

/// Called with the end-entity certificate a verifier refused and rustls' reason.
pub type RefusalHook = Arc<dyn Fn(&CertificateDer<'_>, &rustls::Error) + Send + Sync>;

/// Why a TLS handshake was refused, sorted for an operator. The `Display` form is a
/// short stable tag (`expired`, `revoked`, …) that audit records start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Expired,
    NotYetValid,
    /// Not issued by the CA this side trusts (another brand's CA, or a wrong `ca.pem`;
    /// also a signature that does not verify, which is what a CA with the same name
    /// but another key produces).
    UnknownIssuer,
    Revoked,
    /// The certificate may not be used this way (a node certificate as a server, …).
    BadUsage,
    /// The server's certificate names someone else.
    WrongName,
    /// The peer presented no certificate.
    NoCertificate,
    /// A CRL is configured but does not cover the certificate's issuer.
    UnknownRevocationStatus,
    /// The handshake signature does not verify: whoever connected presented this
    /// certificate (anyone may have a copy: rosters relay them) without its key. The
    /// name in it is not the party's.
    NotKeyHolder,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (not TLS at all, no common cipher suite, …), as rustls says it.
    Other(String),
}

/// What the verifiers report when a handshake signature fails (see [`Refusal::NotKeyHolder`]).
const NOT_KEY_HOLDER: &str = "the handshake signature does not verify with the presented certificate's key";

fn not_key_holder() -> rustls::Error {
    rustls::Error::General(NOT_KEY_HOLDER.into())
}

impl Refusal {
    /// Sorts a rustls error.
    pub fn classify(e: &rustls::Error) -> Refusal {
        use CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } => Refusal::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => Refusal::NotYetValid,
                C::UnknownIssuer | C::BadSignature => Refusal::UnknownIssuer,
                C::Revoked => Refusal::Revoked,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => Refusal::BadUsage,
                C::NotValidForName | C::NotValidForNameContext { .. } => Refusal::WrongName,
                C::UnknownRevocationStatus => Refusal::UnknownRevocationStatus,
                other => Refusal::Other(format!("{other:?}")),
            },
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::General(m) if m == NOT_KEY_HOLDER => Refusal::NotKeyHolder,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => Refusal::UnknownIssuer,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => Refusal::Expired,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked) => Refusal::Revoked,
            other => Refusal::Other(other.to_string()),
        }
    }

    /// Sorts the error of a failed handshake as tokio-rustls returns it (an I/O error
    /// wrapping the rustls error), or `None` when the connection just dropped.
    pub fn from_io(e: &std::io::Error) -> Refusal {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => Refusal::classify(tls),
            None if e.kind() == std::io::ErrorKind::TimedOut => Refusal::Timeout,
            None => Refusal::Other(e.to_string()),
        }
    }

    /// What the operator of the refused party should do.
    pub fn advice(&self) -> &'static str {
        match self {
            Refusal::Expired => "issue a new certificate from a fresh csr (`fedcrm ca sign`) and install it",
            Refusal::NotYetValid => "check the clocks of both machines",
            Refusal::UnknownIssuer => {
                "the certificate and the verifier's `tls.ca` come from different CAs; install HQ's ca.pem and a certificate it issued"
            }
            Refusal::Revoked => "HQ revoked this certificate (`fedcrm ca revoke`); ask HQ for a new one",
            Refusal::BadUsage => "use the certificate issued for this party's role",
            Refusal::WrongName => "check `coordinator.server_name` against the name in the coordinator's certificate",
            Refusal::NoCertificate => "configure a client certificate (`tls.cert`, `tls.key`)",
            Refusal::UnknownRevocationStatus => "`tls.crl` is not the brand CA's list; use ca/crl.pem from HQ",
            Refusal::NotKeyHolder => {
                "someone presented this certificate without its private key; the named party did not connect"
            }
            Refusal::Timeout => "the peer did not finish the handshake; check the network",
            Refusal::Other(_) => "check that the peer speaks fedcrm's mutual TLS",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Expired => f.write_str("expired"),
            Refusal::NotYetValid => f.write_str("not yet valid"),
            Refusal::UnknownIssuer => f.write_str("unknown issuer (not this brand's CA)"),
            Refusal::Revoked => f.write_str("revoked"),
            Refusal::BadUsage => f.write_str("bad usage"),
            Refusal::WrongName => f.write_str("wrong name"),
            Refusal::NoCertificate => f.write_str("no certificate"),
            Refusal::UnknownRevocationStatus => f.write_str("unknown revocation status"),
            Refusal::NotKeyHolder => f.write_str("not the key holder"),
            Refusal::Timeout => f.write_str("timeout"),
            Refusal::Other(why) => write!(f, "handshake failed ({why})"),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl fmt::Display) -> PkiError {
    PkiError::Certificate(format!("{what} ({e}); pass the files made by fedcrm for this party"))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for der in pem_to_der_certs(ca_pem)? {
        roots.add(CertificateDer::from(der)).map_err(|e| tls_error("the brand ca is not a usable trust anchor", e))?;
    }
    Ok(Arc::new(roots))
}

fn identity(
    cert_pem: &str,
    key: &PrivateKeyPem,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = pem_to_der_certs(cert_pem)?.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(pkcs8_der(key)?.clone_key());
    Ok((chain, key))
}

/// Parses the CRL DERs for the verifiers; `crl_pem` must have been checked with
/// [`super::crl::load`].
pub fn crls_from_pem(crl_pem: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Revocation(format!("malformed pem ({e}); use the crl.pem written by `ca revoke`")))
}

/// Server side (the coordinator): presents `cert_pem`/`key`, requires a client
/// certificate chaining to the brand CA with `clientAuth`, not listed in `crls`
/// (only the end-entity is checked: the CA is the trust anchor), and calls
/// `on_refused` with every client certificate it refuses. ALPN `h2` (gRPC).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key: &PrivateKeyPem,
    crls: Vec<CertificateRevocationListDer<'static>>,
    on_refused: RefusalHook,
) -> Result<ServerConfig, PkiError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider());
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let inner = builder.build().map_err(|e| tls_error("client verifier", e))?;
    let (chain, key) = identity(cert_pem, key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("tls versions", e))?
        .with_client_cert_verifier(Arc::new(RecordingClientVerifier { inner, on_refused }))
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("the certificate and key do not form a tls identity", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client side (a node): trusts only the brand CA, checks the server certificate
/// for `serverAuth` and the server name the caller connects to, against `crls`
/// when given, presents `cert_pem`/`key`, and calls `on_refused` with a server
/// certificate it refuses. ALPN `h2` (gRPC).
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key: &PrivateKeyPem,
    crls: Vec<CertificateRevocationListDer<'static>>,
    on_refused: RefusalHook,
) -> Result<ClientConfig, PkiError> {
    let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider());
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let inner = builder.build().map_err(|e| tls_error("server verifier", e))?;
    let (chain, key) = identity(cert_pem, key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("tls versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingServerVerifier { inner, on_refused }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error("the certificate and key do not form a tls identity", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Delegates to webpki and reports what it refuses.
struct RecordingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    on_refused: RefusalHook,
}

impl fmt::Debug for RecordingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingClientVerifier").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for RecordingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).inspect_err(|e| (self.on_refused)(end_entity, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|_| (self.on_refused)(cert, &not_key_holder()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|_| (self.on_refused)(cert, &not_key_holder()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Delegates to webpki and reports what it refuses.
struct RecordingServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    on_refused: RefusalHook,
}

impl fmt::Debug for RecordingServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingServerVerifier").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for RecordingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| (self.on_refused)(end_entity, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|_| (self.on_refused)(cert, &not_key_holder()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|_| (self.on_refused)(cert, &not_key_holder()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_handshake_signature_is_not_blamed_on_the_certificates_owner() {
        // A peer's certificate is no secret (rosters relay them): presenting one without
        // its key must not read as that peer's refusal for "unknown issuer".
        assert_eq!(Refusal::classify(&not_key_holder()), Refusal::NotKeyHolder);
        assert_eq!(Refusal::NotKeyHolder.to_string(), "not the key holder");
        assert!(Refusal::NotKeyHolder.advice().contains("did not connect"));
        let other = rustls::Error::General("something else".into());
        assert_eq!(Refusal::classify(&other), Refusal::Other(other.to_string()));
    }

    #[test]
    fn refusals_are_sorted_for_the_operator() {
        let cert = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(Refusal::classify(&cert(CertificateError::Expired)), Refusal::Expired);
        assert_eq!(Refusal::classify(&cert(CertificateError::UnknownIssuer)), Refusal::UnknownIssuer);
        // A CA with the same name but another key: the issuer's signature fails.
        assert_eq!(Refusal::classify(&cert(CertificateError::BadSignature)), Refusal::UnknownIssuer);
        assert_eq!(Refusal::classify(&cert(CertificateError::Revoked)), Refusal::Revoked);
        assert_eq!(Refusal::classify(&rustls::Error::NoCertificatesPresented), Refusal::NoCertificate);
        assert_eq!(Refusal::Expired.to_string(), "expired");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, cert(CertificateError::Revoked));
        assert_eq!(Refusal::from_io(&io), Refusal::Revoked);
    }
}
