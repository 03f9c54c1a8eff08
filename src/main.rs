//! The `fedcrm` command line. Parses flags and calls library `run` functions;
//! nothing else lives here.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fedcrm::hq::{AnalystClient, HqConfig, SegmentsView, segments_csv, segments_table};
use fedcrm_pki::{self as pki, Identity, OrgKind, Role, Validity};

/// fedcrm — privacy-preserving federated customer analytics.
///
/// Nodes run next to each franchisee's customer data; HQ's coordinator runs
/// secure-aggregation rounds over mutual TLS and learns only sums across nodes.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log filter (e.g. `warn`, `fedcrm_coordinator=debug`); also RUST_LOG.
    /// Default: `info` for `coordinator run` and `node run`, `warn` otherwise.
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
    /// Log line format on standard error: `text` (colours only on a terminal) or
    /// `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text", env = "FEDCRM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete deployment on loopback: CA, coordinator, 8 nodes (3 HQ-owned, 5 franchisees) on synthetic jewellery data; RFM segments with one node dropping out, exact and under DP; the churn model trained, published and scored on a node.
    Demo {
        /// Number of nodes (3..=8): HQ's own channels and franchisees, as `demo-data` names them.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Do not make a node drop out mid-round.
        #[arg(long)]
        no_drop: bool,
        /// Reference date for RFM.
        #[arg(long, default_value = "2025-12-31")]
        reference_date: String,
        /// Seed of the synthetic jewellery data (as `demo-data --seed`).
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// People in the synthetic population.
        #[arg(long, default_value_t = 12_000, value_parser = clap::value_parser!(u32).range(100..))]
        customers: u32,
        /// Print nothing; exit status tells whether federated equals pooled.
        #[arg(long)]
        quiet: bool,
        /// Keep the brand CA, every configuration, the data splits and every party's
        /// audit log in DIR (which must not exist yet), and print the `audit verify`
        /// and `audit report` commands to run on them.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Write a seeded synthetic jewellery dataset: purchases and consent withdrawals per node.
    ///
    /// A brand with its own stores, a marketplace shop and a WeChat mini-program (HQ's
    /// nodes) and five franchisee companies' stores. Per node, DIR/NODE/purchases.csv (the
    /// CSV format with birthday and anniversary) and DIR/NODE/consent-withdrawals.csv;
    /// DIR/manifest.json lists the nodes, their files and counts. The same seed and options
    /// give the same bytes. How customers buy and what makes them churn is documented in
    /// src/demodata.rs.
    DemoData {
        /// Seed of the generator (ChaCha20).
        #[arg(long)]
        seed: u64,
        /// Output directory; created if missing, files of the same names are replaced.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// People in the population (those who buy nothing in the period appear nowhere).
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u32).range(1..))]
        customers: u32,
        /// First day of the period (YYYY-MM-DD).
        #[arg(long, default_value = "2023-01-01", value_parser = fedcrm::demodata::parse_day)]
        start: time::Date,
        /// Last day of the period (YYYY-MM-DD).
        #[arg(long, default_value = "2025-12-31", value_parser = fedcrm::demodata::parse_day)]
        end: time::Date,
        /// Print the manifest as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The brand certificate authority (run by HQ).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Franchisee side: create a node identity, check data, run the node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// HQ side: run the coordinator.
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// HQ analyst: run analyses through the coordinator.
    #[command(subcommand)]
    Hq(HqCommand),
    /// Compliance auditor: verify audit logs and report on them.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Benchmarks (measured against a floor in the same run).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Example configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the brand CA: DIR/ca.pem (share it) and DIR/ca.key (0600, keep it offline).
    Init {
        /// Brand name, e.g. "Golden Phoenix Jewellery".
        #[arg(long)]
        brand: String,
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// Validity in days (at least 1: a certificate valid for 0 days is expired when issued).
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Sign a certificate signing request; prints or writes only the certificate.
    Sign {
        /// The .csr file made by `fedcrm node init` (or coordinator/hq init).
        csr: PathBuf,
        #[arg(long, default_value = "ca")]
        ca_dir: PathBuf,
        /// Where to write the certificate (default: next to the CSR, .pem).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days (at least 1: a certificate valid for 0 days is expired when issued).
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Revoke a certificate: add it to DIR/crl.pem (signed by the CA key), which the
    /// coordinator and nodes check when their `tls.crl` names it (reloaded on SIGHUP).
    Revoke {
        /// The certificate to revoke (PEM).
        cert: PathBuf,
        #[arg(long, default_value = "ca")]
        ca_dir: PathBuf,
        /// keyCompromise, superseded, affiliationChanged, cessationOfOperation or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: pki::crl::Reason,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// An independent franchisee.
    Franchisee,
    /// A channel owned by HQ (own store, online shop, mini-program).
    Hq,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Generate this node's key (0600, never leaves) and a CSR to send to HQ.
    Init {
        #[command(flatten)]
        id: IdentityArgs,
        #[arg(long, value_enum, default_value = "franchisee")]
        kind: Kind,
    },
    /// Show what the data looks like and exactly what would leave this machine.
    Check {
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Connect to the coordinator and take part in rounds until stopped (Ctrl-C).
    Run {
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
    },
    /// What left this node, per analysis and round, from its audit log.
    Egress {
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
        /// Only this month, YYYY-MM.
        #[arg(long)]
        month: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Requests waiting for manual approval, with who asked and why.
    Pending {
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Score this node's own customers with a churn model HQ published, on this
    /// machine, and write the ranked at-risk list (win-back list) to a CSV file.
    ///
    /// Fetches the model from the coordinator and refuses it unless the brand CA
    /// certifies its signer as the publisher node.toml's `[scoring] publisher` names
    /// and the signature covers every byte. The CSV (mode 0600) holds one row per
    /// customer with a purchase on or before the as-of date, highest churn
    /// probability first: rank, customer_key, churn_probability, the three largest
    /// reasons, last_purchase, purchase_days, total_spend. A CLV model (clv-vN) writes
    /// instead, most valuable first: rank, customer_key, p_alive, dormant (P(alive)
    /// below `[scoring.clv] dormant_below`), expected_purchases (next `period_days`),
    /// expected_spend, clv (over `horizon_months`, discounted), last_purchase,
    /// purchase_days, total_spend. The list never leaves this machine and is never
    /// printed; the node's audit log records only that scoring ran, with which model and
    /// over how many customers.
    Score {
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
        /// The published model's id, as `fedcrm hq models` lists it (e.g. churn-v3, clv-v1).
        #[arg(long)]
        model: String,
        /// Where to write the at-risk list (CSV; replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Score as of this day, YYYY-MM-DD (purchases after it are ignored); default:
        /// the latest purchase day in this node's data.
        #[arg(long)]
        as_of: Option<String>,
        /// Write only the N customers most at risk (all are scored and counted).
        #[arg(long)]
        top: Option<usize>,
        /// Print the summary as JSON (model_id, customers, above_half, out, …).
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting request; the running node takes part from its next round.
    Approve {
        /// The request id shown by `fedcrm node pending`.
        id: String,
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
        /// Who approves (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "franchisee")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify audit logs: hash chains, seals signed by keys the brand CA certified
    /// for the party each log names, and cross-party receipts between the logs
    /// given. Reports the first problem precisely and exits non-zero.
    Verify {
        /// Log directories (one per party) or log files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The brand CA certificate.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A compliance report for an auditor: analyses, who asked and why, participants,
    /// egress per node, refusals, thresholds, suppressed cells, certificates.
    /// Verifies the logs first and refuses to report on logs that fail.
    Report {
        /// Log directories (one per party) or log files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The brand CA certificate.
        #[arg(long)]
        ca: PathBuf,
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (UTC).
        #[arg(long)]
        to: String,
        /// HTML instead of Markdown.
        #[arg(long, conflicts_with = "json")]
        html: bool,
        #[arg(long)]
        json: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Who a new key and CSR are for (`node init`, `coordinator init`, `hq init`).
#[derive(Debug, clap::Args)]
struct IdentityArgs {
    /// Party name, [a-z0-9.-]: e.g. `fr-hangzhou-01`; for the coordinator, the DNS
    /// name nodes will expect in its certificate.
    #[arg(long)]
    name: String,
    /// Legal name of the organisation running this party (for a node: the one that
    /// owns the data).
    #[arg(long)]
    organisation: String,
    /// Where to write NAME.key (0600) and NAME.csr.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum CoordinatorCommand {
    /// Generate the coordinator's key (0600) and CSR.
    Init {
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// Serve nodes and analysts until Ctrl-C.
    Run {
        #[arg(long, default_value = "coordinator.toml")]
        config: PathBuf,
    },
}

/// `--dp on|off` of the analyses HQ runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dp {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum TrainCommand {
    /// The churn model: L2-regularised logistic regression on each customer's recency,
    /// frequency, spend, tenure, items, category mix and days to birthday/anniversary,
    /// standardised with global constants; churned = no purchase in the horizon after the
    /// reference date. Evaluated on held-out customers (a keyed split, the same on every
    /// run): ROC AUC, log-loss, accuracy, calibration.
    Churn {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// Features from purchases up to this date (YYYY-MM-DD).
        #[arg(long)]
        reference_date: String,
        /// Churned = no purchase within this many days after the reference date.
        #[arg(long)]
        horizon_days: u32,
        /// Why you ask; every node logs it.
        #[arg(long)]
        purpose: String,
        /// Differential privacy: `on` noises every round on every node (Newton only:
        /// moments, Newton and evaluation rounds under the distributed discrete Gaussian,
        /// each customer's term clipped) and charges each node's budget — the whole
        /// training's charge is checked before it starts; `off` runs exact rounds, which
        /// every node's policy must allow (dp = "optional"). Default `on`, as a
        /// franchisee's policy requires by default.
        #[arg(long, value_enum, default_value = "on")]
        dp: Dp,
        /// With `--dp on`: ε for the whole training, per node, at δ = 1e-6 (default 4,
        /// a node's default monthly budget). Fewer Newton rounds leave each more of it.
        #[arg(long, default_value_t = 4.0)]
        epsilon: f64,
        /// `newton` (a few rounds for a few dozen features) or `fedavg` (local epochs,
        /// FedAdam on the server).
        #[arg(long, default_value = "newton")]
        mode: String,
        /// Most training rounds (default 20 for Newton, 30 for FedAvg; 5 Newton rounds
        /// under --dp on).
        #[arg(long, default_value_t = 0)]
        max_rounds: u32,
        /// Print JSON: model_id, sha256, test_auc, test_auc_bound, test_log_loss,
        /// test_accuracy, train_examples, test_examples, rounds, nodes, exits, history,
        /// model.
        #[arg(long)]
        json: bool,
    },
    /// Customer lifetime value: the BG/NBD model of purchases and dropout (Fader, Hardie &
    /// Lee 2005) and the Gamma-Gamma model of spend, fitted across the nodes — every
    /// evaluation of a likelihood and its gradient is one secure round of each node's
    /// sums over its customers' (repeat purchases, time of the last, age) up to the
    /// calibration end, exact with `--dp off`, noised by default; the optimiser (BFGS)
    /// runs here. Nodes apply the published model to their own customers (`fedcrm node
    /// score`).
    Clv {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// The calibration window's last day (YYYY-MM-DD): purchases up to it are fitted.
        #[arg(long)]
        calibration_end: String,
        /// `weeks` or `days`: the unit of the fitted rates and of forecast periods.
        #[arg(long, default_value = "weeks")]
        time_unit: String,
        /// Why you ask; every node logs it.
        #[arg(long)]
        purpose: String,
        /// Fit one cohort: customers whose first purchase is in FROM..TO (YYYY-MM-DD..YYYY-MM-DD,
        /// both inclusive).
        #[arg(long, value_name = "FROM..TO")]
        first_purchase: Option<String>,
        /// Differential privacy: `on` noises every round, each customer's ln L and gradient
        /// clamped to stated bounds (README, "CLV under differential privacy"); `off` runs
        /// exact rounds, which every node's policy must allow (dp = "optional"). Default
        /// `on`, as a franchisee's policy requires by default.
        #[arg(long, value_enum, default_value = "on")]
        dp: Dp,
        /// With `--dp on`: ε for the whole fit, per node, at δ = 1e-6 (default 4, a node's
        /// default monthly budget).
        #[arg(long, default_value_t = 4.0)]
        epsilon: f64,
        /// Most rounds per model (default 90; an honest exact fit takes about 30 each;
        /// under --dp on 20 BG/NBD and 12 Gamma-Gamma rounds, the whole plan checked against
        /// every node's budget before the first).
        #[arg(long, default_value_t = 0)]
        max_rounds: u32,
        /// Print JSON: model_id, sha256, r, alpha, a, b, log_likelihood, p, q, gamma,
        /// gamma_gamma_log_likelihood, customers, repeat_customers, time_unit,
        /// calibration_end, rounds, nodes, exits, history, model.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HqCommand {
    /// Generate an analyst key (0600) and CSR.
    Init {
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// Generate a model-publisher key (0600) and CSR: the key that signs the models
    /// HQ publishes; nodes accept a model only from the publisher their node.toml names.
    /// Keep it off the coordinator's machine if you can: whoever holds it can publish.
    InitPublisher {
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// RFM segment counts across all connected nodes.
    Segments {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// Reference date, YYYY-MM-DD.
        #[arg(long)]
        reference_date: String,
        /// Why you ask; every node logs it.
        #[arg(long)]
        purpose: String,
        /// Differential privacy: `on` adds noise on every node before masking and
        /// charges each node's budget; `off` runs exact, and is refused unless every
        /// participant's policy is dp = "optional".
        #[arg(long, value_enum, default_value_t = Dp::On)]
        dp: Dp,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// How many customers the channels share: the overlap matrix by private set
    /// intersection across the connected nodes (or those named).
    ///
    /// Every pair of nodes runs ECDH-PSI over ristretto255 through the coordinator, which
    /// relays lists it cannot open; one node of each pair (never HQ's when a franchisee
    /// takes part) compares and releases only a noised count. Prints each channel's
    /// (noised) customer count, each pair's shared count, Jaccard and containment;
    /// `--heatmap PREFIX` also writes PREFIX.png and PREFIX.svg for HQ's report.
    Overlap {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// Why you ask; every node logs it.
        #[arg(long)]
        purpose: String,
        /// Differential privacy: `on` noises every released count on the node that
        /// releases it and charges each node's budget; `off` releases exact counts, and
        /// is refused unless every participant's policy is dp = "optional".
        #[arg(long, value_enum, default_value_t = Dp::On)]
        dp: Dp,
        /// The nodes to take part, comma-separated; default every connected node.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Write the heat-map (Jaccard) to PREFIX.png and PREFIX.svg.
        #[arg(long, value_name = "PREFIX")]
        heatmap: Option<PathBuf>,
        /// Segment profile of the shared customers: the JSON `fedcrm hq segments --json`
        /// printed (its reference date and global cut points). Each pair then releases
        /// a 4 × 4 table of shared customers by (segment in A, segment in B).
        #[arg(long, value_name = "SEGMENTS_JSON")]
        segments: Option<PathBuf>,
        /// Print JSON (the matrix, pairs with their ratios, the noise).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV: a header row, then one row per pair.
        #[arg(long)]
        csv: bool,
    },
    /// Which enrolled nodes are connected.
    Status {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every node's privacy budget for this calendar month (UTC), as the coordinator
    /// knows it.
    ///
    /// Per node: its dp policy, its budget, this month's charges (ρ and ξ spent), how
    /// much is used and remains in the budget's unit (ε or ρ), and its noise floor. It is
    /// HQ's view: what each node announced in its last Hello plus the charges the
    /// coordinator saw since; the nodes enforce their budgets themselves. An enrolled
    /// node that has not connected since the coordinator started is listed with its
    /// budget unknown.
    Budget {
        /// The analyst's configuration: coordinator URL and analyst certificate.
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// Print JSON (stable field names; unknown figures are null).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV: a header row, then one row per node.
        #[arg(long)]
        csv: bool,
    },
    /// Train a model across all connected nodes (each node computes only sums over its
    /// own customers; the model is registered, unpublished — `fedcrm hq publish ID`).
    Train {
        #[command(subcommand)]
        model: TrainCommand,
    },
    /// The model registry: every trained model version, whether it is published and
    /// by whom, the SHA-256 of its artifact and its headline figures.
    Models {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// Print JSON (`models`: id, kind, created, published, publisher, sha256, metrics).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV: a header row, then one row per model version.
        #[arg(long)]
        csv: bool,
    },
    /// Publish a trained model: sign its exact bytes with the model-publisher key
    /// named in hq.toml's [publisher] and make it available to the nodes. Nodes verify
    /// the signature against the brand CA and the publisher their node.toml names
    /// before scoring with it.
    Publish {
        #[arg(long, default_value = "hq.toml")]
        config: PathBuf,
        /// The model version, as `fedcrm hq models` lists it (e.g. churn-v3).
        id: String,
        /// Print JSON (`id`, `sha256`, `publisher`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Secure aggregation as it runs on the wire (keys once per analysis): per-round node
    /// masking, coordinator unmasking and peak memory, and the once-per-analysis key setup
    /// of one node, each beside an honest floor (fused AES-128-CTR on all cores, X25519,
    /// Shamir, in the protocol's counts) measured in the same run; optionally Flower's
    /// SecAgg and SecAgg+ too.
    ///
    /// Without AES-NI: build separately with
    /// RUSTFLAGS='--cfg aes_backend="soft"' CARGO_TARGET_DIR=target/soft-aes.
    Secagg {
        /// Nodes in the round.
        #[arg(long, default_value_t = 50)]
        n: usize,
        /// Words per vector.
        #[arg(long, default_value_t = 1_000_000)]
        d: usize,
        /// Fraction of nodes dropped in the dropout case.
        #[arg(long, default_value_t = 0.1)]
        drop: f64,
        /// Word width: 32, 64, or auto (what a round of RFM counts over n nodes gets
        /// with the default `max_customers_per_node`: 32 bits up to 1,023 nodes).
        #[arg(long, default_value = "auto")]
        width: fedcrm::bench::BenchWidth,
        /// Secure aggregation: full (every pair of nodes), plus (SecAgg+: a random
        /// Harary graph, Bell et al.'s k and t), or auto (full below 100 nodes).
        #[arg(long, default_value = "auto")]
        secagg: fedcrm::bench::BenchMode,
        /// Print the report as JSON (Flower's figures under `flower`).
        #[arg(long)]
        json: bool,
        /// Then run Flower's SecAgg and SecAgg+ for the same n and d (needs Python with
        /// `pip install flwr==1.41.0`) and print our speed-up per row.
        #[arg(long)]
        flower: bool,
        #[command(flatten)]
        peer: FlowerPeer,
        /// Flower's server repetitions (its --reps; medians of them).
        #[arg(long, value_name = "N", default_value_t = 1, requires = "flower")]
        flower_reps: usize,
    },
    /// Churn-model training rounds per second, each beside an honest floor (the same local
    /// computation and a plain sum, no masks, no TLS, no network) measured in the same run:
    /// federated Newton (d = 16 features, 17 weights) trained end to end over
    /// loopback mTLS on synthetic jewellery data, and FedAvg at d = 100,000 in real secure
    /// rounds over mTLS (a bench-only driver; `fedcrm::bench::train::fedavg` says what it
    /// includes); optionally Flower's SecAgg and SecAgg+ for the same n and d.
    Train {
        /// Nodes (each holds one synthetic franchisee's data in the Newton row).
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// People in each generated synthetic population (five franchisee nodes per population).
        #[arg(long, default_value_t = 30_000)]
        customers: usize,
        /// The synthetic data's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// FedAvg: features of the model.
        #[arg(long, default_value_t = 100_000)]
        d: usize,
        /// FedAvg: examples per node.
        #[arg(long, default_value_t = 32)]
        examples: usize,
        /// FedAvg: non-zero features per example.
        #[arg(long, default_value_t = 64)]
        nonzeros: usize,
        /// FedAvg: rounds.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// FedAvg: local full-batch epochs per round.
        #[arg(long, default_value_t = 2)]
        epochs: u32,
        /// Run only one row: newton or fedavg.
        #[arg(long, value_parser = ["newton", "fedavg"])]
        only: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Then time Flower's SecAgg and SecAgg+ for the FedAvg row's n and d (aggregation
        /// only; needs Python with `pip install flwr==1.41.0`; skipped with a message when
        /// missing).
        #[arg(long)]
        flower: bool,
        #[command(flatten)]
        peer: FlowerPeer,
    },
    /// The cardinality of two sets of n identifiers (issue 12) end to end over loopback
    /// TLS (a coordinator and two nodes started here), beside the same pair in process, a
    /// floor measured in the same run (plain DH-PSI on the same group, all cores; `ratio`
    /// = end to end over the floor) and, with --openmined, OpenMined PSI for the same n.
    Psi {
        /// Identifiers per side (half of them shared).
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Then time OpenMined PSI (cardinality, one thread) for the same n; needs a
        /// Python with `pip install openmined.psi==2.0.6` (its own venv).
        #[arg(long)]
        openmined: bool,
        /// OpenMined's benchmark script [default: ../shared/bench/openmined_psi_bench.py
        /// beside the repository].
        #[arg(long, value_name = "PATH", requires = "openmined")]
        openmined_script: Option<PathBuf>,
        /// The Python interpreter that can import private_set_intersection.
        #[arg(long = "openmined-python", value_name = "PYTHON", default_value = "python3", requires = "openmined")]
        openmined_python: PathBuf,
    },
    /// Issue 13: a CLV fit to convergence (BG/NBD then Gamma-Gamma) on CDNOW dealt over n
    /// nodes on loopback with mutual TLS: secure rounds per model and wall time, beside a
    /// floor measured in the same run (the same sums and optimiser without network or
    /// secure aggregation, all cores).
    Clv {
        /// Deployment sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "5,50")]
        nodes: Vec<usize>,
        /// Under differential privacy instead: `--runs` noised fits at each size, each
        /// beside the exact fit (parameters, ε spent, and the forecasts' differences).
        #[arg(long)]
        dp: bool,
        /// With `--dp`: noised fits per size.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// With `--dp`: ε per node for each whole fit (δ = 1e-6).
        #[arg(long, default_value_t = 4.0)]
        epsilon: f64,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue 14: a node reading a franchisee's PostgreSQL (a throwaway server started for
    /// the run; needs Debian's postgresql package): `node check` and an RFM contribution
    /// over a table of synthetic purchases at each size, with rows per second, the node
    /// process's peak memory and the ratio to the bare aggregates on the raw table.
    Postgres {
        /// Table sizes (purchases), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        rows: Vec<u64>,
        /// Customers (the same at every size).
        #[arg(long, default_value_t = 200_000)]
        customers: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Audit-log verification speed for a log of N records vs. hashing its bytes.
    Audit {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long)]
        json: bool,
    },
}

/// Where Flower's benchmark runs from (`bench secagg` and `bench train` with `--flower`).
#[derive(Debug, clap::Args)]
struct FlowerPeer {
    /// Flower's benchmark script [default: ../shared/bench/flower_secaggplus.py beside
    /// the repository].
    #[arg(long, value_name = "PATH", requires = "flower")]
    flower_script: Option<PathBuf>,
    /// The Python interpreter that can import flwr.
    #[arg(long, value_name = "PYTHON", default_value = "python3", requires = "flower")]
    python: PathBuf,
}

impl FlowerPeer {
    fn options(self, reps: usize) -> fedcrm::bench::flower::Options {
        fedcrm::bench::flower::Options {
            script: self.flower_script.unwrap_or_else(fedcrm::bench::flower::default_script),
            python: self.python,
            reps,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a commented default configuration.
    Default {
        #[arg(value_enum)]
        which: Which,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    Node,
    Coordinator,
    Hq,
}

/// Print a view as pretty JSON, CSV or the table.
fn print_view<T: serde::Serialize>(
    view: &T,
    json: bool,
    csv: bool,
    to_csv: fn(&T) -> String,
    to_table: fn(&T) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else if csv {
        print!("{}", to_csv(view));
    } else {
        print!("{}", to_table(view));
    }
    Ok(())
}

fn init_identity(args: IdentityArgs, role: Role) -> Result<()> {
    let IdentityArgs { name, organisation, dir } = args;
    let dir = &dir;
    let id = Identity { name, organisation, role };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (key, csr) = pki::new_key_and_csr(&id)?;
    let key_path = dir.join(format!("{}.key", id.name));
    let csr_path = dir.join(format!("{}.csr", id.name));
    if key_path.exists() {
        bail!("{} already exists; refusing to overwrite a private key", key_path.display());
    }
    pki::write_private_file(&key_path, key.as_str().as_bytes())?;
    std::fs::write(&csr_path, csr)?;
    println!("private key: {} (mode 0600; it never leaves this machine)", key_path.display());
    println!("certificate request: {} — send it to HQ for `fedcrm ca sign`", csr_path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Coordinator(CoordinatorCommand::Run { .. }) | Command::Node(NodeCommand::Run { .. })
    );
    let filter = cli.log.clone().unwrap_or_else(|| if serving { "info" } else { "warn" }.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_default();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only for a person at a terminal, never into a file or journald.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let json = cli.command.wants_json();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let causes = fedcrm::service::causes(&e);
            if json {
                // A script that asked for JSON gets JSON, on standard output, for errors too.
                println!("{}", serde_json::json!({ "error": causes.join(": "), "causes": causes }));
            } else {
                eprintln!("error: {}", causes.join(": "));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the command was asked for JSON output (its errors are then JSON too).
    fn wants_json(&self) -> bool {
        match self {
            Command::Node(NodeCommand::Check { json, .. })
            | Command::Node(NodeCommand::Egress { json, .. })
            | Command::Node(NodeCommand::Pending { json, .. })
            | Command::Node(NodeCommand::Score { json, .. })
            | Command::Audit(AuditCommand::Verify { json, .. })
            | Command::Audit(AuditCommand::Report { json, .. })
            | Command::Hq(HqCommand::Segments { json, .. })
            | Command::Hq(HqCommand::Status { json, .. })
            | Command::Hq(HqCommand::Overlap { json, .. })
            | Command::Hq(HqCommand::Budget { json, .. })
            | Command::Hq(HqCommand::Models { json, .. })
            | Command::Hq(HqCommand::Train { model: TrainCommand::Churn { json, .. } })
            | Command::Hq(HqCommand::Train { model: TrainCommand::Clv { json, .. } })
            | Command::Hq(HqCommand::Publish { json, .. })
            | Command::Bench(BenchCommand::Secagg { json, .. })
            | Command::Bench(BenchCommand::Train { json, .. })
            | Command::Bench(BenchCommand::Audit { json, .. })
            | Command::Bench(BenchCommand::Psi { json, .. })
            | Command::Bench(BenchCommand::Clv { json, .. })
            | Command::Bench(BenchCommand::Postgres { json, .. }) => *json,
            _ => false,
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { nodes, no_drop, reference_date, seed, customers, quiet, keep } => {
            fedcrm::demo::run(fedcrm::demo::DemoOptions {
                nodes,
                drop_one: !no_drop,
                reference: reference_date,
                seed,
                customers: customers as usize,
                quiet,
                keep,
            })
            .await
        }
        Command::DemoData { seed, out, customers, start, end, json } => {
            let opts = fedcrm::demodata::Options { seed, customers: customers as usize, start, end };
            let g = fedcrm::demodata::write(&opts, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&g.manifest)?);
            } else {
                print!("{}", fedcrm::demodata::summary_table(&g.manifest));
                println!("written to {}", out.display());
            }
            Ok(())
        }
        Command::Ca(CaCommand::Init { brand, dir, days }) => {
            std::fs::create_dir_all(&dir)?;
            let key_path = dir.join("ca.key");
            if key_path.exists() {
                bail!("{} already exists; refusing to overwrite the brand CA key", key_path.display());
            }
            let ca = pki::ca_init(&brand, days)?;
            pki::write_private_file(&key_path, ca.key.as_str().as_bytes())?;
            std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
            println!(
                "brand CA created: {} (distribute) and {} (0600, keep offline)",
                dir.join("ca.pem").display(),
                key_path.display()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Sign { csr, ca_dir, out, days }) => {
            let ca = pki::CaMaterial {
                cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))
                    .with_context(|| format!("reading {}/ca.pem", ca_dir.display()))?,
                key: pki::PrivateKeyPem::new(
                    std::fs::read_to_string(ca_dir.join("ca.key"))
                        .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?,
                ),
            };
            let csr_pem = std::fs::read_to_string(&csr).with_context(|| format!("reading {}", csr.display()))?;
            let (cert, id) = pki::sign_csr(&ca, &csr_pem, Validity::days_from_now(days))?;
            let out = out.unwrap_or_else(|| csr.with_extension("pem"));
            fedcrm::auditcli::log_issuance(&ca_dir, &ca, &cert, &id)?;
            std::fs::write(&out, cert)?;
            println!(
                "issued {} for {} ({}, {}), valid {days} days",
                out.display(),
                id.name,
                id.organisation,
                id.role.as_str()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Revoke { cert, ca_dir, reason }) => {
            let issued = fedcrm::auditcli::revoke(&ca_dir, &cert, reason)?;
            println!(
                "revoked {} ({}, serial {}, {}); {} now lists {} certificate(s), crl number {}",
                issued.identity.name,
                issued.identity.organisation,
                issued.revoked.serial_hex,
                issued.revoked.reason,
                ca_dir.join("crl.pem").display(),
                issued.entries,
                issued.crl_number
            );
            println!("copy it to the coordinator and the nodes, then `kill -HUP` the coordinator");
            Ok(())
        }
        Command::Node(NodeCommand::Init { id, kind }) => {
            let kind = match kind {
                Kind::Franchisee => OrgKind::Franchisee,
                Kind::Hq => OrgKind::Hq,
            };
            init_identity(id, Role::Node(kind))
        }
        Command::Node(NodeCommand::Check { config, json }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            let (report, ds) = if cfg.data.format == fedcrm_node::data::Format::Postgres {
                (fedcrm_node::check::check_database(&cfg).await?, None)
            } else {
                let ds = cfg.data.read()?;
                (fedcrm_node::check::check(&cfg, &ds), Some(ds))
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fedcrm::nodecli::check_text(&report));
            }
            // What `node run` would refuse: a non-zero exit, after the report.
            if let Some(ds) = ds {
                cfg.data.admit(&ds)?;
            } else if let Some(why) = &report.refused {
                anyhow::bail!("{why}");
            }
            Ok(())
        }
        Command::Node(NodeCommand::Run { config }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            let stop = fedcrm::service::StopSignal::install()?;
            let source = cfg.data.open().await?;
            let rows = match &source {
                fedcrm_node::data::Source::Rows(ds) => {
                    tracing::info!(node = %cfg.name, "{}", ds.summary());
                    ds.purchases.len()
                }
                fedcrm_node::data::Source::Database(db) => {
                    tracing::info!(node = %cfg.name, database = %db.settings().redacted(), "the database role cannot write what it reads; its rows are read for each analysis");
                    0
                }
            };
            let ctx = fedcrm_node::session::NodeContext::load(&cfg, source)?;
            tracing::info!(
                node = %cfg.name,
                organisation = %ctx.organisation,
                coordinator = %cfg.coordinator.url,
                rows,
                audit_dir = %cfg.audit_dir.display(),
                software = fedcrm_protocol::SOFTWARE,
                "node starting"
            );
            let (tx, rx) = tokio::sync::watch::channel(false);
            let received = Arc::new(std::sync::OnceLock::new());
            tokio::spawn({
                let received = received.clone();
                async move {
                    let _ = received.set(stop.first().await);
                    let _ = tx.send(true);
                }
            });
            let audit = ctx.audit.clone();
            let out = fedcrm_node::session::run(ctx, cfg.coordinator.backoff(), rx).await;
            let sealed = {
                let mut log = fedcrm_node::egress::lock(&audit);
                log.seal().map(|_| log.head().0)
            };
            let why = received.get().copied().unwrap_or("an error");
            match sealed {
                Ok(seq) => {
                    tracing::info!(node = %cfg.name, "node stopped after {why}; audit log sealed at record {seq}")
                }
                Err(e) => {
                    tracing::error!(node = %cfg.name, error = %e, "node stopped after {why}; the audit log could not be sealed")
                }
            }
            out?;
            Ok(())
        }
        Command::Node(NodeCommand::Egress { config, month, json }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            let recs = fedcrm_node::egress::read_log(&cfg.audit_dir)
                .with_context(|| format!("reading the audit log in {}", cfg.audit_dir.display()))?;
            print!("{}", fedcrm::nodecli::egress_text(&recs, month.as_deref(), json)?);
            Ok(())
        }
        Command::Coordinator(CoordinatorCommand::Init { id }) => init_identity(id, Role::Coordinator),
        Command::Coordinator(CoordinatorCommand::Run { config }) => {
            let cfg = fedcrm_coordinator::config::CoordinatorConfig::load(&config)?;
            let stop = fedcrm::service::StopSignal::install()?;
            let listener = tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .with_context(|| format!("listening on {}", cfg.listen))?;
            let c = fedcrm_coordinator::Coordinator::open(cfg)?;
            {
                let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("installing the SIGHUP handler")?;
                let c = c.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        c.reload_from(&config);
                    }
                });
            }
            fedcrm_coordinator::run(c, listener, async move {
                let name = stop.first().await;
                tracing::info!("{name} received: stopping");
            })
            .await?;
            Ok(())
        }
        Command::Hq(HqCommand::Init { id }) => init_identity(id, Role::Analyst),
        Command::Hq(HqCommand::InitPublisher { id }) => init_identity(id, Role::Publisher),
        Command::Hq(HqCommand::Segments { config, reference_date, purpose, dp, json, csv }) => {
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message("running secure rounds across nodes");
            spinner.enable_steady_tick(std::time::Duration::from_millis(100));
            let reply = client.segments(&reference_date, &purpose, dp == Dp::On).await;
            spinner.finish_and_clear();
            let reply = reply.map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))?;
            let view = SegmentsView::new(&reply, &reference_date);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else if csv {
                print!("{}", segments_csv(&view));
            } else {
                print!("{}", segments_table(&view));
            }
            Ok(())
        }
        Command::Hq(HqCommand::Overlap { config, purpose, dp, nodes, heatmap, segments, json, csv }) => {
            let (reference_date, segment_cuts) = match &segments {
                None => (String::new(), None),
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let (date, cuts) =
                        AnalystClient::segment_profile(&text).with_context(|| format!("{}", path.display()))?;
                    (date, Some(cuts))
                }
            };
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let request = fedcrm_protocol::pb::OverlapRequest {
                purpose,
                dp_off: dp == Dp::Off,
                nodes,
                segment_cuts,
                reference_date,
            };
            let released = client.overlap_on(request, &indicatif::ProgressBar::new_spinner(), "psi run").await?;
            let view = fedcrm::overlap::OverlapView::new(&fedcrm::overlap::OverlapRelease::from_reply(&released))?;
            if let Some(prefix) = heatmap {
                let (png, svg) = (prefix.with_extension("png"), prefix.with_extension("svg"));
                fedcrm::overlap::write_heatmap(&view, fedcrm::overlap::HeatMetric::Jaccard, &png, &svg)?;
                eprintln!("heat-map written to {} and {}", png.display(), svg.display());
            }
            for exit in &released.exits {
                eprintln!("not compared: {exit}");
            }
            print_view(&view, json, csv, fedcrm::overlap::overlap_csv, fedcrm::overlap::overlap_table)
        }
        Command::Hq(HqCommand::Status { config, json }) => {
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let s = client.status().await.map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let view = fedcrm::hq::status_view(&s, fedcrm::hq::own_certificate(&cfg), now);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", fedcrm::hq::status_table(&view));
            }
            Ok(())
        }
        Command::Hq(HqCommand::Train {
            model:
                TrainCommand::Churn { config, reference_date, horizon_days, purpose, dp, epsilon, mode, max_rounds, json },
        }) => {
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("moments round: global means and variances across nodes");
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            let request = fedcrm_protocol::pb::TrainChurnRequest {
                reference_date,
                horizon_days,
                purpose,
                dp_off: dp == Dp::Off,
                mode,
                max_rounds,
                epsilon,
            };
            let done =
                client.train_churn(request, |p| show_round(&bar, json, fedcrm::models::RoundRow::new(p).line())).await;
            bar.finish_and_clear();
            let (trained, rounds) = done?;
            let view = fedcrm::models::TrainView::new(&trained, &rounds);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", fedcrm::models::train_text(&view));
            }
            Ok(())
        }
        Command::Hq(HqCommand::Train {
            model:
                TrainCommand::Clv {
                    config,
                    calibration_end,
                    time_unit,
                    purpose,
                    first_purchase,
                    dp,
                    epsilon,
                    max_rounds,
                    json,
                },
        }) => {
            let (first_purchase_from, first_purchase_to) = match &first_purchase {
                None => (String::new(), String::new()),
                Some(range) => match range.split_once("..") {
                    Some((from, to)) if !from.is_empty() && !to.is_empty() => (from.to_string(), to.to_string()),
                    _ => bail!("--first-purchase {range:?}: write FROM..TO, e.g. 1997-01-01..1997-03-31"),
                },
            };
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("BG/NBD: the first evaluation across nodes");
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            let request = fedcrm_protocol::pb::TrainClvRequest {
                calibration_end,
                time_unit,
                purpose,
                first_purchase_from,
                first_purchase_to,
                max_rounds,
                dp_off: dp == Dp::Off,
                epsilon,
            };
            let done =
                client.train_clv(request, |p| show_round(&bar, json, fedcrm::clv::ClvRoundRow::new(p).line())).await;
            bar.finish_and_clear();
            let (trained, rounds) = done?;
            let view = fedcrm::clv::ClvTrainView::new(&trained, &rounds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", fedcrm::clv::clv_train_text(&view));
            }
            Ok(())
        }
        Command::Hq(HqCommand::Models { config, json, csv }) => {
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let reply = client.models().await.map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))?;
            let view = fedcrm::models::ModelsView::new(&reply);
            print_view(&view, json, csv, fedcrm::models::models_csv, fedcrm::models::models_table)
        }
        Command::Hq(HqCommand::Publish { config, id, json }) => {
            let cfg = HqConfig::load(&config)?;
            let Some(publisher) = cfg.publisher.clone() else {
                bail!(
                    "{} has no [publisher] section: publishing needs the model-publisher key (`fedcrm hq \
                     init-publisher`, its certificate issued by the brand CA) on this machine",
                    config.display()
                );
            };
            let mut client = AnalystClient::connect(&cfg).await?;
            let reply = client.publish(&id, &publisher).await?;
            if json {
                println!("{}", serde_json::json!({ "id": id, "sha256": reply.sha256, "publisher": reply.publisher }));
            } else {
                println!("published {id} (sha256 {}), signed by {}", reply.sha256, reply.publisher);
                println!("nodes whose node.toml names publisher {} can now score with it", reply.publisher);
            }
            Ok(())
        }
        Command::Hq(HqCommand::Budget { config, json, csv }) => {
            let cfg = HqConfig::load(&config)?;
            let mut client = AnalystClient::connect(&cfg).await?;
            let reply = client.budgets().await.map_err(|s| anyhow::anyhow!("coordinator: {}", s.message()))?;
            let view = fedcrm::hq::BudgetView::new(&reply);
            print_view(&view, json, csv, fedcrm::hq::budget_csv, fedcrm::hq::budget_table)
        }
        Command::Bench(BenchCommand::Secagg { n, d, drop, width, secagg, json, flower, peer, flower_reps }) => {
            let flower = flower.then(|| peer.options(flower_reps));
            fedcrm::bench::secagg(n, d, drop, width, secagg, json, flower)
        }
        Command::Bench(BenchCommand::Train {
            nodes,
            customers,
            seed,
            d,
            examples,
            nonzeros,
            rounds,
            epochs,
            only,
            json,
            flower,
            peer,
        }) => {
            let flower = flower.then(|| peer.options(1));
            let opts = fedcrm::bench::train::Options {
                nodes,
                customers,
                seed,
                fedavg: fedcrm::bench::train::fedavg::Settings { nodes, d, examples, nonzeros, rounds, epochs },
                newton: only.as_deref() != Some("fedavg"),
                fedavg_row: only.as_deref() != Some("newton"),
            };
            fedcrm::bench::train::train(opts, json, flower).await
        }
        Command::Bench(BenchCommand::Postgres { rows, customers, json }) => {
            let report = fedcrm::bench::postgres::run(&rows, customers, |s| eprintln!("{s}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fedcrm::bench::postgres::table(&report));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Clv { nodes, dp: true, runs, epsilon, json }) => {
            let report = fedcrm::bench::clv::run_dp(&nodes, runs, epsilon).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fedcrm::bench::clv::dp_table(&report));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Clv { nodes, dp: false, json, .. }) => {
            let rows = fedcrm::bench::clv::run(&nodes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", fedcrm::bench::clv::table(&rows));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Psi { n, json, openmined, openmined_script, openmined_python }) => {
            let peer = openmined
                .then(|| (openmined_python, openmined_script.unwrap_or_else(fedcrm::bench::psi::default_script)));
            let report = fedcrm::bench::psi::run(n, peer).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fedcrm::bench::psi::table(&report));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Audit { records, json }) => fedcrm::auditcli::bench(records, json),
        Command::Audit(AuditCommand::Verify { paths, ca, json }) => fedcrm::auditcli::verify(&paths, &ca, json),
        Command::Audit(AuditCommand::Report { paths, ca, from, to, html, json, out }) => {
            fedcrm::auditcli::report(&paths, &ca, &from, &to, html, json, out.as_deref())
        }
        Command::Node(NodeCommand::Pending { config, json }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            fedcrm::auditcli::pending(&cfg, json)
        }
        Command::Node(NodeCommand::Score { config, model, out, as_of, top, json }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            fedcrm::nodecli::score(&cfg, model, out, as_of.as_deref(), top, json).await
        }
        Command::Node(NodeCommand::Approve { id, config, by }) => {
            let cfg = fedcrm_node::config::NodeConfig::load(&config)?;
            fedcrm::auditcli::approve(&cfg, &id, &by)
        }
        Command::Config(ConfigCommand::Default { which }) => {
            print!(
                "{}",
                match which {
                    Which::Node => include_str!("../configs/node.toml"),
                    Which::Coordinator => include_str!("../configs/coordinator.toml"),
                    Which::Hq => include_str!("../configs/hq.toml"),
                }
            );
            Ok(())
        }
    }
}

/// A round's progress line: above the spinner, or on it under `--json` (stdout is then
/// the JSON alone).
fn show_round(bar: &indicatif::ProgressBar, json: bool, line: String) {
    if json {
        bar.set_message(line);
    } else {
        bar.println(line);
    }
}
