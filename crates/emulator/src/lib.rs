//! Local emulator of the provider APIs chatlake pulls from, for tests, demos and benchmarks.
//!
//! One axum server on loopback serves every provider: their URL paths do not clash, so a single
//! base URL works for all of them. LINE WORKS' files come from a second listener, another origin
//! (as `apis-storage.worksmobile.com` is for the real API), so every download crosses hosts. Today it emulates LINE WORKS (contract E1 of
//! `shared/providers.md`, see [`lineworks`]); Zoom and Qlara join as sibling modules.
//!
//! Everything the emulator serves is deterministic: the data comes from `(seed, scale)` and the
//! faults are counter-based, so a test that fails once fails again the same way.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use chatlake_emulator::{Emulator, EmulatorConfig};
//! let config = EmulatorConfig { faults: "lineworks.trailer=3".parse().unwrap(), ..Default::default() };
//! let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), config).await?;
//! println!("serving on {}", emulator.base_url());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

pub mod lineworks;
pub mod qlara;
pub mod zoom;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use lineworks::{LineworksFaults, LineworksStats};
pub use qlara::{QlaraFaults, QlaraStats};
pub use zoom::{ZoomFaults, ZoomStats};

/// How long [`Emulator::shutdown`] waits for open connections (a slow download) to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the emulator serves and how it misbehaves.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Seed of the generated data; the same seed always serves the same messages.
    pub seed: u64,
    /// Volume multiplier: 1.0 is about 1000 LINE WORKS messages a day. Must be finite and >= 0.
    pub scale: f64,
    /// Injected faults and tunable limits; none by default.
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            seed: 42,
            scale: 1.0,
            faults: Faults::default(),
        }
    }
}

/// Fault injection and tunable limits per provider, parsed from a `--faults` spec such as
/// `lineworks.trailer=3,lineworks.rate_limit_per_min=0`.
///
/// The spec is a comma-separated list of `provider.key=value` items; see [`LineworksFaults`] for
/// the LINE WORKS keys. Whitespace around items is ignored and an empty spec means no faults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Faults of the LINE WORKS emulator.
    pub lineworks: LineworksFaults,
    /// Faults of the Qlara emulator; see [`QlaraFaults`].
    pub qlara: QlaraFaults,
    /// Faults of the Zoom emulator.
    pub zoom: ZoomFaults,
}

impl FromStr for Faults {
    type Err = String;

    fn from_str(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("fault `{item}`: expected `key=value`"))?;
            let (key, value) = (key.trim(), value.trim());
            let result = match key.split_once('.') {
                Some(("lineworks", name)) => faults.lineworks.set(name, value),
                Some(("qlara", name)) => faults.qlara.set(name, value),
                Some(("zoom", name)) => faults.zoom.set(name, value),
                _ => Err(format!(
                    "unknown key `{key}`; keys start with a provider: {}",
                    LineworksFaults::KEYS.join(", ")
                )),
            };
            result.map_err(|err| format!("fault `{item}`: {err}"))?;
        }
        Ok(faults)
    }
}

/// Request counters, per provider. A snapshot: see [`Emulator::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// LINE WORKS counters.
    pub lineworks: LineworksStats,
    /// Qlara counters.
    pub qlara: QlaraStats,
    /// Zoom counters.
    pub zoom: ZoomStats,
}

/// A running emulator. Dropping it stops the server too; [`Emulator::shutdown`] also waits.
pub struct Emulator {
    local_addr: SocketAddr,
    base_url: String,
    /// The origin of LINE WORKS' file host (`http://127.0.0.1:PORT`): another port than the API.
    lineworks_files_url: String,
    /// The origin of Zoom's file host: a third port.
    zoom_files_url: String,
    lineworks: Arc<lineworks::Lineworks>,
    qlara: Arc<qlara::Qlara>,
    zoom: Arc<zoom::Zoom>,
    stop: watch::Sender<()>,
    server: JoinHandle<io::Result<()>>,
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port) and serves in a background task.
    pub async fn start(addr: SocketAddr, config: EmulatorConfig) -> io::Result<Emulator> {
        if !config.scale.is_finite() || config.scale < 0.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("scale must be a finite number >= 0, got {}", config.scale),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let base_url = base_url(local_addr);
        // LINE WORKS' file host: same address, a port of its own, so a download's `302` always
        // leads to another origin, as it does on the real API.
        let files_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let lineworks_files_url = crate::base_url(files_listener.local_addr()?);
        let lineworks = Arc::new(lineworks::Lineworks::new(
            &config,
            lineworks_files_url.clone(),
        )?);
        // Zoom's file host: another port again, as `file.zoom.us` is another host than the API.
        let zoom_files_listener =
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let zoom_files_url = crate::base_url(zoom_files_listener.local_addr()?);
        let files_router = lineworks::file_router(lineworks.clone());
        let zoom = Arc::new(zoom::Zoom::new(
            &config,
            base_url.clone(),
            zoom_files_url.clone(),
        ));
        let zoom_files_router = zoom::file_router(zoom.clone());
        let router = axum::Router::new().merge(lineworks::router(lineworks.clone()));
        let qlara = Arc::new(qlara::Qlara::new(&config, base_url.clone()));
        let router = router.merge(qlara::router(qlara.clone()));
        let router = router.merge(zoom::router(zoom.clone()));
        let (stop, stopped) = watch::channel(());
        let stopped_too = stopped.clone();
        let stopped_zoom = stopped.clone();
        // Either an explicit shutdown or the `Emulator` being dropped (the sender goes away).
        let until_stopped = |mut stopped: watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        let server = tokio::spawn(async move {
            let (api, files, zoom_files) = tokio::join!(
                axum::serve(listener, router).with_graceful_shutdown(until_stopped(stopped)),
                axum::serve(files_listener, files_router)
                    .with_graceful_shutdown(until_stopped(stopped_too)),
                axum::serve(zoom_files_listener, zoom_files_router)
                    .with_graceful_shutdown(until_stopped(stopped_zoom)),
            );
            api.and(files).and(zoom_files)
        });
        tracing::info!(%base_url, %lineworks_files_url, seed = config.seed, scale = config.scale, "Emulator started.");
        Ok(Emulator {
            local_addr,
            base_url,
            lineworks_files_url,
            zoom_files_url,
            lineworks,
            qlara,
            zoom,
            stop,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The origin LINE WORKS files are served from, `http://127.0.0.1:PORT` (another port than
    /// [`Emulator::base_url`]).
    pub fn lineworks_files_url(&self) -> String {
        self.lineworks_files_url.clone()
    }

    /// The `host:port` of LINE WORKS' file host, as the source's `download_hosts` lists it.
    pub fn lineworks_download_host(&self) -> String {
        self.lineworks_files_url
            .trim_start_matches("http://")
            .to_owned()
    }

    /// The origin Zoom files are served from, `http://127.0.0.1:PORT` (another port than
    /// [`Emulator::base_url`]).
    pub fn zoom_files_url(&self) -> String {
        self.zoom_files_url.clone()
    }

    /// The `host:port` of Zoom's file host, as the source's `download_hosts` lists it.
    pub fn zoom_download_host(&self) -> String {
        self.zoom_files_url.trim_start_matches("http://").to_owned()
    }

    /// The socket address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The credentials the emulator accepts, as `(key, value)` pairs: `lineworks.client_id`,
    /// `lineworks.client_secret`, `lineworks.service_account`, `lineworks.private_key` (PKCS#8
    /// PEM) and `lineworks.token` (a static bearer token that never expires); `zoom.account_id`,
    /// `zoom.client_id` and `zoom.client_secret` (Server-to-Server OAuth); `qlara.api_key`
    /// (`X-Api-Key`), `qlara.username` and `qlara.password` (Basic). With them, not a secret,
    /// `lineworks.download_host`: the `host:port` the LINE WORKS files come from, which a source
    /// must list in `download_hosts` to send its token there (`--emulate` does it), and
    /// `zoom.download_host`, the same for Zoom's files.
    pub fn credentials(&self) -> Vec<(String, String)> {
        let mut all = lineworks::credentials();
        all.push((
            "lineworks.download_host".to_owned(),
            self.lineworks_download_host(),
        ));
        all.push(("zoom.download_host".to_owned(), self.zoom_download_host()));
        all.extend(zoom::credentials());
        all.extend(qlara::credentials());
        all
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> Stats {
        Stats {
            lineworks: self.lineworks.stats(),
            qlara: self.qlara.stats(),
            zoom: self.zoom.stats(),
        }
    }

    /// Stops accepting connections and waits (up to a few seconds) for open ones to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "Emulator server failed."),
            Ok(Err(err)) => tracing::warn!(error = %err, "Emulator server task failed."),
            Err(_) => {
                tracing::warn!("Emulator connections still open after the grace period; aborting.");
                server.abort();
            }
        }
    }
}

/// A URL clients can reach: an unspecified bind address (`0.0.0.0`) is reached over loopback.
fn base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The emulator's clock, in one place so that every TTL and rate window reads the same time.
pub(crate) mod clock {
    use super::*;

    /// Monotonic time for TTLs and rate windows.
    pub(crate) fn now() -> Instant {
        Instant::now()
    }

    /// Wall time in Unix seconds, for JWT `exp`/`iat` claims, which are wall-clock by nature.
    pub(crate) fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A fresh unguessable id for tokens and file URLs (URL-safe, 32 characters).
pub(crate) fn random_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A counter-based fault that fires on the 1st, (1+every)th, (1+2·every)th … event. Starting
/// with the first event makes every test hit the fault at once, and with `every >= 2` the retry
/// right after a fault succeeds.
pub(crate) fn fires(every: Option<std::num::NonZeroU64>, nth: u64) -> bool {
    every.is_some_and(|every| nth >= 1 && (nth - 1).is_multiple_of(every.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        let faults: Faults = " lineworks.trailer=2 , lineworks.rate_limit_per_min=0,\
                              lineworks.file_auth=open,lineworks.slow_ms=5,"
            .parse()
            .unwrap();
        let lw = &faults.lineworks;
        assert_eq!(lw.trailer.map(|n| n.get()), Some(2));
        assert_eq!(lw.rate_limit_per_min, 0);
        assert!(lw.file_auth_open);
        assert_eq!(lw.slow, Duration::from_millis(5));
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
    }

    #[test]
    fn bad_faults_name_the_item() {
        for (spec, needle) in [
            ("lineworks.nope=1", "lineworks.nope=1"),
            ("zoom.trailer=1", "zoom.trailer"),
            ("lineworks.trailer", "expected `key=value`"),
            ("lineworks.trailer=0", "lineworks.trailer=0"),
            ("lineworks.slow_ms=fast", "slow_ms=fast"),
            ("lineworks.file_auth=maybe", "file_auth=maybe"),
        ] {
            let err = spec.parse::<Faults>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn counter_faults_fire_first_then_every_nth() {
        let every = std::num::NonZeroU64::new(3);
        let fired: Vec<u64> = (1..=10).filter(|&n| fires(every, n)).collect();
        assert_eq!(fired, [1, 4, 7, 10]);
        assert!(!fires(None, 1));
    }

    #[test]
    fn base_url_reaches_loopback() {
        assert_eq!(
            base_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(base_url("[::1]:80".parse().unwrap()), "http://[::1]:80");
    }
}
