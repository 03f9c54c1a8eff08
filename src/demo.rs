//! `fedcrm demo`: a complete deployment on loopback in one command, on the synthetic
//! jewellery data (`fedcrm demo-data`, generated in memory from a seed): HQ's own
//! stores, its Tmall-style shop and its WeChat mini-program, and five franchisee
//! companies' stores. A throwaway brand CA issues certificates from CSRs; a coordinator
//! and the nodes connect over mutual TLS; the HQ analyst runs
//!
//! 1. the RFM segment analysis while one node drops out mid-round, exact (every demo
//!    node's policy is `dp = "optional"`), printed beside the pooled (centralized)
//!    answer over the same data, which it must equal;
//! 2. the same analysis under differential privacy (`--dp on`): its error against the
//!    pooled answer;
//! 3. the churn model: trained across the nodes (federated Newton, one line per secure
//!    round), registered, published with the model-publisher key, and applied by one
//!    franchisee to its own customers on its own machine — the ranked win-back list is
//!    written there and never leaves it;
//!
//! 4. the channel overlap: every pair of connected channels by private set
//!    intersection on their customers' phones (exact, `--dp off`), the matrix beside the
//!    plaintext intersections it must equal, and its heat-map (PNG and SVG);
//!
//! and every party's audit log is verified as an auditor would.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fedcrm_node::data::Format;
use fedcrm_pki::OrgKind;
use indicatif::{ProgressBar, ProgressStyle};

use crate::harness::{Cluster, ClusterOptions, NodeSpec};
use crate::hq::{AnalystClient, SegmentsView, segments_table};
use crate::pooled;

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub drop_one: bool,
    /// The RFM analysis's reference date (`YYYY-MM-DD`).
    pub reference: String,
    /// The synthetic data's seed and population.
    pub seed: u64,
    pub customers: usize,
    pub quiet: bool,
    /// Leave the CA, configurations, data and audit logs here.
    pub keep: Option<std::path::PathBuf>,
}

/// The churn model's reference date and horizon: trained on purchases up to
/// 2025-03-31, churned = no purchase in the 275 days to the data's last day.
const CHURN_REFERENCE: &str = "2025-03-31";
const CHURN_HORIZON_DAYS: u32 = 275;

/// The demo's nodes: the first `n` of HQ's channels and franchisees as the generator
/// names them, with each node's purchases and consent withdrawals.
fn nodes(o: &DemoOptions) -> Result<Vec<NodeSpec>> {
    let n = o.nodes.clamp(3, crate::demodata::NODES.len());
    let data = crate::demodata::generate(&crate::demodata::Options {
        customers: o.customers,
        ..crate::demodata::Options::new(o.seed)
    })?;
    // HQ's own channels count against every franchisee's threshold rule
    // (2t > n + H + C, C = 1 here): three HQ channels of 8 nodes, two of 7, one of 5 or
    // 6, none below, so that one dropout is always tolerated (except with 3 nodes,
    // where t = 3).
    let hq = match n {
        8.. => 3,
        7 => 2,
        5 | 6 => 1,
        _ => 0,
    };
    let file = |node: &str, name: &str| -> Result<String> {
        let path = std::path::Path::new(node).join(name);
        let (_, bytes) = data.files.iter().find(|(p, _)| *p == path).context("generated file")?;
        Ok(String::from_utf8(bytes.clone())?)
    };
    let own = data.manifest.nodes.iter().filter(|e| e.kind == OrgKind::Hq).take(hq);
    let franchised = data.manifest.nodes.iter().filter(|e| e.kind != OrgKind::Hq).take(n - hq);
    own.chain(franchised)
        .map(|e| {
            let mut s = NodeSpec::franchisee(&e.name, file(&e.name, "purchases.csv")?);
            s.kind = e.kind;
            s.organisation = e.organisation.clone();
            s.format = Format::Csv;
            s.withdrawn = file(&e.name, "consent-withdrawals.csv")?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            Ok(s)
        })
        .collect()
}

/// Run the demo; returns an error (non-zero exit) if federated ≠ pooled.
pub async fn run(o: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let mut specs = nodes(&o)?;
    let n = specs.len();
    let drop_one = o.drop_one && n > 3;
    if o.drop_one && !drop_one && !o.quiet {
        println!("(with 3 nodes every franchisee needs t = 3: no node can drop out, so none does)");
    }
    let dropper = specs.last().map(|s| s.name.clone()).unwrap_or_default();
    if drop_one && let Some(s) = specs.last_mut() {
        s.leaves_after_shares = true;
    }
    let say = |s: &str| {
        if !o.quiet {
            println!("{s}");
        }
    };
    say(&format!(
        "fedcrm demo: brand CA, coordinator and {n} nodes on loopback over mutual TLS; synthetic jewellery data \
         (seed {}, {} people)",
        o.seed, o.customers
    ));
    let spinner = if o.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    spinner.set_style(
        ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message("issuing certificates from CSRs, starting coordinator and nodes");
    let cluster = Cluster::start(ClusterOptions {
        nodes: specs.clone(),
        phase_timeout_seconds: 10,
        root: o.keep.clone(),
        ..Default::default()
    })
    .await?;
    for s in &specs {
        spinner.println(format!("  connected: {:<16} {} ({})", s.name, s.organisation, s.kind.as_str()));
    }
    if drop_one {
        spinner.println(format!("  {dropper} will drop out after sharing its keys in the first round"));
    }
    spinner.set_message("running the RFM segment analysis (secure rounds)");
    let reply = cluster.segments(&o.reference, "demo: RFM segments for the quarterly CRM review").await;
    spinner.set_message("running it again under differential privacy (--dp on)");
    let noised = cluster.segments_with(&o.reference, "demo: the same segments under differential privacy", true).await;
    spinner.finish_and_clear();
    let reply = match reply {
        Ok(r) => r,
        Err(s) => bail!("segment analysis failed: {}", s.message()),
    };
    let view = SegmentsView::new(&reply, &o.reference);
    say(&format!("\nFederated result (what HQ sees):\n{}", segments_table(&view)));

    // The pooled answer over exactly the contributors' data (consent withdrawals out),
    // parsed by the reference's own code.
    let mut rows = Vec::new();
    for spec in specs.iter().filter(|s| view.participants.contains(&s.name)) {
        rows.extend(pooled::parse_csv(&spec.data, &spec.withdrawn.iter().cloned().collect::<BTreeSet<_>>()));
    }
    let reference: u32 = o.reference.replace('-', "").parse()?;
    let p = pooled::segments(&rows, reference);
    let fed_counts: Vec<Option<u64>> = view.segments.iter().map(|s| s.customers).collect();
    say("Pooled answer over the same customers (what pooling the raw data would give):");
    say(&format!("  recency cuts {:?}, frequency cuts {:?}, monetary cuts {:?}", p.recency, p.frequency, p.monetary));
    say(&format!(
        "  high-value {}, potential {}, dormant {}, other {}, total {}",
        p.counts[0], p.counts[1], p.counts[2], p.counts[3], p.customers
    ));
    let equal = view.recency_cuts == p.recency
        && view.frequency_cuts == p.frequency
        && view.monetary_cuts_cents == p.monetary
        && view.customers == Some(p.customers)
        && fed_counts.iter().zip(p.counts).all(|(f, c)| f.is_none_or(|f| f == c));
    // The same analysis under differential privacy: not equal by design; its error.
    let noised = match noised {
        Ok(r) => SegmentsView::new(&r, &o.reference),
        Err(s) => bail!("the segment analysis under differential privacy failed: {}", s.message()),
    };
    say(&format!("\nUnder differential privacy (--dp on, what HQ sees):\n{}", segments_table(&noised)));
    say(&dp_error(&noised, &p));

    let scored = churn(&cluster, &o, &view.participants).await?;
    say(&scored);
    let valued = clv(&cluster, &o, &view.participants).await?;
    say(&valued);

    let (overlap_text, overlap_equal) = overlap(&cluster, &o, &specs).await?;
    say(&overlap_text);

    // Every party's audit log, verified together as an auditor would.
    let mut logs = vec![cluster.coordinator.config.audit_dir.clone()];
    logs.extend(cluster.node_configs.iter().map(|c| c.audit_dir.clone()));
    let ca_pem = std::fs::read_to_string(cluster.pki.ca_path())?;
    let ca_der = fedcrm_pki::pem_to_der_certs(&ca_pem)?.remove(0);
    if o.keep.is_some() {
        cluster.write_configs()?;
    }
    let dir = cluster.stop().await;
    let verified = fedcrm_audit::verify::verify_paths(&logs, &ca_der)
        .map_err(|f| anyhow::anyhow!("audit logs do not verify: {f}"))?;
    say(&format!(
        "\nAudit logs of {} parties verified (hash chains, seals by certified keys, {} cross-party receipts): {} records.",
        verified.logs.len(),
        verified.receipts_checked,
        verified.logs.iter().map(|l| l.records).sum::<u64>()
    ));
    if o.keep.is_some() {
        let root = dir.keep();
        let r = root.display();
        let today = time::OffsetDateTime::now_utc().date();
        println!("\nEverything is kept in {r}: the brand CA (pki/), coordinator.toml, hq.toml,");
        println!("nodes/<name>/ (node.toml, its data, its audit log, the win-back list) and coordinator-audit/.");
        println!("(The configurations name the demo's loopback port, which is closed now.) Check the logs:");
        println!("  fedcrm audit verify {r}/coordinator-audit {r}/nodes/*/audit --ca {r}/pki/ca.pem");
        println!(
            "  fedcrm audit report {r}/coordinator-audit {r}/nodes/*/audit --ca {r}/pki/ca.pem --from {today} --to {today}"
        );
    }
    if !equal {
        bail!("federated result differs from the pooled answer");
    }
    if !overlap_equal {
        bail!("the PSI overlap matrix differs from the plaintext intersections");
    }
    say(&format!(
        "\nExact run: federated cut points and segment counts EQUAL the pooled answer ({} contributing nodes{}) — \
         {:.1} s.",
        view.participants.len(),
        if drop_one { format!(", {dropper} dropped mid-round") } else { String::new() },
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The channel overlap over the analyst API as `fedcrm hq overlap --dp off` does,
/// beside the plaintext intersections of the same channels' phones; its heat-map is
/// written to the demo's directory (`--keep` keeps it). Returns what to print and
/// whether every released count equals the plaintext one.
async fn overlap(cluster: &Cluster, o: &DemoOptions, specs: &[NodeSpec]) -> Result<(String, bool)> {
    let bar = if o.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    let mut client = AnalystClient::connect(&cluster.analyst).await?;
    let request = fedcrm_protocol::pb::OverlapRequest {
        purpose: "demo: how many customers the channels share".into(),
        dp_off: true,
        nodes: vec![],
        ..Default::default()
    };
    let released = client.overlap_on(request, &bar, "fedcrm hq overlap").await?;
    let view = crate::overlap::OverlapView::new(&crate::overlap::OverlapRelease::from_reply(&released))?;
    let (png, svg) = (cluster.dir.path().join("overlap-heatmap.png"), cluster.dir.path().join("overlap-heatmap.svg"));
    crate::overlap::write_heatmap(&view, crate::overlap::HeatMetric::Jaccard, &png, &svg)?;
    let plain: Vec<(String, BTreeSet<String>)> = specs
        .iter()
        .filter(|s| released.channels.iter().any(|c| c.node == s.name))
        .map(|s| (s.name.clone(), pooled::synthetic_phones(&s.data, &s.withdrawn.join("\n"))))
        .collect();
    let reference = pooled::overlap(&plain);
    let min_cohort = u64::from(released.min_cohort);
    let equal = released.pairs.len() == reference.len()
        && released.pairs.iter().all(|p| {
            let want = reference.get(&(p.a.clone(), p.b.clone())).copied();
            match want {
                Some(w) if w < min_cohort => p.withheld,
                Some(w) => !p.withheld && p.shared == w as i64,
                None => false,
            }
        });
    let mut text = format!(
        "\nChannel overlap by private set intersection (fedcrm hq overlap --dp off; each pair compared on a \
         franchisee's node, HQ sees only the counts):\n{}",
        crate::overlap::overlap_table(&view)
    );
    text.push_str(&format!(
        "Plaintext intersections of the same phones: {} — heat-map written to {}.\n",
        if equal { "EQUAL to every released count" } else { "DIFFERENT" },
        png.display()
    ));
    Ok((text, equal))
}

/// Train the churn model over the analyst API as `fedcrm hq train churn` does (one
/// line per secure round), publish it as `fedcrm hq publish` does, and score the first
/// franchisee's customers on that node as `fedcrm node score` does. Returns what to
/// print.
async fn churn(cluster: &Cluster, o: &DemoOptions, participants: &[String]) -> Result<String> {
    let mut out = String::from("\nChurn model: trained across the nodes, applied on each node\n");
    let mut hq = AnalystClient::connect(&cluster.analyst).await?;
    let request = fedcrm_protocol::pb::TrainChurnRequest {
        reference_date: CHURN_REFERENCE.into(),
        horizon_days: CHURN_HORIZON_DAYS,
        purpose: "demo: churn model for the win-back campaign".into(),
        dp_off: true,
        mode: "newton".into(),
        max_rounds: 0,
        epsilon: 0.0,
    };
    let bar = if o.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("fedcrm hq train churn: moments round (global means and variances)");
    let trained = hq
        .train_churn(request, |p| {
            bar.println(format!("  {}", crate::models::RoundRow::new(p).line()));
        })
        .await;
    bar.finish_and_clear();
    let (trained, rounds) = trained?;
    let view = crate::models::TrainView::new(&trained, &rounds);
    for line in crate::models::train_text(&view).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    let publisher = cluster.analyst.publisher.clone().context("the demo's publisher key")?;
    let published = hq.publish(&view.model_id, &publisher).await?;
    out.push_str(&format!(
        "  fedcrm hq publish {}: signed by {} (sha256 {}…)\n",
        view.model_id,
        published.publisher,
        &published.sha256[..16]
    ));
    // The first franchisee that took part scores its own customers, on its machine.
    let node = cluster
        .node_configs
        .iter()
        .find(|c| participants.contains(&c.name) && c.name.starts_with("fr-"))
        .or_else(|| cluster.node_configs.iter().find(|c| participants.contains(&c.name)))
        .context("a participating node")?
        .clone();
    let list = node.audit_dir.parent().unwrap_or(&node.audit_dir).join("win-back.csv");
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let request = fedcrm_node::score::ScoreRequest {
        model_id: view.model_id.clone(),
        out: list.clone(),
        as_of: None,
        top: None,
        now_unix,
    };
    let summary = fedcrm_node::score::run(&node, &request).await?;
    out.push_str(&format!(
        "  fedcrm node score on {} (on its own machine): {} customers scored as of {}, {} above 0.5;\n  \
         the ranked list is {} (mode 0600, never sent). Its first rows:\n",
        node.name,
        summary.customers,
        summary.as_of,
        summary.above_half,
        list.display()
    ));
    let text = std::fs::read_to_string(&list)?;
    for line in text.lines().take(4) {
        out.push_str(&format!("    {line}\n"));
    }
    Ok(out)
}

/// Fit the CLV model over the analyst API as `fedcrm hq train clv --dp off` does
/// (calibration to the churn model's reference date, weeks), publish it, and have every
/// node that took part value its own customers as `fedcrm node score` does: the
/// parameters, then each node's dormant count. Returns what to print.
async fn clv(cluster: &Cluster, o: &DemoOptions, participants: &[String]) -> Result<String> {
    let mut out = String::from("\nCustomer lifetime value: BG/NBD and Gamma-Gamma fitted across the nodes\n");
    let mut hq = AnalystClient::connect(&cluster.analyst).await?;
    let request = fedcrm_protocol::pb::TrainClvRequest {
        calibration_end: CHURN_REFERENCE.into(),
        time_unit: "weeks".into(),
        purpose: "demo: which members are dormant, which are between purchases".into(),
        dp_off: true,
        ..Default::default()
    };
    let bar = if o.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("fedcrm hq train clv: BG/NBD, one secure round per evaluation");
    let trained = hq.train_clv(request, |p| bar.set_message(crate::clv::ClvRoundRow::new(p).line())).await;
    bar.finish_and_clear();
    let (trained, rounds) = trained?;
    let view = crate::clv::ClvTrainView::new(&trained, &rounds)?;
    for line in crate::clv::clv_train_text(&view).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    let publisher = cluster.analyst.publisher.clone().context("the demo's publisher key")?;
    hq.publish(&view.model_id, &publisher).await?;
    out.push_str(&format!(
        "  fedcrm hq publish {}; each node values its own customers (fedcrm node score):\n",
        view.model_id
    ));
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let as_of = fedcrm_analysis::date::parse_date(CHURN_REFERENCE)?;
    for node in cluster.node_configs.iter().filter(|c| participants.contains(&c.name)) {
        let list = node.audit_dir.parent().unwrap_or(&node.audit_dir).join("customer-value.csv");
        let request = fedcrm_node::score::ScoreRequest {
            model_id: view.model_id.clone(),
            out: list,
            as_of: Some(as_of),
            top: None,
            now_unix,
        };
        let summary = fedcrm_node::score::run(node, &request).await?;
        let totals = summary.clv.context("a CLV model's totals")?;
        out.push_str(&format!(
            "    {:<16} {:>6} customers, {:>6} dormant (P(alive) < {}), {:>7.0} purchases expected in {} days\n",
            node.name,
            summary.customers,
            totals.dormant,
            totals.dormant_below,
            totals.expected_purchases,
            totals.period_days
        ));
    }
    Ok(out)
}

/// The DP run against the pooled answer: per segment, the noised count, the pooled
/// count and the difference, beside the stated 95 % interval of the noise; and each cut
/// point's difference. (The DP cuts are located from noisy histograms, so a segment's
/// difference holds both the noise of its count and the customers the cuts moved.)
fn dp_error(v: &SegmentsView, p: &pooled::PooledSegments) -> String {
    let mut s = String::from("Error against the pooled answer:\n");
    let ci = v.privacy.as_ref().map_or(0.0, |p| p.ci95);
    s.push_str(&format!(
        "  {:<12} {:>10} {:>10} {:>8}   (noise alone: ±{ci:.1} at 95 %)\n",
        "segment", "noised", "pooled", "diff"
    ));
    for (row, &exact) in v.segments.iter().zip(&p.counts) {
        match row.customers {
            Some(c) => {
                s.push_str(&format!("  {:<12} {:>10} {:>10} {:>+8}\n", row.segment, c, exact, c as i64 - exact as i64))
            }
            None => s.push_str(&format!("  {:<12} {:>10} {:>10}\n", row.segment, "withheld", exact)),
        }
    }
    let diff = |a: &[u64], b: &[u64; 4]| {
        a.iter().zip(b).map(|(x, y)| format!("{:+}", *x as i64 - *y as i64)).collect::<Vec<_>>().join(" / ")
    };
    s.push_str(&format!(
        "  cut points − pooled: recency {} days; frequency {}; monetary {} cents\n",
        diff(&v.recency_cuts, &p.recency),
        diff(&v.frequency_cuts, &p.frequency),
        diff(&v.monetary_cuts_cents, &p.monetary)
    ));
    s
}
