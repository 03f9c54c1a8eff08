//! Issue 11: the HQ analyst's views of churn training (`fedcrm hq train churn`) and of
//! the model registry (`fedcrm hq models`, as a table, `--json` or `--csv`).

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

/// One training round as `hq train churn` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundRow {
    pub round: u32,
    pub phase: String,
    pub examples: u64,
    pub objective: Option<f64>,
    pub gradient_norm: Option<f64>,
}

impl RoundRow {
    pub fn new(p: &pb::ChurnRoundProgress) -> Self {
        let finite = |x: f64| x.is_finite().then_some(x);
        Self {
            round: p.round,
            phase: p.phase.clone(),
            examples: p.examples,
            objective: finite(p.objective),
            gradient_norm: finite(p.gradient_norm),
        }
    }

    /// `round 3 newton: 16,503 examples, objective 0.494064, max |gradient| 3.2e-3`.
    pub fn line(&self) -> String {
        let mut s = format!("round {} {}: {} examples", self.round, self.phase, self.examples);
        if let Some(o) = self.objective {
            s.push_str(&format!(", objective {o:.6}"));
        }
        if let Some(g) = self.gradient_norm {
            s.push_str(&format!(", max |gradient| {g:.1e}"));
        }
        s
    }
}

/// A finished churn training (`hq train churn --json`: stable field names).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainView {
    pub model_id: String,
    pub sha256: String,
    /// Federated ROC AUC on the held-out customers, and its binning error bound.
    pub test_auc: f64,
    pub test_auc_bound: f64,
    pub test_log_loss: f64,
    pub test_accuracy: f64,
    pub train_examples: u64,
    pub test_examples: u64,
    pub rounds: u32,
    pub nodes: Vec<String>,
    pub exits: Vec<String>,
    pub history: Vec<RoundRow>,
    /// The model as registered (feature spec, standardisation, weights, metrics, provenance).
    pub model: serde_json::Value,
}

impl TrainView {
    pub fn new(t: &pb::ChurnTrained, rounds: &[pb::ChurnRoundProgress]) -> Self {
        Self {
            model_id: t.model_id.clone(),
            sha256: t.sha256.clone(),
            test_auc: t.test_auc,
            test_auc_bound: t.test_auc_bound,
            test_log_loss: t.test_log_loss,
            test_accuracy: t.test_accuracy,
            train_examples: t.train_examples,
            test_examples: t.test_examples,
            rounds: t.rounds,
            nodes: t.nodes.clone(),
            exits: t.exits.clone(),
            history: rounds.iter().map(RoundRow::new).collect(),
            model: serde_json::from_str(&t.model_json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The training's summary for people: the figures, then the coefficients.
pub fn train_text(v: &TrainView) -> String {
    let mut s = format!(
        "trained {} over {} nodes in {} secure rounds (registered, not published)\n",
        v.model_id,
        v.nodes.len(),
        v.rounds
    );
    s.push_str(&format!(
        "  held-out customers: {}  ROC AUC {:.4} (± {:.4} from binning)  log-loss {:.4}  accuracy {:.1}%\n",
        v.test_examples,
        v.test_auc,
        v.test_auc_bound,
        v.test_log_loss,
        v.test_accuracy * 100.0
    ));
    s.push_str(&format!("  training customers: {}\n", v.train_examples));
    if let Ok(m) = serde_json::from_value::<fedcrm_model::artifact::ChurnModel>(v.model.clone()) {
        s.push_str("  coefficients (standardised features; positive = more likely to churn):\n");
        let names = m.spec.names();
        for (i, w) in m.model.weights.iter().enumerate() {
            let name = if i == 0 { "intercept" } else { names[i - 1].as_str() };
            s.push_str(&format!("    {name:<28} {w:>10.4}\n"));
        }
    }
    for e in &v.exits {
        s.push_str(&format!("  left: {e}\n"));
    }
    s.push_str(&format!("publish it for the nodes with: fedcrm hq publish {}\n", v.model_id));
    s
}
