//! kill -9 at random points during the stages, then rerun: the final files equal those of an
//! uninterrupted run, and the journal shows no answered request asked again.
//!
//! The test re-invokes its own executable as the child run (harness = false, so `main` decides
//! from an environment variable which part to play).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mirrorsim_distill::Journal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "MIRRORSIM_KILL_RESUME_CHILD";
const SCENES: usize = 24;
/// Per request; the whole pipeline sends 24 + 24 + 24 requests.
const DELAY: Duration = Duration::from_millis(12);
/// Scenes per backend call (the in-flight batch a kill can lose).
const BATCH: u64 = 3;

fn spawn_child(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .spawn()
        .unwrap()
}

fn main() {
    // Test runners list tests before running them (`--list --format terse`; nextest does, and
    // also asks for `--ignored` ones): answer with this one test instead of running it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("kill_resume: test");
        }
        return;
    }
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let (hits, misses) = common::run_pipeline(Path::new(&dir), DELAY);
        println!("child finished: {hits} hits, {misses} misses");
        return;
    }

    let root = tempfile::tempdir().unwrap();
    let scenes = common::scene_set(SCENES);
    let reference = root.path().join("reference");
    let resumed = root.path().join("resumed");
    for dir in [&reference, &resumed] {
        std::fs::create_dir_all(dir).unwrap();
        common::write_scenes(&dir.join("scenes.jsonl"), &scenes);
    }

    let started = Instant::now();
    assert!(spawn_child(&reference).wait().unwrap().success());
    let uninterrupted = started.elapsed();

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let kills = 4;
    let mut delays = Vec::new();
    for _ in 0..kills {
        let limit = uninterrupted.as_millis().max(20) as u64;
        let delay = Duration::from_millis(rng.random_range(5..limit));
        delays.push(delay);
        let mut child = spawn_child(&resumed);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
    }
    println!(
        "kill_resume: seed {seed}, uninterrupted run {uninterrupted:?}, killed after {delays:?}"
    );
    assert!(spawn_child(&resumed).wait().unwrap().success());

    for name in common::OUTPUT_FILES {
        let expected = std::fs::read(reference.join(name)).unwrap();
        let got = std::fs::read(resumed.join(name))
            .unwrap_or_else(|e| panic!("{name} missing after resume (seed {seed}): {e}"));
        assert!(
            expected == got,
            "{name} differs after kill and resume (seed {seed})"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    println!("kill_resume: temp files left by killed writers (harmless): {leftovers:?}");

    let reference_entries = Journal::open(&reference.join("journal.sqlite"))
        .unwrap()
        .entries()
        .unwrap();
    let entries = Journal::open(&resumed.join("journal.sqlite"))
        .unwrap()
        .entries()
        .unwrap();
    assert_eq!(
        entries.len(),
        3 * SCENES,
        "one journal row per scene and stage"
    );
    assert_eq!(
        entries.iter().map(|e| &e.key).collect::<Vec<_>>(),
        reference_entries.iter().map(|e| &e.key).collect::<Vec<_>>()
    );
    for entry in &entries {
        assert!(entry.answered, "{entry:?}");
        assert_eq!(
            entry.answered_count, 1,
            "an answered request was asked again: {entry:?}"
        );
    }
    let resent: u64 = entries.iter().map(|e| e.sent - e.answered_count).sum();
    assert!(
        resent <= kills * BATCH,
        "{resent} re-sent requests; at most {} can have been in flight at the kills",
        kills * BATCH
    );
    println!("kill_resume: ok ({resent} in-flight requests re-sent after {kills} kills)");
}
