//! Issue 14: `fedcrm bench postgres` — a node reading a franchisee's PostgreSQL: a table
//! of synthetic purchases in a throwaway server (`crate::pgserver`), then, as a node
//! does, `node check` (counts, bad rows, customers, identifiers) and an RFM contribution
//! (RFM values computed in the database, then the histogram vector), each timed with the
//! node process's peak resident memory for that step. Run at two table sizes with the
//! same customers, the peak shows what the node's memory depends on: customers, not
//! rows. The floor is the same work's database side alone — the bare aggregates over
//! the raw table through the same client (no normalising, no bad-row checks, no
//! consent), in the same run.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use fedcrm_analysis::rfm::{HistogramSpec, Layout, Metric};
use fedcrm_node::analyses::{Cache, LocalData};
use fedcrm_node::data::Source;
use fedcrm_protocol::wire::{Analysis, AnalysisKind};
use serde::Serialize;
use time::macros::date;

use crate::pgserver::PgServer;

/// One table size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PgRow {
    pub rows: u64,
    pub customers: u64,
    /// Seconds to fill the table (generate_series in the server; not the node's work).
    pub load_seconds: f64,
    /// `node check`: counts, bad rows, consent, the identifier tally.
    pub check_seconds: f64,
    pub check_rows_per_second: f64,
    /// The node's peak resident memory during the step (MiB; VmHWM, reset before it).
    pub check_peak_rss_mib: f64,
    /// The floor of `node check`: `count(*)` and `count(DISTINCT customer)` on the raw table.
    pub check_floor_seconds: f64,
    pub check_ratio: f64,
    /// An RFM contribution: values computed in the database, then the histogram vector.
    pub rfm_seconds: f64,
    pub rfm_rows_per_second: f64,
    pub rfm_peak_rss_mib: f64,
    /// The floor: the bare `GROUP BY customer` aggregate on the raw table, rows received.
    pub rfm_floor_seconds: f64,
    pub rfm_ratio: f64,
    /// The node process's resident memory before the steps (MiB).
    pub base_rss_mib: f64,
}

/// The report: one row per table size.
#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    pub server_version: String,
    pub sizes: Vec<PgRow>,
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Reset the peak to the current resident size (Linux: `5` to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

const TABLE: &str = "CREATE TABLE sales (order_id bigserial PRIMARY KEY, customer_key text NOT NULL, \
     phone text, channel text, timestamp timestamptz, amount numeric(12, 2), category text)";

/// Fill `sales` with `rows` purchases of `customers` customers over three years.
async fn fill(client: &tokio_postgres::Client, rows: u64, customers: u64) -> Result<()> {
    client.batch_execute("TRUNCATE sales").await?;
    // In slices, so the server's memory stays small too.
    let slice = 2_000_000u64;
    let mut from = 0u64;
    while from < rows {
        let to = (from + slice).min(rows);
        client
            .execute(
                "INSERT INTO sales (customer_key, phone, channel, timestamp, amount, category) \
                 SELECT 'M' || lpad(((i * 7919) % $3)::text, 8, '0'), \
                   '138' || lpad(((i * 7919) % $3)::text, 8, '0'), \
                   (ARRAY['store','tmall','wechat'])[1 + i % 3], \
                   timestamptz '2023-01-01 09:00+08' + ((i * 104729) % (3 * 365 * 86400)) * interval '1 second', \
                   ((i * 37) % 500000) / 100.0, (ARRAY['gold','diamond','jade','platinum'])[1 + i % 4] \
                 FROM generate_series($1::bigint, $2::bigint - 1) AS i",
                &[&(from as i64), &(to as i64), &(customers as i64)],
            )
            .await?;
        from = to;
    }
    client.batch_execute("VACUUM ANALYZE sales").await?;
    Ok(())
}

/// A node's configuration around `data`, every other setting at its default (only its
/// data and policy are read by `node check`); its files would be in `dir`.
pub fn node_config(dir: &std::path::Path, data: fedcrm_node::data::DataConfig) -> fedcrm_node::config::NodeConfig {
    use fedcrm_node::config::{CoordinatorEndpoint, NodeConfig, TlsFiles};
    NodeConfig {
        name: "node".into(),
        coordinator: CoordinatorEndpoint {
            url: "https://127.0.0.1:1".into(),
            server_name: "coordinator".into(),
            retry_seconds: 1,
            retry_max_seconds: 1,
        },
        tls: TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node.key"), crl: None },
        data,
        policy: Default::default(),
        audit_dir: dir.join("audit"),
        approvals_dir: dir.join("approvals"),
        audit: Default::default(),
        scoring: None,
        psi: Default::default(),
    }
}

fn rfm_analysis() -> Analysis {
    let kind = AnalysisKind::RfmHistograms(
        [Metric::Recency, Metric::Frequency, Metric::Monetary]
            .into_iter()
            .map(|metric| HistogramSpec { metric, layout: Layout::Log2 })
            .collect(),
    );
    Analysis {
        reference_date: date!(2025 - 12 - 31),
        purpose: "bench".into(),
        requested_by: "bench".into(),
        requested_by_organisation: "bench".into(),
        analysis_id: "bench".into(),
        analysis_kind: kind.name().into(),
        kind,
    }
}

/// Run at each of `sizes` (rows), `customers` customers each.
pub async fn run(sizes: &[u64], customers: u64, progress: impl Fn(&str)) -> Result<PgReport> {
    ensure!(customers > 0 && sizes.iter().all(|&n| n >= customers), "each size needs at least one row per customer");
    progress("starting a throwaway PostgreSQL server");
    let server = PgServer::start()?;
    let dir = tempfile::tempdir()?;
    let (client, data) = server.node_database("pos", "reader", TABLE, dir.path()).await?;
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let config = node_config(dir.path(), data);
    let mut out = Vec::new();
    for &rows in sizes {
        progress(&format!("filling the table with {rows} purchases of {customers} customers"));
        let t = Instant::now();
        fill(&client, rows, customers).await?;
        let load_seconds = t.elapsed().as_secs_f64();

        progress(&format!("{rows} rows: node check"));
        let (_, base) = memory();
        reset_peak();
        let t = Instant::now();
        let report = fedcrm_node::check::check_database(&config).await?;
        let check_seconds = t.elapsed().as_secs_f64();
        let (check_peak, _) = memory();
        ensure!(report.rows_read == rows && report.customers == customers, "node check counted {report:?}");
        let t = Instant::now();
        let row = client.query_one("SELECT count(*), count(DISTINCT customer_key) FROM sales", &[]).await?;
        let check_floor = t.elapsed().as_secs_f64();
        ensure!(row.get::<_, i64>(1) as u64 == customers);

        progress(&format!("{rows} rows: an RFM contribution"));
        let source = Source::Database(std::sync::Arc::new(fedcrm_node::data::postgres::Database::new(&config.data)?));
        let analysis = rfm_analysis();
        reset_peak();
        let t = Instant::now();
        let mut cache = Cache::default();
        fedcrm_node::analyses::prepare(&source, &analysis, &mut cache).await.map_err(anyhow::Error::msg)?;
        let c = fedcrm_node::analyses::contribute(&analysis, &mut LocalData::new(&source, &mut cache), &config.policy)
            .map_err(anyhow::Error::msg)?;
        let rfm_seconds = t.elapsed().as_secs_f64();
        let (rfm_peak, _) = memory();
        ensure!(c.customers as u64 == customers, "the contribution covers {} customers", c.customers);
        drop((c, cache));
        let t = Instant::now();
        let floor_rows = client
            .query(
                "SELECT customer_key, date '2025-12-31' - max((timestamp AT TIME ZONE 'Asia/Shanghai')::date), \
                   count(DISTINCT (timestamp AT TIME ZONE 'Asia/Shanghai')::date), sum(amount) \
                 FROM sales GROUP BY customer_key",
                &[],
            )
            .await
            .context("the floor's aggregate")?;
        let rfm_floor = t.elapsed().as_secs_f64();
        ensure!(floor_rows.len() as u64 == customers);
        drop(floor_rows);
        out.push(PgRow {
            rows,
            customers,
            load_seconds,
            check_seconds,
            check_rows_per_second: rows as f64 / check_seconds,
            check_peak_rss_mib: check_peak,
            check_floor_seconds: check_floor,
            check_ratio: check_seconds / check_floor,
            rfm_seconds,
            rfm_rows_per_second: rows as f64 / rfm_seconds,
            rfm_peak_rss_mib: rfm_peak,
            rfm_floor_seconds: rfm_floor,
            rfm_ratio: rfm_seconds / rfm_floor,
            base_rss_mib: base,
        });
    }
    Ok(PgReport { server_version, sizes: out })
}

/// The report as a table.
pub fn table(r: &PgReport) -> String {
    let mut s = format!(
        "A node reading PostgreSQL {} (a throwaway server on this machine; the node's process measured)\n\n",
        r.server_version
    );
    s.push_str(&format!(
        "{:>11} {:>9} | {:>9} {:>11} {:>9} {:>7} | {:>9} {:>11} {:>9} {:>7}\n",
        "rows", "customers", "check s", "rows/s", "peak MiB", "×floor", "RFM s", "rows/s", "peak MiB", "×floor"
    ));
    for x in &r.sizes {
        s.push_str(&format!(
            "{:>11} {:>9} | {:>9.2} {:>11.0} {:>9.1} {:>7.2} | {:>9.2} {:>11.0} {:>9.1} {:>7.2}\n",
            x.rows,
            x.customers,
            x.check_seconds,
            x.check_rows_per_second,
            x.check_peak_rss_mib,
            x.check_ratio,
            x.rfm_seconds,
            x.rfm_rows_per_second,
            x.rfm_peak_rss_mib,
            x.rfm_ratio
        ));
    }
    s.push_str(
        "\npeak MiB: the node process's peak resident memory during the step (reset before it); it follows the\n\
         customers (one RFM value and at most two identifier rows each), not the rows, which stream through\n\
         portals 10,000 at a time. ×floor: the step's time over the bare aggregates on the raw table through\n\
         the same client (no normalising, bad-row checks or consent), measured in the same run.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_counts_every_row_and_customer_at_two_sizes() {
        let r = run(&[3_000, 6_000], 500, |_| {}).await.unwrap();
        assert_eq!(r.sizes.len(), 2);
        for x in &r.sizes {
            assert!(x.check_seconds > 0.0 && x.rfm_seconds > 0.0 && x.check_peak_rss_mib > 0.0, "{x:?}");
        }
        let t = table(&r);
        assert!(t.contains("6000") && t.contains("×floor"), "{t}");
    }
}
