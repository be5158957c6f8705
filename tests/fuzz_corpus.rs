//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets' own functions
//! (`fuzz/harness.rs`) on stable, so what the fuzzer found keeps being checked by `cargo test`
//! without nightly: a crash input added to the corpus stays fixed.

#[path = "../fuzz/harness.rs"]
mod harness;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, run) in harness::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 3,
            "{target}: a corpus of a few inputs at least"
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
        }
    }
}
