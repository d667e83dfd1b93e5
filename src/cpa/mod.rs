//! Call progress analysis (sans-IO): what answered an outbound call, from
//! its audio. Two stages, the speech cadence of the answer ([`cadence`]:
//! human, machine or unknown, in the spirit of Asterisk's `AMD()`) and the
//! tones ([`tones`]: voicemail beeps, fax CNG/CED and special information
//! tones, rejecting the network's dual tones), joined per call by
//! [`analyzer`], which also finds the end of a machine's greeting. The
//! media relay feeds it (`media::cpa_tap`); the SIP core acts on its
//! reports.

pub mod analyzer;
pub mod cadence;
pub mod tones;

#[cfg(test)]
pub(crate) mod test_signal;
