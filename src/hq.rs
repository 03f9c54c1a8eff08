//! The HQ analyst's client: connects to the coordinator's Analyst service over
//! mutual TLS with an analyst certificate, and renders results as a table, JSON or CSV.

use std::path::Path;

pub use fedcrm_protocol::config::TlsFiles;
use fedcrm_protocol::config::load_toml;
use std::time::Duration;

use anyhow::{Context, Result};
use fedcrm_pki as pki;
use fedcrm_protocol::pb;
use fedcrm_protocol::pb::analyst_client;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

/// `hq.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqConfig {
    /// Coordinator URL, e.g. `https://hq.example.com:7443`.
    pub url: String,
    /// Name in the coordinator's certificate.
    pub server_name: String,
    pub tls: TlsFiles,
    /// Issue 11: the model publisher's key and certificate, on the machine of whoever
    /// may publish models (`fedcrm hq publish`); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<PublisherFiles>,
}

/// `[publisher]` in hq.toml: made by `fedcrm hq init-publisher`, the certificate
/// issued by the brand CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherFiles {
    /// The publisher's private key (mode 0600).
    pub key: std::path::PathBuf,
    /// Its certificate (role fedcrm-model-publisher).
    pub cert: std::path::PathBuf,
}

impl HqConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let (mut c, base): (HqConfig, _) = load_toml(path)?;
        c.tls.resolve(&base);
        if let Some(p) = &mut c.publisher {
            fedcrm_protocol::config::resolve(&base, &mut p.key);
            fedcrm_protocol::config::resolve(&base, &mut p.cert);
        }
        Ok(c)
    }
}

/// How long `hq status` waits for an answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an analysis may run before `hq` gives up waiting (the coordinator's
/// phase deadlines end a stuck round well before this).
pub const ANALYSIS_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct AnalystClient {
    inner: analyst_client::AnalystClient<Channel>,
    url: String,
}

/// Wait at most `limit` for a call; say so plainly when the coordinator does not answer.
async fn within<T>(
    limit: Duration,
    url: &str,
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r?.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the coordinator at {url} did not answer {what} within {} s; check that it is running and not stuck \
             (its log says what it is doing)",
            limit.as_secs()
        ))),
    }
}

/// A coordinator's refusal or failure, as the analyst reads it.
fn coordinator_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {}", s.message())
}

impl AnalystClient {
    pub async fn connect(c: &HqConfig) -> Result<Self> {
        let m = c.tls.read()?;
        let tls = fedcrm_protocol::tls::client_tls(&m.ca_pem, &m.cert_pem, &m.key, &c.server_name);
        let ch = Endpoint::from_shared(c.url.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to the coordinator at {}", c.url))?;
        Ok(Self { inner: analyst_client::AnalystClient::new(ch), url: c.url.clone() })
    }

    /// The RFM segment analysis; `dp`: with differential privacy (`--dp on`).
    pub async fn segments(
        &mut self,
        reference: &str,
        purpose: &str,
        dp: bool,
    ) -> Result<pb::SegmentsReply, tonic::Status> {
        let request = pb::SegmentsRequest { reference_date: reference.into(), purpose: purpose.into(), dp_off: !dp };
        within(ANALYSIS_TIMEOUT, &self.url, "the segment analysis", self.inner.run_segments(request)).await
    }

    pub async fn status(&mut self) -> Result<pb::StatusReply, tonic::Status> {
        within(STATUS_TIMEOUT, &self.url, "a status request", self.inner.status(pb::StatusRequest {})).await
    }

    /// Every node's privacy budget this month, as the coordinator knows it (`hq budget`).
    pub async fn budgets(&mut self) -> Result<pb::BudgetsReply, tonic::Status> {
        within(STATUS_TIMEOUT, &self.url, "a budget request", self.inner.budgets(pb::BudgetsRequest {})).await
    }

    /// Issue 11: train the churn model (`hq train churn`); `on_round` sees each
    /// round's progress as it arrives.
    pub async fn train_churn(
        &mut self,
        request: pb::TrainChurnRequest,
        on_round: impl FnMut(&pb::ChurnRoundProgress),
    ) -> Result<(pb::ChurnTrained, Vec<pb::ChurnRoundProgress>)> {
        let stream = within(STATUS_TIMEOUT, &self.url, "the training request", self.inner.train_churn(request))
            .await
            .map_err(coordinator_error)?;
        let split = |e: pb::TrainChurnEvent| match e.event? {
            pb::train_churn_event::Event::Progress(p) => Some(Ok(p)),
            pb::train_churn_event::Event::Trained(t) => Some(Err(t)),
        };
        self.until_result(stream, "the training", split, on_round).await
    }

    /// Issue 13: fit the CLV model (`hq train clv`); `on_round` sees each round's
    /// progress as it arrives.
    pub async fn train_clv(
        &mut self,
        request: pb::TrainClvRequest,
        on_round: impl FnMut(&pb::ClvRoundProgress),
    ) -> Result<(pb::ClvTrained, Vec<pb::ClvRoundProgress>)> {
        let stream = within(STATUS_TIMEOUT, &self.url, "the CLV fit request", self.inner.train_clv(request))
            .await
            .map_err(coordinator_error)?;
        let split = |e: pb::TrainClvEvent| match e.event? {
            pb::train_clv_event::Event::Progress(p) => Some(Ok(p)),
            pb::train_clv_event::Event::Trained(t) => Some(Err(t)),
        };
        self.until_result(stream, "the CLV fit", split, on_round).await
    }

    /// Reads an analysis's event stream: progress events (`Ok` of `split`), each shown to
    /// `on_progress` and kept, until its result (`Err` of `split`); an event with neither,
    /// or the stream's end, is the coordinator's failure, and silence beyond
    /// [`ANALYSIS_TIMEOUT`] an error naming the coordinator.
    async fn until_result<E, P, T>(
        &self,
        mut stream: tonic::Streaming<E>,
        what: &str,
        split: impl Fn(E) -> Option<Result<P, T>>,
        mut on_progress: impl FnMut(&P),
    ) -> Result<(T, Vec<P>)> {
        let mut progress = Vec::new();
        loop {
            let next = tokio::time::timeout(ANALYSIS_TIMEOUT, stream.message()).await.map_err(|_| {
                anyhow::anyhow!("the coordinator at {} sent nothing for {} s", self.url, ANALYSIS_TIMEOUT.as_secs())
            })?;
            match next.map_err(coordinator_error)?.and_then(&split) {
                Some(Ok(p)) => {
                    on_progress(&p);
                    progress.push(p);
                }
                Some(Err(t)) => return Ok((t, progress)),
                None => anyhow::bail!("the coordinator ended {what} without a result; its log says why"),
            }
        }
    }

    /// Issue 12: the channel-overlap matrix by PSI (`hq overlap`); `on_progress` sees
    /// each step as it arrives.
    pub async fn overlap(
        &mut self,
        request: pb::OverlapRequest,
        on_progress: impl FnMut(&pb::OverlapProgress),
    ) -> Result<pb::OverlapReleased> {
        let stream = within(STATUS_TIMEOUT, &self.url, "the overlap request", self.inner.run_overlap(request))
            .await
            .map_err(coordinator_error)?;
        let split = |e: pb::OverlapEvent| match e.event? {
            pb::overlap_event::Event::Progress(p) => Some(Ok(p)),
            pb::overlap_event::Event::Released(r) => Some(Err(r)),
        };
        Ok(self.until_result(stream, "the overlap run", split, on_progress).await?.0)
    }

    /// [`Self::overlap`] with its progress on `bar` (a spinner, shown or hidden), each
    /// line opened by `label`; the bar is cleared when the run ends.
    pub async fn overlap_on(
        &mut self,
        request: pb::OverlapRequest,
        bar: &indicatif::ProgressBar,
        label: &str,
    ) -> Result<pb::OverlapReleased> {
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar.set_message(format!("{label}: the nodes exchange run keys"));
        let done = self
            .overlap(request, |p| {
                bar.set_message(format!(
                    "{label}: {} — {} of {} lists relayed, {} points",
                    p.stage, p.pairs_done, p.pairs, p.points
                ))
            })
            .await;
        bar.finish_and_clear();
        done
    }

    /// Issue 12: the overlap request for a segment profile: the reference date and
    /// cut points of a segment analysis, as `hq segments --json` printed them.
    pub fn segment_profile(json: &str) -> Result<(String, pb::RfmSegments)> {
        #[derive(serde::Deserialize)]
        struct Cuts {
            reference_date: String,
            recency_cuts: Vec<u64>,
            frequency_cuts: Vec<u64>,
            monetary_cuts_cents: Vec<u64>,
        }
        let c: Cuts = serde_json::from_str(json)
            .context("not the JSON of `fedcrm hq segments --json` (reference_date and the three cut-point lists)")?;
        let cuts = |v: Vec<u64>| Some(pb::CutPoints { cuts: v });
        Ok((
            c.reference_date,
            pb::RfmSegments {
                recency: cuts(c.recency_cuts),
                frequency: cuts(c.frequency_cuts),
                monetary: cuts(c.monetary_cuts_cents),
            },
        ))
    }

    /// Issue 11: the model registry (`hq models`).
    pub async fn models(&mut self) -> Result<pb::ModelsReply, tonic::Status> {
        within(STATUS_TIMEOUT, &self.url, "a model list request", self.inner.list_models(pb::ModelsRequest {})).await
    }

    /// Issue 11: sign model `id`'s exact bytes with the publisher's key and publish it
    /// (`hq publish ID`).
    pub async fn publish(&mut self, id: &str, publisher: &PublisherFiles) -> Result<pb::PublishReply> {
        let key_pem = pki::PrivateKeyPem::new(
            std::fs::read_to_string(&publisher.key)
                .with_context(|| format!("reading the publisher key {}", publisher.key.display()))?,
        );
        let key = pki::SigningKey::from_pem(&key_pem)
            .with_context(|| format!("the publisher key {}", publisher.key.display()))?;
        let cert_pem = std::fs::read_to_string(&publisher.cert)
            .with_context(|| format!("reading the publisher certificate {}", publisher.cert.display()))?;
        let model = within(
            STATUS_TIMEOUT,
            &self.url,
            "a model request",
            self.inner.get_model(pb::ModelRequest { id: id.into() }),
        )
        .await
        .map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))?;
        let signed = fedcrm_protocol::model::SignedModel::sign_artifact(model.artifact, &key, &cert_pem)
            .with_context(|| format!("signing model {id}"))?;
        self.publish_signed(id, signed.publisher_cert_pem, signed.signature).await
    }

    /// The artifact's bytes as the registry holds them (`GetModel`).
    pub async fn model_artifact(&mut self, id: &str) -> Result<pb::ModelArtifact, tonic::Status> {
        within(STATUS_TIMEOUT, &self.url, "a model request", self.inner.get_model(pb::ModelRequest { id: id.into() }))
            .await
    }

    /// Hand the coordinator a publisher's certificate and signature for model `id`;
    /// it checks them against the brand CA before anything is published.
    pub async fn publish_signed(&mut self, id: &str, cert_pem: String, signature: String) -> Result<pb::PublishReply> {
        let request = pb::PublishRequest { id: id.into(), publisher_cert_pem: cert_pem, signature };
        within(STATUS_TIMEOUT, &self.url, "the publication", self.inner.publish_model(request))
            .await
            .map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))
    }
}

/// How many days ahead `hq status` warns that a certificate expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// `hq status`: the enrolled nodes, and the expiry of every certificate in play.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    pub coordinator: String,
    /// The coordinator's and this analyst's own certificates.
    pub certificates: Vec<CertificateRow>,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateRow {
    pub name: String,
    pub role: String,
    #[serde(flatten)]
    pub expiry: Expiry,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub organisation: String,
    pub connected: bool,
    /// When its session was last open (RFC 3339); `None` if not since the coordinator started.
    pub last_seen: Option<String>,
    /// Of the certificate it presented in its current or last session.
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// When a certificate expires, and a warning from [`EXPIRY_WARNING_DAYS`] ahead.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Expiry {
    /// `notAfter`, RFC 3339; `None` when unknown (a node not seen since the coordinator started).
    pub not_after: Option<String>,
    /// Whole days left (negative once expired).
    pub days_left: Option<i64>,
    /// Set when the certificate has expired or expires within 30 days.
    pub warning: Option<String>,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

impl Expiry {
    /// `not_after` in unix seconds, 0 for unknown; `now` in unix seconds.
    pub fn at(not_after: i64, now: i64) -> Self {
        if not_after == 0 {
            return Self { not_after: None, days_left: None, warning: None };
        }
        let days_left = (not_after - now).div_euclid(86_400);
        let warning = if not_after <= now {
            Some("expired: it can no longer connect; issue a new certificate (`fedcrm ca sign`) and install it".into())
        } else if days_left < EXPIRY_WARNING_DAYS {
            Some(format!(
                "expires in {days_left} day(s): issue a new certificate (`fedcrm ca sign`) and install it before {}",
                rfc3339(not_after)
            ))
        } else {
            None
        };
        Self { not_after: Some(rfc3339(not_after)), days_left: Some(days_left), warning }
    }
}

/// This analyst's own certificate, read from `tls.cert`: its name and `notAfter`
/// (unix seconds; 0 when the file does not parse, which `connect` already reported).
pub fn own_certificate(c: &HqConfig) -> (String, i64) {
    let der = std::fs::read_to_string(&c.tls.cert)
        .ok()
        .and_then(|pem| pki::pem_to_der_certs(&pem).ok())
        .and_then(|mut ders| (!ders.is_empty()).then(|| ders.remove(0)));
    let Some(der) = der else { return (c.tls.cert.display().to_string(), 0) };
    let name = pki::identity_from_cert(&der).map(|id| id.name).unwrap_or_else(|_| c.tls.cert.display().to_string());
    (name, pki::not_after_unix(&der).unwrap_or(0))
}

/// Builds the view of a status reply at `now` (unix seconds).
pub fn status_view(r: &pb::StatusReply, (analyst, analyst_not_after): (String, i64), now: i64) -> StatusView {
    StatusView {
        coordinator: r.coordinator.clone(),
        certificates: vec![
            CertificateRow {
                name: r.coordinator.clone(),
                role: "coordinator".into(),
                expiry: Expiry::at(r.coordinator_not_after, now),
            },
            CertificateRow { name: analyst, role: "analyst".into(), expiry: Expiry::at(analyst_not_after, now) },
        ],
        nodes: r
            .nodes
            .iter()
            .map(|n| NodeRow {
                name: n.name.clone(),
                organisation: n.organisation.clone(),
                connected: n.connected,
                last_seen: (n.last_seen > 0).then(|| rfc3339(n.last_seen as i64)),
                expiry: Expiry::at(n.not_after, now),
            })
            .collect(),
    }
}

/// `hq status` as a table; warnings are listed under it.
pub fn status_table(v: &StatusView) -> String {
    let mut s = format!(
        "coordinator {}
",
        v.coordinator
    );
    let date =
        |e: &Expiry| e.not_after.as_deref().map(|d| d[..10.min(d.len())].to_string()).unwrap_or("unknown".into());
    s.push_str(&format!(
        "  {:<24} {:<32} {:<9} {:<20} {:<12}
",
        "node", "organisation", "connected", "last seen", "cert expires"
    ));
    for n in &v.nodes {
        s.push_str(&format!(
            "  {:<24} {:<32} {:<9} {:<20} {:<12}
",
            n.name,
            n.organisation,
            if n.connected { "yes" } else { "no" },
            n.last_seen.as_deref().unwrap_or("not seen"),
            date(&n.expiry)
        ));
    }
    for c in &v.certificates {
        s.push_str(&format!(
            "  {} certificate ({}) expires {}
",
            c.role,
            c.name,
            date(&c.expiry)
        ));
    }
    let warnings: Vec<String> = v
        .certificates
        .iter()
        .filter_map(|c| c.expiry.warning.as_ref().map(|w| format!("{} {}: {w}", c.role, c.name)))
        .chain(v.nodes.iter().filter_map(|n| n.expiry.warning.as_ref().map(|w| format!("node {}: {w}", n.name))))
        .collect();
    for w in warnings {
        s.push_str(&format!(
            "  warning: {w}
"
        ));
    }
    s
}

/// What `hq budget` says of a node that has not connected since the coordinator started.
pub const BUDGET_UNKNOWN: &str = "not connected since the coordinator started: budget unknown";

/// `hq budget`: every node's privacy budget this month as the coordinator knows it —
/// what each node announced in its last Hello plus the charges the coordinator saw
/// since. The nodes enforce their budgets themselves. `--json` prints this; the field
/// names are stable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetView {
    pub coordinator: String,
    /// The calendar month (UTC) of every figure, YYYY-MM, by the coordinator's clock.
    pub month: String,
    /// Every enrolled node in enrolment order, then any node no longer enrolled whose
    /// budget the coordinator still knows.
    pub nodes: Vec<NodeBudgetRow>,
}

/// One node's budget. Every field after `known` is `None` (JSON `null`, an empty CSV
/// field) when `known` is false: unknown, never 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeBudgetRow {
    pub node: String,
    /// `false`: the node has not connected since the coordinator started.
    pub known: bool,
    /// "required" (noised rounds only) or "optional".
    pub dp: Option<String>,
    /// The budget in words, e.g. "ρ = 0.5 (ξ ≤ 1e-6) per calendar month (UTC)".
    pub budget: Option<String>,
    /// Charges this month.
    pub charges: Option<u32>,
    /// Their composition: zCDP ρ and its additive ξ.
    pub spent_rho: Option<f64>,
    pub spent_xi: Option<f64>,
    /// "epsilon" or "rho": the unit of `used`, `limit` and `remaining`.
    pub unit: Option<String>,
    pub used: Option<f64>,
    pub limit: Option<f64>,
    /// `limit` − `used`, never below 0.
    pub remaining: Option<f64>,
    /// The node's noise floor: the smallest per-node noise variance it accepts, e.g. "4".
    pub min_noise_variance: Option<String>,
}

impl BudgetView {
    pub fn new(r: &pb::BudgetsReply) -> Self {
        let nodes = r
            .nodes
            .iter()
            .map(|n| {
                let known = |x| n.known.then_some(x);
                NodeBudgetRow {
                    node: n.node.clone(),
                    known: n.known,
                    dp: known(n.dp.clone()),
                    budget: known(n.budget.clone()),
                    charges: n.known.then_some(n.charges),
                    spent_rho: n.known.then_some(n.spent_rho),
                    spent_xi: n.known.then_some(n.spent_xi),
                    unit: known(n.unit.clone()),
                    used: n.known.then_some(n.used),
                    limit: n.known.then_some(n.limit),
                    remaining: n.known.then_some(n.remaining),
                    min_noise_variance: known(n.min_noise_variance.clone()),
                }
            })
            .collect();
        Self { coordinator: r.coordinator.clone(), month: r.month.clone(), nodes }
    }
}

/// A budget's unit as its symbol: "epsilon" → ε, "rho" → ρ.
fn unit_symbol(unit: &str) -> &str {
    match unit {
        "epsilon" => "ε",
        "rho" => "ρ",
        other => other,
    }
}

/// A figure for reading: up to six decimals without trailing zeros; tiny ones in
/// scientific notation (the CSV and JSON carry every digit).
fn figure(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-4 {
        return format!("{x:.2e}");
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// `hq budget` as a table, one line per node, columns aligned; a node whose budget is
/// unknown says so instead of showing figures.
pub fn budget_table(v: &BudgetView) -> String {
    let header: Vec<String> =
        ["node", "dp", "charges", "spent ρ", "spent ξ", "used", "remaining", "noise floor σ²", "budget"]
            .map(String::from)
            .to_vec();
    let cells = |r: &NodeBudgetRow| -> Option<Vec<String>> {
        let unit = unit_symbol(r.unit.as_deref()?);
        Some(vec![
            r.node.clone(),
            r.dp.clone()?,
            r.charges?.to_string(),
            figure(r.spent_rho?),
            figure(r.spent_xi?),
            format!("{unit} {}", figure(r.used?)),
            format!("{unit} {} of {}", figure(r.remaining?), figure(r.limit?)),
            r.min_noise_variance.clone()?,
            r.budget.clone()?,
        ])
    };
    let rows: Vec<(String, Option<Vec<String>>)> =
        v.nodes.iter().map(|r| (r.node.clone(), if r.known { cells(r) } else { None })).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for (node, cells) in &rows {
        widths[0] = widths[0].max(node.chars().count());
        for (w, c) in widths.iter_mut().zip(cells.iter().flatten()) {
            *w = (*w).max(c.chars().count());
        }
    }
    // The last column (the budget in words) is not padded.
    let line = |cells: &[String]| {
        let mut l = String::from(" ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(&format!(" {c}"));
            } else {
                l.push_str(&format!(" {c:<w$}"));
            }
        }
        l.push('\n');
        l
    };
    let mut s = format!(
        "privacy budgets in {} (UTC) as coordinator {} knows them; each node enforces its own\n",
        v.month, v.coordinator
    );
    s.push_str(&line(&header));
    for (node, cells) in &rows {
        match cells {
            Some(c) => s.push_str(&line(c)),
            None => s.push_str(&line(&[node.clone(), BUDGET_UNKNOWN.to_string()])),
        }
    }
    s
}

/// `hq budget --csv`: a header row, then one row per node; an unknown budget has
/// `known` = false and empty figures. Figures carry every digit (`0.0625`, `4.0`, `5e-66`).
pub fn budget_csv(v: &BudgetView) -> String {
    let mut s = String::from(
        "month,node,known,dp,budget,charges,spent_rho,spent_xi,unit,used,limit,remaining,min_noise_variance\n",
    );
    // `{:?}`: every digit, and an exponent for very small or large figures (ξ is often
    // ~1e-66, which `{}` would spell out in 66 decimals).
    let num = |x: Option<f64>| x.map(|x| format!("{x:?}")).unwrap_or_default();
    let text = |x: &Option<String>| csv_field(x.as_deref().unwrap_or(""));
    for r in &v.nodes {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&v.month),
            csv_field(&r.node),
            r.known,
            text(&r.dp),
            text(&r.budget),
            r.charges.map(|c| c.to_string()).unwrap_or_default(),
            num(r.spent_rho),
            num(r.spent_xi),
            text(&r.unit),
            num(r.used),
            num(r.limit),
            num(r.remaining),
            text(&r.min_noise_variance),
        ));
    }
    s
}

/// Plain serialisable view of a segments reply.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentsView {
    /// The reference date the analyst asked for (YYYY-MM-DD).
    pub reference_date: String,
    /// Total customers; `None` (JSON `null`) when withheld because a cell was suppressed.
    pub customers: Option<u64>,
    pub recency_cuts: Vec<u64>,
    pub frequency_cuts: Vec<u64>,
    pub monetary_cuts_cents: Vec<u64>,
    pub segments: Vec<SegmentRow>,
    pub participants: Vec<String>,
    pub dropped: Vec<String>,
    pub rounds: u32,
    pub min_cohort: u32,
    /// Issue 10: the noise and its cost; `None` (JSON `null`) for an exact analysis.
    pub privacy: Option<PrivacyView>,
}

/// How a release was noised (issue 10), as `--json` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrivacyView {
    /// σ² each node added per count (exact fraction).
    pub per_node_variance: String,
    /// k: the nodes whose noise alone gives the guarantee.
    pub honest_nodes: u32,
    /// Standard deviation of the noise in each count, and the 95 % half-width.
    pub noise_sd: f64,
    pub ci95: f64,
    /// Noised rounds, and their composed cost per node.
    pub rounds: u32,
    pub rho: f64,
    pub xi: f64,
    pub epsilon: f64,
    pub delta: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SegmentRow {
    pub segment: String,
    /// `None` when suppressed below the minimum cohort.
    pub customers: Option<u64>,
}

impl SegmentsView {
    /// The view of a reply to a request for `reference_date`.
    pub fn new(r: &pb::SegmentsReply, reference_date: &str) -> Self {
        let cuts = |c: &Option<pb::CutPoints>| c.as_ref().map(|c| c.cuts.clone()).unwrap_or_default();
        Self {
            reference_date: reference_date.to_string(),
            customers: (!r.customers_withheld).then_some(r.customers),
            recency_cuts: cuts(&r.recency),
            frequency_cuts: cuts(&r.frequency),
            monetary_cuts_cents: cuts(&r.monetary),
            segments: r
                .segments
                .iter()
                .map(|s| SegmentRow { segment: s.segment.clone(), customers: (!s.suppressed).then_some(s.customers) })
                .collect(),
            participants: r.participants.clone(),
            dropped: r.dropped.clone(),
            rounds: r.rounds,
            min_cohort: r.min_cohort,
            privacy: r.privacy.as_ref().map(|p| PrivacyView {
                per_node_variance: p.per_node_variance.clone(),
                honest_nodes: p.honest_nodes,
                noise_sd: p.noise_sd,
                ci95: p.ci95,
                rounds: p.rounds,
                rho: p.rho,
                xi: p.xi,
                epsilon: p.epsilon,
                delta: p.delta,
            }),
        }
    }
}

/// Human-readable table.
pub fn segments_table(v: &SegmentsView) -> String {
    let mut s = String::new();
    let cents = |c: &[u64]| c.iter().map(|x| format!("{}.{:02}", x / 100, x % 100)).collect::<Vec<_>>().join(" / ");
    let join = |c: &[u64]| c.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
    s.push_str(&format!(
        "RFM segments at {} across {} node(s), {} secure rounds\n",
        v.reference_date,
        v.participants.len(),
        v.rounds
    ));
    s.push_str(&format!("  recency cut points (days):      {}\n", join(&v.recency_cuts)));
    s.push_str(&format!("  frequency cut points (days):    {}\n", join(&v.frequency_cuts)));
    s.push_str(&format!("  monetary cut points (currency): {}\n\n", cents(&v.monetary_cuts_cents)));
    s.push_str(&format!("  {:<12} {:>10} {:>8}\n", "segment", "customers", "share"));
    s.push_str(&format!("  {:<12} {:>10} {:>8}\n", "-------", "---------", "-----"));
    for r in &v.segments {
        match (r.customers, v.customers) {
            (Some(c), Some(total)) if total > 0 => {
                s.push_str(&format!("  {:<12} {:>10} {:>7.1}%\n", r.segment, c, 100.0 * c as f64 / total as f64))
            }
            (Some(c), _) => s.push_str(&format!("  {:<12} {:>10}\n", r.segment, c)),
            (None, _) => s.push_str(&format!("  {:<12} {:>10}\n", r.segment, withheld(v.min_cohort))),
        }
    }
    match v.customers {
        Some(total) => s.push_str(&format!("  {:<12} {:>10}\n", "total", total)),
        None => {
            s.push_str(&format!("  {:<12} {:>10} (a cell is withheld, so the total is too)\n", "total", "withheld"))
        }
    }
    match &v.privacy {
        Some(p) => s.push_str(&format!(
            "\n  differential privacy: every node added discrete Gaussian noise (σ² = {} per count, calibrated for \
             k = {} honest nodes)\n  each count is off by ±{:.1} (1 sd; 95 %: ±{:.1}); this analysis cost each node \
             ρ = {:.4}, ε = {:.3} at δ = {:e} over {} noised rounds\n",
            p.per_node_variance, p.honest_nodes, p.noise_sd, p.ci95, p.rho, p.epsilon, p.delta, p.rounds
        )),
        None => s.push_str("\n  exact (--dp off): no noise added, no privacy budget charged\n"),
    }
    s.push_str(&format!("\n  participants: {}\n", v.participants.join(", ")));
    if !v.dropped.is_empty() {
        s.push_str("  left a round (details in the audit logs):\n");
        for d in &v.dropped {
            s.push_str(&format!("    {d}\n"));
        }
    }
    s
}

/// How a withheld cell reads: never `0`, which would read as "no customers".
fn withheld(min_cohort: u32) -> String {
    format!("withheld (< {min_cohort})")
}

/// CSV, one fact per row: `reference_date,record,name,value,withheld`. Records are
/// `segment` (customers per segment), `total`, the cut points (`recency_cut_days`,
/// `frequency_cut_days`, `monetary_cut` in the currency's main unit), `min_cohort`
/// and `participant`. A withheld count has an empty value and `withheld` = true.
pub fn segments_csv(v: &SegmentsView) -> String {
    let mut s = String::from("reference_date,record,name,value,withheld\n");
    let mut row = |record: &str, name: &str, value: Option<String>| {
        s.push_str(&format!(
            "{},{record},{},{},{}\n",
            v.reference_date,
            csv_field(name),
            value.as_deref().unwrap_or(""),
            value.is_none()
        ));
    };
    for r in &v.segments {
        row("segment", &r.segment, r.customers.map(|c| c.to_string()));
    }
    row("total", "customers", v.customers.map(|c| c.to_string()));
    for (i, c) in v.recency_cuts.iter().enumerate() {
        row("recency_cut_days", &(i + 1).to_string(), Some(c.to_string()));
    }
    for (i, c) in v.frequency_cuts.iter().enumerate() {
        row("frequency_cut_days", &(i + 1).to_string(), Some(c.to_string()));
    }
    for (i, c) in v.monetary_cuts_cents.iter().enumerate() {
        row("monetary_cut", &(i + 1).to_string(), Some(format!("{}.{:02}", c / 100, c % 100)));
    }
    row("min_cohort", "customers", Some(v.min_cohort.to_string()));
    if let Some(p) = &v.privacy {
        row("privacy", "per_node_variance", Some(csv_field(&p.per_node_variance)));
        row("privacy", "honest_nodes", Some(p.honest_nodes.to_string()));
        row("privacy", "noise_sd", Some(p.noise_sd.to_string()));
        row("privacy", "ci95", Some(p.ci95.to_string()));
        row("privacy", "rounds", Some(p.rounds.to_string()));
        row("privacy", "rho", Some(p.rho.to_string()));
        row("privacy", "xi", Some(p.xi.to_string()));
        row("privacy", "epsilon", Some(p.epsilon.to_string()));
        row("privacy", "delta", Some(p.delta.to_string()));
    }
    for p in &v.participants {
        row("participant", p, Some(String::new()));
    }
    s
}

/// A CSV field, quoted when it holds a comma, quote or line break.
pub(crate) fn csv_field(x: &str) -> String {
    if x.contains([',', '"', '\n', '\r']) { format!("\"{}\"", x.replace('"', "\"\"")) } else { x.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_coordinator_that_never_answers_gets_a_clear_timeout() {
        // A call that never completes (a stuck coordinator) ends at the limit, saying so.
        let never = std::future::pending::<Result<tonic::Response<pb::StatusReply>, tonic::Status>>();
        let err = within(Duration::from_millis(50), "https://hq:7443", "a status request", never).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("https://hq:7443 did not answer a status request"), "{}", err.message());
    }

    #[test]
    fn csv_carries_the_reference_date_cut_points_and_totals() {
        let reply = pb::SegmentsReply {
            recency: Some(pb::CutPoints { cuts: vec![30, 90] }),
            frequency: Some(pb::CutPoints { cuts: vec![1] }),
            monetary: Some(pb::CutPoints { cuts: vec![12_345] }),
            segments: vec![pb::SegmentCount { segment: "champions".into(), customers: 12, suppressed: false }],
            customers: 12,
            participants: vec!["node-0".into(), "node,1".into()],
            min_cohort: 10,
            ..Default::default()
        };
        let csv = segments_csv(&SegmentsView::new(&reply, "2026-11-30"));
        let rows: Vec<&str> = csv.lines().collect();
        assert!(rows.iter().skip(1).all(|r| r.starts_with("2026-11-30,")), "{csv}");
        for want in [
            "2026-11-30,segment,champions,12,false",
            "2026-11-30,total,customers,12,false",
            "2026-11-30,recency_cut_days,2,90,false",
            "2026-11-30,frequency_cut_days,1,1,false",
            "2026-11-30,monetary_cut,1,123.45,false",
            "2026-11-30,participant,\"node,1\",,false",
        ] {
            assert!(rows.contains(&want), "{want} missing from\n{csv}");
        }
    }

    #[test]
    fn status_shows_expiry_and_warns_thirty_days_ahead() {
        let now = 1_800_000_000;
        let day = 86_400;
        let reply = pb::StatusReply {
            coordinator: "hq.brand".into(),
            coordinator_not_after: now + 400 * day,
            nodes: vec![
                pb::NodeStatus {
                    name: "n-soon".into(),
                    organisation: "A".into(),
                    role: "node".into(),
                    connected: true,
                    not_after: now + 29 * day,
                    last_seen: now as u64,
                },
                pb::NodeStatus {
                    name: "n-fine".into(),
                    organisation: "B".into(),
                    role: "node".into(),
                    connected: false,
                    not_after: now + 31 * day,
                    last_seen: (now - 3600) as u64,
                },
                pb::NodeStatus {
                    name: "n-never".into(),
                    organisation: "C".into(),
                    role: "node".into(),
                    connected: false,
                    not_after: 0,
                    last_seen: 0,
                },
            ],
        };
        let v = status_view(&reply, ("analyst.hq".into(), now - day), now);
        let json = serde_json::to_value(&v).unwrap();
        let node = |i: usize| &json["nodes"][i];
        assert_eq!(node(0)["days_left"], 29);
        assert!(node(0)["warning"].as_str().unwrap().contains("expires in 29 day(s)"), "{json}");
        assert_eq!(node(1)["days_left"], 31);
        assert!(node(1)["warning"].is_null(), "{json}");
        assert!(node(1)["not_after"].as_str().unwrap().starts_with("2027-"), "{json}");
        assert!(node(2)["not_after"].is_null() && node(2)["last_seen"].is_null(), "{json}");
        // The coordinator's certificate is fine; the analyst's expired yesterday.
        assert!(json["certificates"][0]["warning"].is_null(), "{json}");
        assert!(json["certificates"][1]["warning"].as_str().unwrap().starts_with("expired"), "{json}");
        let table = status_table(&v);
        assert!(table.contains("warning: node n-soon: expires in 29 day(s)"), "{table}");
        assert!(table.contains("warning: analyst analyst.hq: expired"), "{table}");
        assert!(!table.contains("node n-fine:"), "{table}");
    }

    fn budgets_reply() -> pb::BudgetsReply {
        pb::BudgetsReply {
            coordinator: "coordinator.hq".into(),
            month: "2026-11".into(),
            nodes: vec![
                pb::NodeBudget {
                    node: "node-0".into(),
                    known: true,
                    dp: "required".into(),
                    budget: "ε = 4 at δ = 1e-6 per calendar month (UTC)".into(),
                    charges: 2,
                    spent_rho: 0.0625,
                    spent_xi: 5e-66,
                    unit: "epsilon".into(),
                    used: 2.75,
                    limit: 4.0,
                    remaining: 1.25,
                    min_noise_variance: "4".into(),
                },
                pb::NodeBudget { node: "node-with-a-long,name".into(), known: false, ..Default::default() },
            ],
        }
    }

    #[test]
    fn budget_table_names_the_unit_and_never_invents_an_unknown_budget() {
        let v = BudgetView::new(&budgets_reply());
        let unknown = &v.nodes[1];
        assert!(!unknown.known && unknown.used.is_none() && unknown.charges.is_none(), "{unknown:?}");
        let table = budget_table(&v);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("2026-11") && lines[0].contains("coordinator.hq"), "{table}");
        assert!(lines[2].contains("ε 1.25 of 4") && lines[2].contains("ε 2.75"), "{table}");
        assert!(lines[3].contains("node-with-a-long,name") && lines[3].ends_with(BUDGET_UNKNOWN), "{table}");
        // Aligned: every column starts where its header does (in characters: ε, ρ, σ²).
        let at = |line: &str, word: &str| line.find(word).map(|b| line[..b].chars().count());
        assert_eq!(at(lines[1], "dp"), at(lines[2], "required"), "{table}");
        assert_eq!(at(lines[1], "dp"), at(lines[3], "not connected"), "{table}");
        assert_eq!(at(lines[1], "remaining"), at(lines[2], "ε 1.25"), "{table}");
        assert_eq!(at(lines[1], "budget"), at(lines[2], "ε = 4"), "{table}");
    }

    #[test]
    fn budget_csv_quotes_fields_and_leaves_unknown_figures_empty() {
        let csv = budget_csv(&BudgetView::new(&budgets_reply()));
        assert_eq!(
            csv,
            "month,node,known,dp,budget,charges,spent_rho,spent_xi,unit,used,limit,remaining,min_noise_variance\n\
             2026-11,node-0,true,required,ε = 4 at δ = 1e-6 per calendar month (UTC),2,0.0625,5e-66,epsilon,2.75,4.0,1.25,4\n\
             2026-11,\"node-with-a-long,name\",false,,,,,,,,,,\n"
        );
    }

    #[test]
    fn figures_read_plainly() {
        assert_eq!(figure(0.0), "0");
        assert_eq!(figure(0.07 - 0.0625), "0.0075");
        assert_eq!(figure(10.0), "10");
        assert_eq!(figure(2e-7), "2.00e-7");
    }

    #[test]
    fn withheld_cells_and_totals_never_read_as_zero() {
        let reply = pb::SegmentsReply {
            segments: vec![
                pb::SegmentCount { segment: "high-value".into(), customers: 0, suppressed: true },
                pb::SegmentCount { segment: "dormant".into(), customers: 40, suppressed: false },
            ],
            customers: 0,
            customers_withheld: true,
            min_cohort: 10,
            ..Default::default()
        };
        let v = SegmentsView::new(&reply, "1997-09-30");
        let json = serde_json::to_value(&v).unwrap();
        assert!(json["customers"].is_null() && json["segments"][0]["customers"].is_null(), "{json}");
        assert_eq!(json["segments"][1]["customers"], 40);
        let table = segments_table(&v);
        assert!(
            table.contains("at 1997-09-30")
                && table.contains("withheld (< 10)")
                && table.contains("total")
                && !table.contains(" 0\n"),
            "{table}"
        );
        assert_eq!(
            segments_csv(&v),
            "reference_date,record,name,value,withheld\n1997-09-30,segment,high-value,,true\n\
             1997-09-30,segment,dormant,40,false\n1997-09-30,total,customers,,true\n\
             1997-09-30,min_cohort,customers,10,false\n"
        );
    }
}
