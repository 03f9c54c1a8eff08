//! What the analyst is told about a round that did not release: each node that left,
//! with its reason cut to one short line (the full text stays in the audit logs).

use std::collections::BTreeMap;

use super::Exit;

/// `a: disconnected, b: refused: …`.
pub fn describe(exits: &BTreeMap<String, Exit>) -> String {
    if exits.is_empty() {
        return "none".into();
    }
    exits.iter().map(|(n, e)| format!("\n  {n}: {e}")).collect()
}

/// The longest reason shown to the analyst for one node (the full text stays in the
/// audit logs: the coordinator's `node-exit` record and the node's own decision).
pub const BRIEF_CHARS: usize = 180;

/// One short line for why a node left: its first clause without parenthesised
/// detail, cut at a word within [`BRIEF_CHARS`], plus from when it will be allowed
/// when the node said so.
pub fn brief(reason: &str) -> String {
    let reason = reason.replace("policy: ", "");
    let allowed = reason.find("allowed again from ").map(|i| {
        let rest = &reason[i..];
        match rest.find(" UTC") {
            Some(j) => rest[..j + 4].to_string(),
            None => rest.split([';', '(']).next().unwrap_or(rest).trim_end().to_string(),
        }
    });
    let bare = without_parentheses(&reason);
    let head = bare.split("; ").next().unwrap_or(&bare);
    // Round ids by their first 8 hex digits.
    let mut head = head
        .split_whitespace()
        .map(|w| {
            if w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()) { format!("{}…", &w[..8]) } else { w.into() }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let room = BRIEF_CHARS.saturating_sub(allowed.as_ref().map_or(0, |a| a.len() + 2));
    if head.chars().count() > room {
        let cut: String = head.chars().take(room.saturating_sub(1)).collect();
        let at = cut.rfind(' ').unwrap_or(cut.len());
        head = format!("{}…", &cut[..at]);
    }
    match allowed {
        Some(a) if !head.contains(&a) => format!("{head}; {a}"),
        _ => head,
    }
}

/// `text` without its balanced parenthesised groups (an unbalanced `(`, as in a
/// half-open interval `[0, 1)`, stays as it is).
fn without_parentheses(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('(') {
        out.push_str(&rest[..open]);
        let mut depth = 0usize;
        let close = rest[open..].char_indices().find_map(|(i, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(open + i)
        });
        match close {
            Some(close) => rest = &rest[close + 1..],
            None => {
                out.push_str(&rest[open..]);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An error for the analyst: its first line as it is, then each `  node: reason`
/// line with the reason made [`brief`].
pub fn brief_lines(message: &str) -> String {
    let mut lines = message.lines();
    let mut out = lines.next().unwrap_or_default().to_string();
    for l in lines {
        out.push('\n');
        match l.strip_prefix("  ").and_then(|l| l.split_once(": ")) {
            Some((who, why)) => out.push_str(&format!("  {who}: {}", brief(why))),
            None => out.push_str(l),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_analyst_gets_one_short_line_per_node_saying_from_when() {
        // As seen after a node was killed mid-analysis: one ~1,000-character line.
        let long = "policy: differencing: this sum's contributors differ from those of round \
                    5f0c3a9e1b2d4c6e8f0a1b2c3d4e5f60 (2026-11-29 19:02 UTC) by fr-wuhan-03 (non-HQ nodes of 1 \
                    organisation(s), fewer than 3); the two sums together would reveal their data; allowed again \
                    from 2026-12-29 19:02 UTC (differencing_window_days = 30), or now over the same nodes as before";
        let exits: BTreeMap<String, Exit> = [
            ("fr-chengdu-02".to_string(), Exit::Refused(long.repeat(3))),
            ("fr-wuhan-03".to_string(), Exit::Disconnected),
        ]
        .into();
        let too_few = crate::round::RoundError::TooFew {
            round: fedcrm_crypto::RoundId([0x5f; 16]),
            phase: fedcrm_crypto::secagg::Phase::MaskedInputCollection,
            have: 0,
            need: 3,
            exits: describe(&exits),
        };
        let text = brief_lines(&too_few.to_string());
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= BRIEF_CHARS + 40), "{text}");
        assert!(lines[1].contains("fr-chengdu-02: refused: differencing:"), "{text}");
        assert!(lines[1].contains("by fr-wuhan-03"), "the node it differs by is named: {text}");
        assert!(lines[1].ends_with("allowed again from 2026-12-29 19:02 UTC"), "{text}");
        assert_eq!(lines[2].trim(), "fr-wuhan-03: disconnected");
        // A short reason is left as it is.
        assert_eq!(brief("not enrolled"), "not enrolled");
    }
}
