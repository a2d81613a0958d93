"""`pagedserve generate` and `pagedserve chat`: a small client of a running gateway."""

from __future__ import annotations

import argparse
import sys

import grpc

from pagedserve.v1 import generation_pb2 as pb
from pagedserve.v1 import generation_pb2_grpc as pb_grpc


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="gateway address")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def _sampling(args) -> pb.SamplingParams:
    params = pb.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    if args.top_p is not None:
        params.top_p = args.top_p
    if args.seed is not None:
        params.seed = args.seed
    return params


def _stream(stub, request: pb.GenerateRequest) -> str:
    text = []
    for message in stub.GenerateStream(request):
        print(message.text, end="", flush=True)
        text.append(message.text)
    print()
    return "".join(text)


def generate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pagedserve generate", description="Stream one completion."
    )
    parser.add_argument("prompt")
    parser.add_argument(
        "--chat", action="store_true", help="send the prompt as a user chat message"
    )
    _common_flags(parser)
    args = parser.parse_args(argv)
    request = pb.GenerateRequest(sampling=_sampling(args))
    if args.chat:
        request.messages.messages.add(role="user", content=args.prompt)
    else:
        request.prompt = args.prompt
    with grpc.insecure_channel(args.address) as channel:
        try:
            _stream(pb_grpc.TextGenerationStub(channel), request)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def chat_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pagedserve chat", description="Chat with the served model."
    )
    parser.add_argument("--system", default=None, help="system message")
    _common_flags(parser)
    args = parser.parse_args(argv)
    history: list[pb.ChatMessage] = []
    if args.system:
        history.append(pb.ChatMessage(role="system", content=args.system))
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        while True:
            try:
                line = input("> ")
            except EOFError:
                return 0
            if not line.strip():
                continue
            history.append(pb.ChatMessage(role="user", content=line))
            request = pb.GenerateRequest(sampling=_sampling(args))
            request.messages.messages.extend(history)
            try:
                reply = _stream(stub, request)
            except grpc.RpcError as error:
                print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
                history.pop()
                continue
            history.append(pb.ChatMessage(role="assistant", content=reply))
