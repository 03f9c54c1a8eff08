//! Issue 12 (v8): the messages of a PSI run — its start, the nodes' signed run keys,
//! the sealed list chunks the coordinator relays, and each node's release — parsed
//! both ways. What they mean is in `fedcrm_node::psi` and `fedcrm_protocol::psi`.

use fedcrm_analysis::date::format_date;
use fedcrm_analysis::rfm::Cuts;
use fedcrm_crypto::psi::channel::{CHUNK_POINTS, ListKind, POINT, SealedChunk};
use fedcrm_dp::sampler::Variance;

use super::*;
use crate::psi::{PairRole, SignedRunKey};

/// The analysis kind node policies apply to a PSI run (`allowed_analyses`,
/// `monthly_analysis_caps`).
pub const CHANNEL_OVERLAP: &str = "channel-overlap";

/// Most nodes in one PSI run: every pair runs, so the work grows with the square.
pub const MAX_PSI_PARTICIPANTS: usize = 64;

/// Largest certificate a PSI message carries (DER).
const MAX_CERTIFICATE: usize = 16 * 1024;

/// A node of a PSI run as the coordinator announces it: the node verifies the
/// certificate against the brand CA and takes everything else from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiParticipant {
    pub name: String,
    pub certificate: Vec<u8>,
}

/// Coordinator → node: a PSI run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiStart {
    pub run: RoundId,
    pub purpose: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
    pub analysis_id: String,
    /// Sorted by name, without duplicates, 2..=[`MAX_PSI_PARTICIPANTS`].
    pub participants: Vec<PsiParticipant>,
    /// σ² of the discrete Gaussian on every released count; `None`: exact counts.
    pub noise: Option<Variance>,
    /// Segment profile: the reference date and the global cut points; `None`: the plain
    /// overlap.
    pub segments: Option<SegmentProfile>,
    /// The coordinator's signature over [`psi_start_payload`].
    pub signature: Vec<u8>,
}

/// What a segment profile groups customers by: their RFM segment at `reference_date`
/// under the global cut points `cuts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentProfile {
    pub reference_date: time::Date,
    pub cuts: Cuts,
}

/// Cells of a segment profile's table (4 × 4).
pub const PROFILE_CELLS: usize = 16;

/// The analyst's cut points, parsed (four ascending values per metric).
pub fn segment_cuts(s: &pb::RfmSegments) -> Result<Cuts, WireError> {
    super::analyses::rfm::cuts_from_pb(s)
}

/// What the coordinator signs for a PSI run: the run id, purpose, who asks, the
/// analysis id, every participant's name and certificate, and the noise.
pub fn psi_start_payload(s: &PsiStart) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = vec![
        CHANNEL_OVERLAP.as_bytes().to_vec(),
        s.purpose.as_bytes().to_vec(),
        s.requested_by.as_bytes().to_vec(),
        s.requested_by_organisation.as_bytes().to_vec(),
        s.analysis_id.as_bytes().to_vec(),
    ];
    for p in &s.participants {
        parts.push(p.name.as_bytes().to_vec());
        parts.push(p.certificate.clone());
    }
    parts.push(s.noise.as_ref().map_or_else(Vec::new, |v| [v.num().to_be_bytes(), v.den().to_be_bytes()].concat()));
    parts.push(s.segments.as_ref().map_or_else(Vec::new, |p| {
        let mut b = format_date(p.reference_date).into_bytes();
        for c in [p.cuts.recency, p.cuts.frequency, p.cuts.monetary] {
            c.iter().for_each(|v| b.extend(v.to_be_bytes()));
        }
        b
    }));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    fedcrm_crypto::kdf::context("psi-start", &s.run, &refs)
}

/// A node's run keys for the peers it pairs with, and the peers it declines (node →
/// coordinator); or the keys of the peers paired with the receiving node (coordinator
/// → node, `declined` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiKeys {
    pub run: RoundId,
    pub keys: Vec<SignedRunKey>,
    /// (peer, reason).
    pub declined: Vec<(String, String)>,
}

/// One sealed chunk of a list. From a node, `peer` receives it; from the coordinator,
/// `peer` sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiChunk {
    pub run: RoundId,
    pub peer: String,
    pub list: ListKind,
    pub chunk: SealedChunk,
}

impl PsiChunk {
    /// Points the chunk carries (its ciphertext less the tag).
    pub fn points(&self) -> usize {
        self.chunk.ciphertext.len().saturating_sub(16) / POINT
    }
}

/// Node → coordinator, once per run: the node's customer count and the count of every
/// pair it compared — noised, or exact (`--dp off`) with the ones below its
/// `[policy.psi] min_exact_count` withheld (`None`) by the node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiRelease {
    pub run: RoundId,
    pub customers: Option<i64>,
    /// (peer, count), one per pair this node compared (plain overlap).
    pub counts: Vec<(String, Option<i64>)>,
    /// One per pair this node compared (segment profile).
    pub tables: Vec<PsiTable>,
}

/// A segment profile a node compared, as it releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiTable {
    pub peer: String,
    /// The pair's shared customers (the cells' total); `None`: withheld.
    pub total: Option<i64>,
    /// [`PROFILE_CELLS`] counts, row-major: row this node's segment, column the peer's;
    /// `None`: withheld.
    pub cells: Vec<Option<i64>>,
}

fn certificate(name: &'static str, b: &[u8]) -> Result<Vec<u8>, WireError> {
    if b.is_empty() || b.len() > MAX_CERTIFICATE {
        return Err(field(name, format!("must be 1..={MAX_CERTIFICATE} bytes")));
    }
    Ok(b.to_vec())
}

fn text(name: &'static str, v: &str, max: usize) -> Result<String, WireError> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(field(name, format!("must be at most {max} characters without control characters")));
    }
    Ok(v.to_string())
}

fn no_repeats(name: &'static str, names: impl Iterator<Item = String>) -> Result<(), WireError> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n.clone()) {
            return Err(field(name, format!("{n} appears twice")));
        }
    }
    if seen.len() > MAX_PSI_PARTICIPANTS {
        return Err(field(name, format!("more than {MAX_PSI_PARTICIPANTS}")));
    }
    Ok(())
}

pub(super) fn psi_start(s: &pb::PsiStart) -> Result<PsiStart, WireError> {
    if s.purpose.trim().is_empty() {
        return Err(field("psi_start.purpose", "HQ must state a purpose"));
    }
    let participants = s
        .participants
        .iter()
        .map(|p| {
            Ok(PsiParticipant {
                name: node_name("psi_start.participants.name", &p.name)?,
                certificate: certificate("psi_start.participants.certificate", &p.certificate)?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let sorted: Vec<String> = participants.iter().map(|p| p.name.clone()).collect();
    names("psi_start.participants", &sorted)?;
    if !(2..=MAX_PSI_PARTICIPANTS).contains(&participants.len()) {
        return Err(field("psi_start.participants", format!("a run takes 2..={MAX_PSI_PARTICIPANTS} nodes")));
    }
    let noise = match (s.noise_variance_num, s.noise_variance_den) {
        (0, 0) => None,
        (0, _) => return Err(field("psi_start.noise_variance_num", "0 (no noise) with a denominator set")),
        (num, den) => Some(Variance::new(num, den).map_err(|e| field("psi_start.noise_variance_num", e.to_string()))?),
    };
    let segments = match (&s.segment_cuts, s.reference_date.as_str()) {
        (None, "") => None,
        (Some(c), date) => Some(SegmentProfile { reference_date: parse_reference_date(date)?, cuts: segment_cuts(c)? }),
        (None, _) => return Err(field("psi_start.reference_date", "set without segment cut points")),
    };
    Ok(PsiStart {
        segments,
        run: round_id(&s.run_id)?,
        purpose: text("psi_start.purpose", &s.purpose, 1000)?,
        requested_by: text("psi_start.requested_by", &s.requested_by, 200)?,
        requested_by_organisation: text("psi_start.requested_by_organisation", &s.requested_by_organisation, 200)?,
        analysis_id: text("psi_start.analysis_id", &s.analysis_id, 200)?,
        participants,
        noise,
        signature: signature_bytes("psi_start.signature", &s.signature)?,
    })
}

pub(super) fn psi_start_pb(s: &PsiStart) -> pb::PsiStart {
    pb::PsiStart {
        run_id: s.run.0.to_vec(),
        purpose: s.purpose.clone(),
        requested_by: s.requested_by.clone(),
        requested_by_organisation: s.requested_by_organisation.clone(),
        analysis_id: s.analysis_id.clone(),
        participants: s
            .participants
            .iter()
            .map(|p| pb::PsiParticipant { name: p.name.clone(), certificate: p.certificate.clone() })
            .collect(),
        noise_variance_num: s.noise.as_ref().map_or(0, |v| v.num()),
        noise_variance_den: s.noise.as_ref().map_or(0, |v| v.den()),
        signature: s.signature.clone(),
        segment_cuts: s.segments.as_ref().map(|p| super::analyses::rfm::cuts_pb_all(&p.cuts)),
        reference_date: s.segments.as_ref().map_or_else(String::new, |p| format_date(p.reference_date)),
    }
}

pub(super) fn psi_keys(k: &pb::PsiKeys) -> Result<PsiKeys, WireError> {
    let keys = k
        .keys
        .iter()
        .map(|r| {
            let role = if r.respond {
                PairRole::Respond { commitment: bytes32("psi_keys.commitment", &r.commitment)? }
            } else if r.commitment.is_empty() {
                PairRole::Compare
            } else {
                return Err(field("psi_keys.commitment", "a comparer's key carries no commitment"));
            };
            Ok(SignedRunKey {
                node: node_name("psi_keys.node", &r.node)?,
                peer: node_name("psi_keys.peer", &r.peer)?,
                certificate: certificate("psi_keys.certificate", &r.certificate)?,
                public: public("psi_keys.public", &r.public)?,
                role,
                signature: signature_bytes("psi_keys.signature", &r.signature)?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let declined = k
        .declined
        .iter()
        .map(|d| Ok((node_name("psi_keys.declined.peer", &d.peer)?, reason("psi_keys.declined.reason", &d.reason)?)))
        .collect::<Result<Vec<_>, WireError>>()?;
    no_repeats("psi_keys.keys", keys.iter().map(|k| format!("{}→{}", k.node, k.peer)))?;
    no_repeats("psi_keys.declined", declined.iter().map(|d| d.0.clone()))?;
    Ok(PsiKeys { run: round_id(&k.run_id)?, keys, declined })
}

pub(super) fn psi_keys_pb(k: &PsiKeys) -> pb::PsiKeys {
    pb::PsiKeys {
        run_id: k.run.0.to_vec(),
        keys: k
            .keys
            .iter()
            .map(|r| pb::PsiRunKey {
                node: r.node.clone(),
                peer: r.peer.clone(),
                certificate: r.certificate.clone(),
                public: r.public.0.to_vec(),
                respond: matches!(r.role, PairRole::Respond { .. }),
                commitment: match r.role {
                    PairRole::Respond { commitment } => commitment.to_vec(),
                    PairRole::Compare => vec![],
                },
                signature: r.signature.clone(),
            })
            .collect(),
        declined: k
            .declined
            .iter()
            .map(|(peer, reason)| pb::PsiDeclined { peer: peer.clone(), reason: reason.clone() })
            .collect(),
    }
}

pub(super) fn psi_chunk(c: &pb::PsiChunk) -> Result<PsiChunk, WireError> {
    let group = u8::try_from(c.group).map_err(|_| field("psi_chunk.group", format!("{} exceeds 255", c.group)))?;
    let list = match c.list {
        0 => ListKind::Blinded { group },
        1 => ListKind::Returned { group },
        other => return Err(field("psi_chunk.list", format!("{other} is not a list (0 own, 1 returned)"))),
    };
    if c.ciphertext.len() < 16 || c.ciphertext.len() > CHUNK_POINTS * POINT + 16 {
        return Err(field("psi_chunk.ciphertext", format!("must be 16..={} bytes", CHUNK_POINTS * POINT + 16)));
    }
    if c.of == 0 || c.index >= c.of {
        return Err(field("psi_chunk.index", format!("chunk {} of {} is not a position in the list", c.index, c.of)));
    }
    Ok(PsiChunk {
        run: round_id(&c.run_id)?,
        peer: node_name("psi_chunk.peer", &c.peer)?,
        list,
        chunk: SealedChunk {
            salt: c.salt.as_slice().try_into().map_err(|_| field("psi_chunk.salt", "must be 16 bytes"))?,
            index: c.index,
            of: c.of,
            ciphertext: c.ciphertext.clone(),
        },
    })
}

pub(super) fn psi_chunk_pb(c: &PsiChunk) -> pb::PsiChunk {
    let (list, group) = match c.list {
        ListKind::Blinded { group } => (0, group),
        ListKind::Returned { group } => (1, group),
    };
    pb::PsiChunk {
        run_id: c.run.0.to_vec(),
        peer: c.peer.clone(),
        list,
        group: group.into(),
        salt: c.chunk.salt.to_vec(),
        index: c.chunk.index,
        of: c.chunk.of,
        ciphertext: c.chunk.ciphertext.clone(),
    }
}

/// A released figure: `value` unless `withheld`, when it must be 0 (a withheld figure
/// that carries its value is a node's fault, refused).
fn figure(name: &'static str, value: i64, withheld: bool) -> Result<Option<i64>, WireError> {
    match (withheld, value) {
        (false, v) => Ok(Some(v)),
        (true, 0) => Ok(None),
        (true, _) => Err(field(name, "withheld but not 0".to_string())),
    }
}

/// A released figure on the wire: (value or 0, withheld).
fn figure_pb(v: Option<i64>) -> (i64, bool) {
    (v.unwrap_or(0), v.is_none())
}

pub(super) fn psi_release(r: &pb::PsiRelease) -> Result<PsiRelease, WireError> {
    let counts = r
        .counts
        .iter()
        .map(|c| {
            Ok((
                node_name("psi_release.counts.peer", &c.peer)?,
                figure("psi_release.counts.count", c.count, c.withheld)?,
            ))
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let tables = r
        .tables
        .iter()
        .map(|t| {
            if t.cells.len() != PROFILE_CELLS {
                return Err(field("psi_release.tables.cells", format!("{} cells, not {PROFILE_CELLS}", t.cells.len())));
            }
            if !t.withheld.is_empty() && t.withheld.len() != PROFILE_CELLS {
                let n = t.withheld.len();
                return Err(field("psi_release.tables.withheld", format!("{n} flags, not 0 or {PROFILE_CELLS}")));
            }
            let cells = t
                .cells
                .iter()
                .enumerate()
                .map(|(i, &v)| figure("psi_release.tables.cells", v, t.withheld.get(i).copied().unwrap_or(false)))
                .collect::<Result<Vec<_>, WireError>>()?;
            Ok(PsiTable {
                peer: node_name("psi_release.tables.peer", &t.peer)?,
                total: figure("psi_release.tables.total", t.total, t.total_withheld)?,
                cells,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    no_repeats("psi_release.counts", counts.iter().map(|c| c.0.clone()).chain(tables.iter().map(|t| t.peer.clone())))?;
    Ok(PsiRelease {
        run: round_id(&r.run_id)?,
        customers: figure("psi_release.customers", r.customers, r.customers_withheld)?,
        counts,
        tables,
    })
}

pub(super) fn psi_release_pb(r: &PsiRelease) -> pb::PsiRelease {
    let (customers, customers_withheld) = figure_pb(r.customers);
    pb::PsiRelease {
        run_id: r.run.0.to_vec(),
        customers,
        customers_withheld,
        counts: r
            .counts
            .iter()
            .map(|(peer, count)| {
                let (count, withheld) = figure_pb(*count);
                pb::PsiCount { peer: peer.clone(), count, withheld }
            })
            .collect(),
        tables: r
            .tables
            .iter()
            .map(|t| {
                let (total, total_withheld) = figure_pb(t.total);
                let cells: Vec<(i64, bool)> = t.cells.iter().map(|&c| figure_pb(c)).collect();
                let any = cells.iter().any(|c| c.1);
                pb::PsiTable {
                    peer: t.peer.clone(),
                    cells: cells.iter().map(|c| c.0).collect(),
                    total,
                    total_withheld,
                    withheld: if any { cells.iter().map(|c| c.1).collect() } else { vec![] },
                }
            })
            .collect(),
    }
}
