//! What the whole logs say about names, roles and analyses (`NameIndex`), and the
//! report period in Unix milliseconds.

use super::*;

pub(super) const MS_PER_DAY: i128 = 86_400_000;

/// `[from 00:00:00.000, to 23:59:59.999]` UTC in Unix milliseconds.
pub(super) struct Period {
    pub(super) lo: i128,
    pub(super) hi: i128,
}

impl Period {
    pub(super) fn new(from: Date, to: Date) -> Self {
        let start = |d: Date| i128::from(d.midnight().assume_utc().unix_timestamp()) * 1000;
        Period { lo: start(from), hi: start(to) + MS_PER_DAY - 1 }
    }

    pub(super) fn contains(&self, t: u64) -> bool {
        let t = i128::from(t);
        self.lo <= t && t <= self.hi
    }
}

/// The name index: what the whole logs say about each party's organisation, role and
/// software, each analysis's kind and each round's analysis (independent of the period).
#[derive(Default)]
pub(super) struct NameIndex {
    /// Party or member name → organisation (`log-opened` first, then certificates,
    /// sessions, round members).
    pub(super) orgs: BTreeMap<String, String>,
    pub(super) roles: BTreeMap<String, String>,
    pub(super) software: BTreeMap<String, String>,
    /// Analysis id → kind.
    pub(super) kinds: BTreeMap<String, String>,
    /// Round id → analysis id.
    pub(super) round_analysis: BTreeMap<String, String>,
    /// Parties that act as coordinator.
    pub(super) coordinators: BTreeSet<String>,
}

pub(super) fn put(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.to_string(), value.to_string());
    }
}

pub(super) fn put_new(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if !value.is_empty() && !map.contains_key(key) {
        map.insert(key.to_string(), value.to_string());
    }
}

impl NameIndex {
    pub(super) fn new(all: &[&Record]) -> Self {
        let mut index = NameIndex::default();
        // Organisations, lowest priority first: later passes overwrite.
        for r in all {
            let members: &[Member] = match &r.event {
                Event::RoundStarted { invited, .. } => invited,
                Event::RosterSigned { members, .. } => members,
                Event::Release { contributors, .. } => contributors,
                _ => &[],
            };
            for m in members {
                put(&mut index.orgs, &m.name, &m.organisation);
            }
        }
        for r in all {
            if let Event::SessionOpened { peer, organisation, role } = &r.event {
                put(&mut index.orgs, peer, organisation);
                put(&mut index.roles, peer, role);
            }
        }
        for r in all {
            if let Event::CertificateIssued { name, organisation, role, .. } = &r.event {
                put(&mut index.orgs, name, organisation);
                put(&mut index.roles, name, role);
            }
        }
        for r in all {
            if let Event::LogOpened { role, organisation, software, .. } = &r.event {
                put(&mut index.orgs, &r.party, organisation);
                put(&mut index.roles, &r.party, role);
                put(&mut index.software, &r.party, software);
            }
        }
        // Analyses and rounds: the request names the kind authoritatively.
        for r in all {
            if let Event::AnalysisRequested { analysis, kind, .. } = &r.event {
                put_new(&mut index.kinds, analysis, kind);
            }
        }
        for r in all {
            match &r.event {
                Event::Release { analysis, kind, rounds, .. } => {
                    put_new(&mut index.kinds, analysis, kind);
                    for round in rounds {
                        put_new(&mut index.round_analysis, round, analysis);
                    }
                }
                Event::RoundStarted { round, analysis, kind, .. } => {
                    put_new(&mut index.kinds, analysis, kind);
                    put_new(&mut index.round_analysis, round, analysis);
                }
                Event::Egress { round: Some(round), analysis: Some(analysis), .. }
                | Event::PolicyDecision { round: Some(round), analysis, .. } => {
                    put_new(&mut index.round_analysis, round, analysis);
                }
                _ => {}
            }
        }
        // Coordinators: by certificate role, or by recording coordinator-only events (a
        // charge naming the node charged is the coordinator's record of it).
        for r in all {
            let coordinator_event = matches!(
                r.event,
                Event::AnalysisRequested { .. }
                    | Event::Release { .. }
                    | Event::AnalysisFailed { .. }
                    | Event::NodeExit { .. }
                    | Event::ShareReported { .. }
            ) || matches!(&r.event, Event::PrivacyCharged { node, .. } if !node.is_empty());
            if coordinator_event || index.roles.get(&r.party).is_some_and(|role| role.contains("coordinator")) {
                index.coordinators.insert(r.party.clone());
            }
        }
        index
    }

    pub(super) fn org(&self, name: &str) -> String {
        self.orgs.get(name).cloned().unwrap_or_default()
    }

    pub(super) fn role(&self, name: &str) -> String {
        self.roles.get(name).cloned().unwrap_or_default()
    }

    pub(super) fn is_coordinator(&self, party: &str) -> bool {
        self.coordinators.contains(party)
    }

    pub(super) fn is_node(&self, party: &str) -> bool {
        self.roles.get(party).is_some_and(|role| role.contains("node"))
    }

    /// Kind of an analysis, if known.
    pub(super) fn kind(&self, analysis: &str) -> Option<String> {
        self.kinds.get(analysis).cloned()
    }

    /// The analysis of a message: named directly or through its round.
    pub(super) fn analysis_of(&self, analysis: Option<&String>, round: Option<&String>) -> Option<String> {
        analysis.cloned().or_else(|| round.and_then(|r| self.round_analysis.get(r).cloned()))
    }
}

/// Sort order for parties: coordinator, CA, HQ nodes, franchisee nodes, others.
pub(super) fn role_rank(role: &str) -> u8 {
    if role.contains("coordinator") {
        0
    } else if is_ca_role(role) {
        1
    } else if role.contains("node-hq") {
        2
    } else if role.contains("node") {
        3
    } else {
        4
    }
}

pub(super) fn is_ca_role(role: &str) -> bool {
    role == "ca" || role.ends_with("-ca") || role.contains("-ca-") || role.contains("authority")
}
