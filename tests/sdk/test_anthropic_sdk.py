"""The official Python `anthropic` SDK against the gateway, unchanged."""

import json

import anthropic
import pytest

TOKEN = "sk-ant-oat01-sdkuser.python"
API_KEY = "sk-ant-api03-sdkuser.python"


def script(marker, **directive):
    return f"{marker}\nFAKE-SCRIPT: {json.dumps(directive)}"


def test_create_with_auth_token(gateway, upstream):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    msg = client.messages.create(
        model="sonnet",
        max_tokens=200,
        messages=[{"role": "user", "content": "marker-sdk-create hi"}],
    )
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hello from fake-anthropic. You said: marker-sdk-create hi"
    assert msg.usage.output_tokens > 0
    seen = upstream.messages_containing("marker-sdk-create")
    assert seen and seen[0]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_create_with_api_key(gateway, upstream):
    client = anthropic.Anthropic(base_url=gateway, api_key=API_KEY, max_retries=0)
    msg = client.messages.create(
        model="haiku",
        max_tokens=200,
        system="marker-sdk-system be terse",
        messages=[{"role": "user", "content": [{"type": "text", "text": "marker-sdk-key"}]}],
    )
    assert msg.content[0].text.endswith("marker-sdk-key")
    seen = upstream.messages_containing("marker-sdk-key")
    assert seen[0]["headers"]["x-api-key"] == API_KEY
    assert "marker-sdk-system be terse" in json.dumps(seen[0]["body"]["system"])


def test_stream_helper_yields_text_and_final_message(gateway):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    with client.messages.stream(
        model="sonnet",
        max_tokens=200,
        messages=[{"role": "user", "content": script("marker-sdk-stream", reply="streamed words here", chunks=4)}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2
    assert "".join(pieces) == "streamed words here"
    assert final.content[0].text == "streamed words here"
    assert final.stop_reason == "end_turn"


def test_raw_stream_events(gateway):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    events = list(
        client.messages.create(
            model="sonnet",
            max_tokens=200,
            stream=True,
            messages=[{"role": "user", "content": "marker-sdk-raw"}],
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds


def test_async_client_streams(gateway):
    import asyncio

    async def run():
        client = anthropic.AsyncAnthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
        async with client.messages.stream(
            model="sonnet",
            max_tokens=100,
            messages=[{"role": "user", "content": "marker-sdk-async"}],
        ) as stream:
            return await stream.get_final_message()

    final = asyncio.run(run())
    assert final.content[0].text.endswith("marker-sdk-async")


def test_bad_token_raises_authentication_error(gateway):
    client = anthropic.Anthropic(
        base_url=gateway, auth_token="sk-ant-oat01-invalid.sdk", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(
            model="sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    assert "invalid.sdk" not in str(info.value)


def test_unrecognised_credential_raises_authentication_error(gateway):
    client = anthropic.Anthropic(base_url=gateway, api_key="not-a-claude-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(
            model="sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.parametrize(
    "status,error",
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.InternalServerError),
        (500, anthropic.InternalServerError),
    ],
)
def test_upstream_errors_raise_the_sdk_error_types(gateway, status, error):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    with pytest.raises(error) as info:
        client.messages.create(
            model="sonnet",
            max_tokens=10,
            messages=[{"role": "user", "content": script("marker-sdk-err", error={"status": status})}],
        )
    expected = {429: 429, 529: 529, 500: 502}[status]
    assert info.value.status_code == expected


def test_stream_error_before_output_keeps_its_status(gateway):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        with client.messages.stream(
            model="sonnet",
            max_tokens=10,
            messages=[{"role": "user", "content": script("marker-sdk-err-stream", error={"status": 429})}],
        ) as stream:
            stream.get_final_message()


def test_models_list(gateway):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "sonnet" in ids


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_a_client_tool_call_round_trips_and_streams_input_json(gateway, upstream):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    script = 'marker-sdk-tool\nFAKE-SCRIPT: {"tools":[{"name":"get_weather","input":{"city":"Paris"}}],"reply":"done"}'
    messages = [{"role": "user", "content": script}]
    with client.messages.stream(model="sonnet", max_tokens=200, tools=[WEATHER], messages=messages) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]},
    ]
    second = client.messages.create(model="sonnet", max_tokens=200, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "done"
    seen = json.dumps(upstream.messages_containing("marker-sdk-tool")[-1]["body"]["messages"])
    assert "sunny, 21C" in seen


def test_parse_with_a_pydantic_model_gets_structured_output(gateway, upstream):
    import pydantic

    class Answer(pydantic.BaseModel):
        answer: str
        n: int

    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    message = client.messages.parse(
        model="sonnet",
        max_tokens=256,
        output_format=Answer,
        messages=[{"role": "user", "content": script(
            "marker-sdk-parse",
            tools=[{"name": "StructuredOutput", "input": {"answer": "forty-two", "n": 3}}],
        )}],
    )
    assert message.parsed_output == Answer(answer="forty-two", n=3)
    tools = upstream.messages_containing("marker-sdk-parse")[0]["body"]["tools"]
    offered = next(t for t in tools if t["name"] == "StructuredOutput")
    assert set(offered["input_schema"]["properties"]) == {"answer", "n"}


TIME = {"name": "get_time", "description": "The time in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_parallel_tool_calls_round_trip(gateway, upstream):
    client = anthropic.Anthropic(base_url=gateway, auth_token=TOKEN, max_retries=0)
    prompt = script("marker-sdk-parallel", reply="done", tools=[
        {"name": "get_weather", "input": {"city": "Paris"}, "with": [{"name": "get_time", "input": {"city": "Oslo"}}]}])
    messages = [{"role": "user", "content": prompt}]
    first = client.messages.create(model="sonnet", max_tokens=256, tools=[WEATHER, TIME], messages=messages)
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": "noon"}]},
    ]
    second = client.messages.create(model="sonnet", max_tokens=256, tools=[WEATHER, TIME], messages=messages)
    assert second.content[0].text == "done"
    last = upstream.messages_containing("marker-sdk-parallel")[-1]["body"]["messages"]
    results = [b for m in last if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in results[-2:]] == [calls[0].id, calls[1].id]


def test_a_continuation_after_a_gateway_restart(restartable, upstream):
    url = restartable.start()
    client = anthropic.Anthropic(base_url=url, auth_token=TOKEN, max_retries=0)
    prompt = script("marker-sdk-restart", reply="done", tools=[{"name": "get_weather", "input": {"city": "Paris"}}])
    messages = [{"role": "user", "content": prompt}]
    first = client.messages.create(model="sonnet", max_tokens=256, tools=[WEATHER], messages=messages,
                                   extra_body={"session_id": "sdk-restart"})
    call = next(b for b in first.content if b.type == "tool_use")
    # A new gateway process on the same data: nothing of the first is in memory.
    url = restartable.start()
    client = anthropic.Anthropic(base_url=url, auth_token=TOKEN, max_retries=0)
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "foggy"}]},
    ]
    second = client.messages.create(model="sonnet", max_tokens=256, tools=[WEATHER], messages=messages,
                                    extra_body={"session_id": "sdk-restart"})
    assert second.content[0].text == "done"
    assert "foggy" in json.dumps(upstream.messages_containing("marker-sdk-restart")[-1]["body"]["messages"])


def test_langchain_bind_tools_gets_tool_calls_and_goes_on_with_the_result(gateway, upstream):
    from langchain_anthropic import ChatAnthropic
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = ChatAnthropic(model="sonnet", base_url=gateway, api_key=API_KEY, max_retries=0, max_tokens=256)
    bound = llm.bind_tools([get_weather])
    prompt = HumanMessage(script("marker-lc-tools", reply="done",
                                 tools=[{"name": "get_weather", "input": {"city": "Paris"}}]))
    ai = bound.invoke([prompt])
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"city": "Paris"})]
    final = bound.invoke([prompt, ai, ToolMessage("sunny", tool_call_id=ai.tool_calls[0]["id"])])
    assert final.content == "done" or final.content[0]["text"] == "done"
    assert "sunny" in json.dumps(upstream.messages_containing("marker-lc-tools")[-1]["body"]["messages"])
