//! A SIMULATION: a synthetic, seeded power trace of an LLM fleet, for
//! `herd bench power` to replay over simulated GPUs (see
//! [`replay`](super::replay)). No measurement of ours: its shape follows
//! what POLCA (Patel et al., arXiv 2308.12908) reports of production LLM
//! clusters, with herd's own numbers, documented in docs/power.md:
//!
//! - **inference** (a tensor-parallel instance over the server's inference
//!   GPUs, which move together): a diurnal load (trough at 04:00, peak at
//!   16:00); between requests' prefills the GPUs decode, memory-bound, well
//!   below nameplate; each prefill is a short spike (100–400 ms) near
//!   nameplate, arriving more often as the load rises. So the draw rarely
//!   reaches nameplate, and only briefly;
//! - **training** (jobs of [`TRAINING_JOB_SERVERS`] servers, synchronous,
//!   so their GPUs swing together): near TDP steadily, with a dip at each
//!   iteration's communication phase and a long dip at each checkpoint;
//! - **batch**: jobs that run at a steady, fairly high activity and stop
//!   for a while between jobs.
//!
//! A trace gives each GPU an *activity* in `0..=1` every [`STEP_MS`]; the
//! simulated power model turns it into watts
//! ([`uncapped_draw`](crate::resources::simulated::uncapped_draw)).
//! Everything about server `s` follows from the seed and `s` alone, so a
//! fleet of more servers replays the same trace on its first ones.

use herd_api::rng::SplitMix64;

use super::policy::PriorityClass;

/// The trace's time step, which is also the governors' sampling period.
pub const STEP_MS: u64 = 50;
/// Servers per training job: their training GPUs swing in step.
pub const TRAINING_JOB_SERVERS: usize = 8;
/// How often a training job checkpoints.
pub const CHECKPOINT_EVERY_MS: u64 = 30 * 60 * 1000;

/// How one server's GPUs are shared among the classes of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerMix {
    /// GPUs serving inference (one tensor-parallel instance).
    pub inference: u32,
    /// GPUs training (part of a multi-server job).
    pub training: u32,
    /// GPUs running batch jobs.
    pub batch: u32,
}

impl Default for ServerMix {
    /// An 8-GPU server: 4 inference, 2 training, 2 batch, as in the fleet
    /// simulation test.
    fn default() -> Self {
        ServerMix {
            inference: 4,
            training: 2,
            batch: 2,
        }
    }
}

impl ServerMix {
    /// GPUs per server.
    pub fn gpus(&self) -> u32 {
        self.inference + self.training + self.batch
    }

    /// The class of GPU `index` of a server: inference first, then
    /// training, then batch.
    pub fn class_of(&self, index: u32) -> PriorityClass {
        if index < self.inference {
            PriorityClass::Inference
        } else if index < self.inference + self.training {
            PriorityClass::Training
        } else {
            PriorityClass::Batch
        }
    }
}

/// The diurnal inference load at `t_ms` since midnight, `0.15..=1.0`:
/// lowest at 04:00, highest at 16:00, a cosine between.
pub fn diurnal_load(t_ms: f64) -> f64 {
    let hours = (t_ms / 3_600_000.0) % 24.0;
    let phase = 2.0 * std::f64::consts::PI * (hours - 4.0) / 24.0;
    0.15 + 0.85 * (0.5 - 0.5 * phase.cos())
}

/// A seed of its own for thing `index` of kind `salt`, so servers and
/// jobs draw independent streams that do not depend on each other.
fn derive(seed: u64, salt: u64, index: u64) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let base = mix.next_u64();
    let mut rng = SplitMix64::new(base ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Discard one draw so neighbouring indexes decorrelate fully.
    rng.next_u64();
    rng
}

/// A training job's fixed rhythm, the same for all its servers.
#[derive(Debug, Clone, PartialEq)]
struct TrainingJob {
    iteration_ms: f64,
    compute_share: f64,
    compute_activity: f64,
    comm_activity: f64,
    offset_ms: f64,
    checkpoint_offset_ms: f64,
    checkpoint_ms: f64,
}

impl TrainingJob {
    fn new(seed: u64, job: usize) -> Self {
        let mut rng = derive(seed, 2, job as u64);
        TrainingJob {
            iteration_ms: rng.uniform(1000.0, 2500.0),
            compute_share: rng.uniform(0.75, 0.85),
            compute_activity: rng.uniform(0.93, 1.0),
            comm_activity: rng.uniform(0.55, 0.7),
            offset_ms: rng.uniform(0.0, 2500.0),
            checkpoint_offset_ms: rng.uniform(0.0, CHECKPOINT_EVERY_MS as f64),
            checkpoint_ms: rng.uniform(45_000.0, 90_000.0),
        }
    }

    fn activity(&self, t_ms: f64) -> f64 {
        if (t_ms + self.checkpoint_offset_ms) % (CHECKPOINT_EVERY_MS as f64) < self.checkpoint_ms {
            // Writing a checkpoint: the GPUs wait on storage.
            return 0.1;
        }
        if (t_ms + self.offset_ms) % self.iteration_ms < self.compute_share * self.iteration_ms {
            self.compute_activity
        } else {
            self.comm_activity
        }
    }
}

/// One batch GPU: on (a job runs) or off (waiting for the next), for
/// exponentially distributed times.
#[derive(Debug, Clone, PartialEq)]
struct BatchSlot {
    running: bool,
    activity: f64,
    next_change_ms: f64,
}

/// The trace of one server, stepped forward [`STEP_MS`] at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTrace {
    mix: ServerMix,
    rng: SplitMix64,
    job: TrainingJob,
    /// How much of the fleet's load this server's instance gets.
    load_share: f64,
    /// Slow drift of that share (an AR(1) process).
    drift: f64,
    /// Each inference GPU's fixed offset from the instance's activity.
    skew: Vec<f64>,
    spike_until_ms: f64,
    spike_activity: f64,
    next_spike_ms: f64,
    batch: Vec<BatchSlot>,
}

impl ServerTrace {
    /// Server `server`'s trace under `seed`, starting at `start_ms` since
    /// midnight.
    pub fn new(seed: u64, server: usize, mix: ServerMix, start_ms: f64) -> Self {
        let mut rng = derive(seed, 1, server as u64);
        let job = TrainingJob::new(seed, server / TRAINING_JOB_SERVERS);
        let load_share = rng.uniform(0.85, 1.15);
        let skew = (0..mix.inference)
            .map(|_| rng.uniform(-0.03, 0.03))
            .collect();
        let batch = (0..mix.batch)
            .map(|_| {
                let running = rng.next_f64() < 0.8;
                let mean = if running { 20.0 } else { 5.0 } * 60_000.0;
                BatchSlot {
                    running,
                    activity: rng.uniform(0.6, 0.9),
                    next_change_ms: start_ms + exponential(&mut rng, mean),
                }
            })
            .collect();
        let next_spike_ms = start_ms + exponential(&mut rng, 2000.0);
        ServerTrace {
            mix,
            rng,
            job,
            load_share,
            drift: 0.0,
            skew,
            spike_until_ms: 0.0,
            spike_activity: 0.0,
            next_spike_ms,
            batch,
        }
    }

    /// The activity of each of the server's GPUs during the step that
    /// starts at `t_ms` (since midnight), into `out` (one per GPU, by
    /// index). Steps must be asked for in order.
    pub fn step(&mut self, t_ms: f64, out: &mut [f64]) {
        let load = diurnal_load(t_ms);
        // Inference: the load drifts slowly around the server's share.
        self.drift = 0.9995 * self.drift + self.rng.uniform(-0.004, 0.004);
        let demand = (load * self.load_share * (1.0 + self.drift)).clamp(0.0, 1.2);
        while self.next_spike_ms <= t_ms {
            // A prefill: compute-bound, near nameplate, a few hundred ms.
            let start = self.next_spike_ms;
            self.spike_until_ms = start + self.rng.uniform(100.0, 400.0);
            self.spike_activity = self.rng.uniform(0.85, 1.0);
            // Arrivals: from one every ~7 s at the trough to one every
            // ~2 s at the peak.
            let mean_gap = 1000.0 / (0.1 + 0.4 * demand);
            self.next_spike_ms = start + exponential(&mut self.rng, mean_gap);
        }
        let decode = (0.2 + 0.4 * demand).clamp(0.05, 0.8);
        let inference = if t_ms < self.spike_until_ms {
            self.spike_activity
        } else {
            decode
        };
        let training = self.job.activity(t_ms);
        for (index, slot) in (0u32..).zip(out.iter_mut()) {
            let i = index as usize;
            *slot = match self.mix.class_of(index) {
                PriorityClass::Inference => {
                    inference + self.skew.get(i).copied().unwrap_or(0.0) * inference
                }
                PriorityClass::Training => training,
                PriorityClass::Batch => {
                    let b = i.saturating_sub((self.mix.inference + self.mix.training) as usize);
                    match self.batch.get_mut(b) {
                        Some(slot) => {
                            while slot.next_change_ms <= t_ms {
                                slot.running = !slot.running;
                                let mean = if slot.running { 20.0 } else { 5.0 } * 60_000.0;
                                if slot.running {
                                    slot.activity = self.rng.uniform(0.6, 0.9);
                                }
                                slot.next_change_ms += exponential(&mut self.rng, mean);
                            }
                            if slot.running {
                                slot.activity
                            } else {
                                0.0
                            }
                        }
                        None => 0.0,
                    }
                }
            }
            .clamp(0.0, 1.0);
        }
    }
}

/// An exponentially distributed time of mean `mean_ms` (at least 1 ms).
fn exponential(rng: &mut SplitMix64, mean_ms: f64) -> f64 {
    let u = rng.next_f64();
    (-(1.0 - u).ln() * mean_ms).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_activity(seed: u64, from_h: f64, minutes: u64, class: PriorityClass) -> (f64, f64) {
        let mix = ServerMix::default();
        let mut sum = 0.0;
        let mut max: f64 = 0.0;
        let mut n = 0.0;
        for server in 0..16 {
            let start = from_h * 3_600_000.0;
            let mut trace = ServerTrace::new(seed, server, mix, start);
            let mut out = vec![0.0; mix.gpus() as usize];
            let steps = minutes * 60_000 / STEP_MS;
            for s in 0..steps {
                trace.step(start + (s * STEP_MS) as f64, &mut out);
                for (i, a) in (0u32..).zip(&out) {
                    if mix.class_of(i) == class {
                        sum += a;
                        max = max.max(*a);
                        n += 1.0;
                    }
                }
            }
        }
        (sum / n, max)
    }

    /// The shape the docs promise: inference well under nameplate on
    /// average, higher at the afternoon peak than at night, spiking near
    /// nameplate; training near TDP; the same seed the same trace.
    #[test]
    fn the_trace_has_the_documented_shape_and_is_deterministic() {
        let (night, _) = mean_activity(7, 3.5, 20, PriorityClass::Inference);
        let (peak, peak_max) = mean_activity(7, 15.5, 20, PriorityClass::Inference);
        assert!(night < peak, "night {night} peak {peak}");
        assert!(
            peak < 0.8,
            "inference averages well under nameplate: {peak}"
        );
        assert!(peak_max > 0.85, "prefill spikes near nameplate: {peak_max}");
        let (training, _) = mean_activity(7, 15.5, 20, PriorityClass::Training);
        assert!(training > 0.8, "training near TDP: {training}");
        let mix = ServerMix::default();
        let mut a = ServerTrace::new(3, 5, mix, 0.0);
        let mut b = ServerTrace::new(3, 5, mix, 0.0);
        let mut c = ServerTrace::new(4, 5, mix, 0.0);
        let (mut oa, mut ob, mut oc) = (vec![0.0; 8], vec![0.0; 8], vec![0.0; 8]);
        let mut differs = false;
        for s in 0..2000 {
            let t = (s * STEP_MS) as f64;
            a.step(t, &mut oa);
            b.step(t, &mut ob);
            c.step(t, &mut oc);
            assert_eq!(oa, ob);
            assert!(oa.iter().all(|x| (0.0..=1.0).contains(x)));
            differs |= oa != oc;
        }
        assert!(differs, "another seed gives another trace");
    }
}
