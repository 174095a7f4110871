//! Framing and authentication.
//!
//! A frame on the wire:
//!
//! ```text
//! u32 big-endian length L (of what follows, at most MAX_FRAME_LEN)
//! u8  protocol version (2)
//! u8  frame kind
//! ... postcard payload: Envelope { boot_id, session, counter, body }
//! [64] Ed25519 signature (Command, AnnounceAck) or [32] HMAC-SHA256 tag (Reply, Announce)
//! ```
//!
//! Who can say what (see `docs/protocol.md`, "Trust"):
//!
//! - The controller signs what it sends with its [`SigningKey`]; an agent holds only the
//!   [`PublicKey`] and obeys only what verifies: a `Command` is signed over
//!   `"LZR2C" || frame without signature`, an `AnnounceAck` over
//!   `"LZR2A" || the announcement's tag || frame without signature`.
//! - An agent authenticates what it sends with its [`AgentKey`] (per node or per repair): an
//!   `Announce` (`Ready`) is tagged `HMAC(key, "LZR2N" || frame without tag)`, a `Reply`
//!   `HMAC(key, "LZR2R" || the command's signature || frame without tag)`: a reply verifies only
//!   against the command it answers, and only under the key of the agent that was asked.
//!
//! Freshness: a command carries the agent's boot id, the session the agent opened on this
//! connection in answer to `Hello` (a random number it drew), and a counter strictly above the
//! last one it accepted in that session. A command captured on one connection is therefore dead
//! on every other, and two clients (the controller, an operator's `lazarus agent`) never refuse
//! each other's counters. An announcement carries the agent's per-boot counter, which the
//! controller requires to rise for that node's boot (and persists, so a restart does not reopen
//! old ones).
//!
//! A peer that speaks another protocol version gets an unauthenticated `VersionReject` frame
//! naming the version this side speaks; it is information for an error message, never acted on.

use std::io::{self, Read, Write};

use hmac::{KeyInit, Mac};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::key::{AgentKey, PublicKey, SigningKey, SIGNATURE_LEN};
use crate::message::{BootId, Hello, Request, Response};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest frame (after the 4-byte length prefix) either side accepts or sends.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Length of an HMAC tag.
pub const TAG_LEN: usize = 32;
const PREFIX_LEN: usize = 4;
const HEADER_LEN: usize = 2;
const COMMAND_DOMAIN: &[u8] = b"LZR2C";
const ACK_DOMAIN: &[u8] = b"LZR2A";
const ANNOUNCE_DOMAIN: &[u8] = b"LZR2N";
const REPLY_DOMAIN: &[u8] = b"LZR2R";

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

    /// The length of the frame's signature or tag.
    fn auth_len(self) -> usize {
        match self {
            Self::Command | Self::AnnounceAck => SIGNATURE_LEN,
            Self::Reply | Self::Announce | Self::VersionReject => TAG_LEN,
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
    #[error("frame of {len} bytes is too short to hold a header and its authentication")]
    Runt { len: usize },
    #[error("unknown protocol version {found} (this side speaks {PROTOCOL_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("peer rejected our protocol version; it speaks version {supported}")]
    PeerRejectedVersion { supported: u8 },
    #[error("unexpected frame kind {found:#x}")]
    UnexpectedKind { found: u8 },
    #[error("authentication failed: wrong key or altered frame")]
    BadTag,
    #[error("undecodable payload: {0}")]
    Undecodable(postcard::Error),
    #[error("request is for boot {found}, this agent is boot {expected}")]
    WrongBootId { expected: BootId, found: BootId },
    #[error("no session {found} on this connection (send Hello first)")]
    NoSession { found: u64 },
    #[error("replayed or stale frame: counter {counter} is not above {last}")]
    Replay { counter: u64, last: u64 },
    #[error("reply does not answer our request (boot {boot_id}, counter {counter})")]
    Unbound { boot_id: BootId, counter: u64 },
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("no frame within the deadline")]
    Deadline,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// The authenticated payload of every frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub boot_id: BootId,
    /// The agent-drawn session of a command's connection (0 in `Hello` and announcements).
    pub session: u64,
    pub counter: u64,
    pub body: T,
}

/// One frame as read off the wire, length-checked but not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The whole frame, length prefix included.
    bytes: Vec<u8>,
}

/// A frame's signature or tag, which its reply is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding(Vec<u8>);

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

    /// The frame's kind, after the version check; also checks it is long enough for its
    /// authentication.
    fn kind(&self) -> Result<FrameKind, WireError> {
        let version = self.bytes[PREFIX_LEN];
        let kind = self.bytes[PREFIX_LEN + 1];
        if kind == FrameKind::VersionReject as u8 {
            return Err(WireError::PeerRejectedVersion { supported: version });
        }
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnknownVersion { found: version });
        }
        let kind = FrameKind::from_byte(kind).ok_or(WireError::UnexpectedKind { found: kind })?;
        let len = self.bytes.len() - PREFIX_LEN;
        if len < HEADER_LEN + kind.auth_len() {
            return Err(WireError::Runt { len });
        }
        Ok(kind)
    }

    fn split(&self, kind: FrameKind) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.bytes.len() - kind.auth_len())
    }

    fn payload(&self, kind: FrameKind) -> &[u8] {
        &self.bytes[PREFIX_LEN + HEADER_LEN..self.bytes.len() - kind.auth_len()]
    }

    fn expect(&self, want: FrameKind) -> Result<(), WireError> {
        let kind = self.kind()?;
        if kind != want {
            return Err(WireError::UnexpectedKind { found: kind as u8 });
        }
        Ok(())
    }

    /// Checks a signed frame (Command, AnnounceAck) against `public`, then decodes it.
    fn open_signed<T: DeserializeOwned>(
        &self,
        public: &PublicKey,
        want: FrameKind,
        bound_to: Option<&Binding>,
    ) -> Result<(Envelope<T>, Binding), WireError> {
        self.expect(want)?;
        let (signed, signature) = self.split(want);
        let signature: &[u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| WireError::BadTag)?;
        if !public.verifies(&signed_message(want, bound_to, signed), signature) {
            return Err(WireError::BadTag);
        }
        let envelope = postcard::from_bytes(self.payload(want)).map_err(WireError::Undecodable)?;
        Ok((envelope, Binding(signature.to_vec())))
    }

    /// Checks a tagged frame (Reply, Announce) under `key`, then decodes it.
    fn open_tagged<T: DeserializeOwned>(
        &self,
        key: &AgentKey,
        want: FrameKind,
        bound_to: Option<&Binding>,
    ) -> Result<(Envelope<T>, Binding), WireError> {
        self.expect(want)?;
        let (signed, tag) = self.split(want);
        let mut mac = mac_for(key, want, bound_to);
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| WireError::BadTag)?;
        let envelope = postcard::from_bytes(self.payload(want)).map_err(WireError::Undecodable)?;
        Ok((envelope, Binding(tag.to_vec())))
    }

    /// Decodes an announcement WITHOUT authenticating it: only to find which node's key to
    /// check it with ([`AnnounceOpener::open`] does the check).
    pub fn peek_announce(&self) -> Result<Response, WireError> {
        self.expect(FrameKind::Announce)?;
        let envelope: Envelope<Response> = postcard::from_bytes(self.payload(FrameKind::Announce))
            .map_err(WireError::Undecodable)?;
        Ok(envelope.body)
    }
}

/// What a signature covers: the kind's domain label, the frame it answers, the frame.
fn signed_message(kind: FrameKind, bound_to: Option<&Binding>, frame: &[u8]) -> Vec<u8> {
    let domain = if kind == FrameKind::Command {
        COMMAND_DOMAIN
    } else {
        ACK_DOMAIN
    };
    let bound: &[u8] = bound_to.map_or(&[], |b| &b.0);
    [domain, bound, frame].concat()
}

fn mac_for(key: &AgentKey, kind: FrameKind, bound_to: Option<&Binding>) -> HmacSha256 {
    // A 32-byte key is always a valid HMAC key; new_from_slice cannot fail here.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    if kind == FrameKind::Reply {
        mac.update(REPLY_DOMAIN);
    } else {
        mac.update(ANNOUNCE_DOMAIN);
    }
    if let Some(b) = bound_to {
        mac.update(&b.0);
    }
    mac
}

/// How a frame is authenticated when it is sealed.
enum Sealer<'a> {
    Sign(&'a SigningKey),
    Tag(&'a AgentKey),
}

fn seal<T: Serialize>(
    by: Sealer,
    kind: FrameKind,
    bound_to: Option<&Binding>,
    envelope: &Envelope<T>,
) -> Result<(Vec<u8>, Binding), WireError> {
    let mut bytes = vec![0u8; PREFIX_LEN];
    bytes.push(PROTOCOL_VERSION);
    bytes.push(kind as u8);
    let mut bytes = postcard::to_extend(envelope, bytes).map_err(WireError::Encode)?;
    let len = bytes.len() - PREFIX_LEN + kind.auth_len();
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized { len });
    }
    bytes[..PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    let auth = match by {
        Sealer::Sign(key) => key.sign(&signed_message(kind, bound_to, &bytes)).to_vec(),
        Sealer::Tag(key) => {
            let mut mac = mac_for(key, kind, bound_to);
            mac.update(&bytes);
            mac.finalize().into_bytes().to_vec()
        }
    };
    bytes.extend_from_slice(&auth);
    Ok((bytes, Binding(auth)))
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

/// Reads one frame from `stream`, all of it before `deadline`: a peer that trickles bytes is cut
/// off at the deadline, however it spaces them.
pub fn read_frame_before(
    stream: &mut std::net::TcpStream,
    deadline: std::time::Instant,
) -> Result<RawFrame, WireError> {
    struct Until<'a> {
        stream: &'a mut std::net::TcpStream,
        deadline: std::time::Instant,
    }
    impl Read for Until<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            self.stream.read(buf)
        }
    }
    read_frame(&mut Until { stream, deadline }).map_err(|e| match e {
        WireError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            WireError::Deadline
        }
        e => e,
    })
}

/// What the receiver of a frame needs to answer it.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    boot_id: BootId,
    session: u64,
    counter: u64,
    bound_to: Binding,
}

impl ReplyTo {
    fn envelope<T>(&self, body: T) -> Envelope<T> {
        Envelope {
            boot_id: self.boot_id,
            session: self.session,
            counter: self.counter,
            body,
        }
    }

    /// Seals the agent's answer to a command (with the agent's key).
    pub fn seal_reply(&self, key: &AgentKey, response: &Response) -> Result<Vec<u8>, WireError> {
        seal(
            Sealer::Tag(key),
            FrameKind::Reply,
            Some(&self.bound_to),
            &self.envelope(response),
        )
        .map(|(bytes, _)| bytes)
    }

    /// Seals the controller's acknowledgement of an announcement (signed).
    pub fn seal_ack(&self, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        seal(
            Sealer::Sign(key),
            FrameKind::AnnounceAck,
            Some(&self.bound_to),
            &self.envelope(&Request::AckReady),
        )
        .map(|(bytes, _)| bytes)
    }
}

/// What the sender of a frame needs to check the reply to it.
#[derive(Debug, Clone)]
pub struct AwaitReply {
    boot_id: BootId,
    session: u64,
    counter: u64,
    bound_to: Binding,
}

impl AwaitReply {
    fn check<T>(&self, envelope: Envelope<T>) -> Result<T, WireError> {
        if envelope.boot_id != self.boot_id
            || envelope.session != self.session
            || envelope.counter != self.counter
        {
            return Err(WireError::Unbound {
                boot_id: envelope.boot_id,
                counter: envelope.counter,
            });
        }
        Ok(envelope.body)
    }

    /// Opens the agent's reply to our command, under the key of the agent we asked.
    pub fn open_reply(&self, key: &AgentKey, frame: &RawFrame) -> Result<Response, WireError> {
        let (envelope, _) = frame.open_tagged(key, FrameKind::Reply, Some(&self.bound_to))?;
        self.check(envelope)
    }

    /// Opens the controller's acknowledgement of our announcement.
    pub fn open_ack(&self, public: &PublicKey, frame: &RawFrame) -> Result<(), WireError> {
        let (envelope, _) =
            frame.open_signed::<Request>(public, FrameKind::AnnounceAck, Some(&self.bound_to))?;
        match self.check(envelope)? {
            Request::AckReady => Ok(()),
            _ => Err(WireError::UnexpectedKind {
                found: FrameKind::AnnounceAck as u8,
            }),
        }
    }
}

/// The controller's side of one session with one boot of one agent: signs and numbers its
/// commands.
#[derive(Debug, Clone)]
pub struct CommandSealer {
    key: SigningKey,
    boot_id: BootId,
    session: u64,
    next_counter: u64,
}

impl CommandSealer {
    /// Commands in the session a `Hello` reply opened.
    pub fn new(key: SigningKey, hello: &Hello) -> Self {
        Self {
            key,
            boot_id: hello.boot_id,
            session: hello.session,
            next_counter: hello.next_counter.max(1),
        }
    }

    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// Signs a command with the next counter.
    pub fn seal(&mut self, request: &Request) -> Result<(Vec<u8>, AwaitReply), WireError> {
        let counter = self.next_counter;
        let out = seal_initiator(
            Sealer::Sign(&self.key),
            FrameKind::Command,
            self.boot_id,
            self.session,
            counter,
            request,
        )?;
        self.next_counter = counter.saturating_add(1);
        Ok(out)
    }
}

/// Signs a `Hello` with a caller-chosen nonce as its counter: the command that opens a session,
/// sent before the client knows the agent's boot id.
pub fn seal_hello(key: &SigningKey, nonce: u64) -> Result<(Vec<u8>, AwaitReply), WireError> {
    seal_initiator(
        Sealer::Sign(key),
        FrameKind::Command,
        BootId::default(),
        0,
        nonce,
        &Request::Hello,
    )
}

fn seal_initiator<T: Serialize>(
    by: Sealer,
    kind: FrameKind,
    boot_id: BootId,
    session: u64,
    counter: u64,
    body: &T,
) -> Result<(Vec<u8>, AwaitReply), WireError> {
    let envelope = Envelope {
        boot_id,
        session,
        counter,
        body,
    };
    let (bytes, bound_to) = seal(by, kind, None, &envelope)?;
    Ok((
        bytes,
        AwaitReply {
            boot_id,
            session,
            counter,
            bound_to,
        },
    ))
}

/// The agent's side of one connection: accepts commands signed by the controller, for its own
/// boot, in the session it opened on this connection, with strictly increasing counters.
#[derive(Debug, Clone)]
pub struct CommandOpener {
    public: PublicKey,
    boot_id: BootId,
    session: Option<u64>,
    last_counter: u64,
}

impl CommandOpener {
    pub fn new(public: PublicKey, boot_id: BootId) -> Self {
        Self {
            public,
            boot_id,
            session: None,
            last_counter: 0,
        }
    }

    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// Opens session `session` (drawn at random by the caller) on this connection, answering a
    /// `Hello`: the commands that follow must carry it. A new `Hello` replaces the session.
    pub fn begin(&mut self, session: u64) -> Hello {
        self.session = Some(session);
        self.last_counter = 0;
        Hello {
            boot_id: self.boot_id,
            next_counter: 1,
            agent_version: String::new(),
            session,
        }
    }

    /// Whether a command of this connection's session has been accepted: proof that the peer
    /// holds the controller's key now (a `Hello` proves nothing, it may be a recording).
    pub fn authenticated(&self) -> bool {
        self.last_counter > 0
    }

    /// Verifies a command and checks it is fresh and meant for this boot and session. `Hello` is
    /// exempt from the boot id, session and counter checks: the caller answers it with
    /// [`Self::begin`].
    pub fn open(&mut self, frame: &RawFrame) -> Result<(Request, ReplyTo), WireError> {
        let (envelope, bound_to) =
            frame.open_signed::<Request>(&self.public, FrameKind::Command, None)?;
        let reply = ReplyTo {
            boot_id: envelope.boot_id,
            session: envelope.session,
            counter: envelope.counter,
            bound_to,
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
        if self.session != Some(envelope.session) {
            return Err(WireError::NoSession {
                found: envelope.session,
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
    key: &AgentKey,
    boot_id: BootId,
    counter: u64,
    announcement: &Response,
) -> Result<(Vec<u8>, AwaitReply), WireError> {
    seal_initiator(
        Sealer::Tag(key),
        FrameKind::Announce,
        boot_id,
        0,
        counter,
        announcement,
    )
}

/// The controller's side of announcements: remembers the last counter of each node's recent
/// boots (seeded from the controller's store after a restart, see [`Self::remember`]). Floors are
/// kept per node: one node's key can neither raise another node's floor nor push it out.
#[derive(Debug, Clone, Default)]
pub struct AnnounceOpener {
    recent: std::collections::HashMap<String, std::collections::VecDeque<(BootId, u64)>>,
}

/// How many boots of one node an [`AnnounceOpener`] remembers.
pub const RECENT_BOOTS: usize = 64;

impl AnnounceOpener {
    /// Records that `counter` was accepted for `node`'s boot `boot_id` (from the store, or after
    /// an open); a floor never goes down.
    pub fn remember(&mut self, node: &str, boot_id: BootId, counter: u64) {
        let boots = self.recent.entry(node.to_string()).or_default();
        let mut floor = counter;
        if let Some(pos) = boots.iter().position(|(b, _)| *b == boot_id) {
            floor = floor.max(boots[pos].1);
            boots.remove(pos);
        }
        if boots.len() == RECENT_BOOTS {
            boots.pop_front();
        }
        boots.push_back((boot_id, floor));
    }

    /// Authenticates an announcement of `node` under `key` (that node's key), checks that the
    /// `Ready` inside names the boot of its envelope, and refuses a counter not above the last
    /// one seen for that node's boot. Returns the boot id, the counter (to persist), the
    /// announcement and how to acknowledge it.
    pub fn open(
        &mut self,
        node: &str,
        key: &AgentKey,
        frame: &RawFrame,
    ) -> Result<(BootId, u64, Response, ReplyTo), WireError> {
        let (envelope, bound_to) = frame.open_tagged::<Response>(key, FrameKind::Announce, None)?;
        let Envelope {
            boot_id,
            session,
            counter,
            body,
        } = envelope;
        if let Response::Ready(r) = &body {
            if r.boot_id != boot_id {
                return Err(WireError::WrongBootId {
                    expected: boot_id,
                    found: r.boot_id,
                });
            }
        }
        let last = self
            .recent
            .get(node)
            .and_then(|boots| boots.iter().find(|(b, _)| *b == boot_id))
            .map(|(_, c)| *c);
        if let Some(last) = last {
            if counter <= last {
                return Err(WireError::Replay { counter, last });
            }
        }
        self.remember(node, boot_id, counter);
        let reply = ReplyTo {
            boot_id,
            session,
            counter,
            bound_to,
        };
        Ok((boot_id, counter, body, reply))
    }
}
