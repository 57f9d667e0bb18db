"""Generate the small made-up encyclopedia that ships with asearcher for demos and tests.

Writes two files into ``--out-dir`` (default ``python/asearcher/data``):

* ``sample_corpus.jsonl``: about 2,900 passages about ~600 invented entities (people, cities,
  countries, rivers, mountains, universities, companies, inventions, bands, books), one line per
  passage: ``{"id": "<slug>-<n>", "contents": "\\"<Title>\\"\\n<text>", "url": ...}``. All
  passages of one entity share its title and url. Relations (born in, founded by, flows
  through, ...) are stated on the subject's page and most are restated on the object's page, so
  multi-hop questions can be answered by searching.
* ``sample_questions.jsonl``: about 60 one- and two-hop questions with their answers and the ids
  of the passages that state the needed facts.

Only the standard library is used and all randomness comes from one seeded generator, so two
runs with the same ``--seed`` give byte-identical files::

    python scripts/make_sample_corpus.py [--out-dir python/asearcher/data] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "python" / "asearcher" / "data"
URL_PREFIX = "https://tinywiki.example/wiki/"
MIN_WORDS, MAX_WORDS = 40, 120
MIN_PASSAGES, MAX_PASSAGES = 3, 10
CURRENT_YEAR = 2024

COUNTS = {
    "country": 14,
    "city": 76,
    "river": 30,
    "mountain": 20,
    "university": 25,
    "company": 66,
    "invention": 45,
    "band": 30,
    "book": 40,
    "person": 250,
}

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

# fmt: off
ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r",
          "s", "sk", "st", "t", "th", "tr", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "o", "ei", "ou", "ia"]
MEDIAL_CODAS = ["l", "r", "n", "s", "m"]
CODAS = ["", "", "", "n", "n", "r", "l", "s", "th", "k", "m", "nd", "rn", "st"]
PLACE_ENDINGS = ["", "", "", "mora", "heim", "ford", "vale", "grad", "port", "wick", "dor", "ssa"]
COUNTRY_ENDINGS = ["ia", "ia", "and", "ar", "istan", "ovia", "enne"]

INDUSTRIES = {
    "automobile": ["Motors", "Automotive"], "shipbuilding": ["Shipyards", "Marine"],
    "software": ["Systems", "Software"], "textile": ["Textiles", "Mills"],
    "pharmaceutical": ["Pharma", "Laboratories"], "railway": ["Rail", "Railworks"],
    "publishing": ["Press", "Publishing"], "optics": ["Optics", "Lensworks"],
    "energy": ["Energy", "Power"], "brewing": ["Brewery", "Breweries"],
    "telecommunications": ["Telecom", "Signal"], "aviation": ["Aero", "Aviation"],
}
DEVICES = {
    "engine": "mechanical engineering", "loom": "textile manufacturing", "lamp": "lighting",
    "compass": "navigation", "telescope": "astronomy", "press": "printing",
    "valve": "hydraulics", "battery": "electrochemistry", "microscope": "microbiology",
    "turbine": "power generation", "telegraph": "telecommunications", "calculator": "computing",
    "clock": "timekeeping", "pump": "mining", "kiln": "ceramics", "sextant": "navigation",
    "phonograph": "sound recording", "dynamo": "electrical engineering",
}
GENRES = ["folk rock", "jazz", "synth-pop", "post-punk", "blues", "progressive rock", "ambient"]
BOOK_GENRES = ["novel", "historical novel", "poetry collection", "memoir", "mystery novel"]
SUBJECTS = ["physics", "chemistry", "law", "medicine", "engineering", "philosophy", "music",
            "mathematics", "history", "architecture"]
SEAS = ["Sea of Orlan", "Gulf of Marrin", "Bay of Selt", "Amaren Ocean", "Sea of Kest"]
RANGES = ["Hollow Range", "Varden Alps", "Ashen Spine", "Teluric Mountains", "Kessel Heights"]
BAND_ADJ = ["Velvet", "Hollow", "Silver", "Paper", "Crimson", "Quiet", "Electric", "Northern",
            "Broken", "Golden", "Wandering", "Amber", "Iron", "Lunar", "Hidden", "Restless",
            "Pale", "Copper", "Distant", "Midnight"]
BAND_NOUNS = ["Sparrows", "Harbors", "Lanterns", "Engines", "Foxes", "Tides", "Mirrors",
              "Orchards", "Ravens", "Signals", "Comets", "Gardens", "Wolves", "Bells", "Pilots",
              "Satellites", "Ghosts", "Thieves", "Kites", "Anchors"]
BOOK_ADJ = ["Silent", "Last", "Burning", "Unfinished", "Winter", "Drowned", "Forgotten", "Glass",
            "Long", "Bitter"]
BOOK_NOUNS = ["Orchard", "Lighthouse", "Harvest", "Crossing", "Inheritance", "Garden", "Letter",
              "Tide", "Ferry", "Census"]
ADJ = ["quiet", "busy", "narrow", "historic", "famous", "colourful", "windswept", "sleepy",
       "graceful", "crowded", "modest", "weathered", "bustling", "stately", "rugged"]
LANDMARKS = ["harbour", "market square", "cathedral", "bridge", "clock tower",
             "botanical garden", "old fortress", "riverside promenade", "opera house",
             "lighthouse", "covered bazaar"]
FOODS = ["smoked fish", "barley bread", "plum dumplings", "spiced lamb", "honey cakes",
         "lentil stew"]
CRAFTS = ["glassblowing", "wood carving", "lace making", "pottery", "bookbinding", "weaving"]
SEASONS = ["spring", "summer", "autumn", "winter"]
PARENT_JOBS = ["a baker", "a schoolteacher", "a ferryman", "a clerk", "a watchmaker", "a nurse"]
HONOURS = ["the Order of Merit", "the Silver Quill", "the Gellan Prize", "the Halvard Medal"]
# fmt: on


# --------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Entity:
    """One encyclopedia subject: its kind, unique title and attributes (facts)."""

    kind: str
    title: str
    attrs: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    @property
    def url(self) -> str:
        return URL_PREFIX + self.title.replace(" ", "_")

    def __getitem__(self, key: str):
        return self.attrs[key]

    def get(self, key: str, default=None):
        return self.attrs.get(key, default)


@dataclass
class Sentence:
    """A sentence and the facts (hashable keys) it states."""

    text: str
    keys: tuple = ()


class Namer:
    """Pronounceable, globally unique invented words."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, min_syl: int = 2, max_syl: int = 3, endings: list[str] | None = None) -> str:
        while True:
            syllables = self.rng.randint(min_syl, max_syl)
            name = self._compose(syllables, endings or CODAS).capitalize()
            if self._acceptable(name):
                self.used.add(name)
                return name

    def _compose(self, syllables: int, endings: list[str]) -> str:
        parts = []
        for i in range(syllables):
            onset = self.rng.choice(ONSETS) if i or self.rng.random() < 0.85 else ""
            parts.append(onset + self.rng.choice(VOWELS))
            if i < syllables - 1 and self.rng.random() < 0.3:
                parts.append(self.rng.choice(MEDIAL_CODAS))
        return "".join(parts) + self.rng.choice(endings)

    def _acceptable(self, name: str) -> bool:
        return (
            4 <= len(name) <= 11
            and name not in self.used
            and not re.search(r"(.)\1\1|[aeiou]{3}|[^aeiou]{4}", name.lower())
        )


class World:
    """All entities and their relations, generated from one seeded RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.namer = Namer(rng)
        self.titles: set[str] = set()
        self.by_kind: dict[str, list[Entity]] = {kind: [] for kind in COUNTS}

    def add(self, kind: str, title: str, **attrs) -> Entity:
        entity = Entity(kind, title, attrs)
        self.titles.add(title)
        self.by_kind[kind].append(entity)
        return entity

    def unique_title(self, make) -> str:
        while True:
            title = make()
            if title not in self.titles:
                return title

    def __getitem__(self, kind: str) -> list[Entity]:
        return self.by_kind[kind]

    def all_entities(self) -> list[Entity]:
        return [e for kind in COUNTS for e in self.by_kind[kind]]


def demonym(country: str) -> str:
    if country.endswith("ia"):
        return country + "n"
    if country.endswith(("a", "e")):
        return country[:-1] + "ian"
    return country + "ian"


def build_world(rng: random.Random) -> World:
    world = World(rng)
    make_countries(world)
    make_cities(world)
    make_mountains(world)
    make_rivers(world)
    make_people(world)
    make_institutions(world)
    make_creations(world)
    assign_people_to_roles(world)
    return world


def make_countries(world: World) -> None:
    rng, namer = world.rng, world.namer
    for _ in range(COUNTS["country"]):
        name = world.unique_title(lambda: namer.word(1, 2, COUNTRY_ENDINGS))
        world.add(
            "country",
            name,
            demonym=demonym(name),
            population=rng.randint(2, 90) * 1_000_000 + rng.randint(0, 999) * 1000,
            independence=rng.randint(1650, 1960),
            currency=namer.word(1, 2),
            cities=[],
            rivers=[],
            mountains=[],
        )


def make_cities(world: World) -> None:
    """Spreads cities evenly over countries; each country's first city is its capital."""
    rng, namer = world.rng, world.namer
    countries = world["country"]
    for i in range(COUNTS["city"]):
        country = countries[i % len(countries)]
        name = world.unique_title(lambda: namer.word(1, 3, PLACE_ENDINGS))
        city = world.add(
            "city",
            name,
            country=country,
            founded=rng.randint(700, 1750),
            population=rng.randint(8, 900) * 1000 + rng.randint(0, 999),
            rivers=[],
            people=[],
            companies=[],
            universities=[],
            bands=[],
            books=[],
        )
        country["cities"].append(city)
    for country in countries:
        capital = country["cities"][0]
        capital.attrs["capital_of"] = country
        capital.attrs["population"] = rng.randint(900, 4000) * 1000 + rng.randint(0, 999)
        country.attrs["capital"] = capital


def make_mountains(world: World) -> None:
    rng, namer = world.rng, world.namer
    countries = world["country"]
    for _ in range(COUNTS["mountain"]):
        country = rng.choice(countries)
        title = world.unique_title(lambda: "Mount " + namer.word(1, 2))
        mountain = world.add(
            "mountain",
            title,
            country=country,
            height=rng.randint(1800, 7900),
            range=rng.choice(RANGES),
            rivers=[],
        )
        country["mountains"].append(mountain)


def make_rivers(world: World) -> None:
    """Each river rises on a mountain and flows through one to three cities."""
    rng, namer = world.rng, world.namer
    cities = world["city"]
    for _ in range(COUNTS["river"]):
        title = world.unique_title(lambda: namer.word(1, 2) + " River")
        course = sorted(rng.sample(cities, rng.choice([1, 1, 2, 2, 3])), key=cities.index)
        source = rng.choice(world["mountain"])
        river = world.add(
            "river",
            title,
            cities=course,
            source=source,
            mouth=rng.choice(SEAS),
            length=rng.randint(60, 2400),
        )
        source["rivers"].append(river)
        for city in course:
            city["rivers"].append(river)
            if river not in city["country"]["rivers"]:
                city["country"]["rivers"].append(river)


def make_people(world: World) -> None:
    rng, namer = world.rng, world.namer
    for _ in range(COUNTS["person"]):
        title = world.unique_title(lambda: namer.word(2, 2) + " " + namer.word(1, 2))
        born = rng.randint(1790, 1965)
        died = born + rng.randint(60, 96)
        city = rng.choice(world["city"])
        she = rng.random() < 0.5
        person = world.add(
            "person",
            title,
            born=born,
            died=died if died < CURRENT_YEAR else None,
            birthplace=city,
            deathplace=rng.choice(world["city"]),
            pron="She" if she else "He",
            poss="Her" if she else "His",
            subject=rng.choice(SUBJECTS),
            parent_job=rng.choice(PARENT_JOBS),
            roles=[],
        )
        city["people"].append(person)


def make_institutions(world: World) -> None:
    rng, namer = world.rng, world.namer
    cities_with_uni: list[Entity] = []
    for _ in range(COUNTS["university"]):
        city = rng.choice(world["city"])
        if city not in cities_with_uni and rng.random() < 0.6:
            title = "University of " + city.title
        else:
            style = rng.choice(["{} Institute of Technology", "{} College", "Royal {} Academy"])
            title = world.unique_title(lambda style=style: style.format(namer.word(2, 2)))
        cities_with_uni.append(city)
        uni = world.add(
            "university",
            title,
            city=city,
            founded=rng.randint(max(city["founded"] + 50, 1200), 1930),
            students=rng.randint(30, 450) * 100,
            alumni=[],
        )
        city["universities"].append(uni)
    for _ in range(COUNTS["company"]):
        industry = rng.choice(sorted(INDUSTRIES))
        title = world.unique_title(
            lambda industry=industry: namer.word(1, 2) + " " + rng.choice(INDUSTRIES[industry])
        )
        city = rng.choice(world["city"])
        company = world.add(
            "company",
            title,
            industry=industry,
            hq=city,
            employees=rng.randint(2, 900) * 100,
            products=[],
        )
        city["companies"].append(company)


def make_creations(world: World) -> None:
    rng, namer = world.rng, world.namer
    for _ in range(COUNTS["invention"]):
        device = rng.choice(sorted(DEVICES))
        title = world.unique_title(
            lambda device=device: namer.word(2, 2) + " " + device.capitalize()
        )
        world.add("invention", title, device=device, field=DEVICES[device], maker=None)
    for _ in range(COUNTS["band"]):
        title = world.unique_title(
            lambda: "The " + rng.choice(BAND_ADJ) + " " + rng.choice(BAND_NOUNS)
        )
        city = rng.choice(world["city"])
        albums = [album_title(rng) for _ in range(rng.randint(2, 4))]
        band = world.add(
            "band", title, city=city, genre=rng.choice(GENRES), albums=albums, members=[]
        )
        city["bands"].append(band)
    for _ in range(COUNTS["book"]):
        title = world.unique_title(lambda: book_title(rng, namer))
        setting = rng.choice(world["city"])
        book = world.add("book", title, genre=rng.choice(BOOK_GENRES), setting=setting)
        setting["books"].append(book)


def album_title(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.choice(BOOK_ADJ)} {rng.choice(LANDMARKS).title()}",
            f"Songs for a {rng.choice(SEASONS).title()} {rng.choice(BOOK_NOUNS)}",
            f"{rng.choice(BOOK_NOUNS)}s",
        ]
    )


def book_title(rng: random.Random, namer: Namer) -> str:
    return rng.choice(
        [
            f"The {rng.choice(BOOK_ADJ)} {rng.choice(BOOK_NOUNS)}",
            f"The {rng.choice(BOOK_NOUNS)} of {namer.word(2, 2)}",
            f"A {rng.choice(SEASONS).title()} {rng.choice(BOOK_NOUNS)}",
        ]
    )


def assign_people_to_roles(world: World) -> None:
    """Link people to companies, inventions, bands, books, mountains, universities, cities."""
    rng = world.rng
    people = list(world["person"])
    rng.shuffle(people)
    pool = iter(people * 3)
    assign_alumni(world, people)
    for company in world["company"]:
        founder = next(pool)
        company.attrs["founder"] = founder
        company.attrs["founded"] = founder["born"] + rng.randint(24, 45)
        founder["roles"].append(("founder", company))
    for invention in world["invention"]:
        inventor = next(pool)
        invention.attrs["inventor"] = inventor
        invention.attrs["year"] = inventor["born"] + rng.randint(24, 45)
        inventor["roles"].append(("inventor", invention))
        assign_maker(world, invention)
    for band in world["band"]:
        assign_band_members(world, band, pool)
    for book in world["book"]:
        author = next(pool)
        book.attrs["author"] = author
        book.attrs["year"] = author["born"] + rng.randint(25, 45)
        author["roles"].append(("author", book))
    for mountain in world["mountain"]:
        climber = next(pool)
        mountain.attrs["climber"] = climber
        mountain.attrs["ascent"] = climber["born"] + rng.randint(21, 40)
        climber["roles"].append(("climber", mountain))
    assign_mayors(world)


def assign_alumni(world: World, people: list[Entity]) -> None:
    for uni in world["university"]:
        for person in world.rng.sample(people, world.rng.randint(2, 4)):
            if "alma_mater" not in person.attrs:
                person.attrs["alma_mater"] = uni
                uni["alumni"].append(person)


def assign_maker(world: World, invention: Entity) -> None:
    rng = world.rng
    if rng.random() < 0.5:
        return
    existing = [c for c in world["company"] if c["founded"] <= invention["year"] + 30]
    if existing:
        company = rng.choice(existing)
        invention.attrs["maker"] = company
        company["products"].append(invention)


def assign_band_members(world: World, band: Entity, pool) -> None:
    rng = world.rng
    members = [next(pool) for _ in range(rng.randint(3, 4))]
    members = list(dict.fromkeys(members))
    band.attrs["members"] = members
    band.attrs["formed"] = max(m["born"] for m in members) + rng.randint(17, 26)
    for member in members:
        member["roles"].append(("member", band))


def assign_mayors(world: World) -> None:
    rng = world.rng
    for person in world["person"]:
        if not person["roles"]:
            city = person["birthplace"] if rng.random() < 0.6 else rng.choice(world["city"])
            start = person["born"] + rng.randint(35, 45)
            person["roles"].append(("mayor", city))
            person.attrs["mayor_years"] = (start, start + rng.randint(3, 12))
            city.attrs.setdefault("mayors", []).append(person)


# --------------------------------------------------------------------------------------------
# Page writing: each kind gives sections (lists of sentences); sections become passages
# --------------------------------------------------------------------------------------------


def join_names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def the(title: str) -> str:
    """'the Ostra River' but 'Mount Kelvar', 'The Velvet Foxes'."""
    if title.startswith(("Mount ", "The ", "A ")):
        return title
    return "the " + title


def short_river(river: Entity) -> str:
    return river.title.removesuffix(" River")


class PageWriter:
    """Writes the sections of one entity's page, with varied sentence templates."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def say(self, templates: list[str], *keys, **values) -> Sentence:
        return Sentence(self.rng.choice(templates).format(**values), tuple(keys))

    def sections(self, entity: Entity) -> list[list[Sentence]]:
        return getattr(self, "write_" + entity.kind)(entity)

    # ---- people -----------------------------------------------------------------------------

    def write_person(self, p: Entity) -> list[list[Sentence]]:
        city = p["birthplace"]
        country = city["country"]
        life = f"{p['born']}–{p['died']}" if p["died"] else f"born {p['born']}"
        verb = "was" if p["died"] else "is"
        intro = [
            Sentence(f"{p.title} ({life}) {verb} a {country['demonym']} {occupation(p)}."),
            self.say(
                [
                    "{n} was born in {c}, {k}, in {y}.",
                    "Born in {y} in the city of {c}, {n} grew up in {k}.",
                    "{n} was born in {y} in {c}, a city in {k}.",
                ],
                ("born_in", p.title),
                n=p.title,
                c=city.title,
                k=country.title,
                y=p["born"],
            ),
        ]
        early = [
            Sentence(
                f"{p['poss']} father worked as {p['parent_job']}, and the family lived near "
                f"the {self.rng.choice(LANDMARKS)} of {city.title}."
            )
        ]
        if p.get("alma_mater"):
            uni = p["alma_mater"]
            early.append(
                self.say(
                    [
                        "{s} studied {f} at {u}.",
                        "{s} later studied {f} at {u} in {c}.",
                        "After school, {n} enrolled at {u}, where {s2} read {f}.",
                    ],
                    ("studied_at", p.title),
                    n=p.title,
                    s=p["pron"],
                    s2=p["pron"].lower(),
                    f=p["subject"],
                    u=the(uni.title),
                    c=uni["city"].title,
                )
            )
        career = [self.role_sentence(p, role, target) for role, target in p["roles"]]
        later = self.person_later_life(p)
        return [intro, early, career, later]

    def role_sentence(self, p: Entity, role: str, target: Entity) -> Sentence:
        n, t = p.title, the(target.title)
        if role == "founder":
            return self.say(
                [
                    "In {y}, {n} founded {t}, a {i} company based in {c}.",
                    "{n} is best known as the founder of {t}, which {s} established in {y}.",
                ],
                ("founded_by", target.title),
                n=n,
                t=t,
                y=target["founded"],
                i=target["industry"],
                c=target["hq"].title,
                s=p["pron"].lower(),
            )
        if role == "inventor":
            return self.say(
                [
                    "{n} invented {t} in {y}, an advance in {f}.",
                    "In {y} {s} built the first {t2}, a device that changed {f}.",
                ],
                ("invented_by", target.title),
                n=n,
                t=t,
                t2=target.title,
                y=target["year"],
                f=target["field"],
                s=p["pron"].lower(),
            )
        if role == "member":
            return self.say(
                [
                    "{n} was a member of the {g} band {t}.",
                    "{s} played in {t}, a {g} group formed in {c} in {y}.",
                ],
                ("member_of", p.title, target.title),
                n=n,
                t=target.title,
                g=target["genre"],
                c=target["city"].title,
                y=target["formed"],
                s=p["pron"],
            )
        if role == "author":
            return self.say(
                [
                    "{n} wrote the {g} {t}, published in {y}.",
                    "{s} is the author of {t} ({y}), a {g} set in {c}.",
                ],
                ("written_by", target.title),
                n=n,
                t=target.title,
                g=target["genre"],
                y=target["year"],
                c=target["setting"].title,
                s=p["pron"],
            )
        if role == "climber":
            return self.say(
                [
                    "In {y}, {n} made the first ascent of {t}.",
                    "{s} was the first person to climb {t}, reaching the summit in {y}.",
                ],
                ("first_ascent", target.title),
                n=n,
                t=target.title,
                y=target["ascent"],
                s=p["pron"],
            )
        start, end = p["mayor_years"]
        return self.say(
            ["{n} served as mayor of {c} from {a} to {b}.", "{s} was mayor of {c} ({a}–{b})."],
            ("mayor_of", p.title),
            n=n,
            c=target.title,
            a=start,
            b=end,
            s=p["pron"],
        )

    def person_later_life(self, p: Entity) -> list[Sentence]:
        out = [
            Sentence(
                f"In later years {p['pron'].lower()} received {self.rng.choice(HONOURS)} "
                f"for {p['poss'].lower()} work."
            )
        ]
        if p["died"]:
            out.append(
                self.say(
                    ["{n} died in {c} in {y}.", "{s} died in {y} in {c}, aged {a}."],
                    ("died_in", p.title),
                    n=p.title,
                    c=p["deathplace"].title,
                    y=p["died"],
                    a=p["died"] - p["born"],
                    s=p["pron"],
                )
            )
        return out

    # ---- places -----------------------------------------------------------------------------

    def write_country(self, k: Entity) -> list[list[Sentence]]:
        capital = k["capital"]
        overview = [
            Sentence(f"{k.title} is a country with a population of about {k['population']:,}."),
            self.say(
                [
                    "Its capital and largest city is {c}.",
                    "The capital of {k} is {c}.",
                    "{c} is the capital of {k}.",
                ],
                ("capital_of", k.title),
                c=capital.title,
                k=k.title,
            ),
            Sentence(
                f"{k.title} became independent in {k['independence']}; its currency is the "
                f"{k['currency'].lower()} and most people speak {k['demonym']}."
            ),
        ]
        others = [c.title for c in k["cities"][1:]]
        cities = [
            Sentence(f"Other cities of {k.title} include {join_names(others)}.")
            if others
            else Sentence(f"{capital.title} is the only large city in {k.title}.")
        ]
        geography = []
        if k["rivers"]:
            rivers = join_names([r.title for r in k["rivers"][:6]])
            geography.append(Sentence(f"Rivers of {k.title} include {rivers}."))
        if k["mountains"]:
            top = max(k["mountains"], key=lambda m: m["height"])
            geography.append(
                Sentence(
                    f"The highest peak in {k.title} is {top.title}, at {top['height']:,} metres.",
                    (("in_country", top.title),),
                )
            )
        companies = [c for city in k["cities"] for c in city["companies"]][:5]
        economy = (
            [
                Sentence(
                    f"Major companies of {k.title} include "
                    f"{join_names([c.title for c in companies])}."
                )
            ]
            if companies
            else []
        )
        return [overview, cities, geography, economy]

    def write_city(self, c: Entity) -> list[list[Sentence]]:
        k = c["country"]
        overview = [
            self.say(
                ["{c} is a city in {k}.", "{c} is a city in the country of {k}."],
                ("in_country", c.title),
                c=c.title,
                k=k.title,
            ),
            Sentence(
                f"It was founded around {c['founded']} and has about {c['population']:,} people."
            ),
        ]
        if c.get("capital_of"):
            overview.append(
                Sentence(f"{c.title} is the capital of {k.title}.", (("capital_of", k.title),))
            )
        geography = [
            self.say(
                ["The {r} flows through {c}.", "{c} lies on the {r}.", "{c} stands on the {r}."],
                ("flows_through", r.title, c.title),
                r=r.title,
                c=c.title,
            )
            for r in c["rivers"]
        ]
        economy = [self.hq_sentence(co) for co in c["companies"]]
        culture = [self.uni_sentence(u) for u in c["universities"]]
        culture += [
            Sentence(
                f"The band {b.title} was formed in {c.title} in {b['formed']}.",
                (("formed_in", b.title),),
            )
            for b in c["bands"]
        ]
        culture += [
            Sentence(f"{b.title} by {b['author'].title} is set in {c.title}.") for b in c["books"]
        ]
        people = self.city_people(c)
        return [overview, geography, economy, culture, people]

    def hq_sentence(self, co: Entity) -> Sentence:
        return self.say(
            [
                "{t}, a {i} company, is headquartered in {c}.",
                "The {i} firm {t} has its headquarters in {c}.",
            ],
            ("hq_in", co.title),
            t=co.title,
            i=co["industry"],
            c=co["hq"].title,
        )

    def uni_sentence(self, u: Entity) -> Sentence:
        return self.say(
            ["{u} is located in {c}.", "{c} is home to {u}, founded in {y}."],
            ("uni_in", u.title),
            u=the(u.title),
            c=u["city"].title,
            y=u["founded"],
        )

    def city_people(self, c: Entity) -> list[Sentence]:
        out = []
        born = c["people"][:8]
        if born:
            out.append(
                Sentence(
                    f"Notable people born in {c.title} include "
                    f"{join_names([p.title for p in born])}.",
                    tuple(("born_in", p.title) for p in born),
                )
            )
        for mayor in c.get("mayors", []):
            start, end = mayor["mayor_years"]
            out.append(
                Sentence(
                    f"{mayor.title} was mayor of {c.title} from {start} to {end}.",
                    (("mayor_of", mayor.title),),
                )
            )
        return out

    def write_river(self, r: Entity) -> list[list[Sentence]]:
        name, src = short_river(r), r["source"]
        overview = [
            self.say(
                [
                    "The {t} is a river about {n:,} kilometres long.",
                    "The {t} runs for roughly {n:,} kilometres.",
                ],
                t=r.title,
                n=r["length"],
            ),
            self.say(
                [
                    "It rises on the slopes of {m} and empties into the {s}.",
                    "The {n} has its source on {m} and flows into the {s}.",
                ],
                ("river_source", r.title),
                m=src.title,
                s=r["mouth"],
                n=name,
            ),
        ]
        cities = [c.title for c in r["cities"]]
        countries = list(dict.fromkeys(c["country"].title for c in r["cities"]))
        course = [
            Sentence(
                f"On its way to the sea, the {name} flows through {join_names(cities)}.",
                tuple(("flows_through", r.title, c) for c in cities),
            ),
            Sentence(f"The river crosses {join_names(countries)}."),
        ]
        return [overview, course]

    def write_mountain(self, m: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "{m} is a mountain in {k}, part of the {r}.",
                    "{m} is a peak of the {r} in {k}.",
                ],
                ("in_country", m.title),
                m=m.title,
                k=m["country"].title,
                r=m["range"],
            ),
            Sentence(f"Its summit stands {m['height']:,} metres above sea level."),
        ]
        if m["rivers"]:
            rivers = join_names([the(r.title) for r in m["rivers"]])
            overview.append(Sentence(f"The sources of {rivers} lie on its slopes."))
        ascent = [
            self.say(
                [
                    "The first ascent of {m} was made by {p} in {y}.",
                    "{p} was the first to reach the summit, in {y}.",
                ],
                ("first_ascent", m.title),
                m=m.title,
                p=m["climber"].title,
                y=m["ascent"],
            )
        ]
        return [overview, ascent]

    # ---- organisations and works ------------------------------------------------------------

    def write_university(self, u: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "{U} is a university in {c}, {k}.",
                    "{U} is a public university located in {c}, {k}.",
                ],
                ("uni_in", u.title),
                U=u.title,
                c=u["city"].title,
                k=u["city"]["country"].title,
            ),
            Sentence(f"It was founded in {u['founded']} and has about {u['students']:,} students."),
        ]
        alumni = (
            [
                Sentence(
                    f"Notable alumni include {join_names([p.title for p in u['alumni']])}.",
                    tuple(("studied_at", p.title) for p in u["alumni"]),
                )
            ]
            if u["alumni"]
            else []
        )
        return [overview, alumni]

    def write_company(self, co: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "{t} is a {i} company founded in {y} by {f}.",
                    "{t} was founded by {f} in {y} and works in the {i} industry.",
                ],
                ("founded_by", co.title),
                t=co.title,
                i=co["industry"],
                y=co["founded"],
                f=co["founder"].title,
            ),
            self.hq_sentence(co),
            Sentence(f"The company employs about {co['employees']:,} people."),
        ]
        products = [
            Sentence(
                f"{co.title} manufactured {the(inv.title)}, invented by {inv['inventor'].title}.",
                (("made_by", inv.title),),
            )
            for inv in co["products"]
        ]
        return [overview, products]

    def write_invention(self, inv: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "The {t} is a {d} invented by {p} in {y}.",
                    "{p} invented the {t} in {y}.",
                    "The {t} was invented in {y} by {p}.",
                ],
                ("invented_by", inv.title),
                t=inv.title,
                d=inv["device"],
                p=inv["inventor"].title,
                y=inv["year"],
            ),
            Sentence(f"It is regarded as an important step in {inv['field']}."),
        ]
        production = []
        if inv["maker"]:
            production.append(
                Sentence(
                    f"The {inv.title} was later manufactured by {inv['maker'].title}.",
                    (("made_by", inv.title),),
                )
            )
        return [overview, production]

    def write_band(self, b: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "{t} are a {g} band formed in {c} in {y}.",
                    "{t} is a {g} group from {c}, formed in {y}.",
                ],
                ("formed_in", b.title),
                t=b.title,
                g=b["genre"],
                c=b["city"].title,
                y=b["formed"],
            )
        ]
        members = [
            Sentence(
                f"The band's members were {join_names([m.title for m in b['members']])}.",
                tuple(("member_of", m.title, b.title) for m in b["members"]),
            )
        ]
        albums = [
            Sentence(
                f"{b.title} released the albums {join_names(b['albums'])}.",
            )
        ]
        return [overview, members, albums]

    def write_book(self, bk: Entity) -> list[list[Sentence]]:
        overview = [
            self.say(
                [
                    "{t} is a {g} by {a}, published in {y}.",
                    "{t} is a {g} written by {a} and first published in {y}.",
                ],
                ("written_by", bk.title),
                t=bk.title,
                g=bk["genre"],
                a=bk["author"].title,
                y=bk["year"],
            )
        ]
        setting = [Sentence(f"The story is set in {bk['setting'].title}.")]
        return [overview, setting]


def occupation(p: Entity) -> str:
    names = {
        "founder": "entrepreneur",
        "inventor": "inventor",
        "member": "musician",
        "author": "writer",
        "climber": "mountaineer",
        "mayor": "politician",
    }
    jobs = list(dict.fromkeys(names[role] for role, _ in p["roles"]))
    return join_names(jobs)


# --------------------------------------------------------------------------------------------
# Filler: pronounceable background sentences that state no relation between entities
# --------------------------------------------------------------------------------------------

FILLER = {
    "person": [
        (
            "As a child, {n} spent long {season} afternoons [reading in the local library|drawing "
            "maps of imaginary countries|taking apart clocks and radios]."
        ),
        (
            "Friends and colleagues described {n} as patient, stubborn and unusually curious, with "
            "a habit of asking questions long after others had stopped."
        ),
        (
            "{n} kept detailed notebooks for most of {poss} life, and many of them survive today "
            "in a [regional archive|university library|private collection]."
        ),
        (
            "A collection of letters written by {n} was published in the {decade}s and gives a "
            "vivid picture of {poss} daily work."
        ),
        "In {poss} spare time {n} enjoyed {craft} and often gave handmade gifts to friends.",
        (
            "Biographers note that {n} rarely gave interviews and preferred to let the work speak "
            "for itself."
        ),
        (
            "A street, a small park and a [school|library|tram stop] were later named in honour of "
            "{n}."
        ),
        (
            "{n} travelled widely and wrote short essays about the places {pron} visited, praising "
            "the {food} of every region."
        ),
        (
            "Contemporaries admired {n} for a [dry|gentle|quick|mischievous] sense of humour and "
            "for generosity towards younger colleagues."
        ),
        (
            "Several portraits of {n} hang in regional museums; the best known was painted in the "
            "{decade}s."
        ),
        "{n} was a keen walker and claimed that the best ideas came on long {season} walks.",
        (
            "Although always busy, {n} answered almost every letter from students and admirers by "
            "hand."
        ),
        "{n} spoke three languages and read widely in history, poetry and natural science.",
        (
            "Late in life, {n} said that {poss} greatest influence had been [a teacher at primary "
            "school|a grandmother who told stories|a neighbour who repaired boats]."
        ),
        "{n} married in {poss} late twenties and had [two|three|four] children.",
        (
            "A long illness in middle age forced {n} to slow down, but the work continued at a "
            "gentler pace."
        ),
        "Some found {n} difficult to work with, yet few doubted {poss} talent or dedication.",
        (
            "A documentary about the life of {n} was broadcast in the {decade}s and renewed public "
            "interest in {poss} achievements."
        ),
        (
            "{n} gave a large part of {poss} savings to [a children's hospital|a public library|a "
            "music school]."
        ),
        "The house where {n} lived for many years is now a small museum, open every {season}.",
        (
            "{n} collected old maps and rare books, and the collection was later given to a public "
            "library."
        ),
        "Students still read a short lecture by {n} on the value of curiosity and hard work.",
    ],
    "city": [
        "The {adj} {landmark} is the best-known sight in {n} and appears on many postcards.",
        (
            "Local cooking in {n} is known for {food}, served in small family restaurants around "
            "the old market."
        ),
        (
            "Every {season} {n} holds a [music|flower|lantern|harvest] festival that draws "
            "visitors from across the region."
        ),
        (
            "The old town of {n} has many {adj} streets paved with grey stone and lined with "
            "merchants' houses."
        ),
        (
            "{n} has a long tradition of {craft}, and several workshops still open their doors to "
            "visitors."
        ),
        "A network of trams and buses connects the centre of {n} with its growing suburbs.",
        (
            "Much of {n} was rebuilt after a great fire in the {decade}s destroyed the wooden "
            "quarter near the water."
        ),
        "The climate of {n} is mild, with wet {season}s and long, bright summer evenings.",
        "A weekly market in the main square of {n} sells {food}, fresh fish and local crafts.",
        "The city museum of {n} holds a large collection of old maps, coins and painted tiles.",
        (
            "Many residents of {n} work in trade, services and small workshops, while others "
            "commute to nearby towns."
        ),
        (
            "{n} is divided into [six|eight|eleven|twelve] districts, each with its own council "
            "and market day."
        ),
        "The city walls of {n} were pulled down in the {decade}s to make room for wide boulevards.",
        (
            "Football is the most popular sport in {n}, and the local club plays in a stadium near "
            "the {landmark}."
        ),
        (
            "The public library of {n} is one of the oldest in the region and holds thousands of "
            "early printed books."
        ),
        (
            "Visitors to {n} often climb the hill above the town for a view over the roofs and the "
            "surrounding countryside."
        ),
        "In the {decade}s a new railway station opened in {n}, bringing faster links to the coast.",
        (
            "The main cathedral of {n} took more than a century to build and mixes several "
            "architectural styles."
        ),
        "{n} is twinned with several foreign towns and hosts exchange students every {season}.",
        "Parks cover a large part of {n}; the largest of them was once a royal hunting ground.",
        "The dialect spoken in {n} is known for its soft vowels and many borrowed words.",
        (
            "During the {decade}s the population of {n} grew quickly as workers arrived from the "
            "countryside."
        ),
        "Street musicians and painters gather near the {adj} {landmark} of {n} on warm evenings.",
        "The oldest surviving building in {n} is a small stone chapel near the former town gate.",
    ],
    "country": [
        (
            "The landscape of {n} ranges from [coastal plains|wide river valleys|marshy lowlands] "
            "to high plateaus and forested hills."
        ),
        (
            "Traditional dishes of {n} include {food}, usually served with dark bread and pickled "
            "vegetables."
        ),
        (
            "{n} is a parliamentary republic divided into [seven|nine|twelve|fifteen] provinces, "
            "each with an elected governor."
        ),
        (
            "Tourism in {n} peaks in {season}, when visitors come for the festivals, beaches and "
            "mountain walks."
        ),
        "Folk traditions of {n} include {craft}, seasonal dances and long storytelling evenings.",
        (
            "A national railway network links most large towns of {n}, and night trains cross the "
            "border to its neighbours."
        ),
        (
            "The national flag of {n} shows a [white|golden|red|silver] star on a field of blue "
            "and white stripes."
        ),
        (
            "Agriculture remains important in the rural provinces of {n}, where farmers grow "
            "wheat, barley and sunflowers."
        ),
        "School education in {n} is free, and most children learn two foreign languages.",
        "The parliament of {n} meets in a {adj} building finished in the {decade}s.",
        "Winters in the north of {n} are cold and snowy, while the south enjoys long dry summers.",
        (
            "The economy of {n} grew rapidly in the {decade}s, driven by trade, manufacturing and "
            "shipping."
        ),
        (
            "National holidays in {n} include Independence Day and a spring festival marking the "
            "end of winter."
        ),
        "The national football team of {n} has taken part in several regional championships.",
        (
            "Several national parks protect the forests and wetlands of {n}, home to bears, wolves "
            "and rare birds."
        ),
        (
            "Poets and painters of {n} have often taken the countryside and the sea as their main "
            "subjects."
        ),
        "Coal and iron ore were mined in {n} until the last pits closed in the {decade}s.",
        "The public broadcaster of {n} runs two television channels and several radio stations.",
    ],
    "river": [
        "Fishing on the {n} is regulated, and the season opens every {season}.",
        "Rowing clubs train on the calmer reaches of the {n}.",
        "Archaeologists have found the remains of ancient wooden boats in the mud of the {n}.",
        (
            "The {n} is home to trout, pike and several rare species of freshwater mussel that are "
            "protected by law."
        ),
        (
            "Floods on the {n} were common until stone embankments were built along its banks in "
            "the {decade}s."
        ),
        "Small ferries still cross the {n} at several points where no bridge has been built.",
        (
            "In earlier centuries, water mills lined the banks of the {n} and ground grain for "
            "nearby villages."
        ),
        (
            "Barges carried timber, salt and grain along the {n} for centuries before the railways "
            "arrived."
        ),
        "The valley of the {n} is popular with walkers and cyclists, especially in {season}.",
        "Water from the {n} is used to irrigate orchards and vineyards along its lower course.",
        "The {n} freezes in cold winters, and skating races were once held on the ice.",
        "Several {adj} stone bridges span the {n}, the oldest dating from medieval times.",
        "Pollution in the {n} fell sharply after new treatment plants opened in the {decade}s.",
        "Kingfishers, herons and otters can be seen along the quieter stretches of the {n}.",
        "Local legends tell of a water spirit who lives in the deepest pool of the {n}.",
        "A canal built in the {decade}s links the {n} with a neighbouring river system.",
    ],
    "mountain": [
        "Old shepherds' paths cross the lower flanks of {n}.",
        "Skiers use the northern slopes of {n} during the long winter season.",
        "Weather on {n} changes quickly, and fog often hides the summit by midday.",
        (
            "The lower slopes of {n} are covered in pine and beech forest, which gives way to "
            "meadows above the tree line."
        ),
        (
            "Snow covers the summit of {n} for most of the year, and small glaciers survive on its "
            "northern face."
        ),
        (
            "A marked trail to the summit of {n} opened in the {decade}s and is now climbed by "
            "thousands of walkers each summer."
        ),
        "Most climbers attempt {n} in late {season}, when the weather is usually stable.",
        (
            "The rock of {n} is mostly granite and dark schist, folded during the formation of the "
            "range."
        ),
        (
            "A small stone hut below the summit ridge of {n} offers shelter to walkers caught by "
            "bad weather."
        ),
        "Eagles, marmots and wild goats live on the upper slopes of {n}.",
        "On clear days the view from {n} reaches across several valleys to the distant sea.",
        "Several climbers have died on {n}, most of them in sudden storms or avalanches.",
        "A cable car built in the {decade}s carries visitors halfway up {n}.",
        "Villages at the foot of {n} are known for {food} and for {craft}.",
        "Geologists have found fossils of ancient sea creatures high on the slopes of {n}.",
    ],
    "university": [
        "The observatory of {n} was built on a hill above the campus in the {decade}s.",
        "{n} publishes an academic journal that appears four times a year.",
        "Many graduates of {n} went on to careers in law, medicine and public service.",
        (
            "The main building of {n} is a {adj} stone hall with a clock tower, built around a "
            "quiet courtyard."
        ),
        (
            "{n} is known for its library, which holds rare manuscripts, early printed books and "
            "old maps."
        ),
        (
            "{n} has faculties of science, law, medicine and the humanities, and a growing school "
            "of engineering."
        ),
        "Students at {n} publish a weekly newspaper and run a popular radio station.",
        (
            "The botanical garden of {n} is open to the public and contains plants from every "
            "continent."
        ),
        (
            "{n} grew rapidly during the {decade}s, when new laboratories and student halls were "
            "built."
        ),
        "Research at {n} covers fields from astronomy and geology to linguistics and economics.",
        (
            "Each {season}, {n} holds a graduation ceremony in which students wear traditional "
            "dark gowns."
        ),
        "{n} has exchange agreements with many universities abroad.",
        "The rowing club of {n} is one of the oldest sports clubs in the country.",
        "A natural history museum run by {n} displays fossils, minerals and stuffed animals.",
        "Tuition at {n} is low, and most students receive grants from the state.",
    ],
    "company": [
        "Most employees of {n} work at its main site, though it also runs regional depots.",
        "{n} was among the first firms in the region to offer paid holidays.",
        "Products made by {n} are exported to more than twenty countries.",
        "{n} began as a small workshop with only a handful of employees and a single rented room.",
        "During the {decade}s {n} expanded into foreign markets and opened offices abroad.",
        "{n} is known for long apprenticeships and careful craftsmanship.",
        "The logo of {n} shows a [red|blue|golden|silver] bird in flight above a stylised wave.",
        (
            "{n} survived a difficult period of debt and strikes in the {decade}s before returning "
            "to profit."
        ),
        "Shares of {n} have been publicly traded for decades.",
        (
            "{n} sponsors a regional football club, a music festival and several school science "
            "prizes."
        ),
        "In the {decade}s {n} built a new factory on the edge of town, which still operates today.",
        "Critics have accused {n} of polluting local rivers, a charge the company denies.",
        "{n} runs a small museum about its own history, open to visitors on weekdays.",
        "The annual report of {n} lists research, safety and training as its main priorities.",
        "Several rival firms tried to buy {n}, but the board rejected every offer.",
    ],
    "invention": [
        "Newspapers of the time called the {n} one of the wonders of the age.",
        "Factories that adopted the {n} reported large savings within a year.",
        "The inventor of the {n} wrote a short manual explaining how to use and maintain it.",
        "Early buyers of the {n} were mostly workshops, schools and government offices.",
        "Replicas of the {n} are built by hobbyists and shown at technology fairs every {season}.",
        "Early versions of the {n} were expensive, heavy and hard to repair.",
        (
            "The {n} was first shown to the public at a trade fair in the {decade}s, where it drew "
            "large crowds."
        ),
        "Improved models of the {n} appeared within a few years and were soon sold abroad.",
        "A working example of the original {n} is kept in a national museum of science.",
        "The design of the {n} was widely copied, leading to long disputes over patents.",
        "Critics at first doubted that the {n} would ever be practical.",
        "Teachers often use the {n} as an example in science lessons about invention and design.",
        "Modern versions of the {n} use electronic parts but follow the same basic principle.",
        "The {n} made work faster and cheaper, and it changed daily life in many towns.",
        "Collectors pay high prices for early models of the {n} in good condition.",
        (
            "The patent for the {n} expired in the {decade}s, after which many small firms began "
            "making it."
        ),
    ],
    "band": [
        "The first single by {n} was recorded in a single afternoon on borrowed equipment.",
        "{n} often played benefit concerts for hospitals and schools.",
        "Concerts by {n} in the {decade}s sold out within hours.",
        "The lyrics of {n} often describe rivers, trains and long {season} nights.",
        "Members of {n} also worked on solo projects and film soundtracks.",
        "{n} toured widely and became known for long, energetic live performances.",
        (
            "Critics praised {n} for [catchy|wistful|haunting|bright] melodies and thoughtful "
            "lyrics about everyday life."
        ),
        "{n} first played in small clubs, cafés and student halls before signing a record deal.",
        (
            "The sound of {n} mixes acoustic guitars with [dreamy|bright|vintage] keyboards and "
            "close vocal harmonies."
        ),
        "{n} took a long break in the {decade}s before reuniting for a series of concerts.",
        "Fans of {n} still gather every {season} for an annual open-air concert.",
        "Several songs by {n} became radio hits and are still played at weddings and parties.",
        "The cover art for the albums of {n} was painted by a friend of the band.",
        "{n} recorded most of their music in a converted farmhouse outside the city.",
        "Younger musicians often name {n} as an important influence.",
        "A documentary about {n} was released in the {decade}s.",
    ],
    "book": [
        "{n} won a national literary prize soon after publication.",
        "The opening chapter of {n} describes a long journey by train in {season}.",
        "Reviewers compared {n} with the great family novels of the previous century.",
        "Letters and drafts for {n} are kept in a university archive.",
        "{n} was reissued in a new illustrated edition in the {decade}s.",
        (
            "{n} is told through the eyes of a young narrator looking back on a "
            "[happy|lonely|restless|sheltered] childhood."
        ),
        (
            "Critics praised the [spare|lyrical|witty|precise] style of {n} and its careful "
            "portraits of ordinary people."
        ),
        "{n} was translated into many languages and remains in print.",
        "A film adaptation of {n} appeared in the {decade}s and was a modest success.",
        "{n} is often taught in schools as an example of modern prose.",
        "The first edition of {n} sold out within weeks.",
        (
            "{n} deals with memory, loss and family, themes that run through much of the author's "
            "work."
        ),
        "Some readers found the ending of {n} puzzling, and it has been debated ever since.",
        "A stage version of {n} toured several theatres in the {decade}s.",
        "The manuscript of {n} was nearly lost in a fire and survives only in a later copy.",
    ],
}

# Filler-only passages added to each page beyond those that carry facts: (min, max) per kind.
EXTRA_PASSAGES = {
    "person": (1, 3),
    "city": (2, 5),
    "country": (2, 3),
    "river": (1, 2),
    "mountain": (1, 2),
    "university": (1, 2),
    "company": (1, 2),
    "invention": (1, 1),
    "band": (1, 1),
    "book": (1, 1),
}


# The attribute each kind's filler decades must come after, and by how many years.
DECADE_START = {
    "person": ("born", 20),
    "company": ("founded", 5),
    "band": ("formed", 2),
    "invention": ("year", 2),
    "book": ("year", 2),
    "university": ("founded", 10),
}


class Filler:
    """Draws background sentences for one page without repeating any."""

    def __init__(self, rng: random.Random, entity: Entity):
        self.rng = rng
        self.entity = entity
        self.pool = list(FILLER[entity.kind])
        rng.shuffle(self.pool)

    def next(self) -> Sentence | None:
        if not self.pool:
            return None
        e = self.entity
        name = short_river(e) if e.kind == "river" else e.title
        template = re.sub(r"\[([^\]]+)\]", self._choose, self.pool.pop())
        text = template.format(
            n=name,
            adj=self.rng.choice(ADJ),
            landmark=self.rng.choice(LANDMARKS),
            food=self.rng.choice(FOODS),
            craft=self.rng.choice(CRAFTS),
            season=self.rng.choice(SEASONS),
            decade=self._decade(),
            poss=e.get("poss", "their").lower(),
            pron=e.get("pron", "they").lower(),
        )
        return Sentence(text[0].upper() + text[1:])

    def _decade(self) -> int:
        """A decade after the entity came to be (people: after age 20), from the 1850s on."""
        start_key, offset = DECADE_START.get(self.entity.kind, ("", 0))
        start = self.entity.get(start_key, 1840) + offset
        first = min(max(1850, -(-start // 10) * 10), 2010)
        return self.rng.randrange(first, 2011, 10)

    def _choose(self, match: re.Match) -> str:
        return self.rng.choice(match.group(1).split("|"))


# --------------------------------------------------------------------------------------------
# Passages
# --------------------------------------------------------------------------------------------


@dataclass
class Passage:
    id: str
    entity: Entity
    sentences: list[Sentence]

    def to_json(self) -> str:
        text = " ".join(s.text for s in self.sentences)
        contents = f'"{self.entity.title}"\n{text}'
        record = {"id": self.id, "contents": contents, "url": self.entity.url}
        return json.dumps(record, ensure_ascii=False)


def word_count(sentences: list[Sentence]) -> int:
    return sum(len(s.text.split()) for s in sentences)


def split_section(section: list[Sentence]) -> list[list[Sentence]]:
    """Greedily packs a section's sentences into chunks of at most MAX_WORDS words."""
    chunks: list[list[Sentence]] = [[]]
    for sentence in section:
        if chunks[-1] and word_count(chunks[-1]) + len(sentence.text.split()) > MAX_WORDS - 30:
            chunks.append([])
        chunks[-1].append(sentence)
    return chunks


def pad(chunk: list[Sentence], filler: Filler, target: int) -> list[Sentence]:
    """Appends filler sentences until the chunk reaches `target` words (or filler runs out)."""
    chunk = list(chunk)
    while word_count(chunk) < target:
        sentence = filler.next()
        if sentence is None:
            break
        chunk.append(sentence)
    return chunk


def merge_short(chunks: list[list[Sentence]]) -> list[list[Sentence]]:
    """Folds chunks under MIN_WORDS into their predecessor when that stays under MAX_WORDS."""
    merged: list[list[Sentence]] = []
    for chunk in chunks:
        if word_count(chunk) >= MIN_WORDS:
            merged.append(chunk)
        elif merged and word_count(merged[-1]) + word_count(chunk) <= MAX_WORDS:
            merged[-1] = merged[-1] + chunk
    return merged


def page_passages(entity: Entity, writer: PageWriter, rng: random.Random) -> list[Passage]:
    filler = Filler(rng, entity)
    sections = [s for s in writer.sections(entity) if s]
    chunks = [c for section in sections for c in split_section(section)]
    chunks += [[] for _ in range(rng.randint(*EXTRA_PASSAGES[entity.kind]))]
    chunks += [[] for _ in range(MIN_PASSAGES - len(chunks))]
    padded = merge_short([pad(c, filler, rng.randint(42, 70)) for c in chunks])
    return [Passage(f"{entity.slug}-{i}", entity, c) for i, c in enumerate(padded[:MAX_PASSAGES])]


def build_passages(world: World, rng: random.Random) -> list[Passage]:
    writer = PageWriter(rng)
    return [p for e in world.all_entities() for p in page_passages(e, writer, rng)]


def fact_index(passages: list[Passage]) -> dict[tuple, list[str]]:
    index: dict[tuple, list[str]] = {}
    for passage in passages:
        for sentence in passage.sentences:
            for key in sentence.keys:
                ids = index.setdefault(key, [])
                if passage.id not in ids:
                    ids.append(passage.id)
    return index


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------


def aliases(entity: Entity) -> list[str]:
    if entity.kind == "river":
        return [entity.title, short_river(entity)]
    if entity.kind == "mountain":
        return [entity.title, entity.title.removeprefix("Mount ")]
    return [entity.title]


class QuestionMaker:
    """Builds questions whose every hop is stated in at least one passage."""

    def __init__(self, world: World, facts: dict[tuple, list[str]]):
        self.world = world
        self.facts = facts

    def question(self, text: str, answer: list[str], keys: list[tuple]) -> dict | None:
        ids = [self.facts.get(k) for k in keys]
        if not all(ids):
            return None
        support = list(dict.fromkeys(i for group in ids for i in group))
        hops = len(keys)
        return {"question": text, "answer": answer, "hops": hops, "supporting_ids": support}

    def one_hop(self) -> dict[str, list[dict]]:
        w = self.world
        q = self.question
        kinds = {
            "born_in": [
                q(
                    f"In which city was {p.title} born?",
                    aliases(p["birthplace"]),
                    [("born_in", p.title)],
                )
                for p in w["person"]
            ],
            "founded_by": [
                q(f"Who founded {c.title}?", aliases(c["founder"]), [("founded_by", c.title)])
                for c in w["company"]
            ],
            "hq_in": [
                q(
                    f"In which city is {c.title} headquartered?",
                    aliases(c["hq"]),
                    [("hq_in", c.title)],
                )
                for c in w["company"]
            ],
            "capital_of": [
                q(
                    f"What is the capital of {k.title}?",
                    aliases(k["capital"]),
                    [("capital_of", k.title)],
                )
                for k in w["country"]
            ],
            "invented_by": [
                q(
                    f"Who invented the {i.title}?",
                    aliases(i["inventor"]),
                    [("invented_by", i.title)],
                )
                for i in w["invention"]
            ],
            "written_by": [
                q(f"Who wrote {b.title}?", aliases(b["author"]), [("written_by", b.title)])
                for b in w["book"]
            ],
            "river_source": [
                q(
                    f"On which mountain does the {r.title} have its source?",
                    aliases(r["source"]),
                    [("river_source", r.title)],
                )
                for r in w["river"]
            ],
            "founded_year": [
                q(
                    f"In what year was {c.title} founded?",
                    [str(c["founded"])],
                    [("founded_by", c.title)],
                )
                for c in w["company"]
            ],
        }
        return kinds

    def two_hop(self) -> dict[str, list[dict]]:
        w = self.world
        q = self.question
        kinds = {
            "river_of_birthplace": [
                q(
                    f"What river flows through the birthplace of {p.title}?",
                    aliases(p["birthplace"]["rivers"][0]),
                    [
                        ("born_in", p.title),
                        (
                            "flows_through",
                            p["birthplace"]["rivers"][0].title,
                            p["birthplace"].title,
                        ),
                    ],
                )
                for p in w["person"]
                if len(p["birthplace"]["rivers"]) == 1
            ],
            "founder_birthplace": [
                q(
                    f"In which city was the founder of {c.title} born?",
                    aliases(c["founder"]["birthplace"]),
                    [("founded_by", c.title), ("born_in", c["founder"].title)],
                )
                for c in w["company"]
            ],
            "hq_country": [
                q(
                    f"In which country is {c.title} headquartered?",
                    aliases(c["hq"]["country"]),
                    [("hq_in", c.title), ("in_country", c["hq"].title)],
                )
                for c in w["company"]
            ],
            "inventor_alma_mater": [
                q(
                    f"At which university did the inventor of the {i.title} study?",
                    aliases(i["inventor"]["alma_mater"]),
                    [("invented_by", i.title), ("studied_at", i["inventor"].title)],
                )
                for i in w["invention"]
                if i["inventor"].get("alma_mater")
            ],
            "capital_of_birth_country": [
                q(
                    f"What is the capital of the country where {p.title} was born?",
                    aliases(p["birthplace"]["country"]["capital"]),
                    [("born_in", p.title), ("capital_of", p["birthplace"]["country"].title)],
                )
                for p in w["person"]
                if not p["birthplace"].get("capital_of")
            ],
            "author_birthplace": [
                q(
                    f"Where was the author of {b.title} born?",
                    aliases(b["author"]["birthplace"]),
                    [("written_by", b.title), ("born_in", b["author"].title)],
                )
                for b in w["book"]
            ],
            "band_country": [
                q(
                    f"In which country was the band {b.title} formed?",
                    aliases(b["city"]["country"]),
                    [("formed_in", b.title), ("in_country", b["city"].title)],
                )
                for b in w["band"]
            ],
        }
        return kinds


def make_questions(world: World, facts: dict, rng: random.Random) -> list[dict]:
    maker = QuestionMaker(world, facts)
    picked: list[dict] = []
    for per_kind, groups in ((4, maker.one_hop()), (4, maker.two_hop())):
        for kind in groups:
            candidates = [c for c in groups[kind] if c is not None]
            picked += rng.sample(candidates, min(per_kind, len(candidates)))
    return picked


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    world = build_world(rng)
    passages = build_passages(world, rng)
    questions = make_questions(world, fact_index(passages), rng)
    corpus_path = args.out_dir / "sample_corpus.jsonl"
    questions_path = args.out_dir / "sample_questions.jsonl"
    write_lines(corpus_path, [p.to_json() for p in passages])
    write_lines(questions_path, [json.dumps(q, ensure_ascii=False) for q in questions])
    entities = len(world.all_entities())
    print(f"wrote {len(passages)} passages about {entities} entities to {corpus_path}")
    print(f"wrote {len(questions)} questions to {questions_path}")


if __name__ == "__main__":
    main()
