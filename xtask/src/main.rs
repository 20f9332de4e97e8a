//! `cargo xtask …`: the project's own commands.
//!
//! - `deps`  installs the Debian packages the build and tests need (with sudo when not root)
//! - `demo`  builds, starts an agent, creates a bottle, shows an allowed and a blocked
//!   connection from inside it and its stats, then cleans up
//! - `test`  unit tests, then the privileged end-to-end tests (as root; sudo when not root)
//! - `bench` measurements side by side, printed as Markdown for docs/benchmarks.md
//! - `images` builds the small test image (busybox, curl, git) offline under target/images

mod agent;
mod bench;
mod demo;
mod images;
mod sh;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install missing Debian packages (clang-19, libbpf-dev, iproute2, bpftool, iperf3, …).
    Deps,
    /// Run the demo end to end.
    Demo,
    /// Run every test: unit tests, then privileged end-to-end tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure; prints Markdown tables with ratios.
    Bench {
        /// Which benchmark: datapath, proxy, launch, git, or all.
        #[arg(default_value = "datapath")]
        which: String,
    },
    /// Build the test image (OCI layout and docker-save tarball) under target/images.
    Images {
        /// Busybox only: leave out the host's curl and git.
        #[arg(long)]
        minimal: bool,
    },
    /// Internal: the part of `demo` that needs root.
    #[command(hide = true)]
    DemoPrivileged,
    /// Internal: the part of `bench` that needs root.
    #[command(hide = true)]
    BenchPrivileged { which: String },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Deps => sh::deps(),
        Cmd::Demo => {
            sh::deps()?;
            sh::build_bins(true)?;
            // The demo's stand-in internet runs the test upstream.
            sh::cargo(&["build", "--release", "-p", "bottle-tests", "--bins"])?;
            sh::run_privileged(&["demo-privileged"])
        }
        Cmd::DemoPrivileged => demo::run(),
        Cmd::Test { filter } => test(filter),
        Cmd::Bench { which } => {
            bench::check_name(&which)?;
            sh::deps()?;
            sh::build_bins(true)?;
            // The proxy bench's tools and peers are prepared as the calling user, so what it
            // puts under target/ stays theirs; why a peer is missing travels in the environment.
            let env = if bench::includes_proxy(&which) {
                bench::proxy::prepare()?
            } else {
                Vec::new()
            };
            if bench::includes_launch(&which) {
                bench::launch::prepare()?;
            }
            if bench::includes_git(&which) {
                bench::git::prepare()?;
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sh::run_privileged_env(&["bench-privileged", &which], &env)
        }
        Cmd::BenchPrivileged { which } => bench::run(&which),
        Cmd::Images { minimal } => images::run(minimal),
    }
}

fn test(filter: Option<String>) -> Result<()> {
    sh::deps()?;
    // Binaries first: the end-to-end tests drive them; some run the offline test image.
    sh::build_bins(false)?;
    // The test image (busybox, curl, git, stand-in claude/codex) the end-to-end tests run.
    images::run(false)?;
    let mut tally = sh::Tally::default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut unit = std::process::Command::new(&cargo);
    unit.args(["test", "--workspace", "--exclude", "bottle-tests"]);
    if let Some(f) = &filter {
        unit.arg(f);
    }
    let unit_result = sh::run_tests(&mut unit, &mut tally);
    // The end-to-end tests share kernel state, so they run one at a time, as root.
    let mut e2e_result = Ok(());
    if unit_result.is_ok() {
        let _turn = sh::e2e_lock()?;
        let bin_dir = sh::bin_dir(false)?;
        for exe in sh::test_executables("bottle-tests")? {
            let mut args = vec![exe.as_str(), "--test-threads=1"];
            if let Some(f) = &filter {
                args.push(f);
            }
            let mut cmd = sh::root_command(&args, &[("BOTTLE_BIN_DIR", &bin_dir)]);
            e2e_result = sh::run_tests(&mut cmd, &mut tally);
            if e2e_result.is_err() {
                break;
            }
        }
    }
    // The plain closing line CI reads: totals over every test binary.
    println!(
        "\nxtask: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    unit_result?;
    e2e_result
}
