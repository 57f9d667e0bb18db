"""The baseline of bench_rollout.py: a plain Python asyncio + aiohttp agent loop.

It does the same work per turn as asearcher's rollout engine running the ASearcher base agent:
keep the context in token ids, POST it to an SGLang-protocol ``/generate`` endpoint, decode the
generated ids, parse the action tag, run the search (the same embedded BM25 index, through its
async API), render the observation, encode it and append it to the context, and record every
turn's tokens, logprobs and versions. At the end it scores the answer with word-set F1.

This is what a researcher would write in an afternoon with aiohttp and HF ``tokenizers``: one
asyncio task per trajectory, one shared ``aiohttp.ClientSession``, a semaphore for concurrency.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jinja2
from tokenizers import Tokenizer

ACTION = re.compile(r"<(search|access|answer)>(.*?)</\1>", re.DOTALL)
STOPS = ["</search>", "</access>", "</answer>"]
PUNCTUATION = frozenset(string.punctuation)


@dataclass
class Turn:
    prompt_len: int
    output_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    text: str
    tool_ms: float = 0.0


@dataclass
class Trajectory:
    question: str
    answers: list[str]
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    reward: float = 0.0
    error: str | None = None


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, golds: list[str]) -> float:
    best = 0.0
    pred = normalize(prediction).split()
    for gold in golds:
        ref = normalize(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def render_search(docs: list, doc_chars: int = 5000) -> str:
    if not docs:
        return "No search results are found."
    return "\n".join(
        f"[Doc {i + 1}]({d.url}):\n{d.contents[:doc_chars]}" for i, d in enumerate(docs)
    )


class BaselineAgentLoop:
    """Runs trajectories of a search-and-answer agent with asyncio tasks and aiohttp."""

    def __init__(
        self,
        server_url: str,
        search,
        tokenizer_dir: str | Path,
        prompt_template: str,
        *,
        max_turns: int = 32,
        max_new_tokens: int = 512,
        top_k: int = 5,
        doc_chars: int = 5000,
    ) -> None:
        tokenizer_dir = Path(tokenizer_dir)
        self.url = server_url.rstrip("/") + "/generate"
        self.search = search
        self.tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
        env = jinja2.Environment()
        self.chat = env.from_string(config["chat_template"])
        self.prompt = env.from_string(prompt_template)
        self.eos = [self.tok.token_to_id(config["eos_token"])]
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.doc_chars = doc_chars
        self.turns_done = 0

    def first_prompt(self, question: str) -> list[int]:
        user = self.prompt.render(question=question)
        text = self.chat.render(
            messages=[{"role": "user", "content": user}], add_generation_prompt=True
        )
        return self.tok.encode(text, add_special_tokens=False).ids

    async def generate(self, session: aiohttp.ClientSession, ids: list[int], rid: str) -> dict:
        body = {
            "input_ids": ids,
            "rid": rid,
            "return_logprob": True,
            "sampling_params": {
                "temperature": 1.0,
                "max_new_tokens": self.max_new_tokens,
                "stop": STOPS,
                "stop_token_ids": self.eos,
            },
        }
        async with session.post(self.url, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def run_one(
        self, session: aiohttp.ClientSession, key: str, question: str, answers: list[str]
    ) -> Trajectory:
        traj = Trajectory(question, answers)
        context = self.first_prompt(question)
        try:
            for turn in range(self.max_turns):
                out = await self.generate(session, context, f"{key}-{turn}")
                meta = out["meta_info"]
                ids = out["output_ids"]
                logprobs = [lp for lp, _, _ in meta["output_token_logprobs"]]
                versions = meta.get("output_token_versions") or [0] * len(ids)
                text = self.tok.decode(ids, skip_special_tokens=False)
                record = Turn(len(context), ids, logprobs, versions, text)
                traj.turns.append(record)
                context = context + ids
                self.turns_done += 1
                match = ACTION.search(text)
                if match is None:
                    observation = "No valid action found."
                elif match.group(1) == "answer":
                    traj.answer = match.group(2).strip()
                    break
                elif match.group(1) == "search":
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    docs = await self.search.asearch(match.group(2).strip(), self.top_k)
                    record.tool_ms = (loop.time() - started) * 1e3
                    observation = render_search(docs, self.doc_chars)
                else:
                    observation = "Page access is not available."
                info = f"\n\n<information>{observation}</information>\n\n"
                context = context + self.tok.encode(info, add_special_tokens=False).ids
        except Exception as exc:  # one trajectory's failure must not stop the others
            traj.error = f"{type(exc).__name__}: {exc}"
        traj.reward = f1(traj.answer, answers) if traj.answer else 0.0
        return traj

    async def run(self, questions: list[tuple[str, list[str]]], concurrency: int) -> list:
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def bounded(i: int, q: str, a: list[str]) -> Trajectory:
                async with gate:
                    return await self.run_one(session, f"t{i}", q, a)

            return await asyncio.gather(*(bounded(i, q, a) for i, (q, a) in enumerate(questions)))
