//! The brand PKI's tests: identities, CSRs, issuance, chain and usage checks,
//! signatures and key files. Public API only. (Real mutual-TLS handshakes through
//! tonic are in `protocol/tests/tls.rs`.)

use fedcrm_pki::*;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The one certificate in a PEM file: the crate's private `single_cert_der`, through
/// the public [`pem_to_der_certs`].
fn single_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut certs = pem_to_der_certs(pem)?;
    assert_eq!(certs.len(), 1, "expected exactly one certificate");
    Ok(certs.remove(0))
}

/// Now, in whole seconds (as the crate's private `now_truncated`).
fn now_truncated() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn node_id(name: &str) -> Identity {
    Identity { name: name.into(), organisation: "Franchise Co 42 Ltd".into(), role: Role::Node(OrgKind::Franchisee) }
}

fn coordinator_id() -> Identity {
    Identity { name: "coordinator.brand".into(), organisation: "Brand HQ".into(), role: Role::Coordinator }
}

fn issue(ca: &CaMaterial, id: &Identity, validity: Validity) -> (PrivateKeyPem, Vec<u8>) {
    let (key, csr) = new_key_and_csr(id).unwrap();
    let (cert_pem, issued) = sign_csr(ca, &csr, validity).unwrap();
    assert_eq!(&issued, id);
    (key, single_cert_der(&cert_pem).unwrap())
}

fn ca_der(ca: &CaMaterial) -> Vec<u8> {
    single_cert_der(&ca.cert_pem).unwrap()
}

fn now() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().try_into().unwrap()
}

/// A CSR built directly with rcgen (bypassing `new_key_and_csr`'s checks).
fn raw_csr(dn: &[(DnType, &str)], sans: &[&str]) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    for (t, v) in dn {
        name.push(t.clone(), *v);
    }
    params.distinguished_name = name;
    params.subject_alt_names = sans.iter().map(|s| SanType::DnsName((*s).to_owned().try_into().unwrap())).collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn ca_node_round_trip() {
    let ca = ca_init("Acme Coffee", 3650).unwrap();
    let ca_parsed = single_cert_der(&ca.cert_pem).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca_parsed).unwrap();
    assert!(ca_cert.is_ca());
    assert_eq!(ca_cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "Acme Coffee fedcrm brand CA");
    let bc = ca_cert.basic_constraints().unwrap().unwrap().value;
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca_cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());

    let id = node_id("store-042.acme");
    let (key, cert) = issue(&ca, &id, Validity::days_from_now(365));
    assert_eq!(identity_from_cert(&cert).unwrap(), id);
    assert_eq!(verify_cert(&ca_parsed, &cert, now(), Usage::Client).unwrap(), id);
    SigningKey::from_pem(&key).unwrap().check_matches_cert(&cert).unwrap();

    let (_, parsed) = X509Certificate::from_der(&cert).unwrap();
    assert!(!parsed.is_ca());
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let san = parsed.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1);
    assert_eq!(format!("{:?}", san.general_names[0]), "DNSName(\"store-042.acme\")");
    // Serials are random and full length (not derived from the key).
    assert_eq!(parsed.raw_serial().len(), 16);
    let (_, again) = issue(&ca, &id, Validity::days_from_now(1));
    let (_, again) = X509Certificate::from_der(&again).unwrap();
    assert_ne!(parsed.raw_serial(), again.raw_serial());
}

#[test]
fn every_role_round_trips() {
    let ca = ca_init("brand", 30).unwrap();
    for role in Role::ALL {
        let id = Identity { name: format!("{}.brand", role.as_str()), organisation: "Brand".into(), role };
        let (_, cert) = issue(&ca, &id, Validity::days_from_now(10));
        assert_eq!(identity_from_cert(&cert).unwrap(), id);
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
    }
}

#[test]
fn coordinator_is_server_and_client() {
    let ca = ca_init("brand", 30).unwrap();
    let id = coordinator_id();
    let (_, cert) = issue(&ca, &id, Validity::days_from_now(10));
    let ca = ca_der(&ca);
    assert_eq!(verify_cert(&ca, &cert, now(), Usage::Server).unwrap(), id);
    assert_eq!(verify_cert(&ca, &cert, now(), Usage::Client).unwrap(), id);
}

#[test]
fn node_cert_cannot_be_server() {
    let ca = ca_init("brand", 30).unwrap();
    let (_, cert) = issue(&ca, &node_id("n1.brand"), Validity::days_from_now(10));
    let err = verify_cert(&ca_der(&ca), &cert, now(), Usage::Server).unwrap_err();
    assert!(matches!(err, PkiError::Verification(_)), "{err}");
    assert!(err.to_string().contains("serverAuth"), "{err}");
}

#[test]
fn cert_from_other_ca_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let other = ca_init("brand", 30).unwrap(); // same name, different key
    let (_, cert) = issue(&other, &node_id("n1.brand"), Validity::days_from_now(10));
    let err = verify_cert(&ca_der(&ca), &cert, now(), Usage::Client).unwrap_err();
    assert!(err.to_string().contains("not issued by this brand's ca"), "{err}");
}

#[test]
fn expired_and_not_yet_valid_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let t = now_truncated();
    let past = Validity { not_before: t - time::Duration::days(10), not_after: t - time::Duration::days(1) };
    let (_, cert) = issue(&ca, &node_id("n1.brand"), past);
    let err = verify_cert(&ca_der(&ca), &cert, now(), Usage::Client).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let (_, cert) = issue(&ca, &node_id("n2.brand"), Validity::days_from_now(5));
    let later = now() + 6 * 86_400;
    let err = verify_cert(&ca_der(&ca), &cert, later, Usage::Client).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let earlier = now() - 3600;
    let err = verify_cert(&ca_der(&ca), &cert, earlier, Usage::Client).unwrap_err();
    assert!(err.to_string().contains("not valid yet"), "{err}");
}

#[test]
fn validity_must_fit_inside_ca() {
    let ca = ca_init("brand", 30).unwrap();
    let (_, csr) = new_key_and_csr(&node_id("n1.brand")).unwrap();
    let err = sign_csr(&ca, &csr, Validity::days_from_now(31)).unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity(_)), "{err}");
    let t = now_truncated();
    let empty = Validity { not_before: t, not_after: t };
    assert!(matches!(sign_csr(&ca, &csr, empty), Err(PkiError::InvalidValidity(_))));
    assert!(matches!(ca_init("brand", 0), Err(PkiError::InvalidValidity(_))));
}

#[test]
fn ca_itself_is_not_an_end_entity() {
    let ca = ca_init("brand", 30).unwrap();
    let der = ca_der(&ca);
    let err = verify_cert(&der, &der, now(), Usage::Client).unwrap_err();
    assert!(matches!(&err, PkiError::Verification(m) if m.contains("it is a ca certificate")), "{err:?}");
}

#[test]
fn mismatched_ca_key_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let other = ca_init("brand", 30).unwrap();
    let frankenstein = CaMaterial { cert_pem: ca.cert_pem.clone(), key: other.key.clone() };
    let (_, csr) = new_key_and_csr(&node_id("n1.brand")).unwrap();
    let err = sign_csr(&frankenstein, &csr, Validity::days_from_now(1)).unwrap_err();
    assert!(matches!(err, PkiError::Ca(_)), "{err}");
}

#[test]
fn sign_verify_round_trip_and_bit_flips_fail() {
    let ca = ca_init("brand", 30).unwrap();
    let (key, cert) = issue(&ca, &node_id("n1.brand"), Validity::days_from_now(10));
    let signer = SigningKey::from_pem(&key).unwrap();
    let msg = b"round 7: pubkey announcement".to_vec();
    let sig = signer.sign(&msg).unwrap();
    verify_signature(&cert, &msg, &sig).unwrap();

    let mut bad_msg = msg.clone();
    bad_msg[3] ^= 0x01;
    assert!(matches!(verify_signature(&cert, &bad_msg, &sig), Err(PkiError::BadSignature)));
    let mut bad_sig = sig.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    assert!(matches!(verify_signature(&cert, &msg, &bad_sig), Err(PkiError::BadSignature)));
    // Someone else's certificate.
    let (_, other_cert) = issue(&ca, &node_id("n2.brand"), Validity::days_from_now(10));
    assert!(matches!(verify_signature(&other_cert, &msg, &sig), Err(PkiError::BadSignature)));
    assert!(matches!(signer.check_matches_cert(&other_cert), Err(PkiError::Certificate(_))));
}

#[test]
fn csr_missing_ou_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let csr = raw_csr(&[(DnType::CommonName, "n1.brand"), (DnType::OrganizationName, "Brand")], &["n1.brand"]);
    let err = sign_csr(&ca, &csr, Validity::days_from_now(1)).unwrap_err();
    assert!(matches!(err, PkiError::Csr(_)), "{err}");
    assert!(err.to_string().contains("missing OU"), "{err}");
}

#[test]
fn csr_with_invalid_name_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    for bad in ["Store_42", "", "-x.brand", "a..b", "10.0.0.1", "x.brand."] {
        let csr = raw_csr(
            &[
                (DnType::CommonName, bad),
                (DnType::OrganizationName, "Brand"),
                (DnType::OrganizationalUnitName, "fedcrm-node-franchisee"),
            ],
            &[],
        );
        let err = sign_csr(&ca, &csr, Validity::days_from_now(1)).unwrap_err();
        assert!(matches!(err, PkiError::Csr(_)), "{bad:?}: {err}");
    }
    // And `new_key_and_csr` refuses to create one in the first place.
    assert!(matches!(new_key_and_csr(&node_id("Store_42")), Err(PkiError::InvalidIdentity(_))));
}

#[test]
fn csr_with_unknown_role_extra_attribute_or_bad_san_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let v = Validity::days_from_now(1);
    let unknown_role = raw_csr(
        &[
            (DnType::CommonName, "n1.brand"),
            (DnType::OrganizationName, "Brand"),
            (DnType::OrganizationalUnitName, "fedcrm-admin"),
        ],
        &[],
    );
    assert!(matches!(sign_csr(&ca, &unknown_role, v), Err(PkiError::Csr(_))));
    let extra = raw_csr(
        &[
            (DnType::CommonName, "n1.brand"),
            (DnType::OrganizationName, "Brand"),
            (DnType::OrganizationalUnitName, "fedcrm-analyst"),
            (DnType::CountryName, "DE"),
        ],
        &[],
    );
    assert!(matches!(sign_csr(&ca, &extra, v), Err(PkiError::Csr(_))));
    let bad_san = raw_csr(
        &[
            (DnType::CommonName, "n1.brand"),
            (DnType::OrganizationName, "Brand"),
            (DnType::OrganizationalUnitName, "fedcrm-analyst"),
        ],
        &["*.brand"],
    );
    assert!(matches!(sign_csr(&ca, &bad_san, v), Err(PkiError::Csr(_))));
    // A well-formed raw CSR without SANs still gets CN as its DNS name.
    let ok = raw_csr(
        &[
            (DnType::CommonName, "n1.brand"),
            (DnType::OrganizationName, "Brand"),
            (DnType::OrganizationalUnitName, "fedcrm-analyst"),
        ],
        &[],
    );
    let (pem, id) = sign_csr(&ca, &ok, v).unwrap();
    assert_eq!(id.role, Role::Analyst);
    let der = single_cert_der(&pem).unwrap();
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(format!("{:?}", san.general_names), "[DNSName(\"n1.brand\")]");
}

#[test]
fn tampered_csr_rejected() {
    let ca = ca_init("brand", 30).unwrap();
    let (_, csr) = new_key_and_csr(&node_id("n1.brand")).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap().as_ref().to_vec();
    // Change a byte of the CN inside the signed part ("n1" -> "n2").
    let pos = der.windows(8).position(|w| w == b"n1.brand").unwrap();
    der[pos + 1] = b'2';
    let pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", base64_encode(&der));
    let err = sign_csr(&ca, &pem, Validity::days_from_now(1)).unwrap_err();
    assert!(err.to_string().contains("signature does not verify"), "{err}");
    assert!(sign_csr(&ca, "not a csr", Validity::days_from_now(1)).is_err());
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn identity_validation() {
    assert!(node_id("a").validate().is_ok());
    assert!(node_id(&"a".repeat(64)).validate().is_err()); // label > 63
    assert!(node_id(&format!("{}.{}", "a".repeat(31), "b".repeat(32))).validate().is_ok());
    assert!(node_id(&format!("{}.{}", "a".repeat(32), "b".repeat(32))).validate().is_err());
    for bad in ["", "A.brand", "x y", "é.brand", "-a", "a-", "a_b", ".a", "1.2.3.4"] {
        assert!(node_id(bad).validate().is_err(), "{bad:?}");
    }
    let mut id = node_id("n1.brand");
    id.organisation = "  ".into();
    assert!(id.validate().is_err());
    id.organisation = "x".repeat(129);
    assert!(id.validate().is_err());
    id.organisation = "Bad\nOrg".into();
    assert!(id.validate().is_err());
    id.organisation = "Café Zürich AG".into();
    assert!(id.validate().is_ok());
    assert!(ca_init("", 10).is_err());
    assert!(ca_init(&"b".repeat(49), 10).is_err());
}

#[test]
fn keys_never_printed() {
    let ca = ca_init("brand", 30).unwrap();
    let (key, _) = new_key_and_csr(&node_id("n1.brand")).unwrap();
    assert!(key.as_str().contains("BEGIN PRIVATE KEY"));
    for printed in [format!("{key:?}"), format!("{:?}", SigningKey::from_pem(&key).unwrap())] {
        assert!(!printed.contains("BEGIN"), "{printed}");
        assert!(!printed.contains(&key.as_str()[30..60]), "{printed}");
    }
    assert_eq!(format!("{key:?}"), "PrivateKeyPem(..)");
    assert_eq!(format!("{:?}", SigningKey::from_pem(&key).unwrap()), "SigningKey(..)");
    // The CA material prints its (public) certificate but not its key.
    let printed = format!("{ca:?}");
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    assert!(!printed.contains(&ca.key.as_str()[30..60]), "{printed}");
    // A mangled key's error does not echo it.
    let mangled = PrivateKeyPem::new(key.as_str().replace('A', "*"));
    let err = SigningKey::from_pem(&mangled).unwrap_err().to_string();
    assert!(!err.contains('*'), "{err}");
    assert!(!err.contains(&mangled.as_str()[30..50]), "{err}");
}

#[test]
fn pem_bundle_parsing() {
    let a = ca_init("a", 10).unwrap();
    let b = ca_init("b", 10).unwrap();
    let both = format!("{}{}", a.cert_pem, b.cert_pem);
    assert_eq!(pem_to_der_certs(&both).unwrap().len(), 2);
    assert!(pem_to_der_certs("").is_err());
    assert!(pem_to_der_certs(a.key.as_str()).is_err());
    assert!(identity_from_cert(b"garbage").is_err());
    // The CA's own subject is not a party identity.
    assert!(identity_from_cert(&ca_der(&a)).is_err());
}

#[cfg(unix)]
#[test]
fn private_file_is_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!(
        "fedcrm-pki-test-{}-{}",
        std::process::id(),
        now_truncated().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.key");
    write_private_file(&path, b"secret one").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), b"secret one");

    // An existing, world-readable file is tightened and fully replaced.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_private_file(&path, b"two").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), b"two");

    let err = write_private_file(&dir.join("missing/x.key"), b"x").unwrap_err();
    assert!(matches!(err, PkiError::Io { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}
