"""The official Python `openai` SDK against the gateway's /v1/chat/completions, unchanged."""

import json
import uuid

import openai
import pytest

TOKEN = "sk-ant-oat01-sdkuser.openai"


def client(gateway, token=TOKEN):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=token, max_retries=0)


def test_create_returns_a_chat_completion(gateway, upstream):
    completion = client(gateway).chat.completions.create(
        model="sonnet",
        messages=[
            {"role": "system", "content": "marker-oai-system be brief"},
            {"role": "user", "content": "marker-oai-create hello"},
        ],
        temperature=0.3,
    )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from fake-anthropic. You said: marker-oai-create hello"
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    seen = upstream.messages_containing("marker-oai-create")
    assert seen[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "marker-oai-system be brief" in json.dumps(seen[0]["body"]["system"])


def test_stream_yields_chunks_usage_and_done(gateway):
    stream = client(gateway).chat.completions.create(
        model="sonnet",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "marker-oai-stream"}]}],
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-anthropic. You said: marker-oai-stream"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_bad_token_raises_authentication_error(gateway):
    with pytest.raises(openai.AuthenticationError) as info:
        client(gateway, "sk-ant-oat01-invalid.openai").chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    assert "invalid.openai" not in str(info.value)


def test_unsupported_features_are_clear_400s(gateway):
    c = client(gateway)
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        c.chat.completions.create(model="sonnet", n=2, messages=[{"role": "user", "content": "hi"}])
    tool = {"type": "function", "function": {"name": "no spaces", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.function\.name"):
        c.chat.completions.create(model="sonnet", tools=[tool], messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="image_url"):
        c.chat.completions.create(
            model="sonnet",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        )


def test_two_turn_session(gateway, upstream):
    c = client(gateway)
    session = f"oai-{uuid.uuid4()}"
    first = c.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "marker-oai-turn1 my name is Zed"}],
        extra_headers={"X-Session-ID": session},
    )
    assert first.model_extra["session_id"] == session
    c.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "marker-oai-turn2 what is my name"}],
        extra_headers={"X-Session-ID": session},
    )
    last = upstream.messages_containing("marker-oai-turn2")[-1]
    roles = [m["role"] for m in last["body"]["messages"] if m["role"] in ("user", "assistant")]
    assert roles == ["user", "assistant", "user"]
    assert "marker-oai-turn1" in json.dumps(last["body"]["messages"][0])


def test_models_list_and_retrieve(gateway):
    c = client(gateway)
    ids = [m.id for m in c.models.list()]
    assert "sonnet" in ids
    assert c.models.retrieve("sonnet").id == "sonnet"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def weather_script(marker):
    return marker + '\nFAKE-SCRIPT: {"tools":[{"name":"get_weather","input":{"city":"Paris"}}],"reply":"done"}'


def test_a_client_tool_call_and_its_result_round_trip(gateway, upstream):
    c = client(gateway)
    messages = [{"role": "user", "content": weather_script("marker-oai-tool")}]
    first = c.chat.completions.create(model="sonnet", tools=[WEATHER], messages=messages)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = c.chat.completions.create(model="sonnet", tools=[WEATHER], messages=messages)
    assert second.choices[0].message.content == "done"
    assert second.choices[0].finish_reason == "stop"
    seen = json.dumps(upstream.messages_containing("marker-oai-tool")[-1]["body"]["messages"])
    assert "sunny, 21C" in seen


def test_a_streamed_client_tool_call_arrives_as_tool_call_deltas(gateway):
    stream = client(gateway).chat.completions.create(
        model="sonnet",
        stream=True,
        tools=[WEATHER],
        messages=[{"role": "user", "content": weather_script("marker-oai-tool-stream")}],
    )
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_parse_with_a_pydantic_model_gets_structured_output(gateway, upstream):
    import pydantic

    class Answer(pydantic.BaseModel):
        answer: str
        n: int

    script = {"tools": [{"name": "StructuredOutput", "input": {"answer": "forty-two", "n": 3}}]}
    completion = client(gateway).chat.completions.parse(
        model="sonnet",
        response_format=Answer,
        messages=[{"role": "user", "content": f"marker-oai-parse\nFAKE-SCRIPT: {json.dumps(script)}"}],
    )
    assert completion.choices[0].message.parsed == Answer(answer="forty-two", n=3)
    tools = upstream.messages_containing("marker-oai-parse")[0]["body"]["tools"]
    offered = next(t for t in tools if t["name"] == "StructuredOutput")
    assert set(offered["input_schema"]["properties"]) == {"answer", "n"}


TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_parallel_tool_calls_come_together_and_their_results_go_back_together(gateway, upstream):
    c = client(gateway)
    script = {"tools": [{"name": "get_weather", "input": {"city": "Paris"},
                         "with": [{"name": "get_time", "input": {"city": "Oslo"}}]}], "reply": "done"}
    messages = [{"role": "user", "content": f"marker-oai-parallel\nFAKE-SCRIPT: {json.dumps(script)}"}]
    first = c.chat.completions.create(model="sonnet", tools=[WEATHER, TIME], messages=messages)
    calls = first.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
    ]
    second = c.chat.completions.create(model="sonnet", tools=[WEATHER, TIME], messages=messages)
    assert second.choices[0].message.content == "done"
    last = upstream.messages_containing("marker-oai-parallel")[-1]["body"]["messages"]
    results = [b for m in last if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in results[-2:]] == [calls[0].id, calls[1].id]

    # parallel_tool_calls=false reaches the model as Anthropic's disable_parallel_tool_use.
    c.chat.completions.create(
        model="sonnet", tools=[WEATHER], parallel_tool_calls=False,
        messages=[{"role": "user", "content": weather_script("marker-oai-serial")}],
    )
    choice = upstream.messages_containing("marker-oai-serial")[0]["body"]["tool_choice"]
    assert choice == {"type": "auto", "disable_parallel_tool_use": True}
