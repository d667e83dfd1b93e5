#!/usr/bin/env python3
"""Echo voice bot for dialerd's agent tests, speaking Twilio Media Streams.

A Pipecat pipeline served by FastAPI + uvicorn, with no STT/LLM/TTS and no
cloud service: each caller gets

    transport.input() -> AudioEcho -> transport.output()

where the transport is Pipecat's own FastAPIWebsocketTransport with its
TwilioFrameSerializer, built the way a production Twilio bot builds it (the
`connected` and `start` messages are read with Pipecat's
`parse_telephony_websocket`, which yields streamSid, callSid and the
customParameters). dialerd plays Twilio's part: it connects to ws://HOST:PORT/ws.

Usage (in the ~/.cache/dialerd-agent virtualenv, see scripts/agent-tools.txt):

    python tests/agent/pipecat_bot.py --host 127.0.0.1 --port 0 [--end-after SECS]

stdout (line-buffered, one record a line; everything else goes to stderr):

    listening PORT                      once the socket is bound (PORT is the
                                        real port, also with --port 0)
    {"event": "start", ...}             per call, when its `start` arrives: the
                                        streamSid, callSid, accountSid, tracks,
                                        mediaFormat and customParameters
    {"event": "dtmf", "digit": "5", ...} per DTMF digit received
    {"event": "end", "reason": ..., ...} per call, when the bot has finished it
                                        ("end-after": the bot hung up;
                                        "client-disconnected": the peer closed)

--end-after SECS: that long after the client connected the bot ends the call
the Pipecat way (an EndFrame queued on the pipeline worker); the output
transport then closes the WebSocket (close code 1000), which is what the client
sees. auto_hang_up is off: there is no Twilio account to call the REST API of.
Before closing, Pipecat's output transport sends `audio_out_end_silence_secs`
(default 2) of silence as a single media message (16000 bytes of mu-law),
unpaced, then the close follows within a few tens of ms; --end-silence-secs 0
turns that off.

What Pipecat sends back (1.14.0, defaults): only
{"event":"media","streamSid":..,"media":{"payload":..}}, 320 bytes (40 ms) per
message every 40 ms (--out-10ms-chunks 2 gives 160 bytes every 20 ms); no
`mark` ever (the serializer has none) and `clear` only on an InterruptionFrame,
which this pipeline (no VAD, no interruptions) never makes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from loguru import logger

# Pipecat's imports are slow (numpy, numba, onnxruntime); they all happen here,
# before the socket is bound, so "listening" means ready.
import uvicorn
from fastapi import FastAPI, WebSocket

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner


def emit(record: dict | str) -> None:
    """Write one line to stdout and flush it at once."""
    line = record if isinstance(record, str) else json.dumps(record, sort_keys=True)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class AudioEcho(FrameProcessor):
    """Turns every received audio frame into the same audio to play back."""

    def __init__(self, call_sid: str, **kwargs):
        super().__init__(**kwargs)
        self._call_sid = call_sid
        self.frames_in = 0
        self.bytes_in = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            self.frames_in += 1
            self.bytes_in += len(frame.audio)
            if self.frames_in == 1:
                logger.info(
                    f"{self._call_sid}: first audio frame: {len(frame.audio)} bytes PCM16 "
                    f"@ {frame.sample_rate} Hz, {frame.num_channels} ch"
                )
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=frame.audio,
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                ),
                direction,
            )
            return

        if isinstance(frame, InputDTMFFrame):
            digit = frame.button.value
            logger.info(f"{self._call_sid}: DTMF {digit}")
            emit({"event": "dtmf", "callSid": self._call_sid, "digit": digit})

        await self.push_frame(frame, direction)


def build_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket):
        await websocket.accept()
        accepted = time.monotonic()

        # Reads `connected` and `start`, exactly as Pipecat's runner does for
        # a Twilio call.
        try:
            transport_type, call_data = await parse_telephony_websocket(websocket)
        except Exception as e:  # closed before the handshake, bad JSON, ...
            logger.warning(f"telephony handshake failed: {e}")
            await websocket.close(code=1002)
            return
        if transport_type != "twilio":
            logger.warning(f"not a Twilio Media Stream (detected {transport_type!r})")
            await websocket.close(code=1002)
            return

        stream_sid = call_data["stream_id"]
        call_sid = call_data["call_id"]
        custom = dict(call_data.body or {})
        logger.info(f"start: streamSid={stream_sid} callSid={call_sid} customParameters={custom}")
        emit({"event": "start", "streamSid": stream_sid, "callSid": call_sid,
              "customParameters": custom})

        if args.hangup_api:
            # Pipecat's own auto hang-up: at the end of the call it POSTs the
            # Twilio REST call update (Status=completed) to base_url, here
            # dialerd's http.agent_hangup_api route. dialerd does not check
            # the account or the token; they only have to be present.
            serializer = TwilioFrameSerializer(
                stream_sid=stream_sid,
                call_sid=call_sid,
                account_sid="AC" + "0" * 32,
                auth_token="dialerd-test-token",
                base_url=args.hangup_api,
                params=TwilioFrameSerializer.InputParams(auto_hang_up=True),
            )
        else:
            serializer = TwilioFrameSerializer(
                stream_sid=stream_sid,
                call_sid=call_sid,
                params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
            )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                audio_out_10ms_chunks=args.out_10ms_chunks,
                audio_out_end_silence_secs=args.end_silence_secs,
                serializer=serializer,
            ),
        )
        echo = AudioEcho(call_sid)
        pipeline = Pipeline([transport.input(), echo, transport.output()])
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=args.sample_rate,
                audio_out_sample_rate=args.sample_rate,
            ),
            idle_timeout_secs=None,  # no VAD here, so nothing would count as activity
        )

        end_reason = {"reason": "client-disconnected"}
        end_timer: asyncio.Task | None = None

        async def end_later(secs: float):
            await asyncio.sleep(max(0.0, secs - (time.monotonic() - accepted)))
            end_reason["reason"] = "end-after"
            logger.info(f"{call_sid}: --end-after {secs}s reached, ending the call")
            await worker.queue_frame(EndFrame(reason="end-after"))

        @transport.event_handler("on_client_connected")
        async def on_client_connected(transport, ws):
            nonlocal end_timer
            logger.info(f"{call_sid}: client connected")
            if args.end_after is not None:
                end_timer = asyncio.create_task(end_later(args.end_after))

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, ws):
            logger.info(f"{call_sid}: client disconnected")
            await worker.cancel(reason="client-disconnected")

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        try:
            await runner.run()
        finally:
            if end_timer is not None and not end_timer.done():
                end_timer.cancel()
            secs = round(time.monotonic() - accepted, 3)
            logger.info(f"end: callSid={call_sid} reason={end_reason['reason']} after {secs}s, "
                        f"{echo.frames_in} audio frames in")
            emit({"event": "end", "streamSid": stream_sid, "callSid": call_sid,
                  "reason": end_reason["reason"], "seconds": secs,
                  "audioFramesIn": echo.frames_in})

    return app


async def serve(args: argparse.Namespace) -> None:
    config = uvicorn.Config(
        build_app(args),
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    serve_task = asyncio.create_task(server.serve())
    while not server.started:
        if serve_task.done():
            await serve_task  # re-raise the bind error
            raise SystemExit(1)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    logger.info(f"listening on ws://{args.host}:{port}/ws")
    emit(f"listening {port}")
    await serve_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    ap.add_argument("--end-after", type=float, default=None, metavar="SECS",
                    help="end each call this long after the client connected")
    ap.add_argument("--hangup-api", default=None, metavar="URL",
                    help="auto_hang_up on, with this REST base URL (dialerd's status server)")
    ap.add_argument("--sample-rate", type=int, default=8000,
                    help="pipeline audio rate in Hz (Pipecat's Twilio examples use 8000; "
                         "Pipecat's own default is 16000 in / 24000 out)")
    ap.add_argument("--out-10ms-chunks", type=int, default=4,
                    help="output packetization in 10 ms units (Pipecat's default 4 = 40 ms)")
    ap.add_argument("--end-silence-secs", type=int, default=2,
                    help="silence Pipecat sends on EndFrame, before closing; it goes out as "
                         "ONE media message (2 s = 16000 bytes). Pipecat's default is 2")
    ap.add_argument("--log-level", default="INFO", help="loguru level for stderr")
    args = ap.parse_args()

    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
