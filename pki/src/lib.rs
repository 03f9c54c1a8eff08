//! The brand PKI: one certificate authority per brand, run by HQ, and an
//! ECDSA P-256 certificate for every party that speaks the fedcrm protocol.
//!
//! # Model
//!
//! * HQ creates the brand CA once with [`ca_init`] and keeps its key offline-ish
//!   (it is only needed to issue certificates).
//! * Every party — the coordinator, each node (HQ's own and every franchisee's) and
//!   each analyst — generates its own key pair **on its own machine** with
//!   [`new_key_and_csr`] and sends only the certificate signing request (CSR) to HQ.
//!   HQ never sees a node's private key.
//! * HQ issues the certificate with [`sign_csr`], which re-checks everything the CSR
//!   claims and decides the certificate's extensions itself (never trusting the
//!   CSR's requested extensions beyond its DNS names).
//! * At run time both sides of every gRPC connection use mutual TLS that trusts only
//!   the brand CA ([`tls::server_config`], [`tls::client_config`]; tonic's configs
//!   for the analyst's client are in `fedcrm-protocol`); the application reads the peer's
//!   [`Identity`] from its certificate ([`identity_from_cert`], or
//!   [`verify_cert`] when the chain has not already been checked by TLS).
//! * Long-term signatures over protocol messages (e.g. key announcements) are made
//!   with the certified key ([`SigningKey`]) and checked against the peer's
//!   certificate ([`verify_signature`]).
//!
//! # Identity in the certificate
//!
//! The subject carries exactly three attributes: `CN` = the party's name (also the
//! certificate's only required DNS subject-alternative name, so it must be a valid
//! DNS name), `O` = its organisation, `OU` = its role string (see [`Role::as_str`]).
//!
//! # Crypto
//!
//! Everything uses *ring*: rcgen's `ring` backend for key generation and signing,
//! rustls-webpki's *ring* algorithms for chain validation and *ring* directly for
//! message signatures. Only ECDSA P-256 with SHA-256 is accepted anywhere.
//!
//! # Secrets
//!
//! Private keys travel as [`PrivateKeyPem`], which is zeroised on drop and never
//! printed by `Debug`. No error message in this module ever contains key material.
//! Copies made by libraries outside this crate (tonic's `Identity`, *ring*'s parsed
//! key) are beyond our control and are not zeroised.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME,
    OID_X509_ORGANIZATIONAL_UNIT,
};
use x509_parser::prelude::{FromDer as _, X509Certificate, X509Name};
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub mod crl;
pub mod tls;

/// Longest allowed party name (it is also a DNS name and the certificate's CN).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest allowed organisation name.
pub const MAX_ORGANISATION_CHARS: usize = 128;
/// Longest allowed brand name (the CA's CN is `"<brand> fedcrm brand CA"`, which
/// must stay within X.509's 64-character limit for a common name).
pub const MAX_BRAND_CHARS: usize = 48;
/// Longest validity any certificate may be given (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;
/// How far `not_before` is back-dated by [`Validity::days_from_now`] and
/// [`ca_init`], to tolerate modest clock skew between machines.
pub const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

/// TLS handshake timeout: the coordinator's acceptor and tonic's server config apply it.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// DER of the `id-kp-serverAuth` OID (1.3.6.1.5.5.7.3.1), without tag and length.
const EKU_SERVER_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER of the `id-kp-clientAuth` OID (1.3.6.1.5.5.7.3.2), without tag and length.
const EKU_CLIENT_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Everything that can go wrong in the brand PKI. Messages are lower-case, say
/// what to do, and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name, organisation or role does not meet the identity rules.
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    /// The brand name given to [`ca_init`] is unusable.
    #[error("invalid brand name: {0}")]
    InvalidBrand(String),
    /// A validity period is empty, too long or outlives the CA.
    #[error("invalid validity period: {0}")]
    InvalidValidity(String),
    /// A certificate signing request was malformed, badly signed or asked for
    /// something this CA does not issue.
    #[error("certificate signing request rejected: {0}")]
    Csr(String),
    /// A certificate (or PEM bundle) could not be parsed or has an unusable subject.
    #[error("unusable certificate: {0}")]
    Certificate(String),
    /// The CA certificate and key cannot be used to issue certificates.
    #[error("unusable ca material: {0}")]
    Ca(String),
    /// A private key could not be loaded. The message is always a fixed string so
    /// it can never echo key material.
    #[error("unusable private key: {0}")]
    PrivateKey(&'static str),
    /// A certificate failed chain validation against the brand CA.
    #[error("certificate rejected: {0}")]
    Verification(String),
    /// A revocation or certificate revocation list problem.
    #[error("certificate revocation: {0}")]
    Revocation(String),
    /// A message signature did not verify.
    #[error(
        "signature does not verify with the certificate's key; the message was altered or signed by someone else, so discard it"
    )]
    BadSignature,
    /// The system random number generator or the signer failed.
    #[error(
        "signing failed: the system random number generator is unavailable; retry, and check the os entropy source"
    )]
    Signing,
    /// rcgen failed to generate a key, CSR or certificate.
    #[error("generation failed: {0}")]
    Generation(String),
    /// Writing a secret file failed.
    #[error("could not write {path}: {error}; check that the directory exists and is writable")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
}

fn generation(what: &str, e: rcgen::Error) -> PkiError {
    PkiError::Generation(format!("{what}: {e}; this is a bug or an os problem, retry and report it if it persists"))
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

/// Which organisation runs a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrgKind {
    /// The brand's headquarters (which also holds data of its own stores).
    Hq,
    /// An independent franchisee.
    Franchisee,
}

impl OrgKind {
    /// `hq` or `franchisee`: the kind as rosters and audit records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Hq => "hq",
            OrgKind::Franchisee => "franchisee",
        }
    }
}

impl std::str::FromStr for OrgKind {
    type Err = UnknownOrgKind;

    /// Parses [`OrgKind::as_str`]'s form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [OrgKind::Hq, OrgKind::Franchisee].into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownOrgKind(s.into()))
    }
}

/// A text that is not an [`OrgKind`]'s string form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither \"hq\" nor \"franchisee\"")]
pub struct UnknownOrgKind(String);

/// What a party is allowed to do in the federation. Encoded as the certificate's
/// `OU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The central coordinator (the only role that may act as a TLS server).
    Coordinator,
    /// A data analyst submitting queries.
    Analyst,
    /// A data-holding node run by HQ or a franchisee.
    Node(OrgKind),
    /// Issue 11: signs the models HQ publishes; nodes check a model's signature against
    /// the brand CA and the publisher named in their node.toml before they score with it.
    Publisher,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 5] =
        [Role::Coordinator, Role::Analyst, Role::Node(OrgKind::Hq), Role::Node(OrgKind::Franchisee), Role::Publisher];

    /// The `OU` string for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "fedcrm-coordinator",
            Role::Analyst => "fedcrm-analyst",
            Role::Node(OrgKind::Hq) => "fedcrm-node-hq",
            Role::Node(OrgKind::Franchisee) => "fedcrm-node-franchisee",
            Role::Publisher => "fedcrm-model-publisher",
        }
    }

    /// Parses an `OU` string; `None` if it is not one of [`Role::as_str`]'s values.
    pub fn from_ou(ou: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == ou)
    }

    /// Whether a certificate for this role may authenticate a TLS server.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Coordinator)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::from_ou(s)
            .ok_or_else(|| PkiError::InvalidIdentity(format!("unknown role {s:?}; use one of {}", role_list())))
    }
}

fn role_list() -> String {
    Role::ALL.map(Role::as_str).join(", ")
}

/// Who a certificate belongs to. Encoded in the certificate subject:
/// `CN` = name, `O` = organisation, `OU` = role string (`"fedcrm-coordinator"`,
/// `"fedcrm-analyst"`, `"fedcrm-node-hq"`, `"fedcrm-node-franchisee"`,
/// `"fedcrm-model-publisher"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Unique party name; a DNS name of 1..=64 characters from `[a-z0-9.-]`.
    pub name: String,
    /// The organisation running the party (free text, 1..=128 characters).
    pub organisation: String,
    /// What the party may do.
    pub role: Role,
}

impl Identity {
    /// Checks the identity rules: `name` is 1..=64 characters of `[a-z0-9.-]` and a
    /// valid DNS name (non-empty labels that neither start nor end with `-`, not an
    /// IPv4 address); `organisation` is non-blank, at most 128 characters and has no
    /// control characters.
    pub fn validate(&self) -> Result<(), PkiError> {
        validate_name(&self.name)?;
        validate_free_text("organisation", &self.organisation, MAX_ORGANISATION_CHARS)
            .map_err(PkiError::InvalidIdentity)
    }

    fn distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.name.as_str());
        dn.push(DnType::OrganizationName, self.organisation.as_str());
        dn.push(DnType::OrganizationalUnitName, self.role.as_str());
        dn
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.role, self.organisation)
    }
}

fn validate_name(name: &str) -> Result<(), PkiError> {
    let bad = |why: &str| {
        PkiError::InvalidIdentity(format!(
            "name {name:?} {why}; use 1 to {MAX_NAME_CHARS} characters of a-z, 0-9, '.' and '-' forming a dns name, e.g. \"store-042.brand\""
        ))
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad("is too long"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-') {
        return Err(bad("contains characters other than a-z, 0-9, '.' and '-'"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label (leading, trailing or doubled '.')"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label starting or ending with '-'"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 characters"));
        }
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(bad("is an ip address"));
    }
    if rustls_pki_types::DnsName::try_from(name).is_err() {
        return Err(bad("is not a valid dns name"));
    }
    Ok(())
}

/// Checks free text (organisation, brand). Returns the problem, phrased with a fix.
fn validate_free_text(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} is empty; give a non-blank {what}"));
    }
    if value.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters; shorten it"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters; remove them"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Secret key material
// ---------------------------------------------------------------------------

/// A PEM-encoded PKCS#8 private key. Zeroised on drop; `Debug` prints
/// `PrivateKeyPem(..)`; deliberately not `Serialize`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// Wraps a PEM string (e.g. read from a 0600 file). Not validated here; use
    /// [`SigningKey::from_pem`] to check it.
    pub fn new(pem: String) -> Self {
        PrivateKeyPem(pem)
    }

    /// The PEM text, for handing to TLS or writing with [`write_private_file`].
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for PrivateKeyPem {
    fn from(pem: String) -> Self {
        PrivateKeyPem(pem)
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(..)")
    }
}

/// The brand CA: its certificate (public, distributed to every party) and its key
/// (HQ only).
#[derive(Debug, Clone)]
pub struct CaMaterial {
    /// The self-signed CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key.
    pub key: PrivateKeyPem,
}

/// Decodes a PKCS#8 PEM private key into zeroising DER. Errors never echo input.
fn pkcs8_der(pem: &PrivateKeyPem) -> Result<Zeroizing<PrivatePkcs8KeyDer<'static>>, PkiError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_str().as_bytes()).map(Zeroizing::new).map_err(|_| {
        PkiError::PrivateKey(
            "expected a pkcs#8 pem block (\"-----BEGIN PRIVATE KEY-----\"); pass the key file written by fedcrm",
        )
    })
}

fn rcgen_key_pair(pem: &PrivateKeyPem) -> Result<KeyPair, PkiError> {
    let der = pkcs8_der(pem)?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ECDSA_P256_SHA256)
        .map_err(|_| PkiError::PrivateKey("not an ecdsa p-256 key; fedcrm keys must be generated by fedcrm"))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Signing)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // and full length, so it never starts with a zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

fn now_truncated() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

// ---------------------------------------------------------------------------
// CA, CSR, issuance
// ---------------------------------------------------------------------------

/// Creates the brand CA: a fresh ECDSA P-256 key and a self-signed certificate
/// with `CN = "<brand> fedcrm brand CA"`, `O = brand`, `basicConstraints`
/// CA with path length 0 (it can only sign end-entity certificates), key usages
/// `keyCertSign` and `cRLSign`, a random serial, valid from five minutes ago for
/// `validity_days` days.
pub fn ca_init(brand: &str, validity_days: u32) -> Result<CaMaterial, PkiError> {
    validate_free_text("brand", brand, MAX_BRAND_CHARS).map_err(PkiError::InvalidBrand)?;
    if brand.trim() != brand {
        return Err(PkiError::InvalidBrand("brand has leading or trailing whitespace; remove it".into()));
    }
    check_days(validity_days)?;
    let validity = Validity::days_from_now(validity_days);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generation("ca key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{brand} fedcrm brand CA"));
    dn.push(DnType::OrganizationName, brand);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key).map_err(|e| generation("ca certificate", e))?;
    Ok(CaMaterial { cert_pem: cert.pem(), key: PrivateKeyPem(key.serialize_pem()) })
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity(format!(
            "{days} days is out of range; choose 1 to {MAX_VALIDITY_DAYS} days"
        )));
    }
    Ok(())
}

/// Generates a party's key pair (ECDSA P-256) and a CSR for `id`, to be run on the
/// party's own machine. The CSR's subject is `CN = name, O = organisation,
/// OU = role` and it requests a single DNS subject-alternative name, `id.name`.
/// Returns the private key (keep it: write it with [`write_private_file`]) and the
/// CSR in PEM (send it to HQ).
pub fn new_key_and_csr(id: &Identity) -> Result<(PrivateKeyPem, String), PkiError> {
    id.validate()?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generation("key pair", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = id.distinguished_name();
    params.subject_alt_names = vec![dns_san(&id.name)?];
    let csr = params.serialize_request(&key).map_err(|e| generation("certificate signing request", e))?;
    let csr_pem = csr.pem().map_err(|e| generation("certificate signing request pem", e))?;
    Ok((PrivateKeyPem(key.serialize_pem()), csr_pem))
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidIdentity(format!("name {name:?} is not ascii; use a-z, 0-9, '.' and '-'")))?;
    Ok(SanType::DnsName(ia5))
}

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago ([`CLOCK_SKEW_ALLOWANCE`]) until `days` days from now,
    /// in whole seconds. `days` is capped at [`MAX_VALIDITY_DAYS`]. `0` gives a
    /// certificate that expires as soon as it is issued, so use at least 1.
    pub fn days_from_now(days: u32) -> Self {
        let now = now_truncated();
        let days = days.min(MAX_VALIDITY_DAYS);
        Validity { not_before: now - CLOCK_SKEW_ALLOWANCE, not_after: now + time::Duration::days(i64::from(days)) }
    }
}

/// Issues a certificate for a CSR (run by HQ).
///
/// Checks, in order: the CSR PEM/DER parses; its self-signature verifies (proof that
/// the requester holds the key); the key is ECDSA P-256; the subject has exactly one
/// `CN`, `O` and `OU` and nothing else, and they form a valid [`Identity`]; every
/// requested subject-alternative name is a valid DNS name; the CA key matches the
/// CA certificate; the validity is non-empty and ends no later than the CA's.
///
/// The certificate copies the subject and the requested DNS names (always including
/// `CN`), is not a CA, has key usage `digitalSignature`, extended key usage
/// `serverAuth` + `clientAuth` for the coordinator and `clientAuth` only for
/// everyone else, a random 128-bit serial and an authority key identifier. Any other
/// extension in the CSR is rejected rather than copied.
pub fn sign_csr(ca: &CaMaterial, csr_pem: &str, validity: Validity) -> Result<(String, Identity), PkiError> {
    let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| {
        PkiError::Csr(
            "no \"-----BEGIN CERTIFICATE REQUEST-----\" block found; pass the .csr file produced by fedcrm".into(),
        )
    })?;

    // rcgen parses with x509-parser and verifies the self-signature.
    let csr = CertificateSigningRequestParams::from_der(&csr_der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => PkiError::Csr(
            "its signature does not verify, so the requester has not proven it holds the key; ask for a fresh csr".into(),
        ),
        rcgen::Error::UnsupportedExtension => PkiError::Csr(
            "it requests extensions other than subject alternative names, key usage or extended key usage; regenerate it with fedcrm".into(),
        ),
        rcgen::Error::UnsupportedSignatureAlgorithm => PkiError::Csr(
            "it uses an unsupported signature algorithm; fedcrm keys are ecdsa p-256, regenerate it with fedcrm".into(),
        ),
        other => PkiError::Csr(format!("it could not be parsed ({other}); regenerate it with fedcrm")),
    })?;
    if *csr.public_key.algorithm() != PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::Csr("its key is not ecdsa p-256 with sha-256; regenerate it with fedcrm".into()));
    }

    // Parse again ourselves for the subject and the exact public key parameters.
    let (rest, parsed) = X509CertificationRequest::from_der(&csr_der)
        .map_err(|e| PkiError::Csr(format!("it could not be parsed ({e}); regenerate it with fedcrm")))?;
    if !rest.is_empty() {
        return Err(PkiError::Csr("trailing bytes after the request; pass the .csr file unmodified".into()));
    }
    let info = &parsed.certification_request_info;
    check_p256_spki(&info.subject_pki).map_err(|why| PkiError::Csr(format!("its {why}; regenerate it with fedcrm")))?;
    let identity = identity_from_name(&info.subject)
        .map_err(|why| PkiError::Csr(format!("its subject {why}; regenerate it with `new_key_and_csr`")))?;
    identity.validate().map_err(|e| PkiError::Csr(e.to_string()))?;

    // Subject alternative names: DNS names only, each valid; CN always included.
    let mut sans = Vec::new();
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(dns) => {
                let dns = dns.as_str();
                validate_name(dns).map_err(|e| PkiError::Csr(format!("a requested dns name is invalid: {e}")))?;
                if !sans.contains(&dns.to_owned()) {
                    sans.push(dns.to_owned());
                }
            }
            _ => {
                return Err(PkiError::Csr(
                    "it requests a subject alternative name that is not a dns name; only dns names are issued, regenerate it with fedcrm".into(),
                ));
            }
        }
    }
    if !sans.contains(&identity.name) {
        sans.insert(0, identity.name.clone());
    }

    // The CA.
    let ca_der = single_cert_der(&ca.cert_pem).map_err(|e| PkiError::Ca(e.to_string()))?;
    let ca_key = rcgen_key_pair(&ca.key)?;
    let (ca_not_after, ca_spki_matches) = {
        let (_, ca_cert) = X509Certificate::from_der(&ca_der)
            .map_err(|e| PkiError::Ca(format!("the ca certificate does not parse ({e}); restore it from backup")))?;
        if !ca_cert.is_ca() {
            return Err(PkiError::Ca(
                "the ca certificate is not a ca certificate; pass the brand ca created by `ca_init`".into(),
            ));
        }
        (
            ca_cert.validity().not_after.timestamp(),
            ca_cert.public_key().subject_public_key.data.as_ref() == ca_key.public_key_raw(),
        )
    };
    if !ca_spki_matches {
        return Err(PkiError::Ca(
            "the ca key does not belong to the ca certificate; pass the key file created together with this certificate".into(),
        ));
    }
    if validity.not_after <= validity.not_before {
        return Err(PkiError::InvalidValidity(
            "not_after is not later than not_before; use `Validity::days_from_now`".into(),
        ));
    }
    if validity.not_after.unix_timestamp() > ca_not_after {
        return Err(PkiError::InvalidValidity(
            "the certificate would outlive the brand ca; choose fewer days or renew the ca first".into(),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()), ca_key)
        .map_err(|e| PkiError::Ca(format!("the ca certificate is unusable ({e}); restore it from backup")))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = identity.distinguished_name();
    params.subject_alt_names = sans.iter().map(|s| dns_san(s)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if identity.role.is_server() {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.use_authority_key_identifier_extension = true;

    let cert = params.signed_by(&csr.public_key, &issuer).map_err(|e| generation("certificate", e))?;
    Ok((cert.pem(), identity))
}

/// Checks that a SubjectPublicKeyInfo is an uncompressed ECDSA P-256 point.
fn check_p256_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), &'static str> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err("public key is not an elliptic-curve key");
    }
    let curve_ok =
        spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).is_some_and(|oid| oid == OID_EC_P256);
    if !curve_ok {
        return Err("public key is not on curve p-256");
    }
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != 65 || point[0] != 0x04 || spki.subject_public_key.unused_bits != 0 {
        return Err("public key is not an uncompressed p-256 point");
    }
    Ok(())
}

/// Reads an [`Identity`] from a subject name: exactly one each of CN, O and OU,
/// nothing else. Returns the problem phrased as "… is …".
fn identity_from_name(name: &X509Name<'_>) -> Result<Identity, String> {
    let (mut cn, mut o, mut ou) = (None, None, None);
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let slot = if *oid == OID_X509_COMMON_NAME {
            (&mut cn, "CN")
        } else if *oid == OID_X509_ORGANIZATION_NAME {
            (&mut o, "O")
        } else if *oid == OID_X509_ORGANIZATIONAL_UNIT {
            (&mut ou, "OU")
        } else {
            return Err(format!("has an unexpected attribute {oid}; only CN, O and OU are allowed"));
        };
        let value = attr.as_str().map_err(|_| format!("{} is not a text string", slot.1))?;
        if slot.0.replace(value.to_owned()).is_some() {
            return Err(format!("has more than one {}", slot.1));
        }
    }
    let name = cn.ok_or("is missing CN (the party name)")?;
    let organisation = o.ok_or("is missing O (the organisation)")?;
    let ou = ou.ok_or("is missing OU (the role)")?;
    let role = Role::from_ou(&ou).ok_or_else(|| format!("has unknown role OU {ou:?}; use one of {}", role_list()))?;
    Ok(Identity { name, organisation, role })
}

// ---------------------------------------------------------------------------
// Reading and verifying certificates
// ---------------------------------------------------------------------------

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
        PkiError::Certificate(format!(
            "it does not parse as x.509 der ({e}); pass a certificate issued by the brand ca"
        ))
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate(
            "trailing bytes after the certificate; pass exactly one der certificate".into(),
        ));
    }
    Ok(cert)
}

/// Reads the [`Identity`] from a DER certificate's subject and validates it.
///
/// This does **not** check who issued the certificate: use it on certificates
/// already verified by the mutual-TLS handshake (e.g. tonic's `peer_certs()`), and
/// [`verify_cert`] otherwise.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse_cert(der)?;
    let identity = identity_from_name(cert.subject())
        .map_err(|why| PkiError::Certificate(format!("its subject {why}; it was not issued by a fedcrm brand ca")))?;
    identity.validate()?;
    Ok(identity)
}

/// A DER certificate's `notAfter`, in unix seconds (for expiry warnings).
pub fn not_after_unix(der: &[u8]) -> Result<i64, PkiError> {
    Ok(parse_cert(der)?.validity().not_after.timestamp())
}

/// A DER certificate's serial number, lower-case hex (as CRL entries name it).
pub fn serial_hex(der: &[u8]) -> Result<String, PkiError> {
    Ok(hex::encode(parse_cert(der)?.raw_serial()))
}

/// Splits a PEM bundle into DER certificates, in order. Errors if a block is
/// malformed or there is no certificate at all.
pub fn pem_to_der_certs(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Certificate(format!("malformed pem ({e}); pass the certificate file unmodified")))?;
    if certs.is_empty() {
        return Err(PkiError::Certificate(
            "no \"-----BEGIN CERTIFICATE-----\" block found; pass a certificate pem file".into(),
        ));
    }
    Ok(certs)
}

fn single_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut certs = pem_to_der_certs(pem)?;
    if certs.len() != 1 {
        return Err(PkiError::Certificate(format!(
            "expected exactly one certificate, found {}; pass a single certificate pem file",
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

/// What a certificate is being used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// Authenticating the client side of a TLS connection (any role).
    Client,
    /// Authenticating the server side of a TLS connection (coordinator only).
    Server,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Usage::Client => "tls client",
            Usage::Server => "tls server",
        })
    }
}

/// Checks an end-entity certificate against the brand CA at `now_unix` (seconds
/// since the Unix epoch) for `usage`, with rustls-webpki (ECDSA P-256/SHA-256 only;
/// the certificate must carry the matching extended key usage), then reads and
/// validates its [`Identity`]. For [`Usage::Server`] the role must also be the
/// coordinator.
pub fn verify_cert(ca_cert_der: &[u8], cert_der: &[u8], now_unix: u64, usage: Usage) -> Result<Identity, PkiError> {
    let ca = CertificateDer::from(ca_cert_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| {
        PkiError::Ca(format!("the brand ca certificate is unusable as a trust anchor ({e}); pass the brand's ca.pem"))
    })?;
    let cert = CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&cert).map_err(|e| {
        PkiError::Certificate(format!(
            "it is not a usable end-entity certificate ({e}); pass a certificate issued by the brand ca"
        ))
    })?;
    let (eku, eku_name) = match usage {
        Usage::Client => (webpki::KeyUsage::required(EKU_CLIENT_AUTH_OID), "clientAuth"),
        Usage::Server => (webpki::KeyUsage::required(EKU_SERVER_AUTH_OID), "serverAuth"),
    };
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_unix));
    ee.verify_for_usage(&[webpki::ring::ECDSA_P256_SHA256], &[anchor], &[], time, eku, None, None)
        .map_err(|e| PkiError::Verification(webpki_reason(&e, usage, eku_name)))?;

    let identity = identity_from_cert(cert_der)?;
    if usage == Usage::Server && !identity.role.is_server() {
        return Err(PkiError::Verification(format!(
            "{} has role {} and may not act as a tls server; only the coordinator may",
            identity.name, identity.role
        )));
    }
    Ok(identity)
}

fn webpki_reason(e: &webpki::Error, usage: Usage, eku_name: &str) -> String {
    #[allow(deprecated)]
    match e {
        webpki::Error::CertExpired { .. } => "it has expired; have hq issue a new certificate from a fresh csr".into(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet; check this machine's clock".into(),
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            "it was not issued by this brand's ca; use a certificate from this brand's hq".into()
        }
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            format!(
                "it is not allowed for {usage} use (no {eku_name} extended key usage); use the certificate issued for that role"
            )
        }
        webpki::Error::CaUsedAsEndEntity => "it is a ca certificate; use the party's own certificate".into(),
        other => format!("chain validation failed ({other}); use a certificate issued by this brand's ca"),
    }
}

// ---------------------------------------------------------------------------
// Long-term message signatures
// ---------------------------------------------------------------------------

/// A party's certified private key, for long-term signatures over protocol
/// messages (ECDSA P-256 / SHA-256, ASN.1 DER signatures). `Debug` prints
/// `SigningKey(..)`. The intermediate DER is zeroised; *ring* does not expose a
/// way to zeroise its parsed key, so that copy lives until drop unwiped.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// Loads a PKCS#8 PEM ECDSA P-256 key (as produced by [`new_key_and_csr`]).
    pub fn from_pem(pem: &PrivateKeyPem) -> Result<Self, PkiError> {
        let der = pkcs8_der(pem)?;
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der(), &rng).map_err(|_| {
                PkiError::PrivateKey(
                    "not an ecdsa p-256 pkcs#8 key; pass the key generated by fedcrm for this certificate",
                )
            })?;
        Ok(SigningKey { pair, rng })
    }

    /// Signs `msg` (ECDSA P-256, SHA-256, ASN.1 DER signature).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.pair.sign(&self.rng, msg).map(|s| s.as_ref().to_vec()).map_err(|_| PkiError::Signing)
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        use ring::signature::KeyPair as _;
        self.pair.public_key().as_ref()
    }

    /// Checks that this key is the one certified by `cert_der`; use at start-up to
    /// catch a key file paired with the wrong certificate.
    pub fn check_matches_cert(&self, cert_der: &[u8]) -> Result<(), PkiError> {
        let cert = parse_cert(cert_der)?;
        if cert.public_key().subject_public_key.data.as_ref() != self.public_key() {
            return Err(PkiError::Certificate(
                "it does not certify this private key; pair the key file with the certificate issued for its csr"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// A party's audit-log head signed with its certified key, as a message carries it:
/// `fedcrm_audit`'s `SignedHead` without the party, who is the message's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    /// Time of the sender's record `seq` (ms since the Unix epoch); signed with the head.
    pub time_ms: u64,
    pub head: [u8; 32],
    pub signature: Vec<u8>,
}

/// Verifies an ECDSA P-256 / SHA-256 ASN.1 signature `sig` over `msg` with the
/// public key in `cert_der`. This checks only the signature: verify the
/// certificate itself first (mutual TLS or [`verify_cert`]).
pub fn verify_signature(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), PkiError> {
    let cert = parse_cert(cert_der)?;
    let spki = cert.public_key();
    check_p256_spki(spki)
        .map_err(|why| PkiError::Certificate(format!("its {why}; it was not issued by a fedcrm brand ca")))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki.subject_public_key.data.as_ref())
        .verify(msg, sig)
        .map_err(|_| PkiError::BadSignature)
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Writes a secret file (e.g. a private key): on Unix it is created with mode
/// 0600, and an existing file is reset to 0600 *before* its contents are replaced.
/// The data is fsynced before returning.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let io = |error| PkiError::Io { path: path.to_path_buf(), error };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    file.set_len(0).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}
