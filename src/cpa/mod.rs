//! Call progress analysis (sans-IO): what answered an outbound call, from
//! its audio. So far two stages: the speech cadence of the answer
//! ([`cadence`]: human, machine or unknown, in the spirit of Asterisk's
//! `AMD()`) and the tones ([`tones`]: voicemail beeps, fax CNG/CED and
//! special information tones, rejecting the network's dual tones). Their
//! wiring into calls (`call.amd`, modes, actions), the abandon guard and the
//! campaign gate are not built yet (issue 15).

pub mod cadence;
pub mod tones;
