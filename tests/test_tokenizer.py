# ruff: noqa: E501  (the template mirrors the long lines of real HF chat templates)
"""asearcher._core.Tokenizer against transformers' AutoTokenizer: encode/decode on many strings,
and chat templates (the tiny ChatML one, and a Qwen-style one with tools, a default system
prompt, enable_thinking and Python string methods) rendered identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asearcher._core import Tokenizer
from asearcher.exceptions import ConfigError, ModelError
from tiny_models import write_tokenizer

QWEN_STYLE_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content.strip() + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" + (tool | tojson) }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{%- continue %}{%- endif %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'user' and content.startswith('<tool_response>') and content.endswith('</tool_response>') %}
        {{- '<|im_start|>tool\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- if '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- if loop.index0 > ns.last_user %}
                {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip() + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}
            {%- else %}
                {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
            {%- for tc in message.tool_calls or [] %}
                {{- '\\n<tool_call>\\n{"name": "' + tc.function.name + '", "arguments": ' + (tc.function.arguments | tojson) + '}\\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + content.upper() if message.get('shout') else '<|im_start|>' + message.role + '\\n' + content }}{{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the wiki — returns passages ünïcode",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                "required": ["query"],
            },
        },
    }
]

CONVERSATIONS = [
    [{"role": "user", "content": "Where was the founder born?"}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
        {"role": "user", "content": "Search please", "shout": True},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "search", "arguments": {"query": "founder", "k": 3}}}
            ],
        },
        {"role": "user", "content": "<tool_response>\nfound it\n</tool_response>"},
        {"role": "assistant", "content": "<think>\nok\n</think>\n\nIn Lumeth. 東京 🚀"},
    ],
]

STRINGS = [
    "The Glass River flows for 412 kilometres.",
    "  leading and trailing spaces  ",
    "naïve café — 東京 🚀 emoji\ttab\nnewline",
    "<|im_start|>user\nhi<|im_end|><|endoftext|>",
    "a<|im_end|>b <|im_start|> c",
    "",
    "Ωmega 123,456.78 $%^&*()",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("qwen_tok")
    write_tokenizer(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = QWEN_STYLE_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def hf(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def test_encode_decode_match_hf(tok_dir: Path):
    ours, ref = Tokenizer(tok_dir), hf(tok_dir)
    assert ours.vocab_size == len(ref)
    for text in STRINGS:
        for add_special in (True, False):
            ids = ours.encode(text, add_special_tokens=add_special)
            assert ids == ref.encode(text, add_special_tokens=add_special), text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            ), text
    assert ours.eos_token_ids == [ref.eos_token_id]
    assert ours.token_to_id("<|im_start|>") == ref.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chatml_template_matches_hf(tok_dir: Path, add_generation_prompt: bool):
    ours, ref = Tokenizer(tok_dir), hf(tok_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ü"}]
    kw = {"add_generation_prompt": add_generation_prompt}
    assert ours.apply_chat_template(msgs, **kw) == ref.apply_chat_template(
        msgs, tokenize=False, **kw
    )
    ref_ids = ref.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]
    assert ours.apply_chat_template(msgs, tokenize=True, **kw) == list(ref_ids)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("enable_thinking", [None, False, True])
def test_qwen_style_template_matches_hf(qwen_dir: Path, conversation, tools, enable_thinking):
    ours, ref = Tokenizer(qwen_dir), hf(qwen_dir)
    msgs = CONVERSATIONS[conversation]
    kw: dict = {"add_generation_prompt": True, "tools": tools}
    if enable_thinking is not None:
        kw["enable_thinking"] = enable_thinking
    got = ours.apply_chat_template(msgs, **kw)
    assert got == ref.apply_chat_template(msgs, tokenize=False, **kw)
    assert ("# Tools" in got) == (tools is not None)  # the branches under test were taken


def test_errors_name_the_problem(tmp_path: Path, tok_dir: Path):
    with pytest.raises(ModelError, match="tokenizer.json"):
        Tokenizer(tmp_path)
    bad = tmp_path / "bad"
    write_tokenizer(bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "line 1\n{% for x in %}"
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tokenizer_config.json.*line 2"):
        Tokenizer(bad)
    with pytest.raises(ConfigError, match="messages"):
        Tokenizer(tok_dir).apply_chat_template([])
