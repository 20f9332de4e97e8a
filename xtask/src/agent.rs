//! A private `bottle-agent` for the demo and benches: its own socket, state, pool, name
//! prefixes and pin root, so it never touches a real agent's bottles.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct PrivateAgent {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub pin_root: PathBuf,
    netns_prefix: String,
    veth_prefix: String,
    child: Child,
}

impl PrivateAgent {
    /// `tag` names everything (≤ 4 chars); `extra` is appended to the TOML config.
    pub fn start(tag: &str, pool: &str, extra: &str) -> Result<Self> {
        Self::start_with_run_dir(tag, pool, extra, None)
    }

    /// [`Self::start`] with the agent's `run_dir` at `run_dir` (`<dir>/run` when `None`).
    pub fn start_with_run_dir(
        tag: &str,
        pool: &str,
        extra: &str,
        run_dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("bottle-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let run_dir = run_dir.map_or_else(|| dir.join("run"), std::path::Path::to_path_buf);
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/bottle-{tag}"));
        let netns_prefix = format!("bottle{tag}-");
        let veth_prefix = format!("b{tag}-");
        // BOTTLE_XTASK_AGENT_LOG=FILE keeps the agent's debug log (its phases: `launch
        // phases`, `create`, `teardown`, `run finished`) for a look at where time goes.
        let debug_log = std::env::var_os("BOTTLE_XTASK_AGENT_LOG").map(PathBuf::from);
        let level = if debug_log.is_some() { "debug" } else { "warn" };
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{d}/agent.sock\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{r}\"\n\
                 bpf_pin_root = \"{p}\"\npool = \"{pool}\"\nnetns_prefix = \"{netns_prefix}\"\n\
                 veth_prefix = \"{veth_prefix}\"\nlog = \"{level}\"\n{extra}\n",
                d = dir.display(),
                r = run_dir.display(),
                p = pin_root.display(),
            ),
        )?;
        let bin = PathBuf::from(crate::sh::bin_dir(true)?).join("bottle-agent");
        let stdout = match &debug_log {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .stdout(stdout)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agent = Self {
            dir,
            run_dir,
            pin_root,
            netns_prefix,
            veth_prefix,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(agent.socket()).is_err() {
            if let Some(status) = agent.child.try_wait()? {
                bail!("bottle-agent exited ({status})");
            }
            if Instant::now() > deadline {
                bail!("bottle-agent did not start within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One API call over the socket; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((status, body))
    }

    /// Creates a bottle; returns its metadata as JSON.
    pub fn create(&self, name: &str) -> Result<serde_json::Value> {
        let (status, body) =
            self.api("POST", "/v1/bottles", &format!("{{\"name\":\"{name}\"}}"))?;
        if status != 201 {
            bail!("create {name}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let (status, body) = self.api("DELETE", &format!("/v1/bottles/{name}"), "")?;
        if status != 204 {
            bail!("rm {name}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Runs the real `bottle` client against this agent with extra environment (token values
    /// for `--egress`), quietly; returns stdout.
    pub fn client_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let bin = PathBuf::from(crate::sh::bin_dir(true)?).join("bottle");
        let mut cmd = Command::new(bin);
        cmd.args(args).env("BOTTLE_HOST", self.socket());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("bottle {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits (at most 5 s) until the agent's background work after a removal is done: the
    /// removed bottles' directories deleted (the run and state directories' `trash` empty),
    /// their veths gone and
    /// the next spare network made (one namespace and one veth per running bottle, plus the
    /// spare). Like podman's clean-up, none of it may eat into the next measurement.
    pub fn settle(&self, running: usize) {
        let count = |dir: &str, prefix: &str| names_with_prefix(dir, prefix).len();
        let trashes = [self.run_dir.join("trash"), self.dir.join("state/trash")];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let trash_empty = trashes
                .iter()
                .all(|t| std::fs::read_dir(t).map_or(true, |mut d| d.next().is_none()));
            if trash_empty
                && count("/run/netns", &self.netns_prefix) == running + 1
                && count("/sys/class/net", &self.veth_prefix) == running + 1
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs the real `bottle` client against this agent, printing the command and output.
    pub fn client(&self, args: &[&str]) -> Result<String> {
        let bin = PathBuf::from(crate::sh::bin_dir(true)?).join("bottle");
        println!("$ bottle {}", args.join(" "));
        let out = Command::new(bin)
            .args(args)
            .env("BOTTLE_HOST", self.socket())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("bottle {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(text)
    }
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        // Remove every bottle through the agent, then stop it and clear what is left.
        if let Ok((200, body)) = self.api("GET", "/v1/bottles", "") {
            if let Ok(serde_json::Value::Array(list)) = serde_json::from_str(&body) {
                for b in list {
                    if let Some(name) = b["name"].as_str() {
                        let _ = self.remove(name);
                    }
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the agent could not remove (it was gone, say after Ctrl-C reached it too):
        // only names with this agent's private prefixes.
        for (dir, prefix) in [
            ("/run/netns", &self.netns_prefix),
            ("/sys/class/net", &self.veth_prefix),
        ] {
            for name in names_with_prefix(dir, prefix) {
                let what = if dir == "/run/netns" {
                    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&name));
                    "netns"
                } else {
                    "link"
                };
                let _ = Command::new("ip")
                    .args([what, "del", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Entries of `dir` (network namespaces, interfaces) whose names start with `prefix`.
fn names_with_prefix(dir: &str, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `args` inside the namespace; returns (success, stdout+stderr).
pub fn netns_exec(netns: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}
