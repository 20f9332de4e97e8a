//! Times `Catalog::load` + `Catalog::resolve` on a home with 200 agents and 50 bottles
//! (chains of `extends` up to five deep). Prints `manifest_load_resolve_ms=<median>`.
//!
//! `cargo run --release -p bottle-manifest --example manifest_bench`
//!
//! With `BOTTLE_CLI=target/release/bottle`, also times the whole `bottle run AGENT
//! --dry-run` command on that home (`bottle_run_dry_run_ms=<median>`).

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use bottle_manifest::{Catalog, LoadOptions};

const BOTTLES: usize = 50;
const AGENTS: usize = 200;
const RUNS: usize = 15;

fn write(path: &Path, text: &str) -> Result<(), Box<dyn Error>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn bottle(i: usize, key: &Path) -> Result<String, Box<dyn Error>> {
    let mut yaml = String::from("---\n");
    // Chains: b0 <- b1 <- … <- b4, b5 <- … <- b9, …
    if i % 5 != 0 {
        writeln!(yaml, "extends: b{}", i - 1)?;
    }
    yaml.push_str("env:\n");
    for e in 0..5 {
        writeln!(yaml, "  VAR_{i}_{e}: value-{e}")?;
    }
    writeln!(yaml, "  HOST_{i}: ${{HOME}}")?;
    writeln!(
        yaml,
        "git-gate:\n  user: {{name: Bot {i}, email: bot{i}@example.com}}\n  repos:\n    repo-{i}:\n      url: ssh://git@git.example.com:22/team/repo-{i}.git\n      identity: {}\n      host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{i}",
        key.display()
    )?;
    yaml.push_str("egress:\n  routes:\n");
    for r in 0..6 {
        writeln!(
            yaml,
            "    - host: api{r}.svc{i}.example.com\n      path_allowlist: [/v1/, /v2/]\n      auth: {{scheme: Bearer, token_ref: TOKEN_{i}_{r}}}"
        )?;
    }
    yaml.push_str("---\nA benchmark bottle.\n");
    Ok(yaml)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let home = root.join("home/.bot-bottle");
    let cwd = root.join("repo");
    let key = root.join("home/.ssh/gate");
    write(&key, "key")?;
    for i in 0..BOTTLES {
        write(&home.join(format!("bottles/b{i}.md")), &bottle(i, &key)?)?;
    }
    for s in 0..10 {
        write(&home.join(format!("skills/skill-{s}/SKILL.md")), "skill\n")?;
    }
    for a in 0..AGENTS {
        let text = format!(
            "---\nname: agent-{a}\ndescription: Agent {a}\nbottle: b{}\nskills: [skill-{}, skill-{}]\ngit-gate:\n  user: {{email: agent{a}@example.com}}\n---\nYou are agent {a}.\n\n{}",
            a % BOTTLES,
            a % 10,
            (a + 3) % 10,
            "Some longer prompt text. ".repeat(40)
        );
        // A quarter of the agents live in the repository instead.
        let path = if a % 4 == 0 {
            cwd.join(format!(".bot-bottle/agents/agent-{a}.md"))
        } else {
            home.join(format!("agents/agent-{a}.md"))
        };
        write(&path, &text)?;
    }

    let opts = LoadOptions {
        home: home.clone(),
        cwd: cwd.clone(),
        user_home: Some(root.join("home")),
    };
    let target = "agent-199"; // bottle b49: four parents deep
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let catalog = Catalog::load_with(opts.clone());
        let agent = catalog.resolve(target)?;
        let elapsed = start.elapsed();
        if !catalog.errors.is_empty() || agent.bottle.parents.len() != 4 {
            return Err(format!("unexpected catalog: {:?}", catalog.errors).into());
        }
        std::hint::black_box(agent);
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[RUNS / 2];
    eprintln!(
        "{BOTTLES} bottles, {AGENTS} agents, {RUNS} runs: min {:.2} ms, max {:.2} ms",
        times[0],
        times[RUNS - 1]
    );
    println!("manifest_load_resolve_ms={median:.2}");

    // The whole command a user runs, when given: process start, load, resolve, provider
    // plan and the preflight text.
    if let Some(cli) = std::env::var_os("BOTTLE_CLI") {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let mut cmd = std::process::Command::new(&cli);
            cmd.args(["run", target, "--dry-run"])
                .current_dir(&cwd)
                .env("BOTTLE_HOME", &home)
                .env("HOME", root.join("home"))
                .stdout(std::process::Stdio::null());
            for i in 0..BOTTLES {
                for r in 0..6 {
                    cmd.env(format!("TOKEN_{i}_{r}"), "bench-token-value");
                }
            }
            let start = Instant::now();
            let status = cmd.status()?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            if !status.success() {
                return Err(
                    format!("{} run {target} --dry-run: {status}", cli.to_string_lossy()).into(),
                );
            }
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "bottle run {target} --dry-run, {RUNS} runs: min {:.2} ms, max {:.2} ms",
            times[0],
            times[RUNS - 1]
        );
        println!("bottle_run_dry_run_ms={:.2}", times[RUNS / 2]);
    }
    Ok(())
}
