//! Every decoder of a summed word vector never panics on arbitrary words (of any
//! length), and whatever it returns can be used without panicking: a wrong length is an
//! error, any words of the right length decode to finite numbers.

use fedcrm_model::eval::{self, EvalLayout};
use fedcrm_model::features::FeatureSpec;
use fedcrm_model::fedavg::{self, Server, ServerOptimizer};
use fedcrm_model::logistic;
use fedcrm_model::standardise::{self, Standardiser};
use proptest::prelude::*;

fn words(max: usize) -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        proptest::collection::vec(any::<u64>(), 0..max),
        proptest::collection::vec(prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 63), any::<u64>()], 0..max),
    ]
}

proptest! {
    #[test]
    fn newton_sums(d in 0usize..8, w in words(60)) {
        if let Ok(sums) = logistic::decode_newton(d, &w) {
            prop_assert_eq!(w.len(), logistic::newton_len(d));
            prop_assert!(sums.gradient.iter().chain(sums.hessian.iter()).all(|v| v.is_finite()));
            let _ = logistic::newton_step(&vec![0.0; d + 1], &sums, 1e-3);
        }
    }

    #[test]
    fn fedavg_updates(d in 0usize..8, w in words(12)) {
        if let Ok(sums) = fedavg::decode_update(d, &w) {
            let mut server = Server::new(ServerOptimizer::Adam { lr: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 }, d + 1);
            let _ = server.apply(&vec![0.0; d + 1], &sums);
        }
    }

    #[test]
    fn evaluation_sums(bins in 1usize..20, segments in 0usize..5, w in words(90)) {
        let layout = EvalLayout { bins, segments };
        if let Ok(sums) = eval::decode_eval(layout, &w) {
            let _ = (sums.auc(), sums.log_loss(), sums.accuracy());
        }
    }

    #[test]
    fn moments(w in words(20)) {
        let spec = FeatureSpec::reduced();
        if let Ok(m) = standardise::decode_moments(&spec, &w)
            && let Ok(s) = Standardiser::from_moments(&m)
        {
            let z = s.apply(&[1.0; 6]);
            prop_assert!(z.iter().all(|v| v.is_finite() && v.abs() <= standardise::Z_CLIP));
        }
    }
}
