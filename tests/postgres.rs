//! Issue 14, "What it must show": a franchisee's PostgreSQL as a node's data source,
//! against a real server started for the test (`fedcrm::pgserver`: a throwaway cluster
//! in a temp directory on a free port, as an unprivileged user when run as root).
//!
//! - CDNOW in 5 node databases: every node's RFM values (computed in the database) and
//!   customer histories equal those read from the CDNOW files, and the RFM segments, the
//!   churn model and the CLV fit across the 5 databases equal the same analyses across
//!   the files, exactly (DP off). Purchase times are stored as `timestamptz` at 01:30
//!   Shanghai time on a server whose zone is UTC, so a date taken without the node's
//!   zone would be a day early.
//! - A role with INSERT on the table makes the node refuse to start, naming the grant.
//! - Broken rows (NULL amount, a timestamp that is not a date) are counted and named by
//!   their key under `on_bad_row = "skip"`, and stop the load under `"fail"`.
//! - A lost connection refuses that round (with the reason, on both sides) and the node
//!   reconnects for the next; a query over `query_timeout_seconds` is cancelled.

mod common;

use std::path::Path;
use std::sync::Arc;

use fedcrm::harness::{CDNOW, Cluster, NodeSpec, split_cdnow};
use fedcrm::pgserver::PgServer;
use fedcrm_node::data::postgres::Database;
use fedcrm_node::data::{DataConfig, OnBadRow, Source};
use time::macros::date;

const TABLE: &str = "CREATE TABLE sales (order_id bigserial PRIMARY KEY, customer_id text, \
    purchased_at timestamptz, quantity integer, amount numeric(12, 2));";

/// Insert CDNOW rows (`id YYYYMMDD quantity amount`) into `sales`, each at 01:30 in
/// Shanghai on its day.
async fn load_cdnow(client: &tokio_postgres::Client, text: &str) {
    let (mut ids, mut times, mut qty, mut amounts) = (vec![], vec![], vec![], vec![]);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 || !f[0].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        ids.push(f[0].to_string());
        times.push(format!("{}-{}-{} 01:30:00+08", &f[1][..4], &f[1][4..6], &f[1][6..]));
        qty.push(f[2].parse::<i32>().unwrap());
        amounts.push(f[3].to_string());
    }
    client
        .execute(
            "INSERT INTO sales (customer_id, purchased_at, quantity, amount) \
             SELECT * FROM unnest($1::text[], $2::text[]::timestamptz[], $3::int4[], $4::text[]::numeric[])",
            &[&ids, &times, &qty, &amounts],
        )
        .await
        .unwrap();
}

/// The `[data]` of a CDNOW-shaped table: its column names, no phone, channel or category.
fn cdnow_columns(mut data: DataConfig) -> DataConfig {
    data.columns.customer_key = "customer_id".into();
    data.columns.timestamp = "purchased_at".into();
    data.columns.phone = String::new();
    data.columns.channel = String::new();
    data.columns.category = String::new();
    data
}

/// A throwaway server with one node database `pos` holding `rows` (CDNOW lines), read
/// by the role `reader`: the server, the directory of the role's password file, the
/// owner's connection and the node's `[data]`.
async fn one_database(rows: &str) -> (PgServer, tempfile::TempDir, tokio_postgres::Client, DataConfig) {
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (client, data) = server.node_database("pos", "reader", TABLE, dir.path()).await.unwrap();
    load_cdnow(&client, rows).await;
    (server, dir, client, cdnow_columns(data))
}

/// Five node databases holding the even CDNOW split, beside the same split as files.
async fn five_databases(server: &PgServer, dir: &Path) -> (Vec<NodeSpec>, Vec<NodeSpec>) {
    let files = common::cdnow_nodes(&[1; 5], true);
    let mut dbs = Vec::new();
    for (i, spec) in files.iter().enumerate() {
        let (client, data) = server.node_database(&format!("pos{i}"), &format!("reader{i}"), TABLE, dir).await.unwrap();
        load_cdnow(&client, &spec.data).await;
        let mut n = NodeSpec::franchisee(&spec.name, String::new());
        n.database = Some(cdnow_columns(data));
        dbs.push(n);
    }
    (files, dbs)
}

fn file_source(spec: &NodeSpec, dir: &Path) -> Source {
    let path = dir.join(format!("{}.txt", spec.name));
    std::fs::write(&path, &spec.data).unwrap();
    let cfg = DataConfig::new(fedcrm_node::data::Format::Cdnow, path);
    Arc::new(cfg.load().unwrap()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_in_five_databases_gives_exactly_the_files_features_segments_churn_model_and_clv_fit() {
    common::logs();
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, dbs) = five_databases(&server, dir.path()).await;

    // Node by node: what the analyses read.
    for (f, d) in files.iter().zip(&dbs) {
        let Source::Rows(ds) = file_source(f, dir.path()) else { unreachable!() };
        let db_cfg = d.database.clone().unwrap();
        let Source::Database(db) = db_cfg.open().await.unwrap() else { panic!("{}: not a database source", d.name) };
        for reference in [date!(1997 - 09 - 30), date!(1998 - 06 - 30)] {
            let want = fedcrm_node::features::rfm(&ds.purchases, reference);
            let got = db.rfm(reference).await.unwrap();
            assert_eq!(got.len(), want.len(), "{}: customers at {reference}", f.name);
            assert!(got == want, "{}: RFM values at {reference} differ", f.name);
        }
        let want = fedcrm_node::features::histories(&ds.purchases);
        let got = db.histories().await.unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.customer, &g.txns), (&w.customer, &w.txns), "{}: a history differs", f.name);
        }
        // The CLV summaries, computed in the database, bit for bit — for every customer
        // and for one cohort, in weeks and in days.
        use fedcrm_model::clv::summary::{Calibration, TimeUnit};
        for (unit, cohort) in
            [(TimeUnit::Weeks, None), (TimeUnit::Days, Some((date!(1997 - 02 - 01), date!(1997 - 02 - 28))))]
        {
            let cal = Calibration { end: date!(1997 - 09 - 30), unit, first_purchase: cohort };
            let got = db.clv(&cal).await.unwrap();
            let want = fedcrm_node::analyses::ClvData::from_histories(&want, &cal);
            assert_eq!(got.firsts, want.firsts, "{}: first purchases", f.name);
            assert_eq!(got.summaries.len(), want.summaries.len(), "{}: customers in the calibration", f.name);
            for (g, w) in got.summaries.iter().zip(&want.summaries) {
                assert_eq!(
                    (g.x, g.t_x.to_bits(), g.t.to_bits(), g.mean_repeat_value.to_bits()),
                    (w.x, w.t_x.to_bits(), w.t.to_bits(), w.mean_repeat_value.to_bits()),
                    "{}: a CLV summary differs",
                    f.name
                );
            }
        }
        println!(
            "{}: {} customers, {} purchases — the same from the database and the file",
            f.name,
            want.len(),
            ds.purchases.len()
        );
    }

    // Across the nodes: segments, the churn model and the CLV fit.
    let mut answers = Vec::new();
    for (label, nodes) in [("files", files), ("databases", dbs)] {
        let nodes: Vec<NodeSpec> = nodes
            .into_iter()
            .map(|mut n| {
                n.policy.churn.min_examples = 1;
                n
            })
            .collect();
        let cluster = Cluster::start(common::model_options(nodes)).await.unwrap();
        let segments =
            cluster.coordinator.run_segments(&common::request(&format!("segments from the {label}"))).await.unwrap();
        let churn = cluster
            .coordinator
            .run_churn(
                &common::request(&format!("churn from the {label}")),
                fedcrm_coordinator::analyses::churn::ChurnRequest::newton(90),
                None,
            )
            .await
            .unwrap();
        let clv = cluster
            .coordinator
            .run_clv(
                &fedcrm_coordinator::analyses::AnalysisRequest {
                    reference_date: date!(1997 - 09 - 30),
                    ..common::request(&format!("CLV from the {label}"))
                },
                fedcrm_coordinator::analyses::clv::ClvRequest::new(fedcrm_model::clv::summary::TimeUnit::Weeks),
                None,
            )
            .await
            .unwrap();
        cluster.stop().await;
        let counts: Vec<Option<u64>> = segments.release.cells.iter().map(|c| c.customers).collect();
        assert_eq!(segments.release.contributors.len(), 5, "{label}: {:?}", segments.exits);
        let weights: Vec<u64> = churn.release.model.model.weights.iter().map(|w| w.to_bits()).collect();
        let b = &clv.release.model.bg_nbd.params;
        let g = &clv.release.model.gamma_gamma.params;
        let params: Vec<u64> = [b.r, b.alpha, b.a, b.b, g.p, g.q, g.gamma].iter().map(|v| v.to_bits()).collect();
        println!(
            "{label}: segments {counts:?}; churn weights {:?}; CLV r {:.6} alpha {:.6} a {:.6} b {:.6} p {:.6} q {:.6} gamma {:.6}",
            churn.release.model.model.weights, b.r, b.alpha, b.a, b.b, g.p, g.q, g.gamma
        );
        assert_eq!(churn.release.model.provenance.nodes.len(), 5, "{label}: every node in the churn model");
        assert_eq!(clv.release.model.provenance.nodes.len(), 5, "{label}: every node in the CLV fit");
        answers.push((format!("{:?}", segments.release.cuts), counts, weights, params));
    }
    assert_eq!(answers[0].0, answers[1].0, "segment cut points");
    assert_eq!(answers[0].1, answers[1].1, "segment counts");
    assert_eq!(answers[0].2, answers[1].2, "churn model weights, bit for bit");
    assert_eq!(answers[0].3, answers[1].3, "CLV parameters, bit for bit");
}

/// A role that can write to the table it reads: the node does not start, and says which
/// grant to revoke; with the grant revoked it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_insert_on_the_table_is_refused_with_the_grant_named() {
    let (_server, _dir, client, data) = one_database("00001 19970101 1 11.77\n00002 19970112 2 89.00\n").await;
    client.batch_execute("GRANT INSERT ON sales TO reader").await.unwrap();
    let err = data.open().await.unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("INSERT") && err.contains("REVOKE INSERT ON public.sales FROM reader"), "{err}");
    assert!(!err.contains("password"), "{err}");
    client.batch_execute("REVOKE INSERT ON sales FROM reader; GRANT UPDATE (amount) ON sales TO reader").await.unwrap();
    let err = data.open().await.unwrap_err().to_string();
    assert!(err.contains("REVOKE UPDATE ON public.sales FROM reader"), "a column grant is a write too: {err}");
    client.batch_execute("REVOKE UPDATE (amount) ON sales FROM reader").await.unwrap();
    assert!(matches!(data.open().await.unwrap(), Source::Database(_)));
    // A query source is checked on the tables its plan reads (through a view too).
    client
        .batch_execute("CREATE VIEW recent AS SELECT * FROM sales; GRANT SELECT ON recent TO reader; GRANT DELETE ON sales TO reader")
        .await
        .unwrap();
    let query =
        DataConfig { table: None, query: Some("SELECT * FROM recent -- the last year\n;".into()), ..data.clone() };
    let err = query.open().await.unwrap_err().to_string();
    assert!(err.contains("REVOKE DELETE ON public.sales FROM reader"), "{err}");
    // The view named as the table: its base table is checked too.
    let view = DataConfig { table: Some("Recent".into()), ..data.clone() };
    let err = view.open().await.unwrap_err().to_string();
    assert!(err.contains("REVOKE DELETE ON public.sales FROM reader"), "{err}");
    client.batch_execute("REVOKE DELETE ON sales FROM reader").await.unwrap();
    view.open().await.unwrap();
    // Through a role it belongs to, even without inheriting (SET ROLE reaches it).
    client
        .batch_execute("CREATE ROLE pos_writer NOLOGIN; GRANT INSERT ON sales TO pos_writer; GRANT pos_writer TO reader; ALTER ROLE reader NOINHERIT")
        .await
        .unwrap();
    let err = data.open().await.unwrap_err().to_string();
    assert!(err.contains("member of pos_writer") && err.contains("REVOKE pos_writer FROM reader"), "{err}");
    client.batch_execute("REVOKE pos_writer FROM reader; ALTER ROLE reader CREATEROLE").await.unwrap();
    let err = data.open().await.unwrap_err().to_string();
    assert!(err.contains("CREATEROLE"), "{err}");
    client
        .batch_execute("ALTER ROLE reader NOCREATEROLE; CREATE ROLE admins SUPERUSER NOLOGIN; GRANT admins TO reader")
        .await
        .unwrap();
    let err = data.open().await.unwrap_err().to_string();
    assert!(err.contains("through its membership in admins is a superuser"), "{err}");
    client.batch_execute("REVOKE admins FROM reader").await.unwrap();
    // A query through a function hides what it reads: refused, not trusted.
    client
        .batch_execute(
            "CREATE FUNCTION all_sales() RETURNS SETOF sales LANGUAGE plpgsql AS 'BEGIN RETURN QUERY SELECT * FROM sales; END'",
        )
        .await
        .unwrap();
    let hidden = DataConfig { table: None, query: Some("SELECT * FROM all_sales()".into()), ..data.clone() };
    let err = hidden.open().await.unwrap_err().to_string();
    assert!(err.contains("cannot tell which tables data.query reads"), "{err}");
    // A partitioned table: a grant on the parent counts when only a partition is read.
    client
        .batch_execute(
            "CREATE TABLE parted (customer_id text, purchased_at timestamptz, quantity int, amount numeric(12, 2)) \
               PARTITION BY RANGE (purchased_at); \
             CREATE TABLE parted_1997 PARTITION OF parted FOR VALUES FROM ('1997-01-01') TO ('1998-01-01'); \
             GRANT SELECT ON parted_1997 TO reader; GRANT INSERT ON parted TO reader;",
        )
        .await
        .unwrap();
    let part = DataConfig { table: Some("parted_1997".into()), row_key: vec!["customer_id".into()], ..data.clone() };
    let err = part.open().await.unwrap_err().to_string();
    assert!(err.contains("REVOKE INSERT ON public.parted FROM reader"), "{err}");
    client.batch_execute("REVOKE INSERT ON parted FROM reader").await.unwrap();
    part.open().await.unwrap();
    // A grant made while the node runs is caught at its next read.
    let Source::Database(db) = data.open().await.unwrap() else { unreachable!() };
    client.batch_execute("GRANT TRUNCATE ON sales TO reader").await.unwrap();
    let err = db.rfm(date!(1997 - 06 - 30)).await.unwrap_err().to_string();
    assert!(err.contains("REVOKE TRUNCATE ON public.sales FROM reader"), "{err}");
}

/// Keys are trimmed as the files' are (Unicode spaces too), so the consent list
/// matches them, and customers come in byte order whatever the column's collation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_trimmed_and_ordered_as_the_files_are_and_withdrawn_customers_are_left_out() {
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = "CREATE TABLE sales (order_id bigserial PRIMARY KEY, customer_id text COLLATE \"und-x-icu\", \
        purchased_at timestamptz, quantity integer, amount numeric(12, 2)); \
        CREATE TABLE withdrawn (customer_id text);";
    let (client, data) = server.node_database("pos", "reader", table, dir.path()).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO sales (customer_id, purchased_at, quantity, amount) VALUES \
               ('a1', '1997-01-01 10:00+08', 1, 1.00), (E'B2\\t', '1997-01-02 10:00+08', 1, 2.00), \
               ('\u{3000}c3 ', '1997-01-03 10:00+08', 1, 3.00), ('W9', '1997-01-04 10:00+08', 1, 4.00); \
             INSERT INTO withdrawn VALUES (' W9'); GRANT SELECT ON withdrawn TO reader;",
        )
        .await
        .unwrap();
    // Every White_Space character around a key, as Rust's trim sees it; a zero-width
    // space (not White_Space) is kept, as the files' reader keeps it.
    let spaces: String = (0u32..0x3001).filter_map(char::from_u32).filter(|c| c.is_whitespace()).collect();
    assert_eq!(spaces.chars().count(), 25);
    let padded = format!("{spaces}d4{spaces}");
    client
        .execute(
            "INSERT INTO sales (customer_id, purchased_at, quantity, amount) VALUES \
               ($1, '1997-01-05 10:00+08', 1, 5.00), ($2, '1997-01-06 10:00+08', 1, 6.00)",
            &[&padded, &"\u{200B}e5"],
        )
        .await
        .unwrap();
    let data = DataConfig { consent_table: Some("withdrawn".into()), ..cdnow_columns(data) };
    let Source::Database(db) = data.open().await.unwrap() else { unreachable!() };
    let keys: Vec<String> = db.histories().await.unwrap().into_iter().map(|h| h.customer).collect();
    // Byte order, as the files' reader sorts: upper case before lower.
    assert_eq!(keys, vec!["B2", "a1", "c3", "d4", "\u{200B}e5"]);
    assert_eq!(padded.trim(), "d4");
    let ds = db.dataset().await.unwrap();
    assert_eq!((ds.withdrawn_customers, ds.withdrawn_rows, ds.customers), (1, 1, 5));
}

/// Broken rows: counted and named by their key under skip (within the allowed
/// fraction), and the first stops the load under fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rows_are_reported_by_key_under_skip_and_stop_the_load_under_fail() {
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (client, data) = server.node_database("pos", "reader", TABLE, dir.path()).await.unwrap();
    let text: String = CDNOW.lines().skip(1).take(400).map(|l| format!("{l}\n")).collect();
    load_cdnow(&client, &text).await;
    client
        .batch_execute(
            "INSERT INTO sales (order_id, customer_id, purchased_at, quantity, amount) VALUES \
               (90001, '00001', '1997-03-01 10:00+08', 1, NULL), \
               (90002, '00002', 'infinity', 1, 10.00)",
        )
        .await
        .unwrap();
    let mut data = cdnow_columns(data);
    let err = data.open().await.unwrap_err().to_string();
    println!("{err}");
    assert!(
        err.contains("2 bad rows") && err.contains("order_id=90001") && err.contains("amount (amount) is NULL"),
        "{err}"
    );
    data.on_bad_row = OnBadRow::Skip;
    let Source::Database(db) = data.open().await.unwrap() else { unreachable!() };
    let (counts, _) = db.check_counts().await.unwrap();
    assert_eq!((counts.report.rows, counts.report.skipped), (400, 2));
    assert_eq!(
        counts.report.skipped_keys,
        vec![
            ("order_id=90001".to_string(), "amount (amount) is NULL".to_string()),
            (
                "order_id=90002".to_string(),
                "purchased_at (timestamp) is not a date between the years 1 and 9999".to_string()
            )
        ]
    );
    // The skipped rows are in no feature: the file of the 400 good rows gives the same.
    let path = dir.path().join("good.txt");
    std::fs::write(&path, &text).unwrap();
    let ds = DataConfig::new(fedcrm_node::data::Format::Cdnow, path).load().unwrap();
    let reference = date!(1998 - 06 - 30);
    assert!(db.rfm(reference).await.unwrap() == fedcrm_node::features::rfm(&ds.purchases, reference));
    // `fedcrm node check` on the database: the server, the query, the counts and the
    // skipped rows by key; the exit status says `node run` would start.
    let toml = format!(
        "name = \"node-0\"\naudit_dir = \"audit\"\n[coordinator]\nurl = \"https://127.0.0.1:1\"\nserver_name = \"hq\"\n\
         [tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\
         [data]\nformat = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\nsslmode = \"disable\"\ntable = \"sales\"\n\
         on_bad_row = \"skip\"\n[data.columns]\ncustomer_key = \"customer_id\"\ntimestamp = \"purchased_at\"\n\
         phone = \"\"\nchannel = \"\"\ncategory = \"\"\n",
        data.url.as_deref().unwrap(),
        data.password_file.as_ref().unwrap().display()
    );
    let config = dir.path().join("node.toml");
    std::fs::write(&config, &toml).unwrap();
    let check = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedcrm"))
            .args(["node", "check", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "server:               PostgreSQL ",
        "time zone:            Asia/Shanghai",
        "tables read:          public.sales",
        "GROUP BY k",
        "rows read:            402",
        "rows skipped:         2",
        "row order_id=90001: amount (amount) is NULL",
        "customers:            ",
    ] {
        assert!(text.contains(want), "node check lacks {want:?}:\n{text}");
    }
    assert!(!text.contains("REFUSED"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&check(&["--json"]).stdout).unwrap();
    assert_eq!(json["customers"].as_u64(), Some(ds.customers));
    assert_eq!(json["skipped_keys"][1][0], "order_id=90002");
    std::fs::write(&config, toml.replace("on_bad_row = \"skip\"", "on_bad_row = \"fail\"")).unwrap();
    let out = check(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("REFUSED") && text.contains("order_id=90001"), "{text}");
    // Above the allowed fraction, refused.
    data.max_skipped_fraction = 0.001;
    let err = data.open().await.unwrap_err().to_string();
    assert!(err.contains("2 of 402 rows") && err.contains("max_skipped_fraction"), "{err}");
}

/// The node's time zone decides the date, not the server's or the session's; a query
/// that runs too long is cancelled, with the setting named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_are_taken_in_the_node_time_zone_and_a_slow_query_times_out() {
    // 1997-01-01 01:30 in Shanghai is 1996-12-31 17:30 UTC.
    let (_server, _dir, _client, data) = one_database("00001 19970101 1 11.77\n").await;
    let day = async |zone: &str| {
        let cfg = DataConfig { time_zone: Some(zone.into()), ..data.clone() };
        let Source::Database(db) = cfg.open().await.unwrap() else { unreachable!() };
        db.histories().await.unwrap()[0].txns[0].day
    };
    assert_eq!(day("Asia/Shanghai").await, date!(1997 - 01 - 01));
    assert_eq!(day("UTC").await, date!(1996 - 12 - 31));
    let bad = DataConfig { time_zone: Some("Mars/Olympus".into()), ..data.clone() };
    let err = bad.open().await.unwrap_err().to_string();
    assert!(err.contains("Mars/Olympus") && err.contains("IANA"), "{err}");
    let slow = DataConfig {
        table: None,
        query: Some("SELECT s.* FROM sales s, pg_sleep(5)".into()),
        query_timeout_seconds: Some(1),
        ..data.clone()
    };
    let db = Database::new(&slow).unwrap();
    let err = db.rfm(date!(1997 - 06 - 30)).await.unwrap_err().to_string();
    assert!(err.contains("query_timeout_seconds"), "{err}");
}

/// The database goes away under a running node, in the middle of its read: the round
/// is refused with the reason (the node's refusal, which the coordinator records as the
/// node's exit), the others carry on, and the node reconnects for the next analysis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_during_a_round_refuses_that_round_and_the_node_reconnects_for_the_next() {
    common::logs();
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeSpec> = split_cdnow(CDNOW, &[1; 4], true)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let mut n = NodeSpec::franchisee(&format!("node-{i}"), d);
            // The same segments three times over changing contributors: the
            // differencing rule (tested elsewhere) would rightly refuse the repeats.
            n.policy.differencing_window_days = 0;
            n
        })
        .collect();
    let (client, data) = server.node_database("pos", "reader", TABLE, dir.path()).await.unwrap();
    load_cdnow(&client, &nodes[0].data).await;
    // Each of the node's queries takes a second, so the test can cut one off.
    let data = DataConfig { table: None, query: Some("SELECT s.* FROM sales s, pg_sleep(1)".into()), ..data };
    nodes[0].database = Some(cdnow_columns(data));
    let cluster = Arc::new(Cluster::start(common::model_options(nodes)).await.unwrap());
    let first = cluster.coordinator.run_segments(&common::request("with the database")).await.unwrap();
    assert_eq!(first.release.contributors.len(), 4, "{:?}", first.exits);
    // The database restarts while the node is idle: its next read finds the connection
    // gone before it starts and connects afresh — no round is refused for it.
    let idle: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'reader' AND state = 'idle'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle, 1, "the node keeps one connection between analyses");
    let again = cluster.coordinator.run_segments(&common::request("after an idle restart")).await.unwrap();
    assert_eq!(again.release.contributors.len(), 4, "{:?}", again.exits);
    // The franchisee's database restarts while the node reads.
    let run = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.coordinator.run_segments(&common::request("database lost")).await }
    });
    let mut ended = 0i64;
    for _ in 0..400 {
        ended = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = 'reader' AND state = 'active' AND query LIKE '%pg_sleep%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if ended > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(ended, 1, "the node's query was running");
    let second = run.await.unwrap().unwrap();
    let why = second.exits.get("node-0").cloned().unwrap_or_default();
    println!("node-0: {why}");
    assert_eq!(second.release.contributors.len(), 3, "the others carried on: {:?}", second.exits);
    // HQ learns that the read failed, nothing of the data or the database.
    assert!(why.ends_with(fedcrm_node::analyses::DATABASE_UNREADABLE), "{why}");
    assert!(!why.contains("postgres://") && !why.contains("57P01"), "{why}");
    let third = cluster.coordinator.run_segments(&common::request("reconnected")).await.unwrap();
    assert_eq!(third.release.contributors.len(), 4, "node-0 reconnected: {:?}", third.exits);
    assert_eq!(third.release.cells, first.release.cells);
    drop(server);
}

/// A jewellery franchisee's POS table (the synthetic data's fr-chengdu, with phones,
/// Chinese store names, categories, birthdays and anniversaries, and its consent list as
/// a table): `node check` counts and the identifiers it would match on, and every
/// customer's history with its birthday and anniversary, equal the CSV export's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jewellery_pos_table_gives_the_exports_check_identifiers_and_histories() {
    let server = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jewellery/fr-chengdu");
    let table = "CREATE TABLE sales (order_id bigserial PRIMARY KEY, member_id text, mobile text, store text, \
        paid_at timestamptz, total numeric(12, 2), category text, birthday date, anniversary date); \
        CREATE TABLE withdrawn (member_id text);";
    let (client, data) = server.node_database("pos", "reader", table, dir.path()).await.unwrap();
    let mut rdr = csv::Reader::from_path(root.join("purchases.csv")).unwrap();
    let mut cols: Vec<Vec<String>> = vec![Vec::new(); 8];
    for rec in rdr.records() {
        let rec = rec.unwrap();
        for (i, c) in cols.iter_mut().enumerate() {
            c.push(rec[i].to_string());
        }
    }
    client
        .execute(
            "INSERT INTO sales (member_id, mobile, store, paid_at, total, category, birthday, anniversary) \
             SELECT a, NULLIF(b, ''), NULLIF(c, ''), d::timestamptz, e::numeric, NULLIF(f, ''), NULLIF(g, '')::date, NULLIF(h, '')::date \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS t(a, b, c, d, e, f, g, h)",
            &[&cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &cols[6], &cols[7]],
        )
        .await
        .unwrap();
    let withdrawn: Vec<String> = std::fs::read_to_string(root.join("consent-withdrawals.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    client.execute("INSERT INTO withdrawn SELECT unnest($1::text[])", &[&withdrawn]).await.unwrap();
    client.batch_execute("GRANT SELECT ON withdrawn TO reader").await.unwrap();
    let mut db_data = DataConfig { consent_table: Some("withdrawn".into()), ..data };
    db_data.columns.customer_key = "member_id".into();
    db_data.columns.phone = "mobile".into();
    db_data.columns.channel = "store".into();
    db_data.columns.timestamp = "paid_at".into();
    db_data.columns.amount = "total".into();
    let file_data = DataConfig {
        consent_withdrawals: Some(root.join("consent-withdrawals.csv")),
        ..DataConfig::new(fedcrm_node::data::Format::Csv, root.join("purchases.csv"))
    };
    let node = |data: DataConfig| fedcrm::bench::postgres::node_config(dir.path(), data);
    let (db_cfg, file_cfg) = (node(db_data.clone()), node(file_data.clone()));
    let from_db = fedcrm_node::check::check_database(&db_cfg).await.unwrap();
    let ds = file_data.read().unwrap();
    let from_file = fedcrm_node::check::check(&file_cfg, &ds);
    println!(
        "{} rows, {} customers, {} withdrawn; {} identifiers, {} without, bad {:?}, {} shared",
        from_db.rows_loaded,
        from_db.customers,
        from_db.withdrawn_customers,
        from_db.psi.identifiers,
        from_db.psi.customers_without,
        from_db.psi.bad,
        from_db.psi.shared_by_customers
    );
    assert!(from_db.withdrawn_customers > 0 && from_db.psi.identifiers > 0);
    assert_eq!(
        (from_db.rows_loaded, from_db.customers, from_db.withdrawn_customers, from_db.withdrawn_rows),
        (from_file.rows_loaded, from_file.customers, from_file.withdrawn_customers, from_file.withdrawn_rows)
    );
    assert_eq!(
        (&from_db.first_purchase, &from_db.last_purchase),
        (&from_file.first_purchase, &from_file.last_purchase)
    );
    assert_eq!(from_db.channels, from_file.channels);
    assert_eq!(
        (from_db.psi.identifiers, from_db.psi.customers_without, &from_db.psi.bad, from_db.psi.shared_by_customers),
        (
            from_file.psi.identifiers,
            from_file.psi.customers_without,
            &from_file.psi.bad,
            from_file.psi.shared_by_customers
        )
    );
    let Source::Database(db) = db_data.open().await.unwrap() else { unreachable!() };
    let got = db.histories().await.unwrap();
    let want = fedcrm_node::features::histories(&ds.purchases);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.customer, &g.txns, g.birthday, g.anniversary),
            (&w.customer, &w.txns, w.birthday, w.anniversary),
            "a history differs"
        );
    }
}
