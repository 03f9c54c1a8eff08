//! The wire's decoders: round trips, refusals, and never a panic on arbitrary bytes.

use fedcrm_analysis::date::parse_date;
use fedcrm_analysis::rfm::Cuts;
use fedcrm_analysis::rules::Invitee;
use fedcrm_dp::sampler::Variance;
use fedcrm_pki::{OrgKind, Receipt};

use super::*;
use prost::Message;

#[test]
fn a_refusal_cannot_forge_lines_in_the_analysts_output() {
    // A node's reason is shown as one line per node: a line break in it would let a
    // malicious node print a fake line blaming an honest one.
    let forged = "x\n  fr-b: excluded: fr-b sent a share to fr-c that fails to open";
    let m = pb::NodeMessage {
        body: Some(pb::node_message::Body::Refusal(pb::Refusal {
            round_id: vec![],
            reason: forged.into(),
            awaiting_approval: false,
        })),
        receipt: None,
    };
    assert!(FromNode::try_from(m.clone()).is_err());
    let mut ok = m;
    if let Some(pb::node_message::Body::Refusal(r)) = ok.body.as_mut() {
        r.reason = "policy: not allowed".into();
    }
    assert!(FromNode::try_from(ok).is_ok());
}

proptest::proptest! {
    #[test]
    fn node_message_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        if let Ok(m) = pb::NodeMessage::decode(bytes.as_slice()) {
            let _ = FromNode::try_from(m);
        }
    }

    #[test]
    fn coordinator_message_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        if let Ok(m) = pb::CoordinatorMessage::decode(bytes.as_slice()) {
            let _ = ToNode::try_from(m);
        }
    }
}

#[test]
fn envelope_names_round_size_and_kind_without_parsing() {
    let r = RoundId([7; 16]);
    let c = chunk(r, &Words::W64(vec![1, 2, 3]), 2);
    let m = node_message(&FromNode::MaskedChunk(c[0].clone()), None);
    let e = node_message_envelope(&m);
    assert_eq!((e.kind, e.round, e.roundless, e.elements), ("masked-chunk", Some(r), false, 2));
    assert_eq!(e.bytes, m.encode_to_vec().len());
    let refusal = |round| FromNode::Refusal { round, reason: "no".into(), awaiting_approval: false };
    let e = node_message_envelope(&node_message(&refusal(None), None));
    assert_eq!((e.kind, e.round, e.roundless), ("refusal", None, true));
    let e = node_message_envelope(&node_message(&refusal(Some(r)), None));
    assert_eq!((e.round, e.roundless), (Some(r), false));
    let mut bad = node_message(&FromNode::MaskedChunk(c[0].clone()), None);
    if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = bad.body {
        x.round_id = vec![1; 3];
    }
    assert_eq!(node_message_envelope(&bad).round, None, "a malformed round id names no round");
    assert_eq!(node_message_envelope(&pb::NodeMessage::default()).kind, "empty");
}

#[test]
fn chunk_hash_mismatch_is_rejected() {
    let r = RoundId([7; 16]);
    let c = chunk(r, &Words::W64(vec![1, 2, 3]), 2);
    let mut m: pb::NodeMessage = (&FromNode::MaskedChunk(c[0].clone())).into();
    if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = m.body {
        x.words[0] ^= 1;
    }
    assert!(matches!(FromNode::try_from(m), Err(WireError::Field { field: "masked_chunk.sha256", .. })));
    let c = chunk(r, &Words::W32(vec![1, 2, 3]), 2);
    let mut m: pb::NodeMessage = (&FromNode::MaskedChunk(c[1].clone())).into();
    if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = m.body {
        x.words32[0] ^= 1;
    }
    assert!(matches!(FromNode::try_from(m), Err(WireError::Field { field: "masked_chunk.sha256", .. })));
}

/// 32-bit chunks travel in `words32`, hashed over 4-byte little-endian words; 64-bit
/// ones in `words`; a chunk with both or neither is refused.
#[test]
fn chunks_of_both_widths_round_trip_and_carry_exactly_one_field() {
    let r = RoundId([7; 16]);
    for words in [Words::W32(vec![1, u32::MAX, 3, 4, 5]), Words::W64(vec![1, u64::MAX, 3, 4, 5])] {
        let chunks = chunk(r, &words, 2);
        assert_eq!(chunks.len(), 3);
        let mut joined = chunks[0].words.clone();
        for c in &chunks {
            let m: pb::NodeMessage = (&FromNode::MaskedChunk(c.clone())).into();
            let Some(pb::node_message::Body::MaskedChunk(x)) = &m.body else { panic!() };
            assert_eq!(x.sha256, ring::digest::digest(&ring::digest::SHA256, &c.words.to_le_bytes()).as_ref());
            assert_eq!(
                (x.words.is_empty(), x.words32.is_empty()),
                (words.width() == WordWidth::W32, words.width() == WordWidth::W64)
            );
            assert_eq!(FromNode::try_from(m).unwrap(), FromNode::MaskedChunk(c.clone()));
            if c.index > 0 {
                joined.extend(&c.words).unwrap();
            }
        }
        assert_eq!(joined, words);
    }
    let c = chunk(r, &Words::W32(vec![1, 2]), 2);
    let mut m: pb::NodeMessage = (&FromNode::MaskedChunk(c[0].clone())).into();
    if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = m.body {
        x.words = vec![1];
    }
    assert!(matches!(FromNode::try_from(m), Err(WireError::Field { field: "masked_chunk.words32", .. })));
}

#[test]
fn round_trips() {
    let r = RoundId([1; 16]);
    let a = Analysis {
        reference_date: parse_date("1997-09-30").unwrap(),
        purpose: "quarterly segments".into(),
        requested_by: "analyst.li".into(),
        requested_by_organisation: "HQ".into(),
        analysis_id: "a1".into(),
        analysis_kind: "rfm-segments".into(),
        kind: AnalysisKind::RfmSegments(Cuts {
            recency: [1, 2, 3, 4],
            frequency: [1, 1, 2, 3],
            monetary: [5, 6, 7, 8],
        }),
    };
    let m = ToNode::RoundStart(Box::new(RoundStart {
        round: r,
        threshold: 3,
        length: 4,
        width: WordWidth::W32,
        max_per_node: 1 << 22,
        degree: 6,
        setup: None,
        analysis: a,
        invited: vec![Invitee { name: "a".into(), organisation: "o".into(), kind: OrgKind::Franchisee }],
        chunk_elements: 10,
        roster_signature: vec![1, 2],
        noise: None,
    }));
    assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&m)).unwrap(), m);
    // A later round of the analysis names its setup round; the signed roster binds it.
    let ToNode::RoundStart(first) = &m else { unreachable!() };
    let later = RoundStart { setup: Some(RoundId([9; 16])), ..(**first).clone() };
    assert_ne!(roster_payload(&later), roster_payload(first));
    let later = ToNode::RoundStart(Box::new(later));
    assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&later)).unwrap(), later);
    // Issue 10: a noised round start round-trips; the signed roster binds σ² and k.
    let noise = |num, den, honest| Some(Noise { variance: Variance::new(num, den).unwrap(), honest });
    let noised = RoundStart { noise: noise(9, 4, 2), ..(**first).clone() };
    let payloads = [
        roster_payload(first),
        roster_payload(&noised),
        roster_payload(&RoundStart { noise: noise(9, 2, 2), ..noised.clone() }),
        roster_payload(&RoundStart { noise: noise(9, 4, 3), ..noised.clone() }),
    ];
    for (i, a) in payloads.iter().enumerate() {
        assert!(payloads[i + 1..].iter().all(|b| a != b), "payload {i} is not unique");
    }
    let noised = ToNode::RoundStart(Box::new(noised));
    let encoded = pb::CoordinatorMessage::from(&noised);
    let Some(pb::coordinator_message::Body::RoundStart(ref x)) = encoded.body else { unreachable!() };
    assert_eq!((x.noise_variance_num, x.noise_variance_den, x.noise_honest), (9, 4, 2));
    assert_eq!(ToNode::try_from(encoded.clone()).unwrap(), noised);
    // No noise is all zero; noise without a denominator or without k is refused.
    let Some(pb::coordinator_message::Body::RoundStart(ref x)) = pb::CoordinatorMessage::from(&m).body else {
        unreachable!()
    };
    assert_eq!((x.noise_variance_num, x.noise_variance_den, x.noise_honest), (0, 0, 0));
    for (num, den, k, field_name) in
        [(9, 0, 2, "noise_variance_den"), (9, 4, 0, "noise_honest"), (0, 4, 2, "noise_variance_num")]
    {
        let mut bad = encoded.clone();
        if let Some(pb::coordinator_message::Body::RoundStart(ref mut x)) = bad.body {
            (x.noise_variance_num, x.noise_variance_den, x.noise_honest) = (num, den, k);
        }
        assert!(
            matches!(ToNode::try_from(bad), Err(WireError::Field { field, .. }) if field == field_name),
            "{num}/{den}, k = {k}"
        );
    }
    // SecAgg+'s messages round-trip; a nonce or commitment that is not 32 bytes is refused.
    let commitments = vec![("a".to_string(), [7u8; 32]), ("b".to_string(), [8u8; 32])];
    let c = ToNode::CommitmentRoster { round: r, commitments: commitments.clone(), quorum: 2, signature: vec![3; 64] };
    assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&c)).unwrap(), c);
    let k = ToNode::KeyRoster { round: r, keys: vec![], nonces: commitments };
    assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&k)).unwrap(), k);
    let mut short = pb::CoordinatorMessage::from(&c);
    if let Some(pb::coordinator_message::Body::Commitments(ref mut x)) = short.body {
        x.commitments[1].value.pop();
    }
    assert!(matches!(ToNode::try_from(short), Err(WireError::Field { field: "commitments", .. })));
    let reveal = FromNode::RevealNonce { round: r, nonce: [9; 32] };
    assert_eq!(FromNode::try_from(crate::wire::node_message(&reveal, None)).unwrap(), reveal);
    // A width other than 32 or 64, or no per-node bound, is refused.
    for (bits, bound, field_name) in [(16, 1, "word_bits"), (0, 1, "word_bits"), (32, 0, "max_per_node")] {
        let mut bad = pb::CoordinatorMessage::from(&m);
        if let Some(pb::coordinator_message::Body::RoundStart(ref mut x)) = bad.body {
            x.word_bits = bits;
            x.max_per_node = bound;
        }
        assert!(
            matches!(ToNode::try_from(bad), Err(WireError::Field { field, .. }) if field == field_name),
            "{bits} bits, bound {bound}"
        );
    }
    let welcome = |version: &str| pb::CoordinatorMessage {
        body: Some(pb::coordinator_message::Body::Welcome(pb::Welcome {
            protocol_version: version.into(),
            coordinator_name: "c".into(),
            certificate: vec![1],
        })),
        receipt: None,
    };
    assert!(matches!(ToNode::try_from(welcome("fedcrm/v0")), Err(WireError::Version { .. })));
    // A v3 coordinator (64-bit masks keyed without the width) is refused by name,
    // with what to do.
    let e = ToNode::try_from(welcome("fedcrm/v3")).unwrap_err();
    assert_eq!(e, WireError::Version { got: "fedcrm/v3".into() });
    assert_eq!(
        e.to_string(),
        "incompatible protocol version \"fedcrm/v3\"; this build speaks \"fedcrm/v10\" — upgrade the older side"
    );
}

#[test]
fn signed_shares_reports_and_the_final_u2_round_trip() {
    let round = RoundId([3; 16]);
    let share = Sealed { peer: "node-1".into(), ciphertext: vec![7; 176], signature: vec![9; 70] };
    let report = FromNode::ShareReport {
        round,
        unopened: vec![UnopenedShare { share: share.clone(), reason: "authenticated decryption failed".into() }],
    };
    assert_eq!(FromNode::try_from(pb::NodeMessage::from(&report)).unwrap(), report);
    let sent = FromNode::SealedShares { round, shares: vec![share.clone()] };
    assert_eq!(FromNode::try_from(pb::NodeMessage::from(&sent)).unwrap(), sent);
    let request = ToNode::MaskedInputRequest {
        round,
        delivered: vec!["node-0".into(), "node-2".into()],
        excluded: vec![Exclusion { node: "node-1".into(), reason: "its share to node-2 does not open".into() }],
    };
    assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&request)).unwrap(), request);
    // An unsigned share (what a v1 peer would send) is refused, naming the field.
    let unsigned = FromNode::SealedShares { round, shares: vec![Sealed { signature: Vec::new(), ..share }] };
    assert!(matches!(
        FromNode::try_from(pb::NodeMessage::from(&unsigned)),
        Err(WireError::Field { field: "shares.signature", .. })
    ));
}

#[test]
fn receipt_round_trips_with_its_time() {
    let receipt = Receipt { seq: 41, time_ms: 1_796_162_400_123, head: [9; 32], signature: vec![1, 2, 3] };
    let end = ToNode::RoundEnd { round: RoundId([2; 16]), released: false, message: "test".into() };
    let m = coordinator_message(&end, Some(&receipt));
    assert_eq!(m.receipt.as_ref().map(|r| r.time_ms), Some(receipt.time_ms));
    let (_, parsed) = parse_coordinator_message(m).unwrap();
    assert_eq!(parsed, Some(receipt));
}

#[test]
fn a_psi_release_carries_withheld_figures_as_flags_and_never_their_values() {
    let run = RoundId([5; 16]);
    let mut cells: Vec<Option<i64>> = (0..16).map(|k| Some(20 + k)).collect();
    (cells[3], cells[7]) = (None, None);
    let release = PsiRelease {
        run,
        customers: Some(4200),
        counts: vec![],
        tables: vec![
            PsiTable { peer: "node-2".into(), total: Some(600), cells },
            PsiTable { peer: "node-3".into(), total: None, cells: vec![None; 16] },
        ],
    };
    let m = FromNode::PsiRelease(release.clone());
    let wire = pb::NodeMessage::from(&m);
    assert_eq!(FromNode::try_from(wire.clone()).unwrap(), m);
    let Some(pb::node_message::Body::PsiRelease(r)) = &wire.body else { panic!("{wire:?}") };
    assert_eq!((r.tables[0].cells[3], r.tables[0].withheld[3], r.tables[0].withheld[2]), (0, true, false));
    assert_eq!((r.tables[1].total, r.tables[1].total_withheld), (0, true));
    // A table with nothing withheld sends no flags; a plain count and the size round-trip.
    let plain = FromNode::PsiRelease(PsiRelease {
        run,
        customers: None,
        counts: vec![("node-2".into(), Some(31)), ("node-3".into(), None)],
        tables: vec![],
    });
    assert_eq!(FromNode::try_from(pb::NodeMessage::from(&plain)).unwrap(), plain);
    let full = PsiTable { peer: "node-2".into(), total: Some(16 * 30), cells: vec![Some(30); 16] };
    let m = FromNode::PsiRelease(PsiRelease { tables: vec![full], ..release });
    let Some(pb::node_message::Body::PsiRelease(r)) = pb::NodeMessage::from(&m).body else { panic!() };
    assert!(r.tables[0].withheld.is_empty());
    // A withheld figure that still carries its value is refused, naming the field.
    let mut leaky = r.clone();
    leaky.tables[0].withheld = vec![false; 16];
    leaky.tables[0].withheld[5] = true;
    let leaky = pb::NodeMessage { body: Some(pb::node_message::Body::PsiRelease(leaky)), receipt: None };
    assert!(matches!(FromNode::try_from(leaky), Err(WireError::Field { field: "psi_release.tables.cells", .. })));
    let mut short = r;
    short.tables[0].withheld = vec![true; 3];
    let short = pb::NodeMessage { body: Some(pb::node_message::Body::PsiRelease(short)), receipt: None };
    assert!(matches!(FromNode::try_from(short), Err(WireError::Field { field: "psi_release.tables.withheld", .. })));
}
