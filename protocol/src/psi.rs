//! Issue 12: who is who in a PSI pair, and the per-run keys two nodes exchange through
//! the coordinator before any list moves. A node's X25519 key for one run and one peer
//! is signed with its certified key (ECDSA P-256 from the brand CA), so the
//! coordinator, which relays it, cannot substitute its own: the sealed channel
//! ([`fedcrm_crypto::psi::channel`]) built on it is then between the two nodes alone.
//!
//! Never does I/O; the clock comes in as `now_unix`.
//!
//! **Which side compares.** The comparing side learns the exact intersection (and, for
//! segment profiles, the exact table) and releases only a noised count, so it must
//! never be HQ's: when exactly one side is an HQ node, the other side compares; between
//! two franchisees (or, in a test deployment, two HQ nodes) the side with the lower
//! name compares — a rule both sides compute from the certificates, so the coordinator
//! cannot choose. [`comparer`].

use fedcrm_crypto::RoundId;
use fedcrm_crypto::keys::{RoundPublic, RoundSecret};
use fedcrm_pki::{Identity, OrgKind, PkiError, Role, SigningKey, Usage};

/// What a node does in one pair: it compares (learns the exact count, releases it
/// noised) or responds (blinds the comparer's list again and returns it shuffled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairRole {
    Compare,
    /// With the responder's blinding-key commitment K = k·B
    /// ([`fedcrm_crypto::psi::BlindingKey::public`]): the comparer checks the answer
    /// against it ([`fedcrm_crypto::psi::Traps`]).
    Respond {
        commitment: [u8; 32],
    },
}

impl PairRole {
    fn encode(&self) -> Vec<u8> {
        match self {
            PairRole::Compare => b"compare".to_vec(),
            PairRole::Respond { commitment } => [b"respond".as_slice(), commitment].concat(),
        }
    }

    /// Whether `self` and the peer's role make a pair: one compares, the other responds.
    pub fn complements(&self, peer: &PairRole) -> bool {
        matches!(
            (self, peer),
            (PairRole::Compare, PairRole::Respond { .. }) | (PairRole::Respond { .. }, PairRole::Compare)
        )
    }
}

/// A node's X25519 public key for one PSI run and one peer, and its role in the pair,
/// signed with its certified key. The peer and the role are in the signed payload, so
/// a key signed for one pair never serves another, and each side commits to its role
/// (a responder also to its blinding key) before any list moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRunKey {
    /// The signing node's name (its certificate's).
    pub node: String,
    /// The peer this key is for.
    pub peer: String,
    /// The signing node's certificate (DER), chained to the brand CA.
    pub certificate: Vec<u8>,
    pub public: RoundPublic,
    pub role: PairRole,
    /// ECDSA P-256 / SHA-256 over [`run_key_payload`].
    pub signature: Vec<u8>,
}

/// Why a peer's run key was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunKeyError {
    #[error("the run key of {node}: its certificate was refused: {source}")]
    Certificate { node: String, source: PkiError },
    #[error("the run key said to be {claimed}'s carries the certificate of {actual}")]
    Name { claimed: String, actual: String },
    #[error("the run key of {node} is for {peer}, not for this node ({me}): relayed to the wrong node")]
    Peer { node: String, peer: String, me: String },
    #[error("the run key of {node} comes from a {role} certificate; only nodes take part in a psi run")]
    Role { node: String, role: &'static str },
    #[error("this run's peer is {expected}, but the key came from {node}")]
    NotThePeer { node: String, expected: String },
    #[error("the signature on the run key of {node} does not verify: altered in relay or not signed by {node}")]
    Signature { node: String },
    #[error("signing this node's run key: {0}")]
    Signing(PkiError),
}

/// What a run key's signature covers: a label, the protocol version, the run, the
/// signer, the peer, the X25519 public key and the role (with a responder's
/// commitment), each length-prefixed.
pub fn run_key_payload(run: &RoundId, node: &str, peer: &str, public: &RoundPublic, role: &PairRole) -> Vec<u8> {
    fedcrm_crypto::kdf::context("psi-run-key", run, &[node.as_bytes(), peer.as_bytes(), &public.0, &role.encode()])
}

impl SignedRunKey {
    /// This node's key for `peer` in `run`, signed with its certified key.
    pub fn sign(
        run: &RoundId,
        node: &str,
        peer: &str,
        secret: &RoundSecret,
        role: PairRole,
        certificate: Vec<u8>,
        key: &SigningKey,
    ) -> Result<Self, RunKeyError> {
        let public = secret.public();
        let signature = key.sign(&run_key_payload(run, node, peer, &public, &role)).map_err(RunKeyError::Signing)?;
        Ok(Self { node: node.into(), peer: peer.into(), certificate, public, role, signature })
    }

    /// The peer's key, checked: its certificate chains to the brand CA (`ca_der`) at
    /// `now_unix` and names `expected` as a node; the key is for this node (`me`) and
    /// signed by that certificate over `run`. Returns the peer's public key and
    /// identity (organisation and kind, for the node's policy).
    pub fn verify(
        &self,
        ca_der: &[u8],
        run: &RoundId,
        expected: &str,
        me: &str,
        now_unix: u64,
    ) -> Result<(RoundPublic, Identity), RunKeyError> {
        let node = self.node.clone();
        if self.node != expected {
            return Err(RunKeyError::NotThePeer { node, expected: expected.into() });
        }
        if self.node == me {
            return Err(RunKeyError::Peer { node, peer: self.peer.clone(), me: me.into() });
        }
        let id = fedcrm_pki::verify_cert(ca_der, &self.certificate, now_unix, Usage::Client)
            .map_err(|source| RunKeyError::Certificate { node: node.clone(), source })?;
        if id.name != self.node {
            return Err(RunKeyError::Name { claimed: node, actual: id.name });
        }
        if !matches!(id.role, Role::Node(_)) {
            return Err(RunKeyError::Role { node, role: id.role.as_str() });
        }
        if self.peer != me {
            return Err(RunKeyError::Peer { node, peer: self.peer.clone(), me: me.into() });
        }
        let payload = run_key_payload(run, &self.node, me, &self.public, &self.role);
        fedcrm_pki::verify_signature(&self.certificate, &payload, &self.signature)
            .map_err(|_| RunKeyError::Signature { node })?;
        Ok((self.public, id))
    }
}

/// One side of a PSI pair, as its certificate describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side<'a> {
    pub name: &'a str,
    pub kind: OrgKind,
}

/// The side that compares the two doubly-blinded lists and releases the noised count:
/// the non-HQ side when exactly one side is HQ's, else the lower name.
pub fn comparer<'a>(a: Side<'a>, b: Side<'a>) -> &'a str {
    match (a.kind, b.kind) {
        (OrgKind::Hq, OrgKind::Franchisee) => b.name,
        (OrgKind::Franchisee, OrgKind::Hq) => a.name,
        _ => a.name.min(b.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_crypto::SystemRandom;
    use fedcrm_pki::{CaMaterial, Validity};
    use time::macros::datetime;

    /// 2026-06-01T00:00:00Z, inside every certificate's validity below: no outcome
    /// depends on the real clock.
    const AT: u64 = 1_780_272_000;

    fn der(pem: &str) -> Vec<u8> {
        fedcrm_pki::pem_to_der_certs(pem).unwrap().remove(0)
    }

    struct Party {
        key: SigningKey,
        cert: Vec<u8>,
    }

    fn issue(ca: &CaMaterial, name: &str, role: Role) -> Party {
        let id = Identity { name: name.into(), organisation: format!("{name} ltd"), role };
        let (key, csr) = fedcrm_pki::new_key_and_csr(&id).unwrap();
        let validity =
            Validity { not_before: datetime!(2026-05-01 0:00 UTC), not_after: datetime!(2026-07-01 0:00 UTC) };
        let (cert, _) = fedcrm_pki::sign_csr(ca, &csr, validity).unwrap();
        Party { key: SigningKey::from_pem(&key).unwrap(), cert: der(&cert) }
    }

    #[test]
    fn a_run_key_verifies_only_for_its_run_pair_and_signer() {
        let ca = fedcrm_pki::ca_init("Test Jewellery", 30).unwrap();
        let ca_der = der(&ca.cert_pem);
        let a = issue(&ca, "fr-a", Role::Node(OrgKind::Franchisee));
        let c = issue(&ca, "coordinator", Role::Coordinator);
        let rng = SystemRandom::new();
        let secret = RoundSecret::generate(&rng).unwrap();
        let (run, other_run) = (RoundId([1; 16]), RoundId([2; 16]));
        let now = AT;
        let key = SignedRunKey::sign(&run, "fr-a", "fr-b", &secret, PairRole::Compare, a.cert.clone(), &a.key).unwrap();

        let (public, id) = key.verify(&ca_der, &run, "fr-a", "fr-b", now).unwrap();
        assert_eq!((public, id.role), (secret.public(), Role::Node(OrgKind::Franchisee)));
        // Another run, another receiver, another expected peer.
        assert!(matches!(key.verify(&ca_der, &other_run, "fr-a", "fr-b", now), Err(RunKeyError::Signature { .. })));
        assert!(matches!(key.verify(&ca_der, &run, "fr-a", "fr-c", now), Err(RunKeyError::Peer { .. })));
        assert!(matches!(key.verify(&ca_der, &run, "fr-x", "fr-b", now), Err(RunKeyError::NotThePeer { .. })));
        // The coordinator substitutes its own X25519 key, keeping the signature.
        let mut swapped = key.clone();
        swapped.public = RoundSecret::generate(&rng).unwrap().public();
        assert!(matches!(swapped.verify(&ca_der, &run, "fr-a", "fr-b", now), Err(RunKeyError::Signature { .. })));
        // Or turns the comparer into a responder (which would hand it the answer).
        let mut turned = key.clone();
        turned.role = PairRole::Respond { commitment: [7; 32] };
        assert!(matches!(turned.verify(&ca_der, &run, "fr-a", "fr-b", now), Err(RunKeyError::Signature { .. })));
        assert!(PairRole::Compare.complements(&turned.role) && !PairRole::Compare.complements(&key.role));
        // Or signs a key of its own with the coordinator's certificate, named fr-a.
        let forged =
            SignedRunKey::sign(&run, "fr-a", "fr-b", &secret, PairRole::Compare, c.cert.clone(), &c.key).unwrap();
        assert!(matches!(forged.verify(&ca_der, &run, "fr-a", "fr-b", now), Err(RunKeyError::Name { .. })));
        // A certificate from another CA.
        let other = fedcrm_pki::ca_init("Other Brand", 30).unwrap();
        let stranger = issue(&other, "fr-a", Role::Node(OrgKind::Franchisee));
        let foreign =
            SignedRunKey::sign(&run, "fr-a", "fr-b", &secret, PairRole::Compare, stranger.cert, &stranger.key).unwrap();
        assert!(matches!(foreign.verify(&ca_der, &run, "fr-a", "fr-b", now), Err(RunKeyError::Certificate { .. })));
    }

    #[test]
    fn the_comparer_is_never_hq_when_a_franchisee_takes_part() {
        let (hq, fr) = (Side { name: "a-hq", kind: OrgKind::Hq }, Side { name: "z-fr", kind: OrgKind::Franchisee });
        assert_eq!(comparer(hq, fr), "z-fr");
        assert_eq!(comparer(fr, hq), "z-fr");
        let other = Side { name: "b-fr", kind: OrgKind::Franchisee };
        assert_eq!(comparer(fr, other), "b-fr");
        assert_eq!(comparer(other, fr), "b-fr");
    }
}
