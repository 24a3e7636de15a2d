//! The `gateway` binary: command line, logging, the Tokio runtime and signals around the
//! library's request flow.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gateway::runtime::{self, Running};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version = gateway::version::LONG,
    about = "API gateway and reverse proxy"
)]
struct Cli {
    /// Configuration file (YAML or JSON); without a subcommand, runs it.
    #[arg(long, global = true)]
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
    Run,
    /// Check a configuration file and exit: 0 when valid, 1 with every error otherwise.
    Validate,
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

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Version { json }) => {
            if json {
                println!("{}", gateway::version::json());
            } else {
                println!("gateway {}", gateway::version::LONG);
            }
            ExitCode::SUCCESS
        }
        Some(Command::Validate) => {
            let Some(path) = cli.config else {
                eprintln!("gateway validate: --config FILE is required");
                return ExitCode::from(2);
            };
            match gateway::config::load(&path) {
                Ok(loaded) => {
                    for w in &loaded.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: configuration is valid", path.display());
                    ExitCode::SUCCESS
                }
                Err(invalid) => {
                    for w in &invalid.warnings {
                        eprintln!("warning: {w}");
                    }
                    eprintln!("{invalid}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Demo { port, admin_port }) => {
            init_logging(cli.log_format);
            report(serve(2, || async move {
                Ok(gateway::demo::run(port, admin_port).await?)
            }))
        }
        Some(Command::Run) | None => {
            let Some(path) = cli.config else {
                eprintln!("gateway: --config FILE is required (or try `gateway demo`)");
                return ExitCode::from(2);
            };
            init_logging(cli.log_format);
            let loaded = match gateway::config::load(&path) {
                Ok(l) => l,
                Err(invalid) => {
                    eprintln!("{invalid}");
                    return ExitCode::from(1);
                }
            };
            let workers = loaded.config.workers;
            report(serve(workers, move || async move {
                Ok(runtime::start(loaded, path).await?)
            }))
        }
    }
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
fn serve<F, Fut>(workers: usize, start: F) -> anyhow::Result<()>
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
                _ = &mut second => exit_now(),
            }
        }
        tracing::info!("draining in-flight requests");
        let drained = tokio::select! {
            d = running.shutdown(drain) => d,
            _ = &mut second => exit_now(),
        };
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!("drain timeout passed; closed the connections still open");
        }
        Ok(())
    })
}

/// A second SIGTERM/SIGINT during shutdown: leave now, without waiting for anything.
fn exit_now() -> ! {
    tracing::warn!("second signal: exiting at once");
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
