use std::fs;

use super::checkpoint::{self, Found};
use super::model::{true_weights, TrainState, Trainer, PARAMS};
use super::step_line;

/// Runs `state` to `steps`, returning the step lines and the final state.
fn run(state: TrainState, steps: u64) -> (Vec<String>, TrainState) {
    let mut trainer = Trainer::new(state).expect("valid state");
    let mut lines = Vec::new();
    while trainer.state().step < steps {
        lines.push(step_line(&trainer.step()));
    }
    (lines, trainer.state().clone())
}

#[test]
fn the_same_seed_gives_identical_weights_and_another_seed_does_not() {
    let (lines_a, a) = run(TrainState::fresh(7), 200);
    let (lines_b, b) = run(TrainState::fresh(7), 200);
    assert_eq!(a.weight_bits(), b.weight_bits());
    assert_eq!(lines_a, lines_b);
    let (_, c) = run(TrainState::fresh(8), 200);
    assert_ne!(a.weight_bits(), c.weight_bits());
}

#[test]
fn training_fits_the_hidden_parameters() {
    let (lines, state) = run(TrainState::fresh(3), 500);
    let truth = true_weights(3);
    for (w, t) in state.weights.iter().zip(truth.iter()) {
        assert!((w - t).abs() < 0.05, "{w} vs {t}");
    }
    assert!(lines[0] != lines[499]);
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (full_lines, full) = run(TrainState::fresh(11), 300);

    let (first_lines, at_k) = run(TrainState::fresh(11), 123);
    checkpoint::save(dir.path(), &at_k).expect("save");
    let found = checkpoint::latest(dir.path()).expect("look");
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    let resumed = found.resumed.expect("a checkpoint");
    assert_eq!(resumed.file, "ckpt-000000000123.json");
    assert_eq!(resumed.state, at_k);
    let (rest_lines, end) = run(resumed.state, 300);

    assert_eq!(end.weight_bits(), full.weight_bits());
    assert_eq!(end.rng, full.rng);
    let joined: Vec<String> = first_lines.into_iter().chain(rest_lines).collect();
    assert_eq!(joined, full_lines);
}

#[test]
fn a_corrupt_latest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, at_10) = run(TrainState::fresh(5), 10);
    let (_, at_20) = run(at_10.clone(), 20);
    checkpoint::save(dir.path(), &at_10).expect("save 10");
    checkpoint::save(dir.path(), &at_20).expect("save 20");
    let newest = dir.path().join(checkpoint::file_name(20));

    // Torn: cut in the middle.
    let bytes = fs::read(&newest).expect("read");
    fs::write(&newest, &bytes[..bytes.len() / 2]).expect("tear");
    let found = checkpoint::latest(dir.path()).expect("look");
    assert_eq!(found.resumed.expect("older one").state, at_10);
    assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
    assert!(found.skipped[0].contains("ckpt-000000000020.json"));

    // Well-formed JSON whose content was altered: the checksum catches it.
    let text = String::from_utf8(bytes).expect("utf8");
    let altered = text.replacen("\"step\": 20", "\"step\": 21", 1);
    assert_ne!(altered, text);
    fs::write(&newest, altered).expect("alter");
    let found = checkpoint::latest(dir.path()).expect("look");
    assert_eq!(found.resumed.expect("older one").state, at_10);
    assert!(found.skipped[0].contains("checksum"), "{:?}", found.skipped);

    // `latest` naming a missing file: the newest valid file is used.
    fs::remove_file(&newest).expect("remove");
    let found = checkpoint::latest(dir.path()).expect("look");
    assert_eq!(found.resumed.expect("older one").state, at_10);
    assert!(found.skipped[0].contains("latest"), "{:?}", found.skipped);
}

#[test]
fn no_directory_or_no_checkpoint_means_a_fresh_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        checkpoint::latest(&dir.path().join("missing")).expect("look"),
        Found::default()
    );
    fs::write(dir.path().join(checkpoint::file_name(3)), "").expect("empty file");
    let found = checkpoint::latest(dir.path()).expect("look");
    assert!(found.resumed.is_none());
    assert_eq!(found.skipped.len(), 1);
}

#[test]
fn only_the_newest_checkpoints_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut trainer = Trainer::new(TrainState::fresh(1)).expect("valid");
    for _ in 0..6 {
        trainer.step();
        checkpoint::save(dir.path(), trainer.state()).expect("save");
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [4, 5, 6].map(checkpoint::file_name).to_vec(),
        "keeps {}",
        checkpoint::KEEP
    );
    assert_eq!(
        fs::read_to_string(dir.path().join(checkpoint::LATEST)).expect("latest"),
        checkpoint::file_name(6)
    );
}

#[test]
fn a_request_is_answered_with_its_id_and_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(checkpoint::answer_request(dir.path(), 1, "x")
        .expect("none")
        .is_none());
    fs::write(dir.path().join(checkpoint::REQUEST), "req-42\n").expect("request");
    assert!(checkpoint::requested(dir.path()));
    assert!(
        checkpoint::answer_request(dir.path(), 9, "ckpt-000000000009.json")
            .expect("answer")
            .is_some()
    );
    assert!(!checkpoint::requested(dir.path()));
    let done: checkpoint::DoneRecord =
        serde_json::from_slice(&fs::read(dir.path().join(checkpoint::DONE)).expect("done"))
            .expect("parse");
    assert_eq!((done.request.as_str(), done.step), ("req-42", 9));
}

#[test]
fn states_of_the_wrong_size_are_refused() {
    let mut state = TrainState::fresh(1);
    state.weights.pop();
    assert!(Trainer::new(state).is_none());
    assert_eq!(TrainState::fresh(1).weights.len(), PARAMS);
}

#[test]
fn a_request_for_a_step_waits_for_it_and_a_late_one_says_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let asked = checkpoint::Request {
        id: "gang-1".into(),
        at_step: Some(20),
    };
    assert_eq!(checkpoint::Request::parse(&asked.encode()), asked);
    // The older form still reads as a bare id.
    assert_eq!(
        checkpoint::Request::parse("req-7\n"),
        checkpoint::Request {
            id: "req-7".into(),
            at_step: None
        }
    );
    fs::write(dir.path().join(checkpoint::REQUEST), asked.encode()).expect("request");
    // Before the step: not answered, still pending.
    assert!(
        checkpoint::answer_request(dir.path(), 19, "ckpt-000000000019.json")
            .expect("read")
            .is_none()
    );
    assert!(checkpoint::requested(dir.path()));
    // At the step: answered with its id.
    let answered = checkpoint::answer_request(dir.path(), 20, "ckpt-000000000020.json")
        .expect("answer")
        .expect("due");
    assert_eq!(answered, asked);
    let done: checkpoint::DoneRecord =
        serde_json::from_slice(&fs::read(dir.path().join(checkpoint::DONE)).expect("done"))
            .expect("parse");
    assert_eq!((done.request.as_str(), done.step), ("gang-1", 20));
    // Past the step: answered at once with the step reached.
    fs::write(dir.path().join(checkpoint::REQUEST), asked.encode()).expect("request");
    checkpoint::answer_request(dir.path(), 23, "ckpt-000000000023.json")
        .expect("answer")
        .expect("due");
    let done: checkpoint::DoneRecord =
        serde_json::from_slice(&fs::read(dir.path().join(checkpoint::DONE)).expect("done"))
            .expect("parse");
    assert_eq!(done.step, 23);
}
