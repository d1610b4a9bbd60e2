use herd_reschedule::*;
use std::time::{Duration, Instant};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let inst = if args[1].ends_with(".json") {
        vmr2l::import_file(std::path::Path::new(&args[1])).unwrap()
    } else {
        let pms: usize = args[1].parse().unwrap();
        let seed: u64 = args[2].parse().unwrap();
        generate::generate(&generate::GenParams {
            pms,
            seed,
            ..Default::default()
        })
        .unwrap()
    };
    let mnl: usize = args[3].parse().unwrap();
    let ms: u64 = args[4].parse().unwrap();
    let shape = Shape::default();
    println!(
        "vms {} fr0 {:.4}",
        inst.vms.len(),
        objective::initial_fragment_rate(&inst, shape)
    );
    for name in args[5].split(',') {
        let s = by_name(name).unwrap();
        let t = Instant::now();
        let lim = Limits {
            max_moves: mnl,
            deadline: Duration::from_millis(ms),
            shape,
            seed: 7,
        };
        match s.solve(&inst, &lim) {
            Ok(sol) => {
                let r = validate_plan(&inst, shape, &sol.moves, mnl, Some(sol.fr_after));
                println!(
                    "{name:14} fr {:.4} moves {:3} {:6} ms valid {} {:?}",
                    sol.fr_after,
                    sol.moves.len(),
                    t.elapsed().as_millis(),
                    r.is_ok(),
                    sol.note
                );
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
}
