"""The official `openai` Python client against an internlm2-rs server.

Run by serve/tests/openai_client.rs (which starts the server on a random-weight model with the
real InternLM2 vocabulary); by hand:

    python3 serve/tests/openai_client.py --base-url http://127.0.0.1:8000/v1 \
        --model internlm2-test --api-key sk-test

Every check raises on failure; the last line printed is "openai client: all checks passed".
"""

import argparse
import json

import jsonschema
import openai
from openai import OpenAI

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "New York"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast of a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The current time"},
    },
]


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def chat(client, model):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in three words."},
    ]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0
    )
    choice = reply.choices[0]
    check(reply.object == "chat.completion", "chat: object chat.completion")
    check(choice.message.role == "assistant", "chat: assistant message")
    check(isinstance(choice.message.content, str), "chat: text content")
    check(choice.finish_reason in ("stop", "length"), "chat: finish_reason stop or length")
    check(0 < reply.usage.completion_tokens <= 16, "chat: usage within max_tokens")
    check(reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens,
          "chat: usage adds up")

    # The same request streamed: the deltas add up to the same text (greedy).
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    text, finish, usage, roles = "", None, None, 0
    for chunk in stream:
        if chunk.object != "chat.completion.chunk":
            raise AssertionError(f"stream: chunk object {chunk.object}")
        if chunk.usage is not None:
            usage = chunk.usage
        for delta_choice in chunk.choices:
            if delta_choice.delta.role == "assistant":
                roles += 1
            text += delta_choice.delta.content or ""
            finish = delta_choice.finish_reason or finish
    check(roles == 1, "stream: role sent once")
    check(text == choice.message.content, "stream: same text as the non-streamed answer")
    check(finish == choice.finish_reason, "stream: same finish_reason")
    check(usage is not None and usage.completion_tokens == reply.usage.completion_tokens,
          "stream: usage chunk with include_usage")
    return messages


def forced_tool_call(client, model, messages):
    messages = messages[:1] + [{"role": "user", "content": "Weather in Tokyo for the next 3 days?"}]
    reply = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0.8, seed=7, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    check(choice.finish_reason == "tool_calls", "tool call: finish_reason tool_calls")
    calls = choice.message.tool_calls
    check(calls is not None and len(calls) == 1, "tool call: exactly one call (named tool_choice)")
    call = calls[0]
    check(call.type == "function" and call.id.startswith("call_"), "tool call: id and type")
    check(call.function.name == "get_weather", "tool call: the named function")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    check(True, f"tool call: arguments {call.function.arguments} validate against the schema")

    # tool_choice required, streamed: rebuild the calls from their deltas as the docs show.
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="required",
        temperature=0.8, seed=3, max_tokens=160, stream=True,
    )
    streamed, finish = {}, None
    for chunk in stream:
        for delta_choice in chunk.choices:
            for delta in delta_choice.delta.tool_calls or []:
                entry = streamed.setdefault(delta.index, {"name": None, "arguments": ""})
                if delta.function.name:
                    check(delta.id is not None, "stream: the first call delta has the id")
                    entry["name"] = delta.function.name
                entry["arguments"] += delta.function.arguments or ""
            finish = delta_choice.finish_reason or finish
    check(len(streamed) >= 1 and finish == "tool_calls", "stream: required tool calls")
    for entry in streamed.values():
        check(entry["name"] in ("get_weather", "get_time"), "stream: a declared function")
        arguments = json.loads(entry["arguments"])
        if entry["name"] == "get_weather":
            jsonschema.validate(arguments, WEATHER_SCHEMA)
        else:
            check(arguments == {}, "stream: no arguments for get_time")
    return messages, choice.message, call, reply.usage


def tool_result_round_trip(client, model, messages, assistant, call, usage):
    history = messages + [
        {
            "role": "assistant",
            "content": assistant.content,
            "tool_calls": [tc.model_dump() for tc in assistant.tool_calls],
        },
        {"role": "tool", "tool_call_id": call.id,
         "content": json.dumps({"forecast": ["sunny", "rain", "cloudy"]})},
    ]
    reply = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, max_tokens=12, temperature=0
    )
    check(reply.choices[0].message.role == "assistant", "round trip: the model answers the result")
    check(reply.usage.prompt_tokens > usage.prompt_tokens,
          "round trip: the call and its result are in the prompt")
    bad = history[:-1] + [dict(history[-1], tool_call_id="call_unknown")]
    try:
        client.chat.completions.create(model=model, messages=bad, max_tokens=4)
        raise AssertionError("a tool message answering no call was accepted")
    except openai.BadRequestError as error:
        check(error.status_code == 400, "round trip: an unknown tool_call_id is a 400")


def completions(client, model):
    reply = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    check(reply.object == "text_completion", "completions: object text_completion")
    check(isinstance(choice.text, str) and reply.usage.completion_tokens <= 8,
          "completions: text within max_tokens")
    check(len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) > 0,
          "completions: logprobs per token")
    tokens = client.completions.create(model=model, prompt=[1, 333, 444], max_tokens=4, n=2)
    check(len(tokens.choices) == 2 and tokens.usage.prompt_tokens == 3,
          "completions: token-id prompt with n=2")
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True)
        if chunk.choices
    )
    check(streamed == choice.text, "completions: streamed text equals the non-streamed one")


def models(client, model):
    listed = [m.id for m in client.models.list().data]
    check(listed == [model], f"models: {listed}")


def errors(client, base_url, model):
    try:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as error:
        check(error.status_code == 404, "errors: unknown model is a 404")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as error:
        check(error.status_code == 400 and error.body.get("param") == "temperature",
              "errors: a bad temperature is a 400 naming the parameter")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
        raise AssertionError("a context overflow was accepted")
    except openai.BadRequestError as error:
        check("1000000" in error.message, "errors: context overflow states the numbers")
    wrong_key = OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    try:
        wrong_key.models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError as error:
        check(error.status_code == 401, "errors: a wrong API key is a 401")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="none")
    args = parser.parse_args()
    print("openai", openai.__version__)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    models(client, args.model)
    messages = chat(client, args.model)
    messages, assistant, call, usage = forced_tool_call(client, args.model, messages)
    tool_result_round_trip(client, args.model, messages, assistant, call, usage)
    completions(client, args.model)
    errors(client, args.base_url, args.model)
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
