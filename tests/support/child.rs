//! The real `minicrm` binary as a child process, for the suites that test it
//! from outside (`tests/api`, `tests/faults`, `tests/ops`): started with none
//! of the caller's minicrm settings, its log (stderr) read line by line as it
//! comes, killed when dropped. What each suite adds (clients, health, metrics)
//! stays in the suite.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A copy of the binary cargo built for these tests, taken once: a build in
/// another work tree sharing the target directory may replace the original
/// while the tests run (checked: the copy must know a flag of this tree).
pub fn binary() -> &'static Path {
    static COPY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("minicrm");
        std::fs::copy(env!("CARGO_BIN_EXE_minicrm"), &path).expect("copy the binary");
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .expect("minicrm --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--metrics-listen"),
            "{} is not this tree's build: another work tree sharing CARGO_TARGET_DIR \
             replaced it after cargo built it; run the tests again",
            env!("CARGO_BIN_EXE_minicrm")
        );
        (dir, path)
    });
    path
}

/// `minicrm` (the copy of [`binary`]) with none of the caller's `MINICRM_*`
/// settings nor `DATABASE_URL` in its environment.
pub fn command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("MINICRM_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    command
}

/// What to do with colour codes in the log lines read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colours {
    /// Kept: for tests of what the server writes.
    Keep,
    /// Stripped: for tests that read fields from a text log.
    Strip,
}

/// A running `minicrm`, its log read as it comes. Killed when dropped.
pub struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Spawns `command` with stdin and stdout closed and stderr read.
    pub fn spawn(mut command: Command, colours: Colours) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start minicrm");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = match colours {
                    Colours::Keep => line,
                    Colours::Strip => strip_ansi(&line),
                };
                kept.lock().unwrap().push(line.clone());
                let _ = sender.send(line);
            }
        });
        Self {
            child,
            lines,
            log,
            reader: Some(reader),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Every line logged so far, as one text.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The next log line containing `needle`, waiting at most `timeout`.
    /// Blocking.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; the log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Waits for the exit, at most `timeout`; `None` if it still runs.
    /// Blocking.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// After the exit: waits until every line it wrote has been read.
    pub fn read_to_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// `kill -NAME`, by the shell's own `kill` (no procps needed).
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// `kill -9`, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes ANSI CSI sequences (`ESC [ … final byte`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn ansi_codes_are_stripped() {
    assert_eq!(
        strip_ansi(
            "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m address\u{1b}[2m=\u{1b}[0m1.2.3.4:5"
        ),
        "2026  INFO address=1.2.3.4:5"
    );
}
