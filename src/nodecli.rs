//! Text renderings of the node's own reports (`fedcrm node check`, `fedcrm node egress`)
//! and `fedcrm node score`'s summary (never the list itself).

use anyhow::Result;
use fedcrm_node::check::CheckReport;
use fedcrm_node::egress::EgressRecord;

/// `fedcrm node check` as text.
pub fn check_text(r: &CheckReport) -> String {
    let mut s = String::new();
    s.push_str(&format!("node {}\n\ndata: {}\n", r.node, r.data_path));
    if let Some(db) = &r.database {
        s.push_str(&format!("  server:               PostgreSQL {}\n", db.server_version));
        s.push_str(&format!(
            "  time zone:            {} (purchase times are converted to it before their date is taken)\n",
            db.time_zone
        ));
        s.push_str(&format!("  tables read:          {}\n", db.relations.join(", ")));
        s.push_str("  query (read-only; $1 = the withdrawn customers' keys, $2 = the reference date):\n");
        for line in db.query.lines() {
            s.push_str(&format!("    {line}\n"));
        }
    }
    if let Some(e) = &r.encoding {
        s.push_str(&format!("  encoding:             {e}\n"));
    }
    s.push_str(&format!("  rows read:            {}\n", r.rows_read));
    s.push_str(&format!("  rows loaded:          {}\n", r.rows_loaded));
    s.push_str(&format!("  rows skipped:         {}", r.rows_skipped));
    if r.rows_undecodable > 0 {
        s.push_str(&format!(" ({} with undecodable bytes)", r.rows_undecodable));
    }
    s.push('\n');
    for (line, why) in &r.skipped_examples {
        s.push_str(&format!("    line {line}: {why}\n"));
    }
    for (key, why) in &r.skipped_keys {
        s.push_str(&format!("    row {key}: {why}\n"));
    }
    if let Some(why) = &r.refused {
        s.push_str(&format!("  REFUSED: node run would not start: {why}\n"));
    }
    match &r.consent {
        None => s.push_str("  consent withdrawals:  no file configured (data.consent_withdrawals)\n"),
        Some(c) => {
            s.push_str(&format!("  consent withdrawals:  {}", c.path));
            if let Some(e) = &c.encoding {
                s.push_str(&format!(", read as {e}"));
            }
            s.push('\n');
            s.push_str(&format!(
                "    {} entries ({} distinct): {} match a customer in the data, {} match none\n",
                c.entries, c.distinct, c.matched, c.unmatched
            ));
            if !c.unmatched_lines.is_empty() {
                s.push_str(&format!(
                    "    keys matching no customer (a typo, or another store's customer) on lines {}\n",
                    lines(&c.unmatched_lines, c.unmatched)
                ));
            }
            s.push_str(&format!("    comment or blank lines: {}\n", c.comment_or_blank_lines));
            if c.junk_lines > 0 {
                s.push_str(&format!(
                    "    {} lines are not one key (spaces, commas, semicolons) on lines {}; {} customers they name were excluded as a precaution; write one key per line\n",
                    c.junk_lines,
                    lines(&c.junk_examples, c.junk_lines),
                    c.junk_matched
                ));
            }
        }
    }
    s.push_str(&format!(
        "  consent withdrawn:    {} customers ({} rows excluded from everything)\n",
        r.withdrawn_customers, r.withdrawn_rows
    ));
    s.push_str(&format!("  customers:            {}\n", r.customers));
    s.push_str(&format!(
        "  purchases from {} to {}\n",
        r.first_purchase.as_deref().unwrap_or("-"),
        r.last_purchase.as_deref().unwrap_or("-")
    ));
    for (ch, n) in &r.channels {
        // Padded by display width: a Chinese channel name takes two columns a character.
        let pad = " ".repeat(16usize.saturating_sub(unicode_width::UnicodeWidthStr::width(ch.as_str())));
        s.push_str(&format!("  channel {ch}{pad} {n} rows\n"));
    }
    s.push_str(&format!(
        "\npolicy: allowed analyses {:?}, min participants {}\n",
        r.allowed_analyses, r.min_participants
    ));
    s.push_str(&format!(
        "  franchisee organisations besides yours required among those whose data enters a sum: {} + {} assumed colluding = {} (HQ-owned channels never count)\n",
        r.min_other_organisations,
        r.assume_colluding_nodes,
        r.min_other_organisations + r.assume_colluding_nodes
    ));
    s.push_str(&format!(
        "  threshold accepted: 2t > n + H + {} (H = HQ-owned nodes in the round), so HQ's nodes and {} colluding franchisee node(s) never hold t shares\n",
        r.assume_colluding_nodes, r.assume_colluding_nodes
    ));
    s.push_str(&format!(
        "  differencing: two overlapping sums within {} days must not differ by non-HQ nodes of fewer than {} organisations\n",
        r.differencing_window_days, r.min_population_difference
    ));
    s.push_str(&format!(
        "  histograms: at most {} bins; bins at least {} day(s) / {} purchase day(s) / {} cent(s) wide\n",
        r.max_bins, r.min_bin_widths[0], r.min_bin_widths[1], r.min_bin_widths[2]
    ));
    if !r.manual_approval.is_empty() {
        s.push_str(&format!("  waiting for your approval (fedcrm node pending): {:?}\n", r.manual_approval));
    }
    for (k, v) in &r.monthly_analysis_caps {
        s.push_str(&format!("  at most {v} {k} analyses per month\n"));
    }
    let pr = &r.privacy;
    s.push_str(&format!(
        "  differential privacy: {} (σ² ≥ {} per count); budget {}\n",
        pr.dp, pr.min_noise_variance, pr.budget
    ));
    match &pr.unreadable {
        None => s.push_str(&format!(
            "  {}: {} charge(s), {:.4} of {} used, {:.4} left\n",
            pr.month,
            pr.charges,
            pr.used,
            pr.limit,
            (pr.limit - pr.used).max(0.0)
        )),
        Some(e) => s.push_str(&format!(
            "  {}: the audit log cannot be read, so this month's charges are unknown: {e}\n",
            pr.month
        )),
    }
    let psi = &r.psi;
    s.push_str(&format!(
        "  private set intersection: matching on {}: {} distinct identifier(s); {} customer(s) without one; {} sharing one with another customer (listed once)\n",
        psi.match_on, psi.identifiers, psi.customers_without, psi.shared_by_customers
    ));
    for (reason, n) in &psi.bad {
        s.push_str(&format!("    left out, not an identifier: {n} customer(s): {reason}\n"));
    }
    s.push_str(&format!(
        "    peer lists blinded only with {} to {} points; at most {} run(s) a month with any one peer organisation (HQ's channels count as one) ([policy.psi])\n",
        psi.min_list_points, psi.max_list_points, psi.max_runs_per_peer_organisation
    ));
    s.push_str(&format!(
        "    exact counts (--dp off) below {} withheld here, with more cells of a segment profile so no small cell follows from the others ([policy.psi] min_exact_count)\n",
        psi.min_exact_count
    ));
    s.push_str(&format!(
        "    comparing, mixes {} trap points into its list (one per identifier, at least 1024, at most max_traps = {}, then up to its bucket): an answer altered to count one customer twice goes unnoticed and reaches that customer with probability at most {:.1e} a run\n",
        psi.traps, psi.max_traps, psi.altered_answer_bound
    ));
    match psi.answers.as_slice() {
        [] => s.push_str("    answers no peer: compares only (pin peers in [policy.psi] respond_to)\n"),
        orgs => s.push_str(&format!("    answers only the pinned peers of: {}\n", orgs.join(", "))),
    }
    s.push_str(&format!("  audit log (every egress, decision and receipt): {}\n", r.audit_dir));
    s.push_str("\nwhat may leave this machine (each logged with size and SHA-256):\n");
    for e in &r.egress {
        s.push_str(&format!("  {:<15} {}\n", e.message, e.content));
    }
    s.push_str("\nwhat never leaves:\n");
    for n in &r.never_leaves {
        s.push_str(&format!("  - {n}\n"));
    }
    s
}

/// Line numbers, with "…" when there are more than shown.
fn lines(shown: &[u64], total: u64) -> String {
    let list: Vec<String> = shown.iter().map(u64::to_string).collect();
    let more = if total > shown.len() as u64 { ", …" } else { "" };
    format!("{}{more}", list.join(", "))
}

/// `fedcrm node egress` as text or JSON, optionally limited to one month (YYYY-MM, UTC).
pub fn egress_text(recs: &[EgressRecord], month: Option<&str>, json: bool) -> Result<String> {
    let in_month = |r: &EgressRecord| -> bool {
        let Some(m) = month else { return true };
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp((r.unix_ms / 1000) as i64) else { return false };
        format!("{:04}-{:02}", t.year(), t.month() as u8) == m
    };
    let sel: Vec<&EgressRecord> = recs.iter().filter(|r| in_month(r)).collect();
    if json {
        return Ok(serde_json::to_string_pretty(&sel)? + "\n");
    }
    let mut per: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    for r in &sel {
        let e = per
            .entry((
                r.analysis_kind.clone().unwrap_or_else(|| "-".into()),
                r.round.clone().unwrap_or_else(|| "-".into()),
            ))
            .or_default();
        e.0 += 1;
        e.1 += r.bytes;
    }
    let mut s = format!("{:<16} {:<34} {:>9} {:>12}\n", "analysis", "round", "messages", "bytes");
    for ((a, round), (n, b)) in &per {
        s.push_str(&format!("{a:<16} {round:<34} {n:>9} {b:>12}\n"));
    }
    s.push_str(&format!("{} messages, {} bytes in total\n", sel.len(), sel.iter().map(|r| r.bytes).sum::<u64>()));
    Ok(s)
}

/// `fedcrm node score`: score with the published model at the real time (the
/// publisher's certificate must be valid now) and print the summary — never a
/// customer key or score.
pub async fn score(
    cfg: &fedcrm_node::config::NodeConfig,
    model_id: String,
    out: std::path::PathBuf,
    as_of: Option<&str>,
    top: Option<usize>,
    json: bool,
) -> Result<()> {
    let as_of =
        as_of.map(|d| fedcrm_analysis::date::parse_date(d).map_err(|e| anyhow::anyhow!("--as-of: {e}"))).transpose()?;
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let req = fedcrm_node::score::ScoreRequest { model_id, out, as_of, top, now_unix };
    let summary = fedcrm_node::score::run(cfg, &req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", score_text(&summary));
    }
    Ok(())
}

/// `fedcrm node score`'s summary as text.
pub fn score_text(s: &fedcrm_node::score::ScoreSummary) -> String {
    use fedcrm_node::score::spool::Recorded;
    let as_of = if s.as_of_default {
        format!("{} (the latest purchase in this node's data; --as-of to choose)", s.as_of)
    } else {
        s.as_of.clone()
    };
    let mut t = match &s.clv {
        None => format!(
            "model:              {} (signed by {}; trained as of {}: churn = no purchase in the next {} days)\n",
            s.model_id, s.publisher, s.reference_date, s.horizon_days
        ),
        Some(_) => format!(
            "model:              {} (customer lifetime value, signed by {}; calibrated to {})\n",
            s.model_id, s.publisher, s.reference_date
        ),
    };
    t.push_str(&format!("as of:              {as_of}\n"));
    t.push_str(&format!("customers scored:   {}\n", s.customers));
    match &s.clv {
        None => {
            t.push_str(&format!("churn risk > 0.5:   {}\n", s.above_half));
            t.push_str(&format!(
                "at-risk list:       {} ({} rows, most at risk first; readable only by you)\n",
                s.out.display(),
                s.rows
            ));
        }
        Some(c) => {
            t.push_str(&format!(
                "dormant:            {} (P(alive) below {}; [scoring.clv] dormant_below)\n",
                c.dormant, c.dormant_below
            ));
            t.push_str(&format!(
                "expected purchases: {:.0} in the next {} days, all customers\n",
                c.expected_purchases, c.period_days
            ));
            t.push_str(&format!(
                "lifetime value:     {:.2} over {} months, discounted, all customers\n",
                c.total_clv, c.horizon_months
            ));
            t.push_str(&format!(
                "value list:         {} ({} rows, most valuable first; readable only by you)\n",
                s.out.display(),
                s.rows
            ));
            if c.not_valued > 0 {
                t.push_str(&format!(
                    "not valued:         {} customer(s): an expectation did not converge for them (left out)\n",
                    c.not_valued
                ));
            }
        }
    }
    match &s.audit {
        Recorded::Appended { seq } => t.push_str(&format!("audit log:          recorded (record {seq})\n")),
        Recorded::Spooled { path } => t.push_str(&format!(
            "audit log:          the running node records it at its next seal ({})\n",
            path.display()
        )),
    }
    t.push_str("the list stays on this machine: nothing of it was sent, and the audit log holds only the model and the count\n");
    t
}
