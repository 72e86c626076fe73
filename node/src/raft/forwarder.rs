//! Groups the writes a follower forwards to its leader.
//!
//! Every write a client sends to a follower goes to the leader over the
//! peer transport. One QUIC request per write costs a stream, its frames,
//! their encryption and an acknowledgement on both sides; under load that
//! was a fifth of the datacenter's CPU for puts. The forwarder sends every
//! write waiting when a slot frees up as one [`PeerRequest::Writes`], which
//! the leader hands to its proposer together, and answers each write from
//! the leader's list. A write that arrives alone goes alone, as
//! [`PeerRequest::Write`], which every server version understands; grouped
//! requests are only sent once the datacenter's cluster level says every
//! member reads them (see `crate::version`).

use super::network::{ForwardError, PeerNetwork, PeerRequest, PeerResponse};
use super::types::Member;
use crate::kv::{Applied, Command};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Requests to the leader in flight at once; further writes wait and group.
const IN_FLIGHT: usize = 4;
/// Writes in one request at most.
const WRITES_MAX: usize = 256;
/// Approximate bytes in one request at most (a larger write still goes alone).
const BYTES_MAX: usize = 1024 * 1024;

/// What became of a forwarded write.
#[derive(Debug)]
pub enum Forwarded {
    /// The leader's answer.
    Answer(Result<Applied, ForwardError>),
    /// The request never left: trying again cannot apply it twice.
    NotSent,
    /// Sent, but no answer came: the write may or may not be applied.
    Unknown,
}

struct Waiting {
    command: Command,
    leader: (u64, Member),
    /// Whether the leader may get it in a grouped request.
    group: bool,
    reply: oneshot::Sender<Forwarded>,
}

/// The handle writes are forwarded through; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl Forwarder {
    /// Starts the forwarding task; each request to the leader may take up
    /// to `timeout`.
    /// `requests` counts the requests sent.
    pub fn start(
        network: PeerNetwork,
        timeout: Duration,
        requests: prometheus::IntCounter,
    ) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(network, rx, timeout, requests));
        Forwarder { tx }
    }

    /// Forwards `command` to `leader` and waits for what became of it.
    /// `group` allows sending it in a grouped request.
    pub async fn forward(&self, leader: (u64, Member), command: Command, group: bool) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            command,
            leader,
            group,
            reply,
        };
        if self.tx.send(waiting).is_err() {
            return Forwarded::NotSent;
        }
        answer.await.unwrap_or(Forwarded::Unknown)
    }
}

async fn run(
    network: PeerNetwork,
    mut rx: mpsc::UnboundedReceiver<Waiting>,
    timeout: Duration,
    requests: prometheus::IntCounter,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A write taken from the queue that could not join the previous group.
    let mut carried: Option<Waiting> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut bytes = first.command.payload_bytes();
        let mut group = vec![first];
        while group[0].group && group.len() < WRITES_MAX {
            let Ok(next) = rx.try_recv() else {
                break;
            };
            let b = next.command.payload_bytes();
            if !next.group || next.leader.0 != group[0].leader.0 || bytes + b > BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += b;
            group.push(next);
        }
        requests.inc();
        let network = network.clone();
        tokio::spawn(async move {
            send(&network, group, timeout).await;
            drop(permit);
        });
    }
}

/// Sends one group to its leader and answers each write in it.
async fn send(network: &PeerNetwork, group: Vec<Waiting>, timeout: Duration) {
    let member = group[0].leader.1.clone();
    let (commands, replies): (Vec<Command>, Vec<_>) =
        group.into_iter().map(|w| (w.command, w.reply)).unzip();
    let count = commands.len();
    let request = match <[Command; 1]>::try_from(commands) {
        Ok([command]) => PeerRequest::Write(command),
        Err(commands) => PeerRequest::Writes(commands),
    };
    let answers: Vec<Forwarded> = match network.send(&member, &request, timeout).await {
        Ok(PeerResponse::Write(answer)) if count == 1 => vec![Forwarded::Answer(answer)],
        Ok(PeerResponse::Writes(answers)) if answers.len() == count => {
            answers.into_iter().map(Forwarded::Answer).collect()
        }
        Err(meridian_gateway::GatewayError::Connect { .. }) => {
            (0..count).map(|_| Forwarded::NotSent).collect()
        }
        Err(_) | Ok(_) => (0..count).map(|_| Forwarded::Unknown).collect(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}
