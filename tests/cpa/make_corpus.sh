#!/usr/bin/env bash
# make_corpus.sh OUTDIR [SEED]: a labelled corpus for the offline evaluation
# of call progress analysis (tests/integration/amd_corpus.rs).
#
# Writes 8 kHz mono 16-bit WAV files and OUTDIR/labels.tsv, the same for the
# same SEED (bash's $RANDOM seeded with it, sox in repeatable mode without
# dither, espeak-ng is deterministic). Every sample comes in two variants:
# `clean` (digital silence between the sounds) and `noise` (pink or white
# noise over the whole file, about 20 dB under the speech or tone); the
# evaluator adds packet loss itself.
#
# Classes:
#   human     a short greeting ("Hello?", "Hi, this is Ann") after 0.2-1.0 s
#             of line silence, then silence, or ~1-1.5 s later a second
#             phrase ("Who is this?"); several espeak-ng voices and variants,
#             speeds and pitches;
#   machine   a voicemail greeting of about 3-15 s, then a beep (440-1400 Hz,
#             150-1000 ms) or only silence;
#   fax       CNG (1,100 Hz, 0.5 s on, 3 s off) or CED (2,100 Hz, 2.6-3.3 s);
#   sit       a special information tone (913.8/985.2, 1370.6/1428.5,
#             1776.7 Hz, 274 or 380 ms each) then a spoken announcement;
#   ringback, dialtone, busy
#             the North American network tones (440+480 Hz 2 s on 4 s off,
#             350+440 Hz, 480+620 Hz 0.5 s on 0.5 s off), which must never
#             pass for a beep.
#
# labels.tsv columns (times in ms from the start of the file, "-" when not
# applicable):
#   name class variant base greeting_end_ms speech_end_ms segments beep_hz
#   beep_start_ms beep_ms machine_end detail
# greeting_end_ms is where the person's first phrase or the machine's
# greeting ends (the speech is trimmed of its own leading and trailing
# silence before it is placed, so its length is known exactly); segments
# lists every speech segment as start-end,start-end; machine_end is beep or
# silence for machines.
set -euo pipefail

usage() {
  echo "usage: $0 OUTDIR [SEED]" >&2
  exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
seed=${2:-1}
[[ $seed =~ ^[0-9]+$ ]] || usage

for tool in espeak-ng:espeak-ng sox:sox soxi:sox awk:mawk; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "make_corpus.sh: ${tool%%:*} is missing: install the Debian package ${tool#*:} (scripts/setup.sh does)" >&2
    exit 3
  fi
done

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/make_corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT

# sox: repeatable (fixed seeds), no dither, errors only.
SOX=(sox -R -D -V1)
# Format options for a generated 8 kHz mono input (before -n).
GEN=(-r 8000 -c 1 -n)

RANDOM=$seed

# rnd LO HI: an integer in [LO, HI] into RN (in this shell: $RANDOM in a
# subshell would not advance the seeded sequence).
rnd() {
  RN=$(($1 + RANDOM % ($2 - $1 + 1)))
}

# pick ARRAY: one of its elements into PK.
pick() {
  local -n arr=$1
  PK=${arr[RANDOM % ${#arr[@]}]}
}

# ms FILE: its length in ms.
ms() {
  echo $(($(soxi -s "$1") / 8))
}

# rms FILE: its RMS amplitude (of full scale).
rms() {
  "${SOX[@]}" "$1" -n stat 2>&1 | awk '/^RMS +amplitude/ {print $3}'
}

# amp DB: the linear amplitude of DB (dBFS).
amp() {
  awk -v db="$1" 'BEGIN {printf "%.6f", 10 ^ (db / 20)}'
}

# silence FILE MS
silence() {
  "${SOX[@]}" "${GEN[@]}" -b 16 "$1" trim 0 "$(($2 * 8))s"
}

# tone FILE MS PEAK_DB HZ [HZ2]: one sine, or two of equal amplitude (each
# at PEAK_DB), with 5 ms ramps.
tone() {
  local file=$1 n=$(($2 * 8)) a
  if [ $# -eq 5 ]; then
    a=$(amp "$(awk -v db="$3" 'BEGIN {print db + 6.0206}')")
    "${SOX[@]}" "${GEN[@]}" -b 16 "$file" synth "${n}s" sine "$4" synth "${n}s" sine mix "$5" \
      vol "$a" fade 0.005 0 0.005
  else
    a=$(amp "$3")
    "${SOX[@]}" "${GEN[@]}" -b 16 "$file" synth "${n}s" sine "$4" vol "$a" fade 0.005 0 0.005
  fi
}

# speak FILE VOICE SPEED PITCH PEAK_DB TEXT: speech, band-limited to the
# telephone band, trimmed of its own leading and trailing silence (under
# -50 dBFS), its peak at PEAK_DB.
speak() {
  espeak-ng -v "$2" -s "$3" -p "$4" -w "$work/raw.wav" "$6"
  "${SOX[@]}" "$work/raw.wav" -b 16 -c 1 "$1" rate 8000 sinc 300-3400 \
    silence 1 0.02 0.3% reverse silence 1 0.02 0.3% reverse gain -n "$5"
}

# Noise beds, long enough for any sample; each sample takes a stretch at a
# random offset.
NOISE_MS=40000
"${SOX[@]}" "${GEN[@]}" -b 16 "$work/pink.wav" synth "$((NOISE_MS * 8))s" pinknoise vol 0.5
"${SOX[@]}" "${GEN[@]}" -b 16 "$work/white.wav" synth "$((NOISE_MS * 8))s" whitenoise vol 0.5
declare -A NOISE_RMS=([pink]=$(rms "$work/pink.wav") [white]=$(rms "$work/white.wav"))

# emit BASE CLASS PARTS_FILE LEVEL_RMS LABELS...: concatenates the parts
# listed (one file a line) into BASE_clean.wav, mixes noise SNR dB under
# LEVEL_RMS into BASE_noise.wav, and writes both label lines.
emit() {
  local base=$1 class=$2 parts=$3 level=$4
  shift 4
  local clean="$out/${base}_clean.wav" noisy="$out/${base}_noise.wav"
  local -a files
  mapfile -t files <"$parts"
  "${SOX[@]}" "${files[@]}" "$clean"
  local n kind snr gain off
  n=$(soxi -s "$clean")
  kind=pink
  [ $((RANDOM % 3)) -eq 0 ] && kind=white
  rnd 18 22
  snr=$RN
  rnd 0 $((NOISE_MS - n / 8 - 1))
  off=$((RN * 8))
  gain=$(awk -v s="$level" -v r="${NOISE_RMS[$kind]}" -v snr="$snr" \
    'BEGIN {printf "%.6f", s / r * 10 ^ (-snr / 20)}')
  "${SOX[@]}" -m -v 1 "$clean" -v "$gain" "|sox -R -D -V1 $work/$kind.wav -p trim ${off}s ${n}s" "$noisy"
  # The last label is the free-form detail, which the noise variant extends.
  local -a labels=("$@")
  local detail=${labels[-1]}
  unset 'labels[-1]'
  local fixed
  fixed=$(printf '%s\t' "${labels[@]}")
  printf '%s\t%s\tclean\t%s\t%s%s\n' "${base}_clean" "$class" "$base" "$fixed" "$detail" \
    >>"$out/labels.tsv"
  [ "$detail" = - ] && detail= || detail="$detail;"
  printf '%s\t%s\tnoise\t%s\t%s%s\n' "${base}_noise" "$class" "$base" "$fixed" \
    "${detail}noise=$kind;snr_db=$snr" >>"$out/labels.tsv"
}

# Part list helpers: part FILE, gap MS (a silence).
part() {
  echo "$1" >>"$work/parts"
}
gap() {
  local f="$work/sil_$1.wav"
  [ -f "$f" ] || silence "$f" "$1"
  part "$f"
}

VOICES=(en en-us en-gb en-gb-scotland en-gb-x-rp en-029 en-gb-x-gbclan en-us)
VARIANTS=(m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 klatt klatt2 klatt3)

# voice: a random voice+variant, speed and pitch into VOICE SPEED PITCH.
voice() {
  pick VOICES
  local v=$PK
  pick VARIANTS
  VOICE="$v+$PK"
  rnd 145 195
  SPEED=$RN
  rnd 30 75
  PITCH=$RN
}

printf 'name\tclass\tvariant\tbase\tgreeting_end_ms\tspeech_end_ms\tsegments\tbeep_hz\tbeep_start_ms\tbeep_ms\tmachine_end\tdetail\n' \
  >"$out/labels.tsv"

# --- People ---------------------------------------------------------------
FIRST=("Hello?" "Hello?" "Hello." "Hi, this is Ann." "Yes?" "Yeah?" "Hi."
  "Good morning, Smith residence." "Hello, John speaking." "Hello, who's calling?"
  "Speaking." "Hello, this is Maria." "Good afternoon." "Hey." "Yes, hello?"
  "Hi there." "Mike here." "Hello, Jones residence." "Hello, Tom here." "Hello?")
SECOND=("Who is this?" "Hello? Anyone there?" "Can I help you?" "Hello?"
  "Is anybody there?" "Hello, can you hear me?" "Who's calling please?")

HUMANS=48
for i in $(seq -w 1 "$HUMANS"); do
  : >"$work/parts"
  voice
  rnd 3 14
  peak=-$RN
  rnd 200 1000
  lead=$RN
  pick FIRST
  text="$PK"
  speak "$work/p1.wav" "$VOICE" "$SPEED" "$PITCH" "$peak" "$text"
  level=$(rms "$work/p1.wav")
  d1=$(ms "$work/p1.wav")
  gap "$lead"
  part "$work/p1.wav"
  end1=$((lead + d1))
  segments="$lead-$end1"
  last=$end1
  if [ $((RANDOM % 3)) -eq 0 ]; then
    rnd 1000 1500
    pause=$RN
    pick SECOND
    text="$text / $PK"
    speak "$work/p2.wav" "$VOICE" "$SPEED" "$PITCH" "$peak" "$PK"
    d2=$(ms "$work/p2.wav")
    gap "$pause"
    part "$work/p2.wav"
    segments="$segments,$((end1 + pause))-$((end1 + pause + d2))"
    last=$((end1 + pause + d2))
  fi
  rnd 2500 3000
  gap "$RN"
  emit "human_$i" human "$work/parts" "$level" \
    "$end1" "$last" "$segments" - - - - "voice=$VOICE;speed=$SPEED;pitch=$PITCH;text=$text"
done

# --- Answering machines and voicemail -----------------------------------
NAMES=("Ann" "Bob" "Carol" "David Miller" "Emma and James" "Frank" "Grace Lee"
  "Henry" "the Johnsons" "Dr. Patel" "Kate" "Luis Garcia")
COMPANIES=("Acme Plumbing" "Riverside Dental" "Northwind Traders" "Blue Sky Travel")
OPENERS=("Hi, you have reached the voicemail of %s."
  "Hello, you've reached %s."
  "Thank you for calling %c."
  "The person you are calling is not available."
  "Hi, this is %s."
  "You have reached five five five, one two three four."
  "Hey, it's %s.")
MIDDLES=("I'm sorry I can't take your call right now."
  "We are not available to take your call at the moment."
  "Our office hours are Monday to Friday, nine to five."
  "If this is urgent, please call my mobile."
  "I am away from my desk or on the other line."
  "Your call is important to us."
  "I'm out of the office until Monday."
  "For emergencies, please dial nine one one.")
CLOSERS=("Please leave a message after the tone."
  "Leave your name and number and I'll call you back."
  "At the tone, please record your message."
  "Please leave a message and we will get back to you as soon as possible."
  "Leave a message and I'll get back to you. Thanks, and have a great day."
  "Please leave your message after the beep. When you have finished recording, you may hang up.")
BEEPS=(440 800 850 1000 1000 1400)

MACHINES=48
for i in $(seq -w 1 "$MACHINES"); do
  : >"$work/parts"
  voice
  rnd 3 12
  peak=-$RN
  pick NAMES
  name=$PK
  pick COMPANIES
  company=$PK
  pick OPENERS
  text=${PK//%s/$name}
  text=${text//%c/$company}
  # About 3 to 15 s: up to three sentences between the opening and the
  # close.
  rnd 0 3
  for _ in $(seq 1 "$RN"); do
    pick MIDDLES
    text="$text $PK"
  done
  pick CLOSERS
  text="$text $PK"
  speak "$work/g.wav" "$VOICE" "$SPEED" "$PITCH" "$peak" "$text"
  level=$(rms "$work/g.wav")
  dur=$(ms "$work/g.wav")
  rnd 100 800
  lead=$RN
  gap "$lead"
  part "$work/g.wav"
  end=$((lead + dur))
  if [ $((RANDOM % 4)) -ne 0 ]; then
    pick BEEPS
    hz=$PK
    rnd 150 1000
    blen=$RN
    rnd 200 900
    pause=$RN
    rnd 6 18
    tone "$work/beep.wav" "$blen" "-$RN" "$hz"
    gap "$pause"
    part "$work/beep.wav"
    rnd 2000 3000
    gap "$RN"
    emit "machine_$i" machine "$work/parts" "$level" \
      "$end" "$end" "$lead-$end" "$hz" "$((end + pause))" "$blen" beep \
      "voice=$VOICE;speed=$SPEED;pitch=$PITCH;greeting_ms=$dur"
  else
    rnd 3500 4500
    gap "$RN"
    emit "machine_$i" machine "$work/parts" "$level" \
      "$end" "$end" "$lead-$end" - - - silence \
      "voice=$VOICE;speed=$SPEED;pitch=$PITCH;greeting_ms=$dur"
  fi
done

# --- Fax -----------------------------------------------------------------
for i in $(seq -w 1 10); do
  : >"$work/parts"
  rnd 200 1000
  lead=$RN
  gap "$lead"
  rnd 8 20
  peak=-$RN
  if [ $((10#$i % 2)) -eq 1 ]; then
    # A calling fax: CNG, 1,100 Hz 0.5 s on, 3 s off.
    tone "$work/cng.wav" 500 "$peak" 1100
    for _ in 1 2 3; do
      part "$work/cng.wav"
      gap 3000
    done
    detail="cng;tone_start_ms=$lead"
    level=$(rms "$work/cng.wav")
  else
    # An answering fax: CED, 2,100 Hz for 2.6 to 3.3 s, then silence.
    rnd 2600 3300
    tone "$work/ced.wav" "$RN" "$peak" 2100
    part "$work/ced.wav"
    gap 2000
    detail="ced;ced_ms=$RN;tone_start_ms=$lead"
    level=$(rms "$work/ced.wav")
  fi
  emit "fax_$i" fax "$work/parts" "$level" - - - - - - - "$detail"
done

# --- Special information tones ---------------------------------------------
ANNOUNCEMENTS=("We're sorry. The number you have dialed is not in service. Please check the number and try again."
  "The number you have called has been changed. Please consult your directory."
  "All circuits are busy now. Please try your call again later."
  "We're sorry, your call cannot be completed as dialed.")
SIT1=(913.8 985.2)
SIT2=(1370.6 1428.5)
SITLEN=(274 380)
for i in $(seq -w 1 8); do
  : >"$work/parts"
  rnd 200 1000
  lead=$RN
  gap "$lead"
  rnd 12 22
  peak=-$RN
  pick SIT1
  f1=$PK
  pick SITLEN
  l1=$PK
  pick SIT2
  f2=$PK
  pick SITLEN
  l2=$PK
  tone "$work/s1.wav" "$l1" "$peak" "$f1"
  tone "$work/s2.wav" "$l2" "$peak" "$f2"
  tone "$work/s3.wav" 380 "$peak" 1776.7
  part "$work/s1.wav"
  part "$work/s2.wav"
  part "$work/s3.wav"
  rnd 100 500
  gap "$RN"
  voice
  pick ANNOUNCEMENTS
  speak "$work/ann.wav" "$VOICE" "$SPEED" "$PITCH" -6 "$PK"
  part "$work/ann.wav"
  gap 1000
  level=$(rms "$work/ann.wav")
  emit "sit_$i" sit "$work/parts" "$level" - - - - - - - \
    "sit=$f1/$l1,$f2/$l2,1776.7/380;tone_start_ms=$lead"
done

# --- Network tones (early media) ------------------------------------------
for i in 1 2 3; do
  # Ringback: 440+480 Hz, 2 s on, 4 s off (each tone about -19 dBm0).
  : >"$work/parts"
  rnd 0 500
  gap $((RN + 20))
  rnd 19 25
  tone "$work/rb.wav" 2000 "-$RN" 440 480
  for _ in 1 2; do
    part "$work/rb.wav"
    gap 4000
  done
  emit "ringback_$i" ringback "$work/parts" "$(rms "$work/rb.wav")" - - - - - - - -

  # Dial tone: 350+440 Hz, continuous (about -13 dBm0).
  : >"$work/parts"
  rnd 13 19
  tone "$work/dt.wav" 8000 "-$RN" 350 440
  part "$work/dt.wav"
  emit "dialtone_$i" dialtone "$work/parts" "$(rms "$work/dt.wav")" - - - - - - - -

  # Busy: 480+620 Hz, 0.5 s on, 0.5 s off (about -24 dBm0).
  : >"$work/parts"
  rnd 22 28
  tone "$work/busy.wav" 500 "-$RN" 480 620
  for _ in $(seq 1 8); do
    part "$work/busy.wav"
    gap 500
  done
  emit "busy_$i" busy "$work/parts" "$(rms "$work/busy.wav")" - - - - - - - -
done

echo "make_corpus.sh: $(($(wc -l <"$out/labels.tsv") - 1)) files in $out" >&2
