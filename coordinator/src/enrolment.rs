//! Which nodes may connect (the config's `[[enrolled]]`, replaced whole on SIGHUP
//! by [`crate::Coordinator::reload_enrolment`]) and what the coordinator last saw of
//! each one's certificate, for `hq status`. Memory only: the audit log records
//! every list (`Enrolment`) and every session.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

use fedcrm_pki::{self as pki, Identity, OrgKind, Role};

use crate::config::Enrolled;

/// What the coordinator saw of a node's certificate in its current or last session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The certificate's `notAfter`, unix seconds.
    pub not_after: i64,
    /// When the session was last open (now, while it is), unix seconds.
    pub last_seen: u64,
}

#[derive(Debug)]
pub struct Enrolment {
    list: RwLock<Vec<Enrolled>>,
    seen: Mutex<BTreeMap<String, Seen>>,
}

impl Enrolment {
    pub fn new(list: Vec<Enrolled>) -> Self {
        Self { list: RwLock::new(list), seen: Mutex::new(BTreeMap::new()) }
    }

    /// The nodes enrolled now.
    pub fn list(&self) -> Vec<Enrolled> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Name and organisation must both match an entry.
    pub fn contains(&self, name: &str, organisation: &str) -> bool {
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|e| e.name == name && e.organisation == organisation)
    }

    /// Replace the list (checked with [`check`] first).
    pub(crate) fn replace(&self, new: Vec<Enrolled>) {
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// A session of `name` opened (or is open) with certificate `cert_der`.
    pub(crate) fn saw(&self, name: &str, cert_der: &[u8], now_s: u64) {
        let not_after = pki::not_after_unix(cert_der).unwrap_or(0);
        self.lock_seen().insert(name.to_string(), Seen { not_after, last_seen: now_s });
    }

    /// The session of `name` ended.
    pub(crate) fn left(&self, name: &str, now_s: u64) {
        if let Some(s) = self.lock_seen().get_mut(name) {
            s.last_seen = now_s;
        }
    }

    pub fn seen(&self, name: &str) -> Option<Seen> {
        self.lock_seen().get(name).copied()
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks a new list: every name is a valid party name and appears once.
pub fn check(list: &[Enrolled]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for e in list {
        let id = Identity {
            name: e.name.clone(),
            organisation: e.organisation.clone(),
            role: Role::Node(OrgKind::Franchisee),
        };
        id.validate().map_err(|err| format!("[[enrolled]] {:?}: {err}", e.name))?;
        if !names.insert(e.name.as_str()) {
            return Err(format!("[[enrolled]] names {:?} twice; keep one entry per node", e.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str) -> Enrolled {
        Enrolled { name: name.into(), organisation: format!("{name} ltd") }
    }

    #[test]
    fn a_bad_or_doubled_name_is_refused_naming_it() {
        assert!(check(&[e("n1"), e("n2")]).is_ok());
        assert!(check(&[e("n1"), e("n1")]).unwrap_err().contains("\"n1\" twice"));
        assert!(check(&[e("Bad_Name")]).unwrap_err().contains("Bad_Name"));
    }
}
