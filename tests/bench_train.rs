//! Issue 11: `fedcrm bench train` at tiny sizes — structure only, never timing. The
//! Newton row trains for real over mTLS (3 nodes of synthetic jewellery data) and
//! counts the training's rounds; its floor reaches the trained weights bit for bit.
//! The FedAvg row's secure sums equal plain sums recomputed here, independently of the
//! bench's floor, from the same synthetic examples.

use fedcrm::bench::train::{self, Options, fedavg};
use fedcrm_model::fedavg::{Server, ServerOptimizer, decode_update, local_update};

fn tiny() -> fedavg::Settings {
    fedavg::Settings { nodes: 3, d: 40, examples: 6, nonzeros: 5, rounds: 2, epochs: 2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_counts_the_training_and_checks_its_sums() {
    let opts = Options { nodes: 3, customers: 3000, seed: 7, fedavg: tiny(), newton: true, fedavg_row: true };
    let r = train::run(&opts).await.unwrap();

    let n = r.newton.as_ref().expect("a Newton row");
    // Moments + Newton rounds + evaluation: the rounds counted are the training's.
    assert!(n.newton_rounds >= 1, "{n:?}");
    assert_eq!(n.rounds, n.newton_rounds + 2, "{n:?}");
    assert!(n.floor_weights_equal);
    assert!(n.weights >= 2 && n.weights <= 17, "{}", n.weights);
    assert!(n.bytes_per_node_round > 0 && n.train_examples > 0, "{n:?}");
    assert!(n.rounds_per_s > 0.0 && n.floor_newton_ms > 0.0 && n.ratio.is_some(), "{n:?}");
    // Every Newton round writes audit records (egress at least), each fsynced.
    assert!(n.audit_records >= (3 * n.newton_rounds) as u64 && n.fsync_ms > 0.0, "{n:?}");

    let f = r.fedavg.as_ref().expect("a FedAvg row");
    assert_eq!((f.rounds, f.words, f.word_bits), (2, 42, 64));
    assert!(f.sums_equal);
    // TLS records carry at least the payload (weights down, masked words up).
    assert_eq!(f.payload_bytes_per_node_round, 8 * 41 + 8 * 42);
    assert!(f.wire_bytes_per_node_round >= f.payload_bytes_per_node_round, "{f:?}");

    let text = train::table(&r);
    assert!(text.contains("Newton, ") && text.contains("FedAvg, d = 40, 3 nodes"), "{text}");
    assert!(text.contains("not measured:"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    for key in ["rounds_per_s", "ratio", "floor_round_ms", "includes", "excludes"] {
        assert!(json["fedavg"].get(key).is_some(), "{key}");
    }
    assert!(json.get("flower").is_none() && r.flower.is_empty());
}

/// The secure rounds' final weights are what plain FedAvg (local epochs, plain sum,
/// the server step) gives on the same examples, computed here.
#[test]
fn fedavg_secure_rounds_equal_plain_fedavg() {
    let s = tiny();
    let figures = fedavg::run(&s, |_| {}).unwrap();
    assert_eq!(figures.rounds.len(), 2);
    assert_eq!(figures.examples, 18);
    let data: Vec<_> = (0..s.nodes).map(|i| fedavg::synthetic(i, &s)).collect();
    let mut server = Server::new(ServerOptimizer::Average { lr: 1.0 }, s.d + 1);
    let mut w = vec![0.0; s.d + 1];
    for round in 1..=u64::from(s.rounds) {
        let mut sum = vec![0u64; s.d + 2];
        for ex in &data {
            for (a, b) in sum.iter_mut().zip(local_update(&w, ex, &s.local(), round).unwrap()) {
                *a = a.wrapping_add(b);
            }
        }
        w = server.apply(&w, &decode_update(s.d, &sum).unwrap()).unwrap();
    }
    let same = w.iter().zip(&figures.weights).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same && w.len() == figures.weights.len(), "secure {:?} vs plain {w:?}", figures.weights);
    assert!(w.iter().any(|x| x.abs() > 0.0), "training moved the weights");
}

#[test]
fn too_few_nodes_are_refused() {
    let s = fedavg::Settings { nodes: 2, ..tiny() };
    assert!(fedavg::run(&s, |_| {}).unwrap_err().to_string().contains("at least 3 nodes"));
}
