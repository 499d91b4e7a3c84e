//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes
//! of protobuf. The length is checked against the limit before any buffer
//! is allocated, so a peer cannot make us reserve memory by announcing a
//! huge frame.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {announced} bytes exceeds the limit of {limit} bytes")]
    TooLarge { announced: u64, limit: u32 },
    #[error("the stream ended before a whole frame arrived")]
    Truncated,
    #[error("frame is not a valid protobuf message: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("stream I/O failed: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

/// Reads one frame's bytes, refusing lengths above `limit`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<Vec<u8>, FrameError> {
    let announced = reader.read_u32().await?;
    if announced > limit {
        return Err(FrameError::TooLarge {
            announced: u64::from(announced),
            limit,
        });
    }
    let mut buffer = vec![0u8; announced as usize];
    reader.read_exact(&mut buffer).await?;
    Ok(buffer)
}

/// Reads and decodes one frame.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<M, FrameError> {
    let bytes = read_frame(reader, limit).await?;
    Ok(M::decode(bytes.as_slice())?)
}

/// Encodes a message with its length prefix, in one buffer.
pub fn encode(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut buffer = Vec::with_capacity(4 + len);
    buffer.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode_raw(&mut buffer);
    buffer
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &impl Message,
) -> Result<(), FrameError> {
    writer.write_all(&encode(message)).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tvaers_proto::v1;

    #[tokio::test]
    async fn round_trip() {
        let receipt = v1::Receipt {
            notice_id: "n".into(),
            outcome: v1::ReceiptOutcome::Accepted as i32,
            ..Default::default()
        };
        let bytes = encode(&receipt);
        let back: v1::Receipt = read_message(&mut bytes.as_slice(), 1024).await.unwrap();
        assert_eq!(back, receipt);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        // Announces 4 GiB but carries nothing: refused on the prefix alone.
        let bytes = u32::MAX.to_be_bytes();
        let err = read_frame(&mut bytes.as_slice(), 65_536).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { announced, limit: 65_536 } if announced == u64::from(u32::MAX))
        );
    }

    #[tokio::test]
    async fn truncated_and_malformed_frames_are_errors() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame(&mut bytes.as_slice(), 1024).await,
            Err(FrameError::Truncated)
        ));

        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let decoded: Result<v1::PeerRequest, _> = read_message(&mut bytes.as_slice(), 1024).await;
        assert!(matches!(decoded, Err(FrameError::Malformed(_))));
    }
}
