//! `fedcrm bench train`: churn-model training rounds per second, each beside an honest
//! floor measured in the same run on the same cores. Measured, never asserted.
//!
//! **Newton (the d = 16).** A real churn training end to end: the harness
//! ([`crate::harness`], no test hooks) starts a coordinator and n nodes (default 10) on
//! loopback with mutual TLS and certificates issued from CSRs; every node holds one
//! franchisee's synthetic jewellery data ([`crate::demodata`], written to a temporary
//! directory); `Coordinator::run_churn` runs the moments round, the federated Newton
//! rounds and the evaluation round, each a secure-aggregation round over gRPC. The model
//! has d = 16 features (all of `FeatureSpec::full`) and the intercept, **17 weights**;
//! a feature constant over every node's data would be dropped after the moments round,
//! and the row prints the weights the model ends with. Rounds per second are
//! over the Newton rounds: from the moments round's progress event to the last Newton
//! round's (the coordinator reports each round when its sum is released). The bytes
//! per node and Newton round are what the nodes' audit logs record of their egress
//! (encoded messages, before TLS), mean over nodes and rounds.
//!
//! Its floor: the same nodes' same Newton contributions (`NodeQuery::contribute` of the
//! same `ChurnRound`s, on the same data files, each node's feature cache kept between
//! rounds as a session keeps it), on one thread and on all cores (the faster counted),
//! a plain wrapping sum, and the same
//! `NewtonTraining::consume`, round after round to the same stop. The floor's final
//! weights must equal the trained model's bit for bit and its round count the
//! training's, or the bench fails: equal weights need equal sums every round.
//!
//! **FedAvg (d = 100,000).** See [`fedavg`]: a bench-only driver of real secure
//! rounds over mTLS, not the gRPC service, and exactly what it includes and excludes.
//!
//! **Flower** (`--flower`): Flower's SecAgg and SecAgg+ for the same n and d from
//! `../shared/bench/flower_secaggplus.py` ([`super::flower`]): one client's masking plus
//! the server's sum and unmasking, in one process — secure aggregation only, no local
//! training, no network. Skipped with a message when Python or Flower is missing.

pub mod fedavg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::churn::{ChurnRequest, Progress, Training};
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_model::features::FeatureSpec;
use fedcrm_model::logistic::NewtonNext;
use fedcrm_model::logistic::NewtonTraining;
use fedcrm_model::standardise::{Standardiser, decode_moments, without_constant};
use fedcrm_node::analyses::{Cache, LocalData, NodeQuery};
use fedcrm_node::data::{Dataset, Format, Source};
use fedcrm_pki::OrgKind;
use fedcrm_protocol::wire::churn::{ChurnRound, ChurnSetup, ChurnStep};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::flower;
use crate::harness::{Cluster, ClusterOptions, NodeSpec};

/// The synthetic data's reference date and churn horizon (as tests/churn_egress.rs).
const REFERENCE: time::Date = time::macros::date!(2025 - 03 - 31);
const HORIZON: u32 = 275;

/// What `fedcrm bench train` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// People in each generated synthetic population (five franchisee nodes per population).
    pub customers: usize,
    pub seed: u64,
    pub fedavg: fedavg::Settings,
    /// Skip the Newton row (`--only fedavg`) or the FedAvg row (`--only newton`).
    pub newton: bool,
    pub fedavg_row: bool,
}

/// The Newton row.
#[derive(Debug, Clone, Serialize)]
pub struct NewtonRow {
    pub nodes: usize,
    /// Weights of the trained model (features + intercept).
    pub weights: usize,
    pub model: String,
    pub train_examples: u64,
    /// Every secure round of the training (moments, Newton, evaluation).
    pub rounds: usize,
    pub newton_rounds: usize,
    pub newton_ms: f64,
    pub rounds_per_s: f64,
    /// The whole `run_churn`, all rounds and the model's registration.
    pub training_wall_ms: f64,
    /// Egress per node per Newton round (audit log), mean.
    pub bytes_per_node_round: u64,
    pub floor_newton_ms: f64,
    pub floor_rounds_per_s: f64,
    pub ratio: Option<f64>,
    pub floor: String,
    /// The floor reached the same weights, bit for bit, in the same number of rounds.
    pub floor_weights_equal: bool,
    /// Audit records the coordinator and the nodes wrote during the Newton rounds (by
    /// their time stamps, to the millisecond); each is fsynced before the action it
    /// records goes on.
    pub audit_records: u64,
    /// One 256-byte append + `fdatasync` in the temporary directory the parties' logs
    /// are in, median of [`FSYNC_PROBES`], same run.
    pub fsync_ms: f64,
    pub includes: String,
}

/// The FedAvg row.
#[derive(Debug, Clone, Serialize)]
pub struct FedAvgRow {
    pub nodes: usize,
    pub d: usize,
    pub words: usize,
    pub word_bits: u32,
    pub examples_per_node: usize,
    pub nonzeros_per_example: usize,
    pub epochs: u32,
    pub rounds: usize,
    pub key_setup_ms: f64,
    /// Mean round time.
    pub round_ms: f64,
    pub rounds_per_s: f64,
    /// Mean of each round's slowest node's local epochs.
    pub local_ms: f64,
    pub wire_bytes_per_node_round: u64,
    pub payload_bytes_per_node_round: u64,
    pub floor_round_ms: f64,
    pub floor_local_ms: f64,
    pub floor_rounds_per_s: f64,
    pub ratio: Option<f64>,
    pub floor: String,
    pub sums_equal: bool,
    pub includes: String,
    pub excludes: String,
}

/// Flower's per-round figure for the FedAvg row's n and d.
#[derive(Debug, Clone, Serialize)]
pub struct FlowerRow {
    pub command: String,
    pub versions: String,
    pub scheme: String,
    pub k: usize,
    pub client_ms: f64,
    pub server_ms: f64,
    pub round_ms: f64,
    pub what: String,
}

/// Everything `fedcrm bench train` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newton: Option<NewtonRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fedavg: Option<FedAvgRow>,
    /// Flower's SecAgg and SecAgg+ rows (`--flower`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flower: Vec<FlowerRow>,
    /// Why Flower's figure is missing, when `--flower` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flower_skipped: Option<String>,
}

/// `fedcrm bench train`: run, then print the table or JSON.
pub async fn train(opts: Options, json: bool, flower_opts: Option<flower::Options>) -> Result<()> {
    let mut report = run(&opts).await?;
    if let Some(f) = flower_opts {
        match peer(&f, opts.fedavg.nodes, opts.fedavg.d) {
            Ok(rows) => report.flower = rows,
            Err(e) => {
                let why = format!("Flower skipped: {e:#}");
                eprintln!("{why}");
                report.flower_skipped = Some(why);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Run the rows `opts` asks for.
pub async fn run(opts: &Options) -> Result<Report> {
    let newton = if opts.newton { Some(newton(opts).await?) } else { None };
    let fedavg = if opts.fedavg_row {
        let settings = opts.fedavg.clone();
        Some(tokio::task::spawn_blocking(move || fedavg_row(&settings)).await??)
    } else {
        None
    };
    Ok(Report { threads: fedavg::threads(), newton, fedavg, flower: vec![], flower_skipped: None })
}

/// n franchisee nodes of synthetic jewellery data: the generator's franchisees (each
/// its own organisation) of populations of `customers` people from seeds `seed`,
/// `seed + 1`, … as needed (a later population's names get a `-p1`, `-p2`, … suffix).
pub fn jewellery_nodes(n: usize, customers: usize, seed: u64) -> Result<Vec<NodeSpec>> {
    let mut nodes = Vec::with_capacity(n);
    let mut population = 0u64;
    while nodes.len() < n {
        let opts = crate::demodata::Options { customers, ..crate::demodata::Options::new(seed + population) };
        let generated = crate::demodata::generate(&opts)?;
        // Franchisees only: HQ-owned channels count as colluding with HQ in the round's
        // threshold rule, and the bench is about franchisees' nodes.
        for entry in generated.manifest.nodes.iter().filter(|e| e.kind == OrgKind::Franchisee) {
            if nodes.len() == n {
                break;
            }
            let (_, bytes) = generated
                .files
                .iter()
                .find(|(p, _)| p.to_str() == Some(entry.purchases.as_str()))
                .context("the generator's manifest names a file it did not make")?;
            let data = String::from_utf8(bytes.clone())?;
            let suffix = if population == 0 { String::new() } else { format!("-p{population}") };
            let name = format!("{}{suffix}", entry.name);
            let mut spec = NodeSpec::franchisee(&name, data);
            spec.organisation = format!("{}{suffix}", entry.organisation);
            spec.format = Format::Csv;
            nodes.push(spec);
        }
        population += 1;
    }
    Ok(nodes)
}

fn request() -> AnalysisRequest {
    AnalysisRequest {
        reference_date: REFERENCE,
        purpose: "fedcrm bench train".into(),
        requested_by: "analyst.hq".into(),
        requested_by_organisation: "Demo Jewellery HQ".into(),
        dp: false,
    }
}

async fn newton(opts: &Options) -> Result<NewtonRow> {
    let n = opts.nodes;
    ensure!(n >= 3, "the Newton row needs at least 3 nodes (the release rule's minimum), got {n}");
    let nodes = jewellery_nodes(n, opts.customers, opts.seed)?;
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 120,
        ..Default::default()
    })
    .await?;
    let churn = ChurnRequest::newton(HORIZON);
    let Training::Newton { lambda, stopping } = churn.training.clone() else { bail!("a Newton request") };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let pb = spinner(format!("Newton: churn training over {n} nodes (mTLS, loopback)"));
    let pb2 = pb.clone();
    let recorder = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(p) = rx.recv().await {
            pb2.set_message(format!("Newton: round {} ({}) done", p.round, p.phase));
            events.push((Instant::now(), unix_ms(), p));
        }
        events
    });
    let started = Instant::now();
    let trained = cluster.coordinator.run_churn(&request(), churn, Some(tx)).await;
    let wall = started.elapsed();
    let events = recorder.await?;
    pb.finish_and_clear();
    let trained = trained.map_err(|e| anyhow::anyhow!("churn training: {e}"))?;
    let model = &trained.release.model;
    ensure!(model.provenance.nodes.len() == n, "only {} of {n} nodes took part", model.provenance.nodes.len());

    let moments_at = events.iter().find(|(_, _, p)| p.phase == "moments").map(|(t, ms, _)| (*t, *ms));
    let newton_events: Vec<&(Instant, u64, Progress)> = events.iter().filter(|(_, _, p)| p.phase == "newton").collect();
    let (Some((from, from_ms)), Some((to, to_ms, _))) = (moments_at, newton_events.last()) else {
        bail!("the training reported no moments or no Newton round");
    };
    let newton_time = to.duration_since(from);
    let newton_rounds = newton_events.len();
    ensure!(
        model.provenance.rounds.len() == newton_rounds + 2,
        "{} rounds in the model's provenance, {newton_rounds} Newton rounds reported",
        model.provenance.rounds.len()
    );

    // Egress per node per Newton round, from the nodes' audit logs.
    let newton_ids: std::collections::BTreeSet<&String> = model.provenance.rounds[1..=newton_rounds].iter().collect();
    let mut per_round: BTreeMap<(String, String), u64> = BTreeMap::new();
    // Every party's audit records written during the Newton rounds (each is fsynced).
    let in_window = |r: &fedcrm_audit::Record| r.time_ms >= from_ms && r.time_ms <= *to_ms;
    let mut records =
        fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir)?.iter().filter(|r| in_window(r)).count();
    for cfg in &cluster.node_configs {
        let log = fedcrm_audit::log::read_records(&cfg.audit_dir)?;
        records += log.iter().filter(|r| in_window(r)).count();
        for r in log {
            if let fedcrm_audit::Event::Egress { round: Some(round), bytes, .. } = r.event
                && newton_ids.contains(&round)
            {
                *per_round.entry((cfg.name.clone(), round)).or_default() += bytes;
            }
        }
    }
    ensure!(per_round.len() == n * newton_rounds, "a node's audit log lacks the egress of a Newton round");
    let bytes = per_round.values().sum::<u64>() / per_round.len() as u64;

    // The floor, on the same data files, after the cluster is stopped.
    let datasets: Vec<Dataset> = cluster.node_configs.iter().map(|c| c.data.load()).collect::<Result<_, _>>()?;
    let _dir = cluster.stop().await;
    let pb = spinner("Newton floor: the same contributions and solver, no masks, no network".into());
    let floor = newton_floor(datasets, lambda, stopping)?;
    let fsync = fsync_probe()?;
    pb.finish_and_clear();
    let weights_equal = floor.weights.len() == model.model.weights.len()
        && floor.weights.iter().zip(&model.model.weights).all(|(a, b)| a.to_bits() == b.to_bits());
    ensure!(
        floor.rounds == newton_rounds,
        "the floor took {} Newton rounds, the training {newton_rounds}",
        floor.rounds
    );
    ensure!(weights_equal, "the floor's weights differ from the trained model's: the sums differed");

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let weights = model.model.weights.len();
    Ok(NewtonRow {
        nodes: n,
        weights,
        model: format!(
            "logistic regression, {} features + intercept = {weights} weights (FeatureSpec::full, d = {})",
            weights - 1,
            FeatureSpec::full().dim()
        ),
        train_examples: model.metrics.train_examples,
        rounds: model.provenance.rounds.len(),
        newton_rounds,
        newton_ms: ms(newton_time),
        rounds_per_s: newton_rounds as f64 / newton_time.as_secs_f64(),
        training_wall_ms: ms(wall),
        bytes_per_node_round: bytes,
        floor_newton_ms: ms(floor.time),
        floor_rounds_per_s: newton_rounds as f64 / floor.time.as_secs_f64(),
        ratio: ratio(ms(newton_time), ms(floor.time)),
        floor: format!(
            "each node's same Newton contribution (NodeQuery::contribute on its data file, feature cache kept) on \
             one thread or {} threads, the faster each round, + a plain wrapping sum + NewtonTraining::consume, per \
             Newton round; no masks, no TLS, no network",
            fedavg::threads()
        ),
        floor_weights_equal: weights_equal,
        audit_records: records as u64,
        fsync_ms: ms(fsync),
        includes: "per Newton round: the coordinator's round start, every node's policy check, contribution, \
                   masking, audit records and egress over gRPC/mTLS, the secure sum's unmasking, the release door \
                   and the Newton step (moments and evaluation rounds excluded from rounds/s, included in the wall \
                   time)"
            .into(),
    })
}

/// How many appends the fsync probe times.
pub const FSYNC_PROBES: usize = 32;

/// Unix time in ms (the audit records' clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The median time of one 256-byte append + `fdatasync` in a new file of the system's
/// temporary directory (where the harness puts the parties' audit logs).
fn fsync_probe() -> Result<Duration> {
    use std::io::Write as _;
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("probe.log"))?;
    let line = [b'x'; 256];
    let mut times = Vec::with_capacity(FSYNC_PROBES);
    for _ in 0..FSYNC_PROBES {
        let started = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[FSYNC_PROBES / 2])
}

/// The Newton floor's result.
struct NewtonFloor {
    rounds: usize,
    time: Duration,
    weights: Vec<f64>,
}

/// The driver's arithmetic without secure aggregation: moments (not timed), then the
/// Newton rounds (timed) to the same stop.
fn newton_floor(
    datasets: Vec<Dataset>,
    lambda: f64,
    stopping: fedcrm_model::logistic::Stopping,
) -> Result<NewtonFloor> {
    let req = ChurnRequest::newton(HORIZON);
    let mut setup = ChurnSetup {
        spec: FeatureSpec::full(),
        horizon_days: req.horizon_days,
        holdout_key: req.holdout_key,
        test_fraction_bp: req.test_fraction_bp,
    };
    let mut nodes: Vec<(Source, Cache)> =
        datasets.into_iter().map(|d| (Source::Rows(std::sync::Arc::new(d)), Cache::default())).collect();
    let moments = plain_sum(
        &mut nodes,
        &ChurnRound { setup: setup.clone(), step: ChurnStep::Moments, dp: None },
        fedavg::threads(),
    )?;
    let moments = decode_moments(&setup.spec, &moments)?;
    let standardiser = Standardiser::from_moments(&moments)?;
    let (spec, standardiser) = without_constant(&setup.spec, &standardiser);
    setup.spec = spec;
    let mut training = NewtonTraining::new(setup.spec.dim(), lambda, stopping);
    let (mut rounds, mut time) = (0, Duration::ZERO);
    loop {
        let round = ChurnRound {
            setup: setup.clone(),
            step: ChurnStep::Newton { standardiser: standardiser.clone(), weights: training.weights().to_vec() },
            dp: None,
        };
        // On one thread and on all cores, the faster counted (both must agree).
        let started = Instant::now();
        let one = plain_sum(&mut nodes, &round, 1)?;
        let on_one = started.elapsed();
        let started = Instant::now();
        let sum = plain_sum(&mut nodes, &round, fedavg::threads())?;
        let on_all = started.elapsed();
        ensure!(one == sum, "the floor's sums on one thread and on all cores differ");
        let started = Instant::now();
        let next = training.consume(&sum)?;
        time += started.elapsed() + on_one.min(on_all);
        rounds += 1;
        match next {
            NewtonNext::Round(t) => training = t,
            NewtonNext::Done(trained) => return Ok(NewtonFloor { rounds, time, weights: trained.model.weights }),
        }
    }
}

/// Every node's contribution to `round` on `threads` threads, summed plainly (wrapping).
fn plain_sum(nodes: &mut [(Source, Cache)], round: &ChurnRound, threads: usize) -> Result<Vec<u64>> {
    let per = nodes.len().div_ceil(threads.max(1)).max(1);
    let vectors: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .chunks_mut(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|(source, cache)| {
                            round
                                .contribute(&mut LocalData::new(source, cache), REFERENCE)
                                .map(|c| c.vector.to_vec())
                                .map_err(anyhow::Error::msg)
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a floor thread panicked"))?)
            .collect::<Result<Vec<Vec<Vec<u64>>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let mut sum = vec![0u64; vectors.first().map_or(0, Vec::len)];
    for v in &vectors {
        for (a, b) in sum.iter_mut().zip(v) {
            *a = a.wrapping_add(*b);
        }
    }
    Ok(sum)
}

fn fedavg_row(s: &fedavg::Settings) -> Result<FedAvgRow> {
    let pb = ProgressBar::new(u64::from(s.rounds));
    pb.set_style(
        ProgressStyle::with_template("  {msg}\n  [{bar:40}] {pos}/{len} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(format!(
        "FedAvg: d = {} over {} nodes (secure rounds over mTLS), each beside its floor",
        s.d, s.nodes
    ));
    let f = fedavg::run(s, |_| pb.inc(1))?;
    pb.finish_and_clear();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1e3 / v.len().max(1) as f64;
    let total: Duration = f.rounds.iter().sum();
    let floor_total: Duration = f.floor.iter().sum();
    Ok(FedAvgRow {
        nodes: s.nodes,
        d: s.d,
        words: fedcrm_model::fedavg::update_len(s.d),
        word_bits: fedavg::WIDTH.bits(),
        examples_per_node: s.examples,
        nonzeros_per_example: s.nonzeros,
        epochs: s.epochs,
        rounds: f.rounds.len(),
        key_setup_ms: ms(f.key_setup),
        round_ms: mean(&f.rounds),
        rounds_per_s: f.rounds.len() as f64 / total.as_secs_f64(),
        local_ms: mean(&f.local),
        wire_bytes_per_node_round: f.wire_bytes_per_node_round,
        payload_bytes_per_node_round: f.payload_bytes_per_node_round,
        floor_round_ms: mean(&f.floor),
        floor_local_ms: mean(&f.floor_local),
        floor_rounds_per_s: f.floor.len() as f64 / floor_total.as_secs_f64(),
        ratio: ratio(ms(total), ms(floor_total)),
        floor: format!(
            "the {} nodes' same FedAvg local epochs on one thread or {} threads, the faster each round, + a plain wrapping sum of their {}-word updates + \
             the same decode and server step, per round, on the same weights; no masks, no TLS, no network",
            s.nodes,
            f.threads,
            fedcrm_model::fedavg::update_len(s.d)
        ),
        sums_equal: f.sums_equal,
        includes: "per round: the weights (d + 1 f64) to every node over mTLS; each node's local epochs \
                   (fedcrm_model::fedavg::local_update), self-mask seed sharing, opening of its neighbours' sealed \
                   shares, masking (multiround, full SecAgg, no dropouts) and masked vector over mTLS; the \
                   coordinator's add_masked, close, unmasking, decode and server step (FedAvg, lr 1)"
            .into(),
        excludes: "not the gRPC service: a bench-only driver (no protobuf framing, no policy checks, signatures, \
                   audit records or release door); the small messages (sealed shares, U2/U3, unmask responses) \
                   pass between threads in memory; the key setup (once per analysis) is printed apart"
            .into(),
    })
}

/// Flower's SecAgg (every pair of clients, as our FedAvg row) and SecAgg+ for n and d.
fn peer(opts: &flower::Options, n: usize, d: usize) -> Result<Vec<FlowerRow>> {
    if let Err(e) = flower::preflight(opts) {
        bail!("{e:#}");
    }
    let (parsed, command, _) = flower::run(opts, n, d)?;
    ensure!(!parsed.rows.is_empty(), "Flower's script printed no row");
    Ok(parsed
        .rows
        .iter()
        .map(|row| FlowerRow {
            command: command.clone(),
            versions: parsed.versions.clone(),
            scheme: row.scheme.clone(),
            k: row.k,
            client_ms: row.client_ms,
            server_ms: row.server_ms,
            round_ms: row.client_ms + row.server_ms,
            what: "one client's quantize + mask plus the server's sum and unmask, no dropouts, in one process: \
                   secure aggregation only — no local training, no network, no TLS"
                .into(),
        })
        .collect())
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The human-readable report.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let x = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.2}×"));
    let _ = writeln!(s, "fedcrm bench train — measured, never asserted ({} threads)", r.threads);
    let _ = writeln!(
        s,
        "  {:<34} {:>10} {:>12} {:>12} {:>10} {:>14}",
        "row", "rounds/s", "round (ms)", "floor (ms)", "ratio", "bytes/node/rnd"
    );
    if let Some(n) = &r.newton {
        let _ = writeln!(
            s,
            "  {:<34} {:>10.2} {:>12.2} {:>12.3} {:>10} {:>14}",
            format!("Newton, {} weights, {} nodes", n.weights, n.nodes),
            n.rounds_per_s,
            n.newton_ms / n.newton_rounds as f64,
            n.floor_newton_ms / n.newton_rounds as f64,
            x(n.ratio),
            n.bytes_per_node_round
        );
    }
    if let Some(f) = &r.fedavg {
        let _ = writeln!(
            s,
            "  {:<34} {:>10.2} {:>12.1} {:>12.1} {:>10} {:>14}",
            format!("FedAvg, d = {}, {} nodes", f.d, f.nodes),
            f.rounds_per_s,
            f.round_ms,
            f.floor_round_ms,
            x(f.ratio),
            f.wire_bytes_per_node_round
        );
    }
    for p in &r.flower {
        let _ = writeln!(
            s,
            "  {:<34} {:>10.2} {:>12.1} {:>12} {:>10} {:>14}",
            format!("Flower {} (k = {}), aggr. only", p.scheme, p.k),
            1e3 / p.round_ms,
            p.round_ms,
            "-",
            "-",
            "-"
        );
    }
    if let Some(n) = &r.newton {
        let _ = writeln!(s, "\nNewton: {}", n.model);
        let _ = writeln!(
            s,
            "  {} training examples; {} secure rounds in all ({} Newton); whole training {:.0} ms; Newton rounds \
             {:.1} ms; floor {:.2} ms; floor's weights equal the model's bit for bit: {}",
            n.train_examples,
            n.rounds,
            n.newton_rounds,
            n.training_wall_ms,
            n.newton_ms,
            n.floor_newton_ms,
            if n.floor_weights_equal { "yes" } else { "no" }
        );
        let _ = writeln!(s, "  measured: {}", n.includes);
        let _ = writeln!(s, "  floor: {}", n.floor);
        let _ = writeln!(s, "  bytes/node/rnd: each node's egress per Newton round as its audit log records it");
        let _ = writeln!(
            s,
            "  audit: {} records written during the Newton rounds by the coordinator and the nodes ({:.0} per \
             round), each fsynced before what it records goes on; one 256-byte append + fdatasync here takes {:.2} \
             ms (median of {FSYNC_PROBES}, same run); the floor writes none",
            n.audit_records,
            n.audit_records as f64 / n.newton_rounds.max(1) as f64,
            n.fsync_ms
        );
    }
    if let Some(f) = &r.fedavg {
        let _ = writeln!(
            s,
            "\nFedAvg: d = {} features ({} words of {} bits), {} examples per node with {} non-zeros each, {} local \
             epoch(s), {} rounds; key setup once per analysis {:.1} ms (not in rounds/s)",
            f.d, f.words, f.word_bits, f.examples_per_node, f.nonzeros_per_example, f.epochs, f.rounds, f.key_setup_ms
        );
        let _ = writeln!(
            s,
            "  local epochs: slowest node {:.1} ms per round (floor: all nodes on all cores {:.1} ms); secure sums \
             equal the floor's plain sums: {}",
            f.local_ms,
            f.floor_local_ms,
            if f.sums_equal { "yes" } else { "no" }
        );
        let _ = writeln!(
            s,
            "  bytes/node/rnd: TCP bytes (TLS records, both directions) per node per round; payload {} bytes",
            f.payload_bytes_per_node_round
        );
        let _ = writeln!(s, "  measured: {}", f.includes);
        let _ = writeln!(s, "  not measured: {}", f.excludes);
        let _ = writeln!(s, "  floor: {}", f.floor);
    }
    if let Some(first) = r.flower.first() {
        let _ = writeln!(s, "\nFlower ({}), same n and d as the FedAvg row: {}", first.versions, first.what);
        for p in &r.flower {
            let _ = writeln!(
                s,
                "  {} (k = {}): {:.1} ms client + {:.1} ms server = {:.1} ms per round",
                p.scheme, p.k, p.client_ms, p.server_ms, p.round_ms
            );
        }
        let _ = writeln!(s, "  command: {}", first.command);
    }
    if let Some(why) = &r.flower_skipped {
        let _ = writeln!(s, "\n{why}");
    }
    s
}
