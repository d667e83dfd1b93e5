//! An originate's campaign, answering-machine detection and abandon guard,
//! turned into what the SIP core takes (prompts loaded here, at the edge).

use std::time::Duration;

use super::agent::prompt;
use crate::call::Campaign;
use crate::control::command::{AmdArgs, OriginateArgs};
use crate::cpa::analyzer::AnalysisConfig;
use crate::engine::progress::{AmdPlan, GuardPlan, Mode, OnMachine, Plan};

/// What an originate's progress fields fall back on (`[calls]`, `[media]`).
#[derive(Debug, Clone)]
pub struct ProgressDefaults {
    /// `calls.abandon_ms`.
    pub abandon_ms: u64,
    /// `calls.safe_harbor`.
    pub safe_harbor: Option<String>,
    /// `calls.campaign_max_calls`.
    pub campaign_max_calls: usize,
    /// Whether `media.amd_capture_dir` is set.
    pub capture: bool,
}

impl Default for ProgressDefaults {
    /// The configuration's defaults.
    fn default() -> Self {
        let calls = crate::config::CallSettings::default();
        Self {
            abandon_ms: calls.abandon_ms,
            safe_harbor: None,
            campaign_max_calls: calls.campaign_max_calls,
            capture: false,
        }
    }
}

/// The campaign of `o`, with its limit.
pub fn campaign(o: &OriginateArgs, d: &ProgressDefaults) -> Option<Campaign> {
    o.campaign.as_deref().map(|tag| Campaign {
        tag: tag.into(),
        max_calls: o.campaign_max_calls.unwrap_or(d.campaign_max_calls),
    })
}

/// The analysis rules of `a`: the defaults with its overrides.
pub fn analysis_config(a: &AmdArgs) -> AnalysisConfig {
    let mut c = AnalysisConfig::default();
    let set = |field: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut c.cadence.initial_silence, a.initial_silence_ms);
    set(&mut c.cadence.greeting, a.greeting_ms);
    set(
        &mut c.cadence.after_greeting_silence,
        a.after_greeting_silence_ms,
    );
    set(&mut c.cadence.total_analysis, a.total_analysis_ms);
    set(&mut c.cadence.min_word, a.min_word_ms);
    set(&mut c.cadence.between_words, a.between_words_ms);
    set(&mut c.cadence.max_words, a.max_words);
    set(&mut c.cadence.max_word, a.max_word_ms);
    set(&mut c.cadence.silence_threshold, a.silence_threshold);
    set(&mut c.machine_end_silence, a.machine_end_silence_ms);
    set(&mut c.machine_end_timeout, a.machine_end_timeout_ms);
    set(&mut c.tones.min_beep_ms, a.min_beep_ms);
    c
}

/// The progress plan of `o`: `None` when it asks for neither analysis
/// nor a guard. The guard is on for a call with a voice agent when a
/// safe-harbor recording is at hand (the command's or `calls.safe_harbor`).
pub async fn plan(
    o: &OriginateArgs,
    d: &ProgressDefaults,
    prompt_dir: Option<&std::path::Path>,
) -> Result<Option<Box<Plan>>, String> {
    let amd = match o.amd.as_ref().filter(|a| a.mode.as_deref() != Some("off")) {
        Some(a) => {
            let capture_ms = a.capture_ms.unwrap_or(0);
            if capture_ms > 0 && !d.capture {
                return Err("args.amd.capture_ms: no media.amd_capture_dir is configured".into());
            }
            let on_machine = match (a.on_machine.as_deref(), &a.machine_prompt) {
                (Some("prompt"), Some(name)) => {
                    OnMachine::Prompt(prompt(prompt_dir, name, "args.amd.machine_prompt").await?)
                }
                (Some("bridge"), _) => OnMachine::Bridge,
                _ => OnMachine::Hangup,
            };
            Some(AmdPlan {
                mode: if a.mode.as_deref() == Some("sync") {
                    Mode::Sync
                } else {
                    Mode::Async
                },
                on_machine,
                config: analysis_config(a),
                capture_ms,
            })
        }
        None => None,
    };
    let agent = o.media.as_ref().is_some_and(|m| m.kind == "websocket");
    let recording = o.safe_harbor.as_ref().or(d.safe_harbor.as_ref());
    let within = Duration::from_millis(o.abandon_ms.unwrap_or(d.abandon_ms));
    let field = if o.safe_harbor.is_some() {
        "args.safe_harbor"
    } else {
        "calls.safe_harbor"
    };
    let guard = match recording {
        Some(name) if agent => Some(GuardPlan {
            within,
            safe_harbor: Some(prompt(prompt_dir, name, field).await?),
        }),
        _ => None,
    };
    // A person is decided `after_greeting_silence` after their last word:
    // a guard no longer than that (and its margin) would drop every one.
    if let (Some(g), Some(a)) = (&guard, &amd) {
        let quiet = Duration::from_millis(u64::from(a.config.cadence.after_greeting_silence));
        if g.within <= quiet + Duration::from_millis(100) {
            return Err(format!(
                "args.abandon_ms: {} ms leaves no time after the {} ms of silence that decide a person",
                g.within.as_millis(),
                quiet.as_millis()
            ));
        }
    }
    if amd.is_none() && guard.is_none() {
        return Ok(None);
    }
    Ok(Some(Box::new(Plan {
        amd,
        guard,
        held_agent: None,
    })))
}
