//! Length-prefixed frames: a big-endian u32 byte count, then the bytes.

use crate::GatewayError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest frame accepted in either direction (64 MiB): larger than any
/// request the client API accepts and than a snapshot chunk.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Writes one frame.
pub(crate) async fn write_frame<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    payload: &[u8],
) -> std::io::Result<()> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the limit", payload.len()),
        ));
    }
    writer
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    writer.write_all(payload).await
}

/// Reads one frame, refusing frames above the limit before allocating.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
) -> Result<Vec<u8>, FrameError> {
    read_frame_or_end(reader).await?.ok_or_else(|| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "stream ended before a frame",
        ))
    })
}

/// Reads one frame, or `None` if the stream ended cleanly before it began.
pub(crate) async fn read_frame_or_end<R: AsyncReadExt + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        match reader
            .read(&mut len[filled..])
            .await
            .map_err(FrameError::Io)?
        {
            0 if filled == 0 => return Ok(None),
            0 => {
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame length",
                )))
            }
            n => filled += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).await.map_err(FrameError::Io)?;
    Ok(Some(buf))
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    Io(std::io::Error),
    TooLarge(usize),
}

impl FrameError {
    pub(crate) fn into_gateway(self, addr: std::net::SocketAddr) -> GatewayError {
        match self {
            FrameError::Io(e) => GatewayError::Transport {
                addr,
                reason: e.to_string(),
            },
            FrameError::TooLarge(bytes) => GatewayError::FrameTooLarge {
                bytes,
                limit: FRAME_BYTES_MAX,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trips_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        let mut rd = &buf[..];
        assert_eq!(read_frame(&mut rd).await.unwrap(), b"hello");

        let oversize = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        let mut rd = &oversize[..];
        assert!(matches!(
            read_frame(&mut rd).await,
            Err(FrameError::TooLarge(_))
        ));

        let mut rd: &[u8] = &[];
        assert!(read_frame_or_end(&mut rd).await.unwrap().is_none());

        let truncated = [0u8, 0, 0, 9, 1, 2];
        let mut rd = &truncated[..];
        assert!(matches!(read_frame(&mut rd).await, Err(FrameError::Io(_))));
    }
}
