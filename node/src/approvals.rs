//! Manual approval of analyses by the franchisee. When the policy lists an analysis
//! under `manual_approval`, a request waits — with who asked and why — until a
//! person runs `fedcrm node approve ID`, or it expires. Nothing of such a round
//! leaves the node before approval.
//!
//! State is plain files the running node and the CLI share: `pending/ID.json`
//! (written by the node) and `approved/ID.json` (written by `fedcrm node approve`).
//! The node records every request, approval and expiry in its audit log.

use std::path::{Path, PathBuf};

use fedcrm_analysis::date::format_date;
use fedcrm_protocol::wire::Analysis;
use serde::{Deserialize, Serialize};

/// A request waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    /// The analysis kind, as the node identified it from the computation.
    pub analysis: String,
    /// The computation in words ("3 customer-count histogram(s) at …"); the request
    /// and its approval are bound to it.
    #[serde(default)]
    pub computation: String,
    pub purpose: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
    pub reference_date: String,
    pub requested_ms: u64,
    pub expires_ms: u64,
}

/// Who asks, for which date and why: what a request is bound to besides its
/// computation. From a round's [`Analysis`], or from a PSI run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub purpose: String,
    /// The analysis's reference date (`YYYY-MM-DD`), or what stands in for one.
    pub reference_date: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
}

impl From<&Analysis> for Asked {
    fn from(a: &Analysis) -> Self {
        Self {
            purpose: a.purpose.clone(),
            reference_date: format_date(a.reference_date),
            requested_by: a.requested_by.clone(),
            requested_by_organisation: a.requested_by_organisation.clone(),
        }
    }
}

/// A granted approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub by: String,
    pub approved_ms: u64,
    pub valid_until_ms: u64,
}

/// What the node may do with a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approved(Approval),
    /// Waiting; `new` when this call created the request.
    Waiting {
        pending: Pending,
        new: bool,
    },
    /// The request expired before anyone approved it; a fresh one was filed.
    Expired {
        expired: Pending,
        renewed: Pending,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approvals directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no pending request {0}; `fedcrm node pending` lists them")]
    Unknown(String),
    #[error("request {id} expired at {at}; ask HQ to send the analysis again, then approve the new request")]
    Expired { id: String, at: String },
}

/// The approvals directory.
#[derive(Debug, Clone)]
pub struct Approvals {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApprovalError + '_ {
    move |source| ApprovalError::Io { path: path.into(), source }
}

fn short_hash(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    hex::encode(&d.as_ref()[..6])
}

/// UTC time of a unix-millisecond instant, for people.
pub fn when(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| format!("{} {:02}:{:02}:{:02} UTC", t.date(), t.hour(), t.minute(), t.second()))
        .unwrap_or_else(|_| ms.to_string())
}

impl Approvals {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.into() }
    }

    /// The key of the request an analysis makes: a hash of (the analysis kind and
    /// computation as the node identified them, the analyst, the purpose), so an
    /// approval covers exactly that computation — never another one under the same
    /// label. A request's id is this key; a request filed again after the previous
    /// one expired gets a fresh id, so an approval always names exactly one request.
    pub fn request_key(a: &Asked, kind: &str, computation: &str) -> String {
        let mut text = String::new();
        for part in [kind, computation, &a.purpose, &a.reference_date, &a.requested_by, &a.requested_by_organisation] {
            text.push_str(&format!("{}:{part};", part.len()));
        }
        short_hash(&text)
    }

    fn path(&self, sub: &str, id: &str) -> PathBuf {
        self.dir.join(sub).join(format!("{id}.json"))
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, p: &Path) -> Result<Option<T>, ApprovalError> {
        match std::fs::read(p) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApprovalError::Io { path: p.into(), source: e }),
        }
    }

    /// Write owner-only (directories 0700, files 0600): approvals are the
    /// franchisee's decisions, not for other local users to read or forge.
    fn write<T: Serialize>(&self, p: &Path, v: &T) -> Result<(), ApprovalError> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                for dir in [&self.dir, &d.to_path_buf()] {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
                }
            }
        }
        let tmp = p.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        {
            use std::io::Write;
            let mut f = opts.open(&tmp).map_err(io(&tmp))?;
            f.write_all(&serde_json::to_vec_pretty(v).unwrap_or_default()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, p).map_err(io(p))
    }

    /// A granted approval for request `req`, if one is on file and plausible: made
    /// while the request was waiting, and valid no longer than this node's policy says
    /// (a hand-edited file cannot extend it).
    fn approval(&self, req: &Pending, now_ms: u64, valid_s: u64) -> Result<Option<Approval>, ApprovalError> {
        Ok(self.read::<Approval>(&self.path("approved", &req.id))?.filter(|a| {
            a.id == req.id
                && a.approved_ms >= req.requested_ms
                && a.approved_ms < req.expires_ms
                && now_ms < a.valid_until_ms.min(a.approved_ms.saturating_add(valid_s * 1000))
        }))
    }

    /// Decide on the request `asked` makes for `computation` at `now_ms`, filing it if
    /// needed.
    pub fn check(
        &self,
        asked: impl Into<Asked>,
        kind: &str,
        computation: &str,
        now_ms: u64,
        expires_s: u64,
        valid_s: u64,
    ) -> Result<Decision, ApprovalError> {
        let a: Asked = asked.into();
        let key = Self::request_key(&a, kind, computation);
        let current = self.read::<Pending>(&self.path("pending", &key))?;
        if let Some(p) = &current
            && let Some(ok) = self.approval(p, now_ms, valid_s)?
        {
            return Ok(Decision::Approved(ok));
        }
        let fresh = Pending {
            id: match &current {
                None => key.clone(),
                Some(p) => short_hash(&format!("{key}:{}:{now_ms}", p.id)),
            },
            analysis: kind.to_string(),
            computation: computation.to_string(),
            purpose: a.purpose.clone(),
            requested_by: a.requested_by.clone(),
            requested_by_organisation: a.requested_by_organisation.clone(),
            reference_date: a.reference_date.clone(),
            requested_ms: now_ms,
            expires_ms: now_ms + expires_s * 1000,
        };
        match current {
            Some(p) if now_ms < p.expires_ms => Ok(Decision::Waiting { pending: p, new: false }),
            Some(expired) => {
                self.write(&self.path("pending", &key), &fresh)?;
                Ok(Decision::Expired { expired, renewed: fresh })
            }
            None => {
                self.write(&self.path("pending", &key), &fresh)?;
                Ok(Decision::Waiting { pending: fresh, new: true })
            }
        }
    }

    /// Every filed request (waiting, approved or expired), one per key.
    fn all(&self) -> Result<Vec<Pending>, ApprovalError> {
        let dir = self.dir.join("pending");
        let mut out = vec![];
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(ApprovalError::Io { path: dir, source: e }),
        };
        for e in entries {
            let p = e.map_err(io(&dir))?.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(req) = self.read::<Pending>(&p)?
            {
                out.push(req);
            }
        }
        Ok(out)
    }

    /// Requests still waiting at `now_ms`.
    pub fn pending(&self, now_ms: u64) -> Result<Vec<Pending>, ApprovalError> {
        let mut out = vec![];
        for req in self.all()? {
            let approved =
                self.read::<Approval>(&self.path("approved", &req.id))?.is_some_and(|a| now_ms < a.valid_until_ms);
            if now_ms < req.expires_ms && !approved {
                out.push(req);
            }
        }
        out.sort_by_key(|p| p.requested_ms);
        Ok(out)
    }

    /// Approve request `id` (run by a person through `fedcrm node approve`).
    pub fn approve(&self, id: &str, by: &str, now_ms: u64, valid_s: u64) -> Result<Approval, ApprovalError> {
        let req = self.all()?.into_iter().find(|p| p.id == id).ok_or_else(|| ApprovalError::Unknown(id.into()))?;
        if now_ms >= req.expires_ms {
            return Err(ApprovalError::Expired { id: id.into(), at: when(req.expires_ms) });
        }
        let ok =
            Approval { id: id.into(), by: by.into(), approved_ms: now_ms, valid_until_ms: now_ms + valid_s * 1000 };
        self.write(&self.path("approved", id), &ok)?;
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_analysis::date::parse_date;
    use fedcrm_analysis::rfm::Cuts;
    use fedcrm_protocol::wire::AnalysisKind;

    fn analysis() -> Analysis {
        Analysis {
            reference_date: parse_date("2026-10-31").unwrap(),
            purpose: "Q4 win-back".into(),
            requested_by: "analyst.li".into(),
            requested_by_organisation: "HQ".into(),
            analysis_id: "x".into(),
            analysis_kind: "rfm-segments".into(),
            kind: AnalysisKind::RfmSegments(Cuts { recency: [1; 4], frequency: [1; 4], monetary: [1; 4] }),
        }
    }

    #[test]
    fn an_approval_covers_one_computation_by_one_analyst_for_one_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let ap = Approvals::new(dir.path());
        let a = analysis();
        let Decision::Waiting { pending, .. } =
            ap.check(&a, "rfm-segments", "3 histograms: recency 65 power-of-two bins", 1_000, 60, 3600).unwrap()
        else {
            panic!()
        };
        ap.approve(&pending.id, "owner", 2_000, 3600).unwrap();
        assert!(matches!(
            ap.check(&a, "rfm-segments", "3 histograms: recency 65 power-of-two bins", 3_000, 60, 3600).unwrap(),
            Decision::Approved(_)
        ));
        // The same label, analyst and purpose, but another computation: a new request.
        assert!(matches!(
            ap.check(&a, "rfm-segments", "1 histogram: monetary 1048576 bins of 1 cent", 3_000, 60, 3600).unwrap(),
            Decision::Waiting { new: true, .. }
        ));
        let mut other = analysis();
        other.requested_by = "analyst.wang".into();
        assert!(matches!(
            ap.check(&other, "rfm-segments", "3 histograms: recency 65 power-of-two bins", 3_000, 60, 3600).unwrap(),
            Decision::Waiting { new: true, .. }
        ));
    }

    #[test]
    fn request_waits_then_is_approved_or_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ap = Approvals::new(dir.path());
        let a = analysis();
        let Decision::Waiting { pending, new: true } = ap.check(&a, "rfm-segments", "c", 1_000, 60, 3600).unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            ap.check(&a, "rfm-segments", "c", 2_000, 60, 3600).unwrap(),
            Decision::Waiting { new: false, .. }
        ));
        assert_eq!(ap.pending(2_000).unwrap(), vec![pending.clone()]);
        ap.approve(&pending.id, "owner", 3_000, 3600).unwrap();
        assert!(matches!(ap.check(&a, "rfm-segments", "c", 4_000, 60, 3600).unwrap(), Decision::Approved(_)));
        assert!(ap.pending(4_000).unwrap().is_empty());
        // Another request expires unapproved: approving it afterwards is refused.
        let mut b = analysis();
        b.purpose = "other".into();
        let Decision::Waiting { pending, .. } = ap.check(&b, "rfm-segments", "c", 1_000, 60, 3600).unwrap() else {
            panic!()
        };
        assert!(matches!(ap.approve(&pending.id, "owner", 61_001, 3600), Err(ApprovalError::Expired { .. })));
        let Decision::Expired { expired, renewed } = ap.check(&b, "rfm-segments", "c", 61_001, 60, 3600).unwrap()
        else {
            panic!()
        };
        assert_ne!(expired.id, renewed.id, "a renewed request is a new request");
        ap.approve(&renewed.id, "owner", 62_000, 3600).unwrap();
        assert!(matches!(ap.check(&b, "rfm-segments", "c", 63_000, 60, 3600).unwrap(), Decision::Approved(_)));
        assert!(matches!(ap.approve("nope", "owner", 0, 1), Err(ApprovalError::Unknown(_))));
    }
}
