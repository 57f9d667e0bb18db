"""The demonstrator: a scripted, deliberately imperfect expert for a tinyworld, served on loopback
over SGLang's ``/generate`` (token ids in; ``output_ids``, ``meta_info.output_token_logprobs``
and ``finish_reason`` out), so the real rollout engine records its trajectories as warm-start
data.

It decodes the prompt with the world tokenizer, finds the world question in it, counts the
searches already made and acts from the world's ground truth: search ``"<entity> <relation
word>"`` for the next hop (once the previous hop's entity shows in the last observation), then
answer the last entity. Imperfections, drawn per trajectory from ``seed`` and the request id:
with ``guess_rate`` it answers at once, without searching, a wrong entity of the answer's type;
with ``early_stop_rate`` a multi-hop chain stops early and answers a bridge entity.
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._loopback import JsonHandler, LoopbackServer
from .world import RELATIONS, World

_QUESTION = re.compile(r"question : (.*?) <\|im_end\|>")
_ASSISTANT = "<|im_start|> assistant"


@dataclass(frozen=True)
class Imperfections:
    """How often the demonstrator errs (each a probability per trajectory)."""

    guess_rate: float = 0.4
    early_stop_rate: float = 0.15

    def __post_init__(self) -> None:
        for name in ("guess_rate", "early_stop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"demonstrator.{name}: {value} is not a probability in [0, 1]")


class Policy:
    """The scripted expert: prompt text in, the next action's text out."""

    def __init__(
        self, world: World, tokenizer: Any, imperfections: Imperfections, seed: int
    ) -> None:
        self.world = world
        self.tokenizer = tokenizer
        self.imperfections = imperfections
        self.seed = seed
        self.questions = {
            tokenizer.decode(tokenizer.encode(q["question"], False)): q
            for q in world.all_questions()
        }

    def act(self, prompt_text: str, rid: str) -> str:
        """The action text for a decoded prompt; ``rid`` (minus its turn suffix) seeds the
        trajectory's imperfections."""
        question = self._question(prompt_text)
        assistant = prompt_text.rsplit(_ASSISTANT, 1)[-1]
        hops_done = assistant.count("<search>")
        path, chain = question["path"], question["chain"]
        rng = random.Random(f"{self.seed}|{rid.rsplit('-', 1)[0]}")
        guess = rng.random() < self.imperfections.guess_rate
        stop_early = len(chain) > 1 and rng.random() < self.imperfections.early_stop_rate
        stop_hop = rng.randrange(1, len(chain)) if len(chain) > 1 else None
        wrong = self._wrong_guess(rng, path[-1])
        if hops_done == 0 and guess:
            return _answer(wrong)
        if hops_done > 0 and not _mentions(_last_observation(assistant), path[hops_done]):
            return _answer(wrong)
        if hops_done >= len(chain):
            return _answer(path[-1])
        if stop_early and hops_done == stop_hop:
            return _answer(path[hops_done])
        return f"<search> {path[hops_done]} {RELATIONS[chain[hops_done]].query} </search>"

    def _question(self, prompt_text: str) -> dict:
        match = _QUESTION.search(prompt_text)
        if match is None or match.group(1) not in self.questions:
            raise LookupError("no question of this world in the prompt")
        return self.questions[match.group(1)]

    def _wrong_guess(self, rng: random.Random, answer: str) -> str:
        kind = self.world.types[answer]
        return rng.choice([n for n in self.world.names_of(kind) if n != answer])


def _answer(name: str) -> str:
    return f"<answer> {name} </answer>"


def _last_observation(assistant_text: str) -> str:
    return assistant_text.rsplit("<information>", 1)[-1].split("</information>", 1)[0]


def _mentions(text: str, name: str) -> bool:
    return name.lower() in text.split()


class Demonstrator(LoopbackServer):
    """A running demonstrator server on 127.0.0.1 (``url``); ``stop()`` or ``with`` ends it."""

    def __init__(
        self,
        world: World,
        tokenizer_dir: str | Path,
        imperfections: Imperfections | None = None,
        seed: int = 0,
    ) -> None:
        from asearcher import Tokenizer

        self.tokenizer = Tokenizer(tokenizer_dir)
        self.policy = Policy(world, self.tokenizer, imperfections or Imperfections(), seed)
        self.requests = 0
        self._lock = threading.Lock()
        self._serve(_handler(self))

    def generate(self, body: dict) -> dict:
        """The /generate answer for a request body (SGLang's native protocol)."""
        ids = body.get("input_ids")
        if not isinstance(ids, list) or not ids:
            raise ValueError("input_ids: must be a non-empty list of token ids")
        sampling = body.get("sampling_params") or {}
        max_new = int(sampling.get("max_new_tokens") or 1 << 30)
        text = self.policy.act(self.tokenizer.decode(ids, False), str(body.get("rid", "")))
        out = self.tokenizer.encode(text, False)
        finish: dict[str, str | int] = {"type": "stop", "matched": text.rsplit(" ", 1)[-1]}
        if len(out) > max_new:
            out, finish = out[:max_new], {"type": "length", "length": max_new}
        with self._lock:
            self.requests += 1
        return {
            "text": self.tokenizer.decode(out, False),
            "output_ids": out,
            "meta_info": {
                "id": body.get("rid"),
                "prompt_tokens": len(ids),
                "completion_tokens": len(out),
                "output_token_logprobs": [[0.0, t, None] for t in out],
                "finish_reason": finish,
            },
        }

    def stop(self) -> None:
        self._shutdown()

    def __enter__(self) -> Demonstrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(demo: Demonstrator) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path in ("/health", "/health_generate"):
                self.send_json(200, {"status": "ok"})
            else:
                self.send_json(404, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            try:
                body = json.loads(self.read_body() or b"{}")
            except json.JSONDecodeError as e:
                self.send_json(400, {"error": f"body is not JSON: {e}"})
                return
            if self.path == "/generate":
                try:
                    self.send_json(200, demo.generate(body))
                except (ValueError, LookupError) as e:
                    self.send_json(400, {"error": f"demonstrator: {e}"})
            elif self.path == "/abort_request":
                self.send_json(200, {"success": True})
            else:
                self.send_json(404, {"error": f"no route POST {self.path}"})

    return Handler
