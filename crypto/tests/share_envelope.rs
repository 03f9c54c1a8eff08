//! The sealed-share envelope (issue 7, point 11): every sealed share travels with
//! its sender's signature over `share_signing_payload(round, sender, receiver,
//! ciphertext)`, so a receiver can tell a share its sender got wrong (the sender's
//! fault) from one the relay altered (the relay's fault); and a share that does not
//! open names its sender, who can be removed from U2 before anyone masks, the round
//! going on over the others.
//!
//! Signatures here are ECDSA P-256 / SHA-256 from ring, as `pki::SigningKey` makes
//! them; this crate only defines what is signed.

use std::collections::BTreeMap;

use fedcrm_crypto::secagg::{self, Aggregator, ClientAdvertised, ClientShared, PeerKeys, RoundParams, WordWidth};
use fedcrm_crypto::{CryptoError, RoundId, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair};

fn key_pair(rng: &SystemRandom) -> EcdsaKeyPair {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), rng).unwrap()
}

fn verifies(key: &EcdsaKeyPair, payload: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.public_key().as_ref())
        .verify(payload, sig)
        .is_ok()
}

#[test]
fn a_signed_share_verifies_and_any_change_to_round_sender_receiver_roster_or_bytes_breaks_it() {
    let rng = SystemRandom::new();
    let key = key_pair(&rng);
    let (round, other_round) = (RoundId([3; 16]), RoundId([4; 16]));
    let ct = vec![0xa5u8; 176];
    let roster = secagg::roster_digest(b"the round start node-1 was shown");
    let other_roster = secagg::roster_digest(b"another round start");
    let payload = secagg::share_signing_payload(&round, "node-1", "node-3", &roster, &ct);
    let sig = key.sign(&rng, &payload).unwrap();
    assert!(verifies(&key, &payload, sig.as_ref()));

    let mut flipped = ct.clone();
    flipped[100] ^= 0x01;
    let altered = [
        ("another round", secagg::share_signing_payload(&other_round, "node-1", "node-3", &roster, &ct)),
        ("another sender", secagg::share_signing_payload(&round, "node-2", "node-3", &roster, &ct)),
        ("another receiver", secagg::share_signing_payload(&round, "node-1", "node-2", &roster, &ct)),
        // Issue 10: a receiver shown another round start (e.g. other noise) cannot verify.
        ("another round start", secagg::share_signing_payload(&round, "node-1", "node-3", &other_roster, &ct)),
        ("a flipped bit", secagg::share_signing_payload(&round, "node-1", "node-3", &roster, &flipped)),
        ("a truncated ciphertext", secagg::share_signing_payload(&round, "node-1", "node-3", &roster, &ct[..175])),
        // Length prefixes: moving a byte between sender and receiver changes the payload.
        ("shifted names", secagg::share_signing_payload(&round, "node-1n", "ode-3", &roster, &ct)),
    ];
    for (what, p) in altered {
        assert_ne!(p, payload, "{what}");
        assert!(!verifies(&key, &p, sig.as_ref()), "the signature must not cover {what}");
    }
    // Another key's signature over the right payload is not the sender's.
    assert!(!verifies(&key_pair(&rng), &payload, sig.as_ref()));
}

#[test]
fn the_envelope_is_domain_separated_from_the_other_signed_payloads() {
    // A signature on a share can never be replayed as a key advertisement or a
    // consistency signature: each payload carries its own label after the version.
    let round = RoundId([9; 16]);
    let keys =
        ClientAdvertised::new(RoundParams { round, t: 2, d: 1, width: WordWidth::W64 }, "node-1", &SystemRandom::new())
            .unwrap()
            .1;
    let mut ct = keys.enc.0.to_vec();
    ct.extend_from_slice(&keys.mask.0);
    let share = secagg::share_signing_payload(&round, "node-1", "node-2", &[0; 32], &ct);
    assert_ne!(share, secagg::key_signing_payload(&round, "node-1", &keys.enc, &keys.mask, None));
    assert_ne!(share, secagg::consistency_payload(&round, None, &["node-1".into()], &["node-2".into()]));
    let label = b"sealed-share";
    let at = 4 + fedcrm_crypto::PROTOCOL_VERSION.len();
    assert_eq!(&share[at..at + 4], &(label.len() as u32).to_be_bytes());
    assert_eq!(&share[at + 4..at + 4 + label.len()], label);
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

/// Four nodes, t = 3, all share keys; returns each node's state, the sealed shares
/// by (sender, receiver) and U1's keys.
type Sealed = BTreeMap<(String, String), Vec<u8>>;
fn shared(round: RoundId) -> (Vec<ClientShared>, Sealed, Vec<PeerKeys>) {
    let rng = SystemRandom::new();
    let params = RoundParams { round, t: 3, d: 3, width: WordWidth::W32 };
    let (adv, u1): (Vec<_>, Vec<_>) =
        (0..4).map(|i| ClientAdvertised::new(params.clone(), &name(i), &rng).unwrap()).unzip();
    let mut sealed = Sealed::new();
    let mut out = Vec::new();
    for (i, c) in adv.into_iter().enumerate() {
        let (s, shares) = c.share(u1.clone(), &rng).unwrap();
        for (to, ct) in shares {
            sealed.insert((name(i), to), ct);
        }
        out.push(s);
    }
    (out, sealed, u1)
}

fn incoming(sealed: &Sealed, me: &str) -> Vec<(String, Vec<u8>)> {
    sealed.iter().filter(|((_, to), _)| to == me).map(|((from, _), ct)| (from.clone(), ct.clone())).collect()
}

#[test]
fn a_share_that_does_not_open_names_its_sender_and_the_round_goes_on_without_it() {
    let round = RoundId([5; 16]);
    let (clients, mut sealed, u1) = shared(round);
    // node-1 sends node-3 a share that does not open (it would sign these bytes).
    sealed.get_mut(&(name(1), name(3))).unwrap()[7] ^= 0x40;
    let delivered: Vec<String> = (0..4).map(name).collect();
    let mut opened = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (o, unopened) = c.open(&delivered, &incoming(&sealed, &name(i))).unwrap();
        if i == 3 {
            assert_eq!(unopened.len(), 1);
            assert_eq!(unopened[0].sender, name(1));
            assert_eq!(unopened[0].error, CryptoError::Decrypt);
            assert_eq!(o.unopened(), vec![name(1)]);
        } else {
            assert!(unopened.is_empty(), "{}: {unopened:?}", name(i));
        }
        opened.push(Some(o));
    }
    // Keeping the reported sender in the final U2 is refused by its reporter...
    let (mut again, mut sealed2, _) = shared(RoundId([7; 16]));
    sealed2.get_mut(&(name(1), name(3))).unwrap()[7] ^= 0x40;
    let (o3, _) = again.remove(3).open(&delivered, &incoming(&sealed2, &name(3))).unwrap();
    let e = o3.finish(&delivered).unwrap_err();
    assert!(e.to_string().contains("keeps node-1"), "{e}");
    // ...and so is a final U2 that leaves the node itself out.
    let (o0, _) = again.remove(0).open(&delivered, &incoming(&sealed2, &name(0))).unwrap();
    assert!(o0.finish(&[name(1), name(2), name(3)]).unwrap_err().to_string().contains("missing"));

    // The coordinator removes node-1 before anyone masks: the others' masks cancel
    // over the final U2 and the sum is exactly theirs.
    let u2: Vec<String> = [0, 2, 3].map(name).to_vec();
    let inputs: BTreeMap<String, Vec<u64>> = (0..4).map(|i| (name(i), vec![i as u64 + 1, 10 * i as u64, 7])).collect();
    let params = RoundParams { round, t: 3, d: 3, width: WordWidth::W32 };
    let mut agg = Aggregator::new(params, u1, &u2).unwrap();
    let mut masked = Vec::new();
    for n in &u2 {
        let i: usize = n[5..].parse().unwrap();
        let ready = opened[i].take().unwrap().finish(&u2).unwrap();
        let (m, y) = ready.mask(&inputs[n]).unwrap();
        agg.add_masked(n, &y).unwrap();
        masked.push((n.clone(), m));
    }
    let unmasking = agg.close();
    let (s, d) = (unmasking.survivors(), unmasking.dropped());
    assert_eq!(s, u2);
    assert!(d.is_empty());
    let responses: Vec<_> = masked.into_iter().map(|(n, m)| (n, m.unmask(&s, &d).unwrap())).collect();
    let sum = unmasking.finish(&responses).unwrap();
    // Inputs of node-0, node-2 and node-3: [1, 0, 7] + [3, 20, 7] + [4, 30, 7].
    assert_eq!(sum, vec![8, 50, 21]);
}

#[test]
fn a_missing_share_is_the_relays_fault_not_a_report() {
    let round = RoundId([6; 16]);
    let (mut clients, sealed, _) = shared(round);
    let delivered: Vec<String> = (0..4).map(name).collect();
    let mut inc = incoming(&sealed, &name(0));
    inc.retain(|(from, _)| *from != name(2));
    let e = clients.remove(0).open(&delivered, &inc).unwrap_err();
    assert!(matches!(e, CryptoError::Protocol(ref m) if m.contains("no share from node-2")), "{e}");
}
