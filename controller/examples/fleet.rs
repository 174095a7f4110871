//! `bench controller`: a real `lazarus serve` against a simulated fleet (see
//! `tests/sim/mod.rs`), printing
//! `bench controller nodes=N checks_per_s=X cpu_pct=Y p99_detect_s=Z repairs=R` and the goals.
//!
//! `fleet --nodes N --lazarus PATH [--repairs R] [--standbys S] [--window SECS] [--net B]
//! [--workdir DIR]`. N nodes need about N + 4,096 open files: raise `ulimit -n` first (the
//! simulator raises its soft limit to the hard one).

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut nodes, mut repairs, mut standbys, mut window, mut net) = (1000, 100, None, 20, 202u8);
    let (mut lazarus, mut workdir) = (None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--nodes" => nodes = value()?.parse()?,
            "--repairs" => repairs = value()?.parse()?,
            "--standbys" => standbys = Some(value()?.parse()?),
            "--window" => window = value()?.parse()?,
            "--net" => net = value()?.parse()?,
            "--lazarus" => lazarus = Some(value()?),
            "--workdir" => workdir = Some(value()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    let lazarus = lazarus.context("--lazarus PATH is needed")?;
    let limit = sim::raise_nofile();
    // A listening socket per node, plus connections in flight and the agents of repairs.
    let need = nodes as u64 + 4096;
    if limit < need {
        bail!("{nodes} nodes need `ulimit -n` of at least {need} (now {limit})");
    }
    let tmp = tempfile::tempdir()?;
    let workdir = workdir.map_or(tmp.path().to_owned(), Into::into);
    let standbys = standbys.unwrap_or(repairs + repairs / 2);
    let threshold = 3;
    let interval = Duration::from_secs(1);
    let opts = sim::Options {
        nodes,
        standbys,
        net,
        interval,
        timeout: Duration::from_millis(500),
        failure_threshold: threshold,
        max_concurrent_repairs: repairs,
        recover: Duration::from_secs(5),
        lazarus: lazarus.into(),
        workdir,
    };
    let started = Instant::now();
    let mut fleet = sim::Fleet::start(opts)?;
    eprintln!(
        "fleet: {nodes} nodes up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    fleet.wait_all_healthy(Duration::from_secs(120))?;
    // Let the start-up settle (keys loaded, first rounds spread), then measure.
    std::thread::sleep(Duration::from_secs(3));
    let (checks_per_s, cpu_pct) = fleet.measure(Duration::from_secs(window))?;
    eprintln!("fleet: {checks_per_s:.0} checks/s, controller {cpu_pct:.1}% of a core");

    // `repairs` workers, spread over the fleet, fail at once.
    let names = fleet.names();
    let workers = nodes - standbys;
    let step = (workers / repairs.max(1)).max(1);
    let failed: Vec<String> = (0..repairs)
        .map(|k| {
            let i = (k * step + 7) % workers;
            fleet.fail(i);
            names[i].clone()
        })
        .collect();
    let cpu0 = (fleet.controller_cpu()?, Instant::now());
    let back = fleet.wait_repaired(&failed, Duration::from_secs(300))?;
    let repair_cpu = (fleet.controller_cpu()? - cpu0.0) / cpu0.1.elapsed().as_secs_f64() * 100.0;
    let detect = fleet.detect_times(&failed);
    let p99 = sim::percentile(&detect, 99.0);
    let status = fleet.status()?;
    let standby_again = failed
        .iter()
        .filter(|f| {
            status.nodes.iter().any(|n| {
                &n.name == *f
                    && n.role == lazarus_controller::cluster::Role::Standby
                    && n.state == "healthy"
            })
        })
        .count();
    eprintln!(
        "fleet: {} promotions, {back} standby hooks, {standby_again} standby in the API, \
         controller {repair_cpu:.1}% of a core while repairing",
        detect.len()
    );
    // Goals (issue 13): every node checked each interval (5% slack), at most half a core at
    // 10,000 nodes, failure to promotion within the failure threshold's checks plus two
    // intervals, and every repair back as a standby.
    let goal_checks = 0.95 * nodes as f64 / interval.as_secs_f64();
    let goal_detect = (2 + threshold) as f64 * interval.as_secs_f64();
    let met = checks_per_s >= goal_checks
        && (nodes < 10_000 || cpu_pct <= 50.0)
        && p99 <= goal_detect
        && standby_again == repairs;
    let rss = fleet.controller_rss_mib()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "bench controller nodes={nodes} checks_per_s={checks_per_s:.0} cpu_pct={cpu_pct:.1} \
         p99_detect_s={p99:.2} repairs={standby_again} \
         goals: checks_per_s>={goal_checks:.0} cpu_pct<=50 p99_detect_s<={goal_detect:.0} \
         repairs={repairs} met={} (repair_cpu_pct={repair_cpu:.1} rss_mib={rss:.0} load={})",
        if met { "yes" } else { "NO" },
        load.join("/"),
    );
    Ok(())
}
