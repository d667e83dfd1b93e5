//! The `dialerd` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use dialerd::config::{self, ConfigError, LogFormat, Settings, Sources, Transport};
use dialerd::probe::{ProbeError, ProbeOptions};
use dialerd::{daemon, logging};

/// Exit code for a configuration or usage error.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a runtime failure (including an overrun shutdown deadline).
const EXIT_RUNTIME: u8 = 1;

/// SIP user-agent dialer daemon.
#[derive(Debug, Parser)]
#[command(name = "dialerd", version, about)]
struct Cli {
    /// Log format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run(ConfigArgs),
    /// Print the effective configuration (secrets redacted), or every problem found.
    CheckConfig(ConfigArgs),
    /// Send one OPTIONS to a SIP peer and print its answer (exit 0 on any final response).
    Probe(ProbeArgs),
    /// Send a command over the Redis control channel and print its result
    /// (exit 0 when ok, 1 on an error result or no result in time).
    Ctl(Box<CtlArgs>),
    /// Place one test call: originate, wait for the answer, hold, hang up,
    /// and print the outcome as JSON (exit 0 when answered).
    Call(CallArgs),
    /// Ask the running daemon to drain over its status server (POST /drain
    /// to http.bind, with http.token when set): it stops taking calls,
    /// hands leased accounts over, lets calls end (up to
    /// shutdown.deadline_secs), unregisters and exits 0.
    Drain(DrainArgs),
    /// Print the version.
    Version,
}

/// Arguments of `dialerd drain`.
#[derive(Debug, Args)]
struct DrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Wait until the daemon has exited (the pod's preStop hook).
    #[arg(long)]
    wait: bool,
    /// Longest wait, seconds (default: shutdown.deadline_secs + 30).
    #[arg(long)]
    wait_secs: Option<u64>,
}

/// Arguments of `dialerd call`.
#[derive(Debug, Args)]
struct CallArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The callee, e.g. sip:1001@pbx.example.com or sip:service@127.0.0.1:5070.
    uri: String,
    /// Call through this account (it registers first); without it the call
    /// goes straight to the URI's host.
    #[arg(long)]
    account: Option<String>,
    /// Seconds to stay connected after the answer.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// From user part (default: the account's user, or dialerd).
    #[arg(long)]
    from: Option<String>,
    /// From display name.
    #[arg(long)]
    display: Option<String>,
    /// An X- header to send, NAME:VALUE (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Seconds to ring before cancelling (default: calls.ring_timeout_secs).
    #[arg(long)]
    ring_timeout_secs: Option<u64>,
    /// Play this WAV file (8 kHz mono: 16-bit PCM, mu-law or A-law) to the
    /// callee once answered; the call's RTP is relayed from a port of
    /// media.rtp_port_range.
    #[arg(long, conflicts_with = "tone")]
    play: Option<PathBuf>,
    /// Play a tone of this frequency (Hz) to the callee once answered.
    #[arg(long)]
    tone: Option<f32>,
}

/// Arguments of `dialerd ctl`.
#[derive(Debug, Args)]
struct CtlArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Instance to address (default: `instance.id` of the configuration); `all` for every instance.
    #[arg(long)]
    instance: Option<String>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    #[command(subcommand)]
    action: CtlAction,
}

/// What `dialerd ctl` sends.
#[derive(Debug, Subcommand)]
// Parsed once per run: the size of `originate`'s options does not matter.
#[allow(clippy::large_enum_variant)]
enum CtlAction {
    /// Liveness of the instance.
    Ping,
    /// The instance's status snapshot.
    Status,
    /// Start draining (readiness false, no new work).
    Drain,
    /// Register an account.
    Register {
        /// Account name.
        account: String,
    },
    /// Unregister an account.
    Unregister {
        /// Account name.
        account: String,
    },
    /// Switch SIP message logging on or off.
    #[command(name = "sip_trace")]
    SipTrace {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Place a call through an account.
    Originate {
        /// Account to call through.
        #[arg(long)]
        account: String,
        /// Callee: a SIP URI, or a user/number at the account's domain.
        #[arg(long)]
        to: String,
        /// From user part.
        #[arg(long)]
        from: Option<String>,
        /// From display name.
        #[arg(long)]
        display: Option<String>,
        /// The call's id (default: the command id).
        #[arg(long)]
        call_id: Option<String>,
        /// An X- header to send, NAME:VALUE (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Seconds to ring before cancelling.
        #[arg(long)]
        ring_timeout_secs: Option<u64>,
        /// Longest talk time, seconds.
        #[arg(long)]
        max_duration_secs: Option<u64>,
        /// A live call to bridge the new one with.
        #[arg(long)]
        bridge_to: Option<String>,
        /// Dial even if the destination was dialed within the window.
        #[arg(long)]
        force: bool,
        /// Relay the call's audio with this external RTP endpoint, HOST:PORT.
        #[arg(long)]
        media: Option<std::net::SocketAddr>,
        /// The endpoint's codec: PCMU or PCMA.
        #[arg(long, requires = "media", default_value = "PCMU")]
        media_codec: String,
        /// Stream the call's audio to a voice agent at this ws:// or wss://
        /// URL (Twilio Media Streams).
        #[arg(long, conflicts_with = "media")]
        agent: Option<String>,
        /// SRTP for this call (default: the account's).
        #[arg(long, value_parser = ["off", "optional", "required", "dtls"])]
        srtp: Option<String>,
        /// Answering-machine detection: async (the agent at once, the
        /// verdict as a call.amd event) or sync (the agent only after a
        /// person answers).
        #[arg(long, value_parser = ["off", "async", "sync"])]
        amd: Option<String>,
        /// What to do when a machine answers: hangup, prompt (leave
        /// --machine-prompt after its greeting) or bridge.
        #[arg(long, requires = "amd", value_parser = ["hangup", "prompt", "bridge"])]
        on_machine: Option<String>,
        /// The message left on a machine (a WAV in media.prompt_dir).
        #[arg(long, requires = "amd")]
        machine_prompt: Option<String>,
        /// The campaign the call belongs to (its Redis gate and limit).
        #[arg(long)]
        campaign: Option<String>,
        /// The abandon guard's safe-harbor recording (a WAV in
        /// media.prompt_dir), played when the agent is late for a person.
        #[arg(long)]
        safe_harbor: Option<String>,
    },
    /// Hang a call up.
    Hangup {
        /// Call id.
        call_id: String,
    },
    /// Answer a ringing inbound call.
    Answer {
        /// Call id.
        call_id: String,
        /// Relay the call's audio with this external RTP endpoint, HOST:PORT.
        #[arg(long)]
        media: Option<std::net::SocketAddr>,
        /// The endpoint's codec: PCMU or PCMA.
        #[arg(long, requires = "media", default_value = "PCMU")]
        media_codec: String,
        /// Stream the call's audio to a voice agent at this ws:// or wss://
        /// URL (Twilio Media Streams).
        #[arg(long, conflicts_with = "media")]
        agent: Option<String>,
    },
    /// Stream a live call's audio to a voice agent, or stop streaming.
    Stream {
        /// Call id.
        call_id: String,
        /// The agent's ws:// or wss:// URL (Twilio Media Streams).
        #[arg(long, required_unless_present = "stop")]
        agent: Option<String>,
        /// Stop the stream.
        #[arg(long, conflicts_with = "agent")]
        stop: bool,
    },
    /// Play a prompt or a tone to a call's peer, or stop it.
    Play {
        /// Call id.
        call_id: String,
        /// A WAV file name in the instance's media.prompt_dir.
        #[arg(long, conflicts_with_all = ["tone", "stop"])]
        file: Option<String>,
        /// Repeat the file.
        #[arg(long = "loop", requires = "file")]
        loops: bool,
        /// A tone: one or two frequencies, Hz (repeat the option).
        #[arg(long, conflicts_with = "stop")]
        tone: Vec<f32>,
        /// The tone's length, milliseconds.
        #[arg(long, default_value_t = 1000)]
        duration_ms: u64,
        /// Stop what plays.
        #[arg(long)]
        stop: bool,
    },
    /// Reject a ringing inbound call.
    Reject {
        /// Call id.
        call_id: String,
        /// SIP status (400 to 699).
        #[arg(long, default_value_t = 486)]
        code: u16,
    },
    /// Join two calls of one instance.
    Bridge {
        /// One call id.
        call_id: String,
        /// The other call id.
        other_call_id: String,
    },
    /// Send DTMF digits in a call (RFC 4733 telephone-events when negotiated, else SIP INFO).
    Dtmf {
        /// Call id.
        call_id: String,
        /// Digits (0-9 * # A-D).
        digits: String,
    },
    /// A call's record (what happened to it).
    Call {
        /// Call id.
        call_id: String,
    },
    /// The live calls of the instance.
    Calls {
        /// Calls to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Most calls to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Follow the events stream, one JSON line per entry (Ctrl-C stops).
    Events {
        /// Start after this entry id (`0`: from the oldest kept; default:
        /// from now).
        #[arg(long)]
        after: Option<String>,
    },
}

impl CtlAction {
    /// The command type and its arguments.
    fn command(&self) -> Result<(&'static str, serde_json::Value), String> {
        use serde_json::json;
        Ok(match self {
            CtlAction::Ping => ("ping", json!({})),
            CtlAction::Status => ("status", json!({})),
            CtlAction::Drain => ("drain", json!({})),
            CtlAction::Register { account } => ("register", json!({ "account": account })),
            CtlAction::Unregister { account } => ("unregister", json!({ "account": account })),
            CtlAction::SipTrace { state } => ("sip_trace", json!({ "on": state == "on" })),
            CtlAction::Originate {
                account,
                to,
                from,
                display,
                call_id,
                headers,
                ring_timeout_secs,
                max_duration_secs,
                bridge_to,
                force,
                media,
                media_codec,
                agent,
                srtp,
                amd,
                on_machine,
                machine_prompt,
                campaign,
                safe_harbor,
            } => {
                let mut h = serde_json::Map::new();
                for header in headers {
                    let (name, value) = header
                        .split_once(':')
                        .ok_or_else(|| format!("--header {header:?}: expected NAME:VALUE"))?;
                    h.insert(name.trim().to_owned(), json!(value.trim()));
                }
                let mut args = serde_json::Map::new();
                args.insert("account".into(), json!(account));
                args.insert("to".into(), json!(to));
                args.insert("headers".into(), serde_json::Value::Object(h));
                args.insert("force".into(), json!(force));
                for (k, v) in [
                    ("from", from.as_ref().map(|v| json!(v))),
                    ("display", display.as_ref().map(|v| json!(v))),
                    ("call_id", call_id.as_ref().map(|v| json!(v))),
                    ("ring_timeout_secs", ring_timeout_secs.map(|v| json!(v))),
                    ("max_duration_secs", max_duration_secs.map(|v| json!(v))),
                    ("bridge_to", bridge_to.as_ref().map(|v| json!(v))),
                    ("media", media.map(|m| media_args(m, media_codec))),
                    ("media", agent.as_ref().map(|url| agent_args(url))),
                    ("srtp", srtp.as_ref().map(|v| json!(v))),
                    (
                        "amd",
                        amd.as_ref().map(|mode| {
                            json!({"mode": mode, "on_machine": on_machine, "machine_prompt": machine_prompt})
                        }),
                    ),
                    ("campaign", campaign.as_ref().map(|v| json!(v))),
                    ("safe_harbor", safe_harbor.as_ref().map(|v| json!(v))),
                ] {
                    if let Some(v) = v {
                        args.insert(k.into(), v);
                    }
                }
                ("originate", serde_json::Value::Object(args))
            }
            CtlAction::Hangup { call_id } => ("hangup", json!({ "call_id": call_id })),
            CtlAction::Answer {
                call_id,
                media,
                media_codec,
                agent,
            } => match (media, agent) {
                (Some(m), _) => (
                    "answer",
                    json!({ "call_id": call_id, "media": media_args(*m, media_codec) }),
                ),
                (None, Some(url)) => (
                    "answer",
                    json!({ "call_id": call_id, "media": agent_args(url) }),
                ),
                (None, None) => ("answer", json!({ "call_id": call_id })),
            },
            CtlAction::Stream {
                call_id,
                agent,
                stop: _,
            } => match agent {
                Some(url) => (
                    "stream",
                    json!({ "call_id": call_id, "media": agent_args(url) }),
                ),
                None => ("stream", json!({ "call_id": call_id, "stop": true })),
            },
            CtlAction::Play {
                call_id,
                file,
                loops,
                tone,
                duration_ms,
                stop,
            } => {
                let args = match (file, tone.is_empty(), stop) {
                    (Some(f), _, _) => json!({ "call_id": call_id, "file": f, "loop": loops }),
                    (None, false, _) => json!({
                        "call_id": call_id,
                        "tone": { "freqs": tone, "duration_ms": duration_ms },
                    }),
                    _ => json!({ "call_id": call_id, "stop": true }),
                };
                ("play", args)
            }
            CtlAction::Reject { call_id, code } => {
                ("reject", json!({ "call_id": call_id, "code": code }))
            }
            CtlAction::Bridge {
                call_id,
                other_call_id,
            } => (
                "bridge",
                json!({ "call_id": call_id, "other_call_id": other_call_id }),
            ),
            CtlAction::Dtmf { call_id, digits } => {
                ("dtmf", json!({ "call_id": call_id, "digits": digits }))
            }
            CtlAction::Call { call_id } => ("call_status", json!({ "call_id": call_id })),
            CtlAction::Calls { offset, limit } => {
                ("calls", json!({ "offset": offset, "limit": limit }))
            }
            CtlAction::Events { .. } => return Err("events is not a command".into()),
        })
    }
}

/// The `media` argument of `originate` and `answer`.
fn media_args(endpoint: std::net::SocketAddr, codec: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "rtp",
        "host": endpoint.ip().to_string(),
        "port": endpoint.port(),
        "codec": codec,
    })
}

/// The `media` argument naming a voice agent.
fn agent_args(url: &str) -> serde_json::Value {
    serde_json::json!({ "type": "websocket", "url": url })
}

/// Arguments of `dialerd probe`.
#[derive(Debug, Args)]
struct ProbeArgs {
    /// The peer, e.g. sip:pbx.example.com:5060 or sips:10.0.0.5:5061.
    uri: String,
    /// Transport (default: from the URI; sips: means tls, else udp).
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    /// PEM CA file that signs the peer's TLS certificate.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Pinned SHA-256 fingerprint of the peer's TLS certificate (hex, ':' optional).
    #[arg(long)]
    tls_fingerprint: Option<String>,
    /// Seconds to wait for a final response.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
    Tls,
}

/// Where the configuration comes from: defaults < --config < --profile < DIALERD__* environment.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "DIALERD_CONFIG")]
    config: Option<PathBuf>,
    /// sip-profile name (looked up in --profile-dir) or path to a profile file.
    #[arg(long, short = 'p', env = "DIALERD_PROFILE")]
    profile: Option<String>,
    /// Directory holding sip-profiles. Default: the first of
    /// <config dir>/sip-profiles, /usr/share/dialerd/sip-profiles,
    /// <executable dir>/../share/dialerd/sip-profiles, ./sip-profiles that
    /// holds the profile.
    #[arg(long, env = "DIALERD_PROFILE_DIR")]
    profile_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn sources(&self) -> Sources {
        Sources::with_process_env(
            self.config.clone(),
            self.profile.clone(),
            self.profile_dir.clone(),
        )
    }
}

/// Writes command output to stdout; a closed pipe (`| head`) is not an error.
fn say(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(text);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            // An image build passes the revision; else build.rs read git.
            let revision = option_env!("DIALERD_GIT_REVISION")
                .filter(|r| !r.is_empty())
                .unwrap_or(env!("DIALERD_BUILD_REVISION"));
            say(format_args!(
                "dialerd {} ({revision})\n",
                env!("CARGO_PKG_VERSION")
            ));
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => check_config(&args),
        Command::Run(args) => run(&args, cli.log_format),
        Command::Probe(args) => probe(&args),
        Command::Ctl(args) => ctl(&args),
        Command::Call(args) => call(&args, cli.log_format),
        Command::Drain(args) => drain(&args),
    }
}

fn drain(args: &DrainArgs) -> ExitCode {
    let settings = match load_or_report(&args.config.sources()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let addr = dialerd::drain_client::target(settings.http.bind);
    let wait = args.wait.then(|| {
        std::time::Duration::from_secs(
            args.wait_secs
                .unwrap_or(settings.shutdown.deadline_secs.saturating_add(30)),
        )
    });
    let token = settings.http.token.as_ref().map(|t| t.expose().to_owned());
    match dialerd::drain_client::drain(addr, token.as_deref(), wait) {
        Ok(()) => {
            let what = if args.wait {
                "drained and exited"
            } else {
                "draining"
            };
            say(format_args!("{what}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A single-threaded runtime for the one-shot commands (probe, ctl).
fn call(args: &CallArgs, log_format: Option<LogFormat>) -> ExitCode {
    let settings = match load_or_report(&args.config.sources()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Warnings only: stdout carries the outcome, stderr what went wrong
    // (RUST_LOG still wins).
    if let Err(e) = logging::init(log_format.unwrap_or(settings.log.format), "warn") {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((name, value))
                if name.trim().len() > 2 && name.trim()[..2].eq_ignore_ascii_case("x-") =>
            {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            _ => {
                eprintln!("error: --header {h:?} is not X-NAME:VALUE");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let opts = dialerd::oneshot_call::CallOptions {
        uri: args.uri.clone(),
        account: args.account.clone(),
        from: args.from.clone(),
        display: args.display.clone(),
        headers,
        hold: std::time::Duration::from_secs(args.hold_secs),
        ring_timeout: args.ring_timeout_secs.map(std::time::Duration::from_secs),
        play: match (&args.play, args.tone) {
            (Some(file), _) => Some(dialerd::oneshot_call::Play::File(file.clone())),
            (None, Some(hz)) => Some(dialerd::oneshot_call::Play::Tone(hz)),
            (None, None) => None,
        },
    };
    let runtime = match small_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(dialerd::oneshot_call::call(&settings, &opts)) {
        Ok(outcome) => {
            say(format_args!(
                "{}\n",
                serde_json::to_string(&outcome).unwrap_or_default()
            ));
            if outcome.answered {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn small_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        })
}

fn ctl(args: &CtlArgs) -> ExitCode {
    let settings = match load_or_report(&args.config.sources()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let instance = match args.instance.as_deref() {
        Some("all") => None,
        Some(i) => Some(i.to_owned()),
        None => Some(settings.instance.id.clone()),
    };
    let runtime = match small_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    dialerd::sip::transport::tls::install_default_provider();
    if let CtlAction::Events { after } = &args.action {
        let followed = runtime.block_on(dialerd::control::ctl::follow(
            &settings,
            after.as_deref(),
            |line| say(format_args!("{line}\n")),
        ));
        return match followed {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    let (kind, cmd_args) = match args.action.command() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let timeout = std::time::Duration::from_secs(args.timeout_secs.max(1));
    let sent = runtime.block_on(dialerd::control::ctl::send(
        &settings,
        instance.as_deref(),
        kind,
        cmd_args,
        timeout,
    ));
    match sent {
        Ok(result) => {
            let text = serde_json::to_string_pretty(&result).unwrap_or_default();
            say(format_args!("{text}\n"));
            if result.get("ok") == Some(&serde_json::Value::Bool(true)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn probe(args: &ProbeArgs) -> ExitCode {
    let opts = ProbeOptions {
        uri: args.uri.clone(),
        transport: args.transport.map(|t| match t {
            TransportArg::Udp => Transport::Udp,
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Tls => Transport::Tls,
        }),
        tls_ca: args.tls_ca.clone(),
        tls_fingerprint: args.tls_fingerprint.clone(),
        timeout: std::time::Duration::from_secs(args.timeout_secs.max(1)),
    };
    let runtime = match small_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(dialerd::probe::probe(&opts)) {
        Ok(answer) => {
            say(format_args!(
                "{} answered {} {} in {:.1} ms\n",
                answer.target,
                answer.status,
                answer.reason,
                answer.elapsed.as_secs_f64() * 1000.0
            ));
            for h in answer.response.headers() {
                say(format_args!("  {}: {}\n", h.raw_name, h.value()));
            }
            ExitCode::SUCCESS
        }
        Err(ProbeError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn load_or_report(sources: &Sources) -> Result<Settings, ExitCode> {
    config::load(sources).map_err(|e| {
        report_config_error(&e);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn report_config_error(err: &ConfigError) {
    let problems = err.problems();
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    eprintln!("error: invalid configuration ({} {noun}):", problems.len());
    for p in problems {
        eprintln!("  {p}");
    }
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    let sources = args.sources();
    let settings = match load_or_report(&sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match config::render_effective(&settings) {
        Ok(text) => {
            say(format_args!(
                "# dialerd effective configuration (secrets redacted)\n# sources: {}\n{text}",
                describe_sources(&sources)
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot render the configuration: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn describe_sources(s: &Sources) -> String {
    let mut parts = vec!["defaults".to_owned()];
    if let Some(f) = &s.config_file {
        parts.push(format!("file {}", f.display()));
    }
    if let Some(p) = &s.profile {
        parts.push(format!("profile {p}"));
    }
    let prefix = format!("{}{}", config::ENV_PREFIX, config::ENV_SEPARATOR);
    let mut vars: Vec<&str> = s
        .env
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .map(String::as_str)
        .collect();
    if !vars.is_empty() {
        vars.sort_unstable();
        parts.push(format!("environment {}", vars.join(" ")));
    }
    parts.join(" < ")
}

fn run(args: &ConfigArgs, log_format: Option<LogFormat>) -> ExitCode {
    let sources = args.sources();
    let settings = match load_or_report(&sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let format = log_format.unwrap_or(settings.log.format);
    if let Err(e) = logging::init(format, &settings.log.level) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dialerd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(daemon::run(settings, sources.env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dialerd stopped with an error");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
