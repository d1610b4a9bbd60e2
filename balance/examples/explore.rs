use herd_balance::sim::{Sim, SimConfig};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let coord = args.get(2).map(|s| s == "c").unwrap_or(false);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut sim = Sim::new(SimConfig::new(n, coord, 7)).unwrap();
    let t = std::time::Instant::now();
    for s in 1..=secs {
        sim.run_until(s * 1000);
        if s % 5 == 0 {
            let sp = sim.spread(None);
            let a = sim.agent(0);
            println!("t={s}s cv={:.3} mom={:.2} moves={} members0={} view0={}", sp.cv, sp.max_over_mean, sim.moves(), a.members().len(), a.view(s*1000).len());
        }
    }
    println!("{:#?}", sim.report());
    println!("wall {:?}", t.elapsed());
}
