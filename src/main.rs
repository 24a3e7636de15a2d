//! The `gateway` binary: command line, logging, the Tokio runtime and signals around the
//! library's request flow.

use anyhow::Context as _;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use gateway::runtime::{self, Running};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version = gateway::version::LONG,
    about = "API gateway and reverse proxy",
    after_help = "Without a subcommand, `gateway --config FILE` runs FILE."
)]
struct Cli {
    /// Configuration file (YAML or JSON) to run.
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Format of the gateway's own logs on stderr (access logs are always JSON).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve with the given configuration.
    Run(RunArgs),
    /// Check a configuration file and exit: 0 when valid, 1 with every error (or when it has
    /// nothing to serve, which `run` refuses).
    Validate(ValidateArgs),
    /// Run built-in upstreams and an example configuration, ready to curl.
    Demo {
        /// Port of the demo gateway listener.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the demo admin listener.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Print the version, commit and target.
    Version {
        /// Print {"version", "commit", "target"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Configuration file (YAML or JSON).
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write the process id to FILE once the gateway serves; removed at exit.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Configuration file (YAML or JSON).
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How to print the result: text for people, json for tools.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

/// Terminal colours on the gateway's own logs: only for a person at a terminal, and never
/// when `NO_COLOR` is set to anything (https://no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A usage error: clap's style, exit code 2.
fn usage(message: &str) -> ExitCode {
    eprintln!("gateway: {message}\n\nFor more information, try 'gateway --help'.");
    ExitCode::from(2)
}

/// `--config` given both before and after the subcommand.
fn one_config(top: Option<PathBuf>, sub: Option<PathBuf>) -> Result<Option<PathBuf>, ExitCode> {
    match (top, sub) {
        (Some(_), Some(_)) => Err(usage("--config is given twice")),
        (a, b) => Ok(a.or(b)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, &cli.config) {
        (None, None) => {
            // Bare `gateway`: what it can do, not a one-line complaint.
            let mut cmd = Cli::command();
            eprintln!("{}", cmd.render_help());
            return ExitCode::from(2);
        }
        (None, Some(_)) => Command::Run(RunArgs {
            config: None,
            pid_file: None,
        }),
        (Some(c @ (Command::Demo { .. } | Command::Version { .. })), Some(_)) => {
            let name = if matches!(c, Command::Demo { .. }) {
                "demo"
            } else {
                "version"
            };
            return usage(&format!(
                "--config does not apply to `{name}` (it runs no configuration file)"
            ));
        }
        (Some(c), _) => c,
    };
    match command {
        Command::Version { json } => {
            if json {
                println!("{}", gateway::version::json());
            } else {
                println!("gateway {}", gateway::version::LONG);
            }
            ExitCode::SUCCESS
        }
        Command::Validate(args) => {
            let path = match one_config(cli.config, args.config) {
                Ok(Some(p)) => p,
                Ok(None) => return usage("validate: --config FILE is required"),
                Err(code) => return code,
            };
            validate(&path, args.format)
        }
        Command::Demo { port, admin_port } => {
            init_logging(cli.log_format);
            report(serve(2, None, || async move {
                Ok(gateway::demo::run(port, admin_port).await?)
            }))
        }
        Command::Run(args) => {
            let path = match one_config(cli.config, args.config) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    return usage("--config FILE is required (or try `gateway demo`)");
                }
                Err(code) => return code,
            };
            init_logging(cli.log_format);
            if let Err(e) = gateway::notify::enable_from_env() {
                tracing::warn!("{e}; not notifying the service manager");
            }
            let loaded = match gateway::config::load(&path) {
                Ok(l) => l,
                Err(invalid) => {
                    for w in &invalid.warnings {
                        eprintln!("warning: {w}");
                    }
                    eprintln!("{invalid}");
                    return ExitCode::from(1);
                }
            };
            let workers = loaded.config.workers;
            report(serve(workers, args.pid_file, move || async move {
                Ok(runtime::start(loaded, path).await?)
            }))
        }
    }
}

/// `gateway validate`: exactly the checks `run` and a reload make before anything binds.
fn validate(path: &Path, format: OutputFormat) -> ExitCode {
    let result = gateway::config::load(path);
    let (errors, warnings, idle) = match &result {
        Ok(l) => (
            &[][..],
            &l.warnings[..],
            l.config.listeners.is_empty() && l.config.l4.is_empty(),
        ),
        Err(invalid) => (&invalid.errors[..], &invalid.warnings[..], false),
    };
    // Valid, but `run` would refuse it (HAProxy: "no error but will not start"): not a
    // success, since validate checks what run checks.
    let code: u8 = match (errors.is_empty(), idle) {
        (true, false) => 0,
        _ => 1,
    };
    if format == OutputFormat::Json {
        let problem = |p: &gateway::config::Problem| {
            serde_json::json!({
                "file": p.file.display().to_string(),
                "line": (p.line > 0).then_some(p.line),
                "column": (p.col > 0).then_some(p.col),
                "path": p.path,
                "message": p.message,
            })
        };
        let doc = serde_json::json!({
            "file": path.display().to_string(),
            "valid": errors.is_empty(),
            "runnable": code == 0,
            "errors": errors.iter().map(problem).collect::<Vec<_>>(),
            "warnings": warnings.iter().map(problem).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return ExitCode::from(code);
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
    match (&result, idle) {
        (Err(invalid), _) => eprintln!("{invalid}"),
        (Ok(_), true) => eprintln!(
            "{}: no errors, but nothing to serve: `gateway run` will not start it",
            path.display()
        ),
        (Ok(_), false) => println!("{}: configuration is valid", path.display()),
    }
    ExitCode::from(code)
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Builds the runtime, starts the gateway, and answers signals until SIGTERM/SIGINT
/// drains it (spec "Signals"): SIGHUP reloads, SIGUSR1 reopens access-log files, SIGUSR2
/// and SIGWINCH are ignored (operators send them by habit; none of them ends the process).
fn serve<F, Fut>(workers: usize, pid_file: Option<PathBuf>, start: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Running>>,
{
    // One worker: a current-thread runtime does the same work without the work-stealing
    // scheduler's cross-thread wake-ups.
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    rt.enable_all().thread_name("gateway-worker");
    let rt = rt.build().context("cannot start the runtime")?;
    rt.block_on(async move {
        // Handlers first: a signal that arrives while listeners are coming up must not
        // take the default action (which, for all of these, ends the process).
        let mut signals = Signals::install()?;
        let running = start().await?;
        let mut pid_file = match pid_file.map(PidFile::write).transpose() {
            Ok(p) => p,
            Err(e) => {
                running.shutdown(std::time::Duration::ZERO).await;
                return Err(e);
            }
        };
        gateway::notify::ready("serving");
        loop {
            match signals.next().await {
                Signal::Stop => break,
                Signal::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let reload = running.reload();
                    // The reload worker logs the outcome; the signal loop goes on.
                    tokio::select! {
                        _ = reload => {}
                        s = signals.next() => match s {
                            Signal::Stop => break,
                            other => signals.defer(other),
                        },
                    }
                }
                Signal::ReopenLogs => {
                    tracing::info!("SIGUSR1: reopening access-log files");
                    running.reopen_logs();
                }
                Signal::Ignored(name) => tracing::info!("{name} received and ignored"),
            }
        }
        let (delay, drain) = running.shutdown_settings();
        running.begin_drain();
        gateway::notify::stopping();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: /readyz answers 503; a second SIGTERM or SIGINT exits at once"
        );
        let second = async {
            loop {
                if let Signal::Stop = signals.next().await {
                    return;
                }
            }
        };
        tokio::pin!(second);
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut second => exit_now(pid_file.take()),
            }
        }
        tracing::info!("draining in-flight requests");
        let drained = tokio::select! {
            d = running.shutdown(drain) => d,
            _ = &mut second => exit_now(pid_file.take()),
        };
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!("drain timeout passed; closed the connections still open");
        }
        drop(pid_file);
        Ok(())
    })
}

/// `run --pid-file`: written once the gateway serves (atomically: a reader never sees a
/// partial id), removed at exit if it still holds this process's id.
struct PidFile {
    path: PathBuf,
    pid: String,
}

impl PidFile {
    fn write(path: PathBuf) -> anyhow::Result<PidFile> {
        let pid = format!("{}\n", std::process::id());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
        std::fs::write(&tmp, &pid)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::anyhow!("--pid-file: cannot write {}: {e}", path.display())
            })?;
        Ok(PidFile { path, pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|p| p == self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A second SIGTERM/SIGINT during shutdown: leave now, without waiting for anything (the
/// pid file goes first: nothing else would remove it).
fn exit_now(pid_file: Option<PidFile>) -> ! {
    tracing::warn!("second signal: exiting at once");
    drop(pid_file);
    std::process::exit(1)
}

#[cfg_attr(not(unix), allow(dead_code))]
enum Signal {
    Stop,
    Reload,
    ReopenLogs,
    Ignored(&'static str),
}

/// The signals the gateway answers, listened for from before it starts.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    winch: tokio::signal::unix::Signal,
    deferred: Option<Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot listen for {name}"))
        };
        Ok(Signals {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
            usr1: listen(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: listen(SignalKind::user_defined2(), "SIGUSR2")?,
            winch: listen(SignalKind::window_change(), "SIGWINCH")?,
            deferred: None,
        })
    }

    /// Keeps a signal that arrived while another was handled, for the next call.
    fn defer(&mut self, s: Signal) {
        self.deferred = Some(s);
    }

    async fn next(&mut self) -> Signal {
        if let Some(s) = self.deferred.take() {
            return s;
        }
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
            _ = self.usr1.recv() => Signal::ReopenLogs,
            _ = self.usr2.recv() => Signal::Ignored("SIGUSR2"),
            _ = self.winch.recv() => Signal::Ignored("SIGWINCH"),
        }
    }
}

/// Elsewhere (Windows): Ctrl-C and Ctrl-Break drain and stop; reload with `POST /reload`
/// or the file watcher.
#[cfg(not(unix))]
struct Signals {
    deferred: Option<Signal>,
}

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals { deferred: None })
    }

    fn defer(&mut self, s: Signal) {
        self.deferred = Some(s);
    }

    async fn next(&mut self) -> Signal {
        if let Some(s) = self.deferred.take() {
            return s;
        }
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Stop,
            // No console to listen to: nothing will ever arrive.
            Err(_) => std::future::pending().await,
        }
    }
}
