//! `fedcrm demo`: a complete deployment on loopback in one command. A throwaway
//! brand CA issues certificates from CSRs; a coordinator and five nodes (the CDNOW
//! customers split across them) connect over mutual TLS; the HQ analyst runs the
//! RFM segment analysis while one node drops out mid-round, exact (every demo node's
//! policy is `dp = "optional"`); the result is printed beside the pooled (centralized)
//! answer over the same data, and must equal it. Then the same analysis runs under
//! differential privacy (`--dp on`): noise added on every node, its scale, cost and the
//! error against the pooled answer printed.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fedcrm_pki::OrgKind;
use indicatif::{ProgressBar, ProgressStyle};

use crate::harness::{CDNOW, Cluster, ClusterOptions, NodeSpec, split_cdnow};
use crate::hq::{SegmentsView, segments_table};
use crate::pooled;

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub drop_one: bool,
    pub reference: String,
    pub quiet: bool,
    /// Leave the CA, configurations, data splits and audit logs here.
    pub keep: Option<std::path::PathBuf>,
}

const NAMES: [&str; 8] = [
    "hq-online-shop",
    "hq-flagship-sh",
    "fr-hangzhou-01",
    "fr-chengdu-02",
    "fr-wuhan-03",
    "fr-xian-04",
    "fr-nanjing-05",
    "fr-suzhou-06",
];

/// Run the demo; returns an error (non-zero exit) if federated ≠ pooled.
pub async fn run(o: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let n = o.nodes.clamp(3, NAMES.len());
    // HQ's own channels count against every franchisee's threshold rule
    // (2t > n + H + C, C = 1 here): two HQ channels from 7 nodes, one from 5, none below,
    // so that one dropout is always tolerated (except with 3 nodes, where t = 3).
    let hq = match n {
        7.. => 2,
        5 | 6 => 1,
        _ => 0,
    };
    let names: Vec<&str> = NAMES[..2][..hq].iter().chain(&NAMES[2..2 + n - hq]).copied().collect();
    let drop_one = o.drop_one && n > 3;
    if o.drop_one && !drop_one && !o.quiet {
        println!("(with 3 nodes every franchisee needs t = 3: no node can drop out, so none does)");
    }
    let parts = split_cdnow(CDNOW, &vec![1; n], true);
    let mut specs: Vec<NodeSpec> = names
        .iter()
        .zip(parts)
        .map(|(name, data)| {
            let mut s = NodeSpec::franchisee(name, data);
            if name.starts_with("hq-") {
                s.kind = OrgKind::Hq;
                s.organisation = "Demo Jewellery HQ".into();
            }
            s
        })
        .collect();
    let dropper = specs.last().map(|s| s.name.clone()).unwrap_or_default();
    if drop_one && let Some(s) = specs.last_mut() {
        s.leaves_after_shares = true;
    }
    let say = |s: &str| {
        if !o.quiet {
            println!("{s}");
        }
    };
    say("fedcrm demo: brand CA, coordinator and nodes on loopback over mutual TLS");
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
    spinner.println(format!(
        "  {} nodes connected: {}",
        n,
        specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    ));
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

    // The pooled answer over exactly the contributors' data.
    let mut text = String::new();
    for (spec, _) in specs.iter().zip(0..) {
        if view.participants.contains(&spec.name) {
            text.push_str(&spec.data);
        }
    }
    let reference: u32 = o.reference.replace('-', "").parse()?;
    let p = pooled::segments(&pooled::parse_cdnow(&text), reference);
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
        println!("nodes/<name>/ (node.toml, the data split, its audit log) and coordinator-audit/.");
        println!("(The configurations name the demo's loopback port, which is closed now.) Check the logs:");
        println!("  fedcrm audit verify {r}/coordinator-audit {r}/nodes/*/audit --ca {r}/pki/ca.pem");
        println!(
            "  fedcrm audit report {r}/coordinator-audit {r}/nodes/*/audit --ca {r}/pki/ca.pem --from {today} --to {today}"
        );
    }
    if !equal {
        bail!("federated result differs from the pooled answer");
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
