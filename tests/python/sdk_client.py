"""Drives an OpenAI-compatible server with the official `openai` Python SDK, unmodified,
for tests/openai_sdk.rs: one call per run, chosen by the first argument, and one JSON
object on stdout saying what the SDK returned and every HTTP response it got on the way
(status, seconds since the start, Retry-After), so the Rust test can check the stream's
content against its usage and see the SDK retry a 429 after the server's Retry-After.

The SDK's own HTTP client class is used (`openai.DefaultHttpxClient`, given through the
documented `http_client` parameter) with an event hook that only records responses, so
retries, streaming and parsing are the SDK's. (The SDK's HTTP library is named `httpx`
in older releases and `httpx2` in newer ones; going through the SDK's class works with
both.)

Exit status 0 when the call succeeded; 1 with {"error": ...} on stdout when it raised.
"""

import argparse
import json
import sys
import time

import openai


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "call",
        choices=["models", "chat-stream", "chat", "completions", "completions-stream"],
    )
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="default: the first of models.list()")
    p.add_argument("--prompt", default="Why does the Dujiangyan weir split the river?")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-retries", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()

    start = time.monotonic()
    responses = []

    def record(response) -> None:
        responses.append(
            {
                "method": response.request.method,
                "path": response.request.url.path,
                "status": response.status_code,
                "at": round(time.monotonic() - start, 4),
                "retry_after": response.headers.get("retry-after"),
            }
        )

    client = openai.OpenAI(
        base_url=args.base_url,
        api_key="not-needed",
        max_retries=args.max_retries,
        timeout=args.timeout,
        http_client=openai.DefaultHttpxClient(event_hooks={"response": [record]}),
    )
    out = {"sdk_version": openai.__version__}
    try:
        model = args.model
        if args.call == "models" or model is None:
            models = client.models.list()
            out["models"] = [m.model_dump() for m in models.data]
            model = model or models.data[0].id
            if args.call == "models":
                out["retrieved"] = client.models.retrieve(model).model_dump()
        if args.call == "chat-stream":
            out.update(chat_stream(client, model, args))
        elif args.call == "chat":
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": args.prompt}],
                max_tokens=args.max_tokens,
            )
            out["content"] = r.choices[0].message.content
            out["finish_reason"] = r.choices[0].finish_reason
            out["usage"] = r.usage.model_dump() if r.usage else None
            out["object"] = r.object
        elif args.call == "completions":
            r = client.completions.create(
                model=model, prompt=args.prompt, max_tokens=args.max_tokens
            )
            out["text"] = r.choices[0].text
            out["finish_reason"] = r.choices[0].finish_reason
            out["usage"] = r.usage.model_dump() if r.usage else None
            out["object"] = r.object
        elif args.call == "completions-stream":
            out.update(completions_stream(client, model, args))
    except Exception as e:  # the test reads what went wrong from stdout
        out["error"] = type(e).__name__
        out["message"] = str(e)
        out["responses"] = responses
        out["elapsed"] = round(time.monotonic() - start, 4)
        print(json.dumps(out))
        return 1
    out["responses"] = responses
    out["elapsed"] = round(time.monotonic() - start, 4)
    print(json.dumps(out))
    return 0


def read_stream(stream, content_of) -> dict:
    """What a streamed answer carried: content chunks, text, finish reason, usage."""
    content_chunks, text, finish, usage, objects = 0, "", None, None, set()
    for chunk in stream:
        objects.add(chunk.object)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            content = content_of(choice)
            if content:
                content_chunks += 1
                text += content
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return {
        "content_chunks": content_chunks,
        "text": text,
        "finish_reason": finish,
        "usage": usage,
        "objects": sorted(objects),
    }


def chat_stream(client: openai.OpenAI, model: str, args) -> dict:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    return read_stream(stream, lambda choice: choice.delta.content)


def completions_stream(client: openai.OpenAI, model: str, args) -> dict:
    stream = client.completions.create(
        model=model,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    return read_stream(stream, lambda choice: choice.text)


if __name__ == "__main__":
    sys.exit(main())
