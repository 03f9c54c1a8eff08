//! Revocation: the brand CA's certificate revocation list (RFC 5280 §5), made with
//! rcgen, read back with x509-parser and checked with *ring*. The CA keeps one CRL
//! (`ca/crl.pem`); each revocation re-issues it with every earlier entry, a CRL
//! number one higher, and a signature by the CA key. The TLS verifiers of
//! [`super::tls`] check it (rustls-webpki). Never touches the network or a clock:
//! callers pass `now`.

use std::fmt;

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{CaMaterial, Identity, PkiError, identity_from_cert, rcgen_key_pair, single_cert_der};

/// How long a CRL says it is current (`nextUpdate`). The verifiers do not enforce
/// it (a stale list still revokes what it lists), so this is only a promise to
/// re-issue the list within a year.
pub const CRL_VALIDITY: time::Duration = time::Duration::days(365);

/// Why a certificate was revoked (RFC 5280 §5.3.1 `CRLReason`, the values that make
/// sense for a party's certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Unspecified,
    /// The party's private key was, or may have been, disclosed.
    KeyCompromise,
    /// The party changed organisation (e.g. a franchisee was sold).
    AffiliationChanged,
    /// A new certificate replaces this one (rotation).
    Superseded,
    /// The party left the federation.
    CessationOfOperation,
}

impl Reason {
    /// Every reason, in `CRLReason` order.
    pub const ALL: [Reason; 5] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
    ];

    /// The RFC 5280 name, e.g. `keyCompromise`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
        }
    }

    fn code(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }

    fn from_code(code: u8) -> Reason {
        Reason::ALL.into_iter().find(|r| r.code() as u8 == code).unwrap_or(Reason::Unspecified)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Reason {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            PkiError::Revocation(format!(
                "unknown revocation reason {s:?}; use one of {}",
                Reason::ALL.map(Reason::as_str).join(", ")
            ))
        })
    }
}

/// One entry of the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial, lower-case hex (as `ca sign`'s audit record names it).
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
    pub reason: Reason,
}

/// A CRL just issued by [`revoke`].
#[derive(Debug, Clone)]
pub struct Issued {
    /// The new CRL, PEM (`-----BEGIN X509 CRL-----`).
    pub crl_pem: String,
    /// The entry added.
    pub revoked: Revoked,
    /// Whose certificate it was.
    pub identity: Identity,
    /// Its CRL number.
    pub crl_number: u64,
    /// How many certificates the CRL now lists.
    pub entries: usize,
}

/// The CA certificate's DER and its public point, checking that `ca` is usable.
fn ca_key_point(ca_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let (_, ca_cert) = X509Certificate::from_der(ca_der)
        .map_err(|e| PkiError::Ca(format!("the ca certificate does not parse ({e}); restore it from backup")))?;
    Ok((ca_cert.subject().as_raw().to_vec(), ca_cert.public_key().subject_public_key.data.to_vec()))
}

/// Reads a CRL PEM (one `X509 CRL` block) and checks that the brand CA (`ca_der`)
/// signed it: a list from another CA would make every handshake fail with an
/// unknown revocation status, so it is refused when loaded, not at the first node.
/// Returns the DER (for the TLS verifiers) and its entries.
pub fn load(ca_der: &[u8], crl_pem: &str) -> Result<(CertificateRevocationListDer<'static>, Vec<Revoked>), PkiError> {
    let mut blocks = CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Revocation(format!("malformed pem ({e}); use the crl.pem written by `ca revoke`")))?;
    if blocks.len() != 1 {
        return Err(PkiError::Revocation(format!(
            "expected exactly one \"-----BEGIN X509 CRL-----\" block, found {}; use the crl.pem written by `ca revoke`",
            blocks.len()
        )));
    }
    let der = blocks.remove(0);
    let entries = {
        let (rest, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| {
            PkiError::Revocation(format!("it does not parse as a crl ({e}); use the crl.pem written by `ca revoke`"))
        })?;
        if !rest.is_empty() {
            return Err(PkiError::Revocation("trailing bytes after the crl; use the file unmodified".into()));
        }
        let (subject, point) = ca_key_point(ca_der)?;
        let signed_by_ca = crl.tbs_cert_list.issuer.as_raw() == subject.as_slice()
            && UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
                .verify(crl.tbs_cert_list.as_ref(), crl.signature_value.data.as_ref())
                .is_ok();
        if !signed_by_ca {
            return Err(PkiError::Revocation(
                "it was not signed by this brand's ca; use the crl.pem from the ca directory whose ca.pem you trust"
                    .into(),
            ));
        }
        crl.iter_revoked_certificates()
            .map(|r| Revoked {
                serial_hex: hex::encode(r.raw_serial()),
                revoked_at: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                reason: r.reason_code().map(|(_, c)| Reason::from_code(c.0)).unwrap_or(Reason::Unspecified),
            })
            .collect()
    };
    Ok((der, entries))
}

fn crl_number(der: &[u8]) -> u64 {
    CertificateRevocationList::from_der(der)
        .ok()
        .and_then(|(_, crl)| crl.crl_number().map(|n| n.to_bytes_be()))
        .map(|b| b.iter().fold(0u64, |acc, x| acc.saturating_mul(256).saturating_add(u64::from(*x))))
        .unwrap_or(0)
}

/// Revokes `cert_pem` (issued by `ca`): returns a new CRL listing it and every entry
/// of `current_crl_pem` (the CA's `crl.pem`, if it has one), signed by the CA key,
/// with `thisUpdate = now`.
///
/// Refuses a certificate that the CA did not sign (its serial would mean nothing in
/// this CA's list) and one the list already names.
pub fn revoke(
    ca: &CaMaterial,
    current_crl_pem: Option<&str>,
    cert_pem: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<Issued, PkiError> {
    let ca_der = single_cert_der(&ca.cert_pem).map_err(|e| PkiError::Ca(e.to_string()))?;
    let cert_der = single_cert_der(cert_pem)?;
    let identity = identity_from_cert(&cert_der)?;
    let serial = {
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| PkiError::Certificate(format!("it does not parse ({e}); pass the certificate pem file")))?;
        let (subject, point) = ca_key_point(&ca_der)?;
        let issued_here = cert.issuer().as_raw() == subject.as_slice()
            && UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
                .verify(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
                .is_ok();
        if !issued_here {
            return Err(PkiError::Revocation(format!(
                "the certificate of {} was not issued by this ca; revoke it with the ca that issued it",
                identity.name
            )));
        }
        cert.raw_serial().to_vec()
    };
    let serial_hex = hex::encode(&serial);

    let (mut entries, number) = match current_crl_pem {
        Some(pem) => {
            let (der, entries) = load(&ca_der, pem)?;
            (entries, crl_number(der.as_ref()))
        }
        None => (Vec::new(), 0),
    };
    if let Some(old) = entries.iter().find(|e| e.serial_hex == serial_hex) {
        return Err(PkiError::Revocation(format!(
            "the certificate of {} (serial {serial_hex}) is already revoked since {} ({}); nothing to do",
            identity.name,
            old.revoked_at.date(),
            old.reason
        )));
    }
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let revoked = Revoked { serial_hex, revoked_at: now, reason };
    entries.push(revoked.clone());

    let crl_number = number.saturating_add(1);
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(&e.serial_hex).map_err(|_| {
                        PkiError::Revocation("a serial in crl.pem is not hex; restore it from backup".into())
                    })?),
                    revocation_time: e.revoked_at,
                    reason_code: Some(e.reason.code()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, PkiError>>()?,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()), rcgen_key_pair(&ca.key)?)
        .map_err(|e| PkiError::Ca(format!("the ca certificate is unusable ({e}); restore it from backup")))?;
    let crl = params.signed_by(&issuer).map_err(|e| super::generation("certificate revocation list", e))?;
    let crl_pem = crl.pem().map_err(|e| super::generation("certificate revocation list pem", e))?;
    let entries = entries.len();
    Ok(Issued { crl_pem, revoked, identity, crl_number, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OrgKind, Role, Validity, ca_init, new_key_and_csr, sign_csr};

    fn cert(ca: &CaMaterial, name: &str) -> String {
        let id = Identity { name: name.into(), organisation: "Org".into(), role: Role::Node(OrgKind::Franchisee) };
        let (_, csr) = new_key_and_csr(&id).unwrap();
        sign_csr(ca, &csr, Validity::days_from_now(10)).unwrap().0
    }

    #[test]
    fn revocations_accumulate_in_one_signed_list() {
        let ca = ca_init("brand", 30).unwrap();
        let (a, b) = (cert(&ca, "a.brand"), cert(&ca, "b.brand"));
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let first = revoke(&ca, None, &a, Reason::KeyCompromise, now).unwrap();
        assert_eq!((first.crl_number, first.entries, first.identity.name.as_str()), (1, 1, "a.brand"));
        let second = revoke(&ca, Some(&first.crl_pem), &b, Reason::Superseded, now).unwrap();
        assert_eq!((second.crl_number, second.entries), (2, 2));
        let ca_der = single_cert_der(&ca.cert_pem).unwrap();
        let (_, entries) = load(&ca_der, &second.crl_pem).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], first.revoked);
        assert_eq!(entries[0].reason, Reason::KeyCompromise);
        assert_eq!(entries[1].reason, Reason::Superseded);
        assert_eq!(entries[1].revoked_at, now);
        // The same certificate twice is refused, naming it.
        let err = revoke(&ca, Some(&second.crl_pem), &a, Reason::Unspecified, now).unwrap_err().to_string();
        assert!(err.contains("a.brand") && err.contains("already revoked"), "{err}");
    }

    #[test]
    fn a_list_or_certificate_of_another_ca_is_refused() {
        let ca = ca_init("brand", 30).unwrap();
        let other = ca_init("brand", 30).unwrap(); // same name, another key
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let foreign_cert = cert(&other, "x.brand");
        let err = revoke(&ca, None, &foreign_cert, Reason::Unspecified, now).unwrap_err().to_string();
        assert!(err.contains("not issued by this ca"), "{err}");
        let foreign_crl = revoke(&other, None, &foreign_cert, Reason::Unspecified, now).unwrap().crl_pem;
        let err = load(&single_cert_der(&ca.cert_pem).unwrap(), &foreign_crl).unwrap_err().to_string();
        assert!(err.contains("not signed by this brand's ca"), "{err}");
        assert!(load(&single_cert_der(&ca.cert_pem).unwrap(), "junk").is_err());
    }

    #[test]
    fn reasons_parse_by_their_rfc_names() {
        assert_eq!("keyCompromise".parse::<Reason>().unwrap(), Reason::KeyCompromise);
        assert_eq!("superseded".parse::<Reason>().unwrap(), Reason::Superseded);
        let err = "stolen".parse::<Reason>().unwrap_err().to_string();
        assert!(err.contains("keyCompromise"), "{err}");
    }
}
