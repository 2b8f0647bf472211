//! Statistics over the repetitions (medians, min–max, percentiles) and the printed lines: the
//! table row, the CPU line and the machine-readable `scenario=` line.

use crate::measure::Run;

/// Repeated measurements of one side: rates, and the CPU time each message cost in each run.
#[derive(Clone, Default)]
pub(crate) struct Series {
    rates: Vec<f64>,
    client_us: Vec<f64>,
    server_us: Vec<f64>,
}

/// CPU time per message in microseconds (medians over the repetitions): this process (every
/// thread) and the redis-server. CPU time varies far less between runs than rates do.
#[derive(Clone, Copy, Default)]
struct Cpu {
    client_us: f64,
    server_us: f64,
}

impl Series {
    pub(crate) fn of(rates: Vec<f64>) -> Self {
        Series {
            rates,
            ..Series::default()
        }
    }
    /// Adds one run's result from [`once`](crate::measure::once) (nothing when that side was
    /// skipped).
    pub(crate) fn add(&mut self, run: Option<Run>) {
        if let Some(run) = run {
            self.rates.push(run.rate);
            if let Some((client, server)) = run.cpu_us {
                self.client_us.push(client);
                self.server_us.push(server);
            }
        }
    }
    fn median(&self) -> f64 {
        median(self.rates.clone())
    }
    fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
    fn cpu(&self) -> Cpu {
        Cpu {
            client_us: median(self.client_us.clone()),
            server_us: median(self.server_us.clone()),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn report(
    scenario: &str,
    unit: &str,
    raw: &Series,
    bus: &Series,
    higher_is_better: bool,
) {
    let (r, b) = (raw.median(), bus.median());
    let ratio = if r > 0.0 { b / r } else { 0.0 };
    let (rmin, rmax) = raw.range();
    let (bmin, bmax) = bus.range();
    println!(
        "{scenario:<34} raw {r:>11.0} {unit} ({rmin:.0}–{rmax:.0})   bus {b:>11.0} {unit} ({bmin:.0}–{bmax:.0})   ratio {ratio:.2}{}",
        if higher_is_better {
            ""
        } else {
            " (lower is better)"
        }
    );
    let (rc, bc) = (raw.cpu(), bus.cpu());
    let cpu = if rc.client_us > 0.0 && bc.client_us > 0.0 {
        println!(
            "{:<34} cpu µs/msg: client raw {:.2} bus {:.2}, redis-server raw {:.2} bus {:.2}",
            "", rc.client_us, bc.client_us, rc.server_us, bc.server_us
        );
        format!(
            " client_us_raw={:.3} client_us_bus={:.3} server_us_raw={:.3} server_us_bus={:.3}",
            rc.client_us, bc.client_us, rc.server_us, bc.server_us
        )
    } else {
        String::new()
    };
    println!("scenario={scenario} raw={r:.0} bus={b:.0} ratio={ratio:.3} unit={unit}{cpu}");
}

/// p50, p99 and p99.9 of several runs, one value of each per run.
#[derive(Default)]
pub(crate) struct Percentiles([Vec<f64>; 3]);

impl Percentiles {
    pub(crate) fn add(&mut self, samples: Vec<u64>) {
        let (p50, p99, p999) = percentiles(samples);
        for (all, p) in self.0.iter_mut().zip([p50, p99, p999]) {
            all.push(p);
        }
    }

    /// The runs' values of one percentile (0: p50, 1: p99, 2: p99.9).
    pub(crate) fn series(&self, i: usize) -> Series {
        Series::of(self.0[i].clone())
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64, f64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    (at(0.50), at(0.99), at(0.999))
}
