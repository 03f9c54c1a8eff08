//! Per-round cost of key agreement once per analysis (`multiround`) against a fresh
//! SecAgg round (`secagg`) for n = 50 nodes, d = 10,000 words, full SecAgg, one node
//! dropping before masking in each round: all nodes' client work, and the server's
//! unmasking, in wall-clock time on this machine. Not a benchmark with statistics, and
//! never an assertion: it shows where the X25519 work goes (setup only, in `multiround`;
//! every round, and again at unmasking for each dropped node, in `secagg`).
//!
//! `cargo run -p fedcrm-crypto --example multiround_cost --release [n] [d]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fedcrm_crypto::multiround::{Analysis, Member, Setup, ViewCheck};
use fedcrm_crypto::secagg::{self, Aggregator, ClientAdvertised, PeerKeys, RoundParams, Topology, WordWidth};
use fedcrm_crypto::{RoundId, SystemRandom};

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

type Inbox = BTreeMap<String, Vec<(String, Vec<u8>)>>;

/// Runs `f`, adding its time to `clock`.
fn timed<T>(clock: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *clock += start.elapsed();
    out
}

/// Each survivor answers the unmask request (client work, timed).
fn answer<M, R>(
    clock: &mut Duration,
    masked: Vec<(String, M)>,
    mut unmask: impl FnMut(&str, M) -> R,
) -> Vec<(String, R)> {
    masked
        .into_iter()
        .map(|(me, m)| {
            let r = timed(clock, || unmask(&me, m));
            (me, r)
        })
        .collect()
}

/// One `multiround` round in which `drop` shares and then drops. Returns (all
/// clients' time, the server's unmasking time).
fn multiround_round(
    members: &mut BTreeMap<String, Member>,
    analysis: &mut Analysis,
    contributors: &[String],
    drop: &str,
    params: &RoundParams,
    input: &[u64],
) -> (Duration, Duration) {
    let rng = SystemRandom::new();
    let (mut client, mut server) = (Duration::ZERO, Duration::ZERO);
    let mut inbox = Inbox::new();
    let mut masked = Vec::new();
    let mut shared = BTreeMap::new();
    for (me, m) in members.iter_mut().filter(|(v, _)| contributors.contains(*v)) {
        let (s, out) = timed(&mut client, || m.round(params.clone(), contributors, &rng).unwrap());
        out.into_iter().for_each(|(to, ct)| inbox.entry(to).or_default().push((me.clone(), ct)));
        shared.insert(me.clone(), s);
    }
    let mut agg = analysis.round(params.clone(), contributors, contributors).unwrap();
    for (me, s) in shared.into_iter().filter(|(me, _)| me != drop) {
        let member = &members[&me];
        let (m, y) =
            timed(&mut client, || s.receive(member, contributors, &inbox[&me]).unwrap().mask(member, input).unwrap());
        agg.add_masked(&me, &y).unwrap();
        masked.push((me, m));
    }
    let unmasking = agg.close(analysis).unwrap();
    let (survivors, dropped) = (unmasking.survivors(), unmasking.dropped());
    let responses = answer(&mut client, masked, |me, m| {
        m.unmask(members.get_mut(me).unwrap(), &survivors, &dropped, ViewCheck::Confirmed).unwrap()
    });
    timed(&mut server, || unmasking.finish_words(&responses).unwrap());
    (client, server)
}

/// One fresh `secagg` round over `contributors` in which `drop` shares and then drops.
fn secagg_round(contributors: &[String], drop: &str, params: &RoundParams, input: &[u64]) -> (Duration, Duration) {
    let rng = SystemRandom::new();
    let (mut client, mut server) = (Duration::ZERO, Duration::ZERO);
    let (adv, u1): (Vec<_>, Vec<PeerKeys>) = timed(&mut client, || {
        contributors.iter().map(|v| ClientAdvertised::new(params.clone(), v, &rng).unwrap()).unzip()
    });
    let mut inbox = Inbox::new();
    let mut shared = Vec::new();
    for (me, c) in contributors.iter().zip(adv) {
        let (s, out) = timed(&mut client, || c.share(u1.clone(), &rng).unwrap());
        out.into_iter().for_each(|(to, ct)| inbox.entry(to).or_default().push((me.clone(), ct)));
        shared.push((me.clone(), s));
    }
    let mut agg = Aggregator::new(params.clone(), u1, contributors).unwrap();
    let masked: Vec<_> = shared
        .into_iter()
        .filter(|(me, _)| me != drop)
        .map(|(me, s)| {
            let (m, y) = timed(&mut client, || s.receive(contributors, &inbox[&me]).unwrap().mask(input).unwrap());
            agg.add_masked(&me, &y).unwrap();
            (me, m)
        })
        .collect();
    let unmasking = agg.close();
    let (survivors, dropped) = (unmasking.survivors(), unmasking.dropped());
    let responses = answer(&mut client, masked, |_, m| m.unmask(&survivors, &dropped).unwrap());
    timed(&mut server, || unmasking.finish_words(&responses).unwrap());
    (client, server)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("n and d are whole numbers"));
    let n = args.next().unwrap_or(50);
    let d = args.next().unwrap_or(10_000);
    let rng = SystemRandom::new();
    let input: Vec<u64> = (0..d as u64).collect();
    let roster: Vec<String> = (0..n).map(name).collect();
    let t = secagg::default_threshold(n - 3);
    let params = || RoundParams { round: RoundId::random(&rng).unwrap(), t, d, width: WordWidth::W32 };

    let start = Instant::now();
    let setup = RoundId::random(&rng).unwrap();
    let (setups, keys): (Vec<Setup>, Vec<PeerKeys>) =
        roster.iter().map(|v| Setup::new(setup, "cost", v, &rng).unwrap()).unzip();
    let mut members: BTreeMap<String, Member> = roster
        .iter()
        .zip(setups)
        .map(|(v, s)| (v.clone(), s.join(keys.clone(), Topology::Complete).unwrap()))
        .collect();
    let mut server = Analysis::new(setup, keys, Topology::Complete).unwrap();
    let setup_time = start.elapsed();

    println!("n = {n}, d = {d}, full SecAgg, t = {t}, 32-bit words; one node drops before masking each round");
    println!("all {n} clients' time (ms) | server unmasking (ms)");
    println!("multiround setup (2 × {} X25519 per node, once): {:.1}", n - 1, ms(setup_time));
    let mut contributors = roster.clone();
    for r in 1..=3 {
        let drop = name(r);
        let (c, s) = multiround_round(&mut members, &mut server, &contributors, &drop, &params(), &input);
        println!("multiround round {r}: clients {:.1} | server {:.1}", ms(c), ms(s));
        contributors.retain(|v| *v != drop);
    }
    let mut contributors = roster.clone();
    for r in 1..=3 {
        let drop = name(r);
        let (c, s) = secagg_round(&contributors, &drop, &params(), &input);
        println!("secagg round {r} (fresh keys): clients {:.1} | server {:.1}", ms(c), ms(s));
        contributors.retain(|v| *v != drop);
    }
}
