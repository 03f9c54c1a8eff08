//! The coordinator's TLS front door: it drives each handshake itself (tokio-rustls,
//! with [`fedcrm_pki::tls::server_config`]: brand CA, `clientAuth`, the
//! CRL) and hands only finished mutual-TLS streams to tonic. A refused handshake
//! is logged — one tracing warning and one `SessionRefused` audit record naming the
//! presented certificate's holder and the reason — at most once per (peer, reason)
//! per [`REFUSAL_WINDOW_MS`], counting the rest, so a flood of bad handshakes cannot
//! fill the disk. The configuration is swapped whole on reload (SIGHUP).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use fedcrm_pki::tls::{Refusal, RefusalHook, server_config};
use fedcrm_pki::{self as pki, TLS_HANDSHAKE_TIMEOUT};
use fedcrm_protocol::config::TlsFiles;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::ServeError;

/// At most one record per (peer, reason) in this many milliseconds.
pub const REFUSAL_WINDOW_MS: u64 = 60_000;
/// Distinct (peer, reason) pairs remembered; beyond it, refusals of new peers are
/// counted together under `(many peers)`.
pub const REFUSAL_KEYS: usize = 1024;
/// Handshakes in progress at once; further connections are closed at once (a
/// handshake holds a task and a few KiB until [`TLS_HANDSHAKE_TIMEOUT`]).
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one IP address, so that one source cannot take
/// every slot (nodes and analysts each need one at a time).
pub const MAX_HANDSHAKES_PER_IP: usize = 8;

/// Handshakes in progress per source address: (count, warned this burst).
type PerIp = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (usize, bool)>>>;

/// A handshake slot of one source address, given back when dropped.
struct IpSlot {
    table: PerIp,
    ip: std::net::IpAddr,
}

impl IpSlot {
    /// Take a slot for `ip`, or `Err(first)` when it already holds
    /// [`MAX_HANDSHAKES_PER_IP`] (`first`: the first refusal of this burst).
    fn take(table: &PerIp, ip: std::net::IpAddr) -> Result<Self, bool> {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(ip).or_insert((0, false));
        if e.0 >= MAX_HANDSHAKES_PER_IP {
            let first = !e.1;
            e.1 = true;
            return Err(first);
        }
        e.0 += 1;
        Ok(Self { table: table.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = t.get_mut(&self.ip) {
            e.0 -= 1;
            if e.0 == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

tokio::task_local! {
    /// The certificate the verifier refused during this task's handshake, if any.
    static PRESENTED: RefCell<Option<(Vec<u8>, Refusal)>>;
}

/// The current server configuration and the refusal limiter.
#[derive(Debug)]
pub struct Acceptor {
    config: RwLock<Arc<ServerConfig>>,
    limiter: Mutex<RefusalLimiter>,
    /// Serials (hex) the current CRL lists: a connection opened before a reload is
    /// checked against them on every call, not only at its handshake.
    revoked: RwLock<Vec<String>>,
}

impl Acceptor {
    /// Build from the coordinator's certificate files (and CRL, when configured).
    pub fn new(files: &TlsFiles) -> Result<(Self, Vec<String>), ServeError> {
        let (config, revoked) = build(files)?;
        let acceptor = Self {
            config: RwLock::new(Arc::new(config)),
            limiter: Mutex::new(RefusalLimiter::default()),
            revoked: RwLock::new(revoked.clone()),
        };
        Ok((acceptor, revoked))
    }

    /// Re-read certificate, key and CRL; on error the old configuration stays.
    /// Returns the serials (hex) the CRL lists.
    pub fn reload(&self, files: &TlsFiles) -> Result<Vec<String>, ServeError> {
        let (config, revoked) = build(files)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).clone_from(&revoked);
        Ok(revoked)
    }

    /// Whether the current CRL lists the certificate with this serial (hex).
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).iter().any(|s| s == serial_hex)
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether to record a refusal now; `Some(n)`: yes, and `n` like it were
    /// suppressed since the last record.
    fn admit(&self, peer: &str, reason: &str, now_ms: u64) -> Option<u64> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).admit(peer, reason, now_ms)
    }
}

fn build(files: &TlsFiles) -> Result<(ServerConfig, Vec<String>), ServeError> {
    let m = files.read()?;
    let tls = |e: pki::PkiError| ServeError::Tls(e.to_string());
    let ca_der = pki::pem_to_der_certs(&m.ca_pem).map_err(tls)?.remove(0);
    let (crls, revoked) = match (&m.crl_pem, &files.crl) {
        (Some(pem), Some(path)) => {
            let (der, entries) =
                pki::crl::load(&ca_der, pem).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))?;
            (vec![der], entries.into_iter().map(|e| e.serial_hex).collect())
        }
        _ => (vec![], vec![]),
    };
    let hook: RefusalHook = Arc::new(|cert, e| {
        let _ = PRESENTED.try_with(|p| {
            p.borrow_mut().get_or_insert_with(|| (cert.as_ref().to_vec(), Refusal::classify(e)));
        });
    });
    let config = server_config(&m.ca_pem, &m.cert_pem, &m.key, crls, hook).map_err(tls)?;
    Ok((config, revoked))
}

/// Counts refusals per (peer, reason) and lets one through per window.
#[derive(Debug, Default)]
struct RefusalLimiter {
    /// (peer, reason) → (when last recorded, refusals suppressed since).
    seen: HashMap<(String, String), (u64, u64)>,
}

impl RefusalLimiter {
    fn admit(&mut self, peer: &str, reason: &str, now_ms: u64) -> Option<u64> {
        let mut key = (peer.to_string(), reason.to_string());
        if !self.seen.contains_key(&key) && self.seen.len() >= REFUSAL_KEYS {
            self.seen.retain(|_, (at, _)| now_ms.saturating_sub(*at) < REFUSAL_WINDOW_MS);
            if self.seen.len() >= REFUSAL_KEYS {
                key.0 = "(many peers)".into();
            }
        }
        match self.seen.get_mut(&key) {
            Some((at, suppressed)) if now_ms.saturating_sub(*at) < REFUSAL_WINDOW_MS => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now_ms;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.seen.insert(key, (now_ms, 0));
                Some(0)
            }
        }
    }
}

/// Accept TCP connections on `listener`, run each TLS handshake in its own task
/// (so one slow peer delays no one), and yield the streams that verified. Ends
/// when tonic drops the stream (shutdown).
pub(crate) fn incoming(
    coordinator: Arc<crate::Coordinator>,
    listener: TcpListener,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let per_ip: PerIp = Arc::default();
        loop {
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let slot = match IpSlot::take(&per_ip, addr.ip()) {
                Ok(slot) => slot,
                Err(first) => {
                    if first {
                        tracing::warn!(
                            ip = %addr.ip(),
                            "{MAX_HANDSHAKES_PER_IP} TLS handshakes from one address in progress; closing its further \
                             connections until they finish"
                        );
                    }
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%addr, "{MAX_HANDSHAKES} TLS handshakes in progress; connection closed");
                continue;
            };
            let (c, tx) = (coordinator.clone(), tx.clone());
            tokio::spawn(async move {
                let (_permit, _slot) = (permit, slot);
                let acceptor = TlsAcceptor::from(c.tls.current());
                let (result, presented) = PRESENTED
                    .scope(RefCell::new(None), async {
                        let r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                        (r, PRESENTED.with(|p| p.borrow_mut().take()))
                    })
                    .await;
                match result {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => refused(&c, addr, presented, Refusal::from_io(&e), crate::now_ms()),
                    Err(_) => refused(&c, addr, presented, Refusal::Timeout, crate::now_ms()),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Log a refused handshake: always to tracing (rate-limited), and to the audit log
/// when it was about a certificate (a port scan that never speaks TLS is not).
fn refused(c: &crate::Coordinator, addr: SocketAddr, presented: Option<(Vec<u8>, Refusal)>, io: Refusal, now_ms: u64) {
    let (peer, organisation, refusal, certificate) = match presented {
        Some((der, refusal)) => match pki::identity_from_cert(&der) {
            // The name is a claim only: whoever connected lacked its key.
            Ok(id) if refusal == Refusal::NotKeyHolder => (
                format!("unverified: {}'s certificate without its key, from {}", id.name, addr.ip()),
                id.organisation,
                refusal,
                true,
            ),
            Ok(id) => (id.name, id.organisation, refusal, true),
            Err(_) => (format!("unreadable certificate from {}", addr.ip()), String::new(), refusal, true),
        },
        None => (addr.ip().to_string(), String::new(), io, false),
    };
    let tag = refusal.to_string();
    let Some(suppressed) = c.tls.admit(&peer, &tag, now_ms) else { return };
    let more =
        if suppressed > 0 { format!(" ({suppressed} more like it since the last record)") } else { String::new() };
    let reason = if certificate {
        format!("tls handshake: {tag}: {}{more}", refusal.advice())
    } else {
        format!("tls handshake from {addr} without a certificate: {tag}: {}{more}", refusal.advice())
    };
    tracing::warn!(%peer, %organisation, %addr, reason = %tag, suppressed, "tls handshake refused");
    let worth_recording = certificate || !matches!(refusal, Refusal::Other(_) | Refusal::Timeout);
    if worth_recording {
        let _ = crate::audit::record(&c.audit, fedcrm_audit::Event::SessionRefused { peer, organisation, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let table: PerIp = Arc::default();
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let b: std::net::IpAddr = [10, 0, 0, 2].into();
        let held: Vec<IpSlot> = (0..MAX_HANDSHAKES_PER_IP).map(|_| IpSlot::take(&table, a).ok().unwrap()).collect();
        assert_eq!(IpSlot::take(&table, a).err(), Some(true), "the first refusal of a burst is reported");
        assert_eq!(IpSlot::take(&table, a).err(), Some(false), "and only the first");
        assert!(IpSlot::take(&table, b).is_ok(), "another address still gets a slot");
        drop(held);
        assert!(IpSlot::take(&table, a).is_ok(), "slots come back when handshakes finish");
    }

    #[test]
    fn one_record_per_peer_and_reason_per_window_counting_the_rest() {
        let mut l = RefusalLimiter::default();
        assert_eq!(l.admit("n1", "expired", 1_000), Some(0));
        assert_eq!(l.admit("n1", "expired", 2_000), None);
        assert_eq!(l.admit("n1", "expired", 3_000), None);
        // Another reason or another peer is its own record.
        assert_eq!(l.admit("n1", "revoked", 3_000), Some(0));
        assert_eq!(l.admit("n2", "expired", 3_000), Some(0));
        // After the window: one record, saying how many were left out.
        assert_eq!(l.admit("n1", "expired", 1_000 + REFUSAL_WINDOW_MS), Some(2));
        assert_eq!(l.admit("n1", "expired", 2_000 + REFUSAL_WINDOW_MS), None);
    }

    #[test]
    fn a_flood_of_distinct_names_stays_bounded() {
        let mut l = RefusalLimiter::default();
        let admitted = (0..10 * REFUSAL_KEYS).filter(|i| l.admit(&format!("n{i}"), "expired", 5).is_some()).count();
        assert_eq!(admitted, REFUSAL_KEYS + 1, "the overflow is one aggregated record");
        assert_eq!(l.seen.len(), REFUSAL_KEYS + 1);
    }
}
