//! Issue 11: the HQ analyst's view of the model registry (`fedcrm hq models`, as a
//! table, `--json` or `--csv`).

use fedcrm_protocol::pb;
use serde::Serialize;

use crate::hq::csv_field;

/// One model version as `hq models` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRow {
    pub id: String,
    pub kind: String,
    /// When training finished, UTC (`2026-11-30T14:05:00Z`).
    pub created: String,
    pub published: bool,
    pub publisher: Option<String>,
    pub sha256: String,
    /// The model's headline figures (e.g. `test_auc`), as the artifact states them.
    pub metrics: serde_json::Value,
}

/// The registry as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelsView {
    pub models: Vec<ModelRow>,
}

fn utc(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl ModelsView {
    pub fn new(r: &pb::ModelsReply) -> Self {
        let models = r
            .models
            .iter()
            .map(|m| ModelRow {
                id: m.id.clone(),
                kind: m.kind.clone(),
                created: utc(m.created_ms),
                published: m.published,
                publisher: (!m.publisher.is_empty()).then(|| m.publisher.clone()),
                sha256: m.sha256.clone(),
                metrics: serde_json::from_str(&m.metrics_json).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        Self { models }
    }
}

/// The headline figures in one cell: `test_auc 0.8312, nodes 5`.
fn metrics_cell(m: &serde_json::Value) -> String {
    match m {
        serde_json::Value::Object(o) => o
            .iter()
            .filter(|(_, v)| v.is_number() || v.is_string())
            .map(|(k, v)| match v {
                serde_json::Value::Number(n) if n.is_f64() => format!("{k} {:.4}", n.as_f64().unwrap_or(0.0)),
                other => format!("{k} {}", other.to_string().trim_matches('"')),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

pub fn models_table(v: &ModelsView) -> String {
    if v.models.is_empty() {
        return "no models in the registry yet; `fedcrm hq train churn` trains one\n".into();
    }
    let header = ["id", "kind", "created (UTC)", "status", "sha256", "metrics"].map(String::from).to_vec();
    let rows: Vec<Vec<String>> = v
        .models
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.kind.clone(),
                m.created.clone(),
                match &m.publisher {
                    Some(p) if m.published => format!("published by {p}"),
                    _ => "trained, not published".into(),
                },
                m.sha256.chars().take(12).collect(),
                metrics_cell(&m.metrics),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::from(" ");
        for (c, w) in cells.iter().zip(&widths) {
            l.push_str(&format!(" {c:<w$}"));
        }
        format!("{}\n", l.trim_end())
    };
    let mut s = line(&header);
    for r in &rows {
        s.push_str(&line(r));
    }
    s
}

/// `hq models --csv`: a header row, then one row per version; `metrics` as JSON.
pub fn models_csv(v: &ModelsView) -> String {
    let mut s = String::from("id,kind,created,published,publisher,sha256,metrics\n");
    for m in &v.models {
        s.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            csv_field(&m.id),
            csv_field(&m.kind),
            m.created,
            m.published,
            csv_field(m.publisher.as_deref().unwrap_or("")),
            m.sha256,
            csv_field(&m.metrics.to_string()),
        ));
    }
    s
}
