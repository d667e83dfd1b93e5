//! The AI agent media bridge: a call's audio streamed to and from a voice
//! agent over a WebSocket, as the hosted telephony providers do.
//!
//! Sans-IO throughout: [`ws`] frames the WebSocket, [`twilio`] speaks the
//! Twilio Media Streams messages, [`playout`] queues and paces the agent's
//! audio, and [`stream::AgentStream`] ties them into one machine per call
//! that the media shard owning the call's RTP drives with bytes and time.

pub mod playout;
pub mod stream;
pub mod twilio;
pub mod ws;
