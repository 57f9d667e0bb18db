"""The synthetic world: made-up entities (people, cities, countries, companies) joined by typed
relations, its corpus (one passage per entity), and its questions (single-hop and 2-3-hop chains
of relations) with a train / held-out split by subject entity. Deterministic for a seed.

Nothing here needs the native module; ``build`` (in ``__init__``) writes the files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Entities per type for each size.
SIZES: dict[str, dict[str, int]] = {
    "small": {"country": 4, "city": 12, "company": 12, "person": 32},
    "default": {"country": 12, "city": 48, "company": 60, "person": 180},
}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s", "k", "m"]


@dataclass(frozen=True)
class Relation:
    """A typed relation: ``name`` from ``subject_type`` to ``object_type``. ``noun`` names it
    everywhere: in questions (``the {noun} of X``), in the expert's query (``X {noun}``) and in the
    passage sentence, right before the object (``X has {noun} Y.``), so the object to copy always
    follows the word the agent searched for."""

    name: str
    subject_type: str
    object_type: str
    noun: str

    @property
    def query(self) -> str:
        return self.noun

    def sentence(self, subject: str, obj: str) -> str:
        return f"{subject} has {self.noun} {obj}."


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation("located_in", "city", "country", "country"),
        Relation("born_in", "person", "city", "birthplace"),
        Relation("works_for", "person", "company", "employer"),
        Relation("headquartered_in", "company", "city", "headquarters"),
        Relation("founded_by", "company", "person", "founder"),
    ]
}


@dataclass(frozen=True)
class QuestionKind:
    """A question over a chain of relations starting at the subject: ``What is the country of
    the birthplace of X?`` follows born_in, then located_in. The subject is always the last word,
    next to the assistant's first output."""

    name: str
    chain: tuple[str, ...]

    @property
    def template(self) -> str:
        nouns = " of the ".join(RELATIONS[r].noun for r in reversed(self.chain))
        return f"What is the {nouns} of {{x}}?"


QUESTION_KINDS: list[QuestionKind] = [
    QuestionKind("birthplace", ("born_in",)),
    QuestionKind("city_country", ("located_in",)),
    QuestionKind("founder", ("founded_by",)),
    QuestionKind("headquarters", ("headquartered_in",)),
    QuestionKind("employer", ("works_for",)),
    QuestionKind("birth_country", ("born_in", "located_in")),
    QuestionKind("hq_country", ("headquartered_in", "located_in")),
    QuestionKind("founder_birthplace", ("founded_by", "born_in")),
    QuestionKind("employer_hq", ("works_for", "headquartered_in")),
    QuestionKind("founder_country", ("founded_by", "born_in", "located_in")),
    QuestionKind("employer_country", ("works_for", "headquartered_in", "located_in")),
]


def _long_chain(hops: int) -> tuple[str, ...]:
    """A person's chain of ``hops`` relations (4..8) that never returns where it was: employer,
    founder, employer, ... then headquarters / birthplace and country."""
    cycle = ("works_for", "founded_by")
    tail = ("headquartered_in", "located_in") if hops % 2 else ("born_in", "located_in")
    return tuple(cycle[i % 2] for i in range(hops - 2)) + tail


#: The long-tail variant adds one kind per chain length 4..8 (subjects thinned to ~2/hops of
#: the people): questions need 1 to 8 searches and the long ones are rare.
LONG_TAIL_KINDS: list[QuestionKind] = [
    QuestionKind(f"chain{h}", _long_chain(h)) for h in range(4, 9)
]

#: Question kinds of each variant.
VARIANTS: dict[str, list[QuestionKind]] = {
    "standard": QUESTION_KINDS,
    "longtail": QUESTION_KINDS + LONG_TAIL_KINDS,
}

_TYPE_SENTENCE = {
    "country": "{s} is a country.",
    "city": "{s} is a city.",
    "company": "{s} is a company.",
    "person": "{s} is a person.",
}


@dataclass
class World:
    """Entities (name -> type), facts ((subject, relation) -> object), questions and the split.

    ``questions`` holds dicts in the rollout format (``id``, ``question``, ``answer``) plus
    ``subject``, ``kind``, ``chain`` (the relation names) and ``path`` (the entities visited,
    subject first, answer last). ``heldout_subjects`` never appear in a train question's path.
    """

    seed: int
    size: str
    types: dict[str, str] = field(repr=False)
    facts: dict[tuple[str, str], str] = field(repr=False)
    variant: str = "standard"
    train: list[dict] = field(default_factory=list, repr=False)
    heldout: list[dict] = field(default_factory=list, repr=False)
    heldout_subjects: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        size: str = "default",
        heldout_fraction: float = 0.2,
        variant: str = "standard",
    ) -> World:
        """A world of ``size`` (``"default"``: ~300 entities, ``"small"``: ~60) for ``seed``;
        ``variant`` ``"longtail"`` adds rare questions of 4 to 8 hops (the entities and facts
        are those of the standard world of the same seed)."""
        if size not in SIZES:
            raise ValueError(f"size: unknown world size {size!r}; valid: {sorted(SIZES)}")
        if variant not in VARIANTS:
            raise ValueError(
                f"variant: unknown world variant {variant!r}; valid: {sorted(VARIANTS)}"
            )
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction: {heldout_fraction} is not in (0, 1)")
        rng = random.Random(f"tinyworld-{seed}-{size}")
        types = _make_entities(rng, SIZES[size])
        facts = _make_facts(rng, types)
        world = cls(seed=seed, size=size, types=types, facts=facts, variant=variant)
        world._split(rng, heldout_fraction)
        return world

    def names_of(self, kind: str) -> list[str]:
        """Entity names of one type, in generation order."""
        return [n for n, t in self.types.items() if t == kind]

    def follow(self, subject: str, chain: tuple[str, ...]) -> list[str]:
        """The entities visited by following ``chain`` from ``subject`` (subject first)."""
        path = [subject]
        for rel in chain:
            path.append(self.facts[(path[-1], rel)])
        return path

    def passage(self, name: str) -> str:
        """The text of an entity's passage (without its title line)."""
        sentences = [_TYPE_SENTENCE[self.types[name]].format(s=name)]
        for rel in RELATIONS.values():
            if (name, rel.name) in self.facts:
                sentences.append(rel.sentence(name, self.facts[(name, rel.name)]))
        return " ".join(sentences)

    def corpus(self) -> list[dict]:
        """One document per entity: ``{"id", "contents": '"Name"\\ntext', "url"}``."""
        return [
            {
                "id": str(i),
                "contents": f'"{name}"\n{self.passage(name)}',
                "url": f"https://tinyworld.example/{name.lower()}",
            }
            for i, name in enumerate(self.types)
        ]

    @property
    def kinds(self) -> list[QuestionKind]:
        """The question kinds of this world's variant."""
        return VARIANTS[self.variant]

    def all_questions(self) -> list[dict]:
        """Every question of every kind for every subject of the kind's type (chains of 4+
        hops: every ``hops``-th pair of subjects, so the long questions are rare)."""
        out = []
        for kind in self.kinds:
            subject_type = RELATIONS[kind.chain[0]].subject_type
            hops = len(kind.chain)
            for i, name in enumerate(self.names_of(subject_type)):
                if hops > 3 and i % hops >= 2:
                    continue
                path = self.follow(name, kind.chain)
                out.append(
                    {
                        "id": f"{kind.name}-{name.lower()}",
                        "question": kind.template.format(x=name),
                        "answer": [path[-1]],
                        "subject": name,
                        "kind": kind.name,
                        "chain": list(kind.chain),
                        "path": path,
                    }
                )
        return out

    def counterfactual(self, seed: int = 1) -> World:
        """The same entities, kinds and split with every fact redrawn (for ``seed``): questions
        whose answers contradict this world's, so a model trained on both cannot answer from
        memory and must read the observation. Question ids get a ``cf{seed}-`` prefix."""
        rng = random.Random(f"tinyworld-{self.seed}-{self.size}-counterfactual-{seed}")
        world = World(
            seed=self.seed,
            size=self.size,
            types=self.types,
            facts=_make_facts(rng, self.types),
            variant=self.variant,
            heldout_subjects=self.heldout_subjects,
        )
        for q in world.all_questions():
            q["id"] = f"cf{seed}-{q['id']}"
            if q["subject"] in self.heldout_subjects:
                world.heldout.append(q)
            elif not self.heldout_subjects.intersection(q["path"][:-1]):
                world.train.append(q)
        return world

    def majority_baseline(self) -> float:
        """Held-out accuracy of answering, without searching, the most common train answer of
        each question kind: what a policy that never searches can reach."""
        counts: dict[str, Counter[str]] = {}
        for q in self.train:
            counts.setdefault(q["kind"], Counter())[q["answer"][0]] += 1
        best = {kind: c.most_common(1)[0][0] for kind, c in counts.items()}
        hits = sum(best.get(q["kind"]) == q["answer"][0] for q in self.heldout)
        return hits / len(self.heldout)

    def _split(self, rng: random.Random, fraction: float) -> None:
        subjects_by_type: dict[str, list[str]] = {}
        for kind in QUESTION_KINDS:  # the standard kinds: the same split in every variant
            t = RELATIONS[kind.chain[0]].subject_type
            subjects_by_type.setdefault(t, self.names_of(t))
        heldout: set[str] = set()
        for names in subjects_by_type.values():
            heldout.update(rng.sample(names, max(1, round(fraction * len(names)))))
        self.heldout_subjects = frozenset(heldout)
        for q in self.all_questions():
            if q["subject"] in heldout:
                self.heldout.append(q)
            elif not heldout.intersection(q["path"][:-1]):
                self.train.append(q)

    def write_questions(self, path: str | Path, questions: list[dict]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(q) + "\n")

    def write_corpus(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for doc in self.corpus():
                f.write(json.dumps(doc) + "\n")

    def texts(self) -> list[str]:
        """Every text of the world (passages with titles, questions), for the vocabulary."""
        docs = [d["contents"] for d in self.corpus()]
        return docs + [q["question"] for q in self.all_questions()]


def _make_name(rng: random.Random) -> str:
    syllables = rng.choice([2, 2, 3])
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (word + rng.choice(_CODAS)).capitalize()


def _reserved_words() -> set[str]:
    """Words of the templates, which no entity may be named."""
    words: set[str] = set()
    texts = [r.sentence("", "") for r in RELATIONS.values()] + list(_TYPE_SENTENCE.values())
    texts += [k.template for k in QUESTION_KINDS]
    for text in texts:
        words.update(w.strip(".?{}").lower() for w in text.split())
    return words


def _make_entities(rng: random.Random, counts: dict[str, int]) -> dict[str, str]:
    reserved = _reserved_words()
    types: dict[str, str] = {}
    for kind, n in counts.items():
        made = 0
        while made < n:
            name = _make_name(rng)
            if name in types or name.lower() in reserved:
                continue
            types[name] = kind
            made += 1
    return types


def _make_facts(rng: random.Random, types: dict[str, str]) -> dict[tuple[str, str], str]:
    by_type: dict[str, list[str]] = {}
    for name, kind in types.items():
        by_type.setdefault(kind, []).append(name)
    facts: dict[tuple[str, str], str] = {}
    for rel in RELATIONS.values():
        objects = by_type[rel.object_type]
        for name in by_type[rel.subject_type]:
            facts[(name, rel.name)] = rng.choice(objects)
    return facts
