//! The live progress line and the summary table printed at the end of `run`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatlake_core::config::Role;
use chatlake_core::metrics::{ComponentMetrics, RunStatus, RunSummary};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};

/// The live progress on standard error: a bar with windows done of the planned total, rate and
/// ETA when the sources' plans know the total, else a spinner with the same figures. Log lines
/// are printed above it (see [`LogWriter`]).
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

/// The bar being shown, for [`LogWriter`].
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

impl Progress {
    /// `total`: the windows the run will fetch, if known before it starts.
    pub fn start(
        metrics: Vec<(String, Role, Arc<ComponentMetrics>)>,
        total: Option<u64>,
    ) -> Progress {
        let bar = match total {
            Some(total) => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} windows · {msg} · ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                        .expect("valid template"),
                );
                bar
            }
        };
        if let Ok(mut shown) = SHOWN.lock() {
            *shown = Some(bar.clone());
        }
        let b = bar.clone();
        let counted = total.is_some();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let (mut windows, mut failed, mut records, mut bytes) = (0, 0, 0, 0);
                for (_, role, m) in &metrics {
                    match role {
                        Role::Source => {
                            windows += m.windows_done();
                            failed += m.windows_failed();
                            records += m.records_out();
                        }
                        Role::Sink => bytes += m.bytes(),
                        Role::Transform => {}
                    }
                }
                let rate = records as f64 / started.elapsed().as_secs_f64().max(0.001);
                let failed_note = if failed > 0 {
                    format!("{failed} failed · ")
                } else {
                    String::new()
                };
                if counted {
                    b.set_position(windows + failed);
                    b.set_message(format!(
                        "{failed_note}{} records · {} written · {}/s",
                        human_count(records),
                        human_bytes(bytes),
                        human_count(rate as u64)
                    ));
                } else {
                    b.set_message(format!(
                        "windows {windows} done · {failed_note}{} records · {} written · {}/s",
                        human_count(records),
                        human_bytes(bytes),
                        human_count(rate as u64)
                    ));
                    b.tick();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Progress { bar, task }
    }

    pub async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Ok(mut shown) = SHOWN.lock() {
            *shown = None;
        }
        self.bar.finish_and_clear();
    }
}

/// Where log lines go: standard error, above the progress bar while one is shown (the bar is
/// cleared, the line written, the bar drawn again), so that neither tears the other.
pub struct LogWriter;

/// One log event, written whole when the logger drops it.
pub struct LogLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::with_capacity(256))
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let write = || {
            use std::io::Write;
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        let shown = SHOWN.lock().ok().and_then(|s| s.clone());
        match shown {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

pub fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

/// Prints the per-component table and the outcome to standard output.
pub fn print(s: &RunSummary) {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "component",
        "role",
        "type",
        "records in",
        "records out",
        "files",
        "bytes",
        "requests",
        "retries",
        "dead letters",
        "windows ok/failed",
        "seconds",
    ]);
    for c in &s.components {
        let num = |v: u64| Cell::new(v).set_alignment(CellAlignment::Right);
        table.add_row(vec![
            Cell::new(&c.name),
            Cell::new(&c.role),
            Cell::new(&c.type_name),
            num(c.records_in),
            num(c.records_out),
            num(c.files),
            Cell::new(human_bytes(c.bytes)).set_alignment(CellAlignment::Right),
            num(c.requests),
            num(c.retries),
            num(c.dead_letters),
            Cell::new(format!("{}/{}", c.windows_done, c.windows_failed))
                .set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.2}", c.seconds)).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{table}");
    let verdict = match s.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::DeadLettered => "finished with dead letters",
        RunStatus::Interrupted => "INTERRUPTED",
    };
    let rows: u64 = s
        .components
        .iter()
        .filter(|c| c.role == "source")
        .map(|c| c.records_out)
        .sum();
    println!(
        "run {} of `{}` {} in {:.2}s ({} source records, {:.0} records/s)",
        s.run_id,
        s.pipeline,
        verdict,
        s.seconds,
        rows,
        rows as f64 / s.seconds.max(0.001)
    );
    for c in s.components.iter().filter(|c| c.records_removed > 0) {
        println!(
            "  {}: {} row(s) of earlier runs replaced by newer versions",
            c.name, c.records_removed
        );
    }
    for c in &s.components {
        for f in &c.failures {
            println!("  failed: {f}");
        }
        for (i, what) in c.skipped.iter().enumerate() {
            if i == 10 {
                println!(
                    "  {}: … and {} more skipped (all in the JSON summary)",
                    c.name,
                    c.skipped.len() - 10
                );
                break;
            }
            println!("  skipped by {}: {what}", c.name);
        }
    }
    if let Some(e) = &s.error {
        println!("  error: {e}");
    }
    if let Some(path) = &s.dead_letter_file {
        println!(
            "  {} record(s) dead-lettered to {}",
            s.dead_letters,
            path.display()
        );
    }
    if s.windows_to_reload > 0 {
        println!(
            "  {} window(s) reset for reloading were not loaded again: their earlier files stay in the lake",
            s.windows_to_reload
        );
    }
}
