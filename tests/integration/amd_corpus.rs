//! Offline evaluation of call progress analysis on a labelled corpus:
//! tests/cpa/make_corpus.sh synthesises people (espeak-ng), voicemail
//! greetings with and without a beep, fax and SIT calls and the network's
//! tones (sox); each file goes through G.711 µ-law, as it would arrive in a
//! call, with and without 3% of its 20 ms frames lost, into
//! `Analyzer::answered` with the default configuration (and the network
//! tones, fax and SIT calls also into `Analyzer::early`). The report (markdown
//! tables, also written to target/amd-corpus.md) measures the goals, which
//! are asserted: at least 95% of people and machines told apart, at most 2%
//! of people called machines, no beep (nor any tone) on ringback, dial tone
//! or busy, and a person's verdict within a second of the end of their
//! greeting (95th percentile); and, for information, the beeps found (within
//! 50 Hz, not before they start and by 200 ms after they end), fax, SIT and
//! the decision times, overall and per variant, with every miss listed.
//!
//! The corpus is cached under the target directory, keyed by the script's
//! hash and seed, so a rerun only analyses. `AMD_CORPUS_SEED` makes and
//! measures another corpus (a check that a tuning is not fitted to one).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dialerd::cpa::analyzer::{AnalysisConfig, Analyzer, FRAME, MachineEnd, Outcome, Report};
use dialerd::media::g711::Law;

use crate::support::repo_root;

/// The corpus's seed; `AMD_CORPUS_SEED` picks another (to check that a
/// tuning holds on a corpus it was not made on).
const SEED: u32 = 7;

fn seed() -> u32 {
    std::env::var("AMD_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

/// Share of frames lost in the loss variants, per mille.
const LOSS_PER_MILLE: u64 = 30;

/// The goals.
const MIN_ACCURACY: f64 = 0.95;
const MAX_FALSE_MACHINE: f64 = 0.02;
const MAX_HUMAN_LATENCY_P95_MS: u32 = 1000;
/// A beep counts when found within this of its frequency.
const BEEP_HZ_TOLERANCE: f64 = 50.0;

/// One line of labels.tsv.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub(crate) name: String,
    pub(crate) class: String,
    pub(crate) variant: String,
    /// Speech segments, ms.
    segments: Vec<(u32, u32)>,
    pub(crate) greeting_end_ms: Option<u32>,
    /// A machine's beep: Hz, start and length, ms.
    beep: Option<(f64, u32, u32)>,
    machine_end: Option<String>,
}

fn optional<T: std::str::FromStr>(field: &str) -> Option<T> {
    (field != "-").then(|| field.parse().ok()).flatten()
}

pub(crate) fn parse_labels(text: &str) -> Vec<Label> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(f.len() >= 12, "a short line in labels.tsv: {line}");
            let segments = if f[6] == "-" {
                Vec::new()
            } else {
                f[6].split(',')
                    .map(|s| {
                        let (a, b) = s.split_once('-').expect("a segment start-end");
                        (a.parse().unwrap(), b.parse().unwrap())
                    })
                    .collect()
            };
            let beep = match (optional(f[7]), optional(f[8]), optional(f[9])) {
                (Some(hz), Some(start), Some(len)) => Some((hz, start, len)),
                _ => None,
            };
            Label {
                name: f[0].to_owned(),
                class: f[1].to_owned(),
                variant: f[2].to_owned(),
                segments,
                greeting_end_ms: optional(f[4]),
                beep,
                machine_end: optional(f[10]),
            }
        })
        .collect()
}

/// The samples of an 8 kHz mono 16-bit PCM WAV file.
pub(crate) fn read_wav(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let mut at = 12;
    let mut format = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = format.expect("fmt before data");
            assert!(
                (tag == 1 || tag == 0xFFFE) && channels == 1 && rate == 8000 && bits == 16,
                "{}: not 8 kHz mono 16-bit PCM ({tag}, {channels}, {rate}, {bits})",
                path.display()
            );
            return body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// FNV-1a, for the cache key and the loss pattern's seeds.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `name` is a program on the PATH.
pub(crate) fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The corpus directory (generated unless cached) and how long generating
/// it took (`None` when cached).
pub(crate) fn corpus() -> (PathBuf, Option<Duration>) {
    let script = repo_root().join("tests/cpa/make_corpus.sh");
    let text = std::fs::read(&script).expect("read make_corpus.sh");
    let script_key = format!("{:016x}", fnv(&text));
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("amd-corpus");
    let dir = root.join(format!("{script_key}-seed{}", seed()));
    if dir.join("labels.tsv").is_file() {
        return (dir, None);
    }
    // Corpora of older scripts, and what a run stopped half way left (not
    // what another test process is making now).
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let running = name
            .strip_prefix("partial-")
            .is_some_and(|pid| Path::new("/proc").join(pid).exists());
        if !name.starts_with(&script_key) && !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let partial = root.join(format!("partial-{}", std::process::id()));
    std::fs::create_dir_all(&partial).expect("create the corpus directory");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .arg(&partial)
        .arg(seed().to_string())
        .output()
        .expect("run make_corpus.sh");
    assert!(
        output.status.success(),
        "make_corpus.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let took = started.elapsed();
    if std::fs::rename(&partial, &dir).is_err() {
        // Another run made it meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(dir.join("labels.tsv").is_file(), "move the corpus in place");
    }
    (dir, Some(took))
}

/// How the audio reaches the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// µ-law only.
    Intact,
    /// µ-law and lost frames (as silence).
    Lossy,
}

/// What the analysis reported on one file.
#[derive(Debug, Default, Clone)]
struct Heard {
    /// Outcome, cause, when.
    verdict: Option<(Outcome, &'static str, u32)>,
    machine_end: Option<(MachineEnd, u32)>,
    /// Early media: the tones reported.
    early: Vec<&'static str>,
}

/// `samples` through G.711 µ-law, in frames, with about
/// [`LOSS_PER_MILLE`] of them lost (zeros) if `loss`, seeded by `seed`.
fn frames(samples: &[i16], loss: bool, seed: u64) -> Vec<Vec<i16>> {
    let mut state = seed | 1;
    samples
        .chunks(FRAME)
        .map(|chunk| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if loss && state % 1000 < LOSS_PER_MILLE {
                vec![0; FRAME]
            } else {
                chunk
                    .iter()
                    .map(|&s| Law::Mu.decode(Law::Mu.encode(s)))
                    .collect()
            }
        })
        .collect()
}

fn analyse(frames: &[Vec<i16>], early: bool) -> Heard {
    let config = AnalysisConfig::default();
    let mut a = if early {
        Analyzer::early(config)
    } else {
        Analyzer::answered(config)
    };
    let mut result = Heard::default();
    for frame in frames {
        a.push_frame(frame);
        while let Some(report) = a.poll_report() {
            match report {
                Report::Verdict {
                    outcome,
                    cause,
                    at_ms,
                    ..
                } => result.verdict = Some((outcome, cause, at_ms)),
                Report::MachineEnd { end, at_ms } => result.machine_end = Some((end, at_ms)),
                Report::EarlyTone { tone, .. } => result.early.push(tone),
            }
        }
        if a.is_done() {
            break;
        }
    }
    result
}

/// One file's evaluation on one path.
#[derive(Debug, Clone)]
struct Case {
    label: Label,
    delivery: Delivery,
    answered: Heard,
    early: Option<Heard>,
}

impl Case {
    /// The verdict's column.
    fn verdict(&self) -> &'static str {
        self.answered
            .verdict
            .map_or("undecided", |(outcome, _, _)| outcome.as_str())
    }

    fn variant(&self) -> String {
        match self.delivery {
            Delivery::Intact => self.label.variant.clone(),
            Delivery::Lossy => format!("{}+loss", self.label.variant),
        }
    }

    /// Whether a beep was reported (as the greeting's end or as the
    /// verdict's cause).
    fn beep(&self) -> bool {
        matches!(
            self.answered.machine_end,
            Some((MachineEnd::Beep { .. }, _))
        ) || matches!(self.answered.verdict, Some((_, "beep", _)))
    }

    /// For a machine with a beep: whether it was found at its frequency and
    /// time (not before it started, reported by 200 ms after it ended).
    fn beep_found(&self) -> bool {
        let Some((hz, start, len)) = self.label.beep else {
            return false;
        };
        match self.answered.machine_end {
            Some((
                MachineEnd::Beep {
                    hz: found,
                    duration_ms,
                },
                at,
            )) => {
                (found - hz).abs() <= BEEP_HZ_TOLERANCE
                    && at.saturating_sub(duration_ms) + 60 >= start
                    && at <= start + len + 200
            }
            _ => false,
        }
    }

    /// For a person: ms from the end of the speech before the verdict to
    /// the verdict.
    fn human_latency(&self) -> Option<u32> {
        let (Outcome::Human, _, at) = self.answered.verdict? else {
            return None;
        };
        let end = self
            .label
            .segments
            .iter()
            .filter(|(_, end)| *end <= at)
            .map(|(_, end)| *end)
            .max()
            .or(self.label.greeting_end_ms)?;
        Some(at.saturating_sub(end))
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}% ({n}/{of})", 100.0 * n as f64 / of as f64)
    }
}

const TRUTHS: [&str; 7] = [
    "human", "machine", "fax", "sit", "ringback", "dialtone", "busy",
];
const VERDICTS: [&str; 6] = ["human", "machine", "fax", "sit", "unknown", "undecided"];
const NETWORK: [&str; 3] = ["ringback", "dialtone", "busy"];
/// The classes also analysed as early media.
const EARLY: [&str; 5] = ["ringback", "dialtone", "busy", "fax", "sit"];

#[test]
fn the_analysis_meets_its_goals_on_the_labelled_corpus() {
    let missing: Vec<&str> = ["espeak-ng", "sox", "soxi"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: {} missing (Debian packages espeak-ng and sox; scripts/setup.sh installs them)",
            missing.join(", ")
        );
        return;
    }
    let (dir, generated) = corpus();
    let labels =
        parse_labels(&std::fs::read_to_string(dir.join("labels.tsv")).expect("read labels.tsv"));
    assert!(!labels.is_empty(), "an empty corpus");

    let started = Instant::now();
    let cases: Vec<Case> = std::thread::scope(|s| {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let chunk = labels.len().div_ceil(workers);
        let dir = &dir;
        let handles: Vec<_> = labels
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for label in part {
                        let samples = read_wav(&dir.join(format!("{}.wav", label.name)));
                        for delivery in [Delivery::Intact, Delivery::Lossy] {
                            let f = frames(
                                &samples,
                                delivery == Delivery::Lossy,
                                fnv(label.name.as_bytes()),
                            );
                            let early = EARLY
                                .contains(&label.class.as_str())
                                .then(|| analyse(&f, true));
                            out.push(Case {
                                label: label.clone(),
                                delivery,
                                answered: analyse(&f, false),
                                early,
                            });
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an analysis thread"))
            .collect()
    });
    let analysis_time = started.elapsed();

    let report = render(&cases, &dir, generated, analysis_time);
    println!("{}", report.text);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("amd-corpus.md");
    std::fs::write(&out, &report.text).expect("write target/amd-corpus.md");

    let mut failed = Vec::new();
    if report.accuracy < MIN_ACCURACY {
        failed.push(format!(
            "human/machine accuracy {:.1}% < {:.0}%",
            100.0 * report.accuracy,
            100.0 * MIN_ACCURACY
        ));
    }
    if report.false_machine > MAX_FALSE_MACHINE {
        failed.push(format!(
            "people called machines {:.1}% > {:.0}%",
            100.0 * report.false_machine,
            100.0 * MAX_FALSE_MACHINE
        ));
    }
    if report.network_false_tones > 0 {
        failed.push(format!(
            "{} false beeps or tones on ringback, dial tone or busy",
            report.network_false_tones
        ));
    }
    if report.latency_p95 > MAX_HUMAN_LATENCY_P95_MS {
        failed.push(format!(
            "a person's verdict {} ms after their greeting (p95) > {MAX_HUMAN_LATENCY_P95_MS} ms",
            report.latency_p95
        ));
    }
    assert!(
        failed.is_empty(),
        "goals not met (report in {}): {}",
        out.display(),
        failed.join("; ")
    );
}

/// The report and the figures the goals are checked on.
struct Rendered {
    text: String,
    accuracy: f64,
    false_machine: f64,
    network_false_tones: usize,
    latency_p95: u32,
}

fn render(cases: &[Case], dir: &Path, generated: Option<Duration>, analysis: Duration) -> Rendered {
    let mut t = String::new();
    let files = cases
        .iter()
        .filter(|c| c.delivery == Delivery::Intact)
        .count();
    let _ = writeln!(t, "# Call progress analysis on the labelled corpus\n");
    let _ = writeln!(
        t,
        "Corpus: {} ({files} files, {:.1} MB, seed {}; {}). Each file through G.711 µ-law, \
         as is and with {:.0}% of frames lost: {} analyses in {:.1} s. \
         `Analyzer::answered(AnalysisConfig::default())`; ringback, dial tone, busy, fax and \
         SIT also `Analyzer::early`.\n",
        dir.display(),
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>() as f64
            / 1e6,
        seed(),
        generated.map_or("cached".to_owned(), |d| format!(
            "generated in {:.1} s",
            d.as_secs_f64()
        )),
        LOSS_PER_MILLE as f64 / 10.0,
        cases.len(),
        analysis.as_secs_f64()
    );

    // Composition.
    let mut composition: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for c in cases {
        *composition
            .entry((c.label.class.as_str(), c.variant()))
            .or_default() += 1;
    }
    let variants = ["clean", "noise", "clean+loss", "noise+loss"];
    let _ = writeln!(t, "## Composition\n");
    let _ = writeln!(t, "| class | {} | total |", variants.join(" | "));
    let _ = writeln!(t, "|---|{}---|", "---|".repeat(variants.len()));
    for truth in TRUTHS {
        let counts: Vec<usize> = variants
            .iter()
            .map(|v| {
                composition
                    .get(&(truth, (*v).to_owned()))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        let row: Vec<String> = counts.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            t,
            "| {truth} | {} | {} |",
            row.join(" | "),
            counts.iter().sum::<usize>()
        );
    }

    // Confusion matrix.
    let _ = writeln!(t, "\n## Confusion matrix (rows: truth, columns: verdict)\n");
    let _ = writeln!(t, "| truth \\ verdict | {} |", VERDICTS.join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(VERDICTS.len()));
    for truth in TRUTHS {
        let row: Vec<String> = VERDICTS
            .iter()
            .map(|v| {
                cases
                    .iter()
                    .filter(|c| c.label.class == truth && c.verdict() == *v)
                    .count()
                    .to_string()
            })
            .collect();
        let _ = writeln!(t, "| {truth} | {} |", row.join(" | "));
    }

    // Goals and figures, overall and per variant.
    let people = |v: Option<&str>| -> Vec<&Case> {
        cases
            .iter()
            .filter(|c| c.label.class == "human" && v.is_none_or(|v| c.variant() == v))
            .collect()
    };
    let machines = |v: Option<&str>| -> Vec<&Case> {
        cases
            .iter()
            .filter(|c| c.label.class == "machine" && v.is_none_or(|v| c.variant() == v))
            .collect()
    };
    let correct = |cs: &[&Case]| cs.iter().filter(|c| c.verdict() == c.label.class).count();
    let latencies = |cs: &[&Case]| -> Vec<u32> {
        let mut l: Vec<u32> = cs.iter().filter_map(|c| c.human_latency()).collect();
        l.sort_unstable();
        l
    };
    let beeps = |cs: &[&Case]| -> (usize, usize) {
        let with: Vec<&&Case> = cs.iter().filter(|c| c.label.beep.is_some()).collect();
        (with.iter().filter(|c| c.beep_found()).count(), with.len())
    };
    let network = |v: Option<&str>| -> Vec<&Case> {
        cases
            .iter()
            .filter(|c| {
                NETWORK.contains(&c.label.class.as_str()) && v.is_none_or(|v| c.variant() == v)
            })
            .collect()
    };
    let network_false = |cs: &[&Case]| {
        cs.iter()
            .filter(|c| c.beep() || c.early.as_ref().is_some_and(|e| !e.early.is_empty()))
            .count()
    };

    let _ = writeln!(t, "\n## Figures\n");
    let mut columns = vec![None];
    columns.extend(variants.iter().map(|v| Some(*v)));
    let header: Vec<&str> = columns.iter().map(|c| c.unwrap_or("all")).collect();
    let _ = writeln!(t, "| figure | goal | {} |", header.join(" | "));
    let _ = writeln!(t, "|---|---|{}", "---|".repeat(columns.len()));
    let row = |t: &mut String, name: &str, goal: &str, f: &dyn Fn(Option<&str>) -> String| {
        let cells: Vec<String> = columns.iter().map(|c| f(*c)).collect();
        let _ = writeln!(t, "| {name} | {goal} | {} |", cells.join(" | "));
    };
    row(&mut t, "human+machine correct", "≥ 95%", &|v| {
        let mut cs = people(v);
        cs.extend(machines(v));
        pct(correct(&cs), cs.len())
    });
    row(&mut t, "people correct (human)", "", &|v| {
        let cs = people(v);
        pct(correct(&cs), cs.len())
    });
    row(&mut t, "machines correct (machine)", "", &|v| {
        let cs = machines(v);
        pct(correct(&cs), cs.len())
    });
    row(&mut t, "people called machine", "≤ 2%", &|v| {
        let cs = people(v);
        pct(
            cs.iter().filter(|c| c.verdict() == "machine").count(),
            cs.len(),
        )
    });
    row(&mut t, "beeps found (±50 Hz, in time)", "", &|v| {
        let (found, of) = beeps(&machines(v));
        pct(found, of)
    });
    row(&mut t, "beeps on machines without one", "", &|v| {
        let cs: Vec<&Case> = machines(v)
            .into_iter()
            .filter(|c| c.label.beep.is_none())
            .collect();
        pct(cs.iter().filter(|c| c.beep()).count(), cs.len())
    });
    row(&mut t, "no-beep machines ended by silence", "", &|v| {
        let cs: Vec<&Case> = machines(v)
            .into_iter()
            .filter(|c| c.label.machine_end.as_deref() == Some("silence"))
            .collect();
        let n = cs
            .iter()
            .filter(|c| matches!(c.answered.machine_end, Some((MachineEnd::Silence, _))))
            .count();
        pct(n, cs.len())
    });
    row(
        &mut t,
        "false beeps/tones on ringback, dial tone, busy",
        "0",
        &|v| {
            let cs = network(v);
            format!("{} of {}", network_false(&cs), cs.len())
        },
    );
    for (class, name) in [("fax", "fax found"), ("sit", "SIT found")] {
        row(&mut t, name, "", &|v| {
            let cs: Vec<&Case> = cases
                .iter()
                .filter(|c| c.label.class == class && v.is_none_or(|v| c.variant() == v))
                .collect();
            pct(correct(&cs), cs.len())
        });
    }
    row(&mut t, "early media: SIT or fax tone reported", "", &|v| {
        let cs: Vec<&Case> = cases
            .iter()
            .filter(|c| {
                ["fax", "sit"].contains(&c.label.class.as_str())
                    && v.is_none_or(|v| c.variant() == v)
            })
            .collect();
        let n = cs
            .iter()
            .filter(|c| {
                c.early.as_ref().is_some_and(|e| {
                    e.early
                        .iter()
                        .any(|t| t.starts_with(if c.label.class == "sit" { "sit" } else { "fax" }))
                })
            })
            .count();
        pct(n, cs.len())
    });
    row(
        &mut t,
        "person's verdict after greeting, p50 / p95 / max ms",
        "p95 ≤ 1000",
        &|v| {
            let l = latencies(&people(v));
            format!(
                "{} / {} / {}",
                percentile(&l, 50.0),
                percentile(&l, 95.0),
                l.last().copied().unwrap_or(0)
            )
        },
    );
    row(
        &mut t,
        "machine's verdict, p50 / p95 ms after answer",
        "",
        &|v| {
            let mut l: Vec<u32> = machines(v)
                .iter()
                .filter_map(|c| match c.answered.verdict {
                    Some((Outcome::Machine, _, at)) => Some(at),
                    _ => None,
                })
                .collect();
            l.sort_unstable();
            format!("{} / {}", percentile(&l, 50.0), percentile(&l, 95.0))
        },
    );

    // Causes of the verdicts.
    let mut causes: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for c in cases {
        let (verdict, cause) = c
            .answered
            .verdict
            .map_or(("undecided", "-"), |(o, cause, _)| (o.as_str(), cause));
        *causes
            .entry((c.label.class.as_str(), verdict, cause))
            .or_default() += 1;
    }
    let _ = writeln!(t, "\n## Verdicts by rule\n");
    let _ = writeln!(t, "| truth | verdict | cause | count |");
    let _ = writeln!(t, "|---|---|---|---|");
    for ((truth, verdict, cause), n) in &causes {
        let _ = writeln!(t, "| {truth} | {verdict} | {cause} | {n} |");
    }

    // What went wrong, file by file.
    let mut wrong: Vec<String> = Vec::new();
    for c in cases {
        let (verdict, cause, at) = c
            .answered
            .verdict
            .map_or(("undecided", "-", 0), |(o, cause, at)| {
                (o.as_str(), cause, at)
            });
        let mut problems = Vec::new();
        if ["human", "machine", "fax", "sit"].contains(&c.label.class.as_str())
            && verdict != c.label.class
        {
            problems.push(format!("verdict {verdict} ({cause}) at {at} ms"));
        }
        if c.label.class == "human"
            && let Some(l) = c.human_latency()
            && l > MAX_HUMAN_LATENCY_P95_MS
        {
            problems.push(format!("human {l} ms after the greeting"));
        }
        if c.label.beep.is_some() && !c.beep_found() {
            problems.push(format!(
                "beep {:?} not found: verdict {verdict} ({cause}) at {at} ms, end {:?}",
                c.label.beep, c.answered.machine_end
            ));
        }
        if (NETWORK.contains(&c.label.class.as_str()) || c.label.beep.is_none()) && c.beep() {
            problems.push(format!(
                "false beep: verdict {verdict} ({cause}), end {:?}",
                c.answered.machine_end
            ));
        }
        if NETWORK.contains(&c.label.class.as_str())
            && let Some(e) = &c.early
            && !e.early.is_empty()
        {
            problems.push(format!("early media reported {:?}", e.early));
        }
        if !problems.is_empty() {
            wrong.push(format!(
                "| {} | {} | {} |",
                c.label.name,
                c.variant(),
                problems.join("; ")
            ));
        }
    }
    let _ = writeln!(t, "\n## Misses ({})\n", wrong.len());
    if !wrong.is_empty() {
        let _ = writeln!(t, "| file | variant | problem |");
        let _ = writeln!(t, "|---|---|---|");
        for w in &wrong {
            let _ = writeln!(t, "{w}");
        }
    }

    let hm: Vec<&Case> = people(None).into_iter().chain(machines(None)).collect();
    let all_people = people(None);
    let l = latencies(&all_people);
    Rendered {
        accuracy: correct(&hm) as f64 / hm.len().max(1) as f64,
        false_machine: all_people
            .iter()
            .filter(|c| c.verdict() == "machine")
            .count() as f64
            / all_people.len().max(1) as f64,
        network_false_tones: network_false(&network(None)),
        latency_p95: percentile(&l, 95.0),
        text: t,
    }
}
