//! End-to-end tests: real guests booted by `moat` on real KVM.
//!
//! Where this host's KVM is hardware-backed (or this process already runs inside the nested
//! harness), the tests run here. On a PVM host, which cannot boot ordinary guests, this binary
//! re-runs itself inside an L2 VM through `tests/nested/run`, so cargo still sees one pass or
//! failure per test. Without any KVM the tests fail, each saying why, unless
//! `MOAT_E2E_ALLOW_SKIP=1` explicitly turns them into ignored tests.

mod boot;
mod channel;
mod launch;
mod support;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let mut args = Arguments::from_args();
    // One guest at a time: the host has two cores, and L2 guests are software-emulated.
    args.test_threads.get_or_insert(1);

    match support::where_to_run() {
        support::Place::Here => {}
        support::Place::Nested => {
            // What this run selects, in the order the tests run (one at a time).
            let names: Vec<String> = all_tests()
                .iter()
                .filter(|t| !args.is_filtered_out(t))
                .map(|t| t.name().to_string())
                .collect();
            support::rerun_nested(&names)
        }
        support::Place::Nowhere(why) => {
            return support::conclude_without_kvm(&args, all_tests(), &why)
        }
    }
    let cache = support::cache_dir();
    let conclusion = libtest_mimic::run(&args, all_tests());
    let _ = std::fs::remove_dir_all(cache);
    conclusion.exit();
}

fn all_tests() -> Vec<Trial> {
    let mut tests = boot::tests();
    tests.extend(launch::tests());
    tests.extend(channel::tests());
    tests
}

/// A test of this suite: its name and body.
pub type Test = (&'static str, fn() -> Result<(), String>);

/// Turns the suite into libtest-mimic trials.
pub fn trials(tests: &[Test]) -> Vec<Trial> {
    tests
        .iter()
        .map(|&(name, body)| Trial::test(name, move || body().map_err(Into::into)))
        .collect()
}
