//! `fedcrm bench train`, FedAvg row: training rounds of a d-feature logistic model
//! (d = 100,000 by default) with n nodes, each round a real secure-aggregation round of
//! the FedAvg update over loopback mutual TLS. Measured, never asserted.
//!
//! No churn feature spec has 100,000 features and the wire protocol's churn analysis
//! only carries [`fedcrm_model::features::FeatureSpec`] models, so this row does not go
//! through the coordinator's gRPC service. It is a bench-only driver over the same
//! parts the service runs, in this process:
//!
//! - **Data**: each node holds `examples` synthetic examples of d features with
//!   `nonzeros` non-zero features each (seeded; labels from a hidden sparse model). The
//!   model crate's `Examples` is dense, so they are stored dense (examples × d f64).
//! - **Each round**, timed from the coordinator's side, start to new weights: the
//!   coordinator sends the global weights (d + 1 f64) to every node over its mTLS
//!   connection (rustls, ring, certificates issued by a fresh brand CA from CSRs,
//!   `fedcrm_pki::tls` configurations); each node, in its own thread, runs the model
//!   crate's FedAvg local epochs ([`local_update`]), shares its round self-mask seed
//!   (`multiround::Member::round`), opens its neighbours' sealed shares, masks its
//!   d + 2 words of 64 bits (the FedAvg words, `MODEL_TERM_BITS` = 38 per example) and
//!   sends the masked vector over its mTLS connection; the coordinator adds each one
//!   (`RoundAggregator::add_masked`), closes the round, collects the unmask responses,
//!   unmasks (`finish_words`), decodes the summed update and applies the server
//!   optimizer. Full SecAgg (every pair of nodes), t = ⌊2n/3⌋ + 1, no dropouts.
//! - **Not in it**: the analysis's key setup (X25519, once per analysis; timed and
//!   printed apart); gRPC/protobuf framing (the vectors go as raw little-endian
//!   words on the TLS streams); the small messages (sealed shares, U2/U3, unmask
//!   responses: a few KB per round) pass between threads in memory, not over TLS; the
//!   signatures on keys and views, audit records, policy checks and the release door.
//!
//! The **floor**, every round on the same weights, in the same run: the n nodes' same
//! local epochs on one thread and on all cores (the faster counted), a plain wrapping sum of their update vectors
//! (no masks, no TLS, no network) and the same decode and server step. Every round the
//! unmasked secure sum must equal the floor's plain sum word for word, or the bench
//! fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use fedcrm_crypto::multiround::{self, Member, Reveal, Setup, ViewCheck};
use fedcrm_crypto::secagg::{self, RoundParams, Topology};
use fedcrm_crypto::word::{WordWidth, Words};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_model::fedavg::{Batching, LocalTraining, Server, ServerOptimizer, decode_update, local_update, update_len};
use fedcrm_model::logistic::Examples;
use fedcrm_pki::{Identity, OrgKind, Role, Validity};
use ndarray::{Array1, Array2};
use rustls::pki_types::ServerName;

use crate::harness::{BrandPki, COORDINATOR_NAME};

/// The FedAvg words: 64 bits (a model word carries 2^38 per example).
pub const WIDTH: WordWidth = WordWidth::W64;
/// How long either side waits for the other's next message before the bench fails
/// (a node that failed must not leave the rest waiting forever).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the FedAvg row trains.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nodes: usize,
    /// Features (the model has d + 1 weights, the update d + 2 words).
    pub d: usize,
    /// Examples per node.
    pub examples: usize,
    /// Non-zero features per example.
    pub nonzeros: usize,
    pub rounds: u32,
    /// Local full-batch epochs per round.
    pub epochs: u32,
}

impl Settings {
    /// The nodes' local training: full batch, η = 0.5, λ = 10⁻⁴, updates clipped to ±4.
    pub fn local(&self) -> LocalTraining {
        LocalTraining {
            learning_rate: 0.5,
            epochs: self.epochs,
            batching: Batching::Full,
            lambda: 1e-4,
            max_update: 4.0,
        }
    }
}

/// What the FedAvg rounds measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Every node's `Setup::new` + `Setup::join` and the coordinator's `Analysis::new`,
    /// once per analysis (the TLS handshakes are not in it).
    pub key_setup: Duration,
    /// Each round, start to new weights.
    pub rounds: Vec<Duration>,
    /// Each round, the slowest node's local epochs.
    pub local: Vec<Duration>,
    /// Each round's floor: local epochs (one thread or all cores, the faster) + plain
    /// sum + decode + server step.
    pub floor: Vec<Duration>,
    /// Each round's floor, its local epochs alone.
    pub floor_local: Vec<Duration>,
    /// Bytes on each node's TCP connection per round (TLS records, both directions),
    /// mean over nodes and rounds.
    pub wire_bytes_per_node_round: u64,
    /// Plaintext bytes per node per round on TLS: weights down + masked words up.
    pub payload_bytes_per_node_round: u64,
    /// The secure sums equalled the floor's plain sums in every round.
    pub sums_equal: bool,
    /// Σ examples over the nodes, as the secure sum counted them.
    pub examples: u64,
    /// The final weights (for checks).
    pub weights: Vec<f64>,
    pub threads: usize,
}

/// Node i's examples: `nonzeros` features per example at seeded positions, values in
/// [−1, 1]; label 1 with the probability a hidden sparse model (weights ±1 on every
/// 97th feature) gives it.
pub fn synthetic(i: usize, s: &Settings) -> Examples {
    let mut rng = SplitMix(0x5eed_0000_0000_0000 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut z = Array2::<f64>::zeros((s.examples, s.d));
    let mut y = Array1::<f64>::zeros(s.examples);
    for r in 0..s.examples {
        let mut score = 0.0;
        for _ in 0..s.nonzeros.min(s.d) {
            let j = (rng.next_u64() % s.d as u64) as usize;
            let v = rng.unit() * 2.0 - 1.0;
            z[[r, j]] = v;
            if j.is_multiple_of(97) {
                score += if (j / 97).is_multiple_of(2) { v } else { -v };
            }
        }
        let p = 1.0 / (1.0 + (-4.0 * score).exp());
        y[r] = f64::from(u8::from(rng.unit() < p));
    }
    Examples { z, y }
}

/// SplitMix64 (Steele et al. 2014): the synthetic data's generator, not cryptographic.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A TCP stream that counts the bytes it carries (TLS records included).
#[derive(Debug)]
struct Counted {
    inner: TcpStream,
    bytes: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type ServerStream = rustls::StreamOwned<rustls::ServerConnection, Counted>;
type ClientStream = rustls::StreamOwned<rustls::ClientConnection, Counted>;

/// The coordinator to one node, in memory (the small messages of a round).
enum ToNode {
    Round { params: RoundParams, round: u64 },
    Inbox { u2: Vec<String>, inbox: Vec<(String, Vec<u8>)> },
    Unmask { u3: Vec<String>, gone: Vec<String> },
}

/// One node to the coordinator, in memory.
enum FromNode {
    Shares { from: usize, out: Vec<(String, Vec<u8>)>, local: Duration },
    Reveals { from: usize, reveals: Vec<Reveal> },
}

fn node_name(i: usize) -> String {
    format!("bench-node-{i:02}")
}

/// Run the FedAvg rounds; `progress` is called after each round with its number.
pub fn run(s: &Settings, mut progress: impl FnMut(u32)) -> Result<Figures> {
    ensure!(s.nodes >= 3, "FedAvg bench: at least 3 nodes (a secure round needs t ≥ 2 of them), got {}", s.nodes);
    ensure!(s.d >= 1 && s.examples >= 1 && s.rounds >= 1, "FedAvg bench: d, examples and rounds must be at least 1");
    let n = s.nodes;
    let names: Vec<String> = (0..n).map(node_name).collect();
    let data: Vec<Arc<Examples>> = (0..n).map(|i| Arc::new(synthetic(i, s))).collect();
    let cfg = s.local();
    let words = update_len(s.d);
    let t = secagg::default_threshold(n);
    secagg::check_threshold(t, n).with_context(|| format!("n = {n} nodes cannot run a round"))?;

    // Certificates from a fresh brand CA, issued from CSRs as enrolment does.
    let dir = tempfile::tempdir()?;
    let pki = BrandPki::create(dir.path(), "Bench Jewellery")?;
    let coordinator = pki.issue(
        &Identity { name: COORDINATOR_NAME.into(), organisation: "Bench HQ".into(), role: Role::Coordinator },
        Validity::days_from_now(1),
    )?;
    let ca_pem = std::fs::read_to_string(pki.ca_path())?;
    let hook: fedcrm_pki::tls::RefusalHook = Arc::new(|_, _| {});
    // An issued identity's certificate and key, as the TLS configurations take them.
    let cert_and_key = |f: &crate::harness::IdentityFiles| -> Result<(String, fedcrm_pki::PrivateKeyPem)> {
        Ok((std::fs::read_to_string(&f.cert)?, fedcrm_pki::PrivateKeyPem::new(std::fs::read_to_string(&f.key)?)))
    };
    let (cert, key) = cert_and_key(&coordinator)?;
    let mut server_config = fedcrm_pki::tls::server_config(&ca_pem, &cert, &key, vec![], hook.clone())?;
    // Raw words on the stream, not HTTP/2.
    server_config.alpn_protocols.clear();
    let server_config = Arc::new(server_config);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;

    // The analysis's key setup, once (Setup::new + join per node, Analysis::new).
    let rng = SystemRandom::new();
    let setup_started = Instant::now();
    let setup_id = RoundId::random(&rng)?;
    let mut setups = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for name in &names {
        let (setup, k) = Setup::new(setup_id, "bench-fedavg", name, &rng)?;
        setups.push(setup);
        keys.push(k);
    }
    let members: Vec<Member> =
        setups.into_iter().map(|st| st.join(keys.clone(), Topology::Complete)).collect::<Result<_, _>>()?;
    let mut analysis = multiround::Analysis::new(setup_id, keys, Topology::Complete)?;
    let key_setup = setup_started.elapsed();

    // One node thread each, with its mTLS connection.
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (up_tx, up_rx) = mpsc::channel::<FromNode>();
    let mut to_nodes = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for (i, member) in members.into_iter().enumerate() {
        let files = pki.issue(
            &Identity {
                name: names[i].clone(),
                organisation: format!("{} franchise ltd", names[i]),
                role: Role::Node(OrgKind::Franchisee),
            },
            Validity::days_from_now(1),
        )?;
        let (cert, key) = cert_and_key(&files)?;
        let mut client = fedcrm_pki::tls::client_config(&ca_pem, &cert, &key, vec![], hook.clone())?;
        client.alpn_protocols.clear();
        let (tx, rx) = mpsc::channel::<ToNode>();
        to_nodes.push(tx);
        let node = NodeThread { index: i, member, examples: data[i].clone(), cfg, d: s.d, rx, tx: up_tx.clone() };
        let (config, bytes) = (Arc::new(client), counters[i].clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            let sock = TcpStream::connect(addr)?;
            sock.set_nodelay(true)?;
            sock.set_read_timeout(Some(PHASE_TIMEOUT))?;
            let name = ServerName::try_from(COORDINATOR_NAME)?;
            let conn = rustls::ClientConnection::new(config, name)?;
            let mut stream = rustls::StreamOwned::new(conn, Counted { inner: sock, bytes });
            // Who this is, so the coordinator's side knows which connection is whose
            // (the first write also drives the handshake).
            stream.write_all(&(node.index as u32).to_le_bytes())?;
            stream.flush()?;
            node.serve(stream)
        }));
    }
    drop(up_tx);
    let mut streams: Vec<Option<ServerStream>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (sock, _) = listener.accept()?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(PHASE_TIMEOUT))?;
        let conn = rustls::ServerConnection::new(server_config.clone())?;
        let mut stream = rustls::StreamOwned::new(conn, Counted { inner: sock, bytes: Arc::new(AtomicU64::new(0)) });
        let mut who = [0u8; 4];
        stream.read_exact(&mut who).context("a node's mTLS handshake or hello failed")?;
        let i = u32::from_le_bytes(who) as usize;
        ensure!(i < n && streams[i].is_none(), "unexpected node index {i}");
        streams[i] = Some(stream);
    }
    let mut streams: Vec<ServerStream> =
        streams.into_iter().map(|s| s.context("a node never connected")).collect::<Result<_>>()?;
    let wire_start: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();

    let mut figures = Figures {
        key_setup,
        rounds: vec![],
        local: vec![],
        floor: vec![],
        floor_local: vec![],
        wire_bytes_per_node_round: 0,
        payload_bytes_per_node_round: (8 * (s.d + 1) + 8 * words) as u64,
        sums_equal: true,
        examples: 0,
        weights: vec![],
        threads: threads(),
    };
    let mut server = Server::new(ServerOptimizer::Average { lr: 1.0 }, s.d + 1);
    let mut floor_server = server.clone();
    let mut weights = vec![0.0; s.d + 1];
    let outcome = (|| -> Result<()> {
        for r in 1..=s.rounds {
            // The floor first, on the same weights (and then the round: neither always
            // finds the examples warm in cache after the other).
            let floor = floor_round(&data, &weights, &cfg, r, &mut floor_server, s.d)?;
            let params = RoundParams { round: RoundId::random(&rng)?, t, d: words, width: WIDTH };
            let started = Instant::now();
            let (sum, local, next) = secure_round(
                &mut streams,
                &to_nodes,
                &up_rx,
                &mut analysis,
                &names,
                params,
                &weights,
                r,
                &mut server,
                s.d,
            )?;
            figures.rounds.push(started.elapsed());
            figures.local.push(local);
            figures.floor.push(floor.total);
            figures.floor_local.push(floor.local);
            if sum != floor.sum {
                figures.sums_equal = false;
                bail!("round {r}: the unmasked secure sum differs from the plain sum of the nodes' updates");
            }
            figures.examples = decode_update(s.d, &sum)?.n;
            ensure!(next == floor.next, "round {r}: the server step differs from the floor's on the same sum");
            weights = next;
            progress(r);
        }
        Ok(())
    })();
    // The nodes end when their channel and connection close.
    drop(to_nodes);
    drop(streams);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if outcome.is_ok() => return Err(e.context("a FedAvg bench node failed")),
            Ok(Err(_)) => {}
            Err(_) => bail!("a FedAvg bench node panicked"),
        }
    }
    outcome?;
    let wire: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>() - wire_start;
    figures.wire_bytes_per_node_round = wire / (n as u64 * u64::from(s.rounds));
    figures.weights = weights;
    Ok(figures)
}

/// One secure round from the coordinator's side; returns the unmasked sum, the slowest
/// node's local epochs and the new weights.
#[allow(clippy::too_many_arguments)]
fn secure_round(
    streams: &mut [ServerStream],
    to_nodes: &[mpsc::Sender<ToNode>],
    up: &mpsc::Receiver<FromNode>,
    analysis: &mut multiround::Analysis,
    names: &[String],
    params: RoundParams,
    weights: &[f64],
    round: u32,
    server: &mut Server,
    d: usize,
) -> Result<(Vec<u64>, Duration, Vec<f64>)> {
    let n = names.len();
    let lost = || anyhow!("a FedAvg bench node stopped mid-round or did not answer within {PHASE_TIMEOUT:?}");
    let mut agg = analysis.round(params.clone(), names, names)?;
    for tx in to_nodes {
        tx.send(ToNode::Round { params: params.clone(), round: u64::from(round) }).map_err(|_| lost())?;
    }
    // The global weights to every node over its mTLS connection.
    let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    for s in streams.iter_mut() {
        s.write_all(&bytes)?;
        s.flush()?;
    }
    // Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys): route the sealed shares.
    let mut inbox: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); n];
    let mut local = Duration::ZERO;
    for _ in 0..n {
        let FromNode::Shares { from, out, local: l } = up.recv_timeout(PHASE_TIMEOUT).map_err(|_| lost())? else {
            bail!("a node answered out of turn");
        };
        local = local.max(l);
        for (to, ct) in out {
            let j = names.binary_search(&to).map_err(|_| anyhow!("share addressed to unknown {to}"))?;
            inbox[j].push((names[from].clone(), ct));
        }
    }
    for (tx, inbox) in to_nodes.iter().zip(inbox) {
        tx.send(ToNode::Inbox { u2: names.to_vec(), inbox }).map_err(|_| lost())?;
    }
    // Round 2 (MaskedInputCollection): each masked vector over its node's connection.
    let words = params.d;
    let mut buf = vec![0u8; 8 * words];
    for (name, s) in names.iter().zip(streams.iter_mut()) {
        s.read_exact(&mut buf)?;
        let y: Vec<u64> = buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        agg.add_masked(name, &Words::from_plain(WIDTH, &y)?)?;
    }
    // Rounds 3–4 (ConsistencyCheck, Unmasking).
    let unmasking = agg.close(analysis)?;
    let (u3, gone) = (unmasking.survivors(), unmasking.dropped());
    for tx in to_nodes {
        tx.send(ToNode::Unmask { u3: u3.clone(), gone: gone.clone() }).map_err(|_| lost())?;
    }
    let mut responses = Vec::with_capacity(n);
    for _ in 0..n {
        let FromNode::Reveals { from, reveals } = up.recv_timeout(PHASE_TIMEOUT).map_err(|_| lost())? else {
            bail!("a node answered out of turn");
        };
        responses.push((names[from].clone(), reveals));
    }
    let sum = unmasking.finish_words(&responses)?.into_u64();
    let next = server.apply(weights, &decode_update(d, &sum)?)?;
    Ok((sum, local, next))
}

/// A node's side: its analysis state, its data, its connection.
struct NodeThread {
    index: usize,
    member: Member,
    examples: Arc<Examples>,
    cfg: LocalTraining,
    d: usize,
    rx: mpsc::Receiver<ToNode>,
    tx: mpsc::Sender<FromNode>,
}

impl NodeThread {
    fn serve(mut self, mut stream: ClientStream) -> Result<()> {
        let rng = SystemRandom::new();
        let gone = || anyhow!("the coordinator stopped mid-round");
        let mut buf = vec![0u8; 8 * (self.d + 1)];
        let roster = self.member.roster().to_vec();
        while let Ok(msg) = self.rx.recv() {
            let ToNode::Round { params, round } = msg else { bail!("a round message out of turn") };
            stream.read_exact(&mut buf)?;
            let weights: Vec<f64> =
                buf.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            let started = Instant::now();
            let update = local_update(&weights, &self.examples, &self.cfg, round)?;
            let local = started.elapsed();
            let (shared, out) = self.member.round(params, &roster, &rng)?;
            self.tx.send(FromNode::Shares { from: self.index, out, local }).map_err(|_| gone())?;
            let Ok(ToNode::Inbox { u2, inbox }) = self.rx.recv() else { bail!("no inbox for the round") };
            let ready = shared.receive(&self.member, &u2, &inbox)?;
            let (masked, y) = ready.mask(&self.member, &update)?;
            stream.write_all(&y.to_le_bytes())?;
            stream.flush()?;
            let Ok(ToNode::Unmask { u3, gone: dropped }) = self.rx.recv() else { bail!("no unmask request") };
            let reveals = masked.unmask(&mut self.member, &u3, &dropped, ViewCheck::Confirmed)?;
            self.tx.send(FromNode::Reveals { from: self.index, reveals }).map_err(|_| gone())?;
        }
        Ok(())
    }
}

/// The floor of one round: every node's same local epochs, a plain wrapping sum, the
/// same decode and server step — on one thread and on all cores, the faster counted
/// (both must agree).
fn floor_round(
    data: &[Arc<Examples>],
    weights: &[f64],
    cfg: &LocalTraining,
    round: u32,
    server: &mut Server,
    d: usize,
) -> Result<FloorRound> {
    let mut one_server = server.clone();
    let one = floor_on(1, data, weights, cfg, round, &mut one_server, d)?;
    let all = floor_on(threads(), data, weights, cfg, round, server, d)?;
    ensure!(one.sum == all.sum, "round {round}: the floor's sums on one thread and on all cores differ");
    Ok(if one.total < all.total { one } else { all })
}

/// One floor run of a round.
struct FloorRound {
    sum: Vec<u64>,
    /// The weights after the server step.
    next: Vec<f64>,
    /// The local epochs' time.
    local: Duration,
    /// The whole time.
    total: Duration,
}

fn floor_on(
    threads: usize,
    data: &[Arc<Examples>],
    weights: &[f64],
    cfg: &LocalTraining,
    round: u32,
    server: &mut Server,
    d: usize,
) -> Result<FloorRound> {
    let started = Instant::now();
    let per = data.len().div_ceil(threads.max(1)).max(1);
    let updates: Vec<Vec<u64>> = if threads <= 1 {
        data.iter().map(|ex| local_update(weights, ex, cfg, u64::from(round))).collect::<Result<_, _>>()?
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = data
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|ex| local_update(weights, ex, cfg, u64::from(round)))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a floor thread panicked"))?.map_err(anyhow::Error::from))
                .collect::<Result<Vec<Vec<Vec<u64>>>>>()
                .map(|v| v.into_iter().flatten().collect())
        })?
    };
    let local = started.elapsed();
    let mut sum = vec![0u64; updates.first().map_or(0, Vec::len)];
    for u in &updates {
        for (a, b) in sum.iter_mut().zip(u) {
            *a = a.wrapping_add(*b);
        }
    }
    let next = server.apply(weights, &decode_update(d, &sum)?)?;
    Ok(FloorRound { sum, next, local, total: started.elapsed() })
}

/// The cores the floor uses.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
