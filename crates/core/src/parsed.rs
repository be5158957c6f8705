//! Parsers that run on a blocking thread (CSV straight into Arrow builders) and hand their batches
//! to a source's async output, so parsing uses the other core and a slow sink still holds the
//! parser back. Every file-reading source uses this one bridge.

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::event::{Batch, WindowRef};
use crate::stage::SourceContext;
use crate::{Error, Result};

/// Batches a parser may run ahead of the source's output.
const IN_FLIGHT: usize = 2;

/// Where a parser puts what it reads. Returning `Err` stops the parser (downstream is gone, or a
/// dead letter could not be written).
pub trait RowSink {
    fn batch(&mut self, batch: RecordBatch) -> std::result::Result<(), String>;
    /// A row that cannot be represented: `raw` holds its record number and fields.
    fn dead_letter(
        &mut self,
        reason: &str,
        raw: serde_json::Value,
    ) -> std::result::Result<(), String>;
}

/// The [`RowSink`] of [`parse_to_output`]: batches go over a bounded channel to the async side,
/// dead letters straight to the run's dead-letter file.
pub struct ChannelSink {
    tx: mpsc::Sender<RecordBatch>,
    cx_name: String,
    dead_letters: crate::dead_letter::DeadLetters,
    metrics: std::sync::Arc<crate::metrics::ComponentMetrics>,
    window: WindowRef,
    dead_letter_error: Option<Error>,
}

impl RowSink for ChannelSink {
    fn batch(&mut self, batch: RecordBatch) -> std::result::Result<(), String> {
        self.tx
            .blocking_send(batch)
            .map_err(|_| "downstream stopped".to_string())
    }

    fn dead_letter(
        &mut self,
        reason: &str,
        raw: serde_json::Value,
    ) -> std::result::Result<(), String> {
        self.dead_letters
            .record(
                &self.cx_name,
                Some(&self.window),
                reason,
                raw,
                &self.metrics,
            )
            .map_err(|e| {
                let message = e.to_string();
                self.dead_letter_error = Some(e);
                message
            })
    }
}

/// Runs `parse` on the blocking pool and sends every batch it produces to `cx.out` as rows of
/// `window`. Returns the parser's own result, or `Err` when the run must stop: downstream
/// closed, a dead letter could not be written, or the parser panicked.
pub async fn parse_to_output<T, E>(
    cx: &SourceContext,
    window: &WindowRef,
    parse: impl FnOnce(&mut ChannelSink) -> std::result::Result<T, E> + Send + 'static,
) -> Result<std::result::Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<RecordBatch>(IN_FLIGHT);
    let mut sink = ChannelSink {
        tx,
        cx_name: cx.name.clone(),
        dead_letters: cx.dead_letters.clone(),
        metrics: cx.metrics.clone(),
        window: window.clone(),
        dead_letter_error: None,
    };
    let parser = tokio::task::spawn_blocking(move || {
        let result = parse(&mut sink);
        (result, sink.dead_letter_error)
    });
    let mut downstream = None;
    while let Some(data) = rx.recv().await {
        if let Err(e) = cx.out.send(Batch::new(window.clone(), data)).await {
            downstream = Some(e);
            break;
        }
    }
    // Dropping the receiver stops a parser that is still sending.
    drop(rx);
    let (result, dead_letter_error) = parser
        .await
        .map_err(|e| Error::component(&cx.name, format!("the parser panicked: {e}")))?;
    match downstream.or(dead_letter_error) {
        Some(e) => Err(e),
        None => Ok(result),
    }
}
