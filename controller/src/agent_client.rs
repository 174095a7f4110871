//! A direct client of one agent: `Hello` opens a session on the connection (the agent's boot id
//! and a session it draws), then numbered commands signed with the controller's key; every reply
//! is checked under the agent key of the node that was asked.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use lazarus_proto::frame::{read_frame_before, seal_hello, write_frame, CommandSealer};
use lazarus_proto::{AgentKey, ErrorReply, Request, Response, SigningKey, WireError};

/// Errors talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("talking to {0}: {1}")]
    Wire(SocketAddr, WireError),
    #[error("agent {0} refused: {1:?}: {2}")]
    Refused(SocketAddr, lazarus_proto::Refusal, String),
    #[error("agent {0} sent an unexpected reply: {1}")]
    Unexpected(SocketAddr, String),
}

/// An authenticated connection to one boot of one agent.
#[derive(Debug)]
pub struct AgentClient {
    addr: SocketAddr,
    stream: TcpStream,
    sealer: CommandSealer,
    agent_key: AgentKey,
    /// How long each answer may take, whole.
    timeout: Duration,
}

impl AgentClient {
    /// Connects and says `Hello`: commands signed with `signing`, replies checked under
    /// `agent_key`.
    pub fn connect(
        addr: &str,
        signing: SigningKey,
        agent_key: AgentKey,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| ClientError::Resolve(addr.to_string(), e))?
            .next()
            .ok_or_else(|| {
                ClientError::Resolve(addr.to_string(), std::io::ErrorKind::NotFound.into())
            })?;
        let mut stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| ClientError::Connect(sock, e))?;
        let wire = |e: std::io::Error| ClientError::Wire(sock, e.into());
        stream.set_read_timeout(Some(timeout)).map_err(wire)?;
        stream.set_write_timeout(Some(timeout)).map_err(wire)?;
        stream.set_nodelay(true).map_err(wire)?;
        let mut nonce = [0u8; 8];
        lazarus_node::random::fill(&mut nonce).map_err(wire)?;
        let (frame, wait) = seal_hello(&signing, u64::from_le_bytes(nonce))
            .map_err(|e| ClientError::Wire(sock, e))?;
        write_frame(&mut stream, &frame).map_err(|e| ClientError::Wire(sock, e))?;
        // The whole answer within the timeout, however a peer spaces its bytes.
        let reply = read_frame_before(&mut stream, std::time::Instant::now() + timeout)
            .map_err(|e| ClientError::Wire(sock, e))?;
        match wait
            .open_reply(&agent_key, &reply)
            .map_err(|e| ClientError::Wire(sock, e))?
        {
            Response::Hello(h) => Ok(Self {
                addr: sock,
                stream,
                sealer: CommandSealer::new(signing, &h),
                agent_key,
                timeout,
            }),
            other => Err(ClientError::Unexpected(sock, format!("{other:?}"))),
        }
    }

    /// The agent's boot id.
    pub fn boot_id(&self) -> lazarus_proto::BootId {
        self.sealer.boot_id()
    }

    /// Sends one command and returns the agent's reply; a refusal is an error.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let (frame, wait) = self
            .sealer
            .seal(request)
            .map_err(|e| ClientError::Wire(self.addr, e))?;
        write_frame(&mut self.stream, &frame).map_err(|e| ClientError::Wire(self.addr, e))?;
        let reply = read_frame_before(&mut self.stream, std::time::Instant::now() + self.timeout)
            .map_err(|e| ClientError::Wire(self.addr, e))?;
        match wait
            .open_reply(&self.agent_key, &reply)
            .map_err(|e| ClientError::Wire(self.addr, e))?
        {
            Response::Error(ErrorReply { kind, message }) => {
                Err(ClientError::Refused(self.addr, kind, message))
            }
            other => Ok(other),
        }
    }

    /// Sends a command whose answer is a `Status`.
    pub fn status_of(&mut self, request: &Request) -> Result<lazarus_proto::Status, ClientError> {
        match self.call(request)? {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(self.addr, format!("{other:?}"))),
        }
    }
}
