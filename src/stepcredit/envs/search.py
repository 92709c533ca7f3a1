"""Multi-hop search: questions answered by chaining BM25 searches over a corpus the task builds.

Each task is a small encyclopedia — pages of people, companies and cities, two or three passages
each, every passage with an id — and one question. A **bridge** question names one entity and asks
for a fact at the end of a chain of relations, e.g. at depth 3 "In which country was the founder of
Korvan Labs born?": Korvan Labs → its founder (the bridge entity) → the founder's birth city → that
city's country. A **comparison** question (depth 2, half the tasks) asks which of two people was born
earlier, one lookup each (one search may settle both when the two share a name). The only tool is
``search(query)``: BM25 (``bm25s``) over the passages, the ``top_k`` best passages with a positive
score, each as ``[p12] text``. The agent ends with
``answer <value>`` (a country, or a person's name); answers are compared by their words (case,
spacing, punctuation and stop words aside).

**depth** is the number of hops (1–4): the relations person → works at → company → founded by →
person → born in → city → in → country, entered at the hop the depth needs.

**Distractors in the data.** Every entity of the question's chain has a near-namesake (one letter
changed: "Arlen Voss" / "Arlen Vosk", "Korvan Labs" / "Korvam Labs") whose page states other facts,
leading to another answer; other pages are unrelated. With ``noise`` a result carries one passage
more that states no fact. A fact is stated once, in its entity's page (the *fact passage* of that
hop). Every task is drawn so that some phrasing finds each of its facts at the env's ``top_k``.

**What the agent knows.** The environment tracks the agent's *beliefs*: the entity it takes for each
hop of the chain. A search whose results hold the fact passage of the believed entity of the next
hop resolves that hop (the belief moves to the fact's object); a search naming the near-namesake of
a needed entity swaps the belief to the namesake. The ``expert`` continues from the beliefs: after a
wrong bridge it follows the namesake's chain and answers what it gives — so a run with one mistake
fails.

**Labelling rules** (per call, then per step as ``ToolEnv`` says):

* **+1** a search that retrieves, for the first time, the fact passage of the next hop of the true
  chain; the correct answer;
* **0** a search that adds nothing the answer needs (a re-read, a vague query, an unrelated page —
  also a vague query whose results happen to show a namesake's fact: the agent's belief does not
  move); a search that follows from the agent's own earlier wrong bridge (the namesake's chain) — the
  mistake is labelled where it was made; an errored call; a distractor tool;
* **−1** a search whose query names the near-namesake of the entity the true chain needs next, in
  place of it (the agent's belief swaps to the namesake); a wrong answer.

Several phrasings retrieve each fact passage ("where was Arlen Voss born", "Arlen Voss birthplace",
"Arlen Voss born in"); the expert offers every phrasing whose results hold it. Mistake kinds offered
to scripted policies (each labelled −1, each dooms the run): ``wrong_bridge`` (a search for the
namesake of the next entity) and ``early_answer`` (an answer before the chain is resolved: the
namesake chain's answer).

The tasks of a split are drawn from name pools of their own (``train`` and ``test`` share no name).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stepcredit.envs.actions import ToolCall
from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG, CallOutcome, Param, Tool, ToolEnv

__all__ = ["SearchEnv"]

# name pools: (first names, last names, city stems, country names, company stems) per split
_POOLS = {
    "train": (
        ["Arlen", "Bera", "Cato", "Dalia", "Emil", "Fenna", "Goran", "Hilde", "Ivo", "Jorun", "Kasimir", "Liva"],
        ["Voss", "Brandt", "Calder", "Dunmore", "Eskel", "Farrow", "Galen", "Holm", "Ingram", "Jessup"],
        ["Velmor", "Dranek", "Ostrav", "Belgar", "Tirun", "Makoval", "Serid", "Quorin", "Lundt", "Parvel"],
        ["Norvania", "Estrel", "Kalmuria", "Ostland", "Verdania", "Tessaly", "Morvia", "Valdor"],
        ["Korvan", "Helix", "Brightwater", "Stonebridge", "Quillon", "Marlow", "Ashgrove", "Tidewell", "Ravenel",
         "Duskvale", "Orrin", "Pembrook", "Halcyon", "Westmarch", "Tallis", "Corvel"],
    ),
    "test": (
        ["Mira", "Nils", "Orla", "Pavel", "Quinn", "Runa", "Soren", "Talia", "Ulric", "Vesna", "Wendel", "Ximena"],
        ["Kessler", "Lindqvist", "Moravec", "Novak", "Osric", "Pell", "Quist", "Rask", "Sorel", "Tamsin"],
        ["Harwick", "Junet", "Kestrov", "Lomar", "Nevril", "Orsk", "Pellam", "Rivan", "Sothe", "Umbra"],
        ["Caldoria", "Feynland", "Gorvath", "Ilmaria", "Juvenia", "Lustria", "Pelland", "Rovenna"],
        ["Ironleaf", "Northgate", "Cobalt", "Silverline", "Redmoor", "Foxhall", "Glenfield", "Copperway", "Amberly",
         "Brisden", "Crowther", "Dunhallow", "Everam", "Fairholt", "Greyling", "Hollins"],
    ),
}
_SUFFIXES = ["Labs", "Works", "Systems", "Group", "Foods", "Motors", "Textiles", "Optics"]
_JOBS = ["engineer", "chemist", "designer", "pilot", "editor", "surveyor"]
_PRODUCTS = ["turbines", "solvents", "printers", "bicycles", "lenses", "valves"]
_RIVERS = ["Amsel", "Borra", "Cyrn", "Delve", "Erun", "Fyle"]

# the relations of a chain, in order from its far end: (relation, the kind of its subject)
_CHAIN = [("works_at", "person"), ("founded_by", "company"), ("born_in", "person"), ("in_country", "city")]
_STOP = {"a", "an", "the", "of", "in", "is", "was", "by", "at", "as", "on", "and", "who", "which", "what", "where",
         "when", "for", "to", "did", "does", "he", "she", "it", "its", "their"}  # fmt: skip


def _tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+", text.casefold()) if t not in _STOP]


def _norm(text: str) -> str:
    return " ".join(_tokens(text)) if _tokens(text) else " ".join(text.casefold().split())


@dataclass
class _Entity:
    name: str
    kind: str  # person, company, city
    facts: dict[str, str]  # relation -> object (an entity name, or a country)
    year: int = 0


class _World:
    """The task's corpus and its BM25 index: built once per task and never changed (snapshots share it)."""

    def __init__(self, entities: dict[str, _Entity], passages: list[tuple[str, str, str | None]]) -> None:
        import bm25s  # type: ignore[import-untyped]

        self.entities = entities
        self.passages = passages  # (id, text, "entity|relation" of the fact it states, or None)
        self.fact_passage = {p[2]: p[0] for p in passages if p[2] is not None}
        self.text = {p[0]: p[1] for p in passages}
        self.index = bm25s.BM25(backend="numpy")
        self.index.index([_tokens(t) or ["_"] for _, t, _ in passages], show_progress=False)

    def __deepcopy__(self, memo: dict[int, Any]) -> _World:
        return self

    def search(self, query: str, k: int) -> list[str]:
        """The ids of the ``k`` best passages with a positive BM25 score, best first (ties: corpus order,
        by a stable sort of ``get_scores``; the numpy backend always)."""
        words = _tokens(query)
        if not words:
            return []
        scores = np.asarray(self.index.get_scores(words), dtype=np.float64)
        best = np.argsort(-scores, kind="stable")[:k]
        return [self.passages[int(d)][0] for d in best if scores[d] > 0]


@dataclass
class _Task:
    world: _World
    question: str
    chains: list[list[str]]  # per chain the true entity of each hop (1 chain: bridge; 2: comparison)
    relations: list[list[str]]  # per chain the relation of each hop
    answer: str
    namesakes: dict[str, str]  # true entity -> its near-namesake
    belief: list[list[str]] = field(default_factory=list)  # per chain the believed entity of each hop resolved


class SearchEnv(ToolEnv):
    """Multi-hop search (see the module docstring). ``depth``: hops (1–4, default 3); ``top_k``: passages
    a search returns (1–10, default 3); ``filler``: sentences of unrelated text added to every passage
    (0–20, default 0: the compact prompt; more makes the long-context variant)."""

    family: ClassVar[str] = "search"
    default_depth: ClassVar[int] = 3
    max_depth: ClassVar[int] = 4
    tools: ClassVar[tuple[Tool, ...]] = (
        Tool("search", (Param("query", str, "words to search the corpus for"),), "BM25 search: the best passages"),
    )

    @classmethod
    def default_max_steps(cls, depth: int) -> int:
        return 2 * depth + 4

    def __init__(self, *, top_k: int = 3, filler: int = 0, **knobs: Any) -> None:
        super().__init__(**knobs)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 10:
            raise ValueError(f"top_k must be an integer in 1..10, got {top_k!r}")
        if isinstance(filler, bool) or not isinstance(filler, int) or not 0 <= filler <= 20:
            raise ValueError(f"filler must be an integer in 0..20, got {filler!r}")
        self.top_k, self.filler = top_k, filler

    # ------------------------------------------------------------------ task
    def _new_task(self, rng: np.random.Generator, index: int) -> _Task:
        """A task whose every fact is found by some phrasing at this ``top_k`` (else drawn again)."""
        for _ in range(50):
            task = self._draw(rng)
            if all(
                any(pid in task.world.search(q, self.top_k) for q in _phrasings(*key.split("|")))
                for key, pid in task.world.fact_passage.items()
            ):
                return task
        raise RuntimeError(f"no solvable search task in 50 draws at top_k={self.top_k}")  # pragma: no cover

    def _draw(self, rng: np.random.Generator) -> _Task:
        firsts, lasts, cities, countries, stems = _POOLS[self.split]
        used: set[str] = set()
        twins: set[str] = set()  # the namesakes of every name made: no new name may equal one
        entities: dict[str, _Entity] = {}
        kinds: dict[str, str] = {}

        def fresh(kind: str) -> str:
            for _ in range(1000):
                if kind == "person":
                    name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
                elif kind == "company":
                    name = f"{rng.choice(stems)} {rng.choice(_SUFFIXES)}"
                else:
                    name = f"{rng.choice(cities)}{rng.choice(['a', 'o', 'en', 'ia', 'grad', 'holm'])}"
                twin = _namesake(name, kind)
                if name not in used and name not in twins and twin not in used:
                    used.add(name)
                    twins.add(twin)
                    kinds[name] = kind
                    return name
            raise RuntimeError("name pool exhausted")  # pragma: no cover - a task uses ~30 of 120+ names per kind

        def build(kind: str, avoid_country: str | None = None) -> str:
            """A new entity of ``kind`` with its whole chain down to a country; returns its name."""
            name = fresh(kind)
            entities[name] = _Entity(name, kind, {}, int(rng.integers(1900, 2000)))
            if kind == "city":
                options = [c for c in countries if c != avoid_country]
                entities[name].facts["in_country"] = str(rng.choice(options))
            elif kind == "person":
                entities[name].facts["born_in"] = build("city", avoid_country)
            elif kind == "company":
                entities[name].facts["founded_by"] = build("person", avoid_country)
            return name

        hops = _CHAIN[len(_CHAIN) - self.depth :]
        comparison = self.depth == 2 and rng.random() < 0.5
        starts = [build("person"), build("person")] if comparison else [build(hops[0][1])]
        if not comparison and hops[0][0] == "works_at":
            entities[starts[0]].facts["works_at"] = build("company")
        chains, relations = [], []
        for start in starts:
            chain, rels, here = [start], [], start
            for rel, _ in hops if not comparison else [("born_year", "person")]:
                if rel == "born_year":
                    rels.append(rel)
                    break
                here = entities[here].facts[rel]
                chain.append(here)
                rels.append(rel)
            chains.append(chain[:-1] if not comparison else chain)
            relations.append(rels)
        if comparison:
            a, b = starts
            if entities[a].year == entities[b].year:
                entities[b].year += 1
            answer = a if entities[a].year < entities[b].year else b
            question = f"Who was born earlier, {a} or {b}?"
        else:
            answer = entities[chains[0][-1]].facts[relations[0][-1]]
            question = _question(hops, starts[0])
        # a near-namesake for every true entity of the chains, stating other facts (another answer)
        namesakes: dict[str, str] = {}
        for chain, rels in zip(chains, relations, strict=True):
            for entity, rel in zip(chain, rels, strict=True):
                twin = _namesake(entity, kinds[entity])
                used.add(twin)
                true = entities[entity]
                facts = {}
                if rel == "in_country":
                    facts[rel] = str(rng.choice([c for c in countries if c != answer and c != true.facts[rel]]))
                elif rel == "born_year":
                    pass
                else:
                    facts[rel] = build(_KIND_OF[rel], avoid_country=answer)
                entities[twin] = _Entity(twin, true.kind, facts, true.year + int(rng.integers(-30, 30)))
                if rel == "born_year":  # born before both: a comparison built on the namesake answers its name
                    earliest = min(entities[c[0]].year for c in chains)
                    entities[twin].year = earliest - int(rng.integers(1, 20))
                    entities[twin].facts["born_in"] = build("city", avoid_country=None)
                namesakes[entity] = twin
        for _ in range(3):  # unrelated pages
            build(str(rng.choice(["person", "company", "city"])))
        passages = self._passages(entities, rng)
        return _Task(_World(entities, passages), question, chains, relations, answer, namesakes,
                     [[c[0]] for c in chains])  # fmt: skip

    def _passages(self, entities: dict[str, _Entity], rng: np.random.Generator) -> list[tuple[str, str, str | None]]:
        texts: list[tuple[str, str | None]] = []
        for e in entities.values():
            texts.extend(_pages(e, rng))
        order = rng.permutation(len(texts))
        out = []
        for k, i in enumerate(order.tolist()):
            text, fact = texts[i]
            for _ in range(self.filler):
                text += f" {_filler(rng)}"
            out.append((f"p{k}", text, fact))
        return out

    def _prompt(self) -> str:
        return (
            f"Answer the question with the tools: {self._state.question} Search the corpus with search(query), "
            "then give the answer with: answer <value>."
        )

    # ------------------------------------------------------------------ calls
    def _call(self, call: ToolCall, arguments: dict[str, Any]) -> CallOutcome:
        task: _Task = self._state
        query = str(arguments["query"])
        if not _tokens(query):
            return CallOutcome("Error: the query has no searchable words", False)
        hits = task.world.search(query, self.top_k)
        label = self._judge(query, hits)
        lines = [f"[{h}] {task.world.text[h]}" for h in hits]
        if self.noise and self.np_random.random() < self.noise:  # one passage more that states no fact
            spare = [p for p in task.world.passages if p[2] is None and p[0] not in hits]
            if spare:
                extra = spare[int(self.np_random.integers(len(spare)))]
                lines.append(f"[{extra[0]}] {extra[1]}")
        return CallOutcome("\n".join(lines) if lines else "no results", label=label)

    def _judge(self, query: str, hits: list[str]) -> int:
        """The call's label; updates the agent's beliefs."""
        task: _Task = self._state
        words = set(_tokens(query))
        for c, chain in enumerate(task.chains):  # −1: the namesake of the entity the true chain needs next
            i = len(task.belief[c]) - 1
            if i >= len(chain) or task.belief[c][i] != chain[i]:
                continue
            twin = task.namesakes[chain[i]]
            if set(_tokens(twin)) <= words and not set(_tokens(chain[i])) <= words:
                task.belief[c][i] = twin
                for other in range(len(task.chains)):
                    self._resolve(other, hits)
                return WRONG
        label = NEUTRAL
        for c in range(len(task.chains)):
            step = self._resolve(c, hits)
            if step is not None and step == task.chains[c][: len(step)]:
                label = CORRECT
        return label

    def _resolve(self, c: int, hits: list[str]) -> list[str] | None:
        """Resolve chain ``c``'s next hop if ``hits`` hold its fact passage; the believed chain up to the
        resolved hop, or None."""
        task: _Task = self._state
        belief = task.belief[c]
        i = len(belief) - 1
        rels = task.relations[c]
        if i >= len(rels):
            return None
        entity = belief[i]
        pid = task.world.fact_passage.get(f"{entity}|{rels[i]}")
        if pid is None or pid not in hits:
            return None
        was = list(belief)
        fact = task.world.entities[entity]
        belief.append(str(fact.year) if rels[i] == "born_year" else fact.facts[rels[i]])
        return was

    def _believed_answer(self) -> str | None:
        task: _Task = self._state
        if any(len(b) <= len(r) for b, r in zip(task.belief, task.relations, strict=True)):
            return None
        if len(task.chains) == 2:
            (a, ya), (b, yb) = ((bl[0], int(bl[-1])) for bl in task.belief)
            return a if ya <= yb else b
        return task.belief[0][-1]

    def _answer(self, answer: str) -> tuple[bool, int]:
        ok = _norm(answer) == _norm(self._state.answer)
        return ok, CORRECT if ok else WRONG

    def _reference(self) -> str:
        return str(self._state.answer)

    # ------------------------------------------------------------------ expert + mistakes
    def _next(self) -> tuple[int, str, str] | None:
        """(chain, believed entity, relation) of the first unresolved hop, if any."""
        task: _Task = self._state
        for c, (belief, rels) in enumerate(zip(task.belief, task.relations, strict=True)):
            if len(belief) <= len(rels):
                return c, belief[-1], rels[len(belief) - 1]
        return None

    def _expert(self) -> list[str]:
        nxt = self._next()
        if nxt is None:
            return [f"answer {self._believed_answer()}"]
        _, entity, rel = nxt
        task: _Task = self._state
        pid = task.world.fact_passage[f"{entity}|{rel}"]
        out = []
        for query in _phrasings(entity, rel):
            if pid in task.world.search(query, self.top_k):
                out.append(self.call_text("search", query=query))
        return out or [self.call_text("search", query=f"{entity} {_TEMPLATE[rel]}")]

    def _mistakes(self) -> list[tuple[str, str]]:
        task: _Task = self._state
        nxt = self._next()
        out = []
        if nxt is not None:
            c, entity, rel = nxt
            i = len(task.belief[c]) - 1
            if i < len(task.chains[c]) and entity == task.chains[c][i]:
                out.append(("wrong_bridge", self.call_text("search", query=f"{task.namesakes[entity]} "
                                                          f"{_REL_WORDS[rel][0]}")))
            if self._on_true_chain():
                out.append(("early_answer", f"answer {self._namesake_answer()}"))
        return out

    def _on_true_chain(self) -> bool:
        task: _Task = self._state
        return all(b == ch[: len(b)] for b, ch in zip(task.belief, task.chains, strict=True))

    def _namesake_answer(self) -> str:
        """What following the first entity's namesake would answer (a wrong answer)."""
        task: _Task = self._state
        if len(task.chains) == 2:
            a, b = task.chains[0][0], task.chains[1][0]
            return b if task.answer == a else a
        here = task.namesakes[task.chains[0][0]]
        for rel in task.relations[0]:
            here = task.world.entities[here].facts[rel]
        return here

    def _progress(self) -> str:
        task: _Task = self._state
        return json.dumps(task.belief)



_KIND_OF = {"works_at": "company", "founded_by": "person", "born_in": "city"}
_REL_WORDS = {
    "works_at": ["employer", "works at"],
    "founded_by": ["founder", "founded by"],
    "born_in": ["birthplace", "born city"],
    "in_country": ["country", "city country"],
    "born_year": ["born year", "year of birth"],
}


_TEMPLATE = {  # the words of the fact passage itself, its object left out
    "works_at": "works at",
    "founded_by": "was founded by",
    "born_in": "was born in the city of",
    "in_country": "is a city in the country of",
    "born_year": "was born in the year",
}


def _phrasings(entity: str, rel: str) -> list[str]:
    words = _REL_WORDS[rel]
    asks = {
        "works_at": f"where {entity} works",
        "founded_by": f"who founded {entity}",
        "born_in": f"where was {entity} born",
        "in_country": f"which country is {entity} in",
        "born_year": f"which year was {entity} born",
    }
    out, seen = [], set()
    for query in (asks[rel], f"{entity} {words[0]}", f"{entity} {words[1]}", f"{entity} {_TEMPLATE[rel]}"):
        key = frozenset(_tokens(query))
        if key not in seen:  # phrasings that search the same words are one
            seen.add(key)
            out.append(query)
    return out


def _question(hops: list[tuple[str, str]], start: str) -> str:
    rels = [r for r, _ in hops]
    if rels == ["in_country"]:
        return f"In which country is {start}?"
    if rels == ["born_in", "in_country"]:
        return f"In which country was {start} born?"
    if rels == ["founded_by", "born_in", "in_country"]:
        return f"In which country was the founder of {start} born?"
    return f"In which country was the founder of the company {start} works at born?"


def _namesake(name: str, kind: str) -> str:
    """``name`` with one letter changed: a person's last name ("Arlen Voss" -> "Arlen Vosk"), a
    company's stem ("Korvan Labs" -> "Korvam Labs"), a city's name."""
    words = name.split(" ")
    k = 0 if kind == "company" else len(words) - 1
    word = words[k]
    swap = {"a": "e", "e": "i", "i": "o", "o": "u", "u": "a", "s": "k", "n": "m", "r": "l", "l": "r", "t": "d"}
    for pos in range(len(word) - 1, 0, -1):
        if word[pos] in swap:
            word = word[:pos] + swap[word[pos]] + word[pos + 1 :]
            break
    else:
        word += "e"
    words[k] = word
    return " ".join(words)


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _pages(e: _Entity, rng: np.random.Generator) -> list[tuple[str, str | None]]:
    f = e.facts
    if e.kind == "person":
        out: list[tuple[str, str | None]] = [
            (f"{e.name} was born in the year {e.year}; by trade {_article(str(rng.choice(_JOBS)))}.",
             f"{e.name}|born_year")
        ]
        if "born_in" in f:
            out.append((f"{e.name} was born in the city of {f['born_in']} (birthplace).", f"{e.name}|born_in"))
        if "works_at" in f:
            out.append((f"{e.name} works at {f['works_at']} (employer).", f"{e.name}|works_at"))
        return out
    if e.kind == "company":
        out = [(f"{e.name} makes {rng.choice(_PRODUCTS)} and was started in {e.year}.", None)]
        if "founded_by" in f:
            out.append((f"{e.name} was founded by {f['founded_by']} (founder).", f"{e.name}|founded_by"))
        return out
    out = [(f"{e.name} lies on the river {rng.choice(_RIVERS)}.", None)]
    if "in_country" in f:
        out.append((f"{e.name} is a city in the country of {f['in_country']}.", f"{e.name}|in_country"))
    return out


_FILLER = ["The archive lists this entry among its older records.", "Local guides often mention the old market.",
           "Records from that decade are incomplete.", "The entry was revised after a later survey.",
           "Several travellers wrote about the region."]  # fmt: skip


def _filler(rng: np.random.Generator) -> str:
    return str(rng.choice(_FILLER))
