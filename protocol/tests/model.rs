//! Issue 11: a node accepts a model only when the brand's model publisher it names
//! signed exactly these bytes (`fedcrm_protocol::model`). Certificates have fixed
//! validity dates and are checked at a fixed instant.

use fedcrm_pki::*;
use fedcrm_protocol::model::{FORMAT, ModelError, ModelHeader, SignedModel};
use time::macros::datetime;

/// 2026-06-01T00:00:00Z, inside every certificate's validity below.
const AT: u64 = 1_780_272_000;

fn validity() -> Validity {
    Validity { not_before: datetime!(2026-05-01 0:00 UTC), not_after: datetime!(2026-07-01 0:00 UTC) }
}

fn issue(ca: &CaMaterial, name: &str, role: Role) -> (SigningKey, String) {
    let id = Identity { name: name.into(), organisation: "Jinyu Jewellery HQ".into(), role };
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let (cert_pem, _) = sign_csr(ca, &csr, validity()).unwrap();
    (SigningKey::from_pem(&key).unwrap(), cert_pem)
}

fn der(pem: &str) -> Vec<u8> {
    pem_to_der_certs(pem).unwrap().remove(0)
}

fn header() -> ModelHeader {
    ModelHeader {
        format: FORMAT.into(),
        id: "churn-20260601-01".into(),
        kind: "churn-logistic".into(),
        created_ms: AT * 1000,
        body: serde_json::json!({ "weights": [0.25, -1.5, 3.0], "intercept": -0.75 }),
    }
}

#[test]
fn a_model_verifies_only_from_the_named_publisher_unchanged_and_in_time() {
    let ca = ca_init("Jinyu", 30).unwrap();
    let ca_der = der(&ca.cert_pem);
    let (key, cert) = issue(&ca, "models.jinyu", Role::Publisher);
    let signed = SignedModel::sign(&header(), &key, &cert).unwrap();

    // As published: verifies, and the header is the one signed.
    let (h, who) = signed.verify(&ca_der, AT, "models.jinyu").unwrap();
    assert_eq!((h, who.name.as_str()), (header(), "models.jinyu"));
    // It survives storage as JSON byte for byte.
    let stored: SignedModel = serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
    assert!(stored.verify(&ca_der, AT, "models.jinyu").is_ok());

    // One changed weight: refused.
    let mut tampered = signed.clone();
    tampered.artifact = tampered.artifact.replacen("-1.5", "-1.4", 1);
    assert_ne!(tampered.artifact, signed.artifact);
    assert!(matches!(tampered.verify(&ca_der, AT, "models.jinyu"), Err(ModelError::BadSignature)));

    // Another publisher of the same brand: refused, naming both.
    let (other_key, other_cert) = issue(&ca, "interns.jinyu", Role::Publisher);
    let other = SignedModel::sign(&header(), &other_key, &other_cert).unwrap();
    let err = other.verify(&ca_der, AT, "models.jinyu").unwrap_err();
    assert!(
        matches!(&err, ModelError::WrongPublisher { expected, got } if expected == "models.jinyu" && got == "interns.jinyu")
    );
    // The right certificate with a signature by another key: refused.
    let swapped = SignedModel { publisher_cert_pem: cert.clone(), ..other.clone() };
    assert!(matches!(swapped.verify(&ca_der, AT, "models.jinyu"), Err(ModelError::BadSignature)));

    // A publisher of the same name from another CA: refused at the certificate.
    let foreign = ca_init("Jinyu", 30).unwrap();
    let (f_key, f_cert) = issue(&foreign, "models.jinyu", Role::Publisher);
    let forged = SignedModel::sign(&header(), &f_key, &f_cert).unwrap();
    assert!(matches!(forged.verify(&ca_der, AT, "models.jinyu"), Err(ModelError::Certificate(_))));

    // An analyst's (or coordinator's) key cannot sign, and its signature is refused.
    let (a_key, a_cert) = issue(&ca, "analyst.jinyu", Role::Analyst);
    assert!(matches!(SignedModel::sign(&header(), &a_key, &a_cert), Err(ModelError::NotPublisher { .. })));
    let by_analyst = SignedModel { publisher_cert_pem: a_cert, ..signed.clone() };
    assert!(matches!(by_analyst.verify(&ca_der, AT, "analyst.jinyu"), Err(ModelError::NotPublisher { .. })));

    // After the publisher's certificate expired: refused.
    let later = AT + 90 * 86_400;
    let err = signed.verify(&ca_der, later, "models.jinyu").unwrap_err();
    assert!(matches!(&err, ModelError::Certificate(why) if why.contains("expired")), "{err}");
}
