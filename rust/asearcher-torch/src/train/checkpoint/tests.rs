//! Tests of the checkpoint module, including the kill-at-any-moment test (a child process,
//! the test binary itself, saving in a loop while the parent SIGKILLs it).

use super::*;
use crate::train::optim::AdamWConfig;
use crate::train::rng::TrainRng;
use rand::{Rng, RngCore, SeedableRng};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ASEARCHER_CKPT_CHILD_ROOT";
const CHILD_TEST: &str = "train::checkpoint::tests::child_writer_loop";
const KEEP: usize = 2;

fn model_at(step: u64) -> Vec<(String, Tensor)> {
    let s = step as f64;
    vec![
        (
            "model.embed_tokens.weight".into(),
            Tensor::full([64, 32], s, (Kind::BFloat16, Device::Cpu)),
        ),
        (
            "model.norm.weight".into(),
            Tensor::arange(16, (Kind::Float, Device::Cpu)) + s,
        ),
    ]
}

fn optimizer_at(step: u64) -> Vec<(String, Tensor)> {
    vec![
        (
            "exp_avg.model.norm.weight".into(),
            Tensor::full([16], 2.0 * step as f64, (Kind::Float, Device::Cpu)),
        ),
        (
            "step.model.norm.weight".into(),
            Tensor::from_slice(&[step as i64]),
        ),
    ]
}

fn rng_at(step: u64) -> TrainRng {
    let mut rng = TrainRng::new(42, 1);
    for _ in 0..step {
        rng.next_u32();
    }
    rng
}

fn state_at(step: u64) -> TrainerState {
    TrainerState {
        step,
        schedule: Some(LrSchedule::default()),
        rng: Some(rng_at(step).state()),
        user: serde_json::json!({"data_pos": step * 10}),
    }
}

fn save_step(manager: &CheckpointManager, step: u64) -> PathBuf {
    let (state, model, optimizer) = (state_at(step), model_at(step), optimizer_at(step));
    let config = format!("{{\"step\": {step}}}").into_bytes();
    manager
        .save(&Checkpoint {
            state: &state,
            model: &model,
            optimizer: Some(&optimizer),
            extra_files: &[("config.json".into(), config)],
            tokenizer_dir: None,
        })
        .unwrap()
}

/// Asserts that every part of `ckpt` is the one written for the step it claims.
fn assert_consistent(ckpt: &LoadedCheckpoint) {
    let step = ckpt.state.step;
    assert_eq!(ckpt.state, state_at(step));
    let expect = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(b) {
            assert_eq!(na, nb);
            assert_eq!(ta.kind(), tb.kind(), "{na}");
            assert!(ta.equal(tb), "{na} differs from step {step}");
        }
    };
    expect(&ckpt.model, &model_at(step));
    expect(ckpt.optimizer.as_ref().unwrap(), &optimizer_at(step));
    let config = fs::read_to_string(ckpt.dir.join("config.json")).unwrap();
    assert_eq!(config, format!("{{\"step\": {step}}}"));
    let mut resumed = TrainRng::from_state(ckpt.state.rng.as_ref().unwrap()).unwrap();
    assert_eq!(resumed.next_u64(), rng_at(step).next_u64());
}

#[test]
fn save_load_round_trip_with_rotation_and_pointer() {
    let root = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(root.path().join("ckpt"), KEEP).unwrap();
    assert!(manager.load_latest().unwrap().is_none());
    for step in [1, 2, 5, 9] {
        save_step(&manager, step);
        let latest = manager.load_latest().unwrap().unwrap();
        assert_eq!(latest.state.step, step);
        assert_consistent(&latest);
    }
    let steps: Vec<u64> = manager
        .list()
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![5, 9]);
    let pointer = fs::read_to_string(manager.root().join(LATEST_FILE)).unwrap();
    assert_eq!(pointer, "step-00000009\n");
    // Re-saving an existing step replaces it.
    save_step(&manager, 9);
    assert_consistent(&manager.load_latest().unwrap().unwrap());
}

#[test]
fn incomplete_temp_dirs_are_ignored_and_cleaned() {
    let root = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(root.path(), 3).unwrap();
    save_step(&manager, 3);
    let tmp = root.path().join(".tmp-step-00000004-999");
    fs::create_dir(&tmp).unwrap();
    fs::write(tmp.join(MODEL_FILE), b"half written").unwrap();
    assert_eq!(load_latest(root.path()).unwrap().unwrap().state.step, 3);
    save_step(&manager, 4);
    assert!(!tmp.exists(), "the next save removes leftovers");
    assert_eq!(load_latest(root.path()).unwrap().unwrap().state.step, 4);
}

#[test]
fn damaged_checkpoints_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(root.path(), 3).unwrap();
    let dir = save_step(&manager, 7);
    let err = |root: &Path| load_latest(root).unwrap_err().to_string();

    let model = fs::read(dir.join(MODEL_FILE)).unwrap();
    write_safetensors(&dir.join(MODEL_FILE), &model_at(7)[..1]).unwrap();
    let msg = err(root.path());
    assert!(
        msg.contains(MODEL_FILE) && msg.contains("model.norm.weight"),
        "{msg}"
    );
    fs::write(dir.join(MODEL_FILE), &model[..model.len() / 2]).unwrap();
    assert!(err(root.path()).contains(MODEL_FILE));
    fs::remove_file(dir.join(MODEL_FILE)).unwrap();
    let msg = err(root.path());
    assert!(msg.contains(MODEL_FILE) && msg.contains("missing"), "{msg}");
    fs::write(dir.join(MODEL_FILE), &model).unwrap();

    fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
    assert!(err(root.path()).contains(OPTIMIZER_FILE));
    write_safetensors(&dir.join(OPTIMIZER_FILE), &optimizer_at(7)).unwrap();

    let state = fs::read(dir.join(TRAINER_STATE_FILE)).unwrap();
    fs::write(dir.join(TRAINER_STATE_FILE), b"{\"step\": ").unwrap();
    let msg = err(root.path());
    assert!(
        msg.contains(TRAINER_STATE_FILE) && msg.contains("unparseable"),
        "{msg}"
    );
    fs::remove_file(dir.join(TRAINER_STATE_FILE)).unwrap();
    assert!(err(root.path()).contains(TRAINER_STATE_FILE));
    fs::write(dir.join(TRAINER_STATE_FILE), &state).unwrap();
    assert_consistent(&load_latest(root.path()).unwrap().unwrap());

    fs::remove_dir_all(&dir).unwrap();
    assert!(err(root.path()).contains(LATEST_FILE), "dangling pointer");
}

#[test]
fn safetensors_header_is_hf_compatible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = model_at(3);
    write_safetensors(&path, &tensors).unwrap();
    let bytes = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + n) % 8, 0, "data starts 8-byte aligned");
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    assert_eq!(header["model.embed_tokens.weight"]["dtype"], "BF16");
    let back = Tensor::read_safetensors(&path).unwrap();
    for (name, t) in &tensors {
        let (_, b) = back.iter().find(|(n, _)| n == name).unwrap();
        assert!(b.equal(t), "{name}");
    }
    let twice = [tensors[0].clone_named(), tensors[0].clone_named()];
    assert!(write_safetensors(&path, &twice)
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
}

trait CloneNamed {
    fn clone_named(&self) -> (String, Tensor);
}

impl CloneNamed for (String, Tensor) {
    fn clone_named(&self) -> (String, Tensor) {
        (self.0.clone(), self.1.shallow_clone())
    }
}

#[test]
fn extra_files_tokenizer_and_restore_into_model_and_optimizer() {
    let root = tempfile::tempdir().unwrap();
    let tok = tempfile::tempdir().unwrap();
    fs::write(tok.path().join("tokenizer.json"), b"{\"tok\": 1}").unwrap();
    fs::write(tok.path().join("unrelated.bin"), b"x").unwrap();
    let manager = CheckpointManager::new(root.path(), 1).unwrap();

    let param = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let params = vec![("lm_head.weight".to_string(), param.shallow_clone())];
    let mut opt = AdamW::new(&params, AdamWConfig::default(), |_| false).unwrap();
    (&param * 3.0).sum(Kind::Float).backward();
    opt.step(0.1).unwrap();
    let state = TrainerState {
        step: 1,
        ..Default::default()
    };
    let optimizer = opt.state_tensors();
    let checkpoint = Checkpoint {
        state: &state,
        model: &params,
        optimizer: Some(&optimizer),
        extra_files: &[("config.json".into(), b"{}".to_vec())],
        tokenizer_dir: Some(tok.path()),
    };
    let dir = manager.save(&checkpoint).unwrap();
    assert_eq!(
        fs::read(dir.join("tokenizer.json")).unwrap(),
        b"{\"tok\": 1}"
    );
    assert!(!dir.join("unrelated.bin").exists());

    let fresh = Tensor::ones([4], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
    let fresh_params = vec![("lm_head.weight".to_string(), fresh.shallow_clone())];
    let loaded = manager.load_latest().unwrap().unwrap();
    loaded.copy_model_into(&fresh_params).unwrap();
    assert!(fresh
        .to_kind(Kind::Float)
        .allclose(&param, 1e-2, 1e-2, false));
    let mut fresh_opt = AdamW::new(&fresh_params, AdamWConfig::default(), |_| false).unwrap();
    loaded.restore_optimizer(&mut fresh_opt).unwrap_err(); // bf16 expects a master copy
    let fp32 = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let fp32_params = vec![("lm_head.weight".to_string(), fp32.shallow_clone())];
    let mut fp32_opt = AdamW::new(&fp32_params, AdamWConfig::default(), |_| false).unwrap();
    loaded.restore_optimizer(&mut fp32_opt).unwrap();
    assert_eq!(fp32_opt.steps_taken(), 1);

    let wrong = vec![(
        "lm_head.weight".to_string(),
        Tensor::zeros([5], (Kind::Float, Device::Cpu)),
    )];
    let msg = loaded.copy_model_into(&wrong).unwrap_err().to_string();
    assert!(msg.contains(MODEL_FILE) && msg.contains("shape"), "{msg}");
    let unknown = vec![(
        "nope".to_string(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    )];
    assert!(loaded
        .copy_model_into(&unknown)
        .unwrap_err()
        .to_string()
        .contains("`nope` missing"));

    for bad in ["../x", ".hidden", "", MODEL_FILE] {
        let files = [(bad.to_string(), vec![])];
        let err = manager.save(&Checkpoint {
            extra_files: &files,
            ..checkpoint
        });
        assert!(
            err.unwrap_err().to_string().contains("extra_files"),
            "{bad}"
        );
    }
    let empty = tempfile::tempdir().unwrap();
    let err = manager.save(&Checkpoint {
        tokenizer_dir: Some(empty.path()),
        ..checkpoint
    });
    assert!(err.unwrap_err().to_string().contains("no tokenizer files"));
}

/// Child mode of [`survives_kill_at_any_moment`]: resumes from the newest checkpoint under
/// `$ASEARCHER_CKPT_CHILD_ROOT` and saves steps forever (until killed, at most 60 s).
#[test]
#[ignore = "child process of survives_kill_at_any_moment"]
fn child_writer_loop() {
    let root = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let manager = CheckpointManager::new(&root, KEEP).unwrap();
    let mut step = manager.load_latest().unwrap().map_or(0, |c| c.state.step) + 1;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        save_step(&manager, step);
        step += 1;
    }
}

/// Waits (at most 60 s) until a checkpoint newer than `step` exists, so the child has started and
/// is in its save loop before the random kill delay begins.
fn wait_for_step_after(root: &Path, step: u64, round: usize) {
    let started = Instant::now();
    while list_checkpoints(root)
        .unwrap()
        .last()
        .is_none_or(|(s, _)| *s <= step)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "round {round}: child saved nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn survives_kill_at_any_moment() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut last_step, mut rounds_with_progress, mut interrupted) = (0, 0, 0);
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", CHILD_TEST])
            .env(CHILD_ENV, root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_step_after(root.path(), last_step, round);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: child ended on its own: {status}"
        );
        interrupted += fs::read_dir(root.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        let ckpt = load_latest(root.path())
            .unwrap()
            .expect("a checkpoint was seen");
        assert_consistent(&ckpt);
        assert!(ckpt.state.step >= last_step, "round {round}: went back");
        rounds_with_progress += (ckpt.state.step > last_step) as usize;
        last_step = ckpt.state.step;
        assert!(list_checkpoints(root.path()).unwrap().len() <= KEEP + 1);
    }
    assert!(
        rounds_with_progress >= 3,
        "too few rounds saved anything (seed {seed})"
    );
    eprintln!("kill test: reached step {last_step}; {interrupted} leftovers of interrupted saves");
}
