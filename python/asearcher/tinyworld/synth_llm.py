"""A scripted stand-in for the synthesis LLMs on tinyworld, speaking OpenAI's chat protocol
(``POST /v1/chat/completions``) on 127.0.0.1: we cannot run a 32B model here.

It follows tinyworld's grammar (``What is the N1 of the N2 of ... of X?``) and answers each
synthesis prompt by its ``TASK:`` line:

- propose: inject the named entity ``X`` (the words after the last ``of``), stop when no entity
  is named or it was rejected twice;
- inject: from the passages in the prompt ONLY (what our search returned), the first sentence
  ``S has NOUN X.`` of another entity's passage: ``X`` becomes ``the NOUN of S``;
- fuzz: blurs the named entity to "someone" (tinyworld has no dates or numbers);
- judge: every quality flag true unless the question holds two question marks;
- solve (no tools): resolves the chain only through "well-known" entities (a fixed
  ``know_fraction`` of the world, chosen by name hash), else guesses a wrong entity: the prior
  knowledge of an LLM, which makes some candidates too easy.

Faults (rates in ``faults``: ``"500"``, ``"timeout"``, ``"bad_json"``, ``"missing"``) are
chosen by a hash of the whole request, so a rerun sees the same ones in any order.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from typing import Any

from .._loopback import JsonHandler, LoopbackServer
from .world import RELATIONS, World

_BY_NOUN = {r.noun: r for r in RELATIONS.values()}
_FACT = re.compile(r"^(\w+) has (\w+) (\w+)$")


def _unit(text: str, salt: str = "") -> float:
    digest = hashlib.sha256((salt + "\0" + text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", prompt, re.MULTILINE)
    return m.group(1).strip() if m else ""


def parse_question(question: str) -> tuple[list[str], str | None]:
    """(nouns outermost first, the named entity or None) of a tinyworld-grammar question."""
    body = question.strip().removeprefix("What is ").rstrip("?").strip()
    parts = body.split(" of ")
    nouns = [p.removeprefix("the ").strip() for p in parts[:-1]]
    last = parts[-1].strip()
    return nouns, (None if last.startswith("the ") else last)


def resolve(world: World, question: str) -> str | None:
    """The entity a tinyworld-grammar question denotes, with full knowledge (the oracle)."""
    nouns, entity = parse_question(question)
    if entity is None:
        return None
    value = entity
    for noun in reversed(nouns):
        rel = _BY_NOUN.get(noun)
        if rel is None or (value, rel.name) not in world.facts:
            return None
        value = world.facts[(value, rel.name)]
    return value


class SynthesisLLM(LoopbackServer):
    """The running server (``url``); ``stop()`` or ``with`` ends it. ``calls`` counts requests
    by task."""

    def __init__(
        self,
        world: World,
        know_fraction: float = 0.25,
        faults: dict[str, float] | None = None,
        timeout_sleep_s: float = 3.0,
    ) -> None:
        self.world = world
        self.know_fraction = know_fraction
        self.faults = dict(faults or {})
        unknown = set(self.faults) - {"500", "timeout", "bad_json", "missing"}
        if unknown:
            raise ValueError(f"faults: unknown kinds {sorted(unknown)}")
        self.timeout_sleep_s = timeout_sleep_s
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._serve(_handler(self))

    def stop(self) -> None:
        self._shutdown()

    def __enter__(self) -> SynthesisLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers -------------------------------------------------------------------------

    def fault(self, messages: list[dict]) -> str | None:
        u = _unit(json.dumps(messages, sort_keys=True), "fault")
        edge = 0.0
        for kind in ("500", "timeout", "bad_json", "missing"):
            edge += self.faults.get(kind, 0.0)
            if u < edge:
                return kind
        return None

    def reply(self, messages: list[dict]) -> str:
        prompt = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
        task = _field(prompt, "TASK")
        with self._lock:
            self.calls[task] = self.calls.get(task, 0) + 1
        answer = getattr(self, f"_{task}", None)
        if answer is None:
            return json.dumps({"error": f"unknown task {task!r}"})
        return json.dumps(answer(prompt))

    def _propose(self, prompt: str) -> dict[str, Any]:
        _, entity = parse_question(_field(prompt, "QUESTION"))
        rejected = prompt.split("REJECTED THIS ROUND", 1)[-1] if "REJECTED" in prompt else ""
        if entity is None or rejected.count("\n- ") >= 2:
            return {"action": "stop"}
        return {"action": "inject", "entity": entity}

    def _inject(self, prompt: str) -> dict[str, Any]:
        entity = _field(prompt, "ENTITY")
        question = _field(prompt, "QUESTION")
        passages = prompt.split("PASSAGES:\n", 1)[-1].split("\nReply", 1)[0]
        for line in passages.splitlines():
            m = re.match(r"^\[([^\]]+)\] ([^:]+): (.*)$", line)
            if not m or m.group(2) == entity:
                continue
            for sentence in m.group(3).split(". "):
                f = _FACT.match(sentence.strip().rstrip("."))
                if f and f.group(3) == entity and f.group(2) in _BY_NOUN:
                    subject, noun = f.group(1), f.group(2)
                    description = f"the {noun} of {subject}"
                    return {
                        "doc_id": m.group(1),
                        "fact": f"{subject} has {noun} {entity}.",
                        "relation": noun,
                        "description": description,
                        "question": re.sub(rf"\b{re.escape(entity)}\b", description, question),
                    }
        return {"doc_id": "none", "fact": "", "relation": "", "description": "", "question": ""}

    def _fuzz(self, prompt: str) -> dict[str, Any]:
        question, span = _field(prompt, "QUESTION"), _field(prompt, "SPAN")
        return {"blurred": "someone", "question": question.replace(span, "someone")}

    def _judge(self, prompt: str) -> dict[str, Any]:
        single = _field(prompt, "QUESTION").count("?") <= 1
        return {
            "self_contained": True,
            "fluent": True,
            "single_question": single,
            "entailed": True,
            "reason": "" if single else "two questions",
        }

    def knows(self, entity: str) -> bool:
        return _unit(entity, "known") < self.know_fraction

    def _solve(self, prompt: str) -> dict[str, Any]:
        question = _field(prompt, "QUESTION")
        nouns, entity = parse_question(question)
        value = entity
        for noun in reversed(nouns):
            rel = _BY_NOUN.get(noun)
            if value is None or rel is None or not self.knows(value):
                value = None
                break
            value = self.world.facts.get((value, rel.name))
        if value is None:  # a confident guess: some other entity of the world
            names = sorted(self.world.types)
            value = names[int(_unit(question, "guess") * len(names))]
            truth = resolve(self.world, question)
            if value == truth:
                value = names[(names.index(value) + 1) % len(names)]
        return {"answer": value}


def _handler(llm: SynthesisLLM) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:
            body = json.loads(self.read_body() or b"{}")
            if self.path != "/v1/chat/completions":
                self.send_json(404, {"error": f"no route POST {self.path}"})
                return
            messages = body.get("messages") or []
            fault = llm.fault(messages)
            if fault == "500":
                self.send_json(500, {"error": "scripted server error"})
                return
            if fault == "timeout":
                time.sleep(llm.timeout_sleep_s)
            content = llm.reply(messages)
            if fault == "bad_json":
                content = "I believe the best move here is to think again."
            elif fault == "missing":
                content = json.dumps({"note": "fields forgotten"})
            self.send_json(
                200,
                {
                    "id": "chatcmpl-scripted",
                    "object": "chat.completion",
                    "model": body.get("model", "scripted"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )

    return Handler
