//! Framing and authentication.
//!
//! A frame on the wire:
//!
//! ```text
//! u32 big-endian length L (of what follows, at most MAX_FRAME_LEN)
//! u8  protocol version
//! u8  frame kind
//! ... postcard payload
//! [32] HMAC-SHA256 tag
//! ```
//!
//! There are two kinds of exchange, each an *initiator* frame and its *reply*:
//!
//! - controller to agent: a [`Request`] in a `Command` frame, answered by a [`Response`] in a
//!   `Reply` frame;
//! - agent to controller: a [`Response::Ready`] in an `Announce` frame, answered by
//!   [`Request::AckReady`] in an `AnnounceAck` frame.
//!
//! An initiator's payload is an [`Envelope`]: the agent's boot id, a counter the receiver requires
//! to be strictly greater than the last it accepted (so a captured frame cannot be replayed, nor
//! sent to another boot of the agent), and the message. Its tag is
//! `HMAC(key, "LZR1I" || frame without tag)`. A reply's payload is an envelope echoing the boot id
//! and counter, and its tag is `HMAC(key, "LZR1R" || initiator tag || frame without tag)`: a reply
//! verifies only against the request it answers. Tags are compared in constant time.
//!
//! A peer that speaks another protocol version gets an unauthenticated `VersionReject` frame
//! naming the version this side speaks; it is information for an error message, never acted on.

use std::io::{self, Read, Write};

use hmac::{KeyInit, Mac};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::key::ClusterKey;
use crate::message::{BootId, Request, Response};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame (after the 4-byte length prefix) either side accepts or sends.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Length of an authentication tag.
pub const TAG_LEN: usize = 32;
const PREFIX_LEN: usize = 4;
const HEADER_LEN: usize = 2;
const INITIATOR_DOMAIN: &[u8] = b"LZR1I";
const REPLY_DOMAIN: &[u8] = b"LZR1R";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a frame carries. The numbers are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Command = 1,
    Reply = 2,
    Announce = 3,
    AnnounceAck = 4,
    VersionReject = 0x7f,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Command),
            2 => Some(Self::Reply),
            3 => Some(Self::Announce),
            4 => Some(Self::AnnounceAck),
            0x7f => Some(Self::VersionReject),
            _ => None,
        }
    }
}

/// Everything that can be wrong with a frame, one variant per check.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Short { expected: usize, got: usize },
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    Oversized { len: usize },
    #[error("frame of {len} bytes is too short to hold a header and tag")]
    Runt { len: usize },
    #[error("unknown protocol version {found} (this side speaks {PROTOCOL_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("peer rejected our protocol version; it speaks version {supported}")]
    PeerRejectedVersion { supported: u8 },
    #[error("unexpected frame kind {found:#x}")]
    UnexpectedKind { found: u8 },
    #[error("authentication failed: wrong cluster key or altered frame")]
    BadTag,
    #[error("undecodable payload: {0}")]
    Undecodable(postcard::Error),
    #[error("request is for boot {found}, this agent is boot {expected}")]
    WrongBootId { expected: BootId, found: BootId },
    #[error("replayed or stale frame: counter {counter} is not above {last}")]
    Replay { counter: u64, last: u64 },
    #[error("reply does not answer our request (boot {boot_id}, counter {counter})")]
    Unbound { boot_id: BootId, counter: u64 },
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// The authenticated payload of every frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub boot_id: BootId,
    pub counter: u64,
    pub body: T,
}

/// One frame as read off the wire, length-checked but not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The whole frame, length prefix included.
    bytes: Vec<u8>,
}

impl RawFrame {
    /// Splits a frame off the front of `buf`; returns it and the rest.
    pub fn parse(buf: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let mut cursor = buf;
        let frame = read_frame(&mut cursor)?;
        Ok((frame, cursor))
    }

    /// The whole frame, length prefix included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn kind(&self) -> Result<FrameKind, WireError> {
        let version = self.bytes[PREFIX_LEN];
        let kind = self.bytes[PREFIX_LEN + 1];
        if kind == FrameKind::VersionReject as u8 {
            return Err(WireError::PeerRejectedVersion { supported: version });
        }
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnknownVersion { found: version });
        }
        FrameKind::from_byte(kind).ok_or(WireError::UnexpectedKind { found: kind })
    }

    fn tag(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - TAG_LEN..]
    }

    fn signed(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - TAG_LEN]
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[PREFIX_LEN + HEADER_LEN..self.bytes.len() - TAG_LEN]
    }

    /// Checks version, kind and tag, then decodes the envelope.
    fn open<T: DeserializeOwned>(
        &self,
        key: &ClusterKey,
        want: FrameKind,
        bound_to: Option<&[u8; TAG_LEN]>,
    ) -> Result<(Envelope<T>, [u8; TAG_LEN]), WireError> {
        let kind = self.kind()?;
        if kind != want {
            return Err(WireError::UnexpectedKind { found: kind as u8 });
        }
        let mut mac = mac_for(key, bound_to);
        mac.update(self.signed());
        mac.verify_slice(self.tag())
            .map_err(|_| WireError::BadTag)?;
        let envelope = postcard::from_bytes(self.payload()).map_err(WireError::Undecodable)?;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(self.tag());
        Ok((envelope, tag))
    }
}

fn mac_for(key: &ClusterKey, bound_to: Option<&[u8; TAG_LEN]>) -> HmacSha256 {
    // A 32-byte key is always a valid HMAC key; new_from_slice cannot fail here.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    match bound_to {
        None => mac.update(INITIATOR_DOMAIN),
        Some(tag) => {
            mac.update(REPLY_DOMAIN);
            mac.update(tag);
        }
    }
    mac
}

fn seal<T: Serialize>(
    key: &ClusterKey,
    kind: FrameKind,
    bound_to: Option<&[u8; TAG_LEN]>,
    envelope: &Envelope<T>,
) -> Result<(Vec<u8>, [u8; TAG_LEN]), WireError> {
    let mut bytes = vec![0u8; PREFIX_LEN];
    bytes.push(PROTOCOL_VERSION);
    bytes.push(kind as u8);
    let mut bytes = postcard::to_extend(envelope, bytes).map_err(WireError::Encode)?;
    let len = bytes.len() - PREFIX_LEN + TAG_LEN;
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized { len });
    }
    bytes[..PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    let mut mac = mac_for(key, bound_to);
    mac.update(&bytes);
    let tag: [u8; TAG_LEN] = mac.finalize().into_bytes().into();
    bytes.extend_from_slice(&tag);
    Ok((bytes, tag))
}

/// Reads one frame, checking its length before allocating anything for it.
pub fn read_frame(r: &mut impl Read) -> Result<RawFrame, WireError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix)?;
    if got == 0 {
        return Err(WireError::Closed);
    }
    if got < PREFIX_LEN {
        return Err(WireError::Short {
            expected: PREFIX_LEN,
            got,
        });
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized { len });
    }
    if len < HEADER_LEN + TAG_LEN {
        return Err(WireError::Runt { len });
    }
    let mut bytes = vec![0u8; PREFIX_LEN + len];
    bytes[..PREFIX_LEN].copy_from_slice(&prefix);
    let got = read_full(r, &mut bytes[PREFIX_LEN..])?;
    if got < len {
        return Err(WireError::Short { expected: len, got });
    }
    Ok(RawFrame { bytes })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(got)
}

/// Writes a sealed frame.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), WireError> {
    w.write_all(frame)?;
    w.flush()?;
    Ok(())
}

/// The unauthenticated frame telling a peer which version this side speaks.
pub fn version_reject() -> Vec<u8> {
    let mut bytes = ((HEADER_LEN + TAG_LEN) as u32).to_be_bytes().to_vec();
    bytes.push(PROTOCOL_VERSION);
    bytes.push(FrameKind::VersionReject as u8);
    bytes.extend_from_slice(&[0u8; TAG_LEN]);
    bytes
}

/// What the receiver of a frame needs to answer it.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    boot_id: BootId,
    counter: u64,
    tag: [u8; TAG_LEN],
}

impl ReplyTo {
    fn seal<T: Serialize>(
        &self,
        key: &ClusterKey,
        kind: FrameKind,
        body: T,
    ) -> Result<Vec<u8>, WireError> {
        let envelope = Envelope {
            boot_id: self.boot_id,
            counter: self.counter,
            body,
        };
        seal(key, kind, Some(&self.tag), &envelope).map(|(bytes, _)| bytes)
    }

    /// Seals the agent's answer to a command.
    pub fn seal_reply(&self, key: &ClusterKey, response: &Response) -> Result<Vec<u8>, WireError> {
        self.seal(key, FrameKind::Reply, response)
    }

    /// Seals the controller's acknowledgement of an announcement.
    pub fn seal_ack(&self, key: &ClusterKey) -> Result<Vec<u8>, WireError> {
        self.seal(key, FrameKind::AnnounceAck, &Request::AckReady)
    }
}

/// What the sender of a frame needs to check the reply to it.
#[derive(Debug, Clone)]
pub struct AwaitReply {
    boot_id: BootId,
    counter: u64,
    tag: [u8; TAG_LEN],
}

impl AwaitReply {
    fn open<T: DeserializeOwned>(
        &self,
        key: &ClusterKey,
        kind: FrameKind,
        frame: &RawFrame,
    ) -> Result<T, WireError> {
        let (envelope, _) = frame.open::<T>(key, kind, Some(&self.tag))?;
        if envelope.boot_id != self.boot_id || envelope.counter != self.counter {
            return Err(WireError::Unbound {
                boot_id: envelope.boot_id,
                counter: envelope.counter,
            });
        }
        Ok(envelope.body)
    }

    /// Opens the agent's reply to our command.
    pub fn open_reply(&self, key: &ClusterKey, frame: &RawFrame) -> Result<Response, WireError> {
        self.open(key, FrameKind::Reply, frame)
    }

    /// Opens the controller's acknowledgement of our announcement.
    pub fn open_ack(&self, key: &ClusterKey, frame: &RawFrame) -> Result<(), WireError> {
        match self.open::<Request>(key, FrameKind::AnnounceAck, frame)? {
            Request::AckReady => Ok(()),
            _ => Err(WireError::UnexpectedKind {
                found: FrameKind::AnnounceAck as u8,
            }),
        }
    }
}

/// The controller's side of talking to one boot of one agent: numbers its commands.
#[derive(Debug, Clone)]
pub struct CommandSealer {
    key: ClusterKey,
    boot_id: BootId,
    next_counter: u64,
}

impl CommandSealer {
    /// Commands for boot `boot_id`, starting at `next_counter` (from a `Hello` reply).
    pub fn new(key: ClusterKey, boot_id: BootId, next_counter: u64) -> Self {
        Self {
            key,
            boot_id,
            next_counter: next_counter.max(1),
        }
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// Seals a command with the next counter.
    pub fn seal(&mut self, request: &Request) -> Result<(Vec<u8>, AwaitReply), WireError> {
        let counter = self.next_counter;
        let out = seal_initiator(
            &self.key,
            FrameKind::Command,
            self.boot_id,
            counter,
            request,
        )?;
        self.next_counter = counter.saturating_add(1);
        Ok(out)
    }
}

/// Seals a `Hello` with a caller-chosen nonce as its counter: the one command a client can send
/// before it knows the agent's boot id.
pub fn seal_hello(key: &ClusterKey, nonce: u64) -> Result<(Vec<u8>, AwaitReply), WireError> {
    seal_initiator(
        key,
        FrameKind::Command,
        BootId::default(),
        nonce,
        &Request::Hello,
    )
}

fn seal_initiator<T: Serialize>(
    key: &ClusterKey,
    kind: FrameKind,
    boot_id: BootId,
    counter: u64,
    body: &T,
) -> Result<(Vec<u8>, AwaitReply), WireError> {
    let envelope = Envelope {
        boot_id,
        counter,
        body,
    };
    let (bytes, tag) = seal(key, kind, None, &envelope)?;
    Ok((
        bytes,
        AwaitReply {
            boot_id,
            counter,
            tag,
        },
    ))
}

/// The agent's side: accepts commands for its own boot with strictly increasing counters.
#[derive(Debug, Clone)]
pub struct CommandOpener {
    key: ClusterKey,
    boot_id: BootId,
    last_counter: u64,
}

impl CommandOpener {
    pub fn new(key: ClusterKey, boot_id: BootId) -> Self {
        Self {
            key,
            boot_id,
            last_counter: 0,
        }
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// The smallest counter the next command may carry.
    pub fn next_counter(&self) -> u64 {
        self.last_counter.saturating_add(1)
    }

    /// Authenticates a command and checks it is fresh and meant for this boot. `Hello` is exempt
    /// from the boot id and counter checks (it changes nothing) and does not advance the counter.
    pub fn open(&mut self, frame: &RawFrame) -> Result<(Request, ReplyTo), WireError> {
        let (envelope, tag) = frame.open::<Request>(&self.key, FrameKind::Command, None)?;
        let reply = ReplyTo {
            boot_id: envelope.boot_id,
            counter: envelope.counter,
            tag,
        };
        if envelope.body == Request::Hello {
            return Ok((envelope.body, reply));
        }
        if envelope.boot_id != self.boot_id {
            return Err(WireError::WrongBootId {
                expected: self.boot_id,
                found: envelope.boot_id,
            });
        }
        if envelope.counter <= self.last_counter {
            return Err(WireError::Replay {
                counter: envelope.counter,
                last: self.last_counter,
            });
        }
        self.last_counter = envelope.counter;
        Ok((envelope.body, reply))
    }
}

/// Seals an agent's announcement (`Response::Ready`) with its per-boot announcement counter.
pub fn seal_announce(
    key: &ClusterKey,
    boot_id: BootId,
    counter: u64,
    announcement: &Response,
) -> Result<(Vec<u8>, AwaitReply), WireError> {
    seal_initiator(key, FrameKind::Announce, boot_id, counter, announcement)
}

/// The controller's side of announcements: remembers the last counter of recent boots.
#[derive(Debug, Clone, Default)]
pub struct AnnounceOpener {
    recent: std::collections::VecDeque<(BootId, u64)>,
}

/// How many boots an [`AnnounceOpener`] remembers.
const RECENT_BOOTS: usize = 1024;

impl AnnounceOpener {
    /// Authenticates an announcement and refuses a counter not above the last one seen for its
    /// boot id.
    pub fn open(
        &mut self,
        key: &ClusterKey,
        frame: &RawFrame,
    ) -> Result<(BootId, Response, ReplyTo), WireError> {
        let (envelope, tag) = frame.open::<Response>(key, FrameKind::Announce, None)?;
        let Envelope {
            boot_id,
            counter,
            body,
        } = envelope;
        if let Some(pos) = self.recent.iter().position(|(b, _)| *b == boot_id) {
            let last = self.recent[pos].1;
            if counter <= last {
                return Err(WireError::Replay { counter, last });
            }
            self.recent.remove(pos);
        }
        if self.recent.len() == RECENT_BOOTS {
            self.recent.pop_front();
        }
        self.recent.push_back((boot_id, counter));
        let reply = ReplyTo {
            boot_id,
            counter,
            tag,
        };
        Ok((boot_id, body, reply))
    }
}
