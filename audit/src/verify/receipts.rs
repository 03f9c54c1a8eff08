//! Between logs: every receipt about another given party matches that party's record
//! (head and time) and verifies with its certificate.

use super::*;

/// What checking one receipt against the peer's log found. `Truncated` and `Mismatch`
/// carry the data to phrase the failure once every receipt is known.
pub(super) enum ReceiptCheck {
    /// The peer's record matches.
    Matched,
    /// The failure, phrased.
    Failed(VerifyFailure),
    /// The receipt names a record past the end of the peer's log (`peer` indexes the logs).
    Truncated { peer: usize },
    /// The peer's record hashes to `actual`, not to the head in the receipt.
    Mismatch { peer: usize, actual: [u8; 32] },
}

/// One receipt, the log holding it, and what checking it found.
struct Checked<'a> {
    /// Index of the holder's log.
    holder: usize,
    receipt: &'a PendingReceipt,
    check: ReceiptCheck,
}

pub(super) fn check_receipts(logs: &[Verified], skew_ms: u64) -> Result<u64, VerifyFailure> {
    let mut by_party: HashMap<&str, usize> = HashMap::new();
    for (i, log) in logs.iter().enumerate() {
        if let Some(j) = by_party.insert(log.summary.party.as_str(), i) {
            return Err(fail(
                &log.summary.path,
                None,
                None,
                Problem::WrongParty,
                format!(
                    "this is {}'s log, and so is {}; give each party's log once",
                    log.summary.party,
                    logs[j].summary.path.display()
                ),
            ));
        }
    }

    let mut checked = 0;
    // In file order.
    let mut checks = Vec::new();
    for (h, holder) in logs.iter().enumerate() {
        for receipt in &holder.receipts {
            if receipt.peer == holder.summary.party {
                continue;
            }
            let holder_name = &holder.summary.party;
            let Some(&p) = by_party.get(receipt.peer.as_str()) else {
                // The peer's log is not given: the time in the receipt is all there is.
                checks.push(Checked { holder: h, receipt, check: check_receipt_time(receipt, holder_name, skew_ms) });
                continue;
            };
            let peer = &logs[p];
            if receipt.peer_seq < peer.summary.first_seq {
                // Deleted by the peer's retention: the receipt's signed time is left.
                if let Some(check) = check_deleted_receipt(receipt, holder_name, peer, skew_ms) {
                    checked += 1;
                    checks.push(Checked { holder: h, receipt, check });
                }
                continue;
            }
            checked += 1;
            checks.push(Checked { holder: h, receipt, check: check_receipt(receipt, holder_name, p, peer, skew_ms) });
        }
    }

    let first_failure = checks.iter().find(|c| !matches!(c.check, ReceiptCheck::Matched));
    let Some(Checked { holder: h, receipt, check }) = first_failure else {
        return Ok(checked);
    };
    let holder = &logs[*h].summary.party;
    let held = format!("{}:{}", receipt.file.display(), receipt.line);
    Err(match check {
        ReceiptCheck::Matched => unreachable!("filtered above"),
        ReceiptCheck::Failed(failure) => failure.clone(),
        ReceiptCheck::Truncated { peer } => {
            let peer_log = &logs[*peer];
            let s = &peer_log.summary;
            let (file, line) = match &s.torn_tail {
                Some(t) => (t.file.clone(), t.line),
                None => peer_log.position(s.last_seq),
            };
            let torn = if s.torn_tail.is_some() { " (followed by a torn record)" } else { "" };
            fail(
                &file,
                Some(line),
                Some(s.last_seq),
                Problem::Truncated,
                format!(
                    "{}'s log ends at record {}{torn}, but {holder} holds its signed head for record {} ({held}): records {}..={} at least were cut from the end",
                    s.party,
                    s.last_seq,
                    receipt.peer_seq,
                    s.last_seq + 1,
                    receipt.peer_seq
                ),
            )
        }
        ReceiptCheck::Mismatch { peer, actual } => {
            let peer_log = &logs[*peer];
            // The latest receipt below this one that still matches bounds the rewrite.
            let bound = checks
                .iter()
                .filter(|c| {
                    matches!(c.check, ReceiptCheck::Matched)
                        && c.receipt.peer == receipt.peer
                        && c.receipt.peer_seq < receipt.peer_seq
                })
                .max_by_key(|c| c.receipt.peer_seq);
            let after = match bound {
                Some(Checked { holder: bh, receipt: r, .. }) => format!(
                    ", after record {} (which {}'s receipt at {}:{} still matches)",
                    r.peer_seq,
                    logs[*bh].summary.party,
                    r.file.display(),
                    r.line
                ),
                None => String::new(),
            };
            let (file, line) = peer_log.position(receipt.peer_seq);
            fail(
                &file,
                Some(line),
                Some(receipt.peer_seq),
                Problem::ReceiptMismatch,
                format!(
                    "{holder} holds {}'s signed head {} for this record ({held}), but the record hashes to {}: {}'s log was rewritten at or before this record{after}",
                    receipt.peer,
                    receipt.peer_head,
                    hex::encode(actual),
                    receipt.peer
                ),
            )
        }
    })
}

pub(super) fn check_receipt(
    receipt: &PendingReceipt,
    holder: &str,
    p: usize,
    peer: &Verified,
    skew_ms: u64,
) -> ReceiptCheck {
    let at = |problem, message| {
        ReceiptCheck::Failed(fail(&receipt.file, Some(receipt.line), Some(receipt.seq), problem, message))
    };
    let head: [u8; 32] = match hex::decode(&receipt.peer_head).ok().and_then(|h| h.try_into().ok()) {
        Some(h) => h,
        None => {
            return at(Problem::Malformed, "the receipt's peer_head is not 64 hex digits".into());
        }
    };
    let Ok(signature) = hex::decode(&receipt.signature_hex) else {
        return at(Problem::BadSignature, "the receipt's signature is not valid hex".into());
    };
    let payload = head_payload(&receipt.peer, receipt.peer_seq, receipt.peer_time_ms, &head);
    let s = &peer.summary;
    let signed = if receipt.peer_seq <= s.last_seq {
        peer.cert_at(receipt.peer_seq).is_some_and(|c| pki::verify_signature(c, &payload, &signature).is_ok())
    } else {
        // Beyond the end: the certificate may have been cut too, so any of the peer's will do.
        peer.certs.iter().any(|(_, c)| pki::verify_signature(c, &payload, &signature).is_ok())
    };
    if !signed {
        return at(
            Problem::BadSignature,
            format!(
                "{holder}'s receipt of {}'s head for record {} does not verify with {}'s certificate: the receipt was forged or altered",
                receipt.peer, receipt.peer_seq, receipt.peer
            ),
        );
    }
    if receipt.peer_seq > s.last_seq {
        return ReceiptCheck::Truncated { peer: p };
    }
    // Unwrap safety: first_seq ≤ peer_seq ≤ last_seq, and there is one hash per record.
    let index = usize::try_from(receipt.peer_seq - s.first_seq).unwrap();
    let actual = peer.hashes[index];
    if actual != head {
        return ReceiptCheck::Mismatch { peer: p, actual };
    }
    // The head covers the record's time, so this differs only if the peer signed a
    // time other than its record's.
    let time = peer.times[index];
    let held = format!("{}:{}", receipt.file.display(), receipt.line);
    if receipt.peer_time_ms != time {
        let (file, line) = peer.position(receipt.peer_seq);
        return ReceiptCheck::Failed(fail(
            &file,
            Some(line),
            Some(receipt.peer_seq),
            Problem::ReceiptMismatch,
            format!(
                "{} signed its head for this record with the time {}, but the record is dated {} ({holder}'s receipt at {held}): {} misstated its own time",
                receipt.peer,
                when(receipt.peer_time_ms),
                when(time),
                receipt.peer
            ),
        ));
    }
    if time > receipt.time_ms.saturating_add(skew_ms) {
        let (file, line) = peer.position(receipt.peer_seq);
        return ReceiptCheck::Failed(fail(
            &file,
            Some(line),
            Some(receipt.peer_seq),
            Problem::AheadOfPeer,
            format!(
                "this record is dated {}, but {holder} logged receiving {}'s signed head for it at {} ({held}), more than {} s earlier: {}'s clock ran ahead of {holder}'s, or its timeline was moved forward",
                when(time),
                receipt.peer,
                when(receipt.time_ms),
                skew_ms / 1000,
                receipt.peer
            ),
        ));
    }
    // The holder also named the message the head came with: the peer's record at that
    // head (or just before it, when an automatic seal followed) must be the egress
    // of exactly that message.
    if !receipt.sha256.is_empty() {
        let kind_at =
            |q: u64| q.checked_sub(s.first_seq).and_then(|i| peer.kinds.get(usize::try_from(i).ok()?)).copied();
        let named = match kind_at(receipt.peer_seq) {
            Some(RecordKind::Egress(h)) => Some(h),
            Some(RecordKind::Seal) => match receipt.peer_seq.checked_sub(1).and_then(kind_at) {
                Some(RecordKind::Egress(h)) => Some(h),
                _ => None,
            },
            _ => None,
        };
        let mut wanted = [0u8; 32];
        let wanted_ok = hex::decode_to_slice(&receipt.sha256, &mut wanted).is_ok();
        if !wanted_ok || named != Some(wanted) {
            let (file, line) = peer.position(receipt.peer_seq);
            return at(
                Problem::ReceiptMismatch,
                format!(
                    "{holder} received a message with SHA-256 {} under {}'s head for record {}, but {}:{} records {}: what {} says it sent differs from what {holder} received",
                    receipt.sha256,
                    receipt.peer,
                    receipt.peer_seq,
                    file.display(),
                    line,
                    named
                        .map(|h| format!("an egress with SHA-256 {}", hex::encode(h)))
                        .unwrap_or_else(|| "no egress there".into()),
                    receipt.peer
                ),
            );
        }
    }
    ReceiptCheck::Matched
}

/// A receipt of a party whose log is not given: its signed time must not be later
/// than the holder's record of receiving it, plus the skew.
pub(super) fn check_receipt_time(receipt: &PendingReceipt, holder: &str, skew_ms: u64) -> ReceiptCheck {
    if receipt.peer_time_ms <= receipt.time_ms.saturating_add(skew_ms) {
        return ReceiptCheck::Matched;
    }
    ReceiptCheck::Failed(fail(
        &receipt.file,
        Some(receipt.line),
        Some(receipt.seq),
        Problem::AheadOfPeer,
        format!(
            "{holder} logged this receipt at {}, but {}'s signed head in it is for a record dated {}, more than {} s later: {}'s clock ran ahead of {holder}'s, or its timeline was moved forward",
            when(receipt.time_ms),
            receipt.peer,
            when(receipt.peer_time_ms),
            skew_ms / 1000,
            receipt.peer
        ),
    ))
}

/// A receipt of a record the peer's retention deleted. When the signature verifies
/// with one of the peer's certificates, its time must not be later than the holder's
/// receipt (plus the skew), nor later than the time the peer's deletion says its newest
/// deleted record had (the same time for that very record). `None` when the
/// signature cannot be attributed (the certificate went with the deleted files).
pub(super) fn check_deleted_receipt(
    receipt: &PendingReceipt,
    holder: &str,
    peer: &Verified,
    skew_ms: u64,
) -> Option<ReceiptCheck> {
    let head: [u8; 32] = hex::decode(&receipt.peer_head).ok()?.try_into().ok()?;
    let signature = hex::decode(&receipt.signature_hex).ok()?;
    let payload = head_payload(&receipt.peer, receipt.peer_seq, receipt.peer_time_ms, &head);
    if !peer.certs.iter().any(|(_, c)| pki::verify_signature(c, &payload, &signature).is_ok()) {
        return None;
    }
    if let ReceiptCheck::Failed(failure) = check_receipt_time(receipt, holder, skew_ms) {
        return Some(ReceiptCheck::Failed(failure));
    }
    let Some(r) = peer.retention.as_ref() else { return Some(ReceiptCheck::Matched) };
    let later = receipt.peer_time_ms > r.newest_deleted_ms;
    let differs = receipt.peer_seq == r.upto_seq && receipt.peer_time_ms != r.newest_deleted_ms;
    if receipt.peer_seq > r.upto_seq || !(later || differs) {
        return Some(ReceiptCheck::Matched);
    }
    Some(ReceiptCheck::Failed(fail(
        &r.file,
        Some(r.line),
        Some(r.seq),
        Problem::Truncated,
        format!(
            "this deletion says the newest record it deleted (record {}) was written {}, but {holder} holds {}'s signed head for record {} dated {} ({}:{}): the deletion misstates the age of what it deleted{}",
            r.upto_seq,
            when(r.newest_deleted_ms),
            receipt.peer,
            receipt.peer_seq,
            when(receipt.peer_time_ms),
            receipt.file.display(),
            receipt.line,
            if later { ", and records were deleted before their retention period ended" } else { "" }
        ),
    )))
}
