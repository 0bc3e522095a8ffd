"""Every OpenAI request field is honoured or refused by name: driven by the official `openai` client against a
real uvicorn serving the tiny llama. Log-probabilities are checked against the model's own forward pass.

Run: pytest -m "" -q tests/neural_chat_app/test_server_openai_fields.py
"""

from __future__ import annotations

import json

import pytest
import torch

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "hello"}]


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _reference_logprobs(backend, ids: list[int]) -> torch.Tensor:
    """log P(ids[i] | ids[:i]) for i >= 1, straight from the model: what the server's numbers must equal."""
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize(("extra", "param"), [
    ({"frobnicate": 1}, "frobnicate"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"min_p": 0.1}, "min_p"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
    ({"tool_choice": "required"}, "tool_choice"),  # without tools
])
def test_unsupported_or_inconsistent_fields_are_refused_by_name(make_server, extra, param):
    server = make_server()
    with pytest.raises(openai.BadRequestError) as err:
        _client(server).chat.completions.create(model="default", messages=HELLO, max_tokens=2, extra_body=extra)
    assert err.value.body["param"] == param, err.value.body
    assert param in err.value.body["message"]


def test_completions_refuse_suffix_and_unknown_fields(make_server):
    server = make_server()
    for extra, param in (({"suffix": "end"}, "suffix"), ({"guided_json": {}}, "guided_json")):
        with pytest.raises(openai.BadRequestError) as err:
            _client(server).completions.create(model="default", prompt="a", max_tokens=2, extra_body=extra)
        assert err.value.body["param"] == param


def test_n_choices_streamed_and_not(make_server):
    server = make_server()
    client = _client(server)
    reply = client.chat.completions.create(model="default", messages=HELLO, max_tokens=4, n=3, temperature=1.0,
                                           seed=1)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # seeds 1, 2, 3: different samples
    assert 3 <= reply.usage.completion_tokens <= 12
    texts, finishes = {0: "", 1: ""}, {}
    for chunk in client.chat.completions.create(model="default", messages=HELLO, max_tokens=4, n=2, stream=True,
                                                temperature=1.0, seed=1):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert set(finishes) == {0, 1}
    assert texts[0] == reply.choices[0].message.content  # the same seed gives the same first sample


def test_max_completion_tokens_and_seed(make_server):
    server = make_server()
    client = _client(server)
    reply = client.chat.completions.create(model="default", messages=HELLO, max_completion_tokens=3, temperature=1.0,
                                           seed=7)
    assert reply.usage.completion_tokens <= 3
    again = client.chat.completions.create(model="default", messages=HELLO, max_completion_tokens=3,
                                           temperature=1.0, seed=7)
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_chat_logprobs_are_the_models_own(make_server, tiny_backend):
    server = make_server()
    reply = _client(server).chat.completions.create(model="default", messages=HELLO, max_tokens=6, temperature=0,
                                                    logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert content and len(content) <= reply.usage.completion_tokens
    from neural_chat_app.prompts import prompt_ids

    prompt = prompt_ids(tiny_backend.tokenizer, HELLO, "chat")
    reply_ids = tiny_backend.tokenizer(reply.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    expected = _reference_logprobs(tiny_backend, prompt + reply_ids)[len(prompt) - 1:]
    got = torch.tensor([t.logprob for t in content])
    n = min(len(got), len(expected))
    assert n > 0
    assert torch.allclose(got[:n], expected[:n], atol=2e-3), (got, expected)
    for t in content:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 3
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert bytes(t.bytes).decode() == t.token


def test_completion_echo_scores_token_ids_like_lm_eval_sends_them(make_server, tiny_backend):
    server = make_server()
    tokenizer = tiny_backend.tokenizer
    ids = tokenizer("The capital of France is Paris.")["input_ids"]
    reply = _client(server).completions.create(model="default", prompt=[ids, ids[:4]], max_tokens=0, echo=True,
                                               logprobs=2, temperature=0)
    assert len(reply.choices) == 2
    first = reply.choices[0].logprobs
    assert first.token_logprobs[0] is None and first.top_logprobs[0] is None
    assert len(first.token_logprobs) == len(ids)
    expected = _reference_logprobs(tiny_backend, ids)
    assert torch.allclose(torch.tensor(first.token_logprobs[1:]), expected, atol=2e-3)
    assert reply.choices[0].text == tokenizer.decode(ids, skip_special_tokens=True)
    assert first.text_offset == sorted(first.text_offset)
    assert len(reply.choices[1].logprobs.tokens) == 4
    assert reply.usage.completion_tokens == 0


def test_completion_echo_with_one_generated_token(make_server, tiny_backend):
    """What lm-evaluation-harness's loglikelihood sends: echo, max_tokens=1, logprobs=1; the prompt's positions
    come first, then the generated token."""
    server = make_server()
    ids = tiny_backend.tokenizer("I love hiking")["input_ids"]
    reply = _client(server).completions.create(model="default", prompt=ids, max_tokens=1, echo=True, logprobs=1,
                                               temperature=0)
    lp = reply.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    last_top = lp.top_logprobs[-1]
    assert lp.token_logprobs[-1] == pytest.approx(max(last_top.values()))  # greedy


def test_several_prompts_and_best_of(make_server):
    server = make_server()
    client = _client(server)
    reply = client.completions.create(model="default", prompt=["one", "two"], n=2, max_tokens=3, temperature=1.0,
                                      seed=3)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    best = client.completions.create(model="default", prompt="one", n=1, best_of=3, max_tokens=3, temperature=1.0,
                                     seed=3, logprobs=0)
    assert len(best.choices) == 1
    totals = []
    for seed in (3, 4, 5):  # the three generations best_of ran, one by one
        one = client.completions.create(model="default", prompt="one", max_tokens=3, temperature=1.0, seed=seed,
                                        logprobs=0)
        totals.append(sum(one.choices[0].logprobs.token_logprobs))
    assert sum(best.choices[0].logprobs.token_logprobs) == pytest.approx(max(totals), abs=1e-4)


def test_penalties_and_logit_bias_change_the_reply(make_server, tiny_backend):
    server = make_server()
    client = _client(server)

    def ids(**extra):
        extra = {"max_tokens": 24, **extra}
        reply = client.chat.completions.create(model="default", messages=HELLO, temperature=0, logprobs=True,
                                               **extra)
        return reply.choices[0].logprobs.content, reply.choices[0].message.content

    plain, plain_text = ids()
    tokens = [t.token for t in plain]
    repeated = len(tokens) - len(set(tokens))
    assert repeated > 0, "the random tiny model repeats itself, which the penalties must reduce"
    penalized, _ = ids(frequency_penalty=2.0, presence_penalty=2.0)
    assert len(penalized) - len({t.token for t in penalized}) < repeated
    first = tiny_backend.tokenizer(plain_text, add_special_tokens=False)["input_ids"][0]
    _, banned_text = ids(logit_bias={str(first): -100})
    banned = tiny_backend.tokenizer(banned_text, add_special_tokens=False)["input_ids"]
    assert first not in banned
    forced = tiny_backend.tokenizer.convert_tokens_to_ids("Ġcapital")
    _, forced_text = ids(logit_bias={str(forced): 100}, max_tokens=3)
    assert forced_text == " capital" * 3


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_a_named_tool_choice_returns_a_valid_call(make_server):
    """Decoding is constrained to the function's parameters: even the random tiny model makes a valid call."""
    server = make_server()
    reply = _client(server).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=60, temperature=0,
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


def test_required_tool_choice_streams_tool_calls(make_server):
    server = make_server()
    calls, finish = [], None
    for chunk in _client(server).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What time is it?"}], max_tokens=60, temperature=0,
        tools=[TIME], tool_choice="required", stream=True,
    ):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert calls and all(c.function.name == "get_time" for c in calls)
    assert all(json.loads(c.function.arguments) == {} for c in calls)


def test_a_conversation_with_tool_results_is_answered(make_server):
    """An assistant tool call and the tool's result, sent back as OpenAI agents do, are accepted and rendered."""
    server = make_server()
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    reply = _client(server).chat.completions.create(model="default", messages=messages, tools=[WEATHER],
                                                    tool_choice="none", max_tokens=4, temperature=0)
    assert reply.choices[0].message.content is not None and reply.choices[0].finish_reason in ("stop", "length")
    logged = server.state.chatlog.messages(reply.conversation_id)  # the call and its result are kept
    assert logged[1]["metadata"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert logged[-1]["metadata"]["tool_results"] == [{"tool_call_id": "call_1", "content": '{"temperature": 21}'}]


def test_the_openvino_backend_refuses_logprobs_by_name():
    from types import SimpleNamespace

    from neural_chat_app.config import GenerationConfig
    from neural_chat_app.server.errors import APIError
    from neural_chat_app.server.generation_routes import _check_features

    backend = SimpleNamespace(kind="openvino", model_id="m", features=frozenset())
    with pytest.raises(APIError) as err:
        _check_features(backend, GenerationConfig(logprobs=2), echo=False)
    assert err.value.param == "logprobs" and err.value.status == 400
