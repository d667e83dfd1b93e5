//! Call progress analysis (sans-IO): what answered an outbound call, from
//! its audio. So far the tone stage ([`tones`]): voicemail beeps, fax
//! CNG/CED and special information tones, rejecting the network's dual
//! tones. The speech-cadence stage (answering-machine detection), its
//! wiring into calls and the abandon guard are not built yet (issue 15).

pub mod tones;
