//! Short versions of the reliability campaigns: they fail on any lost or damaged checkpoint, any
//! silent corruption, a torn read, a second writer let in, or a fault that leaves a mess.

use std::path::Path;

use safeckpt_reliability::crash::Mode;
use safeckpt_reliability::{concurrency, corrupt, crash, faults, hostile, syscalls};

/// Says what was not run, on the terminal itself (past the test harness's capture), so that a
/// plain `cargo test` shows it.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {what}\n").as_bytes());
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_safeckpt-reliability"))
}

#[test]
fn sigkill_during_saves_loses_nothing() {
    let mut left_by_kills = 0;
    for (mode, seed) in [(Mode::File, 11), (Mode::Manager, 13), (Mode::ManagerSharded, 14)] {
        let dir = tempfile::tempdir().unwrap();
        let r = crash::campaign(exe(), mode, dir.path(), 12, 120, seed).unwrap();
        assert!(r.is_clean(), "{mode:?}: {r:#?}");
        assert_eq!(r.kills, 12);
        assert!(r.latest_ok >= 6, "{mode:?}: too few kills landed after a save: {r:#?}");
        assert!(r.logged_commits > 0, "{mode:?}: {r:#?}");
        left_by_kills += r.leftovers_seen;
    }
    // Kills landed inside saves (they left temporary files, which the library then removed).
    assert!(left_by_kills > 0, "no kill landed during a save");
}

#[test]
fn sigkill_while_a_set_is_replaced_never_shows_a_mixed_set() {
    let dir = tempfile::tempdir().unwrap();
    let r = crash::campaign(exe(), Mode::ShardedReplace, dir.path(), 12, 120, 15).unwrap();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.kills, 12);
    assert!(r.latest_ok >= 6, "too few kills landed after a save: {r:#?}");
}

#[test]
fn corruption_is_always_detected() {
    let r = corrupt::campaign(3000, 5).unwrap();
    assert_eq!(r.silent_wrong, 0, "{r:#?}");
    assert_eq!(r.data_named, r.data_trials, "{r:#?}");
    assert!(r.header_trials > 10, "{r:#?}");
}

#[test]
fn faults_leave_the_previous_checkpoint_and_no_mess() {
    let base = tempfile::tempdir().unwrap();
    let fsize = base.path().join("fsize");
    std::fs::create_dir_all(&fsize).unwrap();
    let mut all = vec![
        faults::file_size_limit(exe(), &fsize).unwrap(),
        faults::disk_full(base.path()).unwrap(),
        faults::read_only(base.path()).unwrap(),
    ];
    all.extend(faults::vanished_directory(base.path()).unwrap());
    for f in &all {
        assert!(f.is_clean(), "{f:#?}");
        if !f.ran {
            // The full and read-only filesystems are tmpfs mounts: root (as in CI) or skipped.
            assert!(
                std::env::var_os("SAFECKPT_REQUIRE_MOUNT").is_none(),
                "SAFECKPT_REQUIRE_MOUNT is set but this fault could not be set up: {f:#?}"
            );
            skipped(&format!("{} (mounting a tmpfs needs root; CI runs as root)", f.fault));
        }
    }
    assert!(all[0].error.contains("File too large"), "{:#?}", all[0]);
}

#[test]
fn one_writer_per_run_directory_and_no_torn_reads() {
    let base = tempfile::tempdir().unwrap();
    let lock = concurrency::second_writer(exe(), &base.path().join("locked")).unwrap();
    assert!(lock.refused && lock.names_holder, "{lock:#?}");
    let r = concurrency::readers_during_commits(&base.path().join("readers"), 60).unwrap();
    assert_eq!(r.torn, 0, "{r:#?}");
    assert!(r.verified > 0, "{r:#?}");
}

#[test]
fn a_durable_save_flushes_before_and_after_the_rename() {
    let dir = tempfile::tempdir().unwrap();
    let r = syscalls::durable_save_order(exe(), dir.path()).unwrap();
    if !r.available {
        assert!(std::env::var_os("SAFECKPT_REQUIRE_STRACE").is_none(), "strace is required but missing");
        skipped("a_durable_save_flushes_before_and_after_the_rename (strace not installed; CI installs it)");
        return;
    }
    assert!(r.ordered, "{r:#?}");
}

#[test]
fn a_huge_tensor_count_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let h = hostile::header_bomb(exe(), dir.path(), 100_000).unwrap();
    assert!(h.header_bytes > 7_000_000);
    // About 80 bytes of header per tensor; the parsed form stays within a small multiple of the
    // header itself.
    assert!(h.peak_rss_growth_mib < 4.0 * h.header_bytes as f64 / (1 << 20) as f64 + 16.0, "{h:#?}");
}

#[test]
fn malicious_pickles_are_refused_and_never_run() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/pytorch");
    let work = tempfile::tempdir().unwrap();
    let m = hostile::malicious_corpus(&fixtures, work.path()).unwrap();
    assert!(m.files >= 21, "{m:#?}");
    assert_eq!(m.refused, m.files, "{m:#?}");
    assert_eq!(m.executed, 0, "{m:#?}");
}

#[test]
fn power_loss_after_any_operation_loses_nothing() {
    use safeckpt_reliability::powerloss::{self, Mutation};
    if !powerloss::available() {
        assert!(std::env::var_os("SAFECKPT_REQUIRE_STRACE").is_none(), "strace is required but not installed");
        skipped("power_loss_after_any_operation_loses_nothing (strace not installed; CI installs it)");
        return;
    }
    for (mode, seed) in [(Mode::File, 21), (Mode::ShardedReplace, 27), (Mode::Manager, 23), (Mode::ManagerSharded, 26)]
    {
        let r = powerloss::campaign(exe(), mode, 3, seed).unwrap();
        assert!(r.is_clean(), "{mode:?}: {r:#?}");
        assert!(r.new_checkpoint > 0 && r.previous_checkpoint > 0, "{mode:?}: {r:#?}");
    }
    // The model notices what the flushes protect: without the files' fsync the new checkpoint
    // can be renamed into place with its data lost; without the directory's, a save that
    // returned can be undone.
    let r = powerloss::campaign_with(exe(), Mode::File, 3, 24, Mutation::NoFileSyncs).unwrap();
    assert!(r.lost > 0, "{r:#?}");
    let r = powerloss::campaign_with(exe(), Mode::Manager, 3, 25, Mutation::NoDirectorySyncs).unwrap();
    assert!(!r.returned_save_durable, "{r:#?}");
}
