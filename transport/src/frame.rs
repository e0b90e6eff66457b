//! Length-prefixed postcard framing over QUIC streams.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, a postcard encoding
//! of one message (`warren_api::wire`). The length is checked against the limit as soon as its
//! four bytes are in, before anything is allocated for the payload.
//!
//! [`FrameDecoder`] is the sans-IO core (also what the fuzz target drives); [`FramedRecv`] and
//! [`FramedSend`] are thin drivers over quinn streams that add timeouts and metrics.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use warren_api::wire::{self, DecodeError};

use crate::metrics::TransportMetrics;

/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// How much is read from a stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared or encoded length is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared or encoded payload length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// The payload is not a valid message.
    #[error("frame payload does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(#[source] postcard::Error),
    /// A frame started but did not complete in time, or the peer stopped reading.
    #[error("peer stalled: frame not completed within {0:?}")]
    Stalled(Duration),
    /// The peer finished the stream cleanly at a frame boundary.
    #[error("stream closed by peer")]
    Closed,
    /// The stream or connection failed underneath.
    #[error("stream failed: {0}")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl FrameError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::Decode(_) => "decode",
            Self::Encode(_) => "encode",
            Self::Stalled(_) => "stalled",
            Self::Closed => "closed",
            Self::Stream(_) => "stream",
        }
    }

    /// Whether the peer sent bad input (as opposed to the link failing or closing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::Truncated { .. } | Self::Decode(_)
        )
    }
}

/// Encodes `message` as one frame.
///
/// # Errors
/// [`FrameError::TooLarge`] over `max_frame_bytes`, [`FrameError::Encode`] if serde refuses.
pub fn encode_frame<T: Serialize>(
    message: &T,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut out =
        postcard::to_extend(message, vec![0u8; LEN_PREFIX_BYTES]).map_err(FrameError::Encode)?;
    let len = out.len() - LEN_PREFIX_BYTES;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    out[..LEN_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Sans-IO frame reassembly: push bytes in as they arrive, pop whole payloads out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that refuses payloads over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Pops the next complete payload, if one is buffered.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as a length prefix over the limit is seen.
    pub fn next_payload(&mut self) -> Result<Option<BytesMut>, FrameError> {
        if self.buf.len() < LEN_PREFIX_BYTES {
            return Ok(None);
        }
        let prefix: [u8; LEN_PREFIX_BYTES] = self.buf[..LEN_PREFIX_BYTES]
            .try_into()
            .expect("checked length above");
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        // No reservation for the declared length: a 4-byte prefix must not make us allocate
        // up to the limit before the bytes arrive. The buffer grows with what is received.
        if self.buf.len() < LEN_PREFIX_BYTES + len {
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX_BYTES);
        Ok(Some(self.buf.split_to(len)))
    }

    /// Pops and decodes the next complete message.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] or [`FrameError::Decode`].
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_payload()? {
            Some(payload) => Ok(Some(wire::decode(&payload)?)),
            None => Ok(None),
        }
    }

    /// Whether part of a frame is buffered.
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Called at end of stream: an incomplete frame is an error.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when bytes of an unfinished frame are buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// Decodes every frame in `bytes` as `T` (the fuzz target's entry point). Never panics.
///
/// # Errors
/// The first [`FrameError`] met, including truncation at the end.
pub fn decode_all<T: DeserializeOwned>(
    bytes: &[u8],
    max_frame_bytes: usize,
) -> Result<Vec<T>, FrameError> {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    decoder.push(bytes);
    let mut out = Vec::new();
    while let Some(message) = decoder.next_message()? {
        out.push(message);
    }
    decoder.finish()?;
    Ok(out)
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct FramedRecv {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    frame_timeout: Duration,
    frame_started: Option<Instant>,
    metrics: TransportMetrics,
}

impl FramedRecv {
    pub(crate) fn new(
        stream: quinn::RecvStream,
        max_frame_bytes: usize,
        frame_timeout: Duration,
        metrics: TransportMetrics,
    ) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max_frame_bytes),
            frame_timeout,
            frame_started: None,
            metrics,
        }
    }

    /// Receives the next message. Waits as long as needed for a frame to *start*; once its first
    /// byte is in, the rest must arrive within the frame timeout.
    ///
    /// # Errors
    /// [`FrameError::Closed`] at a clean end of stream; otherwise the failure, which is also
    /// counted in `warren_transport_frames_rejected_total` when the peer is at fault.
    ///
    /// # Cancel safety
    /// Cancel-safe: bytes already read stay buffered for the next call.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let result = self.recv_inner().await;
        match &result {
            Ok(_) => {}
            Err(FrameError::Closed) | Err(FrameError::Stream(_)) => {}
            Err(error) => self
                .metrics
                .frames_rejected_total
                .with_label_values(&[error.kind()])
                .inc(),
        }
        result
    }

    async fn recv_inner<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        loop {
            if let Some(payload) = self.decoder.next_payload()? {
                self.frame_started = None;
                self.metrics.frames_total.with_label_values(&["rx"]).inc();
                self.metrics
                    .frame_bytes_total
                    .with_label_values(&["rx"])
                    .inc_by(payload.len() as u64);
                return Ok(wire::decode(&payload)?);
            }
            let read = self.stream.read_chunk(READ_CHUNK_BYTES, true);
            let chunk = match self.frame_started {
                None => read.await,
                Some(started) => {
                    let deadline = started + self.frame_timeout;
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(chunk) => chunk,
                        Err(_) => return Err(FrameError::Stalled(self.frame_timeout)),
                    }
                }
            };
            match chunk.map_err(|e| FrameError::Stream(e.into()))? {
                Some(chunk) => {
                    if self.frame_started.is_none() {
                        self.frame_started = Some(Instant::now());
                    }
                    self.decoder.push(&chunk.bytes);
                }
                None => {
                    self.decoder.finish()?;
                    return Err(FrameError::Closed);
                }
            }
        }
    }

    /// Lowers the largest frame this stream accepts to `max_frame_bytes` (never raises it):
    /// for a direction whose messages are known to be smaller than the connection's limit.
    pub fn limit_frames_to(&mut self, max_frame_bytes: usize) {
        self.decoder.max_frame_bytes = self.decoder.max_frame_bytes.min(max_frame_bytes);
    }

    /// Tells the peer we will read no more.
    pub fn stop(&mut self) {
        let _ = self.stream.stop(0u32.into());
    }
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: quinn::SendStream,
    max_frame_bytes: usize,
    frame_timeout: Duration,
    metrics: TransportMetrics,
}

impl FramedSend {
    pub(crate) fn new(
        stream: quinn::SendStream,
        max_frame_bytes: usize,
        frame_timeout: Duration,
        metrics: TransportMetrics,
    ) -> Self {
        Self {
            stream,
            max_frame_bytes,
            frame_timeout,
            metrics,
        }
    }

    /// Sends one message. A peer that stops reading (flow control closed) for longer than the
    /// frame timeout fails the send with [`FrameError::Stalled`].
    ///
    /// # Errors
    /// [`FrameError::TooLarge`], [`FrameError::Stalled`] or [`FrameError::Stream`].
    ///
    /// # Cancel safety
    /// Not cancel-safe: a cancelled send may leave half a frame on the stream; drop the stream.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let frame = encode_frame(message, self.max_frame_bytes)?;
        self.send_encoded(&frame).await
    }

    /// Sends a frame produced by [`encode_frame`] (to encode once and send to many).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn send_encoded(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        match tokio::time::timeout(self.frame_timeout, self.stream.write_all(frame)).await {
            Err(_) => Err(FrameError::Stalled(self.frame_timeout)),
            Ok(Err(e)) => Err(FrameError::Stream(e.into())),
            Ok(Ok(())) => {
                self.metrics.frames_total.with_label_values(&["tx"]).inc();
                let payload = frame.len().saturating_sub(LEN_PREFIX_BYTES) as u64;
                self.metrics
                    .frame_bytes_total
                    .with_label_values(&["tx"])
                    .inc_by(payload);
                Ok(())
            }
        }
    }

    /// Sends one message encoded beforehand (its postcard bytes, without the length prefix):
    /// for messages put together from parts encoded once for many peers.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn send_payload(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max_frame_bytes,
            });
        }
        let mut frame = Vec::with_capacity(LEN_PREFIX_BYTES + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.send_encoded(&frame).await
    }

    /// Writes raw bytes, bypassing framing (tests use it to play a misbehaving peer).
    #[doc(hidden)]
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| FrameError::Stream(e.into()))
    }

    /// Finishes the stream: the peer sees a clean end after the last frame.
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Msg = (u32, String, Vec<u8>);

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let messages: Vec<Msg> = (0..5)
            .map(|i| (i, format!("m{i}"), vec![i as u8; i as usize * 100]))
            .collect();
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(encode_frame(m, 1 << 20).unwrap());
        }
        for split in [1usize, 3, 7, 100, stream.len()] {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut got: Vec<Msg> = Vec::new();
            for chunk in stream.chunks(split) {
                decoder.push(chunk);
                while let Some(m) = decoder.next_message().unwrap() {
                    got.push(m);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(got, messages);
        }
    }

    #[test]
    fn oversized_truncated_and_garbage_frames_give_typed_errors() {
        // Oversized: refused from the prefix alone, before the payload arrives.
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&(1025u32).to_be_bytes());
        assert!(matches!(
            decoder.next_payload(),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(matches!(
            encode_frame(&vec![0u8; 2000], 1024),
            Err(FrameError::TooLarge { .. })
        ));
        // Truncated.
        let frame = encode_frame(&(1u32, "x".to_string(), vec![1u8, 2]), 1024).unwrap();
        let err = decode_all::<Msg>(&frame[..frame.len() - 1], 1024).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
        // Garbage payload with a valid prefix.
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff, 0xff]);
        let err = decode_all::<Msg>(&garbage, 1024).unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
        assert!(err.is_protocol_violation());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_all::<Msg>(&bytes, 4096);
        }

        #[test]
        fn any_message_round_trips(n in any::<u32>(), s in ".{0,64}", v in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = encode_frame(&(n, s.clone(), v.clone()), 4096).unwrap();
            prop_assert_eq!(decode_all::<Msg>(&frame, 4096).unwrap(), vec![(n, s, v)]);
        }
    }
}
