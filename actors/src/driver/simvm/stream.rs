//! The migration stream of SIMULATED VMs: what one `herd sim-vm` process
//! sends another over TCP when it moves (the simulated counterpart of
//! QEMU's migration stream; the node agents only tell the source where the
//! target listens).
//!
//! Source to target: a header (magic, page size, page count), then frames,
//! each a one-byte tag and little-endian fields:
//! - `P` page index, 4096 bytes: a page's contents;
//! - `Z` page index: a page of zeros (sent as a mark, as QEMU does);
//! - `R` round: the end of a pre-copy round;
//! - `G` generator state, pages written, carry: the guest's state, sent
//!   with the guest paused, after the last pages;
//! - `E`: the end of the pages; the target answers `a` (applied: it holds
//!   the whole state, which ends the downtime) or refuses;
//! - `D` checksum: the CRC-32C of the source's memory, paused, sent after
//!   `a`; the target compares it with its own and answers `A` checksum
//!   (equal) or refuses. This check proves the copy exact in a simulation;
//!   it is not part of the downtime (QEMU has no such step).
//!
//! A refusal is `N` length message.
//!
//! Every field read off the network is checked: the magic, the page size
//! and count against the target's own memory, page indices against its
//! size, tags against the list, message lengths against a bound.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::memory::{GuestState, PAGE_SIZE};

/// The first bytes of a stream: names it and its version.
pub const MAGIC: &[u8; 8] = b"HSIMVM01";

/// Bytes a page frame takes on the wire (tag, index, contents).
pub const PAGE_FRAME_BYTES: u64 = 1 + 8 + PAGE_SIZE as u64;
/// Bytes a zero-page frame takes on the wire (tag, index).
pub const ZERO_FRAME_BYTES: u64 = 1 + 8;
/// The longest refusal message a target may send.
const MAX_MESSAGE: usize = 4096;

/// One frame after the header. A page's contents are read into the
/// caller's buffer, not into the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame {
    /// Page `index`'s contents follow (read into the buffer).
    Page(u64),
    /// Page `index` is all zeros.
    Zero(u64),
    /// Pre-copy round `n` ended.
    RoundEnd(u32),
    /// The paused guest's state.
    Guest(GuestState),
    /// The end of the pages.
    End,
    /// The source's memory checksum, to compare.
    Done(u32),
}

/// The target's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every page and the guest's state applied.
    Applied,
    /// The checksums compared equal; the target's memory checksum.
    Ack(u32),
    /// Not applied, and why.
    Refused(String),
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Writes the stream's header.
pub async fn write_header<W: AsyncWrite + Unpin>(w: &mut W, pages: u64) -> io::Result<()> {
    w.write_all(MAGIC).await?;
    w.write_u32_le(PAGE_SIZE as u32).await?;
    w.write_u64_le(pages).await
}

/// Reads the header and checks it against the target's memory of `pages`
/// pages.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R, pages: u64) -> io::Result<()> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(invalid(format!(
            "not a simulated-VM migration stream (magic {magic:?})"
        )));
    }
    let page_size = r.read_u32_le().await?;
    if page_size as usize != PAGE_SIZE {
        return Err(invalid(format!(
            "page size {page_size}, expected {PAGE_SIZE}"
        )));
    }
    let theirs = r.read_u64_le().await?;
    if theirs != pages {
        return Err(invalid(format!(
            "the source has {theirs} pages, this simulated VM {pages}: their memory sizes differ"
        )));
    }
    Ok(())
}

/// Writes one page frame.
pub async fn write_page<W: AsyncWrite + Unpin>(
    w: &mut W,
    index: u64,
    bytes: &[u8],
) -> io::Result<()> {
    if bytes.len() != PAGE_SIZE {
        return Err(invalid(format!("a page of {} bytes", bytes.len())));
    }
    w.write_u8(b'P').await?;
    w.write_u64_le(index).await?;
    w.write_all(bytes).await
}

/// Writes one zero-page frame.
pub async fn write_zero<W: AsyncWrite + Unpin>(w: &mut W, index: u64) -> io::Result<()> {
    w.write_u8(b'Z').await?;
    w.write_u64_le(index).await
}

/// Writes the end of a round.
pub async fn write_round_end<W: AsyncWrite + Unpin>(w: &mut W, round: u32) -> io::Result<()> {
    w.write_u8(b'R').await?;
    w.write_u32_le(round).await
}

/// Writes the guest's state.
pub async fn write_guest<W: AsyncWrite + Unpin>(w: &mut W, state: &GuestState) -> io::Result<()> {
    w.write_u8(b'G').await?;
    w.write_u64_le(state.rng).await?;
    w.write_u64_le(state.written).await?;
    w.write_u64_le(state.carry.to_bits()).await
}

/// Writes the end of the pages.
pub async fn write_end<W: AsyncWrite + Unpin>(w: &mut W) -> io::Result<()> {
    w.write_u8(b'E').await
}

/// Writes the source's checksum.
pub async fn write_done<W: AsyncWrite + Unpin>(w: &mut W, checksum: u32) -> io::Result<()> {
    w.write_u8(b'D').await?;
    w.write_u32_le(checksum).await
}

/// Reads one frame; a page's contents go into `page`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    page: &mut [u8; PAGE_SIZE],
) -> io::Result<Frame> {
    let tag = r.read_u8().await?;
    match tag {
        b'P' => {
            let index = r.read_u64_le().await?;
            r.read_exact(page).await?;
            Ok(Frame::Page(index))
        }
        b'Z' => Ok(Frame::Zero(r.read_u64_le().await?)),
        b'R' => Ok(Frame::RoundEnd(r.read_u32_le().await?)),
        b'G' => {
            let state = GuestState {
                rng: r.read_u64_le().await?,
                written: r.read_u64_le().await?,
                carry: f64::from_bits(r.read_u64_le().await?),
            };
            if !state.is_valid() {
                return Err(invalid(format!("an impossible guest state {state:?}")));
            }
            Ok(Frame::Guest(state))
        }
        b'E' => Ok(Frame::End),
        b'D' => Ok(Frame::Done(r.read_u32_le().await?)),
        other => Err(invalid(format!("unknown frame tag {other:#04x}"))),
    }
}

/// Writes the target's answer.
pub async fn write_answer<W: AsyncWrite + Unpin>(w: &mut W, answer: &Answer) -> io::Result<()> {
    match answer {
        Answer::Applied => w.write_u8(b'a').await?,
        Answer::Ack(checksum) => {
            w.write_u8(b'A').await?;
            w.write_u32_le(*checksum).await?;
        }
        Answer::Refused(message) => {
            let bytes = message.as_bytes();
            let bytes = &bytes[..bytes.len().min(MAX_MESSAGE)];
            w.write_u8(b'N').await?;
            w.write_u32_le(bytes.len() as u32).await?;
            w.write_all(bytes).await?;
        }
    }
    w.flush().await
}

/// Reads the target's answer.
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Answer> {
    match r.read_u8().await? {
        b'a' => Ok(Answer::Applied),
        b'A' => Ok(Answer::Ack(r.read_u32_le().await?)),
        b'N' => {
            let len = r.read_u32_le().await? as usize;
            if len > MAX_MESSAGE {
                return Err(invalid(format!("a refusal of {len} bytes")));
            }
            let mut bytes = vec![0; len];
            r.read_exact(&mut bytes).await?;
            Ok(Answer::Refused(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
        other => Err(invalid(format!("unknown answer tag {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_input_is_refused_naming_it() {
        let mut wire = Vec::new();
        write_header(&mut wire, 16).await.expect("header");
        let page = [7u8; PAGE_SIZE];
        write_page(&mut wire, 3, &page).await.expect("page");
        write_zero(&mut wire, 4).await.expect("zero");
        write_round_end(&mut wire, 1).await.expect("round");
        let state = GuestState {
            rng: 9,
            written: 12,
            carry: 0.25,
        };
        write_guest(&mut wire, &state).await.expect("guest");
        write_end(&mut wire).await.expect("end");
        write_done(&mut wire, 0xdead_beef).await.expect("done");
        assert_eq!(
            wire.len() as u64,
            20 + PAGE_FRAME_BYTES + ZERO_FRAME_BYTES + 5 + 25 + 1 + 5
        );

        let mut r = wire.as_slice();
        read_header(&mut r, 16).await.expect("header");
        let mut buf = [0u8; PAGE_SIZE];
        assert_eq!(
            read_frame(&mut r, &mut buf).await.expect("p"),
            Frame::Page(3)
        );
        assert_eq!(buf, page);
        assert_eq!(
            read_frame(&mut r, &mut buf).await.expect("z"),
            Frame::Zero(4)
        );
        assert_eq!(
            read_frame(&mut r, &mut buf).await.expect("r"),
            Frame::RoundEnd(1)
        );
        assert_eq!(
            read_frame(&mut r, &mut buf).await.expect("g"),
            Frame::Guest(state)
        );
        assert_eq!(read_frame(&mut r, &mut buf).await.expect("e"), Frame::End);
        assert_eq!(
            read_frame(&mut r, &mut buf).await.expect("d"),
            Frame::Done(0xdead_beef)
        );
        assert!(read_frame(&mut r, &mut buf).await.is_err(), "end of input");

        // Another memory size, another magic, an unknown tag, a cut page.
        let err = read_header(&mut wire.as_slice(), 32)
            .await
            .expect_err("size");
        assert!(err.to_string().contains("sizes differ"), "{err}");
        let err = read_header(&mut &b"HTTP/1.1 200 OK\r\n\r\n"[..], 16)
            .await
            .expect_err("magic");
        assert!(err.to_string().contains("not a simulated-VM"), "{err}");
        let err = read_frame(&mut &b"X"[..], &mut buf).await.expect_err("tag");
        assert!(err.to_string().contains("unknown frame tag 0x58"), "{err}");
        assert!(read_frame(&mut &b"P\x01\0\0\0\0\0\0\0abc"[..], &mut buf)
            .await
            .is_err());
        let mut bad = vec![b'G'];
        bad.extend(0u64.to_le_bytes());
        bad.extend(1u64.to_le_bytes());
        bad.extend(0.5f64.to_bits().to_le_bytes());
        let err = read_frame(&mut bad.as_slice(), &mut buf)
            .await
            .expect_err("state");
        assert!(err.to_string().contains("impossible guest state"), "{err}");
    }

    #[tokio::test]
    async fn answers_round_trip_and_a_long_refusal_is_bounded() {
        for answer in [
            Answer::Applied,
            Answer::Ack(42),
            Answer::Refused("checksums differ".into()),
        ] {
            let mut wire = Vec::new();
            write_answer(&mut wire, &answer).await.expect("write");
            assert_eq!(
                read_answer(&mut wire.as_slice()).await.expect("read"),
                answer
            );
        }
        let mut wire = Vec::new();
        write_answer(&mut wire, &Answer::Refused("x".repeat(10_000)))
            .await
            .expect("write");
        let Answer::Refused(m) = read_answer(&mut wire.as_slice()).await.expect("read") else {
            panic!("not a refusal");
        };
        assert_eq!(m.len(), MAX_MESSAGE);
        let mut huge = vec![b'N'];
        huge.extend(u32::MAX.to_le_bytes());
        assert!(read_answer(&mut huge.as_slice()).await.is_err());
    }
}
