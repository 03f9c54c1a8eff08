//! Issue 11, attack review: a churn round whose parameters could turn a node's
//! computation into an oracle on its data is refused when parsed, on every node,
//! before anything is computed — duplicated or foreign features (a threshold per copy),
//! weights that overflow the log-odds, a standard deviation that makes a feature a step
//! function, a tiny held-out set, FedAvg settings that make an update one customer's
//! features. Each case starts from a valid round and changes one thing.

use fedcrm_model::features::FeatureSpec;
use fedcrm_model::standardise::Standardiser;
use fedcrm_protocol::pb;
use fedcrm_protocol::wire::churn::{ChurnRound, ChurnSetup, ChurnStep, ModelDp};
use fedcrm_protocol::wire::{Analysis, AnalysisKind};

fn analysis(step: ChurnStep) -> Analysis {
    let spec = FeatureSpec::reduced();
    Analysis {
        reference_date: time::macros::date!(1997 - 09 - 30),
        purpose: "churn".into(),
        requested_by: "analyst".into(),
        requested_by_organisation: "HQ".into(),
        analysis_id: "a1".into(),
        analysis_kind: "churn-model".into(),
        kind: AnalysisKind::Churn(Box::new(ChurnRound {
            setup: ChurnSetup { spec, horizon_days: 273, holdout_key: [7; 32], test_fraction_bp: 3000 },
            step,
            dp: None,
        })),
    }
}

/// Plausible constants for the reduced spec's six features.
fn standardiser() -> Standardiser {
    Standardiser { mean: vec![4.0, 0.7, 3.5, 3.0, 20.0, 0.9], sd: vec![1.0, 0.5, 1.2, 1.0, 30.0, 0.6] }
}

fn newton() -> ChurnStep {
    ChurnStep::Newton { standardiser: standardiser(), weights: vec![0.5, 0.1, -0.2, 0.3, -0.4, 0.05, 0.0] }
}

fn parse(p: &pb::Analysis) -> Result<Analysis, String> {
    Analysis::try_from(p).map_err(|e| e.to_string())
}

fn churn_pb(a: &Analysis) -> pb::Analysis {
    pb::Analysis::from(a)
}

fn with_churn(mut p: pb::Analysis, f: impl FnOnce(&mut pb::ChurnRound)) -> pb::Analysis {
    if let Some(pb::analysis::Kind::Churn(c)) = p.kind.as_mut() {
        f(c);
    }
    p
}

#[test]
fn valid_rounds_round_trip() {
    for step in [ChurnStep::Moments, newton()] {
        let a = analysis(step);
        assert_eq!(parse(&churn_pb(&a)).unwrap(), a);
    }
}

#[test]
fn oracle_parameters_are_refused_when_parsed() {
    let base = churn_pb(&analysis(newton()));
    let spec_json = |spec: &FeatureSpec| serde_json::to_string(spec).unwrap();
    // A feature twice (each copy could carry its own threshold).
    let mut dup = FeatureSpec::reduced();
    dup.features.push(dup.features[0]);
    let e = parse(&with_churn(base.clone(), |c| c.spec_json = spec_json(&dup))).unwrap_err();
    assert!(e.contains("without repeats"), "{e}");
    // A feature with another bound than this version's.
    let mut loose = FeatureSpec::reduced();
    loose.features[0].bound_log2 = 40;
    assert!(parse(&with_churn(base.clone(), |c| c.spec_json = spec_json(&loose))).is_err());
    // Weights large enough to overflow the log-odds into ±inf (and NaN).
    let huge = with_churn(base.clone(), |c| {
        if let Some(pb::churn_round::Step::Newton(n)) = c.step.as_mut() {
            n.weights[1] = 1e308;
        }
    });
    assert!(parse(&huge).unwrap_err().contains("weight exceeds"));
    // A standard deviation that makes z a step function of the raw value.
    let step = with_churn(base.clone(), |c| {
        if let Some(pb::churn_round::Step::Newton(n)) = c.step.as_mut() {
            n.standardisation.as_mut().unwrap().sd[0] = 1e-12;
        }
    });
    assert!(parse(&step).unwrap_err().contains("standard deviation"));
    // A held-out set of one customer in ten thousand.
    let e = parse(&with_churn(base.clone(), |c| c.test_fraction_bp = 1)).unwrap_err();
    assert!(e.contains("1000..=5000"), "{e}");
    // FedAvg with lr·λ = 1 (every step resets the weights to one example's features),
    // and with mini-batches of one.
    let fedavg = |lr: f64, lambda: f64, batch: u32| {
        with_churn(base.clone(), |c| {
            c.step = Some(pb::churn_round::Step::Fedavg(pb::ChurnFedAvg {
                standardisation: Some(pb::Standardisation { mean: standardiser().mean, sd: standardiser().sd }),
                weights: vec![0.0; 7],
                learning_rate: lr,
                epochs: 1,
                batch_size: batch,
                batch_seed: 1,
                lambda,
                max_update: 1.0,
                round: 1,
            }))
        })
    };
    assert!(parse(&fedavg(0.5, 1e-3, 64)).is_ok());
    assert!(parse(&fedavg(1.0, 1.0, 64)).unwrap_err().contains("learning_rate × lambda < 1"));
    assert!(parse(&fedavg(0.5, 1e-3, 1)).is_err());
}

#[test]
fn a_model_round_pins_its_per_node_bound_and_fits_64_bit_words() {
    let a = analysis(newton());
    let q = a.kind.query();
    // Whatever the coordinator is configured with, the bound is the query's own.
    assert_eq!(q.per_node_bound(1, 5), q.per_node_bound(1 << 22, 5));
    let bound = q.per_node_bound(0, 5);
    let range = q.range(bound);
    assert!(range.signed);
    assert_eq!(
        fedcrm_analysis::width::pick_width(5, &range),
        Ok(fedcrm_crypto::word::WordWidth::W64),
        "5 nodes at the pinned bound fit signed 64-bit words"
    );
    assert!(!range.fits(5, fedcrm_crypto::word::WordWidth::W32));
    // The bound is the most examples that fit: 2^(63 − 38) − 1 over the 5 nodes.
    assert_eq!(bound, ((1u64 << 25) - 1) / 5);
}

/// Issue 11 under DP: a round's mechanism parameters round-trip, set the padded length,
/// the pinned per-node bound N, the sensitivity c/γ + √d' and the range ⌈N·c/γ⌉; out of
/// range, non-finite or FedAvg ones are refused when parsed.
#[test]
fn dp_parameters_round_trip_and_nonsense_is_refused_when_parsed() {
    let mut a = analysis(newton());
    let AnalysisKind::Churn(c) = &mut a.kind else { unreachable!() };
    c.dp = Some(ModelDp {
        clip: 5.5,
        gamma: 0.01,
        rotation_seed: [3; 32],
        max_rounds: 8,
        max_customers: 1 << 20,
        round_rho: 0.01,
        round_xi: 0.0,
    });
    let back = Analysis::try_from(&pb::Analysis::from(&a)).unwrap();
    assert_eq!(back, a);
    let q = back.kind.query();
    // Newton over 6 features: 2 + 7 + 28 = 37 reals → 64 words.
    assert_eq!(q.vector_len(), 64);
    assert_eq!(q.per_node_bound(1 << 22, 5), 1 << 20);
    assert!((q.sensitivity().l2 - (550.0 + 8.0)).abs() < 1e-6);
    assert_eq!(q.range(1 << 20).max_abs, 550 << 20);
    assert!(q.noise_supported());
    let base = churn_pb(&a);
    let bad = |f: fn(&mut pb::ModelDp)| parse(&with_churn(base.clone(), |c| f(c.dp.as_mut().unwrap()))).unwrap_err();
    assert!(bad(|d| d.gamma = f64::NAN).contains("dp.clip"));
    assert!(bad(|d| d.clip = -1.0).contains("dp.clip"));
    assert!(bad(|d| d.rotation_seed = vec![1; 31]).contains("32 bytes"));
    assert!(bad(|d| d.max_rounds = 0).contains("dp.max_rounds"));
    assert!(bad(|d| d.round_rho = f64::INFINITY).contains("dp.round_rho"));
    assert!(bad(|d| d.max_customers = 0).contains("customers per node"));
    assert!(bad(|d| d.gamma = 1e-300).contains("too fine"));
    let fedavg = with_churn(base, |c| {
        c.step = Some(pb::churn_round::Step::Fedavg(pb::ChurnFedAvg {
            standardisation: Some(pb::Standardisation { mean: standardiser().mean, sd: standardiser().sd }),
            weights: vec![0.0; 7],
            learning_rate: 0.5,
            epochs: 1,
            batch_size: 0,
            batch_seed: 1,
            lambda: 1e-3,
            max_update: 1.0,
            round: 1,
        }))
    });
    assert!(parse(&fedavg).unwrap_err().contains("train with Newton under DP"));
    // An exact churn round takes no noise.
    assert!(!analysis(newton()).kind.query().noise_supported());
}
