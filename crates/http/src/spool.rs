//! A response body streamed into an anonymous temporary file: memory stays flat whatever the
//! size of a download, and the file can be checked (a trailer, a checksum) before any of it is
//! parsed.

use std::fs::File;
use std::io::Seek;

use reqwest::Method;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::{ErrorKind, RequestError};

/// Write buffer of the spool: large writes, few system calls.
const SPOOL_BUFFER: usize = 1 << 20;

/// Streams the body of `response` (an answer to `GET url`) into a temporary file, chunk by
/// chunk, calling `on_chunk` with each chunk's size (for byte counters), and returns the file
/// rewound to its start. A broken connection is a transport error; a local write failure is
/// [`ErrorKind::Local`] and names the temporary directory.
pub async fn spool_body(
    url: &Url,
    mut response: reqwest::Response,
    mut on_chunk: impl FnMut(usize),
) -> Result<File, RequestError> {
    let local = |e: std::io::Error| {
        RequestError::new(
            Method::GET,
            url,
            ErrorKind::Local(format!(
                "writing the spool file in {}: {e}",
                std::env::temp_dir().display()
            )),
        )
    };
    let file = tempfile::tempfile().map_err(local)?;
    let mut out =
        tokio::io::BufWriter::with_capacity(SPOOL_BUFFER, tokio::fs::File::from_std(file));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RequestError::from_reqwest(Method::GET, url, e))?
    {
        out.write_all(&chunk).await.map_err(local)?;
        on_chunk(chunk.len());
    }
    out.flush().await.map_err(local)?;
    let mut file = out.into_inner().into_std().await;
    file.rewind().map_err(local)?;
    Ok(file)
}
