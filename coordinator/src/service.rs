//! The gRPC services: `Coordinator.Session` (nodes) and `Analyst` (HQ), both behind
//! mutual TLS. Identity comes from the client certificate, never from a message.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fedcrm_pki::{self as pki, Identity, Role};
use fedcrm_protocol::pb;
use fedcrm_protocol::wire::{self, FromNode, ToNode};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Coordinator;
use crate::analyses::AnalysisError;
use crate::audit::record;
use crate::registry::{ConnectedNode, StillConnected};
use fedcrm_audit::Event;
use fedcrm_audit::log::SignedHead;
use fedcrm_pki::Receipt;

/// The caller's identity from its client certificate, checked against the current
/// CRL on every call: a connection opened before a revocation does not outlive it.
fn peer_identity<T>(c: &Coordinator, req: &Request<T>) -> Result<(Identity, Vec<u8>), Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate from the brand CA is required"))?;
    let cert =
        certs.first().ok_or_else(|| Status::unauthenticated("a client certificate from the brand CA is required"))?;
    let id = pki::identity_from_cert(cert.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    let serial = pki::serial_hex(cert.as_ref()).unwrap_or_default();
    if c.tls.is_revoked(&serial) {
        return Err(Status::permission_denied(format!(
            "the certificate of {} (serial {serial}) is revoked; ask HQ for a new certificate",
            id.name
        )));
    }
    Ok((id, cert.as_ref().to_vec()))
}

/// `Coordinator` service implementation.
#[derive(Debug, Clone)]
pub struct NodeService(pub Arc<Coordinator>);

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for NodeService {
    type SessionStream = SessionStream;

    async fn session(&self, req: Request<Streaming<pb::NodeMessage>>) -> Result<Response<SessionStream>, Status> {
        let (id, cert) = peer_identity(&self.0, &req)?;
        let (name, organisation) = (id.name.clone(), id.organisation.clone());
        let opened = self.open_session(req, id, cert).await;
        if let Err(status) = &opened {
            // Refused connections are part of the record too.
            let _ = record(
                &self.0.audit,
                Event::SessionRefused { peer: name, organisation, reason: status.message().to_string() },
            );
        }
        opened
    }

    /// Issue 11: a published model for an enrolled node (its certificate checked by
    /// mutual TLS and against the CRL); the node verifies the signature itself.
    async fn fetch_model(&self, req: Request<pb::ModelRequest>) -> Result<Response<pb::ModelArtifact>, Status> {
        let (id, _) = peer_identity(&self.0, &req)?;
        if !matches!(id.role, Role::Node(_)) || !self.0.enrolment.contains(&id.name, &id.organisation) {
            return Err(Status::permission_denied(format!(
                "{} is not an enrolled node; models are served to enrolled nodes only",
                id.name
            )));
        }
        let model = req.into_inner().id;
        let signed = self.0.models.for_node(&model).map_err(registry_status)?;
        tracing::info!(node = %id.name, %model, "model fetched");
        Ok(Response::new(pb::ModelArtifact {
            id: model,
            artifact: signed.artifact,
            publisher_cert_pem: signed.publisher_cert_pem,
            signature: signed.signature,
        }))
    }
}

fn registry_status(e: crate::models::RegistryError) -> Status {
    use crate::models::RegistryError as E;
    match e {
        E::Unknown(_) | E::Unpublished(_) => Status::not_found(e.to_string()),
        E::BadId(_) => Status::invalid_argument(e.to_string()),
        E::Refused { .. } | E::Revoked { .. } | E::AlreadyPublished(_) => Status::failed_precondition(e.to_string()),
        E::Io { .. } | E::Audit(_) | E::Corrupt { .. } => Status::internal(e.to_string()),
    }
}

impl NodeService {
    async fn open_session(
        &self,
        req: Request<Streaming<pb::NodeMessage>>,
        id: Identity,
        cert: Vec<u8>,
    ) -> Result<Response<SessionStream>, Status> {
        if !matches!(id.role, Role::Node(_)) {
            return Err(Status::permission_denied(format!(
                "{} holds a {} certificate, not a node certificate",
                id.name,
                id.role.as_str()
            )));
        }
        let c = &self.0;
        if !c.enrolment.contains(&id.name, &id.organisation) {
            tracing::warn!(node = %id.name, organisation = %id.organisation, "unenrolled node refused");
            return Err(Status::permission_denied(format!(
                "node {} of organisation {:?} is not enrolled at this coordinator; ask HQ to add it to [[enrolled]]",
                id.name, id.organisation
            )));
        }
        let addr = req.remote_addr();
        let from = addr.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        // One attempt per name at a time: a node cannot hold many half-opened streams.
        // Unavailable, not AlreadyExists: the other attempt may be this node's own
        // earlier one, waiting for a half-open session to be replaced.
        let Some(opening) = c.registry.begin_opening(&id.name) else {
            return Err(Status::unavailable(format!(
                "another session for node {} is being opened right now; this one (from {from}) is refused — retry in \
                 {} s; if two processes run with this node's certificate, stop one",
                id.name,
                c.config.sessions.duplicate_wait().as_secs()
            )));
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))?
            .map_err(|s| Status::cancelled(format!("session stream failed: {}", s.message())))?
            .ok_or_else(|| Status::cancelled("session closed before hello"))?;
        let hello_digest = wire::node_message_digest(&first);
        let (hello, receipt) =
            wire::parse_node_message(first).map_err(|e| Status::invalid_argument(format!("malformed hello: {e}")))?;
        // An incompatible peer is told so first: it may not speak receipts at all.
        if let FromNode::Hello { version, software, .. } = &hello
            && version != wire::VERSION
        {
            return Err(Status::failed_precondition(format!(
                "incompatible protocol version {version:?} from {software}; this coordinator speaks {:?} — upgrade the node",
                wire::VERSION
            )));
        }
        let receipt = receipt.ok_or_else(|| Status::invalid_argument("hello carries no signed audit-log head"))?;
        log_receipt(c, &id.name, &cert, &receipt, hello.kind(), hello_digest).map_err(|e| match e {
            ReceiptFault::Peer(why) => Status::invalid_argument(why),
            ReceiptFault::Local(why) => Status::unavailable(why),
        })?;
        let announced = match hello {
            FromNode::Hello { node, rules, privacy, .. } => {
                if node != id.name {
                    return Err(Status::permission_denied(format!(
                        "hello names {node:?} but the certificate names {:?}",
                        id.name
                    )));
                }
                // Issue 10: what the node announces of its privacy budget (it enforces
                // the budget itself; this lets HQ refuse up front).
                let privacy = privacy.ok_or_else(|| {
                    Status::invalid_argument("hello carries no privacy status (required since fedcrm/v7)")
                })?;
                c.budgets.announce(&id.name, privacy);
                rules
            }
            other => {
                return Err(Status::failed_precondition(format!("first message must be hello, got {}", other.kind())));
            }
        };
        self.make_room(&id.name, &from).await?;
        let (tx, rx) = mpsc::channel(crate::registry::OUTBOUND_QUEUE);
        let welcome = ToNode::Welcome { coordinator: c.config.name.clone(), certificate: c.certificate.clone() };
        let welcome =
            c.registry.stamp(&welcome).ok_or_else(|| Status::internal("the coordinator cannot sign its audit head"))?;
        tx.send(Ok(welcome)).await.map_err(|_| Status::cancelled("session closed"))?;
        let kind = match id.role {
            Role::Node(k) => k,
            _ => fedcrm_pki::OrgKind::Franchisee,
        };
        record(
            &c.audit,
            Event::SessionOpened {
                peer: id.name.clone(),
                organisation: id.organisation.clone(),
                role: id.role.as_str().into(),
            },
        )
        .map_err(|e| Status::internal(format!("audit log: {e}")))?;
        let node = ConnectedNode {
            name: id.name.clone(),
            organisation: id.organisation.clone(),
            certificate: cert.clone(),
            session: 0,
            kind,
            rules: announced,
        };
        let registered = c.registry.register(node, tx.clone(), addr);
        drop(opening);
        c.enrolment.saw(&id.name, &cert, crate::now_ms() / 1000);
        tracing::info!(node = %id.name, organisation = %id.organisation, from = %from, "node connected");
        // Enrolment may have been reloaded while this session opened.
        if !c.enrolment.contains(&id.name, &id.organisation) {
            c.end_unenrolled(&id.name, &id.organisation);
        }
        let reader = crate::inbound::Reader {
            coordinator: self.0.clone(),
            name: id.name,
            cert,
            session: registered.session,
            tx,
        };
        tokio::spawn(reader.run(inbound, registered));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// One session per name. A second session waits for the first to end for up to
    /// twice the keepalive: the HTTP/2 keepalive closes a connection that stopped
    /// answering (a half-open one after network loss), and then the new session
    /// replaces it; if the first is still there, it answered, and the new one is
    /// refused. Both sides are told, and the coordinator's audit log records either.
    async fn make_room(&self, name: &str, from: &str) -> Result<(), Status> {
        let c = &self.0;
        let wait = c.config.sessions.duplicate_wait();
        match c.registry.make_room(name, wait).await {
            Ok(None) => Ok(()),
            Ok(Some(old)) => {
                // Why it closed is the transport's to say (its own `session-closed`
                // record); a session that answers the keepalive does not close.
                let reason = format!(
                    "replaced a session that stopped answering: the session from {old} closed while a new one from \
                     {from} waited (the HTTP/2 keepalive closes a connection with no answer within {} s); the new \
                     session takes its place",
                    c.config.sessions.keepalive().as_secs()
                );
                tracing::warn!(node = %name, "{reason}");
                record(&c.audit, Event::SessionClosed { peer: name.to_string(), reason })
                    .map_err(|e| Status::unavailable(format!("the coordinator's audit log failed: {e}")))?;
                Ok(())
            }
            Err(StillConnected(old)) => {
                let notice = format!(
                    "a second session for node {name} from {from} was refused, because this session (from {old}) \
                     answers; if that was another process with this node's certificate, stop it"
                );
                let _ = c.registry.send(name, &ToNode::Notice { text: notice }).await;
                tracing::warn!(node = %name, from = %from, existing = %old, "duplicate session refused");
                Err(Status::already_exists(format!(
                    "node {name} is already connected from {old}, and that session answers (it was told of this \
                     attempt); stop the other process (two processes with one node.toml knock each other off), \
                     or, if it is gone, start this one again after {} s",
                    wait.as_secs()
                )))
            }
        }
    }
}

/// Why a receipt was not logged: the node's fault, or the coordinator's own.
pub(crate) enum ReceiptFault {
    Peer(String),
    Local(String),
}

/// Check a node's signed log head and record it as a receipt, with the kind, size
/// and SHA-256 of the message it came with (as the node's egress record names them).
pub(crate) fn log_receipt(
    c: &Coordinator,
    node: &str,
    cert: &[u8],
    r: &Receipt,
    message: &str,
    (bytes, sha256): (u64, [u8; 32]),
) -> Result<(), ReceiptFault> {
    let signed = SignedHead::from_wire(node, r);
    signed.verify(cert).map_err(|e| ReceiptFault::Peer(format!("the node's signed log head does not verify: {e}")))?;
    #[cfg(feature = "test-util")]
    if c.hooks().fail_audit.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
        return Err(ReceiptFault::Local(
            "the coordinator's audit log failed (injected: no space left on device); not the node's fault".into(),
        ));
    }
    record(
        &c.audit,
        Event::Receipt {
            peer: node.to_string(),
            peer_seq: r.seq,
            peer_head: hex::encode(r.head),
            peer_time_ms: r.time_ms,
            signature_hex: hex::encode(&r.signature),
            message: message.to_string(),
            bytes,
            sha256: hex::encode(sha256),
        },
    )
    .map_err(|e| ReceiptFault::Local(format!("the coordinator's audit log failed ({e}); not the node's fault")))
}

/// An analysis that ended without a result, as the analyst's status: one short line
/// per node (the full reasons are in the logs).
fn analysis_status(e: AnalysisError) -> Status {
    match e {
        AnalysisError::Busy => Status::unavailable(e.to_string()),
        AnalysisError::Round(crate::round::RoundError::NotEnoughNodes { .. })
        | AnalysisError::Round(crate::round::RoundError::OverBudget(_))
        | AnalysisError::Privacy(_)
        | AnalysisError::Release(_) => Status::failed_precondition(crate::round::brief_lines(&e.to_string())),
        other => Status::aborted(crate::round::brief_lines(&other.to_string())),
    }
}

type TrainStream = Pin<Box<dyn Stream<Item = Result<pb::TrainChurnEvent, Status>> + Send>>;
type ClvStream = Pin<Box<dyn Stream<Item = Result<pb::TrainClvEvent, Status>> + Send>>;
type OverlapStream = Pin<Box<dyn Stream<Item = Result<pb::OverlapEvent, Status>> + Send>>;

/// `Analyst` service implementation.
#[derive(Debug, Clone)]
pub struct AnalystService(pub Arc<Coordinator>);

fn require_analyst<T>(c: &Coordinator, req: &Request<T>) -> Result<Identity, Status> {
    let (id, _) = peer_identity(c, req)?;
    if id.role != Role::Analyst {
        return Err(Status::permission_denied(format!(
            "{} holds a {} certificate; analyst calls need an analyst certificate",
            id.name,
            id.role.as_str()
        )));
    }
    Ok(id)
}

/// An analyst's request for an analysis (`what`: "analysis", "training"): its
/// reference date parsed, a purpose stated (nodes see and log it), who asks from their
/// certificate.
fn analysis_request(
    who: &Identity,
    reference_date: &str,
    purpose: &str,
    what: &str,
    dp: bool,
) -> Result<crate::analyses::AnalysisRequest, Status> {
    let date = wire::parse_reference_date(reference_date).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if purpose.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "state the purpose of the {what} (--purpose); nodes see and log it"
        )));
    }
    Ok(crate::analyses::AnalysisRequest {
        reference_date: date,
        purpose: purpose.to_string(),
        requested_by: who.name.clone(),
        requested_by_organisation: who.organisation.clone(),
        dp,
    })
}

/// An analysis streamed to the analyst: `run` on its own task, given the sender of its
/// progress; each progress as an event (`progress`), then — after every progress event
/// went out — its result as the last one (`result`, or the analysis's failure as a status).
fn stream_analysis<P, E, R, Fut>(
    run: impl FnOnce(tokio::sync::mpsc::UnboundedSender<P>) -> Fut,
    progress: fn(P) -> E,
    result: impl FnOnce(R) -> Result<E, Status> + Send + 'static,
) -> ReceiverStream<Result<E, Status>>
where
    P: Send + 'static,
    E: Send + 'static,
    R: Send + 'static,
    Fut: std::future::Future<Output = Result<R, crate::analyses::AnalysisError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<E, Status>>(64);
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = tx.clone();
    let forwarding = tokio::spawn(async move {
        while let Some(p) = progress_rx.recv().await {
            if forward.send(Ok(progress(p))).await.is_err() {
                break;
            }
        }
    });
    let analysis = run(progress_tx);
    tokio::spawn(async move {
        let out = analysis.await;
        // Every round's progress goes out before the result.
        let _ = forwarding.await;
        let _ = tx.send(out.map_err(analysis_status).and_then(result)).await;
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl pb::analyst_server::Analyst for AnalystService {
    async fn run_segments(&self, req: Request<pb::SegmentsRequest>) -> Result<Response<pb::SegmentsReply>, Status> {
        let who = require_analyst(&self.0, &req)?;
        let r = req.into_inner();
        let request = analysis_request(&who, &r.reference_date, &r.purpose, "analysis", !r.dp_off)?;
        tracing::info!(analyst = %who.name, organisation = %who.organisation, purpose = %r.purpose, "segments requested");
        let out = self.0.run_segments(&request).await.map_err(analysis_status)?;
        let rel = &out.release;
        Ok(Response::new(pb::SegmentsReply {
            recency: Some(wire::cuts_pb(&rel.cuts.recency)),
            frequency: Some(wire::cuts_pb(&rel.cuts.frequency)),
            monetary: Some(wire::cuts_pb(&rel.cuts.monetary)),
            segments: rel
                .cells
                .iter()
                .map(|c| pb::SegmentCount {
                    segment: c.segment.name().into(),
                    customers: c.customers.unwrap_or(0),
                    suppressed: c.customers.is_none(),
                })
                .collect(),
            customers: rel.customers.unwrap_or(0),
            customers_withheld: rel.customers.is_none(),
            participants: rel.contributors.clone(),
            dropped: out.exits.iter().map(|(n, e)| format!("{n}: {}", crate::round::brief(e))).collect(),
            rounds: out.rounds,
            min_cohort: rel.min_cohort as u32,
            privacy: rel.privacy.as_ref().map(|p| pb::ReleasePrivacy {
                per_node_variance: p.per_node_variance.clone(),
                honest_nodes: p.honest_nodes as u32,
                noise_sd: p.noise_sd,
                ci95: p.ci95,
                rounds: p.rounds as u32,
                rho: p.rho,
                xi: p.xi,
                epsilon: p.epsilon,
                delta: p.delta,
            }),
        }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        require_analyst(&self.0, &req)?;
        let c = &self.0;
        let connected = c.registry.connected();
        let now = crate::now_ms() / 1000;
        let nodes = c
            .enrolment
            .list()
            .into_iter()
            .map(|e| {
                let connected = connected.iter().any(|p| p.name == e.name);
                let seen = c.enrolment.seen(&e.name);
                pb::NodeStatus {
                    connected,
                    not_after: seen.map_or(0, |s| s.not_after),
                    last_seen: if connected { now } else { seen.map_or(0, |s| s.last_seen) },
                    name: e.name,
                    organisation: e.organisation,
                    role: "node".into(),
                }
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            coordinator: c.config.name.clone(),
            nodes,
            coordinator_not_after: pki::not_after_unix(&c.certificate).unwrap_or(0),
        }))
    }

    type TrainChurnStream = TrainStream;

    /// Issue 11: train the churn model; a progress event per round, then the model.
    async fn train_churn(&self, req: Request<pb::TrainChurnRequest>) -> Result<Response<TrainStream>, Status> {
        use crate::analyses::churn::{ChurnRequest, Training};
        let who = require_analyst(&self.0, &req)?;
        let r = req.into_inner();
        let request = analysis_request(&who, &r.reference_date, &r.purpose, "training", !r.dp_off)?;
        if r.horizon_days == 0 || r.horizon_days > 3660 {
            return Err(Status::invalid_argument("--horizon-days must be 1 to 3660"));
        }
        let mut churn = if r.dp_off {
            ChurnRequest::newton(r.horizon_days)
        } else {
            let epsilon =
                if r.epsilon == 0.0 { crate::analyses::churn::DpTarget::default().epsilon } else { r.epsilon };
            if !(epsilon.is_finite() && epsilon > 0.0) {
                return Err(Status::invalid_argument("--epsilon must be a finite number above 0"));
            }
            ChurnRequest::newton_dp(r.horizon_days, epsilon)
        };
        match r.mode.as_str() {
            "" | "newton" => {
                if let Training::Newton { stopping, .. } = &mut churn.training
                    && r.max_rounds > 0
                {
                    stopping.max_rounds = r.max_rounds;
                }
            }
            "fedavg" => {
                churn.training = Training::FedAvg {
                    local: fedcrm_model::fedavg::LocalTraining {
                        learning_rate: 0.5,
                        epochs: 2,
                        batching: fedcrm_model::fedavg::Batching::MiniBatch { size: 256, seed: 1 },
                        lambda: 1e-4,
                        max_update: 8.0,
                    },
                    rounds: if r.max_rounds > 0 { r.max_rounds } else { 30 },
                    optimizer: fedcrm_model::fedavg::ServerOptimizer::Adam {
                        lr: 0.1,
                        beta1: 0.9,
                        beta2: 0.99,
                        tau: 1e-3,
                    },
                }
            }
            other => return Err(Status::invalid_argument(format!("--mode {other:?}: use newton or fedavg"))),
        }
        tracing::info!(analyst = %who.name, purpose = %r.purpose, "churn training requested");
        let coordinator = self.0.clone();
        let stream = stream_analysis(
            move |progress| async move { coordinator.run_churn(&request, churn, Some(progress)).await },
            |p: crate::analyses::churn::Progress| pb::TrainChurnEvent {
                event: Some(pb::train_churn_event::Event::Progress(pb::ChurnRoundProgress {
                    round: p.round,
                    phase: p.phase.into(),
                    examples: p.examples,
                    objective: p.objective.unwrap_or(f64::NAN),
                    gradient_norm: p.gradient_norm.unwrap_or(f64::NAN),
                })),
            },
            |done| {
                let m = &done.release.model;
                Ok(pb::TrainChurnEvent {
                    event: Some(pb::train_churn_event::Event::Trained(pb::ChurnTrained {
                        model_id: done.release.model_id.clone(),
                        sha256: done.release.sha256.clone(),
                        test_auc: m.metrics.test_auc,
                        test_auc_bound: m.metrics.test_auc_bound,
                        test_log_loss: m.metrics.test_log_loss,
                        test_accuracy: m.metrics.test_accuracy,
                        train_examples: m.metrics.train_examples,
                        test_examples: m.metrics.test_examples,
                        rounds: done.rounds,
                        nodes: m.provenance.nodes.clone(),
                        model_json: serde_json::to_string(m).map_err(|e| Status::internal(e.to_string()))?,
                        exits: done.exits.iter().map(|(n, why)| format!("{n}: {why}")).collect(),
                    })),
                })
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    type TrainClvStream = ClvStream;

    /// Issue 13: fit the CLV model; a progress event per round, then the model.
    async fn train_clv(&self, req: Request<pb::TrainClvRequest>) -> Result<Response<ClvStream>, Status> {
        use crate::analyses::clv::ClvRequest;
        let who = require_analyst(&self.0, &req)?;
        let r = req.into_inner();
        let request = analysis_request(&who, &r.calibration_end, &r.purpose, "CLV fit", !r.dp_off)?;
        let mut clv = ClvRequest::new(r.time_unit.parse().map_err(|e: String| Status::invalid_argument(e))?);
        let cohort = pb::ClvRound {
            time_unit: r.time_unit.clone(),
            first_purchase_from: r.first_purchase_from.clone(),
            first_purchase_to: r.first_purchase_to.clone(),
            likelihood: "bg-nbd".into(),
            log_params: vec![0.0; 4],
            ..Default::default()
        };
        clv.first_purchase = wire::clv::cohort(&cohort).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.max_rounds > wire::churn::MAX_DP_ROUNDS {
            return Err(Status::invalid_argument(format!(
                "--max-rounds {}: at most {} rounds per model",
                r.max_rounds,
                wire::churn::MAX_DP_ROUNDS
            )));
        }
        if r.max_rounds > 0 {
            clv.stopping.max_evaluations = r.max_rounds;
            clv.dp_rounds = [r.max_rounds; 2];
        }
        if r.epsilon != 0.0 {
            if !(r.epsilon.is_finite() && r.epsilon > 0.0) {
                return Err(Status::invalid_argument("--epsilon must be a finite number above 0"));
            }
            clv.privacy.epsilon = r.epsilon;
        }
        tracing::info!(analyst = %who.name, purpose = %r.purpose, "clv fit requested");
        let coordinator = self.0.clone();
        let stream = stream_analysis(
            move |progress| async move { coordinator.run_clv(&request, clv, Some(progress)).await },
            |p: crate::analyses::clv::Progress| pb::TrainClvEvent {
                event: Some(pb::train_clv_event::Event::Progress(pb::ClvRoundProgress {
                    round: p.round,
                    model: p.model.into(),
                    customers: p.customers,
                    log_likelihood: p.log_likelihood,
                    gradient_max: p.gradient_max,
                    params: p.params,
                })),
            },
            |done| {
                let m = &done.release.model;
                Ok(pb::TrainClvEvent {
                    event: Some(pb::train_clv_event::Event::Trained(pb::ClvTrained {
                        model_id: done.release.model_id.clone(),
                        sha256: done.release.sha256.clone(),
                        rounds: done.rounds,
                        nodes: m.provenance.nodes.clone(),
                        model_json: serde_json::to_string(m).map_err(|e| Status::internal(e.to_string()))?,
                        exits: done.exits.iter().map(|(n, why)| format!("{n}: {why}")).collect(),
                    })),
                })
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    type RunOverlapStream = OverlapStream;

    /// Issue 12: the channel-overlap matrix by PSI; a progress event per step, then the
    /// release.
    async fn run_overlap(&self, req: Request<pb::OverlapRequest>) -> Result<Response<OverlapStream>, Status> {
        use crate::analyses::overlap::{OverlapOutcome, OverlapRequest};
        let who = require_analyst(&self.0, &req)?;
        let r = req.into_inner();
        if r.purpose.trim().is_empty() {
            return Err(Status::invalid_argument("state the purpose of the overlap (--purpose); nodes see and log it"));
        }
        let segments = match (&r.segment_cuts, r.reference_date.as_str()) {
            (None, "") => None,
            (Some(c), date) => Some(wire::SegmentProfile {
                reference_date: wire::parse_reference_date(date)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                cuts: wire::segment_cuts(c).map_err(|e| Status::invalid_argument(e.to_string()))?,
            }),
            (None, _) => {
                return Err(Status::invalid_argument(
                    "a reference date without cut points: pass the cut points of a segment analysis (--segments)",
                ));
            }
        };
        let request = OverlapRequest {
            purpose: r.purpose.clone(),
            requested_by: who.name.clone(),
            requested_by_organisation: who.organisation.clone(),
            dp: !r.dp_off,
            nodes: r.nodes,
            segments,
        };
        tracing::info!(analyst = %who.name, purpose = %r.purpose, "channel overlap requested");
        let (tx, rx) = mpsc::channel::<Result<pb::OverlapEvent, Status>>(64);
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let coordinator = self.0.clone();
        let forward = tx.clone();
        let forwarding = tokio::spawn(async move {
            while let Some(p) = progress_rx.recv().await {
                let p: crate::analyses::overlap::Progress = p;
                let event = pb::OverlapEvent {
                    event: Some(pb::overlap_event::Event::Progress(pb::OverlapProgress {
                        stage: p.stage.into(),
                        pairs_done: p.lists_done,
                        pairs: p.lists,
                        points: p.points,
                    })),
                };
                if forward.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let out = coordinator.run_overlap(&request, Some(progress_tx)).await;
            let _ = forwarding.await;
            let event = out.map_err(analysis_status).map(|o: OverlapOutcome| pb::OverlapEvent {
                event: Some(pb::overlap_event::Event::Released(pb::OverlapReleased {
                    run_id: o.run.clone(),
                    channels: o
                        .channels
                        .iter()
                        .map(|c| pb::OverlapChannel {
                            node: c.node.clone(),
                            organisation: c.organisation.clone(),
                            kind: c.kind.as_str().into(),
                            customers: c.customers.unwrap_or(0),
                            withheld: c.customers.is_none(),
                        })
                        .collect(),
                    pairs: o
                        .pairs
                        .iter()
                        .map(|p| pb::OverlapPair {
                            a: p.a.clone(),
                            b: p.b.clone(),
                            comparer: p.comparer.clone(),
                            shared: p.shared.unwrap_or(0),
                            withheld: p.shared.is_none(),
                            segments: p.segments.iter().flatten().map(|c| c.unwrap_or(0)).collect(),
                            segments_withheld: p.segments.iter().flatten().map(Option::is_none).collect(),
                        })
                        .collect(),
                    noise_variance_num: o.noise.as_ref().map_or(0, |v| v.num()),
                    noise_variance_den: o.noise.as_ref().map_or(0, |v| v.den()),
                    noise_sd: o.noise.as_ref().map_or(0.0, |v| v.as_f64().sqrt()),
                    epsilon: o.rho.map_or(0.0, |rho| {
                        fedcrm_dp::accounting::Charge { rho, xi: 0.0 }.epsilon(crate::release::REPORT_DELTA).0
                    }),
                    delta: o.rho.map_or(0.0, |_| crate::release::REPORT_DELTA),
                    min_cohort: o.min_cohort as u32,
                    exits: o.exits.iter().map(|(n, why)| format!("{n}: {why}")).collect(),
                })),
            });
            let _ = tx.send(event).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Issue 11: the model registry, every version.
    async fn list_models(&self, req: Request<pb::ModelsRequest>) -> Result<Response<pb::ModelsReply>, Status> {
        require_analyst(&self.0, &req)?;
        let models = self
            .0
            .models
            .list()
            .map_err(registry_status)?
            .into_iter()
            .map(|m| pb::ModelSummary {
                id: m.id,
                kind: m.kind,
                created_ms: m.created_ms,
                published: m.published,
                publisher: m.publisher.unwrap_or_default(),
                sha256: m.sha256,
                metrics_json: m.metrics.to_string(),
            })
            .collect();
        Ok(Response::new(pb::ModelsReply { models }))
    }

    /// Issue 11: one model's artifact (and signature once published), for review.
    async fn get_model(&self, req: Request<pb::ModelRequest>) -> Result<Response<pb::ModelArtifact>, Status> {
        require_analyst(&self.0, &req)?;
        let id = req.into_inner().id;
        let artifact = self.0.models.artifact(&id).map_err(registry_status)?;
        let signed = self.0.models.signed(&id).map_err(registry_status)?;
        let (publisher_cert_pem, signature) = signed.map(|s| (s.publisher_cert_pem, s.signature)).unwrap_or_default();
        Ok(Response::new(pb::ModelArtifact { id, artifact, publisher_cert_pem, signature }))
    }

    /// Issue 11: publish a model with its publisher's signature, checked here against
    /// the brand CA and the CRL (and again by every node).
    async fn publish_model(&self, req: Request<pb::PublishRequest>) -> Result<Response<pb::PublishReply>, Status> {
        let who = require_analyst(&self.0, &req)?;
        let r = req.into_inner();
        let c = &self.0;
        let files = c.config.tls.read().map_err(|e| Status::internal(format!("the coordinator's tls files: {e}")))?;
        let ca_der = pki::pem_to_der_certs(&files.ca_pem)
            .ok()
            .and_then(|mut d| (!d.is_empty()).then(|| d.remove(0)))
            .ok_or_else(|| Status::internal("the coordinator's brand CA file holds no certificate"))?;
        let (sha256, publisher) = c
            .models
            .publish(
                &r.id,
                &r.publisher_cert_pem,
                &r.signature,
                &crate::models::Trust {
                    ca_der: &ca_der,
                    now_unix: c.now_ms() / 1000,
                    revoked: &|s| c.tls.is_revoked(s),
                },
                &c.audit,
            )
            .map_err(registry_status)?;
        tracing::info!(analyst = %who.name, model = %r.id, %publisher, "model published");
        Ok(Response::new(pb::PublishReply { sha256, publisher }))
    }

    /// Issue 10: every node's privacy budget this month, as the coordinator knows it
    /// (like `status`, a read of the coordinator's state: no audit record).
    async fn budgets(&self, req: Request<pb::BudgetsRequest>) -> Result<Response<pb::BudgetsReply>, Status> {
        require_analyst(&self.0, &req)?;
        let c = &self.0;
        let now = c.now_ms();
        let enrolled: Vec<String> = c.enrolment.list().into_iter().map(|e| e.name).collect();
        let nodes = c
            .budgets
            .for_enrolled(now, &enrolled)
            .into_iter()
            .map(|(node, row)| match row {
                None => pb::NodeBudget { node, known: false, ..Default::default() },
                Some(r) => pb::NodeBudget {
                    node,
                    known: true,
                    dp: r.dp.into(),
                    budget: r.budget,
                    charges: u32::try_from(r.charges).unwrap_or(u32::MAX),
                    spent_rho: r.rho,
                    spent_xi: r.xi,
                    unit: r.unit.into(),
                    used: r.used,
                    limit: r.limit,
                    remaining: r.remaining,
                    min_noise_variance: r.min_noise_variance,
                },
            })
            .collect();
        Ok(Response::new(pb::BudgetsReply {
            coordinator: c.config.name.clone(),
            month: fedcrm_dp::budget::Month::of(now).to_string(),
            nodes,
        }))
    }
}
