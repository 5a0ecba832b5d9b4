//! `intelligent-video serve` and `intelligent-video config check`: configuration loading, logging
//! setup, signals, malloc's arena cap, and the engine loader (the TensorRT → TensorRT-RTX → CUDA → CPU chain)
//! handed to `server::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigOverrides, LogFormat};
use crate::server::state::{EngineInfo, OpenVinoInfo};
use crate::server::{self, Listeners, Loader, StatusFn};

/// Exit code for configuration errors (sysexits EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: ConfigOverrides,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings (exit 78 when invalid).
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: ConfigOverrides,
    },
}

/// `config check`.
pub fn config_check(cmd: &ConfigCommand) -> ExitCode {
    let ConfigCommand::Check { config, overrides } = cmd;
    match Config::load(config.as_deref(), overrides) {
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", c.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.effective_log_format() {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry.with(layer).init(),
            Err(e) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .init();
                tracing::warn!(error = %e, "journald is not reachable; logging text to stderr");
            }
        },
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// The model loader used by the daemon: the TensorRT → TensorRT-RTX → CUDA → CPU chain of `crate::engine`.
pub fn engine_loader(cfg: Config) -> Loader {
    Box::new(move |status: StatusFn| {
        let dir = cfg.installed_model_dir()?;
        // Guard the runtime from the moment it is loaded (an engine build can take minutes);
        // the providers' libraries are added once the sessions exist. A library that fails to
        // load is reported by the engine below.
        if crate::backend::ort::ensure_runtime(crate::engine::library(&cfg.engine()).as_deref())
            .is_ok()
        {
            crate::backend::library_guard::watch_loaded();
        }
        let engine = crate::engine::load(&cfg.engine(), &dir, false, &|s: &str| status(s))
            .map_err(|e| e.to_string())?;
        let guarded = crate::backend::library_guard::watch_loaded();
        if !guarded.is_empty() {
            tracing::info!(files = ?guarded, "watching the loaded ONNX Runtime libraries for in-place rewrites");
        }
        let speedup_estimate = crate::engine::speedup_estimate(&engine);
        let cached = engine.cached;
        let det = engine.detector;
        let info = EngineInfo {
            model_name: cfg.model.clone(),
            model_dir: dir.display().to_string(),
            backend: engine.backend.clone(),
            device: match engine.backend.as_str() {
                "cpu" => "cpu".into(),
                "openvino" => cfg.openvino_device.to_lowercase(),
                _ => engine.gpu.name.clone().unwrap_or_else(|| "cpu".into()),
            },
            gpu_available: engine.gpu.available,
            optimization_time: engine.build_time,
            speedup_estimate,
            cached,
            fallbacks: engine.fallbacks,
            gpu: Some(engine.gpu),
            onnxruntime_version: crate::backend::ort::runtime_version(),
            onnxruntime_path: crate::backend::ort::runtime_path(),
            cuda_libraries: crate::backend::ort::preloaded_cuda_libraries(),
            image_size: det.config.image_size,
            warmup_ms: 0.0,
            openvino: openvino_info(&cfg, &dir),
        };
        Ok((det, info))
    })
}

/// What `/api/optimization` shows of OpenVINO: none when no runtime is installed or configured.
fn openvino_info(cfg: &Config, dir: &std::path::Path) -> Option<OpenVinoInfo> {
    let engine = cfg.engine();
    let path = crate::engine::openvino_library(&engine)?;
    let measurement = crate::cache::model_fingerprint(dir)
        .ok()
        .and_then(|f| crate::engine::cpu_tier::load(&engine, &f));
    Some(OpenVinoInfo {
        version: crate::backend::openvino::loaded_version(),
        path,
        device: cfg.openvino_device.clone(),
        precision: cfg.openvino_precision.name().into(),
        measurement,
    })
}

/// malloc arenas the daemon uses unless `MALLOC_ARENA_MAX` says otherwise. glibc's default (8 per
/// core) lets every stream's short-lived GStreamer threads leave memory in arenas of their own:
/// RSS grew 133 → 264 MB over 400 stream create/delete cycles, and stayed at 138–151 MB with 1.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas (an environment's `MALLOC_ARENA_MAX`, which glibc reads itself,
/// wins).
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes an allocator setting; M_ARENA_MAX takes any positive count.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// `serve`.
pub fn serve(args: &ServeArgs) -> ExitCode {
    limit_malloc_arenas();
    let cfg = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            server::notify(&[sd_notify::NotifyState::Status("invalid configuration")]);
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging(&cfg);
    tracing::info!(config = %serde_json::to_string(&cfg.redacted()).unwrap_or_default(), "effective configuration");
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let listeners = Listeners::from_config(&cfg)
            .await
            .map_err(|e| e.to_string())?;
        let token = CancellationToken::new();
        spawn_signal_handler(token.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let loader = engine_loader(cfg.clone());
        server::run(cfg, listeners, loader, token)
            .await
            .map_err(|e| e.to_string())
    });
    // Work that cannot be interrupted (a blocked open, a hung GStreamer teardown) never keeps the
    // process from exiting once the daemon has stopped.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "daemon failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_signal_handler(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // The configuration and the engine are fixed at start: a reload is a restart
                // (systemctl restart), so SIGHUP must not kill the daemon either.
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP ignored: the configuration is read at start; restart the service to apply changes");
                    continue;
                }
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => {
                    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1 {
                        eprintln!("second interrupt: exiting now");
                        std::process::exit(130);
                    }
                    tracing::info!("SIGINT received (again to exit at once)");
                }
            }
            token.cancel();
        }
    });
    Ok(())
}
