//! The coordinator's optimiser for the buy-till-you-die fits: BFGS over the
//! log-parameters with a backtracking (Armijo) line search, driven one evaluation at a
//! time — [`Bfgs::next`] names the point to evaluate, the caller evaluates the objective
//! and its gradient there (federated: one secure round of the nodes' sums) and hands
//! them back. No evaluation is ever repeated, and the optimiser never needs more than
//! the function value and the gradient.
//!
//! The objective is the mean negative log-likelihood −(Σ ln Lᵢ)/n over log-parameters
//! θ; dividing by n keeps the tolerances independent of the population's size.
//!
//! **Stopping** ([`Stopping`]): the largest gradient component is at most `gradient`
//! (converged), or three accepted steps in a row changed the objective by at most
//! `relative` of its size (or its rounding `noise`) without shrinking the gradient by a
//! tenth (converged: no further progress in the precision available), or
//! `max_evaluations` were used (not converged — reported as such, never as a fit).

use serde::{Deserialize, Serialize};

/// The box the CLV fits keep their log-parameters in: e^±15 spans every plausible rate,
/// shape and spend scale (in days or weeks, yuan or dollars), well inside what a round may
/// carry (`fedcrm_protocol::wire::clv::MAX_LOG_PARAM`), and keeps each customer's terms
/// far below the encoding's bound.
pub const FIT_BOUND: f64 = 15.0;

/// When the optimiser stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    /// Largest |∂f/∂θ_k| at which the fit has converged.
    pub gradient: f64,
    /// Relative objective change of an accepted step treated as no progress.
    pub relative: f64,
    /// Most evaluations (federated: secure rounds).
    pub max_evaluations: u32,
    /// How far the objective may be off by rounding (federated: the fixed-point decode
    /// error of the summed log-likelihood over the number of customers). Near the optimum
    /// the objective changes by less than this while the gradient — as precise, but
    /// still far from 0 — keeps pointing the way, so there a step that shrinks the
    /// gradient is accepted even if the rounded objective did not go down.
    pub noise: f64,
    /// Every log-parameter stays within ±`bound`: no step leaves the box, and a
    /// parameter on its edge whose gradient points out stays there.
    pub bound: f64,
    /// A noised objective (a fit under differential privacy, whose rounds are planned
    /// and budgeted in advance): its value is no guide near the optimum, so the line
    /// search follows the slope along the direction instead — a step is too long when the
    /// slope at the trial turned up by more than half the slope at the start, and is then
    /// shortened to where the slope, linear between the two, is zero — and steps that
    /// change the objective by less than its noise are no sign of convergence: the
    /// optimiser stops only at the gradient tolerance or at `max_evaluations`, never for
    /// [`Reason::NoProgress`].
    #[serde(default)]
    pub noised: bool,
}

impl Default for Stopping {
    fn default() -> Self {
        Self { gradient: 1e-9, relative: 1e-14, max_evaluations: 200, noise: 0.0, bound: f64::INFINITY, noised: false }
    }
}

/// Why the optimiser stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The gradient is within the tolerance.
    Gradient,
    /// Three accepted steps in a row changed neither the objective nor the gradient.
    NoProgress,
    /// The line search could not decrease the objective any more (a step shorter than
    /// 10⁻²⁰ of the direction): at the optimum to machine precision.
    LineSearch,
    /// Out of evaluations: **not** converged.
    MaxEvaluations,
    /// The likelihood still rises towards a bound of the box (`Stopping::bound`): the data
    /// do not identify the parameter there (e.g. spend that hardly varies between
    /// customers sends Gamma-Gamma's q and γ to infinity together). Stopped at the best
    /// point inside the box, which the caller reports as such.
    Bound,
}

impl Reason {
    pub fn converged(self) -> bool {
        self != Reason::MaxEvaluations
    }
}

/// The optimiser's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimum {
    pub theta: Vec<f64>,
    /// The objective (mean negative log-likelihood) at `theta`.
    pub value: f64,
    pub gradient: Vec<f64>,
    pub evaluations: u32,
    pub reason: Reason,
}

/// What the optimiser wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Evaluate the objective and its gradient at these log-parameters.
    Evaluate(Vec<f64>),
    Done(Optimum),
}

/// Why an evaluation could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("the objective at the starting point is not finite ({value}); start elsewhere")]
    BadStart { value: f64 },
    #[error("the gradient has {got} components, the parameters {expected}")]
    Dimension { got: usize, expected: usize },
    #[error("told an evaluation the optimiser did not ask for")]
    NotAsked,
}

/// BFGS state.
#[derive(Debug, Clone)]
pub struct Bfgs {
    stopping: Stopping,
    /// The accepted point, its value and gradient (after the first evaluation).
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    /// Inverse Hessian approximation, row-major d × d.
    h: Vec<f64>,
    /// The line search: direction, step length, and the trial point asked for.
    direction: Vec<f64>,
    step: f64,
    trial: Option<Vec<f64>>,
    started: bool,
    updated: bool,
    evaluations: u32,
    stalls: u32,
    done: Option<Optimum>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Bfgs {
    pub fn new(theta0: Vec<f64>, stopping: Stopping) -> Self {
        let d = theta0.len();
        let mut h = vec![0.0; d * d];
        for i in 0..d {
            h[i * d + i] = 1.0;
        }
        Self {
            stopping,
            trial: Some(theta0.clone()),
            x: theta0,
            f: f64::INFINITY,
            g: vec![0.0; d],
            h,
            direction: vec![0.0; d],
            step: 1.0,
            started: false,
            updated: false,
            evaluations: 0,
            stalls: 0,
            done: None,
        }
    }

    /// The objective's rounding ([`Stopping::noise`]), known once the population is.
    pub fn set_noise(&mut self, noise: f64) {
        self.stopping.noise = noise;
    }

    pub fn evaluations(&self) -> u32 {
        self.evaluations
    }

    /// The next point to evaluate, or the result.
    pub fn next(&self) -> Next {
        match (&self.done, &self.trial) {
            (Some(done), _) => Next::Done(done.clone()),
            (None, Some(t)) => Next::Evaluate(t.clone()),
            (None, None) => unreachable!("a running optimiser always has a trial point"),
        }
    }

    fn finish(&mut self, reason: Reason) {
        self.trial = None;
        self.done = Some(Optimum {
            theta: self.x.clone(),
            value: self.f,
            gradient: self.g.clone(),
            evaluations: self.evaluations,
            reason,
        });
    }

    /// A new search direction from the accepted point, and its first trial.
    /// Whether coordinate `k` sits on the box's edge with the descent direction −g
    /// pointing out of it.
    fn pinned(&self, k: usize) -> bool {
        let b = self.stopping.bound;
        (self.x[k] >= b * (1.0 - 1e-12) && self.g[k] < 0.0) || (self.x[k] <= -b * (1.0 - 1e-12) && self.g[k] > 0.0)
    }

    fn search(&mut self) {
        let d = self.x.len();
        let free = |k: usize| !self.pinned(k);
        if (0..d).filter(|&k| free(k)).all(|k| self.g[k].abs() <= self.stopping.gradient) {
            let pinned = (0..d).any(|k| self.pinned(k));
            return self.finish(if pinned { Reason::Bound } else { Reason::Gradient });
        }
        if self.evaluations >= self.stopping.max_evaluations {
            return self.finish(Reason::MaxEvaluations);
        }
        let mut p: Vec<f64> = (0..d).map(|i| -dot(&self.h[i * d..(i + 1) * d], &self.g)).collect();
        // Not a descent direction (H lost positive definiteness), or not a number (H
        // overflowed, e.g. on noised curvature): steepest descent from a fresh H.
        let descent = dot(&p, &self.g) < 0.0 && p.iter().all(|v| v.is_finite());
        if !descent {
            p = self.g.iter().map(|v| -v).collect();
            self.h.iter_mut().enumerate().for_each(|(k, v)| *v = if k % (d + 1) == 0 { 1.0 } else { 0.0 });
            self.updated = false;
        }
        // No coordinate on the box's edge moves out of it (pinned ones do not move at
        // all); if that leaves no descent, projected steepest descent from a fresh H.
        let b = self.stopping.bound;
        let out = |x: f64, v: f64| (x >= b * (1.0 - 1e-12) && v > 0.0) || (x <= -b * (1.0 - 1e-12) && v < 0.0);
        let project = |p: &mut Vec<f64>, x: &[f64]| {
            for (v, x) in p.iter_mut().zip(x) {
                if out(*x, *v) {
                    *v = 0.0;
                }
            }
        };
        project(&mut p, &self.x);
        if p.iter().all(|v| *v == 0.0) || dot(&p, &self.g) >= 0.0 {
            p = self.g.iter().map(|v| -v).collect();
            project(&mut p, &self.x);
            self.h.iter_mut().enumerate().for_each(|(k, v)| *v = if k % (d + 1) == 0 { 1.0 } else { 0.0 });
            self.updated = false;
        }
        // The first step, before any curvature is known, moves at most 1 in θ — with a
        // noised objective every step does, as its curvature is noised too; no step leaves
        // the box.
        let longest = p.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let capped = !self.updated || self.stopping.noised;
        self.step = if !capped || longest <= 1.0 { 1.0 } else { 1.0 / longest };
        for (x, v) in self.x.iter().zip(&p) {
            if *v > 0.0 {
                self.step = self.step.min((b - x) / v);
            } else if *v < 0.0 {
                self.step = self.step.min((-b - x) / v);
            }
        }
        if self.step <= 0.0 || longest == 0.0 {
            return self.finish(Reason::Bound);
        }
        self.direction = p;
        self.trial = Some(self.x.iter().zip(&self.direction).map(|(x, p)| x + self.step * p).collect());
    }

    /// The objective's value and gradient at the point [`Bfgs::next`] named.
    pub fn tell(&mut self, value: f64, gradient: Vec<f64>) -> Result<(), FitError> {
        let Some(trial) = self.trial.take() else { return Err(FitError::NotAsked) };
        if gradient.len() != self.x.len() {
            self.trial = Some(trial);
            return Err(FitError::Dimension { got: gradient.len(), expected: self.x.len() });
        }
        self.evaluations += 1;
        let finite = value.is_finite() && gradient.iter().all(|v| v.is_finite());
        if !self.started {
            if !finite {
                self.evaluations -= 1;
                self.trial = Some(trial);
                return Err(FitError::BadStart { value });
            }
            self.started = true;
            (self.x, self.f, self.g) = (trial, value, gradient);
            self.search();
            return Ok(());
        }
        let slope = dot(&self.g, &self.direction);
        let largest = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let in_noise = finite && value - self.f <= self.stopping.noise && largest(&gradient) < largest(&self.g);
        // A noised objective: its value is no guide near the optimum, the slope along the
        // direction is — a step is too long when the slope at the trial turned up by more
        // than half the slope at the start.
        let trial_slope = dot(&gradient, &self.direction);
        let too_long = if self.stopping.noised {
            !finite || trial_slope > 0.5 * slope.abs()
        } else {
            !finite || (value > self.f + 1e-4 * self.step * slope && !in_noise)
        };
        if too_long {
            // Backtrack: the minimum of the quadratic through f, the slope and the trial
            // (noised: the zero of the slope, linear between the start and the trial),
            // kept within [0.1, 0.5] of the step.
            let quadratic = if !finite {
                0.1 * self.step
            } else if self.stopping.noised {
                self.step * -slope / (trial_slope - slope)
            } else {
                -slope * self.step * self.step / (2.0 * (value - self.f - slope * self.step))
            };
            self.step = quadratic.clamp(0.1 * self.step, 0.5 * self.step);
            if self.step < 1e-20 || self.evaluations >= self.stopping.max_evaluations {
                let reason = if self.evaluations >= self.stopping.max_evaluations {
                    Reason::MaxEvaluations
                } else {
                    Reason::LineSearch
                };
                self.finish(reason);
                return Ok(());
            }
            self.trial = Some(self.x.iter().zip(&self.direction).map(|(x, p)| x + self.step * p).collect());
            return Ok(());
        }
        // Accepted: the BFGS update of the inverse Hessian with s = x' − x, y = g' − g.
        let d = self.x.len();
        let s: Vec<f64> = trial.iter().zip(&self.x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gradient.iter().zip(&self.g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            if !self.updated {
                // Scale the identity to the curvature seen (Nocedal & Wright, eq. 6.20).
                let scale = sy / dot(&y, &y);
                self.h.iter_mut().for_each(|v| *v *= scale);
                self.updated = true;
            }
            let rho = 1.0 / sy;
            let hy: Vec<f64> = (0..d).map(|i| dot(&self.h[i * d..(i + 1) * d], &y)).collect();
            let yhy = dot(&y, &hy);
            for i in 0..d {
                for j in 0..d {
                    self.h[i * d + j] += -rho * (hy[i] * s[j] + s[i] * hy[j]) + (rho * rho * yhy + rho) * s[i] * s[j];
                }
            }
        }
        let change = (self.f - value).abs();
        let flat = change <= (self.stopping.relative * value.abs().max(1.0)).max(self.stopping.noise);
        let shrank = largest(&gradient) < 0.9 * largest(&self.g);
        self.stalls = if flat && !shrank { self.stalls + 1 } else { 0 };
        (self.x, self.f, self.g) = (trial, value, gradient);
        if self.stalls >= 3 && !self.stopping.noised {
            self.finish(Reason::NoProgress);
            return Ok(());
        }
        self.search();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rosenbrock's valley, a classic hard case for line searches.
    fn rosenbrock(x: &[f64]) -> (f64, Vec<f64>) {
        let (a, b) = (x[0], x[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        (f, vec![-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)])
    }

    fn run(f: impl Fn(&[f64]) -> (f64, Vec<f64>), x0: Vec<f64>) -> Optimum {
        let mut opt = Bfgs::new(x0, Stopping::default());
        loop {
            match opt.next() {
                Next::Evaluate(x) => {
                    let (v, g) = f(&x);
                    opt.tell(v, g).unwrap();
                }
                Next::Done(o) => return o,
            }
        }
    }

    #[test]
    fn it_finds_the_minimum_of_a_valley_and_of_a_bowl() {
        let o = run(rosenbrock, vec![-1.2, 1.0]);
        assert!(o.reason.converged(), "{o:?}");
        assert!((o.theta[0] - 1.0).abs() < 1e-6 && (o.theta[1] - 1.0).abs() < 1e-6, "{o:?}");
        // A badly scaled quadratic: exact in a handful of steps.
        let o =
            run(|x| (x[0] * x[0] + 1e4 * (x[1] - 3.0).powi(2), vec![2.0 * x[0], 2e4 * (x[1] - 3.0)]), vec![5.0, 0.0]);
        assert!(o.reason.converged() && o.evaluations < 60, "{o:?}");
        assert!(o.theta[0].abs() < 1e-8 && (o.theta[1] - 3.0).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn a_non_finite_value_shortens_the_step_and_a_bad_start_is_refused() {
        // ln is undefined below 0: the search must back off rather than stop.
        let o = run(
            |x| if x[0] <= 0.0 { (f64::NAN, vec![0.0]) } else { (x[0] - x[0].ln(), vec![1.0 - 1.0 / x[0]]) },
            vec![8.0],
        );
        assert!(o.reason.converged() && (o.theta[0] - 1.0).abs() < 1e-7, "{o:?}");
        let mut opt = Bfgs::new(vec![0.0], Stopping::default());
        assert_eq!(opt.tell(f64::INFINITY, vec![0.0]), Err(FitError::BadStart { value: f64::INFINITY }));
        let mut opt2 = Bfgs::new(vec![0.0], Stopping::default());
        assert_eq!(opt2.tell(1.0, vec![0.0, 1.0]), Err(FitError::Dimension { got: 2, expected: 1 }));
        // The caller may stop there; the optimiser still names its start, never panics.
        assert_eq!(opt.next(), Next::Evaluate(vec![0.0]));
    }

    /// A likelihood that keeps rising towards the edge stops there, saying so; the
    /// other coordinate still finds its optimum.
    #[test]
    fn a_parameter_the_data_do_not_identify_stops_at_the_box_edge() {
        let mut opt = Bfgs::new(vec![0.0, 0.0], Stopping { bound: 5.0, ..Stopping::default() });
        let o = loop {
            match opt.next() {
                Next::Evaluate(x) => {
                    assert!(x.iter().all(|v| v.abs() <= 5.0 + 1e-9), "{x:?} left the box");
                    opt.tell((x[0] - 1.0).powi(2) - x[1], vec![2.0 * (x[0] - 1.0), -1.0]).unwrap();
                }
                Next::Done(o) => break o,
            }
        };
        assert_eq!(o.reason, Reason::Bound, "{o:?}");
        assert!((o.theta[0] - 1.0).abs() < 1e-7 && (o.theta[1] - 5.0).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn out_of_evaluations_is_reported_as_not_converged() {
        let mut opt = Bfgs::new(vec![-1.2, 1.0], Stopping { max_evaluations: 5, ..Stopping::default() });
        let o = loop {
            match opt.next() {
                Next::Evaluate(x) => {
                    let (v, g) = rosenbrock(&x);
                    opt.tell(v, g).unwrap();
                }
                Next::Done(o) => break o,
            }
        };
        assert_eq!((o.reason, o.evaluations, o.reason.converged()), (Reason::MaxEvaluations, 5, false));
    }

    /// A noised objective: its value is off by far more than the steps change it, its
    /// gradient is exact. The noised line search follows the slope and reaches the
    /// minimum; it never stops for want of progress, only at the tolerance or the
    /// evaluations it was given.
    #[test]
    fn a_noised_objective_is_minimised_by_its_slope_and_never_stopped_for_no_progress() {
        let a = [0.7, -1.3, 2.1];
        let mut state = 12_345u64;
        let mut noise = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let stopping =
            Stopping { max_evaluations: 40, noise: 10.0, noised: true, gradient: 1e-10, ..Stopping::default() };
        let mut opt = Bfgs::new(vec![0.0; 3], stopping);
        let o = loop {
            match opt.next() {
                Next::Evaluate(x) => {
                    let f = 0.5 * x.iter().zip(&a).map(|(x, a)| (x - a) * (x - a) * 3.0).sum::<f64>() + 20.0 * noise();
                    let g = x.iter().zip(&a).map(|(x, a)| 3.0 * (x - a)).collect();
                    opt.tell(f, g).unwrap();
                }
                Next::Done(o) => break o,
            }
        };
        assert!(o.reason == Reason::Gradient || o.reason == Reason::MaxEvaluations, "{o:?}");
        assert!(o.theta.iter().zip(&a).all(|(x, a)| (x - a).abs() < 1e-8), "{o:?}");
    }
}
