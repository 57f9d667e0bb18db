"""Run search agents with the rollout engine, then evaluate them (Avg@k / Pass@k).

Everything runs on this machine: the bundled sample corpus behind an embedded BM25 index, and
the scripted policy server standing in for an LLM (it speaks SGLang's ``/generate``; point
``InferencePool`` at real SGLang/vLLM servers instead). Run::

    python examples/rollout_and_eval.py [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import asearcher
from asearcher.config import AgentConfig, EvalConfig, JudgeConfig, RolloutConfig
from asearcher.data import sample_corpus_path, sample_questions_path, sample_tokenizer_path
from asearcher.testing import start_scripted_policy_server
from asearcher.tools import LocalSearch, Toolbox


@asearcher.reward_plugin(name="brevity")
def brevity(trajectory: asearcher.Trajectory, answers: list[str]) -> float:
    """A user reward: F1, minus a little for every turn taken."""
    return trajectory.rewards["f1"] - 0.01 * trajectory.num_turns


def load_questions() -> list[dict]:
    with open(sample_questions_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_benchmarks(data_dir: Path) -> None:
    """Two benchmarks in the `{data_dir}/{name}/test.jsonl` layout, from the sample questions."""
    questions = load_questions()
    for name, hops in [("one_hop", 1), ("two_hop", 2)]:
        (data_dir / name).mkdir(parents=True, exist_ok=True)
        picked = [q for q in questions if q["hops"] == hops][:8]
        with open(data_dir / name / "test.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(q) + "\n" for q in picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="asearcher-example-"))
    index_dir = work / "index"
    if not index_dir.exists():
        LocalSearch.build_index(sample_corpus_path(), index_dir)
    index = LocalSearch(index_dir)
    toolbox = Toolbox(index, index, top_k=3)

    policy = start_scripted_policy_server(
        answers=sample_questions_path(), searches=(1, 3), wrong_rate=0.3
    )
    with policy:
        pool = asearcher.InferencePool([policy.url])
        # Rollouts: groups of 4 samples per question, as an RL trainer would consume them.
        questions = load_questions()
        agent = AgentConfig(kind="asearcher", max_turns=16)  # help(AgentConfig) lists every field
        with asearcher.RolloutEngine(
            questions[:6],
            pool,
            sample_tokenizer_path(),
            toolbox=toolbox,
            agent=agent,
            config=RolloutConfig(group_size=4, batch_size=2, max_concurrent=16, max_staleness=4),
            reward={"metric": "f1", "primary": "brevity"},
            plugins=[brevity],
        ) as engine:
            batch = engine.next_batch(2) or []  # None: the questions are used up
            for group in batch:
                print(f"{group.question['question']!r}: rewards {group.rewards}")
            trajectory = batch[0].trajectories[0]
            print(f"one trajectory: {trajectory.num_turns} turns, answer {trajectory.answer!r}")
            print(f"its training sequences: {len(trajectory.sequences())}")
            print("stats:", {k: engine.stats()[k] for k in ("finished", "turns", "version")})

        # Evaluation: k runs per question, Avg@k and Pass@k for every metric, resumable.
        data_dir = work / "benchmarks"
        write_benchmarks(data_dir)
        eval_config = EvalConfig(
            data_dir=str(data_dir),
            k=4,
            output_dir=str(work / "eval_out"),
            agent=agent,
            judge=JudgeConfig(url=policy.url, model="scripted-policy"),
        )
        report = asearcher.evaluate(
            eval_config, pool, sample_tokenizer_path(), toolbox=toolbox, progress=False
        )
        print(report.table())
        print(f"results and trajectories saved under {work / 'eval_out'}")


if __name__ == "__main__":
    main()
