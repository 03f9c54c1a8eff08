//! tonic's TLS configurations for the brand PKI: mutual TLS that trusts only the brand
//! CA. The analyst's client (`fedcrm hq`) dials with [`client_tls`]; the coordinator and
//! the nodes drive rustls themselves (`fedcrm_pki::tls`), which can also check a CRL.

use fedcrm_pki::{PrivateKeyPem, TLS_HANDSHAKE_TIMEOUT};

/// tonic server TLS: presents `cert_pem`/`key`, **requires** a client certificate
/// chaining to the brand CA (with `clientAuth`), and times out handshakes after
/// [`TLS_HANDSHAKE_TIMEOUT`]. Authorisation by role is up to the service: read the
/// peer's identity with [`fedcrm_pki::identity_from_cert`] on `request.peer_certs()`.
/// Malformed PEM surfaces as an error from `Server::builder().tls_config(..)`.
pub fn server_tls(ca_cert_pem: &str, cert_pem: &str, key: &PrivateKeyPem) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key.as_str()))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .client_auth_optional(false)
        .timeout(TLS_HANDSHAKE_TIMEOUT)
}

/// tonic client TLS: trusts **only** the brand CA (no system roots), presents
/// `cert_pem`/`key` as the client certificate, and checks that the server's
/// certificate is valid for `server_name` (the coordinator's
/// [`fedcrm_pki::Identity::name`]), whatever address is dialled. Malformed PEM surfaces
/// as an error from `Endpoint::tls_config(..)`.
pub fn client_tls(
    ca_cert_pem: &str,
    cert_pem: &str,
    key: &PrivateKeyPem,
    server_name: &str,
) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_cert_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key.as_str()))
        .domain_name(server_name)
}
