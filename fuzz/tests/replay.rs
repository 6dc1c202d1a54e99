//! Replays every committed corpus and regression input through its fuzz target, so a
//! crash found once stays fixed and the targets keep building.

use std::path::Path;

#[test]
fn corpora_replay() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for (name, target) in lanspread_fuzz::TARGETS {
        let mut count = 0;
        for dir in ["libfuzzer/corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(base.join(dir).join(name)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                target(&data);
                count += 1;
            }
        }
        assert!(count > 0, "no corpus for {name}");
        total += count;
    }
    eprintln!("replayed {total} inputs");
}
