//! The generic checks of what the node contributes to a round (its contribution
//! itself is the analysis's, [`crate::analyses`]): the check that it fits the round's word width, and (issue 10) the
//! distributed discrete Gaussian noise it adds before masking. The vector never
//! leaves unmasked or un-noised; see [`crate::session`].

use fedcrm_analysis::rules::{self, NodeRules};
use fedcrm_analysis::width::pick_width;
use fedcrm_dp::OsEntropy;
use fedcrm_dp::sampler::DiscreteGaussian;
use fedcrm_protocol::wire::{Noise, RoundStart};
use zeroize::Zeroizing;

/// Issue 9: check a round's word width before taking part, and keep this node's
/// contribution within the per-node bound the width was picked for, or the sum could
/// wrap. The width the round start names must be the one [`pick_width`] gives for this
/// analysis's range over the invited nodes, recomputed here from the signed round start
/// (a label proves nothing). With noise (issue 10) the range is signed and leaves room
/// for the noise ([`fedcrm_protocol::wire::AnalysisKind::range_with`], the function the coordinator picked the
/// width with); the bound applies to the un-noised contribution.
///
/// What a refusal says, and whether the node refuses at all, must not depend on its
/// data beyond what the round is allowed to learn (attack review of issue 10: a
/// refusal naming the count of a one-bin histogram would hand HQ an exact count,
/// un-noised and uncharged). So:
/// - in a **noised** round every word is clamped to the bound (changing a customer
///   still moves a clamped word by at most one: the sensitivity is unchanged), never
///   refused; the number of clamped words is returned for the node's own log;
/// - in an **exact** round (only for `dp = "optional"` nodes) the node refuses when it
///   holds more customers than the bound — every word counts at most all of its
///   customers, so no word can then exceed it — and the refusal names the setting, not
///   the count (that one bit about the node's size is what an exact round can reveal).
///
/// Errors are the refusal's reason: who is at fault and what HQ must change.
pub fn check_width(start: &RoundStart, customers: usize, input: &mut [u64]) -> Result<usize, String> {
    check_round_width(start)?;
    fit_to_bound(start, customers, input)
}

/// The public half of [`check_width`]: the width the round start names is the one the
/// signed range gives. Depends on the round start only, so a node runs it before it
/// touches its data.
pub fn check_round_width(start: &RoundStart) -> Result<(), String> {
    let n = start.invited.len();
    let bound = start.max_per_node;
    // A query that pins its per-node bound (model rounds) must carry exactly that one:
    // a bound chosen per round would turn the node's refusal into a count oracle.
    let pinned = start.analysis.kind.query().per_node_bound(bound, n);
    if pinned != bound {
        return Err(format!(
            "the round start names max_customers_per_node = {bound}, but {} over {n} invited nodes uses {pinned}; \
             refusing (the coordinator's fault: its round start is inconsistent)",
            start.analysis.kind.name()
        ));
    }
    let expected = pick_width(n, &start.analysis.kind.range_with(bound, start.noise.as_ref(), n)).map_err(|e| {
        format!("the coordinator's round cannot be summed exactly: {e}; the coordinator should not have started it")
    })?;
    if expected != start.width {
        return Err(format!(
            "the round start names {} but {} over {n} invited nodes with max_customers_per_node = {bound} needs {}; \
             refusing (the coordinator's fault: its round start is inconsistent)",
            start.width,
            start.analysis.kind.name(),
            expected
        ));
    }
    Ok(())
}

/// The data half of [`check_width`]: clamp a noised round's counts to the bound (the
/// number clamped is returned), or refuse an exact round when this node holds more
/// customers than the bound.
pub fn fit_to_bound(start: &RoundStart, customers: usize, input: &mut [u64]) -> Result<usize, String> {
    let bound = start.max_per_node;
    // Counts (an unsigned range) are compared word by word; fixed-point reals (a signed
    // range, issue 11) are bounded through the number of examples they sum.
    let counts = !start.analysis.kind.range(bound).signed;
    if start.noise.is_some() {
        // Issue 11: a noised churn round's words are bounded by construction (each
        // customer's term clipped, the node's sum projected into the ball of N·c).
        if !counts {
            return Ok(0);
        }
        let mut clamped = 0;
        for w in input.iter_mut().filter(|w| **w > bound) {
            *w = bound;
            clamped += 1;
        }
        return Ok(clamped);
    }
    if customers as u64 > bound || (counts && input.iter().any(|&v| v > bound)) {
        return Err(format!(
            "this node holds more customers than the round's max_customers_per_node = {bound}, so a count of its \
             {} contribution could exceed it and the sum in {} could wrap; HQ must raise [rounds] \
             max_customers_per_node in the coordinator's configuration (rounds then use 64-bit words from fewer \
             nodes on; the franchisee's `node check` shows how many customers this node holds)",
            start.analysis.kind.name(),
            start.width
        ));
    }
    Ok(0)
}

/// Issue 10: a noised round's k (the nodes whose noise alone must give the guarantee)
/// must be at least 1 and at most t − H − C_own over the invitation, with H the
/// HQ-owned invitees and C_own the colluding nodes this node's own rules assume
/// ([`rules::colluding_nodes`]): colluders and HQ's nodes can subtract their own
/// noise, so only the noise of t − H − C_own survivors is certain to be in a released
/// sum. A larger k would calibrate the noise for more honest nodes than this node can
/// count on. In SecAgg+ `t` is the neighbourhood threshold t_k, which only makes the
/// bound smaller (stricter).
pub fn check_noise(start: &RoundStart, own_rules: &NodeRules, own_organisation: &str) -> Result<(), String> {
    let Some(noise) = &start.noise else {
        if start.analysis.kind.query().noise_required() {
            return Err(format!(
                "the round's {} computation carries a differential-privacy mechanism but the round carries no noise; \
                 refusing (the coordinator's fault: a round with the mechanism is noised, or it is an exact round \
                 without it)",
                start.analysis.kind.name()
            ));
        }
        return Ok(());
    };
    if !start.analysis.kind.query().noise_supported() {
        return Err(format!(
            "the round asks for noise on {}, whose words are neither counts nor a model round's per-customer \
             mechanism (issue 11: its dp parameters); this node does not take part (the coordinator must send the \
             mechanism, or run it with --dp off where every node's policy allows exact rounds)",
            start.analysis.kind.name()
        ));
    }
    let h = rules::hq_nodes(&start.invited);
    let c = rules::colluding_nodes(own_rules, own_organisation, &start.invited);
    let allowed = start.threshold.saturating_sub(h + c);
    if noise.honest == 0 || noise.honest > allowed {
        return Err(format!(
            "the round's noise (σ² = {} per node) is calibrated for k = {} honest nodes, but with threshold t = {}, \
             H = {h} HQ-owned invitees and C = {c} nodes this node's policy assumes colluding \
             (assume_colluding_nodes = {}), only t − H − C = {allowed} are certain (rule: 1 ≤ k ≤ t − H − C); \
             refusing (the coordinator must calibrate for fewer honest nodes)",
            noise.variance, noise.honest, start.threshold, own_rules.assume_colluding_nodes
        ));
    }
    Ok(())
}

/// Issue 10: add N_Z(0, σ²) noise, sampled exactly from the OS CSPRNG, to every word
/// of `input` modulo 2^width (two's complement: the sum is decoded as signed). Call it
/// after [`check_width`] checked the un-noised contribution. The noise is zeroized.
pub fn add_noise(input: &mut [u64], noise: &Noise, bits: u32) -> Result<(), String> {
    let samples = Zeroizing::new(
        DiscreteGaussian::new(noise.variance.clone())
            .samples(input.len(), &mut OsEntropy::new())
            .map_err(|e| format!("cannot sample the round's noise: {e}"))?,
    );
    let modulus = 1i128 << bits;
    for (x, e) in input.iter_mut().zip(samples.iter()) {
        *x = (*x as i128 + *e as i128).rem_euclid(modulus) as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_analysis::date::parse_date;
    use fedcrm_analysis::rfm::Cuts;
    use fedcrm_analysis::rules::Invitee;
    use fedcrm_crypto::RoundId;
    use fedcrm_crypto::word::WordWidth;
    use fedcrm_pki::OrgKind;
    use fedcrm_protocol::wire::{Analysis, AnalysisKind};

    fn start(n: usize, width: WordWidth, max_per_node: u64) -> RoundStart {
        RoundStart {
            round: RoundId([1; 16]),
            threshold: 2,
            length: 4,
            width,
            max_per_node,
            degree: 0,
            setup: None,
            analysis: Analysis {
                reference_date: parse_date("1997-09-30").unwrap(),
                purpose: "p".into(),
                requested_by: "a".into(),
                requested_by_organisation: "HQ".into(),
                analysis_id: "id".into(),
                analysis_kind: "rfm-segments".into(),
                kind: AnalysisKind::RfmSegments(Cuts::default()),
            },
            invited: (0..n)
                .map(|i| Invitee { name: format!("n{i:04}"), organisation: "o".into(), kind: OrgKind::Franchisee })
                .collect(),
            chunk_elements: 10,
            roster_signature: vec![],
            noise: None,
        }
    }

    /// Attack review of issue 11: a model round's per-node bound is the query's own; a
    /// bound HQ picks per round (to make the node's refusal answer "more than B
    /// examples?") is refused before the node touches its data.
    #[test]
    fn a_model_round_with_another_per_node_bound_is_refused() {
        use fedcrm_protocol::wire::churn::{ChurnRound, ChurnSetup, ChurnStep};
        let mut s = start(5, WordWidth::W64, 0);
        s.analysis.kind = AnalysisKind::Churn(Box::new(ChurnRound {
            setup: ChurnSetup {
                spec: fedcrm_model::features::FeatureSpec::reduced(),
                horizon_days: 273,
                holdout_key: [1; 32],
                test_fraction_bp: 3000,
            },
            step: ChurnStep::Moments,
            dp: None,
        }));
        let pinned = s.analysis.kind.query().per_node_bound(0, 5);
        s.max_per_node = pinned;
        assert_eq!(check_round_width(&s), Ok(()));
        for probe in [pinned - 1, 1000, 1 << 22] {
            s.max_per_node = probe;
            let e = check_round_width(&s).unwrap_err();
            assert!(e.contains(&format!("uses {pinned}")), "{e}");
        }
    }

    #[test]
    fn the_width_is_recomputed_not_trusted() {
        assert_eq!(check_width(&start(50, WordWidth::W32, 1 << 22), 10, &mut [1, 2, 3, 4]), Ok(0));
        let e = check_width(&start(50, WordWidth::W64, 1 << 22), 10, &mut [1, 2, 3, 4]).unwrap_err();
        assert!(
            e.contains("names 64-bit words") && e.contains("needs 32-bit words") && e.contains("coordinator"),
            "{e}"
        );
        assert_eq!(check_width(&start(1024, WordWidth::W64, 1 << 22), 10, &mut [1, 2, 3, 4]), Ok(0));
        let e = check_width(&start(1024, WordWidth::W32, 1 << 22), 10, &mut [1, 2, 3, 4]).unwrap_err();
        assert!(e.contains("needs 64-bit words"), "{e}");
    }

    #[test]
    fn an_exact_contribution_above_the_bound_is_refused_naming_the_setting_not_the_data() {
        let s = start(3, WordWidth::W32, 100);
        assert_eq!(check_width(&s, 100, &mut [100, 0, 0, 0]), Ok(0));
        // More customers than the bound: refused, whatever the bins hold.
        for input in [[1u64, 101, 48, 0], [1, 2, 3, 4]] {
            let e = check_width(&s, 150, &mut input.clone()).unwrap_err();
            assert!(e.contains("raise [rounds] max_customers_per_node") && e.contains("= 100"), "{e}");
            // Nothing derived from the data: neither the count of customers nor of a bin.
            assert!(!e.contains("150") && !e.contains("101") && !e.contains("element"), "{e}");
        }
    }

    #[test]
    fn a_noised_contribution_is_clamped_to_the_bound_never_refused() {
        // Attack review: a refusal depending on a crafted one-bin histogram's count
        // would leak the count. Noised rounds clamp instead, whatever the data.
        let s = noised(start(3, WordWidth::W32, 100), 4, 1);
        let mut input = [1u64, 101, 48, 250];
        assert_eq!(check_width(&s, 300, &mut input), Ok(2));
        assert_eq!(input, [1, 100, 48, 100]);
        let mut small = [1u64, 2, 3, 4];
        assert_eq!(check_width(&s, 5, &mut small), Ok(0));
        assert_eq!(small, [1, 2, 3, 4]);
    }

    fn noised(mut s: RoundStart, num: u64, honest: usize) -> RoundStart {
        s.noise = Some(Noise { variance: fedcrm_dp::sampler::Variance::integer(num).unwrap(), honest });
        s
    }

    #[test]
    fn a_noised_round_is_signed_and_leaves_room_for_the_noise() {
        // 1,000 nodes × 2^22 fits 32 unsigned bits (exact), but not 31 (signed, noised).
        assert_eq!(check_width(&start(1000, WordWidth::W32, 1 << 22), 10, &mut [1, 2, 3, 4]), Ok(0));
        let s = noised(start(1000, WordWidth::W64, 1 << 22), 4, 10);
        assert_eq!(check_width(&s, 10, &mut [1, 2, 3, 4]), Ok(0));
        let e = check_width(&noised(start(1000, WordWidth::W32, 1 << 22), 4, 10), 10, &mut [1, 2, 3, 4]).unwrap_err();
        assert!(e.contains("needs 64-bit words"), "{e}");
        // The noise tail counts too: 2^31 − 1 − tail fits signed 32 bits, one more does not.
        let tail = fedcrm_dp::accounting::noise_tail(1, 4.0);
        let edge = |bound| noised(start(1, WordWidth::W32, bound), 4, 1);
        assert_eq!(check_width(&edge((1 << 31) - 1 - tail), 10, &mut [1, 2, 3, 4]), Ok(0));
        assert!(
            check_width(&edge((1 << 31) - tail), 10, &mut [1, 2, 3, 4]).unwrap_err().contains("needs 64-bit words")
        );
        // Small bounds still fit 32 signed bits.
        assert_eq!(check_width(&noised(start(5, WordWidth::W32, 1000), 4, 1), 10, &mut [1, 2, 3, 4]), Ok(0));
    }

    #[test]
    fn a_node_refuses_noise_calibrated_for_more_honest_nodes_than_its_rules_allow() {
        // 5 franchisees of 5 organisations and one HQ node, t = 5; this node (org "o0")
        // assumes 1 colluding organisation: t − H − C = 5 − 1 − 1 = 3.
        let mut s = start(6, WordWidth::W32, 1000);
        s.threshold = 5;
        for (i, m) in s.invited.iter_mut().enumerate() {
            m.organisation = format!("o{i}");
        }
        s.invited[5].kind = OrgKind::Hq;
        let rules = NodeRules { assume_colluding_nodes: 1, ..NodeRules::default() };
        assert_eq!(check_noise(&s, &rules, "o0"), Ok(()));
        assert_eq!(check_noise(&noised(s.clone(), 4, 3), &rules, "o0"), Ok(()));
        assert_eq!(check_noise(&noised(s.clone(), 4, 1), &rules, "o0"), Ok(()));
        let e = check_noise(&noised(s.clone(), 4, 4), &rules, "o0").unwrap_err();
        assert!(e.contains("k = 4") && e.contains("t − H − C = 3") && e.contains("assume_colluding_nodes = 1"), "{e}");
        assert!(check_noise(&noised(s.clone(), 4, 0), &rules, "o0").unwrap_err().contains("1 ≤ k"));
        // A node assuming two colluding organisations allows only k ≤ 2.
        let wary = NodeRules { assume_colluding_nodes: 2, ..NodeRules::default() };
        assert!(check_noise(&noised(s, 4, 3), &wary, "o0").unwrap_err().contains("t − H − C = 2"));
    }

    /// Attack review of issue 13, H1: a model round carrying its DP mechanism but no
    /// noise would be an exact round without the exact round's rules (no minimum on the
    /// node's customers, no withholding, HQ's per-node bound), answered un-noised. A node
    /// refuses it before touching its data, whatever its own policy allows; the same
    /// round with noise, or without the mechanism, is the coordinator's to ask.
    #[test]
    fn a_model_round_with_its_dp_mechanism_but_no_noise_is_refused() {
        use fedcrm_model::clv::summary::TimeUnit;
        use fedcrm_model::clv::sums::{Likelihood, TermClips};
        use fedcrm_protocol::wire::churn::ModelDp;
        use fedcrm_protocol::wire::clv::{ClvDp, ClvRound, ClvSetup};
        let mechanism = ModelDp {
            clip: 6f64.sqrt(),
            gamma: 1e-6,
            rotation_seed: [3; 32],
            max_rounds: 34,
            max_customers: 1 << 20,
            round_rho: 0.01,
            round_xi: 0.0,
        };
        let clips = TermClips::default_for(Likelihood::BgNbd, TimeUnit::Weeks);
        let round = ClvRound {
            setup: ClvSetup {
                unit: TimeUnit::Weeks,
                first_purchase: Some((parse_date("1997-03-01").unwrap(), parse_date("1997-03-31").unwrap())),
            },
            likelihood: Likelihood::BgNbd,
            log_params: vec![0.0; 4],
            dp: Some(ClvDp { mechanism, clips }),
        };
        let mut s = start(5, WordWidth::W64, 0);
        s.analysis.kind = AnalysisKind::Clv(Box::new(round.clone()));
        let rules = NodeRules::default();
        let e = check_noise(&s, &rules, "o0").unwrap_err();
        assert!(e.contains("carries a differential-privacy mechanism but the round carries no noise"), "{e}");
        assert_eq!(check_noise(&noised(s.clone(), 4, 1), &rules, "o0"), Ok(()));
        s.analysis.kind = AnalysisKind::Clv(Box::new(ClvRound { dp: None, ..round }));
        assert_eq!(check_noise(&s, &rules, "o0"), Ok(()));
    }

    #[test]
    fn noise_wraps_in_twos_complement_of_the_width() {
        let noise = Noise { variance: fedcrm_dp::sampler::Variance::integer(100).unwrap(), honest: 1 };
        let mut v = vec![0u64; 2000];
        add_noise(&mut v, &noise, 32).unwrap();
        let signed: Vec<i64> = v.iter().map(|&w| if w >= 1 << 31 { w as i64 - (1 << 32) } else { w as i64 }).collect();
        assert!(v.iter().all(|&w| w < 1 << 32));
        assert!(signed.iter().any(|&x| x < 0) && signed.iter().any(|&x| x > 0));
        // σ = 10: every one of 2,000 samples within 10σ.
        assert!(signed.iter().all(|&x| x.abs() <= 100), "{signed:?}");
        // In 64 bits, −6 plus noise decodes as a small signed value again.
        let mut w = vec![(-6i64) as u64; 100];
        add_noise(&mut w, &noise, 64).unwrap();
        assert!(w.iter().all(|&x| (x as i64 + 6).abs() <= 100));
    }
}
